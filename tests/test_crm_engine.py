"""The Salesforce and Zendesk plugins through the delivery engine, against the fake servers.

The plugins load from their entry points, their destinations from a tenant file; the engine runs on a
fake clock with the store on SQLite and Dramatiq's ``StubBroker``. Each test accepts events and makes
the attempts itself (``engine.process``), moving the clock to ``next_attempt_at`` in between, so
retries, dead letters and the ``on_delivery_failed`` hooks are those a worker would produce.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

import cxbridge_salesforce
from cxbridge import Event, Outcome, OutcomeKind
from cxbridge.clock import FakeClock
from cxbridge.engine import Engine
from cxbridge.plugins import PluginManager
from cxbridge.replay import replay
from cxbridge.store import DeliveryFilter
from cxbridge.testing.fakes.salesforce import FakeSalesforce
from cxbridge.testing.fakes.zendesk import FakeZendesk
from tests.engine_support import MakeEngine
from tests.scripted_plugin import ScriptedPlugin
from tests.test_salesforce import LIFECYCLE as SF_EVENTS
from tests.test_zendesk import KINDS, QA_FIELD
from tests.test_zendesk import make_event as zendesk_event


def tenant_yaml(destination: str, destination_type: str, **options: Any) -> str:
    """A tenant file for tenant ``acme`` with one destination of every call event."""
    config = {"type": destination_type, "events": KINDS, **options}
    return yaml.safe_dump({"tenant": "acme", "destinations": {destination: config}})


SALESFORCE_OPTIONS = {
    "domain": "acme.my.salesforce.com",
    "auth": {
        "type": "client_credentials",
        "consumer_key": "${ACME_SF_CONSUMER_KEY}",
        "consumer_secret": "${ACME_SF_CONSUMER_SECRET}",
    },
    "rate_limit_retry_after": 900,
}

# -- engines over the real plugins -----------------------------------------------------------------


def crm_engine(
    make_engine: MakeEngine, tmp_path: Path, tenant: str, env: dict[str, str]
) -> tuple[Engine, ScriptedPlugin, FakeClock]:
    """An engine with the plugins of the entry points, plus the scripted plugin to record every
    ``on_delivery_failed`` call."""
    manager = PluginManager(allow=["salesforce", "zendesk"])
    manager.load_entrypoints()
    assert manager.failures == []
    return make_engine(tmp_path, tenant_yaml=tenant, env=env, manager=manager, short_delay=0)


@pytest.fixture
def salesforce() -> Iterator[FakeSalesforce]:
    with FakeSalesforce() as fake:
        fake.add_contact("Ada", "Lovelace", phone="(555) 010-9999")
        try:
            yield fake
        finally:
            cxbridge_salesforce.reset_clients()


def salesforce_tenant(salesforce: FakeSalesforce) -> tuple[str, dict[str, str]]:
    """A tenant file with one Salesforce destination ``crm`` on the fake, and its environment."""
    tenant = tenant_yaml("crm", "salesforce", **salesforce.options(**SALESFORCE_OPTIONS))
    env = {
        "ACME_SF_CONSUMER_KEY": salesforce.consumer_key,
        "ACME_SF_CONSUMER_SECRET": salesforce.consumer_secret,
    }
    return tenant, env


def zendesk_tenant(zendesk: FakeZendesk) -> tuple[str, dict[str, str]]:
    """A tenant file with one Zendesk destination ``helpdesk`` on the fake, and its environment."""
    tenant = tenant_yaml(
        "helpdesk",
        "zendesk",
        **zendesk.options(),
        email=zendesk.email,
        api_token="${ACME_ZENDESK_TOKEN}",
        custom_fields={"qa_score": QA_FIELD},
    )
    return tenant, {"ACME_ZENDESK_TOKEN": zendesk.token}


@pytest.fixture
def sf_engine(
    make_engine: MakeEngine, tmp_path: Path, salesforce: FakeSalesforce
) -> tuple[Engine, ScriptedPlugin, FakeClock]:
    return crm_engine(make_engine, tmp_path, *salesforce_tenant(salesforce))


@pytest.fixture
def zendesk() -> Iterator[FakeZendesk]:
    with FakeZendesk() as fake:
        yield fake


@pytest.fixture
def zd_engine(
    make_engine: MakeEngine, tmp_path: Path, zendesk: FakeZendesk
) -> tuple[Engine, ScriptedPlugin, FakeClock]:
    return crm_engine(make_engine, tmp_path, *zendesk_tenant(zendesk))


def accept_one(engine: Engine, event: Event) -> str:
    accepted = engine.accept(event)
    assert not accepted.duplicate
    (delivery_id,) = accepted.delivery_ids
    return delivery_id


def attempt(engine: Engine, clock: FakeClock, delivery_id: str) -> Outcome:
    """One attempt of a pending delivery, once it is due (the clock moves to ``next_attempt_at``)."""
    record = engine.store.get_delivery(delivery_id)
    assert record is not None and record.status == "pending", record
    if record.next_attempt_at is not None:
        clock.set(max(clock.now(), record.next_attempt_at))
    outcome = engine.process(delivery_id)
    assert outcome is not None
    return outcome


def status(engine: Engine, delivery_id: str) -> str:
    record = engine.store.get_delivery(delivery_id)
    assert record is not None
    return record.status


def dead_reason(engine: Engine, plugin: ScriptedPlugin, delivery_id: str) -> str:
    """The reason of the one dead letter of ``delivery_id``, checking that the hooks heard of it
    exactly once, with the same reason."""
    assert status(engine, delivery_id) == "dead"
    (dead,) = engine.store.dead_letters_of(delivery_id)
    assert [(d.id, reason) for d, reason in plugin.failed] == [(delivery_id, dead["reason"])]
    reason: str = dead["reason"]
    return reason


def deliver_each_twice(
    engine: Engine, clock: FakeClock, events: dict[str, Event], order: list[str]
) -> dict[str, str]:
    """Walk ``order`` (each kind twice): the first time a kind comes up its event is accepted and
    delivered, the second time its delivered delivery is replayed and delivered again. Then every
    event is accepted once more, which the engine deduplicates. Returns the delivery ids by kind."""
    ids: dict[str, str] = {}
    for kind in order:
        if kind not in ids:
            ids[kind] = accept_one(engine, events[kind])
        else:
            where = DeliveryFilter(status="delivered", ids=[ids[kind]])
            assert replay(engine, where).replayed == 1
        outcome = attempt(engine, clock, ids[kind])
        assert outcome.ok, (kind, outcome)
    for kind, event in events.items():
        again = engine.accept(event)
        assert again.duplicate and again.delivery_ids == [ids[kind]]
        assert engine.process(ids[kind]) is None  # delivered: nothing more to do
    for delivery_id in ids.values():
        record = engine.store.get_delivery(delivery_id)
        assert record is not None and (record.status, record.attempts) == ("delivered", 2)
    return ids


def shuffled_twice(seed: int) -> list[str]:
    order = sorted(KINDS) * 2
    random.Random(seed).shuffle(order)
    return order


SEEDS = [20261127, 7, 1234]


# -- Salesforce ------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_salesforce_lifecycle_twice_in_shuffled_order_makes_one_task_and_one_case(
    sf_engine: tuple[Engine, ScriptedPlugin, FakeClock], salesforce: FakeSalesforce, seed: int
) -> None:
    engine, plugin, clock = sf_engine
    deliver_each_twice(engine, clock, SF_EVENTS, shuffled_twice(seed))

    (task,) = salesforce.records["Task"].values()
    assert task["CXMind_Call_Id__c"] == "call-1"
    assert "double-billed" in task["Description"]
    assert task["CallDisposition"] == "Refund promised"
    assert task["CallDurationInSeconds"] == 312
    assert task["CXMind_QA_Score__c"] == 87.5
    assert (task["TaskSubtype"], task["Status"]) == ("Call", "Completed")
    (case,) = salesforce.records["Case"].values()
    assert case["CXMind_Call_Id__c"] == "call-1:escalation"
    assert (case["Priority"], case["Status"]) == ("High", "New") and "anger" in case["Subject"]
    assert plugin.failed == []
    assert all(s < 300 or (k, s) == ("get", 404) for k, _, s in salesforce.log), salesforce.log


def test_salesforce_session_expiring_mid_run_costs_one_relogin(
    sf_engine: tuple[Engine, ScriptedPlugin, FakeClock], salesforce: FakeSalesforce
) -> None:
    engine, plugin, clock = sf_engine
    assert attempt(engine, clock, accept_one(engine, SF_EVENTS["call_create"])).ok
    assert salesforce.count("token") == 1
    salesforce.expire_sessions()
    for kind in ("call_summary", "quality_score", "call_outcome"):
        assert attempt(engine, clock, accept_one(engine, SF_EVENTS[kind])).ok
    assert salesforce.count("token") == 2
    assert plugin.failed == []


def test_salesforce_second_401_is_a_dead_letter_not_a_loop(
    sf_engine: tuple[Engine, ScriptedPlugin, FakeClock], salesforce: FakeSalesforce
) -> None:
    engine, plugin, clock = sf_engine
    assert attempt(engine, clock, accept_one(engine, SF_EVENTS["call_create"])).ok
    salesforce.tokens_work = False  # the integration user was deactivated
    salesforce.expire_sessions()
    before = salesforce.count()
    delivery_id = accept_one(engine, SF_EVENTS["call_summary"])

    outcome = attempt(engine, clock, delivery_id)

    assert outcome.kind is OutcomeKind.PERMANENT and outcome.status_code == 401
    reason = dead_reason(engine, plugin, delivery_id)
    assert reason.startswith("permanent:") and "renewing" in reason
    assert salesforce.count() - before == 3  # refused, one token request, refused again
    clock.advance(24 * 3600)
    assert engine.sweep() == 0 and engine.process(delivery_id) is None
    assert salesforce.count() - before == 3
    (only,) = engine.store.attempts_of(delivery_id)
    assert only["status_code"] == 401 and only["provider_code"] == "INVALID_SESSION_ID"


@pytest.mark.parametrize(
    ("status_code", "error_code", "retry_after"),
    [(403, "REQUEST_LIMIT_EXCEEDED", 900.0), (503, "SERVER_UNAVAILABLE", None)],
    ids=["request-limit", "503"],
)
def test_salesforce_rate_limit_and_503_are_retried_then_delivered(
    sf_engine: tuple[Engine, ScriptedPlugin, FakeClock],
    salesforce: FakeSalesforce,
    status_code: int,
    error_code: str,
    retry_after: float | None,
) -> None:
    engine, plugin, clock = sf_engine
    salesforce.fail(status_code, error_code, "fault injected by the test")
    delivery_id = accept_one(engine, SF_EVENTS["call_summary"])
    started = clock.now()

    outcome = attempt(engine, clock, delivery_id)

    assert outcome.kind is OutcomeKind.RETRY
    assert (outcome.status_code, outcome.provider_code) == (status_code, error_code)
    record = engine.store.get_delivery(delivery_id)
    assert record is not None and record.status == "pending" and record.attempts == 1
    assert record.next_attempt_at is not None and record.next_attempt_at > started
    if retry_after is not None:  # the destination's rate_limit_retry_after, not the schedule
        assert record.next_attempt_at == started + timedelta(seconds=retry_after)
    (first,) = engine.store.attempts_of(delivery_id)
    assert (first["outcome"], first["retry_after"]) == ("retry", retry_after)
    assert engine.process(delivery_id) is None  # not due yet

    assert attempt(engine, clock, delivery_id).ok
    assert status(engine, delivery_id) == "delivered"
    assert [a["outcome"] for a in engine.store.attempts_of(delivery_id)] == ["retry", "delivered"]
    assert len(salesforce.find("Task", CXMind_Call_Id__c="call-1")) == 1
    assert plugin.failed == []


def test_salesforce_invalid_field_is_dead_lettered_naming_the_field(
    sf_engine: tuple[Engine, ScriptedPlugin, FakeClock], salesforce: FakeSalesforce
) -> None:
    engine, plugin, clock = sf_engine
    salesforce.schema["Task"].discard("CXMind_QA_Score__c")  # the org lacks the score field
    delivery_id = accept_one(engine, SF_EVENTS["quality_score"])

    assert attempt(engine, clock, delivery_id).kind is OutcomeKind.PERMANENT

    reason = dead_reason(engine, plugin, delivery_id)
    assert reason.startswith("permanent:")
    assert "INVALID_FIELD" in reason and "CXMind_QA_Score__c" in reason


def test_on_delivery_failed_hears_once_of_each_dead_letter(
    sf_engine: tuple[Engine, ScriptedPlugin, FakeClock], salesforce: FakeSalesforce
) -> None:
    engine, plugin, _ = sf_engine
    salesforce.schema["Task"].discard("CXMind_QA_Score__c")
    salesforce.fail(400, "INVALID_FIELD", "No such column", fields=["Nope__c"])
    dead = [accept_one(engine, SF_EVENTS[kind]) for kind in ("call_create", "quality_score")]
    fine = accept_one(engine, SF_EVENTS["call_outcome"])
    # One call's deliveries go one at a time (per-call order): a pass makes the head's attempt and
    # finds the others waiting; each dead head releases the next. Later passes find nothing to do.
    for _ in range(4):
        for delivery_id in [*dead, fine]:
            engine.process(delivery_id)
    assert [status(engine, d) for d in (*dead, fine)] == ["dead", "dead", "delivered"]
    assert sorted(d.id for d, _ in plugin.failed) == sorted(dead)
    for delivery, reason in plugin.failed:
        (letter,) = engine.store.dead_letters_of(delivery.id)
        assert reason == letter["reason"] and reason.startswith("permanent:")


# -- Zendesk ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_zendesk_lifecycle_twice_in_shuffled_order_makes_one_complete_ticket(
    zd_engine: tuple[Engine, ScriptedPlugin, FakeClock], zendesk: FakeZendesk, seed: int
) -> None:
    engine, plugin, clock = zd_engine
    events = {kind: zendesk_event(kind) for kind in KINDS}
    deliver_each_twice(engine, clock, events, shuffled_twice(seed))

    (ticket,) = zendesk.tickets.values()
    assert ticket["external_id"] == "call-1"
    assert ticket["priority"] == "urgent"
    assert {"cxmind", "voice", "voice_inbound", "cxmind_escalation", "sales_lead"} <= set(
        ticket["tags"]
    )
    assert {"cxmind_summary", "qa_pass"} <= set(ticket["tags"])
    assert {"id": QA_FIELD, "value": 92} in ticket["custom_fields"]
    comments = zendesk.comments[ticket["id"]]
    (summary,) = [c for c in comments if "CXMind call summary" in c["body"]]
    assert summary["public"] is False and "refund for order 42" in summary["body"]
    assert zendesk.count("POST", "/api/v2/tickets.json") == 1
    assert plugin.failed == []


def test_zendesk_429_retries_exactly_retry_after_later_without_sleeping(
    zd_engine: tuple[Engine, ScriptedPlugin, FakeClock], zendesk: FakeZendesk
) -> None:
    engine, plugin, clock = zd_engine
    zendesk.fail(
        "GET",
        r"/api/v2/tickets\.json",
        status=429,
        body={"error": "TooManyRequests"},
        headers={"Retry-After": "30"},
    )
    delivery_id = accept_one(engine, zendesk_event("call_create"))
    started = clock.now()

    wall = time.monotonic()
    outcome = attempt(engine, clock, delivery_id)
    assert time.monotonic() - wall < 1.0  # the plugin did not sleep through Retry-After

    assert outcome.kind is OutcomeKind.RETRY and outcome.retry_after == 30
    (first,) = engine.store.attempts_of(delivery_id)
    assert (first["status_code"], first["retry_after"]) == (429, 30)
    record = engine.store.get_delivery(delivery_id)
    assert record is not None and record.next_attempt_at == started + timedelta(seconds=30)
    assert first["started_at"] == started.timestamp()
    clock.advance(29)
    assert engine.process(delivery_id) is None
    assert zendesk.count("GET", "/api/v2/tickets.json") == 1

    assert attempt(engine, clock, delivery_id).ok
    assert clock.now() == started + timedelta(seconds=30)
    assert len(zendesk.tickets) == 1 and plugin.failed == []


@pytest.mark.parametrize(
    ("method", "path", "status_code"),
    [
        ("POST", r"/api/v2/tickets\.json", 503),
        ("GET", r"/api/v2/tickets\.json", 500),
        ("GET", r"/api/v2/users/search\.json", 502),
    ],
    ids=["503 on create", "500 on lookup", "502 on user search"],
)
def test_zendesk_5xx_is_retried_then_delivered(
    zd_engine: tuple[Engine, ScriptedPlugin, FakeClock],
    zendesk: FakeZendesk,
    method: str,
    path: str,
    status_code: int,
) -> None:
    engine, plugin, clock = zd_engine
    zendesk.fail(method, path, status=status_code, body={"error": "ServerError"})
    delivery_id = accept_one(engine, zendesk_event("call_summary"))
    started = clock.now()

    outcome = attempt(engine, clock, delivery_id)

    assert outcome.kind is OutcomeKind.RETRY and outcome.status_code == status_code
    record = engine.store.get_delivery(delivery_id)
    assert record is not None and record.status == "pending"
    assert record.next_attempt_at is not None and record.next_attempt_at > started
    assert attempt(engine, clock, delivery_id).ok
    (ticket,) = zendesk.tickets.values()
    assert sum("CXMind call summary" in c["body"] for c in zendesk.comments[ticket["id"]]) == 1
    assert plugin.failed == []


def test_zendesk_422_is_dead_lettered_with_the_field_details(
    zd_engine: tuple[Engine, ScriptedPlugin, FakeClock], zendesk: FakeZendesk
) -> None:
    engine, plugin, clock = zd_engine
    details: dict[str, Any] = {
        "requester": [{"description": "Requester: Email is not properly formatted"}],
        "priority": [{"description": "Priority: bogus is not valid"}],
    }
    body = {"error": "RecordInvalid", "description": "Record validation errors", "details": details}
    zendesk.fail("POST", r"/api/v2/tickets\.json", status=422, body=body)
    delivery_id = accept_one(engine, zendesk_event("call_create"))

    assert attempt(engine, clock, delivery_id).kind is OutcomeKind.PERMANENT

    reason = dead_reason(engine, plugin, delivery_id)
    assert reason.startswith("permanent: Zendesk: HTTP 422 RecordInvalid")
    assert "requester: Requester: Email is not properly formatted" in reason
    assert "priority: Priority: bogus is not valid" in reason
    assert zendesk.tickets == {}
