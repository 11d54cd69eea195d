"""The Zendesk plugin, end to end: the real zenpy client against the fake Zendesk in
core/cxbridge/testing/fakes/zendesk.py."""

from __future__ import annotations

import itertools
import json
import random
import textwrap
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

import cxbridge_zendesk
from cxbridge import (
    Delivery,
    Destination,
    Event,
    Outcome,
    OutcomeKind,
    TemplateRenderError,
    parse_event,
)
from cxbridge.config import load_tenant
from cxbridge.plugins import PluginManager
from cxbridge.testing.fakes.zendesk import FakeZendesk
from cxbridge_zendesk import ZendeskOptions
from tests.http_sink import closed_port

ALL_EVENTS = frozenset({"call_create", "call_outcome", "call_summary", "quality_score"})
QA_FIELD = 360001234


@pytest.fixture
def fake() -> Iterator[FakeZendesk]:
    with FakeZendesk() as server:
        yield server


def options_for(fake: FakeZendesk, **extra: Any) -> ZendeskOptions:
    return ZendeskOptions.model_validate(
        {
            **fake.options(),
            "email": fake.email,
            "api_token": fake.token,
            "custom_fields": {"qa_score": QA_FIELD},
            **extra,
        }
    )


def destination(fake: FakeZendesk, **extra: Any) -> Destination:
    return Destination(
        tenant="acme",
        name="zd",
        type="zendesk",
        events=ALL_EVENTS,
        options=options_for(fake, **extra),
    )


def make_event(kind: str, call_id: str = "call-1", *, started: datetime | None = None) -> Event:
    now = datetime.now(UTC)
    call = {
        "id": call_id,
        "direction": "inbound",
        "from": "+15551230000",
        "to": "+15559870000",
        "startedAt": (started or now).isoformat(),
        "agent": {"id": "agent-7", "name": "Ann Agent", "email": "ann@acme.test"},
        "customer": {"phone": "+1 555 123 0000", "name": "Carl Caller"},
    }
    extra: dict[str, Any] = {
        "call_create": {},
        "call_outcome": {
            "ai": {"emotion": {"label": "Anger", "score": 0.91}, "signal": "sales_lead"}
        },
        "call_summary": {
            "ai": {
                "summary": "Customer wants a refund for order 42.",
                "tags": ["refund", "billing"],
                "actionItems": [
                    {"text": "Send the refund form", "owner": "Ann", "dueDate": "2030-01-10"}
                ],
            }
        },
        "quality_score": {"qi": {"score": 92}},
    }[kind]
    return parse_event(
        {
            "id": f"{kind}-{call_id}",
            "type": kind,
            "occurredAt": now.isoformat(),
            "tenant": "acme",
            "call": call,
            **extra,
        }
    )


_ids = itertools.count(1)


def send(event: Event, dest: Destination, delivery_id: str | None = None) -> Outcome:
    payload = cxbridge_zendesk.transform(event=event, destination=dest)
    assert payload is not None
    delivery = Delivery(
        id=delivery_id or f"dlv-{event.id}-{dest.name}",
        tenant=dest.tenant,
        destination=dest.name,
        event_id=event.id,
        event_type=event.type,
        attempt=1,
        payload=payload,
    )
    outcome = cxbridge_zendesk.deliver(delivery=delivery, destination=dest)
    assert outcome is not None
    return outcome


def only_ticket(fake: FakeZendesk, external_id: str = "call-1") -> dict[str, Any]:
    tickets = fake.tickets_by_external_id(external_id)
    assert len(tickets) == 1, tickets
    return tickets[0]


# -- the lifecycle
# -----------------------------------------------------------------------------------

KINDS = ["call_create", "call_outcome", "call_summary", "quality_score"]
ORDERS = {
    "natural": KINDS,
    "summary first": ["call_summary", "call_create", "quality_score", "call_outcome"],
    "reversed": list(reversed(KINDS)),
    "score first, create last": ["quality_score", "call_summary", "call_outcome", "call_create"],
    "seeded shuffle": random.Random(20240611).sample(KINDS, len(KINDS)),
}


