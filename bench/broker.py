"""Broker throughput (enqueue and processing, 1 process x 4 threads, trivial actor) for sqlite,
redis and rabbitmq, and the idle cost of 100,000 scheduled-but-not-due messages in the SQLite
broker.

Reproduce:  .venv/bin/python bench/broker.py [--messages 5000] [--scheduled 100000]
Services: Redis 127.0.0.1:6379 (db 15), RabbitMQ 127.0.0.1:5672 guest/guest; absent ones are
skipped.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import dramatiq
from dramatiq import Worker

from cxbridge.brokers import SQLiteBroker, broker_from_url

REDIS_URL = os.environ.get("CXBRIDGE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
AMQP_URL = os.environ.get("CXBRIDGE_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")


def reachable(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def throughput(url: str, n: int) -> tuple[float, float]:
    """(enqueued/s, processed/s) for ``n`` messages to a trivial actor, 4 worker threads."""
    broker = broker_from_url(url)
    queue = f"bench-{uuid.uuid4().hex[:8]}"
    done = threading.Semaphore(0)

    @dramatiq.actor(broker=broker, queue_name=queue, max_retries=0)
    def trivial(i: int) -> None:
        done.release()

    try:
        started = time.perf_counter()
        for i in range(n):
            trivial.send(i)
        enqueue_s = time.perf_counter() - started

        worker = Worker(broker, worker_threads=4, worker_timeout=100)
        started = time.perf_counter()
        worker.start()
        for _ in range(n):
            if not done.acquire(timeout=120):
                raise RuntimeError(f"{url.split(':')[0]}: messages went missing")
        process_s = time.perf_counter() - started
        worker.stop()
    finally:
        broker.flush(queue)
        if hasattr(broker, "get_queue_message_counts"):  # RabbitMQ: drop the bench queues
            for name in (queue, f"{queue}.DQ", f"{queue}.XQ"):
                broker.channel.queue_delete(name)
        broker.close()
    return n / enqueue_s, n / process_s


def idle_worker(db: str, seconds: float) -> None:
    """Child mode: run a 4-thread worker on ``db`` and print RSS MB and CPU % over ``seconds``."""
    broker = SQLiteBroker(db)

    @dramatiq.actor(broker=broker, queue_name="backoff", actor_name="deliver")
    def deliver(i: int) -> None: ...

    worker = Worker(broker, worker_threads=4, worker_timeout=1000)
    worker.start()
    time.sleep(2)  # warm up
    cpu0, wall0 = time.process_time(), time.monotonic()
    time.sleep(seconds)
    cpu = (time.process_time() - cpu0) / (time.monotonic() - wall0) * 100
    rss_kb = next(
        int(line.split()[1])
        for line in Path("/proc/self/status").read_text().splitlines()
        if line.startswith("VmRSS:")
    )
    counts = broker.message_counts("backoff")
    worker.stop()
    broker.close()
    print(f"{rss_kb / 1024:.1f} {cpu:.2f} {counts['scheduled']}")


def scheduled_cost(n: int, seconds: float) -> tuple[float, float, int, float]:
    """Enqueue ``n`` messages due in an hour, then measure an idle worker in a fresh process."""
    with tempfile.TemporaryDirectory() as tmp:
        db = str(Path(tmp) / "broker.db")
        broker = SQLiteBroker(db)

        @dramatiq.actor(broker=broker, queue_name="backoff", actor_name="deliver")
        def deliver(i: int) -> None: ...

        for i in range(n):
            deliver.send_with_options(args=(i,), delay=3_600_000)
        broker.close()
        size_mb = sum(p.stat().st_size for p in Path(tmp).iterdir()) / 1e6
        out = subprocess.run(
            [sys.executable, __file__, "--idle-worker", db, "--seconds", str(seconds)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split()
        return float(out[0]), float(out[1]), int(out[2]), size_mb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5_000)
    parser.add_argument("--scheduled", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--idle-worker", metavar="DB", help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    if args.idle_worker:
        idle_worker(args.idle_worker, args.seconds)
        return

    print(f"{args.messages:,} messages, trivial actor, 1 process x 4 threads")
    print(f"{'broker':<10} {'enqueue msg/s':>14} {'processed msg/s':>16}")
    with tempfile.TemporaryDirectory() as tmp:
        backends = [("sqlite", f"sqlite:///{tmp}/broker.db", True)]
        backends.append(("redis", REDIS_URL, reachable(6379)))
        backends.append(("rabbitmq", AMQP_URL, reachable(5672)))
        for name, url, up in backends:
            if not up:
                print(f"{name:<10} {'skipped: service not running on 127.0.0.1':>31}")
                continue
            enq, proc = throughput(url, args.messages)
            print(f"{name:<10} {enq:>14,.0f} {proc:>16,.0f}")

    rss, cpu, waiting, size_mb = scheduled_cost(args.scheduled, args.seconds)
    print()
    print(f"SQLite broker, {args.scheduled:,} scheduled-but-not-due messages, 4-thread worker:")
    print(f"  still scheduled: {waiting:,}   database file: {size_mb:.1f} MB")
    print(f"  worker RSS: {rss:.1f} MB   CPU over {args.seconds:.0f} s: {cpu:.2f} %")
    print()
    print("reproduce: .venv/bin/python bench/broker.py")


if __name__ == "__main__":
    main()
