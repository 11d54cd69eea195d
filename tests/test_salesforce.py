"""The Salesforce plugin against a fake Salesforce org (core/cxbridge/testing/fakes/salesforce.py) over real HTTP.

simple-salesforce itself runs; destinations reach the fake through the plugin's endpoint override
(``endpoint`` + ``allow_networks``), so every request passes cxbridge's outbound guard.
"""

from __future__ import annotations

import json
import logging
import random
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import ValidationError

import cxbridge_salesforce as plugin
from cxbridge import Delivery, Destination, Event, Outcome, OutcomeKind, parse_event
from cxbridge.plugins import PluginManager
from cxbridge.testing.fakes.salesforce import FakeSalesforce
from cxbridge_salesforce.client import contact_search, escape_sosl
from cxbridge_salesforce.options import SalesforceOptions

ALL_EVENTS = frozenset({"call_create", "call_outcome", "call_summary", "quality_score"})
PHONE = "+1 (555) 010-9999"
CALL: dict[str, Any] = {
    "id": "call-1",
    "externalId": "pbx-77",
    "direction": "inbound",
    "from": PHONE,
    "to": "+1 555 0100",
    "startedAt": "2026-11-27T09:00:00Z",
    "endedAt": "2026-11-27T09:05:12Z",
    "durationSeconds": 312.4,
    "agent": {"id": "agent-7", "name": "Grace"},
    "customer": {"phone": PHONE, "name": "Ada Lovelace"},
}


def event(kind: str, call: dict[str, Any] | None = None, **extra: Any) -> Event:
    call = call or CALL
    body: dict[str, Any] = {
        "id": f"{call['id']}-{kind}-{extra.pop('n', 1)}",
        "type": kind,
        "occurredAt": "2026-11-27T09:06:00Z",
        "tenant": "acme",
        "call": call,
    }
    if kind == "call_outcome":
        body["ai"] = extra.pop(
            "ai",
            {
                "emotion": {"label": "anger", "score": 0.91, "previous": "neutral"},
                "signal": "escalation",
                "intents": [{"name": "cancel_subscription", "confidence": 0.8}],
            },
        )
    elif kind == "call_summary":
        body["ai"] = {
            "summary": "Customer was double-billed and asked for a refund.",
            "actionItems": [{"text": "Send refund", "owner": "Grace", "dueDate": "2026-11-30"}],
            "conclusions": ["Refund promised"],
            "tags": ["billing"],
        }
    elif kind == "quality_score":
        body["qi"] = {"score": 87.5, "passed": True}
    body.update(extra)
    return parse_event(body)


LIFECYCLE = {kind: event(kind) for kind in ALL_EVENTS}


# -- fixtures and helpers --------------------------------------------------------------------------


# The endpoint override that points every destination of a test at its fake (set by ``fake``).
LOCAL: dict[str, Any] = {}


@pytest.fixture
def fake() -> Iterator[FakeSalesforce]:
    with FakeSalesforce() as fake:
        fake.contact_id = fake.add_contact("Ada", "Lovelace", phone="(555) 010-9999")  # type: ignore[attr-defined]
        LOCAL.update(fake.options())
        try:
            yield fake
        finally:
            LOCAL.clear()
            plugin.reset_clients()


def client_credentials(fake: FakeSalesforce, **more: Any) -> dict[str, Any]:
    return {
        "domain": "acme.my.salesforce.com",
        "auth": {
            "type": "client_credentials",
            "consumer_key": fake.consumer_key,
            "consumer_secret": fake.consumer_secret,
        },
        **more,
    }


def destination(options: dict[str, Any], name: str = "sf") -> Destination:
    return Destination(
        tenant="acme",
        name=name,
        type="salesforce",
        events=ALL_EVENTS,
        options=SalesforceOptions.model_validate({**LOCAL, **options}),
    )


def send(ev: Event, dest: Destination, attempt: int = 1) -> Outcome:
    payload = plugin.transform(event=ev, destination=dest)
    assert payload is not None
    delivery = Delivery(
        id=f"{ev.id}:{dest.name}",
        tenant=dest.tenant,
        destination=dest.name,
        event_id=ev.id,
        event_type=ev.type,
        attempt=attempt,
        payload=payload,
    )
    outcome = plugin.deliver(delivery=delivery, destination=dest)
    assert outcome is not None
    return outcome


