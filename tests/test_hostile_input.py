"""Hostile input (issue 10): what an attacker controls — event text, tenant files, templates — cannot
crash accept, retry an unsendable payload for a day, outgrow the limits, read another tenant's
secrets or steer a request to another path or host.

The engine tests run the real ``http`` plugin from its entry point through the engine (fake clock,
SQLite store, StubBroker; ``engine.process`` makes the attempts) to a receiver on 127.0.0.1 that
verifies each request's signature and JSON.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import standardwebhooks
from click.testing import CliRunner
from pydantic import ValidationError

import cxbridge_http
from cxbridge import (
    CallSummary,
    Delivery,
    Destination,
    EventValidationError,
    Payload,
    TemplateRenderError,
    TemplateSyntaxError,
    parse_event,
)
from cxbridge.cli import cli
from cxbridge.config import load_config_dir, load_tenant
from cxbridge.engine import Engine
from cxbridge.errors import ConfigError
from cxbridge.events import MAX_EVENT_BYTES, MAX_EVENT_DEPTH
from cxbridge.plugins import PluginManager
from cxbridge.signing import generate_secret, verify
from cxbridge.templating import MAX_OUTPUT, JsonTemplate, TextTemplate, UrlTemplate
from tests.engine_support import MakeEngine
from tests.http_sink import HttpSink, Recorded

SECRET = generate_secret()
ENV = {"ACME_HOOK_SECRET": SECRET}


def event_data(**extra: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": "evt-1",
        "type": "call_summary",
        "occurredAt": "2026-01-01T10:00:00Z",
        "tenant": "acme",
        "call": {"id": "call-1", "externalId": "CX-42"},
        "ai": {"summary": "Customer asked for a refund."},
    }
    data.update(extra)
    return data


def summary_event(summary: str, **extra: Any) -> Any:
    return parse_event(event_data(ai={"summary": summary}, **extra))


def nested(depth: int) -> Any:
    """A value ``depth`` levels deep: {"a": {"a": ... {} }}."""
    value: Any = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


# -- the engine, the real http plugin, a verifying receiver ----------------------------------------


HttpEngine = Callable[[dict[str, Any]], Engine]


@pytest.fixture
def http_engine(make_engine: MakeEngine, tmp_path: Path, sink: HttpSink) -> HttpEngine:
    """Builds an engine whose tenant ``acme`` has the given ``http`` destinations (url relative
    to the sink), each signed with SECRET and subscribed to call_summary."""

    def build(destinations: dict[str, Any]) -> Engine:
        config = {
            name: {
                "type": "http",
                "events": ["call_summary"],
                "secrets": ["${ACME_HOOK_SECRET}"],
                "allow_networks": ["127.0.0.0/8"],
                **options,
                "url": sink.url("/") + options["url"].lstrip("/"),
            }
            for name, options in destinations.items()
        }
        manager = PluginManager(allow=["http"])
        manager.load_entrypoints()
        assert manager.failures == []
        tenant = json.dumps({"tenant": "acme", "destinations": config})
        engine, _, _ = make_engine(tmp_path, tenant_yaml=tenant, env=ENV, manager=manager)
        return engine

    return build


def run(engine: Engine, event: Any) -> dict[str, str]:
    """Accept ``event`` and attempt each of its deliveries once; the status of each, by name."""
    accepted = engine.accept(event)
    statuses = {}
    for delivery_id in accepted.delivery_ids:
        engine.process(delivery_id)
        record = engine.store.get_delivery(delivery_id)
        assert record is not None
        statuses[record.destination] = record.status
    return statuses


def dead_reason(engine: Engine, destination: str) -> str:
    from cxbridge.store import DeliveryFilter

    (record,) = engine.store.list_deliveries(DeliveryFilter(destination=destination, status="dead"))
    return record.last_error or ""


def verified_json(request: Recorded) -> Any:
    """The request's body, after its signature verified (two verifiers) and its JSON parsed."""
    headers = dict(request.headers)
    verify(request.body, headers, SECRET)
    return standardwebhooks.Webhook(SECRET).verify(request.body, headers)


