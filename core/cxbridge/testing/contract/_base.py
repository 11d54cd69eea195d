"""What every part of the contract shares: the attributes a plugin's test class sets, the methods
that program the target, the fixtures, and the helpers that make one attempt."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

import pytest

from cxbridge.destinations import Destination
from cxbridge.events import EVENT_TYPES, Event
from cxbridge.outcome import Outcome, OutcomeKind
from cxbridge.plugins import PluginManager
from cxbridge.routing import render_payload
from cxbridge.testing.bridge import canned_event, make_delivery, make_destination
from cxbridge.testing.target import FakeTarget, Reply

__all__ = ["ContractBase"]

_FIX_STATUS = (
    "map HTTP answers with cxbridge.outcome_for_status(response.status_code, "
    "retry_after=response.headers.get('Retry-After'))"
)


class ContractBase:
    """What the parts of the contract share; a plugin's test class subclasses
    :class:`~cxbridge.testing.PluginContract`, which has them all.

    Set ``destination_type`` and implement :meth:`options`. Optional class attributes:
    ``entry_point`` (default: ``destination_type``), ``plugin`` (a plugin object to test directly,
    without its entry point), ``events`` (the event types the type supports), ``secrets`` (values
    besides the options' ``SecretStr`` fields that must never leak), ``timeout_options`` (options that
    make the plugin give up quickly, merged into :meth:`options`, with ``slow_seconds`` longer than
    that), ``gone_disables`` (410 disables the destination, as ``outcome_for_status`` does).
    """

    destination_type: ClassVar[str]
    entry_point: ClassVar[str | None] = None
    plugin: ClassVar[object | None] = None
    events: ClassVar[tuple[str, ...]] = tuple(EVENT_TYPES)
    secrets: ClassVar[tuple[str, ...]] = ()
    timeout_options: ClassVar[Mapping[str, Any] | None] = None
    slow_seconds: ClassVar[float] = 3.0
    gone_disables: ClassVar[bool] = True
    concurrency: ClassVar[int] = 8

    # -- what a plugin's test class provides -----------------------------------------------------

    def options(self, target: Any) -> dict[str, Any]:
        """A good configuration of the destination (the keys of a tenant file besides ``type`` and
        ``events``), pointed at ``target``."""
        raise NotImplementedError(
            f"{type(self).__name__} must define options(self, target) returning a good config"
        )

    @pytest.fixture
    def target(self) -> Iterator[Any]:
        """What the plugin talks to: by default a :class:`FakeTarget` answering ``200 ok``."""
        with FakeTarget() as target:
            yield target

    def fail(self, target: Any, status: int, headers: Mapping[str, str] | None = None) -> None:
        """Make every later request answer ``status`` with ``headers``."""
        target.fault(Reply(status, headers=dict(headers or {})))

    def slow(self, target: Any, seconds: float) -> None:
        """Make every later request wait ``seconds`` and then lose its answer."""
        target.fault(Reply(delay=seconds, drop=True))

    def drop(self, target: Any) -> None:
        """Make every later request lose its answer (the connection closes without one)."""
        target.fault(Reply(drop=True))

    def recover(self, target: Any) -> None:
        """End the failure :meth:`fail`, :meth:`slow` or :meth:`drop` began."""
        target.fault(None)

    def records(self, target: Any) -> int | None:
        """How many records the target holds (``None``: it cannot tell, the check is skipped)."""
        count: int = target.records()
        return count

    # -- helpers ---------------------------------------------------------------------------------

    @property
    def _entry_point(self) -> str:
        return self.entry_point or self.destination_type

    @pytest.fixture
    def plugins(self) -> Iterator[PluginManager]:
        """The plugin under test in a fresh plugin manager; its ``shutdown`` hook runs afterwards."""
        if self.plugin is not None:
            manager = PluginManager()
            manager.register_objects([self.plugin])
        else:
            manager = PluginManager(allow=[self._entry_point])
            manager.load_entrypoints()
        yield manager
        manager.hooks.shutdown()

    def _destination(self, plugins: PluginManager, target: Any, **extra: Any) -> Destination:
        return make_destination(
            self.destination_type,
            {**self.options(target), **extra},
            plugins=plugins,
            events=self.events,
        )

    def _attempt(
        self,
        plugins: PluginManager,
        destination: Destination,
        event: Event | None = None,
        *,
        attempt: int = 1,
    ) -> Outcome:
        event = event or self._event(self.events[0])
        payload = render_payload(plugins.hooks, event, destination)
        delivery = make_delivery(event, destination, payload, attempt=attempt)
        outcome = plugins.hooks.deliver(delivery, destination)
        assert outcome is not None, (
            f"deliver returned None for a {self.destination_type!r} destination: return None only "
            "when destination.type is not yours"
        )
        return outcome

    @staticmethod
    def _event(event_type: str, call_id: str | None = None) -> Event:
        changes: dict[str, Any] = {"id": f"evt-{uuid.uuid4().hex}"}
        if call_id is not None:
            call = canned_event(event_type).model_dump(mode="json", by_alias=True)["call"]
            changes["call"] = {**call, "id": call_id, "externalId": call_id}
        return canned_event(event_type, **changes)

    def _expect(
        self, outcome: Outcome, kind: OutcomeKind, situation: str, fix: str = _FIX_STATUS
    ) -> None:
        assert outcome.kind is kind, (
            f"{situation} gave {outcome.kind.value.upper()} ({outcome.error}); it must be "
            f"{kind.value.upper()}: {fix}"
        )