def the_task(fake: FakeSalesforce, call_id: str = "call-1") -> dict[str, Any]:
    tasks = fake.find("Task", CXMind_Call_Id__c=call_id)
    assert len(tasks) == 1, tasks
    return tasks[0]


# -- the lifecycle of one call ---------------------------------------------------------------------


def _orders() -> list[tuple[str, list[str]]]:
    twice = sorted(ALL_EVENTS) * 2
    shuffled = list(twice)
    random.Random(20261127).shuffle(shuffled)
    return [
        ("natural", ["call_create", "call_outcome", "call_summary", "quality_score"] * 2),
        ("seeded-shuffle", shuffled),
        ("create-last", [*["quality_score", "call_summary", "call_outcome"] * 2,
                         "call_create", "call_create"]),
        ("summary-first", ["call_summary", "call_create", "call_summary", "quality_score",
                           "call_create", "quality_score", "call_outcome", "call_outcome"]),
        ("each-twice-in-a-row", [k for k in ("quality_score", "call_summary", "call_create",
                                             "call_outcome") for _ in range(2)]),
    ]  # fmt: skip


@pytest.mark.parametrize(("order", "kinds"), _orders(), ids=[name for name, _ in _orders()])
def test_lifecycle_in_any_order_leaves_one_task_and_one_case(
    fake: FakeSalesforce, order: str, kinds: list[str]
) -> None:
    dest = destination(client_credentials(fake))
    for kind in kinds:
        outcome = send(LIFECYCLE[kind], dest)
        assert outcome.ok, (kind, outcome)
        assert outcome.remote_id

    task = the_task(fake)
    assert task["TaskSubtype"] == "Call"
    assert task["CallType"] == "Inbound"
    assert task["Status"] == "Completed"
    assert task["Subject"] == f"Inbound call from {PHONE}"
    assert task["WhoId"] == fake.contact_id  # type: ignore[attr-defined]
    assert "double-billed" in task["Description"]
    assert "- Send refund (Grace, due 2026-11-30)" in task["Description"]
    assert task["CallDisposition"] == "Refund promised"
    assert task["CallDurationInSeconds"] == 312
    assert task["CXMind_QA_Score__c"] == 87.5
    assert len(fake.records["Task"]) == 1

    cases = fake.find("Case", CXMind_Call_Id__c="call-1:escalation")
    assert len(cases) == 1 and len(fake.records["Case"]) == 1
    case = cases[0]
    assert (case["Priority"], case["Origin"], case["Status"]) == ("High", "Phone", "New")
    assert case["ContactId"] == fake.contact_id  # type: ignore[attr-defined]
    assert "anger" in case["Subject"] and "anger (0.91), was neutral" in case["Description"]
    # No create-only field was ever sent as an update (the fake answers 400 to that); the only
    # "errors" are the 404s of existence checks.
    assert all(s < 300 or (k, s) == ("get", 404) for k, _, s in fake.log), fake.log


def test_remote_id_is_the_salesforce_record_id(fake: FakeSalesforce) -> None:
    dest = destination(client_credentials(fake))
    created = send(LIFECYCLE["call_create"], dest)
    assert created.ok and created.status_code == 201
    assert created.remote_id == the_task(fake)["Id"]
    assert created.remote_id.startswith("00T")
    fake.upsert_update_status = 204  # older API versions answer an update with no body
    updated = send(LIFECYCLE["call_summary"], dest)
    assert updated.ok and updated.status_code == 204
    assert updated.remote_id == created.remote_id


def test_sales_lead_creates_one_follow_up_task_even_when_redelivered(fake: FakeSalesforce) -> None:
    dest = destination(client_credentials(fake))
    lead = event("call_outcome", ai={"signal": "sales_lead", "intents": [{"name": "pricing"}]})
    first, second = send(lead, dest), send(lead, dest, attempt=2)
    assert first.ok and second.ok and first.remote_id == second.remote_id
    tasks = fake.find("Task", CXMind_Call_Id__c="call-1:sales_lead")
    assert len(tasks) == 1
    follow_up = tasks[0]
    assert follow_up["Status"] == "Not Started" and follow_up["TaskSubtype"] == "Task"
    assert follow_up["ActivityDate"] == "2026-11-28"
    assert "pricing" in follow_up["Subject"]
    assert follow_up["WhoId"] == fake.contact_id  # type: ignore[attr-defined]
    assert fake.records["Case"] == {}


