"""``cxbridge worker --processes N`` under its supervisor, in subprocesses: a killed child is logged and
restarted, a killed scheduler leader is replaced, SIGTERM stops everything with exit code 0, and a
configuration error ends the command with one line, at once."""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from multiprocessing.queues import SimpleQueue
from pathlib import Path

import pytest

from cxbridge.engine import Engine
from cxbridge.settings import Settings
from cxbridge.signing import generate_secret
from cxbridge.supervisor import FATAL_EXIT, Supervisor, WorkerStartError
from tests.engine_support import make_event
from tests.http_sink import HttpSink, Recorded, Reply
from tests.worker_support import (
    READY,
    TOOK_LOCK,
    WorkerProcess,
    http_tenant,
    pid_alive,
    worker_env,
)


def producer(config: Path, env: dict[str, str]) -> Engine:
    return Engine(
        Settings(
            config_dir=config,
            database_url=env["CXBRIDGE_DATABASE_URL"],
            broker_url=env["CXBRIDGE_BROKER_URL"],
            queue_name=env.get("CXBRIDGE_QUEUE_NAME", "cxbridge"),
        )
    )


def wait_delivered(engine: Engine, count: int, timeout: float) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    while True:
        counts = engine.store.status_counts()
        if counts.get("delivered", 0) >= count or time.monotonic() > deadline:
            return counts
        time.sleep(0.1)


def test_a_sigkilled_child_is_logged_and_restarted_and_sigterm_stops_all(
    tmp_path: Path, broker_url: str
):
    config = tmp_path / "tenants"
    with HttpSink() as sink:
        http_tenant(config, sink.url("/hook"), generate_secret(), "{schedule: [0.5]}")
        env = worker_env(
            config,
            f"sqlite:///{tmp_path / 'store.db'}",
            broker_url,
            # A queue of this test's own on a shared Redis or RabbitMQ.
            CXBRIDGE_QUEUE_NAME=f"cxbridge-test-{uuid.uuid4().hex[:12]}",
            CXBRIDGE_LOST_AFTER="3",
        )
        worker = WorkerProcess(env, tmp_path / "worker.log", "--processes", "2", "--threads", "2")
        engine = producer(config, env)
        try:
            first, second = worker.wait_for(READY, 2)
            os.kill(int(first), signal.SIGKILL)
            killed = re.compile(rf"(worker process \d \(pid {first}\) was killed by SIGKILL)")
            worker.wait_for(killed)
            third = worker.wait_for(READY, 3)[2]
            for n in range(20):
                engine.accept(make_event(event_id=f"evt-{n}"))
            counts = wait_delivered(engine, 20, timeout=30)
            assert counts == {"delivered": 20}, worker.text()
        finally:
            code = worker.stop()
            engine.close()
    assert code == 0, worker.text()
    for pid in (second, third):
        assert not pid_alive(int(pid)), f"worker {pid} outlived its supervisor"
    assert "Traceback" not in worker.text()


