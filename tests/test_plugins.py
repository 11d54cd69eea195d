"""Plugin loading: entry points, a broken plugin, allow/deny lists, strict mode, unknown hooks."""

from __future__ import annotations

import inspect
import json
import logging
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import pytest
from click.testing import CliRunner
from pydantic import BaseModel

from cxbridge import PluginError, hookimpl
from cxbridge.cli import cli
from cxbridge.hookspecs import hook_names
from cxbridge.plugins import PluginManager

BROKEN = EntryPoint(name="broken", value="tests.broken_plugin", group="cxbridge")


@pytest.fixture
def with_broken_plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    real = list(entry_points(group="cxbridge"))
    monkeypatch.setattr("cxbridge.plugins.entry_points", lambda group: [*real, BROKEN])


def test_in_tree_plugins_load_through_entry_points():
    manager = PluginManager()
    manager.load_entrypoints()
    assert {"http", "salesforce", "zendesk"} <= set(manager.plugin_names())
    assert {"http", "salesforce", "zendesk"} <= set(manager.destination_types)
    assert manager.failures == []
    info = {i.name: i for i in manager.info()}
    assert info["http"].distribution == "cxbridge-http"
    assert "register_destinations" in info["http"].hooks


@pytest.mark.usefixtures("with_broken_plugin")
def test_a_plugin_that_raises_on_import_is_reported_and_the_others_load(
    caplog: pytest.LogCaptureFixture,
):
    manager = PluginManager()
    with caplog.at_level(logging.ERROR):
        manager.load_entrypoints()
    (failure,) = manager.failures
    assert failure.name == "broken"
    assert "ImportError" in failure.error and "not installed" in failure.error
    assert "plugin 'broken'" in caplog.text
    assert {"http", "salesforce", "zendesk"} <= set(manager.plugin_names())


@pytest.mark.usefixtures("with_broken_plugin")
def test_strict_mode_makes_a_broken_plugin_fatal():
    with pytest.raises(PluginError, match=r"plugin 'broken'.*failed to import") as info:
        PluginManager(strict=True).load_entrypoints()
    assert info.value.plugin == "broken"


def test_allow_and_deny_lists_choose_which_plugins_load():
    only_http = PluginManager(allow=["http"])
    only_http.load_entrypoints()
    assert only_http.plugin_names() == ["http"]
    no_zendesk = PluginManager(deny=["zendesk"])
    no_zendesk.load_entrypoints()
    assert "zendesk" not in no_zendesk.plugin_names()
    assert "salesforce" in no_zendesk.plugin_names()


def test_a_misspelt_hook_is_an_error_naming_the_plugin():
    class Typo:
        @hookimpl
        def on_events(self, event: Any) -> None:  # not a hook of ours
            pass

    with pytest.raises(PluginError, match=r"plugin 'typo' is not valid.*on_events"):
        PluginManager().register(Typo(), name="typo")


def test_two_plugins_registering_one_destination_type_is_an_error():
    class Options(BaseModel):
        pass

    class One:
        @hookimpl
        def register_destinations(self, register: Any) -> None:
            register("crm", Options)

    manager = PluginManager()
    manager.register(One(), name="one")
    with pytest.raises(PluginError, match="'crm' is registered by both 'one' and 'two'"):
        manager.register(One(), name="two")


def test_observer_hooks_are_isolated_from_each_other(caplog: pytest.LogCaptureFixture):
    seen: list[str] = []

    class Failing:
        @hookimpl
        def on_event(self, event: Any, tenant: str) -> None:
            raise RuntimeError("metrics backend down")

    class Counting:
        @hookimpl
        def on_event(self, tenant: str) -> None:  # fewer arguments than the spec is fine
            seen.append(tenant)

    manager = PluginManager()
    manager.register(Failing(), name="failing")
    manager.register(Counting(), name="counting")
    with caplog.at_level(logging.ERROR):
        manager.hooks.on_event(object(), "acme")  # type: ignore[arg-type]
    assert seen == ["acme"]
    assert "plugin 'failing' failed in hook on_event" in caplog.text


def test_every_hook_has_a_docstring_with_arguments_return_and_example():
    import cxbridge.hookspecs as specs

    assert set(hook_names()) == {
        "register_destinations",
        "on_event",
        "transform",
        "deliver",
        "on_delivery_failed",
        "shutdown",
    }
    for name in hook_names():
        spec = getattr(specs, name)
        doc = spec.__doc__ or ""
        assert ":return:" in doc and "Example::" in doc, name
        for argument in inspect.signature(spec).parameters:
            assert f":param {argument}:" in doc, (name, argument)


@pytest.mark.usefixtures("with_broken_plugin")
def test_cli_plugins_lists_plugins_and_failures():
    result = CliRunner().invoke(cli, ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    names = {p["name"]: p for p in data["plugins"]}
    assert {"http", "salesforce", "zendesk"} <= set(names)
    assert names["salesforce"]["destination_types"] == ["salesforce"]
    assert names["salesforce"]["version"] == "0.1.0"
    assert data["failures"][0]["name"] == "broken"

    text = CliRunner().invoke(cli, ["plugins"])
    assert "zendesk 0.1.0" in text.stdout
    assert "broken" in text.stderr and "FAILED" in text.stderr
