"""Chaos, bounded, as a matrix: (a) the embedded default (SQLite store + SQLite broker) and (b) Redis (a
redis-server of the test's own) + PostgreSQL. 3,000 events go to a sink that verifies every signature,
fails 30 % of requests with 503 and stalls some for 3 s (longer than the 2 s lease), while
``cxbridge worker --processes 2`` has a child SIGKILLed three times and, in (b), Redis is killed and
restarted empty once. Every delivery must end delivered or dead (lost = 0); duplicates are counted,
each with its delivery id. After the chaos, every worker process still runs all its consumer threads
and a short retry runs within its delay.

Run alone with ``pytest -m slow tests/test_chaos.py -s`` to see the figures."""

from __future__ import annotations

import random
import re
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import sqlalchemy as sa

from cxbridge.engine import Engine
from cxbridge.errors import SignatureError
from cxbridge.settings import Settings
from cxbridge.signing import generate_secret, verify
from cxbridge.store import DEAD, DELIVERED, DeliveryFilter
from tests.engine_support import make_event
from tests.http_sink import HttpSink, Recorded, Reply
from tests.worker_support import (
    READY,
    RedisServer,
    WorkerProcess,
    http_tenant,
    pid_alive,
    worker_env,
)

EVENTS = 3000
FAIL_RATE = 0.3
STALL_RATE = 0.005  # about 20 attempts stall past the lease
STALL_SECONDS = 3.0
LEASE_SECONDS = "2"
DRAIN_TIMEOUT = 120.0
HEALTH = re.compile(
    r"\[(\d+)\]: health: ThreadHealth\(consumers_alive=(\d+), consumers=(\d+), "
    r"workers_alive=(\d+), workers=(\d+), replaced=(\d+)\)"
)


@dataclass
class ChaosSink:
    """Verifies every signature; fails, stalls or accepts at random (seeded)."""

    secret: str
    rng: random.Random = field(default_factory=lambda: random.Random(9))
    lock: threading.Lock = field(default_factory=threading.Lock)
    accepted: Counter[str] = field(default_factory=Counter)
    bad_signatures: int = 0
    attempts_at: dict[str, list[float]] = field(default_factory=dict)
    fail_first: set[str] = field(default_factory=set)  # delivery ids whose first attempt fails

    def __call__(self, request: Recorded) -> Reply:
        if len(request.body) != int(request.header("content-length") or -1):
            return Reply(400)  # the sender was killed mid-request; no one reads this answer
        try:
            verify(request.body, request.header_map, self.secret)
        except SignatureError:
            with self.lock:
                self.bad_signatures += 1
            return Reply(401)
        delivery_id = request.header("webhook-id") or "?"
        with self.lock:
            times = self.attempts_at.setdefault(delivery_id, [])
            times.append(time.monotonic())
            if delivery_id in self.fail_first and len(times) == 1:
                return Reply(503)
            roll = self.rng.random()
            stall = self.rng.random() < STALL_RATE
        if roll < FAIL_RATE:
            return Reply(503, delay=STALL_SECONDS if stall else 0.0)
        if stall:
            time.sleep(STALL_SECONDS)
        with self.lock:
            self.accepted[delivery_id] += 1
        return Reply(200)


@dataclass
class Case:
    name: str
    database_url: str
    broker_url: str
    redis: RedisServer | None = None


@pytest.fixture(params=["embedded", "redis+postgres"])
def case(request: pytest.FixtureRequest, tmp_path: Path):
    if request.param == "embedded":
        yield Case(
            "embedded", f"sqlite:///{tmp_path / 'store.db'}", f"sqlite:///{tmp_path / 'broker.db'}"
        )
        return
    database_url: str = request.getfixturevalue("postgres_store_url")
    redis = RedisServer(tmp_path)
    redis.start()
    try:
        yield Case("redis+postgres", database_url, redis.url, redis)
    finally:
        redis.kill()


def live_children(worker: WorkerProcess, killed: set[str], timeout: float = 30) -> list[str]:
    """The pids of worker processes alive now (waiting for a restarted one if none is)."""
    deadline = time.monotonic() + timeout
    while True:
        alive = [p for p in worker.wait_for(READY) if p not in killed and pid_alive(int(p))]
        if alive or time.monotonic() > deadline:
            assert alive, f"no live worker process:\n{worker.text()[-3000:]}"
            return alive
        time.sleep(0.1)


