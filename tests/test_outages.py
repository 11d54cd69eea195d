"""Broker and store outages: ``accept`` tells "stored" from "not stored", a store failure in a worker is
retried rather than dead-lettered, and a Redis restart leaves every consumer thread running."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from dramatiq.brokers.stub import StubBroker

from cxbridge import Outcome, StoreUnavailableError
from cxbridge.brokers import SQLiteBroker, broker_from_url
from cxbridge.clock import SystemClock
from cxbridge.engine import Engine
from cxbridge.store import DeliveryFilter, Store, deliveries
from tests.engine_support import MakeEngine, make_event
from tests.scripted_plugin import ScriptedPlugin
from tests.worker_support import RedisServer


def break_store(store: Store) -> Callable[[], None]:
    """Make the store refuse to write, as in an outage; returns the function that mends it.

    SQLite: the file cannot grow (SQLITE_FULL, "database or disk is full"), as on a full disk.
    PostgreSQL: every session is read-only, as on a replica after a failover. Applied to each
    connection as the store takes it from its pool."""
    broken = {"on": True}
    if store.is_sqlite:
        with store.engine.connect() as conn:
            pages = int(conn.exec_driver_sql("PRAGMA page_count").scalar() or 0)
        statements = (f"PRAGMA max_page_count = {pages}", "PRAGMA max_page_count = 1073741823")
    else:
        statements = (
            "SET default_transaction_read_only = on",
            "SET default_transaction_read_only = off",
        )

    def on_checkout(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute(statements[0] if broken["on"] else statements[1])
        cursor.close()
        if not store.is_sqlite:
            dbapi_connection.commit()

    sa.event.listen(store.engine, "checkout", on_checkout)

    def mend() -> None:
        broken["on"] = False

    return mend


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> float:
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < timeout, f"{what}: not within {timeout} s"
        time.sleep(0.05)
    return time.monotonic() - started


def delivered(engine: Engine, *event_ids: str) -> bool:
    """Whether every delivery of these events is delivered."""
    rows = [
        r
        for r in engine.store.list_deliveries(DeliveryFilter(status=None))
        if r.event_id in event_ids
    ]
    return {r.event_id for r in rows} == set(event_ids) and all(
        r.status == "delivered" for r in rows
    )


# -- accept ------------------------------------------------------------------------------------


def test_accept_with_the_store_failing_raises_a_cxbridge_error_and_enqueues_nothing(
    make_engine: MakeEngine, tmp_path: Path, store_url: str
):
    broker = StubBroker()
    engine, _, _ = make_engine(tmp_path, broker=broker, database_url=store_url)
    mend = break_store(engine.store)
    event = make_event(event_id="evt-big", score=10, call={"id": "c", "externalId": "x" * 200_000})
    with pytest.raises(StoreUnavailableError, match="nothing was stored") as raised:
        engine.accept(event)
    assert raised.value.event_id == "evt-big" and raised.value.tenant == "acme"
    cause = "database or disk is full" if engine.store.is_sqlite else "read-only transaction"
    assert cause in str(raised.value)
    mend()
    assert not engine.store.has_event("acme", "evt-big")
    assert broker.queues[engine.queue_name].qsize() == 0


def test_accept_with_the_broker_down_returns_and_the_scheduler_sends_it_later(
    make_engine: MakeEngine, tmp_path: Path
):
    redis = RedisServer(tmp_path)  # not started yet: nothing listens on its port
    engine, plugin, _ = make_engine(
        tmp_path, broker=broker_from_url(redis.url), clock=SystemClock(), queue_name="outage"
    )
    try:
        accepted = engine.accept(make_event(event_id="evt-1"))
        assert not accepted.duplicate and len(accepted.delivery_ids) == 2
        with engine.store.engine.connect() as conn:
            rows = conn.execute(sa.select(deliveries.c.status, deliveries.c.enqueued_at)).all()
        assert rows == [("pending", None)] * 2  # not sent: left for the scheduler
        redis.start()
        engine.start(threads=2, interval=0.2)
        wait_for(lambda: delivered(engine, "evt-1"), 20, "delivered once the broker is back")
        assert len(plugin.calls) == 2
    finally:
        engine.close()
        redis.kill()


# -- a store failure inside a worker -----------------------------------------------------------


def test_a_store_failure_during_an_attempt_is_retried_not_dead_lettered(
    make_engine: MakeEngine, tmp_path: Path, caplog: pytest.LogCaptureFixture, store_url: str
):
    """The store cannot be written (SQLite: the attempt's result, disk full; PostgreSQL: even the
    lease, read-only): the broker keeps the message and retries it, instead of moving it to its
    dead table while the store holds the delivery as pending."""
    big = "x" * 100_000  # the attempt row needs new pages: it cannot be written on a full disk
    plugin = ScriptedPlugin(default=lambda d: Outcome.delivered(response_excerpt=big[:16_000]))
    broker = SQLiteBroker(tmp_path / "broker.db")
    engine, plugin, _ = make_engine(
        tmp_path,
        plugin=plugin,
        broker=broker,
        clock=SystemClock(),
        database_url=store_url,
        lease_seconds=1,
        lost_after=1,
    )
    engine.accept(make_event(event_id="evt-1", score=80))  # one destination
    mend = break_store(engine.store)
    engine.start(threads=1, interval=0.2)
    try:
        wait_for(lambda: "store unavailable" in caplog.text, 20, "the failed write")
        mend()
        wait_for(lambda: delivered(engine, "evt-1"), 30, "delivered once the disk has space")
        assert broker.message_counts(engine.queue_name)["dead"] == 0
    finally:
        engine.close()


# -- a Redis restart ---------------------------------------------------------------------------


@pytest.mark.services
def test_a_redis_restart_leaves_every_consumer_thread_running_and_short_retries_resume(
    make_engine: MakeEngine, tmp_path: Path
):
    redis = RedisServer(tmp_path)
    redis.start()
    first_retry = {"evt-delayed": 2.0, "evt-short": 0.5}

    def answer(delivery: Any) -> Outcome:
        wait = first_retry.get(delivery.event_id)
        if wait is not None and delivery.attempt == 1:
            return Outcome.retry("HTTP 503", retry_after=wait)
        return Outcome.delivered()

    engine, plugin, _ = make_engine(
        tmp_path,
        plugin=ScriptedPlugin(default=answer),
        # Redis's redelivery bound (the scheduler waits it out before it sends a lost message again).
        broker=broker_from_url(redis.url, heartbeat_timeout=5_000),
        clock=SystemClock(),
        tenant_yaml="tenant: acme\nretry: {jitter: 0}\ndestinations:\n"
        "  crm: {type: scripted, events: [quality_score]}\n",
        lost_after=3,  # Redis restarts empty: what it held is sent again from the store
    )
    engine.start(threads=2, interval=0.5)
    try:
        # A retry in 2 s sits in the worker's delay queue when Redis dies; its eta passes during the
        # outage, so the delay-queue consumer's re-enqueue fails (this killed the thread before).
        engine.accept(make_event(event_id="evt-delayed"))
        wait_for(lambda: len(plugin.calls) == 1, 10, "the first attempt")
        redis.kill()
        time.sleep(3)
        accepted = engine.accept(make_event(event_id="evt-during"))  # must not raise
        assert accepted.delivery_ids
        time.sleep(1)
        redis.start()
        wait_for(lambda: delivered(engine, "evt-during"), 20, "accepted during the outage")
        # Redis restarted empty: the retry it held is sent again once the broker is found short.
        wait_for(lambda: delivered(engine, "evt-delayed"), 30, "the retry Redis lost")
        worker = engine._worker
        assert worker is not None and engine.watchdog is not None
        dead = [name for name, t in worker.consumers.items() if not t.is_alive()]
        assert dead == [] and engine.watchdog.replaced == 0, engine.watchdog.health()
        assert engine.watchdog.health().ok

        # A short retry after the restart runs within its delay plus a moment.
        engine.accept(make_event(event_id="evt-short"))
        wait_for(lambda: any(c.event_id == "evt-short" for c in plugin.calls), 10, "1st attempt")
        took = wait_for(lambda: delivered(engine, "evt-short"), 5, "the 0.5 s retry")
        print(f"\nredis restart: a 0.5 s retry ran {took:.2f} s after its first attempt")
    finally:
        engine.close()
        engine.broker.client.connection_pool.disconnect()  # Dramatiq's close() leaves it
        redis.kill()


def test_the_redis_consumer_reports_a_lost_connection_as_dramatiq_expects(tmp_path: Path):
    """Dramatiq's consumer thread survives ``ConnectionClosed`` but not a raw redis error from
    ``requeue`` (called while it cleans up after another error); ours never lets one out."""
    from dramatiq.broker import MessageProxy
    from dramatiq.errors import ConnectionClosed
    from dramatiq.message import Message

    redis = RedisServer(tmp_path)  # nothing listens on its port
    broker = broker_from_url(redis.url)
    consumer = broker.consume("cxbridge.DQ")
    message = MessageProxy(Message("cxbridge.DQ", "a", (), {}, {"redis_message_id": "m1"}))
    with pytest.raises(ConnectionClosed):
        consumer.requeue([message])
    with pytest.raises(ConnectionClosed):
        next(consumer)
    broker.close()
