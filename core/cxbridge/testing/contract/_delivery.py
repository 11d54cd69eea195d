"""The contract's checks of ``deliver``: every subscribed event is delivered, other types are left
alone, HTTP answers, timeouts and lost answers give the right outcomes, a redelivery writes nothing
twice, and concurrent calls stay apart."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from cxbridge.destinations import Destination
from cxbridge.outcome import Outcome, OutcomeKind
from cxbridge.plugins import PluginManager
from cxbridge.testing.bridge import make_delivery
from cxbridge.testing.contract._base import ContractBase

__all__ = ["DeliveryContract"]


class DeliveryContract(ContractBase):
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