@pytest.fixture(autouse=True)
def _fresh_plugin_state() -> Any:
    yield
    cxbridge_http.shutdown()


# -- 1. header values that can never be sent -------------------------------------------------------


@pytest.mark.parametrize(
    "text", ["Café résumé", "line\u2028separator", "a\rb", "nul\x00", "tab\x7f", "x" * 9000]
)
def test_a_header_value_that_cannot_be_sent_is_a_template_error_naming_the_header(
    text: str,
) -> None:
    options = cxbridge_http.HttpOptions.model_validate(
        {"url": "https://hooks.example.com/x", "headers": {"X-Summary": "{{ ai.summary }}"}}
    )
    destination = Destination("acme", "hook", "http", frozenset({"call_summary"}), options=options)
    with pytest.raises(TemplateRenderError, match=r"header X-Summary .* cannot be sent"):
        cxbridge_http.transform(event=summary_event(text), destination=destination)


def test_a_static_header_value_that_cannot_be_sent_is_refused_at_load() -> None:
    with pytest.raises(ValidationError, match="header X-Team: character 'É'"):
        cxbridge_http.HttpOptions.model_validate(
            {"url": "https://hooks.example.com/x", "headers": {"X-Team": "Équipe"}}
        )
    with pytest.raises(ValidationError, match="printable ASCII"):
        cxbridge_http.HttpOptions.model_validate(
            {"url": "https://h.example.com/x", "auth": {"type": "bearer", "token": "tök"}}
        )


def test_a_stored_payload_with_an_unsendable_header_fails_permanently_without_a_request(
    sink: HttpSink,
) -> None:
    """A payload rendered before the check existed is not retried for 24 hours."""
    options = cxbridge_http.HttpOptions.model_validate(
        {"url": sink.url("/hook"), "allow_networks": ["127.0.0.0/8"]}
    )
    destination = Destination("acme", "hook", "http", frozenset({"call_summary"}), options=options)
    meta = {"url": sink.url("/hook"), "method": "POST", "headers": {"X-Summary": "é"}}
    delivery = Delivery(
        "dlv-1", "acme", "hook", "evt-1", "call_summary", 1, Payload(b"{}", meta=meta)
    )
    outcome = cxbridge_http.deliver(delivery=delivery, destination=destination)
    assert outcome is not None and outcome.kind.value == "permanent"
    assert "header X-Summary cannot be sent" in (outcome.error or "")
    assert sink.requests == []


def test_engine_dead_letters_an_unsendable_header_at_fan_out_and_delivers_the_rest(
    http_engine: HttpEngine, sink: HttpSink
) -> None:
    engine = http_engine(
        {
            "headed": {"url": "/headed", "headers": {"X-Summary": "{{ ai.summary }}"}},
            "plain": {"url": "/plain", "body": {"summary": "{{ ai.summary }}"}},
        },
    )
    statuses = run(engine, summary_event("Ça va\u2028bien"))
    assert statuses == {"headed": "dead", "plain": "delivered"}
    assert "header X-Summary renders to a value that cannot be sent" in dead_reason(
        engine, "headed"
    )
    (request,) = sink.requests
    assert request.path == "/plain"
    assert verified_json(request) == {"summary": "Ça va\u2028bien"}


def test_cli_render_reports_an_unsendable_header(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "acme.yaml").write_text(
        textwrap.dedent(
            """
            tenant: acme
            destinations:
              hook:
                type: http
                events: [call_summary]
                url: https://hooks.example.com/x
                headers: {X-Summary: "{{ ai.summary }}"}
            """
        )
    )
    event = json.dumps(event_data(ai={"summary": "résumé"}))
    result = CliRunner().invoke(
        cli, ["render", "-c", str(tmp_path), "-t", "acme", "-d", "hook", "-"], input=event
    )
    assert result.exit_code == 1
    assert "header X-Summary renders to a value that cannot be sent" in result.stderr
    assert "Traceback" not in result.output + result.stderr