@pytest.mark.slow
@pytest.mark.services
def test_chaos_loses_nothing(case: Case, tmp_path: Path):
    config = tmp_path / "tenants"
    secret = generate_secret()
    sink_handler = ChaosSink(secret)
    with HttpSink() as sink:
        sink.reply("/hook", sink_handler)
        http_tenant(config, sink.url("/hook"), secret, "{schedule: [0.5, 1, 2], jitter: 0.5}")
        env = worker_env(
            config,
            case.database_url,
            case.broker_url,
            CXBRIDGE_LEASE_SECONDS=LEASE_SECONDS,
            CXBRIDGE_LOST_AFTER="3",
        )
        worker = WorkerProcess(env, tmp_path / "worker.log", "--processes", "2", "--threads", "4")
        producer = Engine(
            Settings(config_dir=config, database_url=case.database_url, broker_url=case.broker_url)
        )
        killed: set[str] = set()
        restarted = False
        try:
            worker.wait_for(READY, 2)
            started = time.monotonic()
            accepted_in = 0.0

            accept_errors: list[str] = []

            def produce() -> None:  # in (b) it runs on through the broker's restart
                nonlocal accepted_in
                for n in range(EVENTS):
                    try:
                        producer.accept(make_event(event_id=f"evt-{n}", score=n % 100))
                    except Exception as exc:
                        accept_errors.append(f"evt-{n}: {exc!r}")
                accepted_in = time.monotonic() - started

            producing = threading.Thread(target=produce)
            producing.start()
            kill_at = [int(EVENTS * f) for f in (0.15, 0.4, 0.65)]
            deadline = started + DRAIN_TIMEOUT
            while time.monotonic() < deadline:
                counts = producer.store.status_counts()
                done = counts.get(DELIVERED, 0) + counts.get(DEAD, 0)
                # Each kill once the previous victim was replaced: two processes always run.
                replaced = len(worker.wait_for(READY)) >= 2 + len(killed)
                if kill_at and done >= kill_at[0] and replaced:
                    kill_at.pop(0)
                    victim = live_children(worker, killed)[-1]
                    signal_child(int(victim))
                    killed.add(victim)
                if case.redis is not None and not restarted and done >= EVENTS // 2:
                    case.redis.kill()
                    time.sleep(1.5)
                    case.redis.start()
                    restarted = True
                if done == EVENTS:
                    break
                time.sleep(0.25)
            drain = time.monotonic() - started
            producing.join()

            # After the chaos: a short retry runs within its delay, every worker runs all threads.
            probe = producer.accept(make_event(event_id="probe", score=1)).delivery_ids[0]
            sink_handler.fail_first.add(probe)
            retry_gap = wait_for_second_attempt(sink_handler, probe, timeout=20)
            children = live_children(worker, killed)
            health_before = len(HEALTH.findall(worker.text()))
            for pid in children:
                signal_child(int(pid), signal.SIGUSR1)
            worker.wait_for(re.compile(r"(health: )"), health_before + len(children), timeout=20)
            health = {m[0]: tuple(map(int, m[1:])) for m in HEALTH.findall(worker.text())}
        finally:
            code = worker.stop()
            producer_store = producer.store
            rows = producer_store.list_deliveries(DeliveryFilter(status=None))
            stale = stale_count(producer_store.engine)
            producer.close()

    statuses = {r.id: r.status for r in rows if r.event_id != "probe"}
    dead = [i for i, s in statuses.items() if s == DEAD]
    lost = [
        i
        for i, s in statuses.items()
        if not (s == DEAD or (s == DELIVERED and sink_handler.accepted[i]))
    ]
    duplicates = {i: n for i, n in sink_handler.accepted.items() if n > 1 and i != probe}
    print(
        f"\nchaos [{case.name}]: sent {EVENTS}, delivered {len(statuses) - len(dead) - len(lost)}, "
        f"dead {len(dead)}, lost {len(lost)}, duplicates {len(duplicates)}, "
        f"stale results discarded {stale}, drain {drain:.1f} s (accepting took {accepted_in:.1f} s); "
        f"{len(killed)} SIGKILLs, broker restarted: {'yes' if restarted else 'no (embedded)'}, "
        f"requests {len(sink.requests)}, bad signatures {sink_handler.bad_signatures}, "
        f"short retry after the chaos ran {retry_gap:.2f} s after its first attempt"
    )
    for delivery_id, count in sorted(duplicates.items()):
        print(f"  duplicate: {delivery_id} accepted {count} times")
    for pid, (alive, consumers, workers_alive, workers, replaced) in sorted(health.items()):
        if pid in children:
            print(
                f"  worker {pid}: consumer threads {alive}/{consumers}, "
                f"worker threads {workers_alive}/{workers}, replaced {replaced}"
            )
    assert accept_errors == []  # accept() never raised, not even while the broker was away
    assert len(statuses) == EVENTS
    assert lost == [], f"{len(lost)} lost, e.g. {lost[:5]}\n{worker.text()[-3000:]}"
    assert sink_handler.bad_signatures == 0
    assert len(killed) == 3 and (case.redis is None or restarted)
    assert retry_gap < 5.0  # a 0.5 s retry (jitter 0.5), not the ~60 s of a dead delay consumer
    for pid in children:
        alive, consumers, workers_alive, workers, _ = health[pid]
        assert consumers > 0 and alive == consumers and workers_alive == workers == 4
    assert code == 0, worker.text()[-3000:]


def signal_child(pid: int, sig: signal.Signals = signal.SIGKILL) -> None:
    import os

    os.kill(pid, sig)


def wait_for_second_attempt(sink: ChaosSink, delivery_id: str, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with sink.lock:
            times = list(sink.attempts_at.get(delivery_id, []))
        if len(times) >= 2:
            return times[1] - times[0]
        time.sleep(0.05)
    raise AssertionError(f"the probe's retry did not run within {timeout} s: {times}")


def stale_count(engine: sa.Engine) -> str:
    """Attempts marked stale (a result from a lost lease), if the schema has that marker."""
    columns = {c["name"] for c in sa.inspect(engine).get_columns("attempts")}
    if "stale" not in columns:
        return "n/a"
    with engine.connect() as conn:
        return str(conn.execute(sa.text("SELECT COUNT(*) FROM attempts WHERE stale")).scalar())
