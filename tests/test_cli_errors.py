"""Every ordinary mistake gets one clear line on stderr and a non-zero exit, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from cxbridge.cli import cli, redact_url

BROKEN_TENANT = "tenant: acme\ndestinations:\n  hook:\n    type: nope\n    events: [call_summary]\n"


def run(args: list[str], monkeypatch: pytest.MonkeyPatch, **env: str) -> Result:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return CliRunner().invoke(cli, args)


def assert_one_line(result: Result, code: int, *fragments: str) -> None:
    assert result.exit_code == code, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 or code == 2, lines  # click's usage errors add a "Try --help" line
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CXBRIDGE_DATABASE_URL", f"sqlite:///{tmp_path / 'store.db'}")
    monkeypatch.setenv("CXBRIDGE_BROKER_URL", f"sqlite:///{tmp_path / 'broker.db'}")
    monkeypatch.setenv("CXBRIDGE_CONFIG_DIR", str(tmp_path / "tenants"))
    (tmp_path / "tenants").mkdir()
    return tmp_path


@pytest.fixture
def broken_config(workdir: Path) -> Path:
    (workdir / "tenants" / "acme.yaml").write_text(BROKEN_TENANT)
    return workdir


@pytest.mark.parametrize(
    "args",
    [["worker"], ["replay", "--yes"], ["demo"], ["enable", "-t", "acme", "-d", "hook"]],
    ids=["worker", "replay", "demo", "enable"],
)
def test_a_config_error_is_reported_by_position_not_traceback(args, broken_config, monkeypatch):
    result = run(args, monkeypatch)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert "acme.yaml:4:" in result.stderr and "nope" in result.stderr


def test_an_unknown_broker_scheme_is_one_line(workdir, monkeypatch):
    (workdir / "tenants" / "acme.yaml").write_text("tenant: acme\ndestinations: {}\n")
    result = run(["replay", "--yes"], monkeypatch, CXBRIDGE_BROKER_URL="kafka://127.0.0.1:9092")
    assert_one_line(result, 1, "kafka://", "sqlite:///")


def test_an_unreachable_postgresql_is_one_line(workdir, monkeypatch):
    url = "postgresql+psycopg://someone:hunter2@127.0.0.1:1/nothing"
    result = run(["deliveries"], monkeypatch, CXBRIDGE_DATABASE_URL=url)
    assert_one_line(result, 1, "cannot use the store", "CXBRIDGE_DATABASE_URL", "127.0.0.1:1")
    assert "hunter2" not in result.output


def test_an_unwritable_sqlite_path_is_one_line(workdir, monkeypatch):
    url = f"sqlite:///{workdir / 'store.db' / 'not-a-dir' / 'x.db'}"
    (workdir / "store.db").write_text("a file, not a folder")
    result = run(["events"], monkeypatch, CXBRIDGE_DATABASE_URL=url)
    assert_one_line(result, 1, "error:")


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["replay", "--status", "bogus"], "'bogus' is not one of"),
        (["worker", "--threads", "0"], "0 is not in the range"),
        (["worker", "--threads", "-1"], "-1 is not in the range"),
        (["worker", "--processes", "0"], "0 is not in the range"),
        (["demo", "--events", "0"], "0 is not in the range"),
        (["demo", "--events", "-3"], "-3 is not in the range"),
        (["deliveries", "--status", "lost"], "'lost' is not one of"),
    ],
)
def test_out_of_range_options_are_usage_errors(args, fragment, workdir, monkeypatch):
    result = run(args, monkeypatch)
    assert_one_line(result, 2, fragment)


def test_enable_an_unknown_destination_fails(workdir, monkeypatch):
    (workdir / "tenants" / "acme.yaml").write_text("tenant: acme\ndestinations: {}\n")
    result = run(["enable", "-t", "acme", "-d", "nope"], monkeypatch)
    assert_one_line(result, 1, "has no destination 'nope'")


def test_validate_an_empty_folder_fails(workdir, monkeypatch):
    result = run(["validate", str(workdir / "tenants")], monkeypatch)
    assert_one_line(result, 1, "no tenant files")


def test_validate_accepts_a_single_file(workdir, monkeypatch):
    path = workdir / "tenants" / "acme.yaml"
    path.write_text("tenant: acme\ndestinations: {}\n")
    result = run(["validate", str(path)], monkeypatch)
    assert result.exit_code == 0, result.output
    assert "tenant acme" in result.stdout


def test_demo_without_the_example_tenant_is_one_line(workdir, monkeypatch):
    (workdir / "tenants" / "other.yaml").write_text("tenant: other\ndestinations: {}\n")
    result = run(["demo", "--events", "1"], monkeypatch)
    assert_one_line(result, 1, "acme")


def test_secret_prints_a_usable_signing_secret(monkeypatch):
    from cxbridge.signing import parse_secret

    result = run(["secret"], monkeypatch)
    assert result.exit_code == 0
    assert len(parse_secret(result.stdout.strip())) >= 32


def test_redact_url_hides_only_the_password():
    assert redact_url("redis://:pw@h:6379/0") == "redis://:***@h:6379/0"
    assert redact_url("amqp://guest:guest@h/%2F") == "amqp://guest:***@h/%2F"
    assert redact_url("sqlite:///var/x.db") == "sqlite:///var/x.db"


def test_a_real_process_prints_no_traceback(broken_config):
    result = subprocess.run(
        [sys.executable, "-m", "cxbridge", "replay", "--yes"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and "acme.yaml:4:" in result.stderr