# -- 2. every byte of a body counts against the output limit ---------------------------------------


def test_typed_leaves_count_against_the_output_limit_like_text_leaves() -> None:
    big = "x" * (MAX_OUTPUT // 10)
    typed = JsonTemplate({f"k{i}": "{{ s }}" for i in range(20)})
    text = JsonTemplate({f"k{i}": "{{ s }}!" for i in range(20)})
    for template in (typed, text):
        with pytest.raises(TemplateRenderError, match="output limit reached"):
            template.render_bytes({"s": big})
    # a list holding one string many times is counted by its JSON, not by reference
    with pytest.raises(TemplateRenderError, match="output limit reached"):
        JsonTemplate({"a": "{{ l }}"}).render({"l": [big] * 1000})
    assert len(typed.render_bytes({"s": "x" * 1000})) > 20 * 1000


def test_the_json_text_of_a_body_is_capped_with_its_escapes() -> None:
    # 200 k control characters count 200 k when written, but 1.2 M once JSON escapes them
    controls = "\x01" * (MAX_OUTPUT // 5)
    with pytest.raises(TemplateRenderError, match="output limit reached"):
        JsonTemplate({"a": "{{ s }}!"}).render_bytes({"s": controls})


def test_engine_dead_letters_a_body_over_the_limit_built_from_typed_leaves(
    http_engine: HttpEngine, sink: HttpSink
) -> None:
    leaves = {f"copy{i}": "{{ ai.summary }}" for i in range(10)}
    engine = http_engine(
        {"bomb": {"url": "/bomb", "body": leaves}, "fine": {"url": "/fine"}},
    )
    summary = "s" * (200 * 1024)  # a legal event: 10 copies make 2 MB
    assert run(engine, summary_event(summary)) == {"bomb": "dead", "fine": "delivered"}
    assert "output limit reached" in dead_reason(engine, "bomb")
    (request,) = sink.requests
    assert verified_json(request)["ai"]["summary"] == summary


# -- 4. events that cannot be stored or sent -------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "path", "reason"),
    [
        ({"note": "x\ud800y"}, "call_summary.note", "lone surrogate"),
        ({"call": {"id": "c\udfff"}}, "call_summary.call.id", "lone surrogate"),
        ({"meta": {"k\ud83d": 1}}, "call_summary.meta.k\\ud83d", "field name holds a lone"),
        ({"meta": nested(500)}, "call_summary.meta" + ".a" * (MAX_EVENT_DEPTH - 1), "deeper"),
        ({"meta": nested(10_000)}, "call_summary.meta", "nested deeper than 32 levels"),
        ({"call": {"id": "c", "x": nested(40)}}, "call_summary.call.x", "deeper"),
    ],
)
def test_events_that_cannot_be_stored_or_sent_are_refused_naming_the_field(
    extra: dict[str, Any], path: str, reason: str
) -> None:
    with pytest.raises(EventValidationError) as info:
        parse_event(event_data(**extra))
    (problem,) = info.value.problems
    assert problem[0].startswith(path) and reason in problem[1]
    str(info.value).encode("utf-8")  # the message itself can be printed and logged
    with pytest.raises(ValidationError):  # built directly, the model refuses them too
        CallSummary.model_validate(event_data(**extra))


def test_json_text_with_a_lone_surrogate_or_deep_nesting_is_refused() -> None:
    for text in (
        json.dumps(event_data(note="x\ud800y")),
        '{"id": "e", "x": ' + "[" * 10_000 + "]" * 10_000 + "}",
    ):
        with pytest.raises(EventValidationError):
            parse_event(text)


def test_nesting_up_to_the_limit_is_accepted_and_delivered(
    http_engine: HttpEngine, sink: HttpSink
) -> None:
    engine = http_engine({"all": {"url": "/all"}})
    deep = nested(MAX_EVENT_DEPTH - 1)  # the envelope is level 1
    event = parse_event(event_data(meta=deep, note="emoji 😀 and \u2028"))
    assert run(engine, event) == {"all": "delivered"}
    received = verified_json(sink.requests[0])
    assert received["meta"] == deep and received["note"] == "emoji 😀 and \u2028"


# -- 5. event size -----------------------------------------------------------------------------------


def test_an_event_over_the_size_limit_is_refused_naming_the_limit_and_the_setting() -> None:
    big = event_data(ai={"summary": "x" * MAX_EVENT_BYTES})
    for data in (big, json.dumps(big), json.dumps(big).encode()):
        with pytest.raises(EventValidationError) as info:
            parse_event(data)
        message = str(info.value)
        assert f"over the limit of {MAX_EVENT_BYTES:,}" in message
        assert "CXBRIDGE_MAX_EVENT_BYTES" in message
    small = event_data(ai={"summary": "x" * 5000})
    with pytest.raises(EventValidationError, match="over the limit of 4,096"):
        parse_event(small, max_bytes=4096)
    assert parse_event(small, max_bytes=8192).id == "evt-1"


def test_the_size_limit_is_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    from cxbridge.settings import Settings

    assert Settings().max_event_bytes == MAX_EVENT_BYTES == 256 * 1024
    monkeypatch.setenv("CXBRIDGE_MAX_EVENT_BYTES", "1048576")
    assert Settings().max_event_bytes == 1 << 20


def test_an_event_just_under_the_limit_is_delivered_whole(
    http_engine: HttpEngine, sink: HttpSink
) -> None:
    engine = http_engine({"all": {"url": "/all"}})
    summary = "é" * (MAX_EVENT_BYTES // 2 - 1024)  # two bytes each in UTF-8
    event = summary_event(summary)
    assert run(engine, event) == {"all": "delivered"}
    (request,) = sink.requests
    assert len(request.body) <= MAX_EVENT_BYTES
    assert verified_json(request)["ai"]["summary"] == summary


# -- 6. a tenant file reads only its own environment variables -------------------------------------


def write_tenant(directory: Path, name: str, body: str) -> Path:
    path = directory / f"{name}.yaml"
    path.write_text(f"tenant: {name}\n" + textwrap.dedent(body))
    return path


HOOK = """
destinations:
  hook:
    type: http
    events: [call_summary]
    url: https://hooks.example.com/x
    body: {{leak: "{ref}"}}
"""


def http_types() -> Any:
    manager = PluginManager(allow=["http"])
    manager.load_entrypoints()
    return manager.destination_types


def only_problem(tmp_path: Path, options: str) -> Any:
    """The one problem of tenant acme's file whose ``http`` destination ``hook`` (line 3) has the
    option lines ``options`` (from line 6)."""
    path = write_tenant(
        tmp_path,
        "acme",
        "destinations:\n  hook:\n    type: http\n    events: [call_summary]\n"
        + textwrap.indent(options, "    "),
    )
    with pytest.raises(ConfigError) as info:
        load_tenant(path, http_types(), {})
    (problem,) = info.value.problems
    return problem


def test_a_tenant_cannot_read_another_tenants_variable(tmp_path: Path) -> None:
    write_tenant(tmp_path, "a", HOOK.format(ref="${A_HOOK}"))
    b = write_tenant(tmp_path, "b", HOOK.format(ref="${A_SECRET}"))
    env = {"A_SECRET": "a's secret", "A_HOOK": "fine"}
    with pytest.raises(ConfigError) as info:
        load_config_dir(tmp_path, http_types(), env)
    (problem,) = info.value.problems
    assert (problem.file, problem.line, problem.column) == (str(b), 8, 19)
    assert "environment variable A_SECRET is not this tenant's" in problem.message
    assert "starting with B_" in problem.message and "CXBRIDGE_TENANT_ENV_ALLOW" in problem.message
    assert "a's secret" not in str(info.value)


def test_the_allow_list_opens_named_variables_to_every_tenant(tmp_path: Path) -> None:
    write_tenant(tmp_path, "b", HOOK.format(ref="${SHARED_REGION}"))
    tenants = load_config_dir(
        tmp_path, http_types(), {"SHARED_REGION": "eu"}, env_allow=["SHARED_REGION"]
    )
    assert tenants["b"].env_names == {"SHARED_REGION"}


def test_a_longer_tenant_prefix_is_that_tenants_own(tmp_path: Path) -> None:
    write_tenant(tmp_path, "acme-eu", HOOK.format(ref="${ACME_EU_TOKEN}"))
    write_tenant(tmp_path, "acme", HOOK.format(ref="${ACME_EU_TOKEN}"))
    with pytest.raises(ConfigError) as info:
        load_config_dir(tmp_path, http_types(), {"ACME_EU_TOKEN": "t"})
    (problem,) = info.value.problems
    assert problem.file.endswith("acme.yaml")
    assert "ACME_EU_TOKEN belongs to tenant 'acme-eu'" in problem.message


def test_tenants_whose_variables_would_collide_are_refused(tmp_path: Path) -> None:
    write_tenant(tmp_path, "acme-eu", HOOK.format(ref="x"))
    write_tenant(tmp_path, "acme_eu", HOOK.format(ref="x"))
    with pytest.raises(ConfigError, match="would both read environment variables ACME_EU_"):
        load_config_dir(tmp_path, http_types(), {})


def test_render_hides_variable_values_and_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_tenant(
        tmp_path,
        "acme",
        """
        destinations:
          hook:
            type: http
            events: [call_summary]
            url: https://hooks.example.com/${ACME_PATH}
            headers: {X-Key: "${ACME_API_TOKEN}", X-Call: "{{ call.id }}-${ACME_API_TOKEN}"}
            secrets: ["${ACME_HOOK_SECRET}"]
            auth: {type: bearer, token: "${ACME_BEARER}"}
            body: {token: "${ACME_API_TOKEN}", quoted: "${ACME_QUOTED}", call: "{{ call.id }}"}
        """,
    )
    env = {
        "ACME_PATH": "private-path",
        "ACME_API_TOKEN": "tok-123456",
        "ACME_HOOK_SECRET": SECRET,
        "ACME_BEARER": "bearer-abcdef",
        "ACME_QUOTED": 'say "hi"',
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    result = CliRunner().invoke(
        cli,
        ["render", "-c", str(tmp_path), "-t", "acme", "-d", "hook", "-"],
        input=json.dumps(event_data()),
    )
    assert result.exit_code == 0, result.output
    output = result.stdout + result.stderr
    for value in env.values():
        assert value not in output and json.dumps(value)[1:-1] not in output
    assert json.loads(result.stdout) == {
        "token": "${ACME_API_TOKEN}",
        "quoted": "${ACME_QUOTED}",
        "call": "call-1",
    }
    assert "https://hooks.example.com/${ACME_PATH}" in result.stderr
    assert "call-1-${ACME_API_TOKEN}" in result.stderr


# -- 7. values in a url are percent-encoded; the host is static -------------------------------------


def test_a_path_value_cannot_climb_out_of_its_segment(
    http_engine: HttpEngine, sink: HttpSink
) -> None:
    engine = http_engine(
        {"hook": {"url": "/cx/{{ call.externalId }}/notes?who={{ ai.summary }}&x=1"}},
    )
    event = parse_event(
        event_data(
            call={"id": "c", "externalId": "../../admin"},
            ai={"summary": "a&x=2 #é/?"},
        )
    )
    assert run(engine, event) == {"hook": "delivered"}
    (request,) = sink.requests
    assert request.path == "/cx/..%2F..%2Fadmin/notes"
    assert request.query == "who=a%26x%3D2+%23%C3%A9%2F%3F&x=1"
    verified_json(request)


def test_a_dot_segment_or_an_overlong_url_from_data_is_a_render_error() -> None:
    template = UrlTemplate("https://h.example.com/cx/{{ id }}/x")
    assert template.render({"id": "a.b"}) == "https://h.example.com/cx/a.b/x"
    for bad in ("..", "."):
        with pytest.raises(TemplateRenderError, match=r"'\.' or '\.\.' segment"):
            template.render({"id": bad})
    # 3,000 characters that encode to 18,000 (found by the property test: httpx refuses it)
    with pytest.raises(TemplateRenderError, match="over the limit of 8,192"):
        template.render({"id": "é" * 3000})


@pytest.mark.parametrize(
    ("url", "column"),
    [
        ("{{ call.externalId }}://x/", 1),
        ("https://{{ call.externalId }}.example.com/", 9),
        ("https://hooks.example.com:{{ call.id }}/", 27),
        ("https://hooks.example.com/{% if call.id %}a{% endif %}", 30),
        ("https://hooks.example.com/{{ call.id | url_encode }}", 40),
    ],
)
def test_url_templates_whose_host_could_come_from_data_are_refused_at_load(
    tmp_path: Path, url: str, column: int
) -> None:
    problem = only_problem(tmp_path, f'url: "{url}"')
    assert (problem.line, problem.column) == (6, 10 + column)
    assert problem.message.startswith("destinations.hook.url: ")


# -- 9. text bodies and standardwebhooks.verify ------------------------------------------------------


def test_standardwebhooks_verifies_json_bodies_only_raw_byte_checks_verify_text_bodies(
    http_engine: HttpEngine, sink: HttpSink
) -> None:
    engine = http_engine(
        {
            "json": {"url": "/json"},
            "text": {"url": "/text", "text_body": "summary={{ ai.summary | url_encode }}"},
        },
    )
    assert run(engine, summary_event("refund")) == {"json": "delivered", "text": "delivered"}
    by_path = {request.path: request for request in sink.requests}
    json_request, text_request = by_path["/json"], by_path["/text"]
    assert verified_json(json_request)["id"] == "evt-1"

    headers = dict(text_request.headers)
    with pytest.raises(json.JSONDecodeError):  # the signature matched; then it parses JSON
        standardwebhooks.Webhook(SECRET).verify(text_request.body, headers)
    verify(text_request.body, headers, SECRET)  # cxbridge.signing checks the raw bytes
    # ... as does a by-hand HMAC, the way docs/receiving-webhooks.md shows it
    lowered = {k.lower(): v for k, v in headers.items()}
    signed = f"{lowered['webhook-id']}.{lowered['webhook-timestamp']}.".encode() + text_request.body
    key = base64.b64decode(SECRET.removeprefix("whsec_"))
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    assert f"v1,{expected}" in lowered["webhook-signature"].split()
    assert text_request.body == b"summary=refund"


# -- 10. filter arity --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("{{ ai.summary | truncate }}", "filter 'truncate' takes at least 1 argument, got 0"),
        ("{{ ai.summary | truncatewords }}", "filter 'truncatewords' takes at least 1"),
        ("{{ ai.summary | replace: 'a' }}", "filter 'replace' takes at least 2 arguments, got 1"),
        ("{{ ai.summary | replace_first: 'a' }}", "filter 'replace_first' takes at least 2"),
    ],
)
def test_filters_missing_arguments_that_would_delete_text_are_refused_at_load(
    tmp_path: Path, source: str, message: str
) -> None:
    problem = only_problem(
        tmp_path, f'url: https://hooks.example.com/x\nbody: {{text: "{source}"}}'
    )
    assert (problem.line, problem.column) == (7, 35)
    assert message in problem.message
    assert TextTemplate("{{ s | replace: 'a', '' | truncate: 3 }}").render({"s": "banana"}) == "..."
    with pytest.raises(TemplateSyntaxError):
        TextTemplate(source)