def test_killing_the_scheduler_leader_hands_sweeping_to_another_process(
    tmp_path: Path, store_url: str
):
    """A delivery waits in the store for its retry (short_delay 0: only the scheduler sends it);
    the process that sweeps is SIGKILLed; another takes the lock and the retry is sent."""
    attempts: Counter[str] = Counter()
    lock = threading.Lock()

    def fail_first(request: Recorded) -> Reply:
        with lock:
            attempts[request.header("webhook-id") or "?"] += 1
            return Reply(503) if attempts[request.header("webhook-id") or "?"] == 1 else Reply(200)

    config = tmp_path / "tenants"
    with HttpSink() as sink:
        sink.reply("/hook", fail_first)
        http_tenant(config, sink.url("/hook"), generate_secret(), "{schedule: [3], jitter: 0}")
        env = worker_env(
            config, store_url, f"sqlite:///{tmp_path / 'broker.db'}", CXBRIDGE_SHORT_DELAY="0"
        )
        worker = WorkerProcess(env, tmp_path / "worker.log", "--processes", "2", "--threads", "2")
        engine = producer(config, env)
        try:
            worker.wait_for(READY, 2)
            leader = worker.wait_for(TOOK_LOCK, 1)[0]
            (delivery_id,) = engine.accept(make_event(event_id="evt-retry")).delivery_ids
            # The first attempt failed and is recorded (its attempt row, not only its lease, which
            # counts the attempt when it starts): the retry waits in the store.
            deadline = time.monotonic() + 20
            while not engine.store.attempts_of(delivery_id):
                assert time.monotonic() < deadline, worker.text()
                time.sleep(0.05)
            os.kill(int(leader), signal.SIGKILL)
            killed_at = time.monotonic()
            counts = wait_delivered(engine, 1, timeout=30)
            leaders = [m.group(2) for m in TOOK_LOCK.finditer(worker.text())]
            took_over = time.monotonic() - killed_at
        finally:
            code = worker.stop()
            engine.close()
    assert counts == {"delivered": 1}, worker.text()
    assert len(leaders) >= 2 and leaders[-1] != leaders[0], worker.text()
    assert code == 0
    print(f"\nsupervision: retry delivered {took_over:.1f} s after the leader's SIGKILL")


@pytest.mark.parametrize("processes", ["1", "2"])
def test_a_config_error_ends_the_command_with_one_line(tmp_path: Path, processes: str):
    config = tmp_path / "tenants"
    config.mkdir()
    (config / "acme.yaml").write_text(
        "tenant: acme\ndestinations:\n  x:\n    type: nope\n    events: [quality_score]\n"
    )
    env = worker_env(
        config, f"sqlite:///{tmp_path / 'store.db'}", f"sqlite:///{tmp_path / 'broker.db'}"
    )
    result = subprocess.run(
        [sys.executable, "-m", "cxbridge", "worker", "--processes", processes],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1
    assert len(lines) == 1, result.stderr
    assert "unknown destination type 'nope'" in lines[0]
    assert "Traceback" not in result.stderr + result.stdout


def test_an_unreachable_broker_ends_the_command_with_one_line(tmp_path: Path):
    from tests.http_sink import closed_port

    config = tmp_path / "tenants"
    http_tenant(config, "http://127.0.0.1:9/hook", generate_secret(), "{schedule: [1]}")
    env = worker_env(
        config,
        f"sqlite:///{tmp_path / 'store.db'}",
        f"redis://:hunter2@127.0.0.1:{closed_port()}/0",
    )
    result = subprocess.run(
        [sys.executable, "-m", "cxbridge", "worker", "--processes", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.strip().startswith(
        "cxbridge worker: cannot reach the broker redis://:***@"
    )
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "hunter2" not in result.stderr


# -- the supervisor on its own -----------------------------------------------------------------


def exit_then_fatal(counter: str, fatal: SimpleQueue[str]) -> None:
    """A child that exits with code 3 twice, then stops on a fatal problem."""
    path = Path(counter)
    runs = len(path.read_text()) if path.exists() else 0
    path.write_text("x" * (runs + 1))
    if runs < 2:
        sys.exit(3)
    fatal.put("tenant file broken: fix it")
    sys.exit(FATAL_EXIT)


def test_supervisor_restarts_with_backoff_and_stops_on_a_fatal_exit(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    counter = tmp_path / "runs"
    supervisor = Supervisor(exit_then_fatal, (str(counter),), processes=1)
    with (
        caplog.at_level(logging.WARNING, logger="cxbridge.supervisor"),
        pytest.raises(WorkerStartError, match="tenant file broken: fix it"),
    ):
        supervisor.run()
    restarts = [r.getMessage() for r in caplog.records if "restarting" in r.getMessage()]
    assert len(restarts) == 2
    assert "exited with code 3" in restarts[0] and restarts[0].endswith("restarting it in 1 s")
    assert restarts[1].endswith("restarting it in 2 s")  # doubled
    assert counter.read_text() == "xxx"  # not restarted after the fatal exit
