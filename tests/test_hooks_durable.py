"""The hooks keep their documented promises across crashes and concurrency: ``on_delivery_failed`` runs
at least once per dead letter even when the process dies between the dead commit and the hook (and
two schedulers do not both take one over), ``on_event`` runs once per event even when two accepts of
it race, wrapper implementations of the observing hooks run, and replay leaves in-flight deliveries
alone. On SQLite and on PostgreSQL."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Generator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pluggy
import pytest
import sqlalchemy.exc
from click.testing import CliRunner

from cxbridge import Delivery, Destination, Outcome, hookimpl
from cxbridge.cli import cli
from cxbridge.clock import FakeClock
from cxbridge.engine import Engine
from cxbridge.outbox import CLAIM_SECONDS
from cxbridge.plugins import PluginManager
from cxbridge.replay import replay
from cxbridge.routing import Accepted
from cxbridge.settings import Settings
from cxbridge.store import DeliveryFilter
from cxbridge.store._schema import _add_dead_letter_outbox
from tests.engine_support import MakeEngine, make_event
from tests.scripted_plugin import ScriptedPlugin

PERMANENT = Outcome.permanent("HTTP 400", status_code=400)


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    """Poll until ``condition`` holds (a bound on a background thread, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.02)


def one_dead_letter(
    make_engine: MakeEngine, tmp_path: Path, store_url: str, plugin: ScriptedPlugin | None = None
) -> tuple[Engine, ScriptedPlugin, FakeClock, str]:
    """An engine whose one delivery died of a permanent failure."""
    engine, plugin, clock = make_engine(
        tmp_path, plugin=plugin or ScriptedPlugin(default=PERMANENT), database_url=store_url
    )
    (delivery_id,) = engine.accept(make_event("call_summary")).delivery_ids
    engine.process(delivery_id)
    return engine, plugin, clock, delivery_id


def hooks_pending(engine: Engine, delivery_id: str) -> bool:
    return any(d["hooks_done_at"] is None for d in engine.store.dead_letters_of(delivery_id))


# -- on_delivery_failed: at least once, across a crash -----------------------------------------------


class ProcessDied(BaseException):
    """Stands in for the process dying: like ``SystemExit``, no ``except Exception`` stops it."""


def _die(*_args: Any, **_kwargs: Any) -> None:
    raise ProcessDied


class DiesInTheHook(ScriptedPlugin):
    @hookimpl
    def on_delivery_failed(self, delivery: Delivery, destination: Destination, reason: str) -> None:
        raise ProcessDied


class PagerDown(ScriptedPlugin):
    @hookimpl
    def on_delivery_failed(self, delivery: Delivery, destination: Destination, reason: str) -> None:
        self.failed.append((delivery, reason))
        raise RuntimeError("pager down")


@pytest.mark.parametrize("when", ["before the hooks", "inside a hook"])
def test_a_crash_after_the_dead_commit_still_calls_on_delivery_failed_once(
    make_engine: MakeEngine,
    tmp_path: Path,
    store_url: str,
    monkeypatch: pytest.MonkeyPatch,
    when: str,
):
    dying = (ScriptedPlugin if when == "before the hooks" else DiesInTheHook)(default=PERMANENT)
    engine, _, clock = make_engine(tmp_path, plugin=dying, database_url=store_url)
    (delivery_id,) = engine.accept(make_event("call_summary")).delivery_ids
    if when == "before the hooks":
        monkeypatch.setattr(engine.outbox, "dispatch", _die)

    with pytest.raises(ProcessDied):
        engine.process(delivery_id)
    record = engine.store.get_delivery(delivery_id)
    assert record is not None and record.status == "dead"  # committed before the crash
    assert hooks_pending(engine, delivery_id)

    # A fresh process on the same store: its scheduler takes the dead letter over once the dying
    # process's claim (or grace) has run out, and never before.
    (tmp_path / "next").mkdir()
    heir = ScriptedPlugin()
    fresh, heir, _ = make_engine(
        tmp_path / "next", plugin=heir, database_url=store_url, clock=clock
    )
    assert fresh.outbox.dispatch_left_over() == 0
    clock.advance(CLAIM_SECONDS + 1)
    fresh.start(threads=1, interval=0.02)
    try:
        wait_for(lambda: not hooks_pending(fresh, delivery_id), "the scheduler to run the hooks")
    finally:
        fresh.stop()
    clock.advance(CLAIM_SECONDS + 1)
    assert fresh.outbox.dispatch_left_over() == 0  # done is done

    ((delivery, reason),) = heir.failed
    assert delivery.id == delivery_id and delivery.attempt == 1
    assert reason == "permanent: HTTP 400"