@pytest.mark.parametrize("order", ORDERS.values(), ids=ORDERS.keys())
@pytest.mark.parametrize("twice", ["back to back", "all then all again"])
def test_four_events_twice_in_any_order_make_one_complete_ticket(
    fake: FakeZendesk, order: list[str], twice: str
) -> None:
    dest = destination(fake)
    sequence = [k for k in order for _ in (0, 1)] if twice == "back to back" else order + order
    outcomes = [send(make_event(kind), dest) for kind in sequence]

    assert all(o.kind is OutcomeKind.DELIVERED for o in outcomes), outcomes
    ticket = only_ticket(fake)
    assert {o.remote_id for o in outcomes} == {str(ticket["id"])}
    assert ticket["priority"] == "urgent"
    tags = set(ticket["tags"])
    assert {"cxmind", "voice", "voice_inbound", "cxmind_escalation", "sales_lead"} <= tags
    assert {"cxmind_summary", "qa_pass"} <= tags
    assert "qa_review" not in tags
    assert {"id": QA_FIELD, "value": 92} in ticket["custom_fields"]
    comments = fake.comments[ticket["id"]]
    summaries = [c for c in comments if "CXMind call summary" in c["body"]]
    assert len(summaries) == 1
    assert summaries[0]["public"] is False
    assert "Customer wants a refund for order 42." in summaries[0]["body"]
    assert "- Send the refund form (owner: Ann, due: 2030-01-10)" in summaries[0]["body"]
    assert "Tags: refund, billing" in summaries[0]["body"]
    assert all(c["public"] is False for c in comments)
    assert len([c for c in comments if "CXMind escalation" in c["body"]]) == 1
    assert fake.count("POST", "/api/v2/tickets.json") == 1
    assert len(fake.users) == 1  # the caller, created once and then found by phone
    (user,) = fake.users.values()
    assert ticket["requester_id"] == user["id"]
    assert user["name"] == "Carl Caller"


def test_a_known_caller_is_found_by_phone_not_created(fake: FakeZendesk) -> None:
    known = fake.add_user(name="Carl", phone="+15551230000")
    assert send(make_event("call_create"), destination(fake)).ok
    assert only_ticket(fake)["requester_id"] == known["id"]
    assert len(fake.users) == 1
    searches = [r for r in fake.requests if r.path == "/api/v2/users/search.json"]
    assert searches[0].query["query"] == ["phone:15551230000"]


def test_two_calls_of_a_new_caller_make_one_user_even_when_search_lags(fake: FakeZendesk) -> None:
    # Zendesk's search index lags behind writes: the second call's search misses the user the
    # first call created a moment ago. create_or_update meets it by the external_id given to it.
    empty = {"users": [], "next_page": None, "previous_page": None, "count": 0}
    fake.fail("GET", r"/api/v2/users/search\.json", status=200, body=empty, times=2)
    dest = destination(fake)
    assert send(make_event("call_create", "call-1"), dest).ok
    assert send(make_event("call_create", "call-2"), dest).ok
    (user,) = fake.users.values()
    assert user["external_id"] == "cxbridge-phone:15551230000"
    assert {t["requester_id"] for t in fake.tickets.values()} == {user["id"]}


def test_a_low_score_is_tagged_for_review_and_a_rescore_flips_the_tag(fake: FakeZendesk) -> None:
    dest = destination(fake, quality={"pass_threshold": 95})
    assert send(make_event("quality_score"), dest).ok
    assert {"qa_review"} <= set(only_ticket(fake)["tags"])
    passing = destination(fake, quality={"pass_threshold": 90})
    assert send(make_event("quality_score"), passing, delivery_id="rescore").ok
    tags = set(only_ticket(fake)["tags"])
    assert "qa_pass" in tags and "qa_review" not in tags


