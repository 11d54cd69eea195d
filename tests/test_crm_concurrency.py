"""The CRM plugins under concurrency: many calls' events at once, through the engine with a real
worker of 8 threads (embedded broker, SQLite store), against the fake Zendesk and Salesforce.

Each delivery finds its call's record or creates it; two events of one call attempted at the same
moment would both miss and both create. Per-call order (on by default for both types) attempts a
call's events one at a time, so: one ticket per call, one Task per call, one attempt per delivery.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cxbridge import Event, parse_event
from cxbridge.engine import Engine
from cxbridge.plugins import PluginManager
from cxbridge.store import DeliveryFilter
from cxbridge.testing.fakes.salesforce import FakeSalesforce
from cxbridge.testing.fakes.zendesk import FakeZendesk
from tests.engine_support import MakeEngine, wait_until_settled
from tests.test_crm_engine import (  # noqa: F401 - salesforce and zendesk are fixtures
    salesforce,
    salesforce_tenant,
    zendesk,
    zendesk_tenant,
)
from tests.test_engine_brokers import running_engine

CALLS, CALLERS, THREADS = 125, 25, 8
KINDS = ("call_create", "call_outcome", "call_summary", "quality_score")
T0 = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
EXTRA: dict[str, dict[str, Any]] = {
    "call_create": {},
    "call_outcome": {"ai": {"emotion": {"label": "anger", "score": 0.91}, "signal": "escalation"}},
    "call_summary": {"ai": {"summary": "Customer wants a refund.", "conclusions": ["Refund"]}},
    "quality_score": {"qi": {"score": 92, "passed": True}},
}


def phone(caller: int) -> str:
    return f"+1 555 01{caller:02d} 000"


def events() -> list[Event]:
    """125 calls from 25 callers (five calls each, so callers are shared across calls), each call's
    four events in the order they occurred, all back to back."""
    result = []
    for call in range(CALLS):
        caller = phone(call // (CALLS // CALLERS))
        body = {
            "id": f"call-{call}",
            "direction": "inbound",
            "from": caller,
            "startedAt": T0.isoformat(),
            "agent": {"id": "agent-7", "name": "Ann Agent"},
            "customer": {"phone": caller, "name": f"Caller {call // (CALLS // CALLERS)}"},
        }
        for n, kind in enumerate(KINDS):
            event = {
                "id": f"call-{call}-{kind}",
                "type": kind,
                "occurredAt": (T0 + timedelta(minutes=n)).isoformat(),
                "tenant": "acme",
                "call": body,
                **EXTRA[kind],
            }
            result.append(parse_event(event))
    return result


def run_through_a_worker(
    make_engine: MakeEngine, tmp_path: Path, tenant: str, env: dict[str, str]
) -> Engine:
    """Accept every event back to back into an engine whose worker runs 8 threads, and wait until
    nothing is pending."""
    manager = PluginManager(allow=["salesforce", "zendesk"])
    manager.load_entrypoints()
    broker_url = f"sqlite:///{tmp_path / 'broker.db'}"
    with running_engine(
        make_engine,
        tmp_path,
        broker_url,
        threads=THREADS,
        tenant_yaml=tenant,
        env=env,
        manager=manager,
    ) as engine:
        for event in events():
            engine.accept(event)
        assert wait_until_settled(engine, timeout=90) == {"delivered": CALLS * len(KINDS)}
    return engine


def attempts_per_delivery(engine: Engine) -> Counter[int]:
    records = engine.store.list_deliveries(DeliveryFilter(status=None))
    return Counter(len(engine.store.attempts_of(r.id)) for r in records)


def test_zendesk_gets_one_ticket_per_call_and_one_user_per_caller(
    make_engine: MakeEngine,
    tmp_path: Path,
    zendesk: FakeZendesk,  # noqa: F811 - the fixture imported above
) -> None:
    engine = run_through_a_worker(make_engine, tmp_path, *zendesk_tenant(zendesk))

    per_call = Counter(t["external_id"] for t in zendesk.tickets.values())
    print(
        f"\nzendesk: {len(zendesk.tickets)} tickets, {len(zendesk.users)} users, "
        f"{zendesk.count()} requests"
    )
    assert per_call == {f"call-{n}": 1 for n in range(CALLS)}
    assert sorted(u["phone"] for u in zendesk.users.values()) == sorted(
        phone(n) for n in range(CALLERS)
    )
    assert attempts_per_delivery(engine) == {1: CALLS * len(KINDS)}
    for ticket in zendesk.tickets.values():  # every event met the call's one ticket
        assert {"cxmind_escalation", "cxmind_summary", "qa_pass"} <= set(ticket["tags"])


def test_salesforce_gets_one_task_per_call_without_upsert_races(
    make_engine: MakeEngine,
    tmp_path: Path,
    salesforce: FakeSalesforce,  # noqa: F811 - the fixture imported above
) -> None:
    engine = run_through_a_worker(make_engine, tmp_path, *salesforce_tenant(salesforce))

    tasks = Counter(t["CXMind_Call_Id__c"] for t in salesforce.records["Task"].values())
    print(f"\nsalesforce: {sum(tasks.values())} tasks, {salesforce.count()} requests")
    assert tasks == {f"call-{n}": 1 for n in range(CALLS)}
    assert attempts_per_delivery(engine) == {1: CALLS * len(KINDS)}  # no race, no retry
    summaries = [t for t in salesforce.records["Task"].values() if t.get("Description")]
    assert len(summaries) == CALLS
