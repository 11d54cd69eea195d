"""The engine end to end with real Dramatiq workers: one behaviour suite over the embedded SQLite
broker, Redis and RabbitMQ, with the store on SQLite and on PostgreSQL."""

from __future__ import annotations

import contextlib
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cxbridge import Outcome
from cxbridge.brokers import broker_from_url
from cxbridge.clock import SystemClock
from cxbridge.engine import Engine
from tests.engine_support import MakeEngine, make_event, wait_until_settled
from tests.scripted_plugin import ScriptedPlugin


@contextlib.contextmanager
def running_engine(
    make_engine: MakeEngine, tmp_path: Path, broker_url: str, *, threads: int, **options: Any
) -> Iterator[Engine]:
    """An engine on the system clock whose worker (``threads`` threads) and scheduler run on a real
    broker, on a queue of its own: two test runs sharing Redis or RabbitMQ must not take each
    other's messages. Stopped, and its queues removed, afterwards."""
    queue = f"cxbridge-test-{uuid.uuid4().hex[:12]}"
    broker = broker_from_url(broker_url)
    engine, _, _ = make_engine(
        tmp_path, broker=broker, clock=SystemClock(), queue_name=queue, **options
    )
    engine.start(threads=threads, interval=0.2)
    try:
        yield engine
    finally:
        engine.stop()
        broker.flush(queue)
        if hasattr(broker, "get_queue_message_counts"):  # RabbitMQ keeps declared queues
            for name in (queue, f"{queue}.DQ", f"{queue}.XQ"):
                broker.channel.queue_delete(name)


def test_workers_deliver_retry_and_dead_letter(
    make_engine: MakeEngine, tmp_path: Path, broker_url: str, store_url: str
):
    def answer(delivery):
        # The first attempt of every third delivery fails with 503; quality scores of 13 are refused.
        if delivery.payload.body.find(b'"score":13') >= 0:
            return Outcome.permanent("HTTP 400")
        if delivery.attempt == 1 and int(delivery.event_id.rsplit("-", 1)[1]) % 3 == 0:
            return Outcome.retry("HTTP 503", retry_after=0.2)
        return Outcome.delivered()

    plugin = ScriptedPlugin(default=answer)
    with running_engine(
        make_engine, tmp_path, broker_url, threads=4, plugin=plugin, database_url=store_url
    ) as engine:
        ids = []
        for n in range(30):
            event = make_event(event_id=f"evt-{n}", score=13 if n == 7 else 60)
            ids += engine.accept(event).delivery_ids
        counts = wait_until_settled(engine)

    assert counts == {"delivered": 29, "dead": 2}  # event 7 also matched low-scores
    successes = Counter(d.id for d in plugin.calls)
    assert set(successes) == set(ids)
    retried = [i for i in ids if successes[i] == 2]
    assert len(retried) == 10  # events 0, 3, ..., 27 failed once and were retried
    assert [reason for _, reason in plugin.failed] == ["permanent: HTTP 400"] * 2
