"""The documentation cannot rot: every hook is documented and tested, and the plugin guide's example
plugin is real code that loads, validates, renders and delivers."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest

from cxbridge import hookimpl
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


# -- issue 14: the plugin author's path through the docs -------------------------------------------

TESTING = (ROOT / "docs" / "testing-a-plugin.md").read_text()


def _guide_plugin(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    (source,) = code_blocks(GUIDE, "python")
    module = types.ModuleType("cxbridge_crm")
    monkeypatch.setitem(sys.modules, "cxbridge_crm", module)
    exec(compile(source, "docs/writing-a-plugin.md", "exec", dont_inherit=True), module.__dict__)
    return module


def test_hook_examples_map_statuses_with_outcome_for_status_and_render_in_the_tenants_zone():
    from cxbridge import hookspecs

    deliver_doc = hookspecs.deliver.__doc__ or ""
    assert "outcome_for_status(" in deliver_doc and ">= 400" not in deliver_doc  # 429 is retried
    transform_doc = hookspecs.transform.__doc__ or ""
    assert "timezone=destination.timezone" in transform_doc and "json.dumps" not in transform_doc


def test_the_guide_pyproject_can_be_built_and_names_the_kit():
    (pyproject,) = code_blocks(GUIDE, "toml")
    assert pyproject.startswith("[build-system]")
    assert "cxbridge[testing]" in pyproject


def test_plugin_docs_point_only_at_public_names():
    for text in (GUIDE, TESTING):
        assert "tests/" not in text.replace("tests/test_contract_", "")
        assert "cxbridge.clock" not in text


def _registering(name: str, options: type) -> object:
    class Plugin:
        @hookimpl
        def register_destinations(self, register):  # type: ignore[no-untyped-def]
            register(name, options)

    return Plugin()


def test_the_guide_plugin_refuses_an_event_it_cannot_send_at_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from cxbridge.errors import ConfigError

    module = _guide_plugin(monkeypatch)
    manager = PluginManager()
    manager.register(module, name="crm")
    tenant_file = tmp_path / "acme.yaml"
    tenant_file.write_text(
        "tenant: acme\ndestinations:\n  notes:\n    type: crm\n    events: [quality_score]\n"
        "    base_url: http://127.0.0.1:9\n    token: t\n"
    )
    with pytest.raises(ConfigError) as refused:
        load_tenant(tenant_file, manager.destination_types, {})
    assert "takes only call_summary events" in str(refused.value.problems)

    # Without the validator, the default template's variable is reported at the `type:` line.
    from pydantic import BaseModel, ConfigDict

    class Bare(BaseModel):
        model_config = ConfigDict(extra="forbid")
        base_url: str
        token: str
        fields: object = module.CrmOptions.model_fields["fields"].default

    bare = PluginManager()
    bare.register(_registering("crm", Bare), name="bare")
    with pytest.raises(ConfigError) as refused:
        load_tenant(tenant_file, bare.destination_types, {})
    (problem,) = refused.value.problems
    assert problem.line == 4 and "fields.note: unknown variable 'ai.summary'" in problem.message


def test_the_testing_guide_engine_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from cxbridge.testing import Bridge, FakeTarget

    module = _guide_plugin(monkeypatch)
    example = next(b for b in code_blocks(TESTING, "python") if "make_bridge" in b)
    namespace: dict[str, object] = {}
    exec(compile(example, "docs/testing-a-plugin.md", "exec", dont_inherit=True), namespace)
    made: list[Bridge] = []

    def make_bridge(tenant_yaml: str) -> Bridge:
        made.append(Bridge(tenant_yaml, tmp_path, plugins=[module], entry_points=False))
        return made[-1]

    try:
        with FakeTarget() as target:
            namespace["test_a_rate_limit_is_waited_out"](make_bridge, target)  # type: ignore[operator]
    finally:
        for bridge in made:
            bridge.close()


def test_the_reserved_destination_variable_is_documented_as_it_behaves():
    """Issue 14 item 3: templates may name ``destination`` at load, and rendering it fails."""
    from cxbridge import JsonTemplate, TemplateRenderError
    from cxbridge.testing import canned_event

    page = (ROOT / "docs" / "templates.md").read_text()
    assert "`destination` is a reserved name" in page and "'destination' is undefined" in page
    with pytest.raises(TemplateRenderError, match="'destination' is undefined"):
        JsonTemplate({"d": "{{ destination.name }}"}).render_bytes(
            canned_event("call_summary").template_context()
        )
