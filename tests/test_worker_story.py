"""``cxbridge worker`` tells its story at INFO: what it runs on (no secrets), one line per outcome,
and a summary line a minute."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from cxbridge import Outcome
from cxbridge.signing import generate_secret
from cxbridge.workers import _tell_summary
from tests.engine_support import make_event
from tests.http_sink import HttpSink, Reply
from tests.test_supervision import producer, wait_delivered
from tests.worker_support import WorkerProcess, http_tenant, worker_env


def test_the_worker_says_what_it_runs_on_and_each_outcome(tmp_path: Path):
    config = tmp_path / "tenants"
    secret = generate_secret()
    with HttpSink() as sink:
        sink.reply("/hook", Reply(200), Reply(422))
        http_tenant(config, sink.url("/hook"), secret, "{schedule: [1]}")
        env = worker_env(
            config,
            f"sqlite:///{tmp_path / 'store.db'}",
            f"sqlite:///{tmp_path / 'broker.db'}",
        )
        worker = WorkerProcess(env, tmp_path / "worker.log", "--threads", "1")
        engine = producer(config, env)
        try:
            worker.wait_for(re.compile(r"(worker ready)"))
            engine.accept(make_event(event_id="evt-ok"))
            wait_delivered(engine, 1, timeout=30)
            engine.accept(make_event(event_id="evt-bad"))
            worker.wait_for(re.compile(r"(dead letter) acme/sink"))
        finally:
            assert worker.stop() == 0
            engine.close()
    log = worker.text()
    assert re.search(r"INFO cxbridge.workers: store sqlite:///\S+store.db, broker", log)
    assert "tenant acme from" in log and "sink (http)" in log
    assert re.search(r"plugins: .*http", log)
    assert "INFO cxbridge.workers: worker ready: 1 thread" in log
    assert re.search(r"INFO cxbridge.engine: delivered acme/sink quality_score dlv_\w+", log)
    assert "dead letter acme/sink quality_score" in log and "permanent: HTTP 422" in log
    assert secret not in log and "Traceback" not in log


def test_the_summary_line_counts_outcomes_and_what_waits(
    make_engine, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    engine, plugin, _ = make_engine(tmp_path)
    plugin.script.extend(
        [Outcome.delivered(), Outcome.permanent("HTTP 422"), Outcome.retry("HTTP 503")]
    )
    ids = [i for _ in range(2) for i in engine.accept(make_event(score=40)).delivery_ids]
    for delivery_id in ids:  # 4 deliveries: delivered, dead, retried, delivered (the default)
        engine.process(delivery_id)
    with caplog.at_level(logging.INFO, logger="cxbridge.workers"):
        _tell_summary(engine)
        _tell_summary(engine)  # the tally starts again after each line
    lines = [r.getMessage() for r in caplog.records if r.name == "cxbridge.workers"]
    assert (
        lines[0] == "last minute: 2 delivered, 1 retried, 1 dead-lettered; 1 pending in the store"
    )
    assert lines[1].startswith("last minute: 0 delivered, 0 retried, 0 dead-lettered")


def test_a_disabled_destination_is_a_warning_naming_the_command_that_lifts_it(
    make_engine, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    engine, plugin, _ = make_engine(tmp_path)
    plugin.script.append(Outcome.permanent("HTTP 410 Gone", disable_destination=True))
    (delivery_id, *_) = engine.accept(make_event(score=90)).delivery_ids
    with caplog.at_level(logging.INFO, logger="cxbridge.engine"):
        engine.process(delivery_id)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(
        "destination acme/crm disabled: HTTP 410 Gone" in m
        and "`cxbridge enable -t acme -d crm` lifts it" in m
        for m in warnings
    ), warnings
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert any(m.startswith("dead letter acme/crm quality_score dlv_") for m in infos), infos
