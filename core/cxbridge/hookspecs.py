"""The plugin API: the hooks a cxbridge plugin may implement.

A plugin is a module (usually a package installed with an entry point in the ``cxbridge`` group) whose
functions are decorated with :data:`hookimpl`::

    from cxbridge import hookimpl

    @hookimpl
    def register_destinations(register):
        register("crm", CrmOptions, description="Our in-house CRM")

An implementation may accept fewer arguments than the spec names, so the core can add arguments to a hook
without breaking plugins. Changing or removing an argument is a versioned decision: it is announced with a
deprecation warning for a minor release and removed only in the next major release.

How failures are handled differs per hook and is stated in each docstring: an exception in an observing hook
(``on_event``, ``on_delivery_failed``, ``shutdown``) is logged with the plugin's name and the other implementations still
run; an exception in ``transform`` or ``deliver`` is turned into an outcome for that one delivery.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from cxbridge.destinations import Destination
    from cxbridge.events import Event
    from cxbridge.outcome import Delivery, Outcome, Payload

__all__ = ["PROJECT_NAME", "hook_names", "hookimpl", "hookspec"]

PROJECT_NAME = "cxbridge"
hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def register_destinations(register: Callable[..., None]) -> None:
    """Register the destination types this plugin delivers to.

    :param register: call ``register(name, options_model, description="", ordering=None)`` once per
        type. ``name`` is what a tenant file writes as ``type:``; ``options_model`` is a pydantic model of
        the type's own keys (use ``extra="forbid"``). ``ordering="call"`` makes per-call order the
        default for destinations of this type: the deliveries of one call to one destination are
        attempted one at a time, in the order the events occurred (``call_create`` before
        ``call_summary``), so a plugin that finds-or-creates one record per call never races itself.
        Choose it for find-or-create targets (CRMs, ticketing); leave it ``None`` for targets that take
        each event on its own (webhooks), where order costs throughput. A destination's ``ordered:``
        key overrides the default. Keyword arguments may be added to ``register`` in later versions.
    :return: nothing.

    Called once when plugins load. A type name registered twice is an error naming both plugins.

    Example::

        class CrmOptions(BaseModel):
            model_config = ConfigDict(extra="forbid")
            base_url: str
            token: SecretStr

        @hookimpl
        def register_destinations(register):
            register("crm", CrmOptions, description="Our in-house CRM", ordering="call")
    """


@hookspec
def on_event(event: Event, tenant: str) -> None:
    """Observe an event once, when it is first accepted and before it fans out to destinations.

    :param event: the validated event (one of the models in :mod:`cxbridge.events`); read-only.
    :param tenant: the tenant's name.
    :return: ignored.

    Use it for metrics, audit logs or side channels. Every implementation runs; one that raises is logged
    with the plugin's name and does not stop the others or the delivery. A duplicate event (same tenant
    and id) does not call it again.

    Example::

        @hookimpl
        def on_event(event, tenant):
            statsd.incr(f"cxbridge.events.{tenant}.{event.type}")
    """


@hookspec(firstresult=True)
def transform(event: Event, destination: Destination) -> Payload | None:
    """Render the payload for one destination, once, at fan-out.

    :param event: the validated event.
    :param destination: the destination (``destination.type``, ``destination.options``, ...).
    :return: a :class:`~cxbridge.Payload`, or ``None`` to let another plugin answer. The first non-None
        result wins; when every plugin returns ``None`` the payload is the event's own JSON.

    The payload is stored and every attempt sends the same bytes, so do all templating here, never in
    ``deliver``. Return ``None`` for destination types that are not yours. An exception raised here (for
    example :class:`~cxbridge.errors.TemplateRenderError` for ``"90" > 85``) dead-letters this delivery
    with the error as its reason; other destinations of the event are unaffected.

    Example::

        @hookimpl
        def transform(event, destination):
            if destination.type != "crm":
                return None
            body = destination.options.body.render(event.template_context())
            return Payload(body=json.dumps(body).encode())
    """


@hookspec(firstresult=True)
def deliver(delivery: Delivery, destination: Destination) -> Outcome | None:
    """Send one delivery attempt to its destination and say how it went.

    :param delivery: the delivery (stable ``id`` for idempotency keys, ``attempt`` from 1, the stored
        ``payload``).
    :param destination: the destination it goes to.
    :return: an :class:`~cxbridge.Outcome` — ``Outcome.delivered()``, ``Outcome.retry(error,
        retry_after=...)`` for passing failures (5xx, timeouts, rate limits) or ``Outcome.permanent(error)``
        for failures another attempt cannot fix (other 4xx). ``None`` means "not my destination type". The
        first non-None result wins.

    Runs in a worker thread; it may be called concurrently for the same destination, so share clients
    with care. Do not sleep or retry inside: return ``retry`` and the engine schedules the next attempt
    (it honours ``retry_after``). An exception escaping the hook is recorded with its traceback and
    treated as a retryable failure.

    Example::

        @hookimpl
        def deliver(delivery, destination):
            if destination.type != "crm":
                return None
            response = client.post(destination.options.base_url, content=delivery.payload.body,
                                   headers={"Idempotency-Key": delivery.id})
            if response.status_code >= 500:
                return Outcome.retry(f"HTTP {response.status_code}", status_code=response.status_code)
            if response.status_code >= 400:
                return Outcome.permanent(f"HTTP {response.status_code}",
                                         status_code=response.status_code)
            return Outcome.delivered(status_code=response.status_code)
    """


@hookspec
def on_delivery_failed(delivery: Delivery, destination: Destination, reason: str) -> None:
    """Observe a delivery that was dead-lettered.

    :param delivery: the delivery, as of its last attempt.
    :param destination: the destination it was meant for.
    :param reason: why it was given up, e.g. ``"window expired: HTTP 503"``, ``"permanent: HTTP 400"``,
        ``"destination disabled"``, ``"template error: ..."``.
    :return: ignored.

    Called exactly once per dead letter (a replay that fails again calls it again). Every implementation
    runs; one that raises is logged with the plugin's name and does not stop the others. The dead letter is
    already stored when this runs, so nothing is lost if a hook fails.

    Example::

        @hookimpl
        def on_delivery_failed(delivery, destination, reason):
            pager.alert(f"{destination.name}: {delivery.id} dead: {reason}")
    """


@hookspec
def shutdown() -> None:
    """Release what the plugin holds — pooled connections, sessions, threads — as the engine stops.

    :return: ignored.

    Called once by :meth:`cxbridge.engine.Engine.close` after the workers have stopped, so no
    ``deliver`` call is running. Every implementation runs; one that raises is logged with the
    plugin's name and does not stop the others. A plugin must still work if ``deliver`` is called
    again afterwards (tests and embedded users may restart an engine in the same process).

    Example::

        @hookimpl
        def shutdown():
            for client in _clients.values():
                client.close()
            _clients.clear()
    """


def hook_names() -> list[str]:
    """Names of every hook in this API, for docs and meta-tests."""
    return [
        name
        for name, value in globals().items()
        if callable(value) and hasattr(value, f"{PROJECT_NAME}_spec")
    ]
