"""Chaos, bounded: 2,000 events to a sink that fails 30 % with 503, while the worker process is killed
with SIGKILL twice. Every delivery must end delivered; duplicates are counted and carry the same id."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import IO

import pytest

from cxbridge.engine import Engine
from cxbridge.settings import Settings
from cxbridge.signing import generate_secret
from tests.engine_support import make_event
from tests.http_sink import HttpSink, Recorded, Reply

EVENTS = 2000


def start_worker(env: dict[str, str], log: IO[bytes]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "cxbridge", "worker", "--threads", "4"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


@pytest.mark.slow
def test_sigkill_twice_mid_run_loses_no_delivery(tmp_path: Path):
    rng = random.Random(7)
    lock = threading.Lock()
    ok_by_id: dict[str, list[bytes]] = defaultdict(list)

    def flaky(request: Recorded) -> Reply:
        if len(request.body) != int(request.header("content-length") or -1):
            return Reply(400)  # the sender was killed mid-request; no client will read this answer
        with lock:
            fail = rng.random() < 0.3
            if not fail:
                ok_by_id[request.header("webhook-id") or "?"].append(request.body)
        return Reply(503) if fail else Reply(200)

    config = tmp_path / "tenants"
    config.mkdir()
    secret = generate_secret()
    log_path = tmp_path / "worker.log"
    with HttpSink() as sink, log_path.open("ab") as log:
        sink.reply("/hook", flaky)
        (config / "acme.yaml").write_text(
            textwrap.dedent(f"""
            tenant: acme
            retry: {{schedule: [0.5, 1, 2], jitter: 0.5}}
            destinations:
              sink:
                type: http
                events: [quality_score]
                url: {sink.url("/hook")}
                secrets: ["{secret}"]
                allow_networks: ["127.0.0.0/8"]
            """)
        )
        env = {
            **os.environ,
            "CXBRIDGE_CONFIG_DIR": str(config),
            "CXBRIDGE_DATABASE_URL": f"sqlite:///{tmp_path / 'store.db'}",
            "CXBRIDGE_BROKER_URL": f"sqlite:///{tmp_path / 'broker.db'}",
            "CXBRIDGE_LEASE_SECONDS": "3",
            "CXBRIDGE_LOST_AFTER": "3",
        }
        settings = Settings(
            config_dir=config,
            database_url=env["CXBRIDGE_DATABASE_URL"],
            broker_url=env["CXBRIDGE_BROKER_URL"],
        )
        producer = Engine(settings)
        worker = start_worker(env, log)
        kills = 0
        try:
            for n in range(EVENTS):
                producer.accept(make_event(event_id=f"evt-{n}", score=n % 100))
                # Kill the worker at a quarter and at two thirds of the run, mid-delivery.
                if n in (EVENTS // 4, 2 * EVENTS // 3):
                    time.sleep(0.3)
                    worker.send_signal(signal.SIGKILL)
                    worker.wait(10)
                    kills += 1
                    worker = start_worker(env, log)
            deadline = time.monotonic() + 150
            while time.monotonic() < deadline:
                counts = producer.store.status_counts()
                if counts.get("delivered", 0) == EVENTS:
                    break
                time.sleep(0.25)
        finally:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(20)
            except subprocess.TimeoutExpired:
                worker.kill()
            producer.close()

    assert kills == 2
    assert counts == {"delivered": EVENTS}, log_path.read_text()[-3000:]
    assert len(ok_by_id) == EVENTS  # the sink accepted every delivery at least once
    duplicates = {i: bodies for i, bodies in ok_by_id.items() if len(bodies) > 1}
    for bodies in duplicates.values():
        assert len(set(bodies)) == 1  # a duplicate is the same delivery: same id, same bytes
    print(f"\nchaos: {EVENTS} delivered, {len(duplicates)} delivered more than once, 2 SIGKILLs")
