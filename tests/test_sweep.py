"""The scheduler's sweep tells a lost message from one waiting in a long queue: it sends again only
what the broker no longer holds. On the embedded SQLite broker, real Redis and real RabbitMQ."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dramatiq
import pytest
from dramatiq.message import Message

from cxbridge import Outcome
from cxbridge.brokers import SQLiteBroker, broker_from_url
from cxbridge.brokers.depth import queue_depth
from cxbridge.store import deliveries
from tests.engine_support import MakeEngine, make_event, wait_until_settled
from tests.scripted_plugin import BlockingFirstAttempt, ScriptedPlugin

# Past lost_after plus every broker's redelivery bound (Redis: 30 s).
LONG_AGO = 3600.0


@pytest.fixture(params=["sqlite", "redis", "rabbitmq"])
def broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dramatiq.Broker]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'broker.db'}"
    else:
        url = str(request.getfixturevalue("redis_url" if request.param == "redis" else "amqp_url"))
    made = broker_from_url(url)
    yield made
    if request.param == "rabbitmq":  # RabbitMQ keeps declared queues
        for name in made.get_declared_queues() | made.delay_queues:
            for queue in (name, f"{name}.XQ"):
                made.channel.queue_delete(queue)
    elif request.param == "redis":
        for name in made.get_declared_queues():
            made.flush(name)


def held(broker: Any, queue: str) -> int:
    """The messages of ``queue`` and its delay queue, asked with each broker's own API."""
    if isinstance(broker, SQLiteBroker):
        counts = broker.message_counts(queue)
        return int(counts["ready"] + counts["leased"] + counts["scheduled"])
    if hasattr(broker, "get_queue_message_counts"):  # RabbitMQ
        ready, delayed, _ = broker.get_queue_message_counts(queue)
        return int(ready + delayed)
    return int(broker.do_qsize(queue))  # Redis


def engine_on(make_engine: MakeEngine, tmp_path: Path, broker: dramatiq.Broker) -> Any:
    queue = f"cxbridge-test-{uuid.uuid4().hex[:12]}"  # not shared with other runs of this test
    return make_engine(tmp_path, broker=broker, queue_name=queue, lost_after=60)


def test_a_queue_with_no_consumer_is_not_multiplied_by_sweeps(
    make_engine: MakeEngine, tmp_path: Path, broker: dramatiq.Broker
):
    engine, _, clock = engine_on(make_engine, tmp_path, broker)
    for _ in range(3):
        engine.accept(make_event("call_summary"))
    assert held(broker, engine.queue_name) == 3

    lengths = []
    for _ in range(5):
        clock.advance(LONG_AGO)  # every message waits far longer than lost_after
        assert engine.sweep() == 0
        lengths.append(held(broker, engine.queue_name))
    assert lengths == [3, 3, 3, 3, 3]


def test_messages_flushed_behind_the_engines_back_are_sent_again_and_delivered(
    make_engine: MakeEngine, tmp_path: Path, broker: dramatiq.Broker
):
    engine, plugin, clock = engine_on(make_engine, tmp_path, broker)
    ids = [engine.accept(make_event("call_summary")).delivery_ids[0] for _ in range(3)]
    broker.flush(engine.queue_name)
    assert held(broker, engine.queue_name) == 0

    assert engine.sweep() == 0  # just enqueued: not lost yet
    clock.advance(LONG_AGO)
    assert engine.sweep() == 3
    assert held(broker, engine.queue_name) == 3
    clock.advance(LONG_AGO)
    assert engine.sweep() == 0  # sent once, not once per sweep

    engine.start(threads=2, scheduler=False)
    try:
        assert wait_until_settled(engine) == {"delivered": 3}
    finally:
        engine.stop()
    assert sorted(d.id for d in plugin.calls) == sorted(ids)


def test_only_the_shortfall_is_sent_again_oldest_first(make_engine: MakeEngine, tmp_path: Path):
    broker = SQLiteBroker(tmp_path / "broker.db")
    engine, _, clock = engine_on(make_engine, tmp_path, broker)
    oldest = engine.accept(make_event("call_summary")).delivery_ids[0]
    clock.advance(1)
    for _ in range(2):
        engine.accept(make_event("call_summary"))
    conn = broker._conn()
    with broker._write_lock:  # one message vanishes (a disk restored from an older backup, say)
        conn.execute("DELETE FROM messages WHERE id = (SELECT MAX(id) FROM messages)")

    clock.advance(LONG_AGO)
    assert engine.sweep() == 1
    assert held(broker, engine.queue_name) == 3
    (data,) = conn.execute("SELECT data FROM messages WHERE id = (SELECT MAX(id) FROM messages)")
    # Which message was lost is unknowable; the longest-waiting delivery is sent first.
    assert Message.decode(data[0]).args == (oldest,)


def test_the_stub_broker_is_counted_too(make_engine: MakeEngine, tmp_path: Path):
    engine, _, _ = make_engine(tmp_path)
    engine.accept(make_event("call_summary"))
    depth = queue_depth(engine.broker, engine.queue_name)
    assert depth is not None and depth.messages == 1 and depth.redelivery_bound == 0


def test_a_backlog_due_at_once_reaches_the_broker_in_one_pass(
    make_engine: MakeEngine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr("cxbridge.engine.SWEEP_BATCH", 2)
    engine, _, _ = make_engine(tmp_path)
    for _ in range(5):
        engine.accept(make_event("call_summary"))
    engine.broker.flush_all()
    with engine.store.engine.begin() as conn:  # back from a long wait in the store: no message yet
        conn.execute(deliveries.update().values(enqueued_at=None))

    assert engine.sweep() == 5  # three batches of at most 2
    assert engine.broker.queues[engine.queue_name].qsize() == 5
    assert engine.sweep() == 0


def test_messages_waiting_behind_a_busy_consumer_are_not_sent_again(
    make_engine: MakeEngine, tmp_path: Path, broker: dramatiq.Broker
):
    answer = BlockingFirstAttempt(Outcome.delivered())
    queue = f"cxbridge-test-{uuid.uuid4().hex[:12]}"
    engine, plugin, clock = make_engine(
        tmp_path,
        plugin=ScriptedPlugin(default=answer),
        broker=broker,
        queue_name=queue,
        lost_after=60,
    )
    ids = [
        engine.accept(make_event("call_summary", event_id=f"evt-busy-{n}")).delivery_ids[0]
        for n in range(5)
    ]
    engine.start(threads=1, scheduler=False)
    try:
        assert answer.started.wait(10)
        resent = 0
        for _ in range(3):
            clock.advance(LONG_AGO)  # four messages wait behind the busy consumer far too long
            engine.heartbeat.beat()  # the running attempt's lease, renewed on the fake clock
            resent += engine.sweep()
        # The SQLite broker and Redis count the messages a consumer holds; RabbitMQ cannot see
        # them (the consumer prefetches 2 with 1 thread), so one copy may go out, and not again.
        assert resent <= (1 if hasattr(broker, "get_queue_message_counts") else 0)
        answer.release.set()
        assert wait_until_settled(engine) == {"delivered": 5}
    finally:
        answer.release.set()
        engine.stop()
    assert sorted({d.id for d in plugin.calls}) == sorted(ids)
    assert all(len(engine.store.attempts_of(i)) == 1 for i in ids)
