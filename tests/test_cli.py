"""The operations commands: replay (dry-run count first, then enqueue) and enable."""

from __future__ import annotations

import textwrap
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
