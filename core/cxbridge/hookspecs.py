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

The observing hooks accept wrapper implementations (``@hookimpl(wrapper=True)``, and pluggy's older
``hookwrapper=True``), run around the other implementations as pluggy runs them: a wrapper receives the
list of the others' non-None results (old-style: a ``pluggy.Result``). Isolation still holds: an
exception of an implementation is logged, not thrown into the wrappers, and a wrapper that raises is
logged too, without stopping the others.
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

    The options model is validated with a context (pydantic's ``info.context``): ``events``, the
    frozenset of event types the destination subscribes to, ``tenant`` and ``destination`` (its name).
    A validator may refuse an event type the plugin cannot send; the error points at the tenant file.
    Template fields (``TextTemplate``, ``JsonTemplate``, ``Condition``) — defaults included — are
    checked at load against every subscribed event type, and an unknown variable is reported at the
    destination's ``type:`` line when it comes from a default the tenant file did not write.

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
    """Observe an event once, when it is first accepted: after it and its deliveries are stored, before
    the deliveries are enqueued.

    :param event: the validated event (one of the models in :mod:`cxbridge.events`); read-only.
    :param tenant: the tenant's name.
    :return: ignored.

    Use it for metrics, audit logs or side channels. Every implementation runs; one that raises is logged
    with the plugin's name and does not stop the others or the delivery. Only the accept that stored the
    event calls it: a duplicate (same tenant and id), even one accepted at the same moment by another
    thread or process, does not. It is at most once: a process that dies between storing the event and
    this call does not make it later. The scheduler may already be attempting a delivery of the event
    while this runs.

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
            # Dates render in the tenant's time zone; render_bytes writes compact JSON.
            context = event.template_context(timezone=destination.timezone)
            body = destination.options.body.render_bytes(context, timezone=destination.timezone)
            return Payload(body)
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
            try:
                response = client.post(destination.options.base_url, content=delivery.payload.body,
                                       headers={"Idempotency-Key": delivery.id})
            except httpx.TransportError as exc:  # timeouts, refused or dropped connections
                return Outcome.retry(f"{type(exc).__name__}: {exc}")
            # 2xx delivered; 408/425/429/5xx retry honouring Retry-After; 410 disables; 4xx permanent.
            return outcome_for_status(response.status_code,
                                      retry_after=response.headers.get("Retry-After"))
    """


@hookspec
def on_delivery_failed(delivery: Delivery, destination: Destination, reason: str) -> None:
    """Observe a delivery that was dead-lettered. At least once per dead letter: de-duplicate on
    ``delivery.id`` (with ``reason``) if a repeat matters.

    :param delivery: the delivery as stored when the hook runs (normally: as of its last attempt).
    :param destination: the destination it was meant for.
    :param reason: why it was given up, e.g. ``"window expired: HTTP 503"``, ``"permanent: HTTP 400"``,
        ``"destination disabled"``, ``"template error: ..."``.
    :return: ignored.

    The dead letter is stored, in the same transaction as the dead status, before this runs; the process
    that stored it calls the hooks right after the commit. If that process dies before the hooks finished,
    the scheduler of any process calls them again about 30 seconds later, so a crash can repeat a call but
    never lose one; a hook still running after 30 seconds may also be called again. A replay that fails
    again is a new dead letter and calls it again. Every implementation runs; one that raises is logged
    with the plugin's name, does not stop the others, and is not called again for that dead letter.

    Example::

        @hookimpl
        def on_delivery_failed(delivery, destination, reason):
            pager.alert(f"{destination.name}: {delivery.id} dead: {reason}")
    """


@hookspec
def shutdown() -> None:
    """Release what the plugin holds — pooled connections, sessions, threads — as the engine stops.

    :return: ignored.

    Called once by :meth:`cxbridge.Engine.close` after the workers have stopped, so no
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
