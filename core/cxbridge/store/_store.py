"""The :class:`Store` class: every query and write of the engine, and the transactions they run in."""

from __future__ import annotations

import contextlib
import json
import secrets
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from cxbridge.clock import Clock, SystemClock
from cxbridge.outcome import Payload
from cxbridge.store._connect import create_engines, normalize_database_url
from cxbridge.store._records import (
    AttemptRecord,
    DeadLetter,
    DeliveryFilter,
    DeliveryRecord,
    NewDelivery,
    ReplayReset,
    _ts,
)
from cxbridge.store._schema import (
    DEAD,
    DELIVERED,
    EXCERPT_LIMIT,
    MIGRATIONS,
    PENDING,
    attempts,
    dead_letters,
    deliveries,
    disabled_destinations,
    events,
    notices,
    schema_version,
)
from cxbridge.store._service import ServiceQueries
from cxbridge.store._statements import (
    _ATTEMPT_KEYS,
    _CLAIM_DEAD_LEFT_OVER,
    _CLAIM_DEAD_OF,
    _DEAD_KEYS,
    _FINISH,
    _FINISH_DEAD,
    _HAS_EVENT,
    _INSERT_ATTEMPT,
    _INSERT_DEAD,
    _MARK_ENQUEUED,
    DB_NOW,
    _Compiled,
    is_head,
    key_turn_statements,
    lease_statement,
)

__all__ = ["Store"]

_MIGRATE_LOCK = 0x6378_6272_6964  # "cxbrid": the PostgreSQL advisory lock key of migrations


class _NotHead(Exception):
    """A lease of an ordered delivery lost its key's turn and is rolled back."""