def test_an_outcome_without_a_known_signal_writes_nothing(fake: FakeSalesforce) -> None:
    dest = destination(client_credentials(fake))
    calm = event("call_outcome", ai={"emotion": {"label": "happy"}})
    outcome = send(calm, dest)
    assert outcome.ok and outcome.remote_id is None
    assert fake.count() == 0


def test_an_angry_emotion_without_a_signal_opens_a_case(fake: FakeSalesforce) -> None:
    dest = destination(client_credentials(fake))
    assert send(event("call_outcome", ai={"emotion": {"label": "Angry"}}), dest).ok
    assert len(fake.find("Case", CXMind_Call_Id__c="call-1:escalation")) == 1


def test_payload_is_a_stable_json_write_plan(fake: FakeSalesforce) -> None:
    dest = destination(client_credentials(fake))
    first = plugin.transform(event=LIFECYCLE["call_create"], destination=dest)
    again = plugin.transform(event=LIFECYCLE["call_create"], destination=dest)
    assert first is not None and again is not None and first.body == again.body
    plan = json.loads(first.body)
    (write,) = plan["writes"]
    assert write["object"] == "Task" and write["operation"] == "upsert"
    assert (write["external_id_field"], write["external_id"]) == ("CXMind_Call_Id__c", "call-1")
    assert write["create_fields"] == {"TaskSubtype": "Call", "Status": "In Progress"}
    assert write["lookups"] == [
        {"field": "WhoId", "kind": "contact_by_phone", "phone": PHONE, "when": "always"}
    ]
    assert fake.count() == 0  # transform never talks to Salesforce


def test_other_destination_types_are_not_ours(fake: FakeSalesforce) -> None:
    other = Destination(tenant="acme", name="hook", type="http", events=ALL_EVENTS, options=None)
    assert plugin.transform(event=LIFECYCLE["call_create"], destination=other) is None
    dest = destination(client_credentials(fake))
    payload = plugin.transform(event=LIFECYCLE["call_create"], destination=dest)
    assert payload is not None
    delivery = Delivery("d", "acme", "hook", "e", "call_create", 1, payload)
    assert plugin.deliver(delivery=delivery, destination=other) is None


def test_configurable_field_names(fake: FakeSalesforce) -> None:
    fake.schema["Task"] |= {"Call_Key__c", "QA__c"}
    fake.schema["Case"] |= {"Case_Key__c"}
    from cxbridge.testing.fakes import salesforce as fakes

    fakes.EXTERNAL_IDS["Task"].add("Call_Key__c")
    fakes.EXTERNAL_IDS["Case"].add("Case_Key__c")
    try:
        dest = destination(
            client_credentials(
                fake,
                task_external_id_field="Call_Key__c",
                case_external_id_field="Case_Key__c",
                qa_score_field="QA__c",
            )
        )
        for kind in ("quality_score", "call_create", "call_outcome"):
            assert send(LIFECYCLE[kind], dest).ok
        assert fake.find("Task", Call_Key__c="call-1")[0]["QA__c"] == 87.5
        assert len(fake.find("Case", Case_Key__c="call-1:escalation")) == 1
    finally:
        fakes.EXTERNAL_IDS["Task"].discard("Call_Key__c")
        fakes.EXTERNAL_IDS["Case"].discard("Case_Key__c")


def test_equal_options_share_one_client_and_token(fake: FakeSalesforce) -> None:
    options = client_credentials(fake)
    assert send(LIFECYCLE["call_create"], destination(options)).ok
    assert send(LIFECYCLE["call_summary"], destination(options)).ok  # a reloaded, equal config
    assert fake.count("token") == 1


def test_escalation_emotions_are_configurable(fake: FakeSalesforce) -> None:
    dest = destination(client_credentials(fake, escalation_emotions=["Disappointed"]))
    assert send(event("call_outcome", ai={"emotion": {"label": "anger"}}), dest).ok
    assert fake.records["Case"] == {}
    assert send(event("call_outcome", ai={"emotion": {"label": "disappointed"}}), dest).ok
    assert len(fake.records["Case"]) == 1


