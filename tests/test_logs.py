"""Structured logs."""

from __future__ import annotations

import json
import logging

from cxbridge.logs import JsonFormatter


def test_json_logs_are_one_object_per_line_with_extra_fields():
    record = logging.makeLogRecord(
        {"name": "cxbridge.engine", "levelname": "WARNING", "msg": "retry %s", "args": ("x",)}
    )
    record.delivery_id = "dlv_1"
    line = JsonFormatter().format(record)
    assert "\n" not in line
    data = json.loads(line)
    assert data["message"] == "retry x" and data["delivery_id"] == "dlv_1"
    assert data["level"] == "warning" and data["logger"] == "cxbridge.engine"


def test_a_worker_off_a_terminal_logs_json_lines(tmp_path):
    import os
    import re
    import signal
    import subprocess
    import sys
    import time

    from tests.worker_support import http_tenant

    config = tmp_path / "tenants"
    http_tenant(config, "https://hooks.example.com/x", "whsec_" + "A" * 44, "{}")
    env = {
        **os.environ,
        "CXBRIDGE_LOG_FORMAT": "auto",  # stderr is a pipe here: JSON
        "CXBRIDGE_CONFIG_DIR": str(config),
        "CXBRIDGE_DATABASE_URL": f"sqlite:///{tmp_path / 'store.db'}",
        "CXBRIDGE_BROKER_URL": f"sqlite:///{tmp_path / 'broker.db'}",
    }
    worker = subprocess.Popen(
        [sys.executable, "-m", "cxbridge", "worker", "--threads", "1"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines: list[str] = []
        deadline = time.monotonic() + 60
        while not any("worker ready" in line for line in lines):
            assert time.monotonic() < deadline and worker.poll() is None, lines
            lines.append(worker.stderr.readline() if worker.stderr else "")
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.communicate(timeout=60)
    records = [json.loads(line) for line in lines if line.strip()]
    assert any(re.match(r"worker ready: 1 thread", r["message"]) for r in records)
    assert all(r["level"] in ("info", "warning") for r in records)
