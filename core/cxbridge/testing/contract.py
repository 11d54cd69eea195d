"""Contract tests every destination plugin should pass, switched on by subclassing :class:`PluginContract`.

::

    from cxbridge.testing import PluginContract

    class TestAcme(PluginContract):
        destination_type = "acme"                    # also the entry-point name, unless entry_point says
        def options(self, target):                   # a good config pointed at the fake target
            return {"base_url": target.url(""), "token": "s3cret-token"}

Each check fails with a message that says what to fix. A plugin that talks to something other than the
kit's :class:`~cxbridge.testing.FakeTarget` overrides the ``target`` fixture and the few methods that
program it (:meth:`~PluginContract.fail`, :meth:`~PluginContract.slow`, :meth:`~PluginContract.drop`,
:meth:`~PluginContract.records`). Every skip says why and how to enable the check.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

import pytest
import yaml
from pydantic import BaseModel, SecretStr

from cxbridge.destinations import Destination
from cxbridge.errors import ConfigError
from cxbridge.events import EVENT_TYPES, Event
from cxbridge.outcome import Outcome, OutcomeKind
from cxbridge.plugins import PluginManager
from cxbridge.routing import render_payload
from cxbridge.testing.bridge import Bridge, canned_event, make_delivery, make_destination
from cxbridge.testing.target import FakeTarget, Reply

__all__ = ["PluginContract"]

_FIX_STATUS = (
    "map HTTP answers with cxbridge.outcome_for_status(response.status_code, "
    "retry_after=response.headers.get('Retry-After'))"
)


def _secret_values(value: Any) -> Iterator[str]:
    """Every ``SecretStr`` value inside a validated options model."""
    if isinstance(value, SecretStr):
        yield value.get_secret_value()
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            yield from _secret_values(getattr(value, name))
    elif isinstance(value, dict):
        for item in value.values():
            yield from _secret_values(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _secret_values(item)


def _outcome_text(outcome: Outcome) -> str:
    return " ".join(
        str(part)
        for part in (
            outcome.error,
            outcome.provider_code,
            outcome.remote_id,
            outcome.response_excerpt,
        )
        if part is not None
    )


class PluginContract:
    """The contract of a destination plugin, as pytest tests. Subclass it as ``Test…``.

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

    # -- registration and options ----------------------------------------------------------------

    def test_registers_through_its_entry_point(self) -> None:
        if self.plugin is not None and self.entry_point is None:
            pytest.skip(
                "this class tests `plugin` directly; set entry_point = NAME to also check the "
                "installed entry point"
            )
        manager = PluginManager(allow=[self._entry_point])
        manager.load_entrypoints()
        assert not manager.failures, f"the plugin failed to load: {manager.failures}"
        registered = manager.destination_types.get(self.destination_type)
        assert registered is not None, (
            f"no plugin registered destination type {self.destination_type!r} through the entry "
            f'point {self._entry_point!r}: add `{self._entry_point} = "your_module"` under '
            "[project.entry-points.cxbridge] and call register() in register_destinations"
        )
        assert registered.plugin == self._entry_point

    def test_options_accept_a_good_config(self, plugins: PluginManager, target: Any) -> None:
        destination = self._destination(plugins, target)
        assert destination.type == self.destination_type

    def test_options_refuse_a_misspelt_key(self, plugins: PluginManager, target: Any) -> None:
        good = self.options(target)
        key = next(iter(good), "url")
        typo = key + key[-1]
        with pytest.raises(ConfigError) as refused:
            self._destination(plugins, target, **{typo: good.get(key, "x")})
            pytest.fail(
                f"the options model accepted the misspelt key {typo!r}: give it "
                "model_config = ConfigDict(extra='forbid') so a typo is an error at load"
            )
        messages = [p.message for p in refused.value.problems]
        assert any(f"dest.{typo}" in m for m in messages), (
            f"the problem does not name the field path destinations.dest.{typo}: {messages}"
        )

    def test_options_refuse_missing_required_keys(
        self, plugins: PluginManager, target: Any
    ) -> None:
        model = plugins.destination_types[self.destination_type].options
        required = [
            field.alias or name for name, field in model.model_fields.items() if field.is_required()
        ]
        if not required:
            pytest.skip("the options model has no required key, so none can be missing")
        good = self.options(target)
        for key in required:
            config = {k: v for k, v in good.items() if k != key}
            with pytest.raises(ConfigError) as refused:
                make_destination(self.destination_type, config, plugins=plugins, events=self.events)
            messages = [p.message for p in refused.value.problems]
            assert any(f"dest.{key}" in m for m in messages), (
                f"a config without {key!r} is refused, but no problem names the field: {messages}"
            )

    # -- delivering ------------------------------------------------------------------------------

    def test_delivers_each_subscribed_event(self, plugins: PluginManager, target: Any) -> None:
        destination = self._destination(plugins, target)
        for event_type in self.events:
            outcome = self._attempt(plugins, destination, self._event(event_type))
            self._expect(
                outcome,
                OutcomeKind.DELIVERED,
                f"a {event_type} event against a healthy target",
                "check transform renders a payload your deliver can send for every event type in "
                "`events` (or narrow `events` to the types the plugin supports)",
            )

    def test_leaves_other_destination_types_alone(
        self, plugins: PluginManager, target: Any
    ) -> None:
        mine = self._destination(plugins, target)
        other = Destination("acme", "other", "kit-not-mine", frozenset(self.events), options=None)
        event = self._event(self.events[0])
        assert plugins.hooks.transform(event, other) is None, (
            "transform answered for a destination type that is not yours: start with "
            f"`if destination.type != {self.destination_type!r}: return None`"
        )
        delivery = make_delivery(event, other)
        assert plugins.hooks.deliver(delivery, other) is None, (
            "deliver answered for a destination type that is not yours: start with "
            f"`if destination.type != {self.destination_type!r}: return None`"
        )
        assert mine.type == self.destination_type

    @pytest.mark.parametrize("status", [500, 503])
    def test_5xx_is_retried(self, plugins: PluginManager, target: Any, status: int) -> None:
        destination = self._destination(plugins, target)
        self.fail(target, status)
        self._expect(
            self._attempt(plugins, destination), OutcomeKind.RETRY, f"HTTP {status} from the target"
        )

    def test_429_is_retried_after_its_retry_after(
        self, plugins: PluginManager, target: Any
    ) -> None:
        destination = self._destination(plugins, target)
        self.fail(target, 429, {"Retry-After": "7"})
        outcome = self._attempt(plugins, destination)
        self._expect(outcome, OutcomeKind.RETRY, "HTTP 429 with Retry-After: 7")
        assert outcome.retry_after == 7, (
            f"HTTP 429 with Retry-After: 7 gave retry_after={outcome.retry_after}; pass the "
            "header on: Outcome.retry(..., retry_after=cxbridge.parse_retry_after(value))"
        )

    def test_410_is_permanent(self, plugins: PluginManager, target: Any) -> None:
        destination = self._destination(plugins, target)
        self.fail(target, 410)
        outcome = self._attempt(plugins, destination)
        self._expect(outcome, OutcomeKind.PERMANENT, "HTTP 410 Gone")
        if self.gone_disables:
            assert outcome.disable_destination, (
                "HTTP 410 Gone did not disable the destination: return "
                "Outcome.permanent(..., disable_destination=True) (or set gone_disables = False "
                "when 410 means something else at this destination)"
            )

    @pytest.mark.parametrize("status", [400, 401, 404, 422])
    def test_other_4xx_are_permanent(
        self, plugins: PluginManager, target: Any, status: int
    ) -> None:
        destination = self._destination(plugins, target)
        self.fail(target, status)
        self._expect(
            self._attempt(plugins, destination),
            OutcomeKind.PERMANENT,
            f"HTTP {status} from the target",
        )

    def test_a_timeout_is_retried(self, plugins: PluginManager, target: Any) -> None:
        if self.timeout_options is None:
            pytest.skip(
                "set timeout_options to options with a short timeout (and slow_seconds above it) "
                "to check that a slow target is retried"
            )
        destination = self._destination(plugins, target, **self.timeout_options)
        self.slow(target, self.slow_seconds)
        self._expect(
            self._attempt(plugins, destination),
            OutcomeKind.RETRY,
            f"a target slower than the timeout ({self.slow_seconds} s)",
            "catch httpx.TransportError (timeouts included) and return Outcome.retry(...)",
        )

    def test_a_lost_response_is_retried(self, plugins: PluginManager, target: Any) -> None:
        destination = self._destination(plugins, target)
        self.drop(target)
        self._expect(
            self._attempt(plugins, destination),
            OutcomeKind.RETRY,
            "a connection closed without an answer",
            "catch httpx.TransportError and return Outcome.retry(...)",
        )

    def test_the_same_delivery_twice_leaves_one_record(
        self, plugins: PluginManager, target: Any
    ) -> None:
        destination = self._destination(plugins, target)
        event = self._event(self.events[0])
        first = self._attempt(plugins, destination, event)
        self._expect(first, OutcomeKind.DELIVERED, "the first attempt against a healthy target")
        once = self.records(target)
        if once is None:
            pytest.skip("records() cannot count the target's records; override it to check this")
        second = self._attempt(plugins, destination, event, attempt=2)
        self._expect(second, OutcomeKind.DELIVERED, "the same delivery sent again")
        twice = self.records(target)
        assert twice == once, (
            f"the same delivery sent twice left {twice} records where once left {once}: "
            "deliveries are at-least-once, so send delivery.id as the idempotency key "
            "(Idempotency-Key header) or look the record up before creating it"
        )

    def test_deliver_is_thread_safe(self, plugins: PluginManager, target: Any) -> None:
        destination = self._destination(plugins, target)
        before = self.records(target)
        outcomes: list[Outcome] = []
        errors: list[BaseException] = []
        lock = threading.Lock()

        def work(number: int) -> None:
            try:
                event = self._event(self.events[0], call_id=f"call-kit-{number}")
                outcome = self._attempt(plugins, destination, event)
            except BaseException as exc:
                with lock:
                    errors.append(exc)
                return
            with lock:
                outcomes.append(outcome)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(self.concurrency)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not errors, f"deliver raised under {self.concurrency} concurrent calls: {errors!r}"
        failed = [o for o in outcomes if not o.ok]
        assert not failed, (
            f"{len(failed)} of {self.concurrency} concurrent deliveries failed "
            f"({failed[0].error}): deliver runs in several threads at once; share clients with a "
            "lock or keep one per thread"
        )
        after = self.records(target)
        if before is not None and after is not None:
            assert after - before == self.concurrency, (
                f"{self.concurrency} concurrent deliveries of different calls made "
                f"{after - before} records: state shared between threads is mixing them up"
            )

    # -- secrets ---------------------------------------------------------------------------------

    def test_secrets_stay_out_of_outcomes_attempt_logs_and_log_lines(
        self,
        plugins: PluginManager,
        target: Any,
        tmp_path: Path,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        caplog.set_level(logging.DEBUG)
        destination = self._destination(plugins, target)
        secrets = [s for s in (*self.secrets, *_secret_values(destination.options)) if len(s) >= 4]
        if not secrets:
            pytest.skip("no SecretStr option and no `secrets` listed: nothing can leak")
        texts = [_outcome_text(self._attempt(plugins, destination))]
        for status in (503, 401):
            self.fail(target, status)
            texts.append(_outcome_text(self._attempt(plugins, destination)))

        # The attempt log, through the real engine: a failure, then success.
        self.fail(target, 503)
        document = {
            "tenant": "acme",
            "destinations": {
                "dest": {
                    "type": self.destination_type,
                    "events": list(self.events),
                    **self.options(target),
                }
            },
        }
        plugin_objects = [self.plugin] if self.plugin is not None else []
        bridge = Bridge(
            yaml.safe_dump(document),
            tmp_path,
            plugins=plugin_objects,
            entry_points=self.plugin is None,
        )
        try:
            (delivery_id,) = bridge.send(self._event(self.events[0])).delivery_ids
            bridge.engine.process(delivery_id)
            self.recover(target)
            bridge.settle()
            for attempt in bridge.attempts(delivery_id):
                texts.append(_outcome_text(attempt.outcome))
            stored = bridge.engine.delivery(delivery_id)
            texts.append(str(stored.last_error if stored else ""))
        finally:
            bridge.close()
        for secret in secrets:
            for text in texts:
                assert secret not in text, (
                    "a secret option value appears in an outcome or the attempt log: keep "
                    "secrets out of Outcome.error and response_excerpt (scrub echoed requests)"
                )
            for line in caplog.records:
                assert secret not in line.getMessage(), (
                    f"a secret option value appears in a log line of {line.name!r}: never log "
                    "headers, tokens or options; log the destination name instead"
                )
