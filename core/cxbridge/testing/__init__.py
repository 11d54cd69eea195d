"""The test kit for plugin authors and embedders (install ``cxbridge[testing]``).

- :class:`PluginContract`: the contract tests of a destination plugin, switched on by subclassing.
- :class:`Bridge` (fixture ``make_bridge``): a real engine on a temporary SQLite store and broker and
  a :class:`~cxbridge.FakeClock`, with ``settle()`` to run every attempt and retry in milliseconds.
- :class:`FakeTarget` (fixture ``fake_target``): a programmable HTTP server on 127.0.0.1 — scripted
  statuses, latency, lost responses, a request log.
- :func:`canned_event`, :func:`make_destination`, :func:`make_delivery`: realistic events of all four
  types, destinations loaded as from a tenant file, and deliveries as the engine builds them.
"""

from cxbridge.testing.bridge import (
    EVENTS_DIR,
    Bridge,
    canned_event,
    make_delivery,
    make_destination,
    plugin_manager,
)
from cxbridge.testing.contract import PluginContract
from cxbridge.testing.target import FakeTarget, Recorded, Reply, closed_port

__all__ = [
    "EVENTS_DIR",
    "Bridge",
    "FakeTarget",
    "PluginContract",
    "Recorded",
    "Reply",
    "canned_event",
    "closed_port",
    "make_delivery",
    "make_destination",
    "plugin_manager",
]
