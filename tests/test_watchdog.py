"""The watchdog replaces a worker's consumer or worker thread that ended, and work goes on."""

from __future__ import annotations

import time
from pathlib import Path

from cxbridge.brokers import SQLiteBroker
from cxbridge.clock import SystemClock
from tests.engine_support import MakeEngine, make_event


def test_a_dead_consumer_thread_and_worker_thread_are_replaced(
    make_engine: MakeEngine, tmp_path: Path
):
    engine, _, _ = make_engine(
        tmp_path, broker=SQLiteBroker(tmp_path / "broker.db"), clock=SystemClock()
    )
    engine.start(threads=2, interval=0.2)
    worker, watchdog = engine._worker, engine.watchdog
    assert worker is not None and watchdog is not None
    consumer = worker.consumers[engine.queue_name]
    consumer.stop()  # ends the thread, as an exception escaping its run() would
    consumer.join(10)
    worker.workers[0].stop()
    worker.workers[0].join(10)
    assert not watchdog.health().ok
    deadline = time.monotonic() + 10
    while not watchdog.health().ok:
        assert time.monotonic() < deadline, watchdog.health()
        time.sleep(0.05)
    assert watchdog.replaced == 2
    assert worker.consumers[engine.queue_name] is not consumer
    engine.accept(make_event(event_id="evt-after"))
    deadline = time.monotonic() + 10
    while engine.store.status_counts() != {"delivered": 2}:
        assert time.monotonic() < deadline, engine.store.status_counts()
        time.sleep(0.05)
    engine.close()
