"""Draining a backlog: N deliveries fall due at once (a sink that was down for a while comes back) on
the embedded default (SQLite broker + SQLite store), and one worker process delivers them all to a
uvicorn sink on 127.0.0.1. Prints the drain rate and how many messages the broker was sent per
delivery: the scheduler must send each due delivery once, and send again only messages the broker
really lost, never ones waiting behind the backlog (goal: <= 1.01).

The deliveries are copies of one rendered delivery of the generic HTTP plugin, inserted in bulk as
pending, due now and without a message (as after a long wait in the store). Messages are counted by
a broker middleware (every ``enqueue``, delayed ones included). ``--lost-after`` is short by default
(10 s), so that a sweep that took waiting messages for lost ones would show within the drain.

Reproduce::

    .venv/bin/python bench/drain.py                        # 100,000 deliveries, 8 threads
    .venv/bin/python bench/drain.py --deliveries 20000 --threads 8 --lost-after 10
"""

from __future__ import annotations

import os
import sys

# A sibling of this file is named http.py: drop the folder from the path while httpx imports the
# standard library's ``http``, then bring it back (last) for the shared bench modules.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]

import argparse  # noqa: E402
import logging  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import httpx  # noqa: E402, F401
import sqlalchemy as sa  # noqa: E402
from dramatiq.middleware import Middleware  # noqa: E402

sys.path.append(_HERE)
from _sink import EVENT, free_port, start_sink  # noqa: E402
from engine import build_engine  # noqa: E402

from cxbridge.events import parse_event  # noqa: E402
from cxbridge.store import DeliveryFilter, deliveries  # noqa: E402


class SendCounter(Middleware):
    """Counts the messages enqueued on the broker."""

    def __init__(self) -> None:
        self.sent = 0
        self._lock = threading.Lock()

    def after_enqueue(self, broker: Any, message: Any, delay: Any) -> None:
        with self._lock:
            self.sent += 1


def make_due(engine: Any, n: int) -> None:
    """``n`` pending deliveries due now with no message: copies of one real rendered delivery."""
    (template_id,) = engine.accept(parse_event(EVENT)).delivery_ids
    engine.broker.flush(engine.queue_name)
    with engine.store.engine.begin() as conn:
        row = dict(
            conn.execute(deliveries.select().where(deliveries.c.id == template_id)).one()._mapping
        )
        conn.execute(deliveries.delete())
        now = engine.store.now()
        chunk = 5_000
        for start in range(0, n, chunk):
            conn.execute(
                deliveries.insert(),
                [
                    dict(
                        row,
                        id=f"dlv_drain_{i:08d}",
                        event_id=f"evt-{i}",
                        attempts=1,
                        first_attempt_at=now - 600,
                        next_attempt_at=now,
                        enqueued_at=None,
                        last_error="HTTP 503",
                    )
                    for i in range(start, min(n, start + chunk))
                ],
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deliveries", type=int, default=100_000)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--lost-after", type=float, default=10.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    port = free_port()
    sink = start_sink(port)
    try:
        with tempfile.TemporaryDirectory() as tmp_name:
            tmp = Path(tmp_name)
            engine = build_engine(
                tmp,
                f"http://127.0.0.1:{port}/hook",
                f"sqlite:///{tmp}/broker.db",
                f"sqlite:///{tmp}/store.db",
            )
            engine.lost_after = args.lost_after
            counter = SendCounter()
            engine.broker.add_middleware(counter)
            make_due(engine, args.deliveries)
            counter.sent = 0

            delivered = DeliveryFilter(status="delivered")
            started = time.perf_counter()
            engine.start(threads=args.threads, interval=1.0)
            deadline = time.monotonic() + 3600
            while engine.store.count_deliveries(delivered) < args.deliveries:
                if time.monotonic() > deadline:
                    raise SystemExit(f"not drained within an hour: {engine.store.status_counts()}")
                time.sleep(0.1)
            drain_s = time.perf_counter() - started
            engine.stop()
            with engine.store.engine.connect() as conn:
                attempts = conn.execute(sa.text("SELECT COUNT(*) FROM attempts")).scalar()
            counts = engine.store.status_counts()
            engine.close()
    finally:
        sink.terminate()
        sink.wait(10)

    n = args.deliveries
    print(
        f"\n{n:,} deliveries due at once; embedded default (SQLite broker + SQLite store); one worker "
        f"process x {args.threads} threads + scheduler (1 s passes, lost_after {args.lost_after:g} s); "
        f"uvicorn sink on 127.0.0.1 ({os.cpu_count()} CPUs)\n"
    )
    print(f"drain time:                 {drain_s:,.1f} s")
    print(f"drain rate:                 {n / drain_s:,.0f} deliveries/s")
    print(f"messages sent:              {counter.sent:,}")
    print(f"messages sent / deliveries: {counter.sent / n:.4f}   (goal <= 1.01)")
    print(f"attempts recorded:          {attempts:,}")
    print(f"final statuses:             {counts}")
    print(
        f"reproduce: .venv/bin/python bench/drain.py --deliveries {n} --threads {args.threads} "
        f"--lost-after {args.lost_after:g}"
    )


if __name__ == "__main__":
    main()
