"""The queries of the service (``cxbridge serve``): keyset pages for the admin API, the Copilot feed of
dead letters and "still failing" notices, the notices' detection, and the counts behind ``/metrics``.

A mixin of :class:`~cxbridge.store.Store`, kept apart from the engine's hot-path statements.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from cxbridge.store._records import DeliveryFilter, DeliveryRecord
from cxbridge.store._schema import (
    PENDING,
    attempts,
    dead_letters,
    deliveries,
    disabled_destinations,
    events,
    notices,
)

__all__ = ["LATENCY_BUCKETS_MS", "FeedItem", "ServiceQueries", "StoreCounts"]

#: Upper bounds (ms) of the attempt latency histogram buckets; +Inf is implied.
LATENCY_BUCKETS_MS = (50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 15000.0)


@dataclass(frozen=True)
class FeedItem:
    """One entry of the Copilot feed: a dead letter (``kind="dead_letter"``) or a notice that a
    delivery has been failing for long (``kind="failing"``). ``id`` counts per kind."""

    kind: str
    id: int
    tenant: str
    destination: str
    delivery_id: str
    event_id: str
    event_type: str
    reason: str
    at: float
    payload: bytes
    content_type: str
    event: bytes | None


@dataclass(frozen=True)
class StoreCounts:
    """What ``/metrics`` reads from the store at scrape time, so that every process reports the same."""

    deliveries: dict[tuple[str, str, str], int]  # (tenant, destination, status) -> count
    dead_letters: int
    due: int
    backoff: int
    latency_buckets: list[int]  # cumulative counts per LATENCY_BUCKETS_MS, then +Inf
    latency_sum_ms: float


class ServiceQueries:
    """Mixed into :class:`~cxbridge.store.Store`; uses its engines, write lock and clock."""

    _reader: sa.Engine
    _insert: Any

    def now(self) -> float:
        raise NotImplementedError

    def _write(self) -> contextlib.AbstractContextManager[sa.Connection]:
        raise NotImplementedError

    @contextlib.contextmanager
    def _read(self) -> Iterator[sa.Connection]:
        with self._reader.connect() as conn:
            yield conn

    def ping(self) -> None:
        """Raise if the database cannot be reached."""
        with self._read() as conn:
            conn.execute(sa.text("SELECT 1"))

    # -- admin pages (keyset: the last row's sort key is the next page's start) --------------------

    def events_page(
        self, tenant: str | None, after: tuple[float, str, str] | None, limit: int
    ) -> list[dict[str, Any]]:
        """Events in arrival order, after ``(received_at, tenant, id)``."""
        c = events.c
        query = sa.select(c.tenant, c.id, c.type, c.occurred_at, c.received_at, c.body)
        if tenant is not None:
            query = query.where(c.tenant == tenant)
        if after is not None:
            query = query.where(sa.tuple_(c.received_at, c.tenant, c.id) > sa.tuple_(*after))
        query = query.order_by(c.received_at, c.tenant, c.id).limit(limit)
        with self._read() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def deliveries_page(
        self, where: DeliveryFilter, after: tuple[float, str] | None, limit: int
    ) -> list[DeliveryRecord]:
        """Deliveries matching ``where`` in creation order, after ``(created_at, id)``."""
        c = deliveries.c
        query = deliveries.select().where(*where.where())
        if after is not None:
            query = query.where(sa.tuple_(c.created_at, c.id) > sa.tuple_(*after))
        query = query.order_by(c.created_at, c.id).limit(limit)
        with self._read() as conn:
            return [DeliveryRecord.from_row(r) for r in conn.execute(query)]

    def dead_letters_page(
        self, tenant: str | None, after: int | None, limit: int
    ) -> list[dict[str, Any]]:
        c = dead_letters.c
        query = dead_letters.select()
        if tenant is not None:
            query = query.where(c.tenant == tenant)
        if after is not None:
            query = query.where(c.id > after)
        with self._read() as conn:
            return [dict(r._mapping) for r in conn.execute(query.order_by(c.id).limit(limit))]

    def disable_destination(self, tenant: str, destination: str, reason: str) -> bool:
        """Disable a destination by hand: its deliveries are dead-lettered until it is enabled.
        ``False`` if it was already disabled."""
        insert = self._insert(disabled_destinations).on_conflict_do_nothing()
        row = {"tenant": tenant, "destination": destination, "reason": reason}
        with self._write() as conn:
            return bool(conn.execute(insert, {**row, "disabled_at": self.now()}).rowcount)

    # -- the Copilot feed ----------------------------------------------------------------------

    def feed_heads(self) -> tuple[int, int]:
        """The newest dead letter id and notice id (0 when there is none)."""
        with self._read() as conn:
            dead = conn.execute(sa.select(sa.func.max(dead_letters.c.id))).scalar()
            notice = conn.execute(sa.select(sa.func.max(notices.c.id))).scalar()
        return int(dead or 0), int(notice or 0)

    def feed(
        self,
        after: tuple[int, int],
        tenant: str | None = None,
        limit: int = 500,
        *,
        only: tuple[Sequence[int], Sequence[int]] | None = None,
    ) -> list[FeedItem]:
        """Dead letters with id > ``after[0]`` and notices with id > ``after[1]`` (each in id order,
        at most ``limit`` of each), with their delivery's payload and their event. With ``only``:
        instead, the dead letters and notices of exactly those ids (that exist by now)."""
        items: list[FeedItem] = []
        for index, (kind, table, time_column) in enumerate(
            (
                ("dead_letter", dead_letters, dead_letters.c.dead_at),
                ("failing", notices, notices.c.created_at),
            )
        ):
            if only is not None and not only[index]:
                continue
            d, e = deliveries.c, events.c
            query = (
                sa.select(
                    table.c.id,
                    table.c.tenant,
                    table.c.destination,
                    table.c.delivery_id,
                    table.c.reason,
                    time_column.label("at"),
                    d.event_id,
                    d.event_type,
                    d.body.label("payload"),
                    d.content_type,
                    e.body.label("event"),
                )
                .join(deliveries, d.id == table.c.delivery_id)
                .outerjoin(events, sa.and_(e.tenant == d.tenant, e.id == d.event_id))
                .where(
                    table.c.id.in_(list(only[index]))
                    if only is not None
                    else table.c.id > after[index]
                )
            )
            if tenant is not None:
                query = query.where(table.c.tenant == tenant)
            with self._read() as conn:
                rows = conn.execute(query.order_by(table.c.id).limit(limit)).all()
            items += [_feed_item(kind, r._mapping) for r in rows]
        return sorted(items, key=lambda item: item.at)

    def record_failing(self, failing_for: float) -> int:
        """Write a notice for every pending delivery whose first attempt failed more than
        ``failing_for`` seconds ago and that has none for this streak yet. Safe to run in several
        processes at once (one notice per streak, by a unique key). Returns notices written."""
        now = self.now()
        d, n = deliveries.c, notices.c
        known = sa.select(n.id).where(n.delivery_id == d.id, n.failing_since == d.first_attempt_at)
        query = sa.select(d.id, d.tenant, d.destination, d.first_attempt_at, d.last_error).where(
            d.status == PENDING,
            d.attempts > 0,
            d.first_attempt_at <= now - failing_for,
            ~sa.exists(known),
        )
        with self._read() as conn:
            rows = conn.execute(query.limit(1000)).all()
        if not rows:
            return 0
        insert = self._insert(notices).on_conflict_do_nothing()
        values = [
            {
                "delivery_id": r.id,
                "tenant": r.tenant,
                "destination": r.destination,
                "failing_since": r.first_attempt_at,
                "reason": f"failing for {now - r.first_attempt_at:.0f} s: {r.last_error or '?'}",
                "created_at": now,
            }
            for r in rows
        ]
        written = 0
        with self._write() as conn:
            for row in values:  # one by one: executemany does not report the conflicts' rowcount
                written += conn.execute(insert, row).rowcount
        return written

    # -- metrics --------------------------------------------------------------------------------

    def counts(self) -> StoreCounts:
        now = self.now()
        d, a = deliveries.c, attempts.c
        by_status = sa.select(d.tenant, d.destination, d.status, sa.func.count()).group_by(
            d.tenant, d.destination, d.status
        )
        pending = sa.select(
            sa.func.count().filter(d.next_attempt_at <= now),
            sa.func.count().filter(d.next_attempt_at > now),
        ).where(d.status == PENDING)
        latency = sa.select(
            *(sa.func.count().filter(a.duration_ms <= bound) for bound in LATENCY_BUCKETS_MS),
            sa.func.count(),
            sa.func.coalesce(sa.func.sum(a.duration_ms), 0.0),
        )
        with self._read() as conn:
            grouped = {(t, dest, s): int(k) for t, dest, s, k in conn.execute(by_status)}
            dead = int(
                conn.execute(sa.select(sa.func.count()).select_from(dead_letters)).scalar() or 0
            )
            due, backoff = conn.execute(pending).one()
            *buckets, total_ms = conn.execute(latency).one()
        return StoreCounts(
            deliveries=grouped,
            dead_letters=dead,
            due=int(due),
            backoff=int(backoff),
            latency_buckets=[int(b) for b in buckets],
            latency_sum_ms=float(total_ms),
        )


def _feed_item(kind: str, m: Any) -> FeedItem:
    return FeedItem(
        kind=kind,
        id=int(m["id"]),
        tenant=m["tenant"],
        destination=m["destination"],
        delivery_id=m["delivery_id"],
        event_id=m["event_id"],
        event_type=m["event_type"],
        reason=m["reason"],
        at=float(m["at"]),
        payload=bytes(m["payload"]),
        content_type=m["content_type"],
        event=bytes(m["event"]) if m["event"] is not None else None,
    )
