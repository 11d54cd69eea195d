"""The durable store: events, deliveries, attempts and dead letters (SQLAlchemy 2 Core).

The store, not the broker, is the source of truth: a delivery row exists before its message is enqueued,
and a delivery in backoff waits here (``next_attempt_at``) rather than in the broker. SQLite (embedded,
the default) and PostgreSQL (scale-out) are supported. Times are stored as UTC epoch seconds.
"""

from __future__ import annotations

import contextlib
import json
import operator
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.compiler import SQLCompiler

from cxbridge.clock import Clock, SystemClock
from cxbridge.outcome import Outcome, Payload

__all__ = [
    "AttemptRecord",
    "DeliveryFilter",
    "DeliveryRecord",
    "NewDelivery",
    "Store",
    "normalize_database_url",
]

EXCERPT_LIMIT = 16 * 1024
PENDING, DELIVERED, DEAD = "pending", "delivered", "dead"

metadata = sa.MetaData()
events = sa.Table(
    "events",
    metadata,
    sa.Column("tenant", sa.String(100), primary_key=True),
    sa.Column("id", sa.String(200), primary_key=True),
    sa.Column("type", sa.String(50), nullable=False),
    sa.Column("occurred_at", sa.Float, nullable=False),
    sa.Column("received_at", sa.Float, nullable=False, index=True),
    sa.Column("body", sa.LargeBinary, nullable=False),
)
deliveries = sa.Table(
    "deliveries",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("tenant", sa.String(100), nullable=False),
    sa.Column("destination", sa.String(200), nullable=False),
    sa.Column("event_id", sa.String(200), nullable=False),
    sa.Column("event_type", sa.String(50), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("body", sa.LargeBinary, nullable=False),
    sa.Column("content_type", sa.String(200), nullable=False),
    sa.Column("meta", sa.Text, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("first_attempt_at", sa.Float),
    sa.Column("next_attempt_at", sa.Float),
    sa.Column("enqueued_at", sa.Float),
    sa.Column("lease_until", sa.Float),
    sa.Column("delivered_at", sa.Float),
    sa.Column("last_error", sa.Text),
    sa.Column("remote_id", sa.String(200)),
    sa.Index("ix_deliveries_due", "status", "next_attempt_at"),
    sa.Index("ix_deliveries_filter", "tenant", "destination", "status", "created_at"),
    sa.Index("ix_deliveries_event", "tenant", "event_id"),
)
attempts = sa.Table(
    "attempts",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("delivery_id", sa.String(64), nullable=False, index=True),
    sa.Column("number", sa.Integer, nullable=False),
    sa.Column("started_at", sa.Float, nullable=False),
    sa.Column("duration_ms", sa.Float, nullable=False),
    sa.Column("outcome", sa.String(16), nullable=False),
    sa.Column("status_code", sa.Integer),
    sa.Column("provider_code", sa.String(100)),
    sa.Column("error", sa.Text),
    sa.Column("retry_after", sa.Float),
    sa.Column("remote_id", sa.String(200)),
    sa.Column("response_excerpt", sa.Text),
)
dead_letters = sa.Table(
    "dead_letters",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("delivery_id", sa.String(64), nullable=False, index=True),
    sa.Column("tenant", sa.String(100), nullable=False),
    sa.Column("destination", sa.String(200), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("dead_at", sa.Float, nullable=False, index=True),
    sa.Column("replayed_at", sa.Float),
)
disabled_destinations = sa.Table(
    "disabled_destinations",
    metadata,
    sa.Column("tenant", sa.String(100), primary_key=True),
    sa.Column("destination", sa.String(200), primary_key=True),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("disabled_at", sa.Float, nullable=False),
)
schema_version = sa.Table(
    "cxbridge_schema_version", metadata, sa.Column("version", sa.Integer, nullable=False)
)

# Each migration brings the schema from version i to i + 1. Version 1 is the tables above.
MIGRATIONS: list[Callable[[sa.Connection], None]] = [
    lambda conn: metadata.create_all(conn, tables=[t for t in metadata.sorted_tables])
]


# The statements of the hot path (ingest and every attempt), built once with bound parameters:
# building a statement with literal values costs more CPU than running it (SQLAlchemy coerces every
# value and computes a cache key per call), and a worker runs these thousands of times a second.
_c = deliveries.c
_d = disabled_destinations.c
_HAS_EVENT = sa.select(events.c.id).where(
    events.c.tenant == sa.bindparam("b_tenant"), events.c.id == sa.bindparam("b_id")
)
_MARK_ENQUEUED = (
    deliveries.update()
    .where(_c.id.in_(sa.bindparam("b_ids", expanding=True)))
    .values(enqueued_at=sa.bindparam("b_at"))
)
# The lease and, in the same statement, why the destination is disabled (NULL while enabled).
# Spelt out: SQLite's RETURNING clause is compiled without table names, which would turn
# ``disabled.tenant = deliveries.tenant`` into ``tenant = tenant``.
_DISABLED_REASON = (
    sa.select(_d.reason)
    .where(
        _d.tenant == sa.literal_column("deliveries.tenant"),
        _d.destination == sa.literal_column("deliveries.destination"),
    )
    .scalar_subquery()
    .label("disabled_reason")
)
_LEASE = (
    deliveries.update()
    .where(
        _c.id == sa.bindparam("b_id"),
        _c.status == PENDING,
        sa.or_(_c.next_attempt_at.is_(None), _c.next_attempt_at <= sa.bindparam("b_now")),
        sa.or_(_c.lease_until.is_(None), _c.lease_until < sa.bindparam("b_now")),
    )
    .values(lease_until=sa.bindparam("b_lease_until"))
    .returning(*deliveries.c, _DISABLED_REASON)
)
_INSERT_ATTEMPT = attempts.insert()
_FINISH = (
    deliveries.update()
    .where(_c.id == sa.bindparam("b_id"))
    .values(
        status=sa.bindparam("b_status"),
        attempts=sa.bindparam("b_attempts"),
        updated_at=sa.bindparam("b_now"),
        first_attempt_at=sa.bindparam("b_first_attempt_at"),
        next_attempt_at=sa.bindparam("b_next_attempt_at"),
        enqueued_at=sa.bindparam("b_enqueued_at"),
        lease_until=None,
        delivered_at=sa.bindparam("b_delivered_at"),
        last_error=sa.bindparam("b_last_error"),
        remote_id=sa.bindparam("b_remote_id"),
    )
)
_INSERT_DEAD = dead_letters.insert()
_ATTEMPT_KEYS = (
    "delivery_id",
    "number",
    "started_at",
    "duration_ms",
    "outcome",
    "status_code",
    "provider_code",
    "error",
    "retry_after",
    "remote_id",
    "response_excerpt",
)
_DEAD_KEYS = ("delivery_id", "tenant", "destination", "reason", "dead_at")


def _ts(value: datetime | None) -> float | None:
    return value.timestamp() if value is not None else None


def _dt(value: float | None) -> datetime | None:
    return datetime.fromtimestamp(value, UTC) if value is not None else None


class _Compiled:
    """A statement compiled once for one dialect and run on a bare DBAPI cursor.

    For the two transactions of every attempt (lease; attempt row + status): SQLAlchemy's
    connection, transaction and result machinery costs about 100 µs per transaction, ten times
    what SQLite takes to run the statements. The statements and their parameters stay the Core ones
    above; only the execution is leaner. No type conversion happens on the way: the columns
    involved are strings, numbers and bytes, which both drivers pass through unchanged.
    """

    def __init__(
        self, statement: sa.ClauseElement, dialect: sa.Dialect, keys: Sequence[str] = ()
    ) -> None:
        compiled = statement.compile(dialect=dialect, column_keys=list(keys) or None)
        assert isinstance(compiled, SQLCompiler)
        self.sql = compiled.string
        self.defaults = dict(compiled.params)
        order = list(compiled.positiontup or []) if compiled.positional else None
        # A tuple in the order of the placeholders (qmark: SQLite), or the dict (pyformat: psycopg).
        self._pick: Callable[[dict[str, Any]], Any] | None = None
        if order:
            get = operator.itemgetter(*order)
            self._pick = get if len(order) > 1 else (lambda merged: (get(merged),))

    def args(self, params: Mapping[str, Any]) -> Any:
        merged = {**self.defaults, **params}
        return self._pick(merged) if self._pick is not None else merged


@dataclass(frozen=True)
class NewDelivery:
    id: str
    destination: str
    payload: Payload
    dead_reason: str | None = None


@dataclass(frozen=True)
class DeliveryRecord:
    id: str
    tenant: str
    destination: str
    event_id: str
    event_type: str
    status: str
    payload: Payload
    attempts: int
    created_at: datetime
    first_attempt_at: datetime | None
    next_attempt_at: datetime | None
    delivered_at: datetime | None
    last_error: str | None
    remote_id: str | None
    lease_until: datetime | None = None

    @classmethod
    def from_row(cls, row: sa.Row[Any]) -> DeliveryRecord:
        return cls.from_mapping(row._mapping)

    @classmethod
    def from_mapping(cls, m: Mapping[Any, Any]) -> DeliveryRecord:
        return cls(
            id=m["id"],
            tenant=m["tenant"],
            destination=m["destination"],
            event_id=m["event_id"],
            event_type=m["event_type"],
            status=m["status"],
            payload=Payload(bytes(m["body"]), m["content_type"], json.loads(m["meta"])),
            attempts=m["attempts"],
            created_at=_dt(m["created_at"]) or datetime.now(UTC),
            first_attempt_at=_dt(m["first_attempt_at"]),
            next_attempt_at=_dt(m["next_attempt_at"]),
            delivered_at=_dt(m["delivered_at"]),
            last_error=m["last_error"],
            remote_id=m["remote_id"],
            lease_until=_dt(m["lease_until"]),
        )

    def as_dict(self) -> dict[str, Any]:
        """A JSON-friendly view for the CLI and admin API (payload body as text)."""
        data = {k: v for k, v in self.__dict__.items() if k != "payload"}
        for key, value in data.items():
            if isinstance(value, datetime):
                data[key] = value.isoformat()
        data["payload"] = self.payload.body.decode("utf-8", "replace")
        return data


@dataclass(frozen=True)
class AttemptRecord:
    number: int
    started_at: datetime
    duration_ms: float
    outcome: Outcome


@dataclass(frozen=True)
class DeliveryFilter:
    """Which deliveries to list or replay. ``None`` fields do not filter."""

    tenant: str | None = None
    destination: str | None = None
    event_type: str | None = None
    status: str | None = DEAD
    since: datetime | None = None
    until: datetime | None = None
    ids: Sequence[str] | None = None

    def where(self) -> list[sa.ColumnElement[bool]]:
        c = deliveries.c
        clauses: list[sa.ColumnElement[bool]] = []
        for column, value in (
            (c.tenant, self.tenant),
            (c.destination, self.destination),
            (c.event_type, self.event_type),
            (c.status, self.status),
        ):
            if value is not None:
                clauses.append(column == value)
        if self.since is not None:
            clauses.append(c.created_at >= self.since.timestamp())
        if self.until is not None:
            clauses.append(c.created_at < self.until.timestamp())
        if self.ids is not None:
            clauses.append(c.id.in_(list(self.ids)))
        return clauses


def normalize_database_url(url: str) -> str:
    """``postgresql://`` uses psycopg 3; ``sqlite:///relative/path`` gets its folder created."""
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return url


class Store:
    """Everything the engine persists. Thread-safe; one instance per process."""

    def __init__(self, url: str, *, clock: Clock | None = None) -> None:
        self.url = normalize_database_url(url)
        self.clock = clock or SystemClock()
        self.is_sqlite = self.url.startswith("sqlite")
        # Writes go through ``self.engine`` inside :meth:`_write`; reads through ``self._reader``.
        self._write_lock: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
        if self.is_sqlite:
            connect_args = {"timeout": 30, "check_same_thread": False}
            self.engine = sa.create_engine(
                self.url, connect_args=connect_args, pool_size=10, max_overflow=20
            )
            sa.event.listen(self.engine, "connect", _sqlite_on_connect)
            # Take the write lock when a transaction begins: a deferred transaction that upgrades from
            # read to write fails at once with "database is locked" instead of waiting.
            sa.event.listen(self.engine, "begin", lambda c: c.exec_driver_sql("BEGIN IMMEDIATE"))
            # SQLite has one writer at a time. Threads of this process queue for it on a mutex:
            # waiting in SQLite's busy handler means sleeping 1, 2, 5, 10, 25 ... ms between tries.
            # (Other processes still wait in the busy handler.)
            self._write_lock = threading.Lock()
            if ":memory:" in self.url:
                self._reader = self.engine
            else:
                # Reads run in autocommit (each statement its own snapshot, WAL): they never take
                # the write lock, so they neither wait for writers nor make writers wait.
                self._reader = sa.create_engine(
                    self.url, connect_args=connect_args, pool_size=10, max_overflow=20
                )
                sa.event.listen(self._reader, "connect", _sqlite_on_connect)
            self._insert: Any = sqlite.insert
        else:
            self.engine = sa.create_engine(self.url, pool_size=10, max_overflow=20)
            self._reader = self.engine
            self._insert = postgresql.insert
        self._insert_event = self._insert(events).on_conflict_do_nothing()
        dialect = self.engine.dialect
        self._lease_sql = _Compiled(_LEASE, dialect)
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

    def migrate(self) -> int:
        """Apply pending migrations; returns the schema version."""
        with self._write() as conn:
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
            ).rowcount
            if not inserted:
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
        pending, not due, or leased by another worker: two copies of one message never send twice
        at once."""
        with self._raw_write() as cursor:
            # "now" once the write lock is held: read before waiting for it, a delivery that became
            # due meanwhile would look early.
            now = self.now()
            params = {"b_id": delivery_id, "b_now": now, "b_lease_until": now + lease_seconds}
            cursor.execute(self._lease_sql.sql, self._lease_sql.args(params))
            row = cursor.fetchone()
            names = [column[0] for column in cursor.description]
        if row is None:
            return None
        mapping = dict(zip(names, row, strict=True))
        return DeliveryRecord.from_mapping(mapping), mapping["disabled_reason"]

    def finish_attempt(
        self,
        record: DeliveryRecord,
        attempt: AttemptRecord,
        *,
        next_attempt_at: datetime | None,
        dead_reason: str | None,
        enqueued_at: datetime | None = None,
    ) -> None:
        """Record one attempt and the delivery's new state, atomically."""
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
            for compiled, params in (
                (self._insert_attempt_sql, attempt_row),
                (self._finish_sql, update),
            ):
                cursor.execute(compiled.sql, compiled.args(params))
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

    def kill(self, record: DeliveryRecord, reason: str) -> None:
        """Dead-letter a delivery without an attempt (destination removed or disabled)."""
        now = self.now()
        with self._write() as conn:
            conn.execute(
                deliveries.update()
                .where(deliveries.c.id == record.id)
                .values(status=DEAD, updated_at=now, lease_until=None, last_error=reason)
            )
            conn.execute(
                dead_letters.insert().values(
                    self._dead_row(record.id, record.tenant, record.destination, reason, now)
                )
            )

    def due(self, *, lost_after: float, limit: int = 1000) -> list[str]:
        """Pending deliveries that need a message now: due and never enqueued for this attempt, or
        enqueued ``lost_after`` seconds ago and still not picked up (message lost, worker killed)."""
        now = self.now()
        c = deliveries.c
        query = (
            sa.select(c.id)
            .where(
                c.status == PENDING,
                c.next_attempt_at <= now,
                sa.or_(c.lease_until.is_(None), c.lease_until < now),
                sa.or_(
                    c.enqueued_at.is_(None),
                    c.enqueued_at < c.next_attempt_at,
                    c.enqueued_at < now - lost_after,
                ),
            )
            .order_by(c.next_attempt_at)
            .limit(limit)
        )
        with self._reader.connect() as conn:
            return list(conn.execute(query).scalars())

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
        self, where: DeliveryFilter, limit: int | None = None
    ) -> list[DeliveryRecord]:
        query = deliveries.select().where(*where.where()).order_by(deliveries.c.created_at)
        if limit is not None:
            query = query.limit(limit)
        with self._reader.connect() as conn:
            return [DeliveryRecord.from_row(r) for r in conn.execute(query)]

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
    ) -> None:
        """Make deliveries pending again with a fresh retry window, due now."""
        now = self.now()
        with self._write() as conn:
            conn.execute(
                deliveries.update()
                .where(deliveries.c.id.in_(list(ids)))
                .values(
                    status=PENDING,
                    first_attempt_at=None,
                    next_attempt_at=now,
                    enqueued_at=None,
                    lease_until=None,
                    updated_at=now,
                )
            )
            conn.execute(
                dead_letters.update()
                .where(
                    dead_letters.c.delivery_id.in_(list(ids)), dead_letters.c.replayed_at.is_(None)
                )
                .values(replayed_at=now)
            )
            for delivery_id, payload in (payloads or {}).items():
                conn.execute(
                    deliveries.update()
                    .where(deliveries.c.id == delivery_id)
                    .values(
                        body=payload.body,
                        content_type=payload.content_type,
                        meta=json.dumps(payload.meta),
                    )
                )

    def purge(self, older_than: datetime) -> int:
        """Delete finished deliveries (and their attempts, dead letters and events) last updated
        before ``older_than``. Pending deliveries are never purged. Returns deliveries deleted."""
        cutoff = older_than.timestamp()
        c = deliveries.c
        finished = sa.select(c.id).where(c.status.in_([DELIVERED, DEAD]), c.updated_at < cutoff)
        with self._write() as conn:
            conn.execute(attempts.delete().where(attempts.c.delivery_id.in_(finished)))
            conn.execute(dead_letters.delete().where(dead_letters.c.delivery_id.in_(finished)))
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


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # Autocommit at the driver level, so that SQLAlchemy's "begin" event decides the BEGIN statement.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()