def test_a_retried_create_whose_answer_was_lost_returns_the_first_ticket(fake: FakeZendesk) -> None:
    dest = destination(fake)
    event = make_event("call_create")
    # The ticket exists but the lookup does not show it yet (say, the first answer was lost in
    # transit
    # and the search lags): the create is repeated with the same Idempotency-Key and answers the
    # same ticket.
    assert send(event, dest).ok
    empty = {"tickets": [], "meta": {"has_more": False}, "links": {"next": None}}
    fake.fail("GET", r"/api/v2/tickets\.json", status=200, body=empty)
    outcome = send(event, dest)
    assert outcome.ok
    assert outcome.remote_id == str(only_ticket(fake)["id"])
    creates = [r for r in fake.requests if r.method == "POST" and r.path == "/api/v2/tickets.json"]
    assert len(creates) == 2
    keys = {r.headers["idempotency-key"] for r in creates}
    assert len(keys) == 1 and keys.pop().startswith("cxbridge-ticket-")
    # Other requests carry no idempotency key: the per-request header does not leak into the
    # session.
    assert all("idempotency-key" not in r.headers for r in fake.requests if r.method != "POST")


def test_a_concurrent_duplicate_converges_on_the_oldest_ticket(fake: FakeZendesk) -> None:
    fake.page_size = 1  # every lookup pages, following the absolute links.next
    dest = destination(fake)
    assert send(make_event("call_create"), dest).ok
    first = only_ticket(fake)["id"]
    # A concurrent delivery of the same call does not see the first ticket yet and creates a second.
    empty = {"tickets": [], "meta": {"has_more": False}, "links": {"next": None}}
    fake.fail("GET", r"/api/v2/tickets\.json", status=200, body=empty)
    outcome = send(make_event("call_summary"), dest)
    assert outcome.ok and outcome.remote_id == str(first)
    tickets = fake.tickets_by_external_id("call-1")
    assert len(tickets) == 2
    oldest, duplicate = sorted(tickets, key=lambda t: t["id"])
    assert "cxbridge_duplicate" in duplicate["tags"]
    assert "cxmind_summary" in oldest["tags"]
    assert sum("CXMind call summary" in c["body"] for c in fake.comments[first]) == 1
    # later events keep landing on the oldest
    assert send(make_event("quality_score"), dest).remote_id == str(first)
    assert [r for r in fake.requests if r.query.get("page[after]")]


@pytest.mark.parametrize("external_id", ["a&b=c", "with space", "hash#tag", "mix &#?/%+ é"])
def test_external_ids_with_reserved_characters_are_encoded(
    fake: FakeZendesk, external_id: str
) -> None:
    dest = destination(fake)
    assert send(make_event("call_create", external_id), dest).ok
    assert send(make_event("call_summary", external_id), dest).ok
    assert only_ticket(fake, external_id)["external_id"] == external_id
    lookups = [r for r in fake.requests if r.method == "GET" and r.path == "/api/v2/tickets.json"]
    assert lookups and all(r.query["external_id"] == [external_id] for r in lookups)


# -- screen pops
# --------------------------------------------------------------------------------------


def test_a_mapped_agent_gets_the_ticket_popped(fake: FakeZendesk) -> None:
    dest = destination(fake, agents={"agent-7": 3915})
    outcome = send(make_event("call_create"), dest)
    assert outcome.ok
    assert fake.screen_pops == [("ticket", 3915, int(outcome.remote_id or 0))]
    assert "shown to agent 3915" in (outcome.response_excerpt or "")


def test_an_agent_mapped_by_email_gets_the_requester_popped(fake: FakeZendesk) -> None:
    dest = destination(fake, agents={"ANN@acme.test": 3916}, screen_pop="user")
    assert send(make_event("call_create"), dest).ok
    (user,) = fake.users.values()
    assert fake.screen_pops == [("user", 3916, user["id"])]


def test_no_screen_pop_without_a_mapping_for_other_events_or_for_old_calls(
    fake: FakeZendesk,
) -> None:
    assert send(make_event("call_create"), destination(fake)).ok
    mapped = destination(fake, agents={"agent-7": 3915})
    assert send(make_event("call_summary"), mapped).ok
    old = make_event("call_create", "call-2", started=datetime.now(UTC) - timedelta(hours=1))
    outcome = send(old, mapped)
    assert outcome.ok and "too old" in (outcome.response_excerpt or "")
    assert fake.screen_pops == []