def test_a_concurrent_create_between_read_and_upsert_is_retried(fake: FakeSalesforce) -> None:
    dest = destination(client_credentials(fake))
    assert send(LIFECYCLE["call_create"], dest).ok
    # The existence check says "not there" (as if another event created it just after)...
    not_found = [{"errorCode": "NOT_FOUND", "message": "The requested resource does not exist"}]
    fake.fail(404, body=not_found, match=lambda method, path: method == "GET")
    # ...so the upsert carries TaskSubtype, which Salesforce refuses to update.
    outcome = send(LIFECYCLE["call_summary"], dest)
    assert outcome.kind is OutcomeKind.RETRY and "concurrently" in (outcome.error or "")
    assert send(LIFECYCLE["call_summary"], dest).ok
    assert the_task(fake)["Status"] == "Completed"


def test_a_failing_contact_search_does_not_block_the_write(fake: FakeSalesforce) -> None:
    dest = destination(client_credentials(fake))
    fake.fail(400, "MALFORMED_SEARCH", "bad search", match=lambda m, path: "/search/" in path)
    assert send(LIFECYCLE["call_create"], dest).ok
    assert "WhoId" not in the_task(fake)


# -- template overrides ----------------------------------------------------------------------------


def test_mapping_override_merges_template_fields(fake: FakeSalesforce) -> None:
    fake.schema["Task"].add("Agent_Name__c")
    dest = destination(
        client_credentials(
            fake,
            mappings={
                "call_summary": {
                    "fields": {
                        "CallDisposition": "{{ ai.tags | first | upcase }}",
                        "Agent_Name__c": "{{ call.agent.name }}",
                        "CallDurationInSeconds": "{{ call.durationSeconds | round }}",
                    }
                },
                "quality_score": {"enabled": False},
            },
        )
    )
    assert send(LIFECYCLE["call_summary"], dest).ok
    assert send(LIFECYCLE["quality_score"], dest).ok
    task = the_task(fake)
    assert task["CallDisposition"] == "BILLING"
    assert task["Agent_Name__c"] == "Grace"
    assert task["CallDurationInSeconds"] == 312
    assert task["Status"] == "Completed"  # built-in fields kept
    assert "CXMind_QA_Score__c" not in task


def test_mapping_override_can_target_another_object_and_external_id() -> None:
    options = SalesforceOptions.model_validate(
        {
            "auth": {"type": "access_token", "access_token": "t", "instance_url": "https://x.io"},
            "mappings": {
                "call_summary": {
                    "object": "Call_Log__c",
                    "external_id_field": "Call__c",
                    "external_id": "{{ call.id }}-log",
                    "fields": {"Summary__c": "{{ ai.summary }}"},
                }
            },
        }
    )
    plan = plugin.build_plan(LIFECYCLE["call_summary"], options)
    (write,) = plan.writes
    assert (write.object, write.external_id_field, write.external_id) == (
        "Call_Log__c",
        "Call__c",
        "call-1-log",
    )
    assert write.fields == {"Summary__c": "Customer was double-billed and asked for a refund."}
    assert write.create_fields == {} and write.lookups == []


