"""Fenced attempts: a result whose lease was lost changes nothing, leases of running attempts are
renewed, attempt numbers stay unique, and lease times agree across machines on PostgreSQL. Store on
SQLite and on PostgreSQL."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from cxbridge import Outcome
from cxbridge.clock import SystemClock
from cxbridge.outcome import Payload
from cxbridge.store import NewDelivery, Store, metadata, schema_version
from cxbridge.store._schema import MIGRATIONS
from tests.engine_support import MakeEngine, make_event
from tests.scripted_plugin import BlockingFirstAttempt, ScriptedPlugin

LEASE = 60.0


def in_thread(target: Callable[[], object]) -> tuple[threading.Thread, list[object]]:
    result: list[object] = []
    thread = threading.Thread(target=lambda: result.append(target()), daemon=True)
    thread.start()
    return thread, result


def test_a_late_result_after_the_lease_ran_out_changes_nothing(
    make_engine: MakeEngine, tmp_path: Path, store_url: str, caplog: pytest.LogCaptureFixture
):
    answer = BlockingFirstAttempt(Outcome.permanent("HTTP 400", status_code=400))
    engine, plugin, clock = make_engine(
        tmp_path, plugin=ScriptedPlugin(default=answer), database_url=store_url, lease_seconds=LEASE
    )
    (delivery_id,) = engine.accept(make_event("call_summary")).delivery_ids

    slow, slow_result = in_thread(lambda: engine.process(delivery_id))
    assert answer.started.wait(10)
    clock.advance(LEASE + 1)  # the first attempt is taken as lost
    assert engine.process(delivery_id) == Outcome.delivered()  # a second worker delivers it
    assert engine.heartbeat.beat() == 0  # the first attempt's lease is not renewed any more
    answer.release.set()  # ... and then the first attempt's late 400 comes back
    slow.join(10)

    assert slow_result == [Outcome.permanent("HTTP 400", status_code=400)]
    record = engine.store.get_delivery(delivery_id)
    assert record is not None and record.status == "delivered" and record.attempts == 2
    assert record.last_error is None
    rows = engine.store.attempts_of(delivery_id)
    assert sorted(r["number"] for r in rows) == [1, 2]  # distinct numbers
    assert {r["number"]: (r["outcome"], r["stale"]) for r in rows} == {
        1: ("permanent", True),  # kept, marked stale
        2: ("delivered", False),
    }
    assert plugin.failed == []  # on_delivery_failed is not called for a delivered event
    assert engine.store.dead_letters_of(delivery_id) == []
    assert engine.process(delivery_id) is None
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(f"lease of delivery {delivery_id} was lost" in m for m in warnings)
    assert any(
        m.startswith(f"stale result discarded: attempt 1 of delivery {delivery_id}")
        for m in warnings
    )


def test_a_late_retry_schedules_nothing_and_a_late_410_disables_nothing(
    make_engine: MakeEngine, tmp_path: Path, store_url: str
):
    answer = BlockingFirstAttempt(
        Outcome.permanent("HTTP 410", disable_destination=True),
        later=Outcome.retry("HTTP 503", retry_after=5),
    )
    engine, plugin, clock = make_engine(
        tmp_path,
        plugin=ScriptedPlugin(default=answer),
        database_url=store_url,
        lease_seconds=LEASE,
        short_delay=30,
    )
    (delivery_id,) = engine.accept(make_event("call_summary")).delivery_ids
    slow, _ = in_thread(lambda: engine.process(delivery_id))
    assert answer.started.wait(10)
    clock.advance(LEASE + 1)
    engine.process(delivery_id)  # the second attempt: 503, retry in 5 s (one delayed message)
    before = engine.store.get_delivery(delivery_id)
    delayed = engine.broker.queues[f"{engine.queue_name}.DQ"].qsize()
    answer.release.set()
    slow.join(10)

    assert engine.store.get_delivery(delivery_id) == before  # pending, due in 5 s, as it was
    assert engine.store.disabled_reason("acme", "crm") is None
    assert engine.broker.queues[f"{engine.queue_name}.DQ"].qsize() == delayed == 1
    assert plugin.failed == []


def test_a_lease_renewed_by_the_heartbeat_is_not_taken_by_another_worker(
    make_engine: MakeEngine, tmp_path: Path, store_url: str
):
    answer = BlockingFirstAttempt(Outcome.delivered())
    engine, plugin, clock = make_engine(
        tmp_path, plugin=ScriptedPlugin(default=answer), database_url=store_url, lease_seconds=LEASE
    )
    (delivery_id,) = engine.accept(make_event("call_summary")).delivery_ids
    slow, slow_result = in_thread(lambda: engine.process(delivery_id))
    assert answer.started.wait(10)

    for _ in range(5):  # five times longer than one lease, renewed every lease / 3
        clock.advance(LEASE / 3)
        assert engine.heartbeat.beat() == 1
        clock.advance(LEASE / 3)
        assert engine.process(delivery_id) is None  # another worker's copy of the message
    answer.release.set()
    slow.join(10)

    assert slow_result == [Outcome.delivered()]
    assert len(plugin.calls) == 1
    (row,) = engine.store.attempts_of(delivery_id)
    assert row["number"] == 1 and not row["stale"]
    assert engine.store.get_delivery(delivery_id).status == "delivered"  # type: ignore[union-attr]


def test_the_heartbeat_thread_renews_leases_of_running_attempts(
    make_engine: MakeEngine, tmp_path: Path, store_url: str
):
    answer = BlockingFirstAttempt(Outcome.delivered())
    # A short lease, so the started engine's heartbeat thread beats every 0.1 s of wall time.
    engine, plugin, clock = make_engine(
        tmp_path, plugin=ScriptedPlugin(default=answer), database_url=store_url, lease_seconds=0.3
    )
    (delivery_id,) = engine.accept(make_event("call_summary")).delivery_ids
    engine.start(threads=1, scheduler=False)
    try:
        assert answer.started.wait(10)
        clock.advance(3600)  # the lease ran out an hour ago, unless the heartbeat renews it
        deadline = time.monotonic() + 10
        while True:
            record = engine.store.get_delivery(delivery_id)
            assert record is not None and record.lease_until is not None
            if record.lease_until > clock.now():
                break
            assert time.monotonic() < deadline, "the heartbeat thread did not renew the lease"
            time.sleep(0.02)
        assert engine.store.lease(delivery_id, 0.3) is None
        answer.release.set()
        engine.broker.join(engine.queue_name, timeout=10_000)
    finally:
        answer.release.set()
        engine.stop()
    assert engine.store.get_delivery(delivery_id).status == "delivered"  # type: ignore[union-attr]
    assert len(plugin.calls) == 1


def test_kill_with_a_stale_token_changes_nothing(
    make_engine: MakeEngine, tmp_path: Path, store_url: str
):
    engine, _, clock = make_engine(tmp_path, database_url=store_url)
    (delivery_id,) = engine.accept(make_event("call_summary")).delivery_ids
    store = engine.store
    first = store.lease(delivery_id, LEASE)
    assert first is not None
    clock.advance(LEASE + 1)
    second = store.lease(delivery_id, LEASE)
    assert second is not None
    (old, _), (current, _) = first, second
    assert old.lease_token != current.lease_token
    assert (old.attempts, current.attempts) == (1, 2)  # each lease takes its own number

    assert store.kill(old, "destination disabled: HTTP 410") is False
    after = store.get_delivery(delivery_id)
    assert after is not None and after.status == "pending" and after.attempts == 2
    assert after.lease_until == current.lease_until and after.last_error is None
    assert store.dead_letters_of(delivery_id) == []

    assert store.kill(current, "destination no longer configured") is True
    dead = store.get_delivery(delivery_id)
    assert dead is not None and dead.status == "dead"
    assert dead.attempts == 1  # the number the killing lease took is given back


def test_lease_times_come_from_postgresql_so_skewed_machines_agree(postgres_store_url: str):
    class HourSlow(SystemClock):
        def now(self) -> datetime:
            return super().now() - timedelta(hours=1)

    slow, right = Store(postgres_store_url, clock=HourSlow()), Store(postgres_store_url)
    try:
        slow.migrate()
        slow.add_event(
            tenant="acme",
            event_id="evt-skew",
            event_type="call_summary",
            occurred_at=datetime(2026, 1, 1, tzinfo=UTC),
            body=b"{}",
            new_deliveries=[NewDelivery("dlv-skew", "crm", Payload(b"{}", "application/json"))],
        )
        assert slow.lease("dlv-skew", LEASE) is not None
        # On its own clock, the slow machine's lease ran out 59 minutes ago: the database's does
        # not agree, so the other machine waits.
        assert right.lease("dlv-skew", LEASE) is None
        assert slow.lease("dlv-skew", LEASE) is None
        record = right.get_delivery("dlv-skew")
        assert record is not None and record.lease_until is not None
        assert record.lease_until > right.lease_now() + timedelta(seconds=LEASE - 30)
    finally:
        slow.close()
        right.close()


def test_a_version_1_database_is_migrated_to_fenced_leases(store_url: str):
    new_columns = {
        ("deliveries", "lease_token"),
        ("attempts", "stale"),
        ("dead_letters", "hooks_done_at"),
        ("dead_letters", "hooks_claimed_until"),
        ("deliveries", "order_key"),
        ("deliveries", "order_at"),
    }
    old = sa.MetaData()
    for table in metadata.sorted_tables:
        columns = [c._copy() for c in table.columns if (table.name, c.name) not in new_columns]
        sa.Table(table.name, old, *columns)
    engine = sa.create_engine(store_url)
    with engine.begin() as conn:
        old.create_all(conn)
        conn.execute(schema_version.insert().values(version=1))
        conn.execute(
            old.tables["attempts"]
            .insert()
            .values(delivery_id="d", number=1, started_at=0, duration_ms=1, outcome="delivered")
        )
    engine.dispose()

    store = Store(store_url)
    try:
        assert store.migrate() == len(MIGRATIONS)
        (row,) = store.attempts_of("d")
        assert row["stale"] is False  # rows from before the migration are not stale
        assert store.migrate() == len(MIGRATIONS)
    finally:
        store.close()