def test_a_failed_screen_pop_does_not_fail_the_delivery(fake: FakeZendesk) -> None:
    fake.fail("POST", r".*/display\.json", status=404, body={"error": "RecordNotFound"})
    outcome = send(make_event("call_create"), destination(fake, agents={"agent-7": 1}))
    assert outcome.ok
    assert "failed" in (outcome.response_excerpt or "")


# -- failures
# -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "body", "content_type"),
    [
        ("GET", r"/api/v2/tickets\.json", {"error": "TooManyRequests"}, "application/json"),
        ("POST", r"/api/v2/tickets\.json", "Too Many Requests", "text/plain"),
    ],
    ids=["json lookup", "text/plain create"],
)
def test_429_is_a_retry_carrying_retry_after_without_sleeping(
    fake: FakeZendesk, method: str, path: str, body: Any, content_type: str
) -> None:
    fake.fail(
        method,
        path,
        status=429,
        body=body,
        content_type=content_type,
        headers={"Retry-After": "30"},
        times=None,
    )
    started = time.monotonic()
    outcome = send(make_event("call_create"), destination(fake))
    elapsed = time.monotonic() - started
    assert outcome.kind is OutcomeKind.RETRY
    assert outcome.retry_after == 30
    assert outcome.status_code == 429
    assert elapsed < 1.0
    assert fake.count(method, path.replace("\\", "")) == 1  # asked once, not again after a sleep


@pytest.mark.parametrize(
    ("method", "path", "status", "body", "content_type"),
    [
        (
            "POST",
            r"/api/v2/tickets\.json",
            503,
            {"error": "ServiceUnavailable"},
            "application/json",
        ),
        (
            "GET",
            r"/api/v2/tickets\.json",
            503,
            "<html><h1>503 Service Unavailable</h1></html>",
            "text/html",
        ),
        ("PUT", r"/api/v2/tickets/\d+\.json", 500, "<html>oops</html>", "text/html"),
        ("GET", r"/api/v2/users/search\.json", 502, "Bad Gateway", "text/plain"),
    ],
    ids=["503 json on create", "503 html on lookup", "500 html on update", "502 on user search"],
)
def test_5xx_json_or_html_is_a_retry(
    fake: FakeZendesk, method: str, path: str, status: int, body: Any, content_type: str
) -> None:
    dest = destination(fake)
    if method == "PUT":
        assert send(make_event("call_create"), dest).ok
    fake.fail(method, path, status=status, body=body, content_type=content_type)
    outcome = send(make_event("call_summary"), dest)
    assert outcome.kind is OutcomeKind.RETRY, outcome
    assert outcome.status_code == status
    # the next attempt goes through, still one ticket with one summary
    assert send(make_event("call_summary"), dest).ok
    ticket = only_ticket(fake)
    assert sum("CXMind call summary" in c["body"] for c in fake.comments[ticket["id"]]) == 1


def test_connection_refused_is_a_retry(fake: FakeZendesk) -> None:
    dest = destination(fake, endpoint=f"http://127.0.0.1:{closed_port()}")
    outcome = send(make_event("call_create"), dest)
    assert outcome.kind is OutcomeKind.RETRY
    assert "could not connect" in (outcome.error or "")


def test_a_read_timeout_is_a_retry_within_the_configured_time(fake: FakeZendesk) -> None:
    fake.fail("GET", r"/api/v2/tickets\.json", status=0, delay=1.0)
    started = time.monotonic()
    outcome = send(make_event("call_create"), destination(fake, read_timeout=0.2))
    assert time.monotonic() - started < 0.9
    assert outcome.kind is OutcomeKind.RETRY
    assert "in time" in (outcome.error or "")


def test_422_is_permanent_with_the_field_details(fake: FakeZendesk) -> None:
    fake.fail(
        "POST",
        r"/api/v2/tickets\.json",
        status=422,
        body={
            "error": "RecordInvalid",
            "description": "Record validation errors",
            "details": {
                "requester": [{"description": "Requester: Email is not properly formatted"}],
                "priority": [{"description": "Priority: bogus is not valid"}],
            },
        },
    )
    outcome = send(make_event("call_create"), destination(fake))
    assert outcome.kind is OutcomeKind.PERMANENT
    assert outcome.status_code == 422
    assert outcome.provider_code == "RecordInvalid"
    assert "requester: Requester: Email is not properly formatted" in (outcome.error or "")
    assert "priority: Priority: bogus is not valid" in (outcome.error or "")


