"""The statements of the hot path (ingest and every attempt), built once, and :class:`_Compiled`,
which runs a statement on a bare DBAPI cursor."""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.sql.compiler import SQLCompiler

from cxbridge.store._schema import (
    PENDING,
    attempts,
    dead_letters,
    deliveries,
    disabled_destinations,
    events,
)

__all__ = [
    "DB_NOW",
    "_ATTEMPT_KEYS",
    "_CLAIM_DEAD_LEFT_OVER",
    "_CLAIM_DEAD_OF",
    "_DEAD_KEYS",
    "_FINISH",
    "_FINISH_DEAD",
    "_HAS_EVENT",
    "_INSERT_ATTEMPT",
    "_INSERT_DEAD",
    "_MARK_ENQUEUED",
    "_Compiled",
    "is_head",
    "key_turn_statements",
    "lease_statement",
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
# The database's clock in epoch seconds (PostgreSQL), for lease times: see ``Store.db_clock``.
DB_NOW = sa.extract("epoch", sa.func.clock_timestamp())


_other = deliveries.alias("other")


def is_head(lease_now: sa.ColumnElement[Any]) -> sa.ColumnElement[bool]:
    """Per-key order: a delivery with an ordering key may be attempted only while no other pending
    delivery of its key (same tenant, destination and key) comes before it (event time, then
    arrival, then id: a total order, so one key never has two heads) or holds a live lease (an event
    that arrives late but occurred earlier waits for the attempt in flight). Used by the lease, the
    sweep and the enqueueing of heads; the subquery is an index lookup (``ix_deliveries_order``).
    ``lease_now`` as for :func:`lease_statement`."""
    return sa.or_(
        _c.order_key.is_(None),
        ~sa.exists().where(
            _other.c.order_key == _c.order_key,
            _other.c.tenant == _c.tenant,
            _other.c.destination == _c.destination,
            _other.c.status == PENDING,
            _other.c.id != _c.id,
            sa.or_(
                sa.tuple_(_other.c.order_at, _other.c.created_at, _other.c.id)
                < sa.tuple_(_c.order_at, _c.created_at, _c.id),
                _other.c.lease_until >= lease_now,
            ),
        ),
    )


def lease_statement(lease_now: sa.ColumnElement[Any]) -> sa.Update:
    """The lease: a pending, due delivery that no live lease holds gets a fresh lease, a fencing
    token, and the next attempt number (``attempts + 1``: each lease takes its own, so a late
    result can never share a number with the attempt that replaced it). ``lease_now`` is the
    clock lease times are on (the bound ``b_lease_now``, or :data:`DB_NOW`)."""
    return (
        deliveries.update()
        .where(
            _c.id == sa.bindparam("b_id"),
            _c.status == PENDING,
            sa.or_(_c.next_attempt_at.is_(None), _c.next_attempt_at <= sa.bindparam("b_now")),
            sa.or_(_c.lease_until.is_(None), _c.lease_until < lease_now),
            is_head(lease_now),
        )
        .values(
            lease_until=lease_now + sa.bindparam("b_lease_seconds"),
            lease_token=sa.bindparam("b_token"),
            attempts=_c.attempts + 1,
        )
        .returning(*deliveries.c, _DISABLED_REASON)
    )


def key_turn_statements(lease_now: sa.ColumnElement[Any]) -> tuple[sa.Select[Any], ...]:
    """PostgreSQL only, in the lease's transaction after :func:`lease_statement` took an ordered
    delivery: the leases of one ordering key take turns. Under READ COMMITTED two leases of one key
    would each miss the other's uncommitted lease (a delivery whose event occurred earlier but
    arrived later could be leased beside the one in flight), so the lease takes the key's advisory
    lock, held until commit, and then checks again, in a fresh snapshot, that its delivery is still
    the head (no row: roll the lease back). Unordered leases skip both, so they cost no round trip
    more. The two-integer key space is ours alone (0x63786272, "cxbr"); a hash collision only makes
    two keys take turns."""
    key_lock = sa.select(
        sa.func.pg_advisory_xact_lock(
            sa.literal_column("1668833906"),
            sa.func.hashtext(_c.tenant + " " + _c.destination + " " + _c.order_key),
        )
    ).where(_c.id == sa.bindparam("b_id"))
    return key_lock, sa.select(_c.id).where(_c.id == sa.bindparam("b_id"), is_head(lease_now))


_INSERT_ATTEMPT = attempts.insert()
# Fenced: only the holder of the lease's token records a result (rowcount 0: the result is stale).
_FINISH = (
    deliveries.update()
    .where(_c.id == sa.bindparam("b_id"), _c.lease_token == sa.bindparam("b_token"))
    .values(
        status=sa.bindparam("b_status"),
        attempts=sa.bindparam("b_attempts"),
        updated_at=sa.bindparam("b_now"),
        first_attempt_at=sa.bindparam("b_first_attempt_at"),
        next_attempt_at=sa.bindparam("b_next_attempt_at"),
        enqueued_at=sa.bindparam("b_enqueued_at"),
        lease_until=None,
        lease_token=None,
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
    "stale",
)
_DEAD_KEYS = ("delivery_id", "tenant", "destination", "reason", "dead_at")


def _claim_dead(*which: sa.ColumnElement[bool]) -> sa.Update:
    """Claim the dead letters ``which`` selects whose hooks have not run and that nobody holds (never
    claimed, or the claim ran out) until ``b_until``; returns what the hooks need. One conditional
    UPDATE, so two dispatchers never both get a row (PostgreSQL re-checks the condition on a row
    another transaction just claimed)."""
    _l = dead_letters.c
    free = (
        _l.hooks_done_at.is_(None),
        sa.or_(_l.hooks_claimed_until.is_(None), _l.hooks_claimed_until < sa.bindparam("b_now")),
    )
    # Not correlated: the subquery picks from dead_letters on its own; the UPDATE then re-checks.
    candidates = (
        sa.select(_l.id)
        .where(*free, *which)
        .order_by(_l.id)
        .limit(sa.bindparam("b_limit"))
        .correlate(None)
    )
    return (
        dead_letters.update()
        .where(_l.id.in_(candidates), *free)
        .values(hooks_claimed_until=sa.bindparam("b_until"))
        .returning(_l.id, _l.delivery_id, _l.reason)
    )


# The outbox of on_delivery_failed (cxbridge.outbox): the dead letters of deliveries just dead, and
# those left undone since ``b_before``.
_CLAIM_DEAD_OF = _claim_dead(dead_letters.c.delivery_id.in_(sa.bindparam("b_ids", expanding=True)))
_CLAIM_DEAD_LEFT_OVER = _claim_dead(dead_letters.c.dead_at <= sa.bindparam("b_before"))
_FINISH_DEAD = (
    dead_letters.update()
    .where(dead_letters.c.id == sa.bindparam("b_id"))
    .values(hooks_done_at=sa.bindparam("b_now"), hooks_claimed_until=None)
)


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
