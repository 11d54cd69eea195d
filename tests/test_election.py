"""The scheduler election through the store: one leader at a time, and a dead leader is replaced."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from cxbridge.clock import FakeClock
from cxbridge.election import Election
from cxbridge.store import Store


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    store = Store(store_url, clock=FakeClock(datetime(2026, 1, 1, tzinfo=UTC)))
    store.migrate()
    yield store
    store.close()


def test_one_leader_at_a_time_until_it_resigns(store: Store):
    a, b = Election(store, ttl=5), Election(store, ttl=5)
    try:
        assert a.campaign() is True
        assert b.campaign() is False
        assert a.campaign() is True  # renewing, not re-entering
        assert b.campaign() is False
        a.resign()
        assert b.campaign() is True
        assert a.campaign() is False
    finally:
        a.resign()
        b.resign()


def test_sqlite_lock_is_taken_over_only_after_it_expired(tmp_path):
    clock = FakeClock(datetime(2026, 1, 1, tzinfo=UTC))
    store = Store(f"sqlite:///{tmp_path / 'store.db'}", clock=clock)
    store.migrate()
    a, b = Election(store, ttl=5), Election(store, ttl=5)
    try:
        assert a.campaign() is True
        clock.advance(4.9)  # a stalls: no renewal
        assert b.campaign() is False
        clock.advance(0.2)
        assert b.campaign() is True
        assert a.campaign() is False  # the stalled leader learns it lost
    finally:
        store.close()


def test_a_killed_leader_is_replaced_within_seconds(store: Store):
    """A process holding the lock is SIGKILLed: on PostgreSQL its session ends and frees the lock;
    on SQLite its row expires after ``ttl``."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
                import time
                from cxbridge.election import Election
                from cxbridge.store import Store
                election = Election(Store({str(store.engine.url.render_as_string(False))!r}), ttl=1)
                assert election.campaign()
                print("leader", flush=True)
                time.sleep(60)
            """),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    follower = Election(Store(store.engine.url.render_as_string(False)), ttl=1)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "leader"
        assert follower.campaign() is False
        holder.kill()
        holder.wait(10)
        started = time.monotonic()
        while not follower.campaign():
            assert time.monotonic() - started < 10, "the dead leader's lock was never freed"
            time.sleep(0.2)
        print(f"\nelection: lock taken over {time.monotonic() - started:.1f} s after SIGKILL")
    finally:
        holder.kill()
        holder.wait(10)
        if holder.stdout is not None:
            holder.stdout.close()
        follower.resign()
        follower.store.close()
