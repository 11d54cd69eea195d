"""The operations commands: replay (dry-run count first, then enqueue) and enable."""

from __future__ import annotations

import json
import textwrap
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from cxbridge.cli import cli
from cxbridge.engine import Engine
from cxbridge.settings import Settings
from tests.engine_support import make_event
from tests.http_sink import HttpSink, Reply


@pytest.fixture
def sink_engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    config = tmp_path / "tenants"
    config.mkdir()
    with HttpSink() as sink:
        (config / "acme.yaml").write_text(
            textwrap.dedent(f"""
            tenant: acme
            destinations:
              hook:
                type: http
                events: [call_summary]
                url: {sink.url("/hook")}
                allow_networks: ["127.0.0.0/8"]
            """)
        )
        env = {
            "CXBRIDGE_CONFIG_DIR": str(config),
            "CXBRIDGE_DATABASE_URL": f"sqlite:///{tmp_path / 'store.db'}",
            "CXBRIDGE_BROKER_URL": f"sqlite:///{tmp_path / 'broker.db'}",
        }
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        engine = Engine(Settings())
        yield engine, sink
        engine.close()


def test_replay_counts_first_then_resends_dead_letters(sink_engine):
    engine, sink = sink_engine
    sink.reply("/hook", Reply(422), Reply(200))
    (delivery_id,) = engine.accept(make_event("call_summary")).delivery_ids
    engine.process(delivery_id)
    assert engine.store.get_delivery(delivery_id).status == "dead"

    dry = CliRunner().invoke(cli, ["replay", "--tenant", "acme", "--dry-run"])
    assert dry.exit_code == 0 and "1 deliveries match" in dry.stdout
    assert engine.store.get_delivery(delivery_id).status == "dead"

    run = CliRunner().invoke(cli, ["replay", "--tenant", "acme", "--yes"])
    assert run.exit_code == 0, run.output
    assert "1 deliveries enqueued again" in run.stdout
    engine.process(delivery_id)
    record = engine.store.get_delivery(delivery_id)
    assert record.status == "delivered" and record.attempts == 2
    first, second = (r.body for r in sink.to("/hook"))
    assert first == second  # a replay sends the stored payload again


def test_enable_lifts_a_410_disable(sink_engine):
    engine, sink = sink_engine
    sink.reply("/hook", Reply(410), Reply(200))
    (first,) = engine.accept(make_event("call_summary")).delivery_ids
    engine.process(first)
    assert engine.store.disabled_reason("acme", "hook") is not None

    result = CliRunner().invoke(cli, ["enable", "-t", "acme", "-d", "hook"])
    assert result.exit_code == 0 and "acme/hook enabled" in result.stdout
    assert engine.store.disabled_reason("acme", "hook") is None
    again = CliRunner().invoke(cli, ["enable", "-t", "acme", "-d", "hook"])
    assert "was not disabled" in again.stdout


def test_deliveries_and_show_tell_what_happened(sink_engine):
    engine, sink = sink_engine
    sink.reply("/hook", Reply(503, headers={"Retry-After": "1"}), Reply(422))
    (delivery_id,) = engine.accept(make_event("call_summary")).delivery_ids
    engine.process(delivery_id)
    time.sleep(1.05)  # the Retry-After
    engine.process(delivery_id)

    listed = CliRunner().invoke(cli, ["deliveries", "--json"])
    assert listed.exit_code == 0, listed.output
    (row,) = [json.loads(line) for line in listed.stdout.splitlines()]
    assert row["id"] == delivery_id and row["status"] == "dead" and row["attempts"] == 2

    table = CliRunner().invoke(cli, ["deliveries", "--status", "dead"])
    assert delivery_id in table.stdout and "acme/hook" in table.stdout

    events = CliRunner().invoke(cli, ["events", "--json"])
    (event,) = [json.loads(line) for line in events.stdout.splitlines()]
    assert event["type"] == "call_summary" and event["deliveries"] == {"dead": 1}

    shown = CliRunner().invoke(cli, ["show", delivery_id])
    assert shown.exit_code == 0, shown.output
    assert "HTTP 503" in shown.stdout and "HTTP 422" in shown.stdout
    assert "dead letter" in shown.stdout
    detail = json.loads(CliRunner().invoke(cli, ["show", delivery_id, "--json"]).stdout)
    assert [a["status_code"] for a in detail["attempts"]] == [503, 422]
    assert detail["dead_letters"][0]["reason"].startswith("permanent:")


def test_deliveries_follow_prints_each_change(sink_engine):
    engine, sink = sink_engine
    sink.reply("/hook", Reply(200))
    (delivery_id,) = engine.accept(make_event("call_summary")).delivery_ids
    timer = threading.Timer(0.3, engine.process, args=(delivery_id,))
    timer.start()
    result = CliRunner().invoke(cli, ["deliveries", "--follow", "--for", "2.5"])
    timer.join()
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if delivery_id in line]
    assert "pending" in lines[0] and "delivered" in lines[-1]


def test_show_unknown_delivery_is_one_line():
    result = CliRunner().invoke(cli, ["show", "dlv_nope"])
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        "no delivery 'dlv_nope'; `cxbridge deliveries` lists them"
    ]