@pytest.mark.parametrize(
    ("status", "body", "code"),
    [
        (401, {"error": "Couldn't authenticate you"}, "Couldn't authenticate you"),
        (403, {"error": {"title": "Forbidden", "message": "You do not have access"}}, "Forbidden"),
        (404, {"error": "RecordNotFound", "description": "Not found"}, "RecordNotFound"),
    ],
)
def test_auth_and_missing_records_are_permanent(
    fake: FakeZendesk, status: int, body: Any, code: str
) -> None:
    fake.fail("GET", r"/api/v2/tickets\.json", status=status, body=body)
    outcome = send(make_event("call_create"), destination(fake))
    assert outcome.kind is OutcomeKind.PERMANENT
    assert (outcome.status_code, outcome.provider_code) == (status, code)


def test_wrong_credentials_are_permanent_and_never_logged(fake: FakeZendesk) -> None:
    dest = destination(fake, api_token="wrong-secret")
    outcome = send(make_event("call_create"), dest)
    assert outcome.kind is OutcomeKind.PERMANENT and outcome.status_code == 401
    assert "wrong-secret" not in repr(outcome) and "wrong-secret" not in repr(dest.options)


def test_oauth_tokens_authenticate_too(fake: FakeZendesk) -> None:
    options = fake.options(oauth_token=fake.oauth_token)
    dest = Destination("acme", "zd", "zendesk", ALL_EVENTS, ZendeskOptions.model_validate(options))
    assert send(make_event("call_create"), dest).ok


def test_a_payload_that_is_not_a_plan_is_permanent(fake: FakeZendesk) -> None:
    dest = destination(fake)
    payload = cxbridge_zendesk.transform(event=make_event("call_create"), destination=dest)
    assert payload is not None
    bad = Delivery("d", "acme", "zd", "e", "call_create", 1, type(payload)(body=b'{"nope": 1}'))
    outcome = cxbridge_zendesk.deliver(delivery=bad, destination=dest)
    assert outcome is not None and outcome.kind is OutcomeKind.PERMANENT


def test_concurrent_deliveries_keep_their_own_idempotency_keys(fake: FakeZendesk) -> None:
    dest = destination(fake)
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for kind in KINDS:
                assert send(make_event(kind, f"call-t{n}"), dest).ok
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for n in range(4):
        only_ticket(fake, f"call-t{n}")
    creates = [r for r in fake.requests if r.method == "POST" and r.path == "/api/v2/tickets.json"]
    assert len({r.headers["idempotency-key"] for r in creates}) == 4


# -- plugin surface
# -----------------------------------------------------------------------------------


def test_the_entry_point_loads_and_registers_the_zendesk_type(fake: FakeZendesk) -> None:
    manager = PluginManager(allow=["zendesk"])
    manager.load_entrypoints()
    assert not manager.failures
    assert manager.destination_types["zendesk"].options is ZendeskOptions
    payload = manager.hooks.transform(make_event("call_create"), destination(fake))
    assert payload is not None
    plan = json.loads(payload.body)
    assert plan["external_id"] == "call-1"


def test_other_destination_types_are_left_alone(fake: FakeZendesk) -> None:
    other = Destination("acme", "hook", "http", ALL_EVENTS, options=None)
    assert cxbridge_zendesk.transform(event=make_event("call_create"), destination=other) is None
    delivery = Delivery("d", "acme", "hook", "e", "call_create", 1, payload=None)  # type: ignore[arg-type]
    assert cxbridge_zendesk.deliver(delivery=delivery, destination=other) is None


