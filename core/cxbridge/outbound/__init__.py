"""The outbound guard: every connection a plugin opens goes through it.

One policy (:class:`NetworkPolicy`, built from a destination's ``allow_networks``) decides which
addresses may be reached; two adapters apply it where the connection is opened, so a DNS answer
is vetted once and the socket goes to the vetted address:

- :class:`GuardedTransport`, an ``httpx`` transport, for httpx-based plugins;
- :class:`GuardedSession`, a ``requests`` session (simple-salesforce, zenpy), which also takes a
  destination's endpoint override. It is imported on first use, so the core needs ``requests``
  only for plugins that use it (the ``cxbridge[requests]`` extra).

Redirects are never followed: a 3xx is :class:`~cxbridge.RedirectRefused`, a permanent failure
naming the ``Location``. :func:`guard_outcome` turns the guard's errors into outcomes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from pydantic import Field, IPvAnyNetwork

from cxbridge.errors import AddressRefused, RedirectRefused, ResolutionFailed
from cxbridge.outbound._httpx import GuardedTransport
from cxbridge.outbound._policy import NetworkPolicy
from cxbridge.outcome import Outcome

if TYPE_CHECKING:
    from cxbridge.outbound._requests import GuardedSession

__all__ = ["AllowNetworks", "GuardedSession", "GuardedTransport", "NetworkPolicy", "guard_outcome"]

# The ``allow_networks`` option every plugin's options model declares, feeding NetworkPolicy.
AllowNetworks = Annotated[
    list[IPvAnyNetwork],
    Field(
        default_factory=list,
        description="Networks (CIDR) this destination may reach besides public addresses, e.g. "
        "[10.20.0.0/16] for an endpoint on an internal network; cloud metadata addresses need "
        "a rule naming them exactly (169.254.169.254/32).",
    ),
]


def guard_outcome(exc: BaseException) -> Outcome | None:
    """The outcome of an attempt the guard stopped, or ``None`` when ``exc`` is not the guard's:
    a refused address or a redirect is permanent, a failed DNS lookup is retried."""
    if isinstance(exc, AddressRefused):
        return Outcome.permanent(str(exc))
    if isinstance(exc, RedirectRefused):
        return Outcome.permanent(str(exc), status_code=exc.status_code)
    if isinstance(exc, ResolutionFailed):
        return Outcome.retry(str(exc))
    return None


def __getattr__(name: str) -> Any:
    if name == "GuardedSession":  # imports requests, which only requests-based plugins need
        from cxbridge.outbound._requests import GuardedSession

        return GuardedSession
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