class Store(ServiceQueries):
    """Everything the engine persists. Thread-safe; one instance per process."""

    def __init__(self, url: str, *, clock: Clock | None = None) -> None:
        self.url = normalize_database_url(url)
        self.clock = clock or SystemClock()
        self.is_sqlite = self.url.startswith("sqlite")
        # Lease times (``lease_until`` and the "now" it is compared with) come from PostgreSQL's
        # clock when the engine runs on the system clock: workers on machines whose clocks disagree
        # then agree on when a lease runs out. Due times stay on the engine's clock (a message
        # delayed by the broker must find its delivery due). SQLite is one machine, and an injected
        # clock (tests) stays in charge of every time so that tests are deterministic.
        self.db_clock = not self.is_sqlite and isinstance(self.clock, SystemClock)
        self._lease_now: sa.ColumnElement[Any] = (
            DB_NOW if self.db_clock else sa.bindparam("b_lease_now", type_=sa.Float)
        )
        # Writes go through ``self.engine`` inside :meth:`_write`; reads through ``self._reader``.
        self.engine, self._reader, self._write_lock, self._insert = create_engines(self.url)
        # RETURNING, not rowcount: SQLAlchemy does not keep an INSERT's rowcount on psycopg (-1),
        # which made a concurrent accept of one event id on PostgreSQL insert its deliveries twice.
        self._insert_event = self._insert(events).on_conflict_do_nothing().returning(events.c.id)
        dialect = self.engine.dialect
        self._lease_sql = _Compiled(lease_statement(self._lease_now), dialect)
        self._is_head = is_head(self._lease_now)
        # SQLite runs one write transaction at a time: a lease there always sees the others.
        self._key_turn_sql = (
            None
            if self.is_sqlite
            else tuple(_Compiled(s, dialect) for s in key_turn_statements(self._lease_now))
        )
        self._insert_attempt_sql = _Compiled(_INSERT_ATTEMPT, dialect, _ATTEMPT_KEYS)
        self._finish_sql = _Compiled(_FINISH, dialect)
        self._insert_dead_sql = _Compiled(_INSERT_DEAD, dialect, _DEAD_KEYS)
        self._disable_sql = _Compiled(
            self._insert(disabled_destinations).on_conflict_do_nothing(),
            dialect,
            ("tenant", "destination", "reason", "disabled_at"),
        )

    @contextlib.contextmanager
    def _write(self) -> Iterator[sa.Connection]:
        """A write transaction (on SQLite: ``BEGIN IMMEDIATE``, one thread of this process at a
        time)."""
        with self._write_lock, self.engine.begin() as conn:
            yield conn

    @contextlib.contextmanager
    def _raw_write(self) -> Iterator[Any]:
        """:meth:`_write` on a bare DBAPI cursor (see :class:`_Compiled`): committed when the block
        ends, rolled back if it raises."""
        with self._write_lock:
            conn = self.engine.raw_connection()
            try:
                cursor = conn.cursor()
                if self.is_sqlite:
                    cursor.execute("BEGIN IMMEDIATE")  # the driver is in autocommit mode
                try:
                    yield cursor
                except BaseException:
                    conn.rollback()
                    raise
                conn.commit()
            finally:
                conn.close()  # back to the pool

    def now(self) -> float:
        return self.clock.now().timestamp()

    def lease_now(self) -> datetime:
        """ "Now" on the clock of lease times (see ``db_clock``)."""
        if not self.db_clock:
            return self.clock.now()
        with self._reader.connect() as conn:
            return datetime.fromtimestamp(float(conn.execute(sa.select(DB_NOW)).scalar_one()), UTC)

    def is_database_error(self, exc: BaseException) -> bool:
        """Whether ``exc`` came from the database (down, unreachable, disk full, locked, refused a
        statement), through SQLAlchemy or straight from the driver (the hot path's raw cursors)."""
        dbapi = self.engine.dialect.dbapi
        return isinstance(exc, sa.exc.SQLAlchemyError) or (
            dbapi is not None and isinstance(exc, dbapi.Error)
        )

    def migrate(self) -> int:
        """Apply pending migrations; returns the schema version. Processes starting together take
        turns (SQLite: the write lock; PostgreSQL: a transaction-scoped advisory lock)."""
        with self._write() as conn:
            if not self.is_sqlite:
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATE_LOCK})
            schema_version.create(conn, checkfirst=True)
            current = conn.execute(sa.select(schema_version.c.version)).scalar()
            if current is None:
                current = 0
                conn.execute(schema_version.insert().values(version=0))
            for version in range(current, len(MIGRATIONS)):
                MIGRATIONS[version](conn)
            conn.execute(schema_version.update().values(version=len(MIGRATIONS)))
        return len(MIGRATIONS)

    def close(self) -> None:
        self.engine.dispose()
        if self._reader is not self.engine:
            self._reader.dispose()

    # -- ingest ----------------------------------------------------------------------------------

    def has_event(self, tenant: str, event_id: str) -> bool:
        with self._reader.connect() as conn:
            return (
                conn.execute(_HAS_EVENT, {"b_tenant": tenant, "b_id": event_id}).first() is not None
            )

    def add_event(
        self,
        *,
        tenant: str,
        event_id: str,
        event_type: str,
        occurred_at: datetime,
        body: bytes,
        new_deliveries: Iterable[NewDelivery],
    ) -> bool:
        """Store an event and its deliveries in one transaction. ``False`` if the event was already
        stored (then nothing is written)."""
        now = self.now()
        with self._write() as conn:
            inserted = conn.execute(
                self._insert_event,
                {
                    "tenant": tenant,
                    "id": event_id,
                    "type": event_type,
                    "occurred_at": occurred_at.timestamp(),
                    "received_at": now,
                    "body": body,
                },
            ).first()
            if inserted is None:
                return False
            rows = []
            dead = []
            for d in new_deliveries:
                rows.append(
                    {
                        "id": d.id,
                        "tenant": tenant,
                        "destination": d.destination,
                        "event_id": event_id,
                        "event_type": event_type,
                        "status": DEAD if d.dead_reason else PENDING,
                        "body": d.payload.body,
                        "content_type": d.payload.content_type,
                        "meta": json.dumps(d.payload.meta),
                        "attempts": 0,
                        "created_at": now,
                        "updated_at": now,
                        "next_attempt_at": None if d.dead_reason else now,
                        "last_error": d.dead_reason,
                        "order_key": d.order_key,
                        "order_at": occurred_at.timestamp(),
                    }
                )
                if d.dead_reason:
                    dead.append(self._dead_row(d.id, tenant, d.destination, d.dead_reason, now))
            if rows:
                conn.execute(deliveries.insert(), rows)
            if dead:
                conn.execute(_INSERT_DEAD, dead)
        return True

    @staticmethod
    def _dead_row(
        delivery_id: str, tenant: str, destination: str, reason: str, now: float
    ) -> dict[str, Any]:
        return {
            "delivery_id": delivery_id,
            "tenant": tenant,
            "destination": destination,
            "reason": reason,
            "dead_at": now,
        }

    def event_body(self, tenant: str, event_id: str) -> bytes | None:
        with self._reader.connect() as conn:
            query = sa.select(events.c.body).where(
                events.c.tenant == tenant, events.c.id == event_id
            )
            body = conn.execute(query).scalar()
        return bytes(body) if body is not None else None

    # -- delivering ------------------------------------------------------------------------------

    def mark_enqueued(self, ids: Sequence[str], at: float | None = None) -> None:
        if not ids:
            return
        with self._write() as conn:
            conn.execute(
                _MARK_ENQUEUED, {"b_ids": list(ids), "b_at": self.now() if at is None else at}
            )

    def lease(
        self, delivery_id: str, lease_seconds: float
    ) -> tuple[DeliveryRecord, str | None] | None:
        """Lease a pending, due delivery for one attempt, and say in the same statement why its
        destination is disabled (``None`` while it is enabled). ``None`` if the delivery is not
        pending, not due, leased by another worker, or waiting behind an earlier delivery of its
        ordering key: two copies of one message never send twice at once, and one key never has
        two attempts in flight.

        The record carries the lease's fencing token (``lease_token``), which every write that
        finishes the attempt must present, and this attempt's number in ``attempts`` (each lease
        takes the next one)."""
        try:
            with self._raw_write() as cursor:
                # "now" once the write lock is held: read before waiting for it, a delivery that
                # became due meanwhile would look early.
                now = self.now()
                params = {
                    "b_id": delivery_id,
                    "b_now": now,
                    "b_lease_now": now,
                    "b_lease_seconds": lease_seconds,
                    "b_token": secrets.token_hex(16),
                }
                cursor.execute(self._lease_sql.sql, self._lease_sql.args(params))
                row = cursor.fetchone()
                names = [column[0] for column in cursor.description]
                if row is None:
                    return None
                mapping = dict(zip(names, row, strict=True))
                if mapping["order_key"] is not None and self._key_turn_sql is not None:
                    self._wait_for_turn(cursor, params)
        except _NotHead:
            return None  # another lease of its key committed first; this one is rolled back
        return DeliveryRecord.from_mapping(mapping), mapping["disabled_reason"]

    def _wait_for_turn(self, cursor: Any, params: dict[str, Any]) -> None:
        """PostgreSQL, inside the transaction that just leased an ordered delivery: take its key's
        lock, then check in a fresh snapshot that it is still the head (see
        :func:`key_turn_statements`). Raises :class:`_NotHead`, rolling the lease back, if a lease
        of the key committed meanwhile."""
        assert self._key_turn_sql is not None
        for compiled in self._key_turn_sql:
            cursor.execute(compiled.sql, compiled.args(params))
        if cursor.fetchone() is None:
            raise _NotHead

    def extend_leases(self, leases: Mapping[str, str], lease_seconds: float) -> set[str]:
        """Renew the leases given as ``{token: delivery id}`` that still hold their deliveries, to
        ``lease_seconds`` from now; returns the tokens renewed (a missing one lost its lease)."""
        if not leases:
            return set()
        c = deliveries.c
        statement = (
            deliveries.update()
            # By primary key; a random token matches only the row it was issued for.
            .where(c.id.in_(list(leases.values())), c.lease_token.in_(list(leases)))
            .where(c.status == PENDING)
            .values(lease_until=self._lease_now + lease_seconds)
            .returning(c.lease_token)
        )
        with self._write() as conn:
            return set(conn.execute(statement, {"b_lease_now": self.now()}).scalars())

    def finish_attempt(
        self,
        record: DeliveryRecord,
        attempt: AttemptRecord,
        *,
        next_attempt_at: datetime | None,
        dead_reason: str | None,
        enqueued_at: datetime | None = None,
    ) -> bool:
        """Record one attempt and the delivery's new state, atomically, if the attempt still holds
        its lease (``record.lease_token``). Returns ``False`` for a stale result, whose lease ran
        out and was taken by another attempt: then only the attempt row is written, marked
        ``stale``, and nothing else changes (no status, retry, dead letter or disabled
        destination)."""
        outcome = attempt.outcome
        now = self.now()
        if outcome.ok:
            status = DELIVERED
        elif dead_reason is not None:
            status = DEAD
        else:
            status = PENDING
        excerpt = outcome.response_excerpt
        if excerpt is not None and len(excerpt) > EXCERPT_LIMIT:
            excerpt = excerpt[:EXCERPT_LIMIT]
        attempt_row = {
            "delivery_id": record.id,
            "number": attempt.number,
            "started_at": attempt.started_at.timestamp(),
            "duration_ms": attempt.duration_ms,
            "outcome": outcome.kind.value,
            "status_code": outcome.status_code,
            "provider_code": outcome.provider_code,
            "error": outcome.error,
            "retry_after": outcome.retry_after,
            "remote_id": outcome.remote_id,
            "response_excerpt": excerpt,
        }
        update = {
            "b_id": record.id,
            "b_token": record.lease_token,
            "b_status": status,
            "b_attempts": attempt.number,
            "b_now": now,
            "b_first_attempt_at": _ts(record.first_attempt_at or attempt.started_at),
            "b_next_attempt_at": _ts(next_attempt_at),
            "b_enqueued_at": _ts(enqueued_at),
            "b_delivered_at": now if outcome.ok else None,
            "b_last_error": dead_reason or outcome.error,
            "b_remote_id": outcome.remote_id or record.remote_id,
        }
        with self._raw_write() as cursor:
            cursor.execute(self._finish_sql.sql, self._finish_sql.args(update))
            fresh = bool(cursor.rowcount == 1)
            attempt_row["stale"] = not fresh
            cursor.execute(self._insert_attempt_sql.sql, self._insert_attempt_sql.args(attempt_row))
            if not fresh:
                return False
            if status == DEAD:
                dead = self._dead_row(
                    record.id, record.tenant, record.destination, dead_reason or "", now
                )
                cursor.execute(self._insert_dead_sql.sql, self._insert_dead_sql.args(dead))
            if outcome.disable_destination:
                disabled = {
                    "tenant": record.tenant,
                    "destination": record.destination,
                    "reason": outcome.error or "",
                    "disabled_at": now,
                }
                cursor.execute(self._disable_sql.sql, self._disable_sql.args(disabled))
        return True

    def kill(self, record: DeliveryRecord, reason: str) -> bool:
        """Dead-letter a leased delivery without an attempt (destination removed or disabled).
        Fenced like :meth:`finish_attempt`: returns ``False``, changing nothing, if the lease
        (``record.lease_token``) was lost."""
        now = self.now()
        c = deliveries.c
        with self._write() as conn:
            killed = conn.execute(
                deliveries.update()
                .where(c.id == record.id, c.lease_token == record.lease_token)
                .values(
                    status=DEAD,
                    updated_at=now,
                    lease_until=None,
                    lease_token=None,
                    # The lease took an attempt number for an attempt that is not made.
                    attempts=c.attempts - 1,
                    last_error=reason,
                )
            ).rowcount
            if not killed:
                return False
            conn.execute(
                dead_letters.insert().values(
                    self._dead_row(record.id, record.tenant, record.destination, reason, now)
                )
            )
        return True

    def due(self, *, limit: int = 1000) -> list[str]:
        """Pending deliveries that are due, not leased, and have no message for this attempt yet
        (new, or back from a long wait in the store), most overdue first. A delivery waiting behind
        an earlier one of its ordering key is not due until it is the head."""
        now = self.now()
        c = deliveries.c
        query = (
            sa.select(c.id)
            .where(
                c.status == PENDING,
                c.next_attempt_at <= now,
                self._not_leased(),
                sa.or_(c.enqueued_at.is_(None), c.enqueued_at < c.next_attempt_at),
                self._is_head,
            )
            .order_by(c.next_attempt_at)
            .limit(limit)
        )
        with self._reader.connect() as conn:
            return list(conn.execute(query, {"b_lease_now": now}).scalars())

    # -- per-key order ---------------------------------------------------------------------------

    def ready(self, ids: Sequence[str]) -> list[str]:
        """The deliveries of ``ids`` that need not wait for their ordering key: unordered ones, and
        heads (no earlier delivery of the key pending, none being attempted)."""
        if not ids:
            return []
        query = sa.select(deliveries.c.id).where(deliveries.c.id.in_(list(ids)), self._is_head)
        with self._reader.connect() as conn:
            ready = set(conn.execute(query, {"b_lease_now": self.now()}).scalars())
        return [i for i in ids if i in ready]

    def next_heads(self, record: DeliveryRecord) -> list[str]:
        """After an attempt of ``record`` (committed): the pending, due, unleased head of its
        ordering key, if any (none when ``record`` is unordered or itself still the head)."""
        if record.order_key is None:
            return []
        now = self.now()
        c = deliveries.c
        query = sa.select(c.id).where(
            c.order_key == record.order_key,
            c.tenant == record.tenant,
            c.destination == record.destination,
            c.status == PENDING,
            c.id != record.id,
            c.next_attempt_at <= now,
            self._not_leased(),
            self._is_head,
        )
        with self._reader.connect() as conn:
            return list(conn.execute(query, {"b_lease_now": now}).scalars())

    def park(self, delivery_id: str) -> bool:
        """Forget the message of an ordered delivery that must wait behind an earlier one of its
        key (``enqueued_at`` NULL), so that it is enqueued again, by the head's finish or by the
        sweep, once it is the head. ``False`` (nothing changed) when it is not waiting."""
        c = deliveries.c
        statement = (
            deliveries.update()
            .where(
                c.id == delivery_id,
                c.status == PENDING,
                c.order_key.is_not(None),
                ~self._is_head,
            )
            .values(enqueued_at=None)
        )
        with self._write() as conn:
            return bool(conn.execute(statement, {"b_lease_now": self.now()}).rowcount)

    def count_awaiting_message(self) -> int:
        """How many pending deliveries were enqueued for their current attempt and are not leased:
        each of them should have a message in the broker (ready, delayed, or fetched by a worker
        that has not leased it yet)."""
        query = sa.select(sa.func.count()).select_from(deliveries).where(*self._awaiting_message())
        with self._reader.connect() as conn:
            return int(conn.execute(query, {"b_lease_now": self.now()}).scalar() or 0)

    def awaiting_message(self, *, enqueued_before: float, limit: int) -> list[str]:
        """Up to ``limit`` of :meth:`count_awaiting_message`'s deliveries enqueued before
        ``enqueued_before`` (epoch seconds), longest waiting first."""
        c = deliveries.c
        query = (
            sa.select(c.id)
            .where(*self._awaiting_message(), c.enqueued_at < enqueued_before)
            .order_by(c.enqueued_at)
            .limit(limit)
        )
        with self._reader.connect() as conn:
            return list(conn.execute(query, {"b_lease_now": self.now()}).scalars())

    def _awaiting_message(self) -> list[sa.ColumnElement[bool]]:
        c = deliveries.c
        # enqueued_at >= next_attempt_at: enqueued for this attempt (a short retry's message is
        # marked with its due time; NULL never compares true).
        return [c.status == PENDING, c.enqueued_at >= c.next_attempt_at, self._not_leased()]

    def _not_leased(self) -> sa.ColumnElement[bool]:
        """No live lease (executed with ``b_lease_now``, ignored on the database's clock)."""
        c = deliveries.c
        return sa.or_(c.lease_until.is_(None), c.lease_until < self._lease_now)

    # -- destinations ----------------------------------------------------------------------------

    def disabled_reason(self, tenant: str, destination: str) -> str | None:
        with self._reader.connect() as conn:
            query = sa.select(disabled_destinations.c.reason).where(
                disabled_destinations.c.tenant == tenant,
                disabled_destinations.c.destination == destination,
            )
            reason: str | None = conn.execute(query).scalar()
            return reason

    def enable_destination(self, tenant: str, destination: str) -> bool:
        with self._write() as conn:
            return bool(
                conn.execute(
                    disabled_destinations.delete().where(
                        disabled_destinations.c.tenant == tenant,
                        disabled_destinations.c.destination == destination,
                    )
                ).rowcount
            )

    # -- reading ---------------------------------------------------------------------------------

    def get_delivery(self, delivery_id: str) -> DeliveryRecord | None:
        with self._reader.connect() as conn:
            row = conn.execute(deliveries.select().where(deliveries.c.id == delivery_id)).first()
        return DeliveryRecord.from_row(row) if row is not None else None

    def list_deliveries(
        self, where: DeliveryFilter, limit: int | None = None, *, newest: bool = False
    ) -> list[DeliveryRecord]:
        """Matching deliveries in the order they were created; with ``newest``, the last ``limit``
        of them (still oldest first)."""
        created = deliveries.c.created_at
        order = (created.desc(), deliveries.c.id.desc()) if newest else (created, deliveries.c.id)
        query = deliveries.select().where(*where.where()).order_by(*order)
        if limit is not None:
            query = query.limit(limit)
        with self._reader.connect() as conn:
            records = [DeliveryRecord.from_row(r) for r in conn.execute(query)]
        return records[::-1] if newest else records

    def list_events(
        self,
        *,
        tenant: str | None = None,
        event_type: str | None = None,
        since: datetime | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """The newest events first, each with how many of its deliveries are in each status."""
        e, c = events.c, deliveries.c
        query = sa.select(e.tenant, e.id, e.type, e.occurred_at, e.received_at)
        for column, value in ((e.tenant, tenant), (e.type, event_type)):
            if value is not None:
                query = query.where(column == value)
        if since is not None:
            query = query.where(e.received_at >= since.timestamp())
        newest = query.order_by(e.received_at.desc()).limit(limit).subquery()
        # The deliveries of all listed events counted in one query, not one query per event.
        counts = (
            sa.select(c.tenant, c.event_id, c.status, sa.func.count())
            .join(newest, sa.and_(c.tenant == newest.c.tenant, c.event_id == newest.c.id))
            .group_by(c.tenant, c.event_id, c.status)
        )
        with self._reader.connect() as conn:
            rows = [
                dict(r._mapping)
                for r in conn.execute(sa.select(newest).order_by(newest.c.received_at.desc()))
            ]
            by_event: dict[tuple[str, str], dict[str, int]] = {}
            for tenant_, event_id, status, n in conn.execute(counts):
                by_event.setdefault((tenant_, event_id), {})[status] = n
        for row in rows:
            row["deliveries"] = by_event.get((row["tenant"], row["id"]), {})
        return rows

    def count_deliveries(self, where: DeliveryFilter) -> int:
        query = sa.select(sa.func.count()).select_from(deliveries).where(*where.where())
        with self._reader.connect() as conn:
            return int(conn.execute(query).scalar() or 0)

    def status_counts(self) -> dict[str, int]:
        query = sa.select(deliveries.c.status, sa.func.count()).group_by(deliveries.c.status)
        with self._reader.connect() as conn:
            return {status: int(n) for status, n in conn.execute(query)}

    def attempts_of(self, delivery_id: str) -> list[dict[str, Any]]:
        query = (
            attempts.select().where(attempts.c.delivery_id == delivery_id).order_by(attempts.c.id)
        )
        with self._reader.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def dead_letters_of(self, delivery_id: str) -> list[dict[str, Any]]:
        query = (
            dead_letters.select()
            .where(dead_letters.c.delivery_id == delivery_id)
            .order_by(dead_letters.c.id)
        )
        with self._reader.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    # -- replay and retention ----------------------------------------------------------------------

    def reset_for_replay(
        self, ids: Sequence[str], payloads: dict[str, Payload] | None = None
    ) -> ReplayReset:
        """Make finished (delivered or dead) deliveries pending again with a fresh retry window, due
        now. A delivery that is still pending (waiting for its next attempt, or leased by a running
        one) is left alone and reported: resetting it would let a second worker send it while the
        first attempt runs. The check and the reset are one statement, so a lease cannot slip in
        between."""
        now = self.now()
        c = deliveries.c
        wanted = list(ids)
        with self._write() as conn:
            reset = list(
                conn.execute(
                    deliveries.update()
                    .where(
                        c.id.in_(wanted),
                        c.status.in_([DELIVERED, DEAD]),
                        sa.or_(c.lease_until.is_(None), c.lease_until <= now),
                    )
                    .values(
                        status=PENDING,
                        first_attempt_at=None,
                        next_attempt_at=now,
                        enqueued_at=None,
                        lease_until=None,
                        updated_at=now,
                    )
                    .returning(c.id)
                ).scalars()
            )
            skipped = conn.execute(
                sa.select(c.id, c.lease_until).where(c.id.in_(wanted), c.id.not_in(reset))
            ).all()
            conn.execute(
                dead_letters.update()
                .where(dead_letters.c.delivery_id.in_(reset), dead_letters.c.replayed_at.is_(None))
                .values(replayed_at=now)
            )
            for delivery_id in reset:
                payload = (payloads or {}).get(delivery_id)
                if payload is None:
                    continue
                conn.execute(
                    deliveries.update()
                    .where(c.id == delivery_id)
                    .values(
                        body=payload.body,
                        content_type=payload.content_type,
                        meta=json.dumps(payload.meta),
                    )
                )
        leased = [i for i, until in skipped if until is not None and until > now]
        return ReplayReset(reset, [i for i, _ in skipped if i not in leased], leased)

    # -- the outbox of on_delivery_failed ----------------------------------------------------------

    def claim_dead_letters(
        self,
        *,
        claim_seconds: float,
        delivery_ids: Sequence[str] | None = None,
        older_than: float | None = None,
        limit: int = 100,
    ) -> list[DeadLetter]:
        """Claim for ``claim_seconds`` the dead letters whose hooks have not run and that nobody
        holds: of these deliveries, or else dead at least ``older_than`` seconds ago. Two callers
        never both get a row."""
        now = self.now()
        params: dict[str, Any] = {"b_now": now, "b_until": now + claim_seconds, "b_limit": limit}
        if delivery_ids is not None:
            statement, params["b_ids"] = _CLAIM_DEAD_OF, list(delivery_ids)
        else:
            statement, params["b_before"] = _CLAIM_DEAD_LEFT_OVER, now - (older_than or 0)
        with self._write() as conn:
            rows = conn.execute(statement, params).all()
        return sorted((DeadLetter(*row) for row in rows), key=lambda letter: letter.id)

    def finish_dead_letter(self, dead_letter_id: int) -> None:
        """Mark a dead letter's hooks as run."""
        with self._write() as conn:
            conn.execute(_FINISH_DEAD, {"b_id": dead_letter_id, "b_now": self.now()})

    def purge(self, older_than: datetime) -> int:
        """Delete finished deliveries (and their attempts, dead letters and events) last updated
        before ``older_than``. Pending deliveries are never purged. Returns deliveries deleted."""
        cutoff = older_than.timestamp()
        c = deliveries.c
        finished = sa.select(c.id).where(c.status.in_([DELIVERED, DEAD]), c.updated_at < cutoff)
        with self._write() as conn:
            conn.execute(attempts.delete().where(attempts.c.delivery_id.in_(finished)))
            conn.execute(dead_letters.delete().where(dead_letters.c.delivery_id.in_(finished)))
            conn.execute(notices.delete().where(notices.c.delivery_id.in_(finished)))
            deleted = conn.execute(
                deliveries.delete().where(c.status.in_([DELIVERED, DEAD]), c.updated_at < cutoff)
            ).rowcount
            still_used = sa.select(c.id).where(
                c.tenant == events.c.tenant, c.event_id == events.c.id
            )
            conn.execute(
                events.delete().where(events.c.received_at < cutoff, ~sa.exists(still_used))
            )
        return int(deleted)