def test_a_store_error_after_the_dead_commit_leaves_the_hooks_to_the_scheduler(
    make_engine: MakeEngine, tmp_path: Path, store_url: str, monkeypatch: pytest.MonkeyPatch
):
    engine, plugin, clock = make_engine(
        tmp_path, plugin=ScriptedPlugin(default=PERMANENT), database_url=store_url
    )
    (delivery_id,) = engine.accept(make_event("call_summary")).delivery_ids
    claim = engine.store.claim_dead_letters

    def database_hiccup(**kwargs: Any) -> Any:
        monkeypatch.setattr(engine.store, "claim_dead_letters", claim)
        raise sqlalchemy.exc.OperationalError("UPDATE dead_letters", {}, Exception("locked"))

    monkeypatch.setattr(engine.store, "claim_dead_letters", database_hiccup)

    assert engine.process(delivery_id) == PERMANENT  # the worker hears no store error
    assert plugin.failed == [] and hooks_pending(engine, delivery_id)
    clock.advance(CLAIM_SECONDS + 1)
    assert engine.outbox.dispatch_left_over() == 1
    assert [d.id for d, _ in plugin.failed] == [delivery_id]


def test_two_schedulers_never_both_dispatch_one_dead_letter(
    make_engine: MakeEngine, tmp_path: Path, store_url: str, monkeypatch: pytest.MonkeyPatch
):
    engine, _, clock = make_engine(
        tmp_path, plugin=ScriptedPlugin(default=PERMANENT), database_url=store_url
    )
    monkeypatch.setattr(engine.outbox, "dispatch", lambda ids: 0)  # crashed before every hook
    dead = []
    for _ in range(12):
        (delivery_id,) = engine.accept(make_event("call_summary")).delivery_ids
        engine.process(delivery_id)
        dead.append(delivery_id)
    clock.advance(CLAIM_SECONDS + 1)

    schedulers = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        other, plugin, _ = make_engine(tmp_path / name, database_url=store_url, clock=clock)
        other.outbox.batch = 2  # many small claims, so the two interleave
        schedulers.append((other, plugin))
    start = threading.Barrier(2, timeout=30)

    def drain(scheduler: Engine) -> int:
        start.wait()
        total = 0
        while (claimed := scheduler.outbox.dispatch_left_over()) > 0:
            total += claimed
        return total

    with ThreadPoolExecutor(2) as pool:
        counts = list(pool.map(drain, [s for s, _ in schedulers]))

    assert sum(counts) == len(dead)
    heard = sorted(d.id for _, plugin in schedulers for d, _ in plugin.failed)
    assert heard == sorted(dead)  # each exactly once, by one of the two
    assert not any(hooks_pending(engine, d) for d in dead)


def test_a_raising_hook_is_logged_and_not_called_again(
    make_engine: MakeEngine, tmp_path: Path, store_url: str, caplog: pytest.LogCaptureFixture
):
    engine, plugin, clock, delivery_id = one_dead_letter(
        make_engine, tmp_path, store_url, PagerDown(default=PERMANENT)
    )

    assert "plugin 'scripted' failed in hook on_delivery_failed" in caplog.text
    assert not hooks_pending(engine, delivery_id)  # isolated per implementation: counts as done
    clock.advance(CLAIM_SECONDS + 1)
    assert engine.outbox.dispatch_left_over() == 0
    assert [d.id for d, _ in plugin.failed] == [delivery_id]