@pytest.mark.parametrize(
    "options",
    [
        {"subdomain": "acme", "email": "a@b.c", "api_token": "t", "colour": "red"},
        {"subdomain": "acme", "email": "a@b.c"},
        {"subdomain": "acme", "api_token": "t"},
        {"subdomain": "acme", "email": "a@b.c", "api_token": "t", "oauth_token": "o"},
        {"subdomain": "acme.zendesk.com/", "oauth_token": "o"},
        {"subdomain": "acme", "oauth_token": "o", "mappings": {"call_ended": {}}},
    ],
    ids=[
        "unknown key",
        "no token",
        "token without email",
        "two auths",
        "bad subdomain",
        "bad event",
    ],
)
def test_invalid_options_are_refused(options: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        ZendeskOptions.model_validate(options)


def test_options_defaults_and_secrets() -> None:
    options = ZendeskOptions.model_validate(
        {"subdomain": "acme", "email": "a@b.c", "api_token": "s3cret"}
    )
    assert options.timeout == (5, 15)
    assert "s3cret" not in repr(options) and "s3cret" not in str(options.model_dump())


# -- template overrides and tenant files ---------------------------------------------------------


def test_mappings_override_the_defaults_per_event(fake: FakeZendesk) -> None:
    dest = destination(
        fake,
        mappings={
            "quality_score": {
                "ticket": {"custom_fields": {"qa_score": "{{ qi.score }}"}, "priority": "high"},
                "tags": ["{% if qi.score >= 95 %}gold{% else %}silver{% endif %}"],
            },
            "call_summary": {"comment": {"body": "Summary: {{ ai.summary }}", "public": True}},
        },
    )
    assert send(make_event("quality_score"), dest).ok
    assert send(make_event("call_summary"), dest).ok
    ticket = only_ticket(fake)
    assert ticket["priority"] == "high"
    assert "silver" in ticket["tags"] and "qa_pass" not in ticket["tags"]
    assert {"id": QA_FIELD, "value": 92} in ticket["custom_fields"]
    summary = [c for c in fake.comments[ticket["id"]] if c["body"].startswith("Summary: ")]
    assert len(summary) == 1 and summary[0]["public"] is True


def test_an_unknown_custom_field_name_fails_the_transform_with_the_names_known(
    fake: FakeZendesk,
) -> None:
    dest = destination(
        fake, mappings={"quality_score": {"ticket": {"custom_fields": {"qa_scroe": 1}}}}
    )
    with pytest.raises(TemplateRenderError, match=r"unknown custom field 'qa_scroe'.*qa_score"):
        cxbridge_zendesk.transform(event=make_event("quality_score"), destination=dest)


def test_a_template_syntax_error_is_refused_when_options_load() -> None:
    with pytest.raises(ValidationError):
        ZendeskOptions.model_validate(
            {
                "subdomain": "acme",
                "oauth_token": "o",
                "mappings": {"call_summary": {"comment": {"body": "{{ ai.summary | nope }}"}}},
            }
        )


def test_a_tenant_file_configures_the_destination(fake: FakeZendesk, tmp_path: Path) -> None:
    manager = PluginManager(allow=["zendesk"])
    manager.load_entrypoints()
    tenant_file = tmp_path / "acme.yaml"
    tenant_file.write_text(
        textwrap.dedent(
            f"""\
            tenant: acme
            timezone: Europe/Berlin
            destinations:
              zendesk:
                type: zendesk
                events: [call_create, call_outcome, call_summary, quality_score]
                subdomain: acme
                endpoint: {fake.url}
                allow_networks: [127.0.0.0/8]
                email: {fake.email}
                api_token: ${{ACME_ZENDESK_TOKEN}}
                custom_fields: {{qa_score: {QA_FIELD}}}
                agents: {{agent-7: 3915}}
                quality: {{pass_threshold: 95}}
                mappings:
                  call_summary:
                    comment: {{body: "AI: {{{{ ai.summary }}}}", public: false}}
            """
        )
    )
    tenant = load_tenant(
        tenant_file, manager.destination_types, env={"ACME_ZENDESK_TOKEN": fake.token}
    )
    dest = tenant.destinations["zendesk"]
    assert dest.options.api_token.get_secret_value() == fake.token
    for kind in KINDS:
        assert send(make_event(kind), dest).ok
    ticket = only_ticket(fake)
    assert "qa_review" in ticket["tags"]
    assert any(c["body"].startswith("AI: Customer wants") for c in fake.comments[ticket["id"]])
    assert fake.screen_pops == [("ticket", 3915, ticket["id"])]
