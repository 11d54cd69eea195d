"""The embedded SQLite broker under a real Dramatiq Worker, in-process and in real subprocesses."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dramatiq
import pytest
from dramatiq import Worker
from dramatiq.errors import QueueJoinTimeout, QueueNotFound
from dramatiq.middleware import AgeLimit, Retries, TimeLimit

from cxbridge.brokers import SQLiteBroker, SQLiteMessageProxy, broker_from_url

QUEUE = "jobs"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[SQLiteBroker]:
    broker = SQLiteBroker(tmp_path / "broker.db")
    yield broker
    broker.close()


def start_worker(broker: SQLiteBroker, threads: int = 4) -> Worker:
    worker = Worker(broker, worker_threads=threads, worker_timeout=100)
    worker.start()
    return worker


def wait_for(predicate: Any, timeout: float, interval: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


# -- in one process ------------------------------------------------------------------------------


def test_messages_are_delivered_once_and_acked(broker: SQLiteBroker) -> None:
    seen: list[int] = []

    @dramatiq.actor(broker=broker, queue_name=QUEUE)
    def record(i: int) -> None:
        seen.append(i)

    for i in range(300):
        record.send(i)
    worker = start_worker(broker)
    try:
        broker.join(QUEUE, timeout=10_000)
        worker.join()
    finally:
        worker.stop()
    assert sorted(seen) == list(range(300))
    assert broker.message_counts(QUEUE) == {"ready": 0, "leased": 0, "scheduled": 0, "dead": 0}


def test_a_delayed_message_waits_as_a_scheduled_row_and_runs_when_due(
    broker: SQLiteBroker,
) -> None:
    ran_at: list[float] = []

    @dramatiq.actor(broker=broker, queue_name=QUEUE)
    def later() -> None:
        ran_at.append(time.time())

    worker = start_worker(broker)
    try:
        sent_at = time.time()
        later.send_with_options(delay=800)
        time.sleep(0.4)
        assert ran_at == []
        assert broker.message_counts(QUEUE)["scheduled"] == 1
        # Nothing waits in worker memory: the Worker's own delay queues stay empty.
        assert all(c.delay_queue.qsize() == 0 for c in worker.consumers.values())
        assert wait_for(lambda: ran_at, timeout=3)
    finally:
        worker.stop()
    assert 0.8 <= ran_at[0] - sent_at < 1.5


def test_lower_priority_number_is_claimed_first(broker: SQLiteBroker) -> None:
    @dramatiq.actor(broker=broker, queue_name=QUEUE, priority=10)
    def background(i: int) -> None: ...

    @dramatiq.actor(broker=broker, queue_name=QUEUE, priority=0)
    def urgent(i: int) -> None: ...

    for i in range(3):
        background.send(i)
    for i in range(3):
        urgent.send(i)
    background.send_with_options(args=(99,), priority=-1)  # a per-message override

    consumer = broker.consume(QUEUE, prefetch=10, timeout=100)
    got = []
    for _ in range(7):
        message = next(consumer)
        assert message is not None
        got.append((message.actor_name, message.args[0]))
        consumer.ack(message)
    consumer.close()
    assert got == [
        ("background", 99),
        ("urgent", 0),
        ("urgent", 1),
        ("urgent", 2),
        ("background", 0),
        ("background", 1),
        ("background", 2),
    ]


def test_consumer_returns_none_within_its_timeout_and_respects_prefetch(
    broker: SQLiteBroker,
) -> None:
    broker.declare_queue(QUEUE)
    consumer = broker.consume(QUEUE, prefetch=2, timeout=200)
    started = time.monotonic()
    assert next(consumer) is None
    assert 0.15 < time.monotonic() - started < 1.0

    @dramatiq.actor(broker=broker, queue_name=QUEUE)
    def noop(i: int) -> None: ...

    for i in range(3):
        noop.send(i)
    first, second = next(consumer), next(consumer)
    assert isinstance(first, SQLiteMessageProxy) and isinstance(second, SQLiteMessageProxy)
    assert next(consumer) is None  # two unacked: the third stays in the queue
    assert broker.message_counts(QUEUE)["leased"] == 2
    consumer.ack(first)
    third = next(consumer)
    assert third is not None and third.args == (2,)
    consumer.requeue([second, third])
    assert broker.message_counts(QUEUE) == {"ready": 2, "leased": 0, "scheduled": 0, "dead": 0}
    consumer.close()
    with pytest.raises(QueueNotFound):
        broker.consume("never-declared")


def test_a_failed_message_goes_to_the_dead_table(broker: SQLiteBroker) -> None:
    @dramatiq.actor(broker=broker, queue_name=QUEUE, max_retries=0)
    def broken() -> None:
        raise ValueError("boom")

    message = broken.send()
    worker = start_worker(broker)
    try:
        broker.join(QUEUE, timeout=5_000)
    finally:
        worker.stop()
    assert broker.message_counts(QUEUE) == {"ready": 0, "leased": 0, "scheduled": 0, "dead": 1}
    [dead] = broker.dead_letters(QUEUE)
    assert dead.message_id == message.message_id
    assert "boom" in dead.options["traceback"]


def test_stock_retries_time_limit_and_age_limit_middleware_work(broker: SQLiteBroker) -> None:
    assert {type(m) for m in broker.middleware} >= {Retries, TimeLimit, AgeLimit}
    attempts: list[int] = []

    @dramatiq.actor(broker=broker, queue_name=QUEUE, max_retries=3, min_backoff=50, max_backoff=100)
    def flaky() -> None:
        attempts.append(1)
        if len(attempts) < 3:
            raise RuntimeError("not yet")

    @dramatiq.actor(broker=broker, queue_name=QUEUE, max_retries=0, time_limit=200)
    def slow() -> None:
        for _ in range(100):  # short sleeps: TimeLimit's async exception lands between them
            time.sleep(0.03)

    @dramatiq.actor(broker=broker, queue_name=QUEUE, max_retries=0)
    def stale() -> None:
        raise AssertionError("an expired message must not run")

    flaky.send()
    slow.send()
    stale.send_with_options(max_age=50, delay=300)  # too old by the time it is due
    broker.emit_after("process_boot")  # as the dramatiq CLI does: starts TimeLimit's timer thread
    worker = start_worker(broker)
    try:
        broker.join(QUEUE, timeout=10_000)
    finally:
        worker.stop()
    assert len(attempts) == 3  # retried through scheduled rows, then succeeded
    assert sorted(m.actor_name for m in broker.dead_letters(QUEUE)) == ["slow", "stale"]


def test_graceful_stop_requeues_prefetched_messages(broker: SQLiteBroker) -> None:
    done: list[int] = []

    @dramatiq.actor(broker=broker, queue_name=QUEUE)
    def slow(i: int) -> None:
        time.sleep(0.05)
        done.append(i)

    for i in range(40):
        slow.send(i)
    worker = start_worker(broker, threads=2)
    assert wait_for(lambda: len(done) >= 3, timeout=5)
    worker.stop()
    counts = broker.message_counts(QUEUE)
    assert counts["leased"] == 0  # prefetched but unprocessed messages went back at once
    assert counts["ready"] == 40 - len(done) > 0

    worker = start_worker(broker, threads=2)
    try:
        broker.join(QUEUE, timeout=10_000)
    finally:
        worker.stop()
    assert sorted(done) == list(range(40))


def test_an_expired_lease_of_a_stalled_worker_is_requeued(tmp_path: Path) -> None:
    stalled = SQLiteBroker(tmp_path / "broker.db", lease_ms=300)
    healthy = SQLiteBroker(tmp_path / "broker.db", lease_ms=300, heartbeat_interval=0.1)
    try:
        for b in (stalled, healthy):
            b.declare_queue(QUEUE)

        @dramatiq.actor(broker=stalled, queue_name=QUEUE)
        def job() -> None: ...

        job.send()
        consumer = stalled.consume(QUEUE, prefetch=1, timeout=100)
        assert next(consumer) is not None
        stalled._stop.set()  # simulate a frozen process: no more heartbeats
        other = healthy.consume(QUEUE, prefetch=1, timeout=2_000)
        started = time.monotonic()
        message = next(other)
        assert message is not None and message.actor_name == "job"
        assert time.monotonic() - started < 1.5
        other.ack(message)
    finally:
        healthy.close()
        stalled.close()


def test_join_times_out_and_flush_empties_queues(broker: SQLiteBroker) -> None:
    @dramatiq.actor(broker=broker, queue_name=QUEUE, max_retries=0)
    def job() -> None: ...

    job.send()
    job.send_with_options(delay=60_000)
    with pytest.raises(QueueJoinTimeout):
        broker.join(QUEUE, timeout=200)
    broker.flush(QUEUE)
    broker.join(QUEUE, timeout=200)
    assert broker.message_counts(QUEUE)["ready"] == 0

    consumer = broker.consume(QUEUE, prefetch=1, timeout=100)
    job.send()
    message = next(consumer)
    assert message is not None
    consumer.nack(message)
    assert broker.message_counts(QUEUE)["dead"] == 1
    broker.flush_all()
    assert broker.message_counts(QUEUE) == {"ready": 0, "leased": 0, "scheduled": 0, "dead": 0}


def test_broker_from_url_creates_the_parent_directory(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dir" / "broker.db"
    broker = broker_from_url(f"sqlite:///{path}")  # an absolute path gives four slashes
    try:
        assert isinstance(broker, SQLiteBroker) and path.exists()
    finally:
        broker.close()
    with pytest.raises(ValueError, match="file path"):
        SQLiteBroker(":memory:")


# -- across processes ----------------------------------------------------------------------------

WORKER_APP = textwrap.dedent(
    """
    import os, signal, sys, threading, time
    import dramatiq
    from dramatiq import Worker
    from cxbridge.brokers import SQLiteBroker

    db, out_dir, threads, hang = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "hang"
    broker = SQLiteBroker(db, heartbeat_interval=0.2)
    log = os.path.join(out_dir, f"{os.getpid()}.log")
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)

    @dramatiq.actor(broker=broker, queue_name="jobs", max_retries=0)
    def record(i):
        os.write(fd, f"start {i}\\n".encode())
        if hang:
            time.sleep(60)
        os.write(fd, f"done {i}\\n".encode())

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    worker = Worker(broker, worker_threads=threads, worker_timeout=100)
    worker.start()
    os.write(fd, b"ready\\n")
    stop.wait()
    worker.stop()
    broker.close()
    """
)


class WorkerProcesses:
    """Worker subprocesses sharing one broker file; each logs to ``out_dir/<pid>.log``."""

    def __init__(self, tmp_path: Path) -> None:
        self.db = tmp_path / "broker.db"
        self.out_dir = tmp_path / "out"
        self.out_dir.mkdir()
        self.app = tmp_path / "worker_app.py"
        self.app.write_text(WORKER_APP)
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, threads: int = 4, *, hang: bool = False) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [
                *(sys.executable, str(self.app), str(self.db), str(self.out_dir), str(threads)),
                "hang" if hang else "run",
            ]
        )
        self.procs.append(proc)
        log = self.out_dir / f"{proc.pid}.log"
        assert wait_for(lambda: log.exists() and "ready" in log.read_text(), timeout=15)
        return proc

    def lines(self, kind: str) -> list[int]:
        values = []
        for log in self.out_dir.glob("*.log"):
            for line in log.read_text().splitlines():
                if line.startswith(kind + " "):
                    values.append(int(line.split()[1]))
        return values

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[WorkerProcesses]:
    procs = WorkerProcesses(tmp_path)
    yield procs
    procs.stop_all()


def producer_broker(db: Path) -> tuple[SQLiteBroker, dramatiq.Actor[Any, Any]]:
    broker = SQLiteBroker(db)

    @dramatiq.actor(broker=broker, queue_name=QUEUE, actor_name="record")
    def record(i: int) -> None: ...

    return broker, record


def test_a_message_of_a_sigkilled_worker_is_redelivered_within_seconds(
    processes: WorkerProcesses,
) -> None:
    victim = processes.start(threads=1, hang=True)
    broker, record = producer_broker(processes.db)
    try:
        record.send(7)
        assert wait_for(lambda: processes.lines("start") == [7], timeout=10)
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait()
        killed_at = time.monotonic()
        processes.start(threads=1)
        assert wait_for(lambda: processes.lines("done") == [7], timeout=10)
        redelivered_after = time.monotonic() - killed_at
    finally:
        broker.close()
    assert redelivered_after < 5, f"redelivered {redelivered_after:.1f} s after SIGKILL"
    assert processes.lines("start") == [7, 7]


def test_two_processes_with_four_threads_and_a_concurrent_producer_lose_and_repeat_nothing(
    processes: WorkerProcesses,
) -> None:
    total = 3_000
    processes.start(threads=4)
    processes.start(threads=4)
    broker, record = producer_broker(processes.db)

    def produce(start: int) -> None:
        for i in range(start, total, 2):
            record.send(i)

    producers = [threading.Thread(target=produce, args=(n,)) for n in (0, 1)]
    try:
        for t in producers:
            t.start()
        for t in producers:
            t.join()
        broker.join(QUEUE, timeout=40_000)
    finally:
        broker.close()
    done = processes.lines("done")
    assert len(done) == total, f"{total - len(set(done))} lost, {len(done) - len(set(done))} twice"
    assert sorted(done) == list(range(total))
    per_process = [len(log.read_text().splitlines()) for log in processes.out_dir.glob("*.log")]
    assert all(n > 1 for n in per_process), "both processes took work"