def test_a_replayed_delivery_that_dies_again_is_heard_of_again(
    make_engine: MakeEngine, tmp_path: Path, store_url: str
):
    engine, plugin, _, delivery_id = one_dead_letter(make_engine, tmp_path, store_url)
    assert replay(engine, DeliveryFilter(ids=[delivery_id])).replayed == 1
    engine.process(delivery_id)

    assert [d.id for d, _ in plugin.failed] == [delivery_id, delivery_id]
    assert [d.attempt for d, _ in plugin.failed] == [1, 2]
    assert len(engine.store.dead_letters_of(delivery_id)) == 2


# -- on_event: once, after the commit --------------------------------------------------------------


def test_two_concurrent_accepts_of_one_event_call_on_event_once(
    make_engine: MakeEngine, tmp_path: Path, store_url: str, monkeypatch: pytest.MonkeyPatch
):
    engine, plugin, _ = make_engine(tmp_path, database_url=store_url)
    both_checked = threading.Barrier(2, timeout=30)
    has_event = engine.store.has_event

    def checked_by_both(tenant: str, event_id: str) -> bool:
        found = has_event(tenant, event_id)
        both_checked.wait()  # neither has stored it yet: both go on to fan out
        return found

    monkeypatch.setattr(engine.store, "has_event", checked_by_both)
    event = make_event(event_id="evt-race")
    with ThreadPoolExecutor(2) as pool:
        results: list[Accepted] = list(pool.map(engine.accept, [event, event]))

    assert sorted(r.duplicate for r in results) == [False, True]
    assert plugin.events == [event]
    assert engine.store.count_deliveries(DeliveryFilter(status=None)) == 2


def test_on_event_sees_the_event_already_stored(
    make_engine: MakeEngine, tmp_path: Path, store_url: str
):
    seen: list[bool] = []

    class Auditor:
        @hookimpl
        def on_event(self, event: Any, tenant: str) -> None:
            seen.append(engine.store.has_event(tenant, event.id))

    manager = PluginManager()
    manager.register(Auditor(), name="auditor")
    engine, _, _ = make_engine(tmp_path, database_url=store_url, manager=manager)
    engine.accept(make_event())
    assert seen == [True]


# -- wrappers of the observing hooks ---------------------------------------------------------------


class Wrapping:
    """New-style and old-style wrappers of every observing hook, recording around the others."""

    def __init__(self, log: list[str]) -> None:
        self.log = log

    @hookimpl(wrapper=True)
    def on_event(self, tenant: str) -> Generator[None, object, object]:
        self.log.append(f"new on_event {tenant} before")
        result = yield
        self.log.append(f"new on_event after {result}")
        return result

    @hookimpl(hookwrapper=True)
    def on_delivery_failed(self, reason: str) -> Generator[None, pluggy.Result[object], None]:
        self.log.append(f"old on_delivery_failed {reason} before")
        outcome = yield
        self.log.append(f"old on_delivery_failed after {outcome.get_result()}")

    @hookimpl(wrapper=True)
    def shutdown(self) -> Generator[None, object, object]:
        self.log.append("new shutdown before")
        return (yield)


class Inner:
    def __init__(self, log: list[str]) -> None:
        self.log = log

    @hookimpl
    def on_event(self) -> None:
        self.log.append("inner on_event")

    @hookimpl
    def on_delivery_failed(self) -> str:
        self.log.append("inner on_delivery_failed")
        return "paged"

    @hookimpl
    def shutdown(self) -> None:
        self.log.append("inner shutdown")


class BrokenWrapper:
    @hookimpl(wrapper=True, tryfirst=True)
    def on_event(self) -> Generator[None, object, object]:
        raise RuntimeError("tracer misconfigured")
        yield  # a generator, so pluggy takes it for a wrapper

    @hookimpl(wrapper=True)
    def shutdown(self) -> Generator[None, object, None]:
        yield
        yield  # one yield too many


