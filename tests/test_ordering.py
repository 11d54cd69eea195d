"""Per-call order: the deliveries of one call to an ordered destination are attempted one at a time,
in the order their events occurred. The store arbitrates (only a key's head can be leased), so it
holds on every broker and across processes; waiting deliveries are not enqueued at all.

Most tests run the engine on a fake clock with Dramatiq's ``StubBroker`` (the messages sent are read
off its queues) and the store on SQLite and PostgreSQL; the last ones run real workers on the
embedded broker, Redis and RabbitMQ.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dramatiq
import pytest
import sqlalchemy as sa

from cxbridge import Delivery, Outcome, routing
from cxbridge.config import load_tenant
from cxbridge.engine import Engine
from cxbridge.errors import PluginError
from cxbridge.plugins import PluginManager
from cxbridge.replay import replay
from cxbridge.store import DeliveryFilter, Store
from cxbridge.store._schema import MIGRATIONS
from tests.engine_support import MakeEngine, make_event, wait_until_settled
from tests.scripted_plugin import ScriptedOptions, ScriptedPlugin
from tests.test_engine_brokers import running_engine

# ``crm`` keeps per-call order (``ordered: true`` over the scripted type's default, off);
# ``hook`` takes every event as it comes.
TENANT = """
tenant: acme
destinations:
  crm:
    type: scripted
    events: ["*"]
    ordered: true
  hook:
    type: scripted
    events: [quality_score]