@pytest.mark.parametrize(
    "mappings",
    [
        {"call_summary": {"fields": {"Subject": "{{ call.id "}}},
        {"call_summary": {"fields": ["not", "a", "mapping"]}},
        {"call_summary": {"object": "Task/../User"}},
        {"wrapup": {"object": "Task"}},
    ],
)
def test_bad_mappings_are_refused_at_load(mappings: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        SalesforceOptions.model_validate(
            {
                "auth": {
                    "type": "access_token",
                    "access_token": "t",
                    "instance_url": "https://x.io",
                },
                "mappings": mappings,
            }
        )


# -- sessions and re-login -------------------------------------------------------------------------


def test_an_expired_session_costs_exactly_one_relogin(fake: FakeSalesforce) -> None:
    dest = destination(client_credentials(fake))
    assert send(LIFECYCLE["call_create"], dest).ok
    assert fake.count("token") == 1
    fake.expire_sessions()
    assert send(LIFECYCLE["call_summary"], dest).ok
    assert send(LIFECYCLE["quality_score"], dest).ok
    assert fake.count("token") == 2
    assert the_task(fake)["Status"] == "Completed"


def test_concurrent_expired_requests_share_one_relogin(fake: FakeSalesforce) -> None:
    dest = destination(client_credentials(fake))
    assert send(LIFECYCLE["call_create"], dest).ok
    fake.expire_sessions()
    calls = [dict(CALL, id=f"call-{i}") for i in range(2, 10)]
    outcomes: list[Outcome] = []
    barrier = threading.Barrier(len(calls))

    def worker(call: dict[str, Any]) -> None:
        barrier.wait()
        outcomes.append(send(event("quality_score", call), dest))

    threads = [threading.Thread(target=worker, args=(call,)) for call in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert len(outcomes) == len(calls) and all(o.ok for o in outcomes), outcomes
    assert fake.count("token") == 2
    assert len(fake.records["Task"]) == len(calls) + 1


def test_a_second_401_is_permanent_not_a_loop(fake: FakeSalesforce) -> None:
    dest = destination(client_credentials(fake))
    assert send(LIFECYCLE["call_create"], dest).ok
    before = fake.count()
    fake.tokens_work = False  # e.g. the integration user was deactivated
    fake.expire_sessions()
    outcome = send(LIFECYCLE["call_summary"], dest)
    assert outcome.kind is OutcomeKind.PERMANENT
    assert outcome.status_code == 401 and outcome.provider_code == "INVALID_SESSION_ID"
    assert "renewing" in (outcome.error or "")
    # one refused request, one token request, the same request once more: bounded
    assert fake.count() - before == 3
    assert fake.count("token") == 2


def test_an_html_401_is_handled_like_an_expired_session(fake: FakeSalesforce) -> None:
    dest = destination(client_credentials(fake))
    assert send(LIFECYCLE["call_create"], dest).ok
    fake.fail(401, body="<html><body>Session expired</body></html>", content_type="text/html")
    assert send(LIFECYCLE["call_summary"], dest).ok
    assert fake.count("token") == 2
    fake.fail(401, body="<html>no</html>", content_type="text/html", times=2)
    outcome = send(LIFECYCLE["quality_score"], dest)
    assert outcome.kind is OutcomeKind.PERMANENT and outcome.status_code == 401
    assert "<html>no</html>" in (outcome.response_excerpt or "")


def test_a_fixed_access_token_that_expires_is_permanent(fake: FakeSalesforce) -> None:
    token = fake._issue_token("login.salesforce.com", "manual")["access_token"]
    dest = destination(
        {
            "auth": {
                "type": "access_token",
                "access_token": token,
                "instance_url": "https://acme.my.salesforce.com",
            }
        }
    )
    assert send(LIFECYCLE["call_create"], dest).ok
    fake.expire_sessions()
    outcome = send(LIFECYCLE["call_summary"], dest)
    assert outcome.kind is OutcomeKind.PERMANENT and "cannot be renewed" in (outcome.error or "")
    assert fake.count("token") == 0


# -- error mapping ---------------------------------------------------------------------------------


def test_request_limit_exceeded_is_retried_after_a_long_delay(fake: FakeSalesforce) -> None:
    dest = destination(client_credentials(fake, rate_limit_retry_after=900))
    fake.fail(403, "REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded.")
    outcome = send(LIFECYCLE["call_create"], dest)
    assert outcome.kind is OutcomeKind.RETRY
    assert outcome.retry_after == 900 and outcome.provider_code == "REQUEST_LIMIT_EXCEEDED"
    assert outcome.status_code == 403
    assert send(LIFECYCLE["call_create"], dest).ok


def test_other_403s_are_permanent(fake: FakeSalesforce) -> None:
    dest = destination(client_credentials(fake))
    fake.fail(403, "INSUFFICIENT_ACCESS", "insufficient access rights on object id")
    outcome = send(LIFECYCLE["call_create"], dest)
    assert outcome.kind is OutcomeKind.PERMANENT and outcome.provider_code == "INSUFFICIENT_ACCESS"


@pytest.mark.parametrize(
    ("status", "body", "content_type"),
    [
        (503, [{"errorCode": "SERVER_UNAVAILABLE", "message": "down"}], "application/json"),
        (503, "<html><h1>Service Unavailable</h1></html>", "text/html"),
        (500, [{"errorCode": "UNKNOWN_EXCEPTION", "message": "boom"}], "application/json"),
        (400, [{"errorCode": "UNABLE_TO_LOCK_ROW", "message": "locked"}], "application/json"),
    ],
)
def test_server_errors_are_retried(
    fake: FakeSalesforce, status: int, body: Any, content_type: str
) -> None:
    dest = destination(client_credentials(fake))
    fake.fail(status, body=body, content_type=content_type)
    outcome = send(LIFECYCLE["call_summary"], dest)
    assert outcome.kind is OutcomeKind.RETRY and outcome.status_code == status
    assert send(LIFECYCLE["call_summary"], dest).ok


def test_an_invalid_field_is_permanent_and_named(fake: FakeSalesforce) -> None:
    fake.schema["Task"].discard("CXMind_QA_Score__c")
    dest = destination(client_credentials(fake))
    outcome = send(LIFECYCLE["quality_score"], dest)
    assert outcome.kind is OutcomeKind.PERMANENT
    assert outcome.status_code == 400 and outcome.provider_code == "INVALID_FIELD"
    assert "CXMind_QA_Score__c" in (outcome.error or "")
    assert "quality_score (Task)" in (outcome.error or "")


def test_several_records_on_one_external_id_is_permanent_with_their_ids(
    fake: FakeSalesforce,
) -> None:
    a = fake.insert("Task", {"CXMind_Call_Id__c": "call-1", "Subject": "a"})
    b = fake.insert("Task", {"CXMind_Call_Id__c": "call-1", "Subject": "b"})
    dest = destination(client_credentials(fake))
    outcome = send(LIFECYCLE["quality_score"], dest)
    assert outcome.kind is OutcomeKind.PERMANENT and outcome.status_code == 300
    assert a in (outcome.error or "") and b in (outcome.error or "")


def test_an_unknown_object_is_permanent(fake: FakeSalesforce) -> None:
    dest = destination(
        client_credentials(
            fake, mappings={"quality_score": {"object": "Nope", "default_fields": True}}
        )
    )
    outcome = send(LIFECYCLE["quality_score"], dest)
    assert outcome.kind is OutcomeKind.PERMANENT and outcome.status_code == 404


def test_a_timeout_is_retried(fake: FakeSalesforce) -> None:
    dest = destination(client_credentials(fake, read_timeout=0.2))
    fake.fail(200, body={"late": True}, delay=0.6)
    outcome = send(LIFECYCLE["call_summary"], dest)
    assert outcome.kind is OutcomeKind.RETRY and "in time" in (outcome.error or "")


def test_a_connection_error_is_retried(fake: FakeSalesforce) -> None:
    closed = client_credentials(fake, endpoint="http://127.0.0.1:9")
    outcome = send(LIFECYCLE["call_create"], destination(closed))
    assert outcome.kind is OutcomeKind.RETRY


def test_update_of_a_record_not_there_yet_is_retried(fake: FakeSalesforce) -> None:
    dest = destination(
        client_credentials(fake, mappings={"quality_score": {"operation": "update"}})
    )
    outcome = send(LIFECYCLE["quality_score"], dest)
    assert outcome.kind is OutcomeKind.RETRY and "does not exist yet" in (outcome.error or "")
    assert send(LIFECYCLE["call_create"], dest).ok
    assert send(LIFECYCLE["quality_score"], dest).ok
    assert the_task(fake)["CXMind_QA_Score__c"] == 87.5


def test_a_payload_that_is_not_a_plan_is_permanent(fake: FakeSalesforce) -> None:
    from cxbridge import Payload

    dest = destination(client_credentials(fake))
    delivery = Delivery("d", "acme", "sf", "e", "call_create", 1, Payload(body=b'{"hello": 1}'))
    outcome = plugin.deliver(delivery=delivery, destination=dest)
    assert outcome is not None and outcome.kind is OutcomeKind.PERMANENT


# -- SOSL ------------------------------------------------------------------------------------------


def test_sosl_escaping() -> None:
    assert escape_sosl(PHONE) == r"\+1 \(555\) 010\-9999"
    assert escape_sosl("a?&|!{}[]()^~*:\\\"'+-b") == (
        "a" + "".join("\\" + c for c in "?&|!{}[]()^~*:\\\"'+-") + "b"
    )
    assert contact_search(PHONE) == (
        r"FIND {\+1 \(555\) 010\-9999} IN PHONE FIELDS RETURNING Contact(Id)"
    )
    assert contact_search("ab") is None  # not a phone number
    assert contact_search("1" * 41) is None


def test_contact_lookup_by_formatted_phone(fake: FakeSalesforce) -> None:
    dest = destination(client_credentials(fake))
    assert send(LIFECYCLE["call_create"], dest).ok
    assert fake.search_terms == [PHONE]
    assert the_task(fake)["WhoId"] == fake.contact_id  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "hostile",
    [
        "555} RETURNING User(Id) FIND {x",
        "555\\} IN ALL FIELDS",
        '555 "OR" * 1 ~ 2 ^ ? & | !',
        "555 \\\\ [x]: 'y'",
    ],
)
def test_hostile_phone_cannot_break_out_of_the_search(fake: FakeSalesforce, hostile: str) -> None:
    dest = destination(client_credentials(fake))
    call = dict(CALL, customer={"phone": hostile})
    outcome = send(event("call_create", call), dest)
    assert outcome.ok, outcome
    assert fake.search_terms == [" ".join(hostile.split())]  # searched literally, as one term
    assert "WhoId" not in the_task(fake)


def test_contact_lookup_can_be_turned_off(fake: FakeSalesforce) -> None:
    dest = destination(client_credentials(fake, contact_lookup=False))
    assert send(LIFECYCLE["call_create"], dest).ok
    assert fake.count("search") == 0


# -- authentication flows --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rsa_key() -> tuple[str, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, public


@pytest.mark.parametrize("form", ["inline", "escaped-newlines", "file"])
def test_jwt_bearer_flow(
    fake: FakeSalesforce, rsa_key: tuple[str, bytes], tmp_path: Path, form: str
) -> None:
    private, public = rsa_key
    fake.jwt_public_key = public
    auth: dict[str, Any] = {
        "type": "jwt_bearer",
        "consumer_key": fake.consumer_key,
        "username": fake.username,
    }
    if form == "file":
        path = tmp_path / "sf.key"
        path.write_text(private)
        auth["private_key_file"] = str(path)
    else:
        auth["private_key"] = private if form == "inline" else private.replace("\n", "\\n")
    dest = destination({"auth": auth})
    assert send(LIFECYCLE["call_create"], dest).ok
    assert fake.token_grants == ["urn:ietf:params:oauth:grant-type:jwt-bearer"]
    assert fake.token_hosts == ["login.salesforce.com"]


def test_jwt_bearer_for_a_sandbox_uses_the_test_audience(
    fake: FakeSalesforce, rsa_key: tuple[str, bytes]
) -> None:
    private, public = rsa_key
    fake.jwt_public_key = public
    auth = {
        "type": "jwt_bearer",
        "consumer_key": fake.consumer_key,
        "username": fake.username,
        "private_key": private,
    }
    assert send(LIFECYCLE["call_create"], destination({"domain": "test", "auth": auth})).ok
    assert fake.token_hosts == ["test.salesforce.com"]


def test_jwt_bearer_refused_is_permanent(fake: FakeSalesforce, rsa_key: tuple[str, bytes]) -> None:
    private, public = rsa_key
    fake.jwt_public_key = public
    auth = {
        "type": "jwt_bearer",
        "consumer_key": fake.consumer_key,
        "username": "someone-else@acme.example",
        "private_key": private,
    }
    outcome = send(LIFECYCLE["call_create"], destination({"auth": auth}))
    assert outcome.kind is OutcomeKind.PERMANENT and outcome.provider_code == "invalid_grant"
    assert "approved" in (outcome.error or "")


def test_a_bad_private_key_is_refused_at_load() -> None:
    with pytest.raises(ValidationError, match="PEM"):
        SalesforceOptions.model_validate(
            {
                "auth": {
                    "type": "jwt_bearer",
                    "consumer_key": "k",
                    "username": "u",
                    "private_key": "-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----",
                }
            }
        )


def test_client_credentials_flow_uses_my_domain(fake: FakeSalesforce) -> None:
    dest = destination(client_credentials(fake))
    assert send(LIFECYCLE["call_create"], dest).ok
    assert fake.token_grants == ["client_credentials"]
    assert fake.token_hosts == ["acme.my.salesforce.com"]


@pytest.mark.parametrize("domain", ["acme.my", "https://acme.my.salesforce.com/"])
def test_my_domain_spellings(domain: str) -> None:
    options = SalesforceOptions.model_validate(
        {"domain": domain, "auth": {"type": "client_credentials", "consumer_key": "k",
                                    "consumer_secret": "s"}}
    )  # fmt: skip
    assert options.login_host == "acme.my.salesforce.com"


def test_client_credentials_needs_my_domain() -> None:
    with pytest.raises(ValidationError, match="My Domain"):
        SalesforceOptions.model_validate(
            {"auth": {"type": "client_credentials", "consumer_key": "k", "consumer_secret": "s"}}
        )


def test_wrong_client_secret_is_permanent_and_secret_free(fake: FakeSalesforce) -> None:
    options = client_credentials(fake)
    options["auth"]["consumer_secret"] = "wrong-secret-value"
    outcome = send(LIFECYCLE["call_create"], destination(options))
    assert outcome.kind is OutcomeKind.PERMANENT and outcome.provider_code == "invalid_client"
    assert "wrong-secret-value" not in repr(outcome)


def test_token_endpoint_outage_is_retried(fake: FakeSalesforce) -> None:
    fake.fail(503, body="<html>maintenance</html>", content_type="text/html", on_token=True)
    dest = destination(client_credentials(fake))
    outcome = send(LIFECYCLE["call_create"], dest)
    assert outcome.kind is OutcomeKind.RETRY and outcome.status_code == 503
    assert send(LIFECYCLE["call_create"], dest).ok


def legacy_destination(
    fake: FakeSalesforce, caplog: pytest.LogCaptureFixture, **auth: Any
) -> Destination:
    """A destination logging in the legacy way (``auth``: its type and app credentials) as the fake's
    user, built while the plugin's warnings are captured."""
    credentials = {
        "username": fake.username,
        "password": fake.password,
        "security_token": fake.security_token,
    }
    with caplog.at_level(logging.WARNING, logger="cxbridge_salesforce"):
        return destination({"auth": {**auth, **credentials}})


def test_legacy_password_flow_works_and_warns(
    fake: FakeSalesforce, caplog: pytest.LogCaptureFixture
) -> None:
    dest = legacy_destination(
        fake,
        caplog,
        type="password",
        consumer_key=fake.consumer_key,
        consumer_secret=fake.consumer_secret,
    )
    assert any(
        "legacy" in r.getMessage() and "jwt_bearer" in r.getMessage() for r in caplog.records
    )
    assert fake.password not in caplog.text
    assert send(LIFECYCLE["call_create"], dest).ok
    assert fake.token_grants == ["password"]


def test_legacy_soap_login_works_and_warns(
    fake: FakeSalesforce, caplog: pytest.LogCaptureFixture
) -> None:
    dest = legacy_destination(fake, caplog, type="soap")
    assert any("SOAP" in r.getMessage() for r in caplog.records)
    assert send(LIFECYCLE["call_create"], dest).ok
    assert fake.count("soap") == 1 and fake.token_grants == ["soap"]
    fake.expire_sessions()
    assert send(LIFECYCLE["call_summary"], dest).ok
    assert fake.count("soap") == 2


def test_a_bad_soap_password_is_permanent(fake: FakeSalesforce) -> None:
    auth = {"type": "soap", "username": fake.username, "password": "nope"}
    outcome = send(LIFECYCLE["call_create"], destination({"auth": auth}))
    assert outcome.kind is OutcomeKind.PERMANENT and "INVALID_LOGIN" in (outcome.error or "")


def test_options_forbid_unknown_keys() -> None:
    with pytest.raises(ValidationError):
        SalesforceOptions.model_validate(
            {
                "auth": {"type": "access_token", "access_token": "t", "instance_url": "https://x"},
                "timeout": 5,
            }
        )


# -- plugin loading --------------------------------------------------------------------------------


def test_the_entry_point_loads_and_registers_the_type() -> None:
    manager = PluginManager(allow=["salesforce"])
    manager.load_entrypoints()
    assert manager.failures == []
    registered = manager.destination_types["salesforce"]
    assert registered.options is SalesforceOptions and registered.plugin == "salesforce"
