"""The records the store takes and returns (:class:`NewDelivery`, :class:`DeliveryRecord`,
:class:`AttemptRecord`), :class:`DeliveryFilter`, and the conversions between epoch seconds and
datetimes."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from cxbridge.outcome import Outcome, OutcomeKind, Payload
from cxbridge.store._schema import DEAD, deliveries

__all__ = [
    "AttemptRecord",
    "DeadLetter",
    "DeliveryFilter",
    "DeliveryRecord",
    "NewDelivery",
    "ReplayReset",
    "_dt",
    "_ts",
]


def _ts(value: datetime | None) -> float | None:
    return value.timestamp() if value is not None else None


def _dt(value: float | None) -> datetime | None:
    return datetime.fromtimestamp(value, UTC) if value is not None else None


@dataclass(frozen=True)
class NewDelivery:
    """A delivery to store with its event. ``order_key``: deliveries sharing it (per destination)
    are attempted one at a time, in the order their events occurred; ``None``: unordered."""

    id: str
    destination: str
    payload: Payload
    dead_reason: str | None = None
    order_key: str | None = None


@dataclass(frozen=True)
class DeliveryRecord:
    """One delivery as stored: ``status`` is ``pending``, ``delivered`` or ``dead``; ``attempts``
    counts the attempts made; ``last_error`` is the last failure (or the dead-letter reason);
    ``remote_id`` what the destination said it wrote."""

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
    lease_token: str | None = None  # set on a leased record: the fencing token of its lease
    order_key: str | None = None

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
            lease_token=m["lease_token"],
            order_key=m["order_key"],
        )

    def as_dict(self) -> dict[str, Any]:
        """A JSON-friendly view for the CLI and admin API (payload body as text)."""
        data = {k: v for k, v in self.__dict__.items() if k not in ("payload", "lease_token")}
        for key, value in data.items():
            if isinstance(value, datetime):
                data[key] = value.isoformat()
        data["payload"] = self.payload.body.decode("utf-8", "replace")
        return data


@dataclass(frozen=True)
class AttemptRecord:
    """One attempt of a delivery, as the attempt log keeps it: its ``number`` (from 1), when it
    started, how long the destination took, and the plugin's :class:`~cxbridge.Outcome` (its
    ``disable_destination`` flag is not kept)."""

    number: int
    started_at: datetime
    duration_ms: float
    outcome: Outcome

    @classmethod
    def from_mapping(cls, m: Mapping[str, Any]) -> AttemptRecord:
        outcome = Outcome(
            OutcomeKind(m["outcome"]),
            error=m["error"],
            retry_after=m["retry_after"],
            status_code=m["status_code"],
            provider_code=m["provider_code"],
            remote_id=m["remote_id"],
            response_excerpt=m["response_excerpt"],
        )
        started_at = _dt(m["started_at"]) or datetime.now(UTC)
        return cls(m["number"], started_at, m["duration_ms"], outcome)


@dataclass(frozen=True)
class DeadLetter:
    """One dead letter whose ``on_delivery_failed`` hooks are still to run (see cxbridge.outbox)."""

    id: int
    delivery_id: str
    reason: str


@dataclass(frozen=True)
class ReplayReset:
    """What :meth:`Store.reset_for_replay` did: the ids it made pending again, and the ids it left
    alone because they are still in the engine's hands (pending, or leased by a running attempt)."""

    reset: list[str]
    pending: list[str]
    in_flight: list[str]


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
    #: Only deliveries whose row changed at or after this time (``cxbridge deliveries --follow``).
    updated_since: datetime | None = None

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
        if self.updated_since is not None:
            clauses.append(c.updated_at >= self.updated_since.timestamp())
        return clauses
