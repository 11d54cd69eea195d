"""The delivery engine on an injected clock: fan-out, retries across the 24-hour window, dead letters,
disabled destinations, the sweeper and replay. Runs with the store on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
import time
from datetime import timedelta
from itertools import pairwise
from pathlib import Path

from cxbridge import Outcome
from cxbridge.engine import QUEUE_NAME
from cxbridge.replay import replay
from cxbridge.routing import delivery_id
from cxbridge.store import DeliveryFilter
from tests.engine_support import MakeEngine, make_event
from tests.scripted_plugin import ScriptedPlugin


def test_fan_out_stores_one_delivery_per_matching_destination(
    make_engine: MakeEngine, tmp_path: Path, store_url: str
):
    engine, plugin, _ = make_engine(tmp_path, database_url=store_url)
    low = engine.accept(make_event(score=40))
    high = engine.accept(make_event(score=90))
    summary = engine.accept(make_event("call_summary"))

    assert len(low.delivery_ids) == 2  # crm + low-scores (when: qi.score < 50)
    assert len(high.delivery_ids) == 1  # the `when` condition filters low-scores out
    assert len(summary.delivery_ids) == 1
    assert len(plugin.events) == 3
    assert engine.broker.queues[QUEUE_NAME].qsize() == 4


def test_same_event_id_again_fans_out_nothing_new(
    make_engine: MakeEngine, tmp_path: Path, store_url: str
):
    engine, plugin, _ = make_engine(tmp_path, database_url=store_url)
    first = engine.accept(make_event(event_id="evt-1"))
    again = engine.accept(make_event(event_id="evt-1"))

    assert again.duplicate and not first.duplicate
    assert sorted(again.delivery_ids) == sorted(first.delivery_ids)
    assert engine.store.count_deliveries(DeliveryFilter(status=None)) == 2
    assert len(plugin.events) == 1  # on_event is not called for a duplicate


def test_delivery_ids_are_stable_per_event_and_destination(make_engine: MakeEngine, tmp_path: Path):
    engine, _, _ = make_engine(tmp_path)
    accepted = engine.accept(make_event(event_id="evt-stable"))
    (tmp_path / "other").mkdir()
    other_engine, _, _ = make_engine(tmp_path / "other")
    assert other_engine.accept(make_event(event_id="evt-stable")).delivery_ids == (
        accepted.delivery_ids
    )


def test_503_forever_retries_on_schedule_and_dies_at_24_hours(
    make_engine: MakeEngine, tmp_path: Path, store_url: str
):
    plugin = ScriptedPlugin(default=Outcome.retry("HTTP 503", status_code=503))
    engine, plugin, clock = make_engine(
        tmp_path, plugin=plugin, database_url=store_url, short_delay=0
    )
    (delivery_id,) = engine.accept(make_event("call_summary")).delivery_ids
    start = clock.now()
    schedule = engine.tenants["acme"].destinations["crm"].retry_for("call_summary").schedule

    attempt_times = []
    while True:
        record = engine.store.get_delivery(delivery_id)
        assert record is not None
        if record.status != "pending":
            break
        assert record.next_attempt_at is not None
        clock.set(max(clock.now(), record.next_attempt_at))
        assert engine.process(delivery_id) is not None
        attempt_times.append(clock.now())
        assert len(attempt_times) < 100

    for number, (before, after) in enumerate(pairwise(attempt_times), start=1):
        ceiling = schedule[min(number, len(schedule)) - 1]
        assert 0 <= (after - before).total_seconds() <= ceiling  # full jitter: [0, ceiling]
    assert attempt_times[-1] - start <= timedelta(hours=24)
    assert attempt_times[-1] - start > timedelta(hours=24) - timedelta(seconds=schedule[-1])
    record = engine.store.get_delivery(delivery_id)
    assert record is not None and record.status == "dead"
    assert len(plugin.failed) == 1
    assert plugin.failed[0][1].startswith("window expired")
    assert len(engine.store.attempts_of(delivery_id)) == len(attempt_times)


def test_permanent_failure_is_dead_after_one_attempt(
    make_engine: MakeEngine, tmp_path: Path, store_url: str
):
    plugin = ScriptedPlugin(default=Outcome.permanent("HTTP 400", status_code=400))
    engine, plugin, _ = make_engine(tmp_path, plugin=plugin, database_url=store_url)
    (delivery_id,) = engine.accept(make_event("call_summary")).delivery_ids

    engine.process(delivery_id)

    record = engine.store.get_delivery(delivery_id)
    assert record is not None and record.status == "dead" and record.attempts == 1
    assert [reason for _, reason in plugin.failed] == ["permanent: HTTP 400"]
    (dead,) = engine.store.dead_letters_of(delivery_id)
    assert dead["reason"] == "permanent: HTTP 400"
    assert engine.process(delivery_id) is None  # a second copy of the message does nothing


def test_retry_after_is_honoured(make_engine: MakeEngine, tmp_path: Path):
    plugin = ScriptedPlugin()
    plugin.script.append(Outcome.retry("HTTP 429", retry_after=120, status_code=429))
    engine, plugin, clock = make_engine(tmp_path, plugin=plugin, short_delay=0)
    (delivery_id,) = engine.accept(make_event("call_summary")).delivery_ids
    start = clock.now()

    engine.process(delivery_id)
    record = engine.store.get_delivery(delivery_id)
    assert record is not None and record.next_attempt_at == start + timedelta(seconds=120)

    clock.advance(119)
    assert engine.process(delivery_id) is None  # not before 120 s
    assert engine.store.due() == []
    clock.advance(1)
    assert engine.store.due() == [delivery_id]
    assert engine.process(delivery_id) == Outcome.delivered()
    assert len(plugin.calls) == 2


def test_410_disables_the_destination_until_enabled(
    make_engine: MakeEngine, tmp_path: Path, store_url: str
):
    plugin = ScriptedPlugin()
    plugin.script.append(Outcome.permanent("HTTP 410", disable_destination=True))
    engine, plugin, _ = make_engine(tmp_path, plugin=plugin, database_url=store_url)
    (first,) = engine.accept(make_event("call_summary")).delivery_ids
    engine.process(first)
    (second,) = engine.accept(make_event("call_summary")).delivery_ids

    engine.process(second)

    assert len(plugin.calls) == 1  # the second delivery was never attempted
    assert [reason for _, reason in plugin.failed] == [
        "permanent: HTTP 410",
        "destination disabled: HTTP 410",
    ]
    assert engine.store.enable_destination("acme", "crm")
    replay(engine, DeliveryFilter(ids=[second]))
    engine.process(second)
    record = engine.store.get_delivery(second)
    assert record is not None and record.status == "delivered"


def test_disabling_one_destination_leaves_the_others_delivering(
    make_engine: MakeEngine, tmp_path: Path, store_url: str
):
    plugin = ScriptedPlugin()
    plugin.script.append(Outcome.permanent("HTTP 410", disable_destination=True))
    engine, plugin, _ = make_engine(tmp_path, plugin=plugin, database_url=store_url)
    event = make_event(score=40)  # to crm and low-scores
    engine.accept(event)
    crm = delivery_id("acme", event.id, "crm")
    low = delivery_id("acme", event.id, "low-scores")

    engine.process(crm)
    engine.process(low)

    assert engine.store.disabled_reason("acme", "crm") == "HTTP 410"
    record = engine.store.get_delivery(low)
    assert record is not None and record.status == "delivered"
    assert [d.destination for d in plugin.calls] == ["crm", "low-scores"]


def test_exception_in_deliver_hook_is_a_retry_with_traceback(
    make_engine: MakeEngine, tmp_path: Path
):
    plugin = ScriptedPlugin()
    plugin.script.append(RuntimeError("socket exploded"))
    engine, _, _ = make_engine(tmp_path, plugin=plugin, short_delay=0)
    (delivery_id,) = engine.accept(make_event("call_summary")).delivery_ids

    outcome = engine.process(delivery_id)

    assert outcome is not None and outcome.kind.value == "retry"
    (attempt,) = engine.store.attempts_of(delivery_id)
    assert "RuntimeError: socket exploded" in attempt["error"]
    assert "Traceback" in attempt["response_excerpt"]


def test_template_error_at_fan_out_dead_letters_only_that_delivery(
    make_engine: MakeEngine, tmp_path: Path
):
    plugin = ScriptedPlugin()
    tenant = """
    tenant: acme
    destinations:
      typed:
        type: scripted
        events: [quality_score]
        when: qi.score > call.externalId
      fine:
        type: scripted
        events: [quality_score]
    """
    engine, plugin, _ = make_engine(tmp_path, plugin=plugin, tenant_yaml=tenant)

    accepted = engine.accept(make_event(score=40))

    assert len(accepted.delivery_ids) == 2 and len(accepted.dead) == 1
    (dead_id,) = accepted.dead
    record = engine.store.get_delivery(dead_id)
    assert record is not None and record.status == "dead"
    assert record.last_error is not None and record.last_error.startswith("template error")
    assert [d.id for d, _ in plugin.failed] == [dead_id]


def test_message_deleted_from_the_broker_is_still_delivered(
    make_engine: MakeEngine, tmp_path: Path, store_url: str
):
    engine, plugin, clock = make_engine(tmp_path, database_url=store_url, lost_after=60)
    (delivery_id,) = engine.accept(make_event("call_summary")).delivery_ids
    engine.broker.flush_all()  # the message is gone behind the engine's back

    assert engine.sweep() == 0  # recently enqueued: give the broker a chance first
    clock.advance(61)
    assert engine.sweep() == 1
    (message,) = list(engine.broker.queues[QUEUE_NAME].queue)
    assert message.decode()  # it is a real message for the actor
    engine.process(delivery_id)
    record = engine.store.get_delivery(delivery_id)
    assert record is not None and record.status == "delivered"
    assert len(plugin.calls) == 1


def test_replay_resends_the_stored_payload_with_a_fresh_window(
    make_engine: MakeEngine, tmp_path: Path, store_url: str
):
    plugin = ScriptedPlugin()
    plugin.script.append(Outcome.permanent("HTTP 422"))
    engine, plugin, _ = make_engine(tmp_path, plugin=plugin, database_url=store_url)
    (delivery_id,) = engine.accept(make_event("call_summary")).delivery_ids
    engine.process(delivery_id)
    original = plugin.calls[0].payload

    assert engine.store.count_deliveries(DeliveryFilter(tenant="acme")) == 1
    assert replay(engine, DeliveryFilter(tenant="acme", destination="crm")).replayed == 1
    engine.process(delivery_id)

    record = engine.store.get_delivery(delivery_id)
    assert record is not None and record.status == "delivered" and record.attempts == 2
    assert plugin.calls[1].payload == original and plugin.calls[1].id == delivery_id
    (dead,) = engine.store.dead_letters_of(delivery_id)
    assert dead["replayed_at"] is not None


def test_retry_policy_can_be_overridden_per_event_type(make_engine: MakeEngine, tmp_path: Path):
    tenant = """
    tenant: acme
    retry: {schedule: [10]}
    destinations:
      crm:
        type: scripted
        events: [call_summary, quality_score]
        retry:
          window: 7200
          events:
            quality_score: {window: 25, jitter: 0}
    """
    plugin = ScriptedPlugin(default=Outcome.retry("HTTP 503"))
    engine, plugin, clock = make_engine(tmp_path, plugin=plugin, tenant_yaml=tenant, short_delay=0)
    crm = engine.tenants["acme"].destinations["crm"]
    assert crm.retry_for("call_summary").window == 7200
    assert crm.retry_for("call_summary").schedule == (10,)
    assert crm.retry_for("quality_score").window == 25

    (delivery_id,) = engine.accept(make_event(score=99)).delivery_ids
    for _ in range(3):
        engine.process(delivery_id)
        clock.advance(10)
    record = engine.store.get_delivery(delivery_id)
    assert record is not None and record.status == "dead" and record.attempts == 3


def test_purge_removes_only_finished_deliveries_past_retention(
    make_engine: MakeEngine, tmp_path: Path, store_url: str
):
    engine, _, clock = make_engine(tmp_path, database_url=store_url)
    (done,) = engine.accept(make_event("call_summary")).delivery_ids
    engine.process(done)
    (waiting,) = engine.accept(make_event("call_summary")).delivery_ids

    clock.advance(31 * 24 * 3600)
    assert engine.purge() == 1
    assert engine.store.get_delivery(done) is None
    assert engine.store.get_delivery(waiting) is not None


def test_dead_letter_hooks_run_exactly_once_per_dead_letter(
    make_engine: MakeEngine, tmp_path: Path
):
    plugin = ScriptedPlugin(default=Outcome.permanent("HTTP 400"))
    plugin.script.append(Outcome.retry("HTTP 503"))
    engine, plugin, clock = make_engine(tmp_path, plugin=plugin, short_delay=0)
    (delivery_id,) = engine.accept(make_event("call_summary")).delivery_ids
    for _ in range(3):
        engine.process(delivery_id)
        clock.advance(3600)
    assert len(plugin.calls) == 2
    assert len(plugin.failed) == 1


def test_a_transform_that_raises_dead_letters_only_that_delivery(
    make_engine: MakeEngine, tmp_path: Path
):
    tenant = """
    tenant: acme
    destinations:
      broken:
        type: scripted
        events: [call_summary]
        label: explode
      fine:
        type: scripted
        events: [call_summary]
    """
    engine, plugin, _ = make_engine(tmp_path, tenant_yaml=tenant)
    accepted = engine.accept(make_event("call_summary"))
    (dead_id,) = accepted.dead
    record = engine.store.get_delivery(dead_id)
    assert record is not None and record.last_error == "transform failed: RuntimeError: plugin bug"
    (pending,) = set(accepted.delivery_ids) - {dead_id}
    engine.process(pending)
    assert [reason for _, reason in plugin.failed] == [record.last_error]


def test_a_message_arriving_before_its_delivery_is_due_is_sent_again_for_the_rest(
    make_engine: MakeEngine, tmp_path: Path
):
    plugin = ScriptedPlugin()
    plugin.script.append(Outcome.retry("HTTP 503", retry_after=10))
    engine, plugin, clock = make_engine(tmp_path, plugin=plugin, short_delay=30)
    (delivery_id,) = engine.accept(make_event("call_summary")).delivery_ids
    engine.process(delivery_id)
    delayed = engine.broker.queues[f"{QUEUE_NAME}.DQ"]
    assert delayed.qsize() == 1  # the retry, 10 s out

    clock.advance(4)
    assert engine.process(delivery_id) is None  # a copy arrived 6 s early
    assert delayed.qsize() == 2
    eta_ms = json.loads(delayed.queue[-1])["options"]["eta"]
    assert 5_000 < eta_ms - time.time() * 1000 <= 6_000  # the rest of the wait, not a new one
    assert len(plugin.calls) == 1
