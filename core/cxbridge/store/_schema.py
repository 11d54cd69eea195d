"""The tables, their indexes and the migrations that create them; the values of ``deliveries.status``
and the size limit of a stored response excerpt. Times are stored as UTC epoch seconds."""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa

__all__ = [
    "DEAD",
    "DELIVERED",
    "EXCERPT_LIMIT",
    "MIGRATIONS",
    "PENDING",
    "attempts",
    "dead_letters",
    "deliveries",
    "disabled_destinations",
    "events",
    "metadata",
    "notices",
    "scheduler_lock",
    "schema_version",
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
    # The fencing token of the current lease: only the attempt holding it may record a result.
    sa.Column("lease_token", sa.String(32)),
    sa.Column("delivered_at", sa.Float),
    sa.Column("last_error", sa.Text),
    sa.Column("remote_id", sa.String(200)),
    # Per-key order (schema version 5): deliveries of one ordering key (the call, per destination)
    # are attempted one at a time, by the event's time (``order_at``), then arrival (``created_at``).
    # NULL: unordered.
    sa.Column("order_key", sa.String(200)),
    sa.Column("order_at", sa.Float),
    sa.Index("ix_deliveries_due", "status", "next_attempt_at"),
    sa.Index("ix_deliveries_filter", "tenant", "destination", "status", "created_at"),
    sa.Index("ix_deliveries_event", "tenant", "event_id"),
    # The head check of every lease looks up the pending deliveries of one key.
    sa.Index("ix_deliveries_order", "order_key", "tenant", "destination", "status", "order_at"),
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
    # A result that came back after its lease was lost: logged, changed nothing.
    sa.Column("stale", sa.Boolean, nullable=False, default=False, server_default=sa.false()),
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
    # The outbox of ``on_delivery_failed``: set once the hooks ran; a dispatcher holds a row until
    # ``hooks_claimed_until`` while it calls them (see cxbridge.outbox).
    sa.Column("hooks_done_at", sa.Float),
    sa.Column("hooks_claimed_until", sa.Float),
    sa.Index("ix_dead_letters_hooks", "hooks_done_at", "dead_at"),
)
disabled_destinations = sa.Table(
    "disabled_destinations",
    metadata,
    sa.Column("tenant", sa.String(100), primary_key=True),
    sa.Column("destination", sa.String(200), primary_key=True),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("disabled_at", sa.Float, nullable=False),
)
# "Still failing" notices for the Copilot feed: one per delivery and failing streak (a replay starts a
# new streak with a new ``failing_since``). The autoincrement id is the feed's cursor, as for
# ``dead_letters``.
notices = sa.Table(
    "notices",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("delivery_id", sa.String(64), nullable=False),
    sa.Column("tenant", sa.String(100), nullable=False),
    sa.Column("destination", sa.String(200), nullable=False),
    sa.Column("failing_since", sa.Float, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False, index=True),
    sa.UniqueConstraint("delivery_id", "failing_since", name="uq_notices_streak"),
)
# The scheduler's election on SQLite (cxbridge.election): one row per lock, held until expires_at.
scheduler_lock = sa.Table(
    "scheduler_lock",
    metadata,
    sa.Column("name", sa.String(100), primary_key=True),
    sa.Column("holder", sa.String(200), nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
)
schema_version = sa.Table(
    "cxbridge_schema_version", metadata, sa.Column("version", sa.Integer, nullable=False)
)


def _add_columns(conn: sa.Connection, table: sa.Table, *names: str) -> None:
    """``ALTER TABLE … ADD COLUMN`` for the named columns of ``table`` that the database lacks
    (a database created by migration 1 of this version already has them)."""
    present = {column["name"] for column in sa.inspect(conn).get_columns(table.name)}
    for name in names:
        if name not in present:
            ddl = sa.schema.CreateColumn(table.c[name]).compile(dialect=conn.dialect)
            conn.execute(sa.text(f"ALTER TABLE {table.name} ADD COLUMN {ddl}"))


def _create_tables(conn: sa.Connection) -> None:
    """Version 1: the tables. A new database gets today's definitions, so later migrations check
    before they add."""
    metadata.create_all(conn, tables=list(metadata.sorted_tables))


def _add_dead_letter_outbox(conn: sa.Connection) -> None:
    """Version 2: ``dead_letters`` becomes the outbox of ``on_delivery_failed``. Dead letters of an
    older version already had their hooks called (or lost them in a crash, which can no longer be
    told apart): they count as done, so an upgrade does not page anyone for old failures."""
    _add_columns(conn, dead_letters, "hooks_done_at", "hooks_claimed_until")
    indexes = {index["name"] for index in sa.inspect(conn).get_indexes("dead_letters")}
    if "ix_dead_letters_hooks" not in indexes:
        next(i for i in dead_letters.indexes if i.name == "ix_dead_letters_hooks").create(conn)
    conn.execute(
        dead_letters.update()
        .where(dead_letters.c.hooks_done_at.is_(None))
        .values(hooks_done_at=dead_letters.c.dead_at)
    )


def _add_fencing(conn: sa.Connection) -> None:
    """Version 3: lease tokens on deliveries, the stale mark on attempts."""
    _add_columns(conn, deliveries, "lease_token")
    _add_columns(conn, attempts, "stale")


def _add_notices(conn: sa.Connection) -> None:
    """Version 4: the ``notices`` table of the Copilot feed ("a delivery is failing for long")."""
    notices.create(conn, checkfirst=True)


def _add_ordering(conn: sa.Connection) -> None:
    """Version 5: the ordering key and time of each delivery, and the index of the head check.
    Existing rows keep ``order_key`` NULL (unordered)."""
    _add_columns(conn, deliveries, "order_key", "order_at")
    next(i for i in deliveries.indexes if i.name == "ix_deliveries_order").create(
        conn, checkfirst=True
    )


def _add_scheduler_lock(conn: sa.Connection) -> None:
    """Version 6: the row of the scheduler's election on SQLite (:mod:`cxbridge.election`)."""
    scheduler_lock.create(conn, checkfirst=True)


# Each migration brings the schema from version i to i + 1.
MIGRATIONS: list[Callable[[sa.Connection], None]] = [
    _create_tables,
    _add_dead_letter_outbox,
    _add_fencing,
    _add_notices,
    _add_ordering,
    _add_scheduler_lock,
]
