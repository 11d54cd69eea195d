"""The documentation cannot rot: every hook is documented and tested, and the plugin guide's example
plugin is real code that loads, validates, renders and delivers."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest

from cxbridge.config import load_tenant
from cxbridge.hookspecs import hook_names
from cxbridge.outcome import Delivery
from cxbridge.plugins import PluginManager
from tests.engine_support import make_event
from tests.http_sink import HttpSink, Reply

ROOT = Path(__file__).parent.parent
GUIDE = (ROOT / "docs" / "writing-a-plugin.md").read_text()


def code_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


@pytest.mark.parametrize("hook", hook_names())
def test_every_hook_has_a_section_headed_by_its_signature(hook: str):
    assert re.search(rf"^### {hook}\(", GUIDE, flags=re.M), f"docs lack a section for {hook}"


@pytest.mark.parametrize("hook", hook_names())
def test_every_hook_is_implemented_by_some_test_plugin(hook: str):
    sources = [p.read_text() for p in (ROOT / "tests").glob("*.py")]
    sources += [p.read_text() for p in (ROOT / "plugins").glob("*/cxbridge_*/__init__.py")]
    assert any(f"def {hook}(" in source for source in sources), f"no test exercises {hook}"


def test_the_guide_example_plugin_loads_renders_and_delivers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    (source,) = code_blocks(GUIDE, "python")
    module = types.ModuleType("cxbridge_crm")
    monkeypatch.setitem(sys.modules, "cxbridge_crm", module)
    exec(compile(source, "docs/writing-a-plugin.md", "exec", dont_inherit=True), module.__dict__)
    manager = PluginManager()
    manager.register(module, name="crm")
    assert "crm" in manager.destination_types

    yaml_block = code_blocks(GUIDE, "yaml")[0]
    with HttpSink() as sink:
        sink.reply("/notes", Reply(201))
        tenant_file = tmp_path / "acme.yaml"
        tenant_file.write_text(
            "tenant: acme\n"
            + yaml_block.replace("https://crm.internal.example", sink.url("/")[:-1]).replace(
                "10.20.0.0/16", "127.0.0.0/8"
            )
        )
        tenant = load_tenant(tenant_file, manager.destination_types, {"ACME_CRM_TOKEN": "t0k"})
        destination = tenant.destinations["notes"]
        event = make_event("call_summary")
        payload = manager.hooks.transform(event, destination)
        assert payload is not None and payload.body == b'{"note":"Customer asked for a refund."}'
        delivery = Delivery("dlv_1", "acme", "notes", event.id, event.type, 1, payload)
        outcome = manager.hooks.deliver(delivery, destination)
        assert outcome is not None and outcome.ok and outcome.status_code == 201
        (request,) = sink.to("/notes")
        assert request.header("Idempotency-Key") == "dlv_1"
        assert request.header("Authorization") == "Bearer t0k"