"""
ORDERED_ONLY = TENANT.split("  hook:")[0]
T0 = datetime(2026, 1, 1, 9, 0, tzinfo=UTC)
KINDS_IN_ORDER = ("call_create", "call_outcome", "call_summary", "quality_score")


def call_event(kind: str, call: str = "call-1", minute: int = 0) -> Any:
    """The ``kind`` event of ``call``, occurred ``minute`` minutes after T0."""
    return make_event(
        kind,
        event_id=f"{call}-{kind}",
        score=90,
        occurredAt=(T0 + timedelta(minutes=minute)).isoformat(),
        call={"id": call},
    )


def accept(engine: Engine, event: Any) -> str:
    """Accept an event; the id of its delivery to ``crm``."""
    (crm,) = [
        i
        for i in engine.accept(event).delivery_ids
        if i == routing.delivery_id("acme", event.id, "crm")
    ]
    return crm


def sent(engine: Engine) -> list[str]:
    """The delivery ids of the messages sent since the last call (taken off the stub queues)."""
    ids = []
    for queue in engine.broker.queues.values():
        while not queue.empty():
            ids.append(dramatiq.Message.decode(queue.get_nowait()).args[0])
    return ids


def kinds(plugin: ScriptedPlugin, destination: str = "crm") -> list[str]:
    return [d.event_type for d in plugin.calls if d.destination == destination]


def status(engine: Engine, delivery_id: str) -> str:
    record = engine.store.get_delivery(delivery_id)
    assert record is not None
    return record.status


@pytest.fixture
def ordered(
    make_engine: MakeEngine, tmp_path: Path, store_url: str
) -> tuple[Engine, ScriptedPlugin, Any]:
    return make_engine(tmp_path, tenant_yaml=ORDERED_ONLY, database_url=store_url, short_delay=0)


def test_summary_accepted_before_create_is_attempted_after_it(ordered) -> None:
    engine, plugin, _ = ordered
    summary = accept(engine, call_event("call_summary", minute=5))
    create = accept(engine, call_event("call_create", minute=0))  # arrives late, occurred first
    assert sent(engine) == [summary, create]  # the summary was the head when it arrived

    assert engine.process(summary) is None  # now it waits behind the create
    assert plugin.calls == []
    assert engine.process(create).ok  # type: ignore[union-attr]
    assert sent(engine) == [summary]  # the create's finish enqueues the next head
    assert engine.process(summary).ok  # type: ignore[union-attr]
    assert kinds(plugin) == ["call_create", "call_summary"]


def test_successors_are_enqueued_one_by_one_as_each_head_finishes(ordered) -> None:
    engine, plugin, clock = ordered
    plugin.script.append(Outcome.retry("HTTP 503", retry_after=30))
    ids = [accept(engine, call_event(k, minute=n)) for n, k in enumerate(KINDS_IN_ORDER)]
    assert sent(engine) == [ids[0]]  # only the head; the others hold no message, no thread
    assert engine.sweep() == 0  # nor does the sweep send them

    assert not engine.process(ids[0]).ok  # type: ignore[union-attr]
    clock.advance(10)  # the head is in backoff: nothing else of the call may go
    assert engine.sweep() == 0 and [engine.process(i) for i in ids[1:]] == [None] * 3
    clock.advance(20)
    assert engine.sweep() == 1 and sent(engine) == [ids[0]]
    for n, delivery_id in enumerate(ids):
        assert engine.process(delivery_id).ok  # type: ignore[union-attr]
        assert sent(engine) == ids[n + 1 : n + 2]
    assert kinds(plugin) == ["call_create", *KINDS_IN_ORDER]


def test_a_dead_head_releases_its_successor(ordered) -> None:
    engine, plugin, _ = ordered
    plugin.script.append(Outcome.permanent("HTTP 400"))
    create = accept(engine, call_event("call_create", minute=0))
    summary = accept(engine, call_event("call_summary", minute=5))
    assert sent(engine) == [create]

    assert engine.process(create).kind.value == "permanent"  # type: ignore[union-attr]
    assert status(engine, create) == "dead"
    assert sent(engine) == [summary]
    assert engine.process(summary).ok  # type: ignore[union-attr]
    assert [(d.id, reason) for d, reason in plugin.failed] == [(create, "permanent: HTTP 400")]


def test_a_removed_destination_kills_the_whole_key_in_order(ordered) -> None:
    engine, plugin, _ = ordered
    ids = [accept(engine, call_event(k, minute=n)) for n, k in enumerate(KINDS_IN_ORDER[:3])]
    sent(engine)
    del engine.tenants["acme"].destinations["crm"]
    for delivery_id in ids:  # each dead letter (no attempt) releases the next
        assert engine.process(delivery_id) is not None
        assert status(engine, delivery_id) == "dead"
    assert [d.id for d, _ in plugin.failed] == ids and plugin.calls == []


def test_a_waiting_successor_does_not_block_other_calls(
    make_engine: MakeEngine, tmp_path: Path, store_url: str
) -> None:
    engine, plugin, _ = make_engine(tmp_path, tenant_yaml=TENANT, database_url=store_url)
    plugin.default = lambda d: (
        Outcome.retry("HTTP 503", retry_after=3600)
        if d.event_id == "call-1-call_create"
        else Outcome.delivered()
    )
    stuck = accept(engine, call_event("call_create", "call-1", 0))
    waiting = accept(engine, call_event("call_summary", "call-1", 5))
    others = [accept(engine, call_event(k, "call-2", n)) for n, k in enumerate(KINDS_IN_ORDER)]
    # The call's quality score goes to the ordered crm (it waits) and to the unordered hook.
    scores = engine.accept(call_event("quality_score", "call-1", 9)).delivery_ids
    first = sent(engine)
    assert waiting not in first and others[0] in first

    engine.process(stuck)
    for delivery_id in [waiting, *others, *scores]:
        engine.process(delivery_id)
    assert status(engine, stuck) == status(engine, waiting) == "pending"
    assert [status(engine, i) for i in others] == ["delivered"] * 4
    assert kinds(plugin, "hook") == ["quality_score"]  # unordered: went at once, in parallel


def test_crash_between_the_heads_finish_and_enqueueing_its_successor_loses_nothing(
    ordered, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine, plugin, _ = ordered
    create = accept(engine, call_event("call_create", minute=0))
    summary = accept(engine, call_event("call_summary", minute=5))
    sent(engine)
    # The process dies right after the head's outcome is committed.
    monkeypatch.setattr(engine, "_enqueue_next_head", lambda record: None)
    assert engine.process(create).ok  # type: ignore[union-attr]
    assert sent(engine) == []
    monkeypatch.undo()

    assert engine.sweep() == 1 and sent(engine) == [summary]
    assert engine.process(summary).ok  # type: ignore[union-attr]
    assert kinds(plugin) == ["call_create", "call_summary"]


def test_a_message_that_finds_its_delivery_waiting_leaves_it_to_the_head(
    ordered, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine, plugin, _ = ordered
    summary = accept(engine, call_event("call_summary", minute=5))  # the head: sent
    create = accept(engine, call_event("call_create", minute=0))  # occurred first: the new head
    sent(engine)
    assert engine.process(summary) is None
    assert sent(engine) == []  # not sent again and again while it waits
    monkeypatch.setattr(engine, "_enqueue_next_head", lambda record: None)  # dies after the head
    assert engine.process(create).ok  # type: ignore[union-attr]
    monkeypatch.undo()
    # The waiting delivery's message was used up, so the next sweep sends it (not lost_after later).
    assert engine.sweep() == 1 and sent(engine) == [summary]
    assert engine.process(summary).ok  # type: ignore[union-attr]
    assert kinds(plugin) == ["call_create", "call_summary"]


def test_an_event_that_occurred_earlier_waits_for_the_attempt_in_flight(ordered) -> None:
    engine, plugin, _ = ordered
    during: list[Any] = []

    def answer(delivery: Delivery) -> Outcome:
        if delivery.event_type == "call_summary" and not during:
            # While the summary's attempt runs, the call's create arrives (it occurred earlier).
            create = accept(engine, call_event("call_create", minute=0))
            during.extend([create, sent(engine), engine.process(create)])
        return Outcome.delivered()

    plugin.default = answer
    summary = accept(engine, call_event("call_summary", minute=5))
    assert engine.process(summary).ok  # type: ignore[union-attr]

    create, sent_at_accept, attempted = during
    assert sent_at_accept == [summary]  # [summary] was its own message; the create got none
    assert attempted is None  # one attempt of the call at a time
    assert sent(engine) == [create]  # the summary's finish enqueues it
    assert engine.process(create).ok  # type: ignore[union-attr]
    # Order is by occurrence among deliveries pending together; the create came too late for that.
    assert kinds(plugin) == ["call_summary", "call_create"]


def test_an_event_that_occurred_before_one_already_delivered_goes_at_once(ordered) -> None:
    engine, plugin, _ = ordered
    summary = accept(engine, call_event("call_summary", minute=5))
    assert engine.process(summary).ok  # type: ignore[union-attr]
    sent(engine)
    create = accept(engine, call_event("call_create", minute=0))
    assert sent(engine) == [create]
    assert engine.process(create).ok  # type: ignore[union-attr]
    assert kinds(plugin) == ["call_summary", "call_create"]


def test_a_replayed_dead_letter_goes_before_later_events_of_its_call(ordered) -> None:
    engine, plugin, clock = ordered
    plugin.script.extend([Outcome.permanent("HTTP 400"), Outcome.retry("HTTP 503", retry_after=60)])
    create = accept(engine, call_event("call_create", minute=0))
    summary = accept(engine, call_event("call_summary", minute=5))
    engine.process(create)  # dead
    engine.process(summary)  # released, then retrying
    sent(engine)

    assert replay(engine, DeliveryFilter(ids=[create])).replayed == 1
    assert sent(engine) == [create]
    clock.advance(60)
    assert engine.process(summary) is None  # due, but the replayed create occurred earlier
    assert engine.process(create).ok  # type: ignore[union-attr]
    assert sent(engine) == [summary]
    assert engine.process(summary).ok  # type: ignore[union-attr]
    assert kinds(plugin) == ["call_create", "call_summary", "call_create", "call_summary"]


def test_unordered_destinations_take_events_as_they_come(
    make_engine: MakeEngine, tmp_path: Path
) -> None:
    engine, _, _ = make_engine(tmp_path, tenant_yaml=TENANT.replace("true", "false"))
    ids = []
    for n, kind in enumerate(KINDS_IN_ORDER):
        ids += engine.accept(call_event(kind, minute=n)).delivery_ids
    assert sorted(sent(engine)) == sorted(ids)
    assert all(engine.process(i).ok for i in reversed(ids))  # type: ignore[union-attr]


# -- configuration ---------------------------------------------------------------------------------


class _OrderedType:
    @staticmethod
    def register_destinations(register: Any) -> None:
        register("crmish", ScriptedOptions, ordering="call")


def test_plugins_choose_the_default_and_a_destination_may_override_it(tmp_path: Path) -> None:
    from cxbridge.hookspecs import hookimpl

    manager = PluginManager()
    manager.register(ScriptedPlugin(), name="scripted")
    plugin = type("P", (), {"register_destinations": hookimpl(_OrderedType.register_destinations)})
    manager.register(plugin, name="crmish")
    tenant_file = tmp_path / "acme.yaml"
    tenant_file.write_text(
        "tenant: acme\n"
        "destinations:\n"
        "  a: {type: crmish, events: ['*']}\n"
        "  b: {type: crmish, events: ['*'], ordered: false}\n"
        "  c: {type: scripted, events: ['*']}\n"
        "  d: {type: scripted, events: ['*'], ordered: true}\n"
    )
    tenant = load_tenant(tenant_file, manager.destination_types, {})
    assert {n: d.ordered for n, d in tenant.destinations.items()} == {
        "a": True,
        "b": False,
        "c": False,
        "d": True,
    }


def test_a_wrong_ordered_value_is_reported_where_it_is(tmp_path: Path) -> None:
    from cxbridge.errors import ConfigError

    manager = PluginManager()
    manager.register(ScriptedPlugin(), name="scripted")
    tenant_file = tmp_path / "acme.yaml"
    tenant_file.write_text(
        "tenant: acme\ndestinations:\n  crm:\n    type: scripted\n    events: ['*']\n"
        "    ordered: sometimes\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_tenant(tenant_file, manager.destination_types, {})
    assert "acme.yaml:6:" in str(caught.value) and "ordered" in str(caught.value)


def test_a_plugin_registering_an_unknown_ordering_is_refused() -> None:
    from cxbridge.hookspecs import hookimpl

    class Bad:
        @hookimpl
        def register_destinations(self, register: Any) -> None:
            register("bad", ScriptedOptions, ordering="caller")

    with pytest.raises(PluginError, match="ordering must be 'call' or None"):
        PluginManager().register(Bad(), name="bad")


def test_crm_plugins_order_by_call_and_the_webhook_plugin_does_not() -> None:
    manager = PluginManager(allow=["salesforce", "zendesk", "http"])
    manager.load_entrypoints()
    types = manager.destination_types
    assert (types["salesforce"].ordering, types["zendesk"].ordering) == ("call", "call")
    assert types["http"].ordering is None


# -- the store -------------------------------------------------------------------------------------


def test_migrating_a_database_from_before_ordering_adds_its_columns(store_url: str) -> None:
    store = Store(store_url)
    latest = store.migrate()
    with store.engine.begin() as conn:  # turn it back into the version before
        conn.exec_driver_sql("DROP INDEX ix_deliveries_order")
        for column in ("order_key", "order_at"):
            conn.exec_driver_sql(f"ALTER TABLE deliveries DROP COLUMN {column}")
        before = [m.__name__ for m in MIGRATIONS].index("_add_ordering")  # later ones may follow
        conn.exec_driver_sql(f"UPDATE cxbridge_schema_version SET version = {before}")
    store.close()
    store = Store(store_url)

    assert store.migrate() == latest
    with store.engine.begin() as conn:
        inspector = sa.inspect(conn)
        assert {"order_key", "order_at"} <= {c["name"] for c in inspector.get_columns("deliveries")}
        assert "ix_deliveries_order" in {i["name"] for i in inspector.get_indexes("deliveries")}
    assert store.migrate() == latest  # nothing left to do
    store.close()


def test_leases_of_one_key_take_turns_on_postgresql(
    make_engine: MakeEngine, tmp_path: Path, postgres_store_url: str
) -> None:
    """Under READ COMMITTED, a lease not yet committed is invisible to a second lease of the same
    key; the per-key advisory lock makes the second wait and then see it. (SQLite takes one write
    transaction at a time, so there the question does not arise.)"""
    engine, _, _ = make_engine(tmp_path, tenant_yaml=TENANT, database_url=postgres_store_url)
    store = engine.store
    summary = accept(engine, call_event("call_summary", minute=5))
    holding, go = threading.Event(), threading.Event()
    raw_write = store._raw_write

    @contextlib.contextmanager
    def late_commit() -> Iterator[Any]:
        with raw_write() as cursor:
            yield cursor
            if threading.current_thread().name == "lease-summary":
                holding.set()
                go.wait(30)

    store._raw_write = late_commit  # type: ignore[method-assign]
    results: dict[str, Any] = {}
    first = threading.Thread(
        target=lambda: results.update(summary=store.lease(summary, 60)), name="lease-summary"
    )
    first.start()
    assert holding.wait(30)  # leased, not committed
    create = accept(engine, call_event("call_create", minute=0))  # occurred earlier
    second = threading.Thread(target=lambda: results.update(create=store.lease(create, 60)))
    second.start()
    deadline = time.monotonic() + 30
    while second.is_alive() and time.monotonic() < deadline and not _advisory_lock_waits(store):
        time.sleep(0.01)
    go.set()
    first.join(30)
    second.join(30)
    assert results["summary"] is not None
    assert results["create"] is None  # waits for the attempt in flight


def _advisory_lock_waits(store: Store) -> bool:
    with store.engine.connect() as conn:
        query = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        return bool(conn.exec_driver_sql(query).scalar())


# -- real workers on every broker ------------------------------------------------------------------


def test_real_workers_attempt_each_call_one_at_a_time_in_order(
    make_engine: MakeEngine,
    tmp_path: Path,
    broker_url: str,
    store_url: str,
) -> None:
    calls, lock = defaultdict(list), threading.Lock()
    in_flight: dict[str, str] = {}
    overlaps: list[tuple[str, str]] = []

    def answer(delivery: Delivery) -> Outcome:
        call = delivery.event_id.rsplit("-", 1)[0]
        with lock:
            if call in in_flight:
                overlaps.append((in_flight[call], delivery.event_id))
            in_flight[call] = delivery.event_id
            calls[call].append((delivery.event_id, delivery.attempt))
        time.sleep(0.005)  # an attempt takes a moment, so overlapping attempts would meet
        with lock:
            del in_flight[call]
        if delivery.attempt == 1 and delivery.event_id.endswith("-1"):
            return Outcome.retry("HTTP 503", retry_after=0.2)  # every call's second event
        return Outcome.delivered()

    with running_engine(
        make_engine,
        tmp_path,
        broker_url,
        threads=8,
        plugin=ScriptedPlugin(default=answer),
        tenant_yaml=ORDERED_ONLY,
        database_url=store_url,
    ) as engine:
        for n in range(4):  # each call's events in the order they occurred, back to back
            for call in range(12):
                engine.accept(
                    make_event(
                        KINDS_IN_ORDER[n],
                        event_id=f"c{call}-{n}",
                        score=90,
                        occurredAt=(T0 + timedelta(minutes=n)).isoformat(),
                        call={"id": f"c{call}"},
                    )
                )
        counts = wait_until_settled(engine)

    assert counts == {"delivered": 48}
    assert overlaps == []
    for call, attempts in calls.items():
        assert attempts == [
            (f"{call}-0", 1),
            (f"{call}-1", 1),
            (f"{call}-1", 2),
            (f"{call}-2", 1),
            (f"{call}-3", 1),
        ]
