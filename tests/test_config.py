"""Tenant files: every problem reported at once as file:line:col, ${VAR} secrets, per-plugin options."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from cxbridge import ConfigError
from cxbridge.cli import cli
from cxbridge.config import hash_api_key, load_config_dir, load_tenant, tenant_json_schema
from cxbridge.plugins import PluginManager

SECRET = "whsec_dxmwFQS0TgDPyR6kgzuQA5WQjwi5c8kQNYydh2B11qM="
EXAMPLE_ENV = {
    "ACME_API_KEY": "demo-key",
    "ACME_WEBHOOK_URL": "http://127.0.0.1:9/hook",
    "ACME_ESCALATION_URL": "http://127.0.0.1:9/escalations",
    "ACME_TICKETS_URL": "http://127.0.0.1:9/tickets",
    "ACME_SF_ENDPOINT": "http://127.0.0.1:9/salesforce",
    "ACME_SF_CONSUMER_KEY": "key",
    "ACME_SF_CONSUMER_SECRET": "secret",
    "ACME_ZENDESK_ENDPOINT": "http://127.0.0.1:9/zendesk",
    "ACME_ZENDESK_EMAIL": "bot@acme.test",
    "ACME_ZENDESK_TOKEN": "token",
    "ACME_WEBHOOK_SECRET": SECRET,
}
EXAMPLES = Path(__file__).parent.parent / "examples"


@pytest.fixture(scope="module")
def types() -> dict:
    manager = PluginManager()
    manager.load_entrypoints()
    return manager.destination_types


def write(tmp_path: Path, text: str, name: str = "acme.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def problems_of(path: Path, types: dict, env: dict | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_tenant(path, types, env or {})
    return [str(p) for p in info.value.problems]


def test_unknown_type_unknown_filter_and_missing_variable_are_all_reported(tmp_path, types):
    path = write(
        tmp_path,
        """
        tenant: acme
        destinations:
          one:
            type: htpp
            events: [call_summary]
          two:
            type: http
            events: [quality_score]
            url: "https://example.com/${ACME_MISSING_URL_VAR}"
            body:
              status: "{{ qi.score | frobnicate }}"
        """,
    )
    assert problems_of(path, types) == [
        f"{path}:4:11: unknown destination type 'htpp' — did you mean 'http'?; installed types: "
        "http, salesforce, zendesk",
        f"{path}:9:31: environment variable ACME_MISSING_URL_VAR is not set (referenced as "
        "${ACME_MISSING_URL_VAR}); set it or remove the reference",
        f"{path}:11:30: destinations.two.body.status: unknown filter 'frobnicate'; did you mean "
        "'truncate'?",
    ]


def test_cli_validate_prints_every_problem_and_exits_1(tmp_path):
    write(
        tmp_path,
        """
        tenant: acme
        destinations:
          one: {type: nope, events: [call_summary]}
          two: {type: http, events: [call_summary], url: "${ACME_NOPE}"}
        """,
    )
    result = CliRunner().invoke(cli, ["validate", str(tmp_path)])
    assert result.exit_code == 1
    assert "acme.yaml:3:15: unknown destination type 'nope'" in result.stderr
    assert "acme.yaml:4:51: environment variable ACME_NOPE is not set" in result.stderr
    assert "2 problem(s) found" in result.stderr


def test_every_broken_leaf_of_a_body_is_reported(tmp_path, types):
    path = write(
        tmp_path,
        """
        tenant: acme
        destinations:
          hook:
            type: http
            events: [call_summary]
            url: https://example.com/hook
            body:
              a: "{{ ai.summary | nope }}"
              b: "{% if %}"
              c: "{{ ai.summary | upcase }}"
        """,
    )
    problems = problems_of(path, types)
    assert len(problems) == 2
    assert problems[0].startswith(f"{path}:8:27: destinations.hook.body.a: unknown filter 'nope'")
    assert problems[1] == f"{path}:9:14: destinations.hook.body.b: missing expression"


def test_unknown_template_variable_is_reported_with_its_position(tmp_path, types):
    path = write(
        tmp_path,
        """
        tenant: acme
        destinations:
          hook:
            type: http
            events: [call_summary]
            url: https://example.com/hook
            body:
              id: "{{ call.externalID }}"
        """,
    )
    (problem,) = problems_of(path, types)
    assert problem.startswith(f"{path}:8:15: destinations.hook.body.id:")
    assert "call.externalID" in problem and "call.externalId" in problem


def test_plugin_options_are_validated_with_unknown_and_missing_keys(tmp_path, types):
    path = write(
        tmp_path,
        """
        tenant: acme
        destinations:
          hook:
            type: http
            events: [call_summary]
            colour: blue
        """,
    )
    problems = problems_of(path, types)
    assert f"{path}:6:5: destinations.hook.colour: unknown key" in problems
    assert f"{path}:3:3: destinations.hook.url: required key is missing" in problems


def test_core_keys_are_checked(tmp_path, types):
    path = write(
        tmp_path,
        """
        tenant: acme
        timezone: Mars/Olympus
        destinations:
          hook:
            type: http
            events: [call_sumary]
            when: "qi.score >"
            url: https://example.com/hook
            retry: {window: -1}
        """,
    )
    problems = problems_of(path, types)
    assert any("2:11: unknown time zone 'Mars/Olympus'" in p for p in problems)
    assert any("6:14: unknown event type 'call_sumary'" in p for p in problems)
    assert any("destinations.hook.when" in p for p in problems)
    assert any("destinations.hook.retry.window" in p for p in problems)


def test_duplicate_keys_and_yaml_syntax_errors_have_positions(tmp_path, types):
    dup = write(tmp_path, "tenant: acme\ntenant: other\n")
    assert problems_of(dup, types) == [f"{dup}:2:1: duplicate key 'tenant'"]
    broken = write(tmp_path, "tenant: acme\ndestinations: [\n", name="broken.yaml")
    (problem,) = problems_of(broken, types)
    assert problem.startswith(f"{broken}:3:1: invalid YAML")


def test_env_references_are_substituted_and_dollar_dollar_escapes(tmp_path, types):
    path = write(
        tmp_path,
        """
        tenant: acme
        api_keys: ["${ACME_KEY}", "sha256:abc123"]
        destinations:
          hook:
            type: http
            events: ["*"]
            url: "https://example.com/${ACME_PATH_PART}?price=$$5"
        """,
    )
    tenant = load_tenant(path, types, {"ACME_KEY": "s3cret", "ACME_PATH_PART": "in"})
    hook = tenant.destinations["hook"]
    assert hook.options.url.source == "https://example.com/in?price=$5"
    assert hook.events == {"call_create", "call_outcome", "call_summary", "quality_score"}
    assert tenant.api_key_hashes == {hash_api_key("s3cret"), "abc123"}
    assert "s3cret" not in repr(tenant)


def test_the_example_tenant_is_valid(types):
    tenants = load_config_dir(EXAMPLES / "tenants", types, EXAMPLE_ENV)
    assert set(tenants["acme"].destinations) == {
        "qa-webhook",
        "escalations",
        "tickets",
        "crm",
        "helpdesk",
    }
    assert tenants["acme"].timezone == "Europe/Berlin"


def test_problems_of_several_files_are_reported_together(tmp_path, types):
    write(tmp_path, "tenant: a\ndestinations: {x: {type: what, events: [call_create]}}\n", "a.yaml")
    write(tmp_path, "tenant: b\nbogus: 1\n", "b.yml")
    with pytest.raises(ConfigError) as info:
        load_config_dir(tmp_path, types, {})
    files = {Path(p.file).name for p in info.value.problems}
    assert files == {"a.yaml", "b.yml"}


def test_json_schema_covers_every_destination_type(types):
    schema = tenant_json_schema(types)
    variants = schema["properties"]["destinations"]["additionalProperties"]["oneOf"]
    assert {v["properties"]["type"]["const"] for v in variants} == {"http", "salesforce", "zendesk"}
    result = CliRunner().invoke(cli, ["schema"])
    assert result.exit_code == 0
    assert json.loads(result.stdout)["title"] == "cxbridge tenant file"


@pytest.mark.parametrize(("score", "status"), [(80, "Review"), (90, "Pass")])
def test_cli_render_prints_valid_json_for_hostile_text(monkeypatch, score, status):
    for key, value in EXAMPLE_ENV.items():
        monkeypatch.setenv(key, value)
    event = json.loads((EXAMPLES / "events" / "quality_score.json").read_text())
    event["qi"]["score"] = score
    result = CliRunner().invoke(
        cli,
        ["render", "-c", str(EXAMPLES / "tenants"), "-t", "acme", "-d", "qa-webhook", "-"],
        input=json.dumps(event),
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["qa_status"] == status


def test_cli_render_keeps_injection_inside_its_field(monkeypatch):
    for key, value in EXAMPLE_ENV.items():
        monkeypatch.setenv(key, value)
    event_file = EXAMPLES / "events" / "call_summary.json"
    result = CliRunner().invoke(
        cli,
        [
            "render",
            "-c",
            str(EXAMPLES / "tenants"),
            "-t",
            "acme",
            "-d",
            "qa-webhook",
            str(event_file),
        ],
    )
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    original = json.loads(event_file.read_text())["ai"]["summary"]
    assert body["summary"] == original
    assert body["qa_status"] == "Review"  # the summary's '"qa_status": "Pass' did not leak out
    assert body["tags"] == ["billing", "churn-risk"]
    assert body["occurred_at"] == "2026-11-27 09:30 CET"  # the tenant's time zone


def test_cli_render_reports_bad_input_with_exit_1(tmp_path, monkeypatch):
    for key, value in EXAMPLE_ENV.items():
        monkeypatch.setenv(key, value)
    args = ["render", "-c", str(EXAMPLES / "tenants"), "-t", "acme", "-d", "qa-webhook", "-"]
    bad_event = CliRunner().invoke(cli, args, input='{"type": "quality_score"}')
    assert bad_event.exit_code == 1 and "invalid event" in bad_event.stderr
    no_such = CliRunner().invoke(cli, [*args[:6], "nope", "-"], input=json.dumps(_event()))
    assert no_such.exit_code == 1
    usage = CliRunner().invoke(cli, ["render"])
    assert usage.exit_code == 2


def _event() -> dict:
    return json.loads((EXAMPLES / "events" / "quality_score.json").read_text())


def test_an_unknown_key_suggests_the_nearest_and_hides_no_other_problem(tmp_path, types):
    path = write(
        tmp_path,
        """
        tenant: acme
        destination: {}
        destinations:
          hook:
            type: http
            events: [call_summary]
            url: https://example.com/hook
            headerz: {X-A: b}
            body: {summary: "{{ ai.sumary }}"}
        """,
    )
    problems = problems_of(path, types)
    assert any(
        p.startswith(f"{path}:2:1: destination: unknown key — did you mean 'destinations'?")
        for p in problems
    ), problems
    assert f"{path}:8:5: destinations.hook.headerz: unknown key — did you mean 'headers'?" in (
        problems
    )
    # the body's template is still checked in the same run
    assert any("ai.sumary" in p and "did you mean" in p for p in problems), problems


def test_an_unsigned_http_destination_loads_with_a_positioned_warning(tmp_path, types):
    path = write(
        tmp_path,
        """
        tenant: acme
        destinations:
          hook:
            type: http
            events: [call_summary]
            url: https://example.com/hook
        """,
    )
    tenant = load_tenant(path, types, {})
    assert "hook" in tenant.destinations
    (warning,) = tenant.warnings
    assert str(warning).startswith(f"{path}:3:3: destinations.hook: warning: no `secrets`")
    result = CliRunner().invoke(cli, ["validate", str(path)])
    assert result.exit_code == 0 and "warning: no `secrets`" in result.stderr


def test_validate_names_the_subscribed_event_type_a_template_variable_is_missing_from(
    tmp_path, types
):
    path = write(
        tmp_path,
        """
        tenant: acme
        destinations:
          hook:
            type: http
            events: [call_summary, quality_score]
            url: https://example.com/hook
            body: {summary: "{{ ai.summary }}", score: "{{ qi.score | default: nil }}"}
        """,
    )
    (problem,) = problems_of(path, types)
    assert problem.startswith(
        f"{path}:7:25: destinations.hook.body.summary: 'ai.summary' is not in quality_score events"
    ), problem


def test_an_invalid_option_hides_no_template_problem_of_the_same_destination(tmp_path, types):
    path = write(
        tmp_path,
        """
        tenant: acme
        destinations:
          hook:
            type: http
            events: [call_summary]
            url: not a url
            body: {a: "{{ ai.summry }}"}
        """,
    )
    problems = problems_of(path, types)
    assert any(":6:10: destinations.hook.url: not an http(s) URL" in p for p in problems), problems
    assert any("did you mean 'ai.summary'" in p for p in problems), problems


def test_shell_style_defaults_are_refused_not_left_literal(tmp_path, types):
    path = write(
        tmp_path,
        """
        tenant: acme
        destinations:
          hook:
            type: http
            events: [call_summary]
            url: "https://x.example/${ACME_PATH:-default}"
        """,
    )
    (problem,) = problems_of(path, types)
    assert problem.startswith(f"{path}:6:29: unsupported reference '${{ACME_PATH:-default}}'")
