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
schema_version = sa.Table(
    "cxbridge_schema_version", metadata, sa.Column("version", sa.Integer, nullable=False)
)

# Each migration brings the schema from version i to i + 1. Version 1 is the tables above.
# A table added later is created by its own migration (``checkfirst``: version 1 on a fresh database
# already creates every table of ``metadata``).
MIGRATIONS: list[Callable[[sa.Connection], None]] = [
    lambda conn: metadata.create_all(conn, tables=[t for t in metadata.sorted_tables]),
    lambda conn: notices.create(conn, checkfirst=True),
]