def test_wrapper_hookimpls_of_observing_hooks_run_around_the_others(
    make_engine: MakeEngine,
    tmp_path: Path,
    store_url: str,
    caplog: pytest.LogCaptureFixture,
):
    log: list[str] = []
    manager = PluginManager()
    manager.register(Inner(log), name="inner")
    manager.register(Wrapping(log), name="wrapping")
    manager.register(BrokenWrapper(), name="broken")
    engine, _, _ = make_engine(
        tmp_path,
        plugin=ScriptedPlugin(default=PERMANENT),
        database_url=store_url,
        manager=manager,
    )
    with caplog.at_level(logging.ERROR):
        (delivery_id,) = engine.accept(make_event("call_summary")).delivery_ids
        engine.process(delivery_id)
        engine.close()

    assert log == [
        "new on_event acme before",
        "inner on_event",
        "new on_event after []",
        "old on_delivery_failed permanent: HTTP 400 before",
        "inner on_delivery_failed",
        "old on_delivery_failed after ['paged']",
        "new shutdown before",
        "inner shutdown",
    ]
    assert "plugin 'broken' failed in hook on_event" in caplog.text
    assert "plugin 'broken': its wrapper of hook shutdown yields more than once" in caplog.text


# -- replay leaves in-flight deliveries alone --------------------------------------------------------


def test_replay_skips_a_delivery_whose_attempt_is_running(
    make_engine: MakeEngine, tmp_path: Path, store_url: str
):
    engine, plugin, _ = make_engine(tmp_path, database_url=store_url)
    (running,) = engine.accept(make_event("call_summary")).delivery_ids
    (waiting,) = engine.accept(make_event("call_summary")).delivery_ids
    assert engine.store.lease(running, engine.lease_seconds) is not None  # an attempt is running

    result = replay(engine, DeliveryFilter(status=None, ids=[running, waiting]))

    assert (result.replayed, result.in_flight, result.pending) == (0, 1, 1)
    assert str(result) == (
        "0 deliveries enqueued again; 2 skipped: 1 in flight (an attempt is running), "
        "1 still pending (their next attempt is scheduled)"
    )
    assert engine.process(running) is None  # the lease still holds: no second sender
    assert plugin.calls == []


def test_cli_replay_says_what_it_skipped_and_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    (tmp_path / "acme.yaml").write_text(
        "tenant: acme\n"
        "destinations:\n"
        "  hook: {type: http, events: [call_summary], url: 'http://127.0.0.1:9/hook',"
        " allow_networks: ['127.0.0.0/8']}\n"
    )
    monkeypatch.setenv("CXBRIDGE_CONFIG_DIR", str(tmp_path))
    monkeypatch.setenv("CXBRIDGE_DATABASE_URL", f"sqlite:///{tmp_path / 'store.db'}")
    monkeypatch.setenv("CXBRIDGE_BROKER_URL", f"sqlite:///{tmp_path / 'broker.db'}")
    engine = Engine(Settings())
    try:
        (running,) = engine.accept(make_event("call_summary")).delivery_ids
        engine.accept(make_event("call_summary"))
        assert engine.store.lease(running, 60) is not None  # an attempt is running right now

        run = CliRunner().invoke(cli, ["replay", "-t", "acme", "--status", "pending", "--yes"])

        assert run.exit_code == 0, run.output
        assert "2 deliveries match" in run.stdout
        assert (
            "0 deliveries enqueued again; 2 skipped: 1 in flight (an attempt is running), "
            "1 still pending (their next attempt is scheduled)"
        ) in run.stdout
        assert engine.process(running) is None  # still leased: no second sender
    finally:
        engine.close()


# -- upgrading a store -----------------------------------------------------------------------------


def test_upgrading_a_version_1_store_does_not_call_hooks_for_old_dead_letters(
    make_engine: MakeEngine, tmp_path: Path, store_url: str
):
    engine, plugin, clock, delivery_id = one_dead_letter(make_engine, tmp_path, store_url)
    with engine.store.engine.begin() as conn:  # back to the version 1 table, this dead letter kept
        conn.exec_driver_sql("DROP INDEX ix_dead_letters_hooks")
        for column in ("hooks_done_at", "hooks_claimed_until"):
            conn.exec_driver_sql(f"ALTER TABLE dead_letters DROP COLUMN {column}")

    with engine.store.engine.begin() as conn:
        _add_dead_letter_outbox(conn)
    (letter,) = engine.store.dead_letters_of(delivery_id)
    assert letter["hooks_done_at"] == letter["dead_at"]
    clock.advance(CLAIM_SECONDS + 1)
    assert engine.outbox.dispatch_left_over() == 0
    assert len(plugin.failed) == 1  # only the call made when it died
