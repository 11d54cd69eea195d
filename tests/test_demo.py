"""`cxbridge demo` (the README's main job) shows retries, a dead letter and its replay, and leaves a
store that `cxbridge deliveries` reads afterwards."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def test_demo_shows_retries_a_dead_letter_and_its_replay_and_keeps_the_store(tmp_path: Path):
    env = {
        **os.environ,
        "CXBRIDGE_DATABASE_URL": f"sqlite:///{tmp_path / 'var' / 'store.db'}",
        "CXBRIDGE_BROKER_URL": f"sqlite:///{tmp_path / 'var' / 'broker.db'}",
    }
    demo = subprocess.run(
        [sys.executable, "-m", "cxbridge", "demo"],
        env=env,
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert demo.returncode == 0, demo.stdout + demo.stderr
    out = demo.stdout
    assert "HTTP 503 Service Unavailable from 127.0.0.1 -> retry in" in out
    assert "HTTP 422 Unprocessable Entity from 127.0.0.1 -> dead letter" in out
    assert "replaying its 2 dead letter(s)" in out
    assert "24/24 delivered" in out and "0 bad signature(s)" in out
    assert "Salesforce: 2 Task(s), 2 Case(s); Zendesk: 2 ticket(s)" in out
    rejected = [line for line in out.splitlines() if "tickets" in line and "HTTP 422" in line]
    assert len(rejected) == 2, rejected  # each failed attempt is told once, replay or not
    assert out.rstrip().endswith("demo ok")
    assert "Traceback" not in demo.stderr

    listed = subprocess.run(
        [sys.executable, "-m", "cxbridge", "deliveries", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert len(rows) == 20 and {row["status"] for row in rows} == {"delivered"}  # 20: the default
    tickets = [row for row in rows if row["destination"] == "tickets"]
    assert [row["attempts"] for row in tickets] == [2, 2]  # rejected once, then replayed
