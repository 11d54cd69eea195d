"""Every code block of README.md, docs/ and the plugin READMEs is checked, so the docs cannot rot:
YAML parses (tenant files load with the installed plugins), TOML parses, Python compiles and its
``cxbridge`` imports exist, and every ``cxbridge`` / ``make`` command line names a real command with
options it accepts. (Blocks that run end to end have their own tests: tests/test_docs.py,
tests/test_plugin_readmes.py, tests/test_demo.py.)"""

from __future__ import annotations

import ast
import importlib
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import click
import pytest
import yaml

from cxbridge.cli import cli
from cxbridge.config import load_tenant
from cxbridge.plugins import PluginManager
from tests.test_plugin_readmes import _env_for

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted(
    [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "plugins").glob("*/README.md")]
)
BLOCK = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
MAKE_TARGETS = set(re.findall(r"^([a-z][\w-]*):", (ROOT / "Makefile").read_text(), re.M))


def blocks() -> list[tuple[str, str, str]]:
    found = []
    for path in DOCS:
        text = path.read_text()
        for match in BLOCK.finditer(text):
            line = text[: match.start()].count("\n") + 1
            found.append((f"{path.relative_to(ROOT)}:{line}", match[1], match[2]))
    return found


BLOCKS = blocks()


def of(*languages: str) -> list[pytest.param]:
    return [pytest.param(body, id=where) for where, lang, body in BLOCKS if lang in languages]


@pytest.fixture(scope="module")
def destination_types() -> dict:
    manager = PluginManager()
    manager.load_entrypoints()
    return manager.destination_types


@pytest.mark.parametrize("body", of("yaml"))
def test_yaml_blocks_parse_and_tenant_files_load(body: str, destination_types, tmp_path: Path):
    data = yaml.safe_load(body)
    if isinstance(data, dict) and "destinations" in data:
        types = {d.get("type") for d in data["destinations"].values()}
        if not types <= set(destination_types):
            return  # a plugin the doc itself defines (tests/test_docs.py runs that one)
        text = body if "tenant" in data else "tenant: acme\n" + body
        path = tmp_path / "tenant.yaml"
        path.write_text(text)
        tenant = load_tenant(path, destination_types, _env_for(text))
        assert tenant.destinations


@pytest.mark.parametrize("body", of("toml"))
def test_toml_blocks_parse(body: str):
    tomllib.loads(body)


@pytest.mark.parametrize("body", of("python"))
def test_python_blocks_compile_and_import_what_exists(body: str):
    tree = ast.parse(body)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("cxbridge"):
            module = importlib.import_module(node.module or "")
            for alias in node.names:
                assert hasattr(module, alias.name), f"{node.module} has no {alias.name}"


def command_lines(body: str) -> list[list[str]]:
    lines = []
    for raw in body.splitlines():
        line = raw.strip().removeprefix("$ ")
        words = shlex.split(line, comments=True) if line else []
        if words and words[0].split("/")[-1] in {"cxbridge", "make"}:
            lines.append(words)
    return lines


@pytest.mark.parametrize("body", of("sh", "console", "bash"))
def test_command_lines_name_real_commands_and_options(body: str):
    for words in command_lines(body):
        if words[0] == "make":
            assert set(words[1:]) <= MAKE_TARGETS, words
            continue
        args = [w for w in words[1:] if not re.fullmatch(r"[A-Z_]+=.*", w)]
        while args and args[0].startswith("-"):  # the group's own options (-v)
            args.pop(0)
        ctx = click.Context(cli, info_name="cxbridge")
        name, rest = args[0], args[1:]
        command = cli.get_command(ctx, name)
        assert command is not None, f"{shlex.join(words)}: no command {name!r}"
        try:
            with command.make_context(name, rest, parent=ctx):  # closes files it opened
                pass
        except click.UsageError as exc:  # pragma: no cover - the message is the point
            pytest.fail(f"{shlex.join(words)}: {exc.format_message()}")


def test_every_doc_has_checked_blocks():
    assert {where.split(":")[0] for where, _, _ in BLOCKS} >= {"README.md"}
    assert of("yaml") and of("python") and of("sh", "console")


def test_the_readme_python_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from cxbridge.demo import example_endpoints

    ((body,),) = [
        [b] for where, lang, b in BLOCKS if where.startswith("README") and lang == "python"
    ]
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    for name in [n for n in os.environ if n.startswith("ACME_")]:
        monkeypatch.delenv(name)
    with example_endpoints() as endpoints:  # sets the example tenant's variables, as the demo does
        endpoints.receiver.rejecting = False
        result = subprocess.run(
            [sys.executable, "-c", body],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 0, result.stderr
    # call_summary goes to the BI webhook, the ticketing endpoint, Salesforce and Zendesk
    assert result.stdout.count("delivered [AttemptRecord(") == 4, result.stdout
    assert len(endpoints.salesforce.records["Task"]) == 1 and len(endpoints.zendesk.tickets) == 1
