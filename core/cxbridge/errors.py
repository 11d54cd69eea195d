"""Exception types. Each carries the ids a person needs to find the thing that went wrong.

Messages say what happened and what to do about it; they never carry secrets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "AddressRefused",
    "ConfigError",
    "ConfigProblem",
    "CxbridgeError",
    "DeliveryError",
    "EventValidationError",
    "PluginError",
    "RedirectRefused",
    "ResolutionFailed",
    "SignatureError",
    "StoreUnavailableError",
    "TemplateError",
    "TemplateRenderError",
    "TemplateSyntaxError",
]


class CxbridgeError(Exception):
    """Base of every cxbridge error. ``tenant``, ``destination`` and ``event_id`` are set where known."""

    def __init__(
        self,
        message: str,
        *,
        tenant: str | None = None,
        destination: str | None = None,
        event_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.tenant = tenant
        self.destination = destination
        self.event_id = event_id

    def __str__(self) -> str:
        where = ", ".join(
            f"{name}={value}"
            for name, value in (
                ("tenant", self.tenant),
                ("destination", self.destination),
                ("event", self.event_id),
            )
            if value
        )
        return f"{self.message} ({where})" if where else self.message


class EventValidationError(CxbridgeError):
    """An event did not match its schema. ``problems`` holds ``(field path, message)`` pairs."""

    def __init__(self, problems: Sequence[tuple[str, str]], **context: str | None) -> None:
        self.problems = list(problems)
        lines = "; ".join(f"{path}: {msg}" for path, msg in self.problems)
        super().__init__(f"invalid event: {lines}", **context)


@dataclass(frozen=True)
class ConfigProblem:
    """One problem in a tenant file, at a position (1-based line and column)."""

    file: str
    line: int
    column: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}: {self.message}"


class ConfigWarning(UserWarning):
    """Something in a tenant file that loads but is probably a mistake. A plugin's options model
    warns with it (``warnings.warn(..., ConfigWarning)``) while it validates; ``cxbridge validate``
    prints each one with its file, line and column, and the file still loads."""


class ConfigError(CxbridgeError):
    """A tenant configuration is invalid. ``problems`` lists every problem found, not just the first."""

    def __init__(self, problems: Sequence[ConfigProblem], **context: str | None) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems), **context)


class TemplateError(CxbridgeError):
    """Base of template errors. ``line`` and ``column`` are positions inside the template (1-based).

    ``path`` locates the template inside a JSON document (keys and list indices from the document's
    root to the string leaf) when it is one leaf of a ``JsonTemplate``; otherwise ``None``.
    """

    def __init__(
        self,
        message: str,
        *,
        line: int | None = None,
        column: int | None = None,
        path: tuple[str | int, ...] | None = None,
        **context: str | None,
    ) -> None:
        super().__init__(message, **context)
        self.line = line
        self.column = column
        self.path = path


class TemplateSyntaxError(TemplateError):
    """A template cannot be compiled or uses unknown filters or variables. Found at load time.

    A ``JsonTemplate`` with several broken leaves raises one error for the first and lists the
    others in ``more``, so that a config file's every problem is reported at once.
    """

    more: tuple[TemplateSyntaxError, ...] = ()


class TemplateRenderError(TemplateError):
    """A template failed while rendering an event (type error, resource limit, undefined variable)."""


class PluginError(CxbridgeError):
    """A plugin failed to load or broke the hook contract. ``plugin`` names it."""

    def __init__(self, message: str, *, plugin: str, **context: str | None) -> None:
        super().__init__(message, **context)
        self.plugin = plugin


class DeliveryError(CxbridgeError):
    """A delivery could not be made or replayed. ``delivery_id`` names it where known."""

    def __init__(self, message: str, *, delivery_id: str | None = None, **context: str | None):
        super().__init__(message, **context)
        self.delivery_id = delivery_id


class SignatureError(CxbridgeError):
    """A webhook signature is missing, malformed, stale or does not match."""


class AddressRefused(CxbridgeError):
    """The outbound guard refused every address of a host; ``rule`` says why. Permanent: the
    same address is refused on every attempt until ``allow_networks`` changes."""

    def __init__(
        self,
        host: str,
        address: str,
        rule: str,
        *,
        hint: str = "add it to allow_networks to permit",
        **context: str | None,
    ) -> None:
        self.host = host
        self.address = address
        self.rule = rule
        named = address if host in (address, f"[{address}]") else f"{host} -> {address}"
        super().__init__(f"refused: {named} is {rule}; {hint}", **context)


class ResolutionFailed(CxbridgeError):
    """A host name did not resolve (NXDOMAIN, no network, resolver failure). Worth retrying."""

    def __init__(self, host: str, reason: str, **context: str | None) -> None:
        self.host = host
        super().__init__(f"DNS lookup failed for {host!r}: {reason}", **context)


class RedirectRefused(CxbridgeError):
    """A server answered with a redirect. Redirects are never followed (the target would escape
    the guard's checks and receive credentials): a permanent failure naming the ``Location``."""

    def __init__(self, status_code: int, location: str | None, **context: str | None) -> None:
        self.status_code = status_code
        self.location = location
        super().__init__(
            f"HTTP {status_code} redirect to {location or '(no Location)'}; redirects are not "
            "followed: configure the final address",
            **context,
        )


class StoreUnavailableError(CxbridgeError):
    """The store (database) could not be written or read right now: it is down or unreachable, its
    disk is full, or it is locked. Nothing was stored by the call that raised it; the same call
    may be repeated once the store is back (accepting an event is idempotent on its id)."""
