"""What the inspection commands print: events, deliveries and one delivery's attempts, as rich tables on
a terminal (plain text when piped) or as JSON-friendly dictionaries for ``--json``."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from cxbridge.outcome import OutcomeKind
from cxbridge.store import DEAD, DELIVERED, PENDING, DeliveryRecord

__all__ = [
    "attempt_dict",
    "console",
    "deliveries_table",
    "delivery_detail",
    "delivery_line",
    "event_dict",
    "events_table",
    "when",
]

STATUS_STYLE = {DELIVERED: "green", PENDING: "yellow", DEAD: "bold red"}
OUTCOME_STYLE = {
    OutcomeKind.DELIVERED: "green",
    OutcomeKind.RETRY: "yellow",
    OutcomeKind.PERMANENT: "red",
}


def when(value: datetime | float | None) -> str:
    """A time as ``2026-12-02 16:44:35`` (UTC), or ``-``."""
    if value is None:
        return "-"
    if not isinstance(value, datetime):
        value = datetime.fromtimestamp(value, UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _status(status: str) -> Text:
    return Text(status, style=STATUS_STYLE.get(status, ""))


def event_dict(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "tenant": row["tenant"],
        "id": row["id"],
        "type": row["type"],
        "occurred_at": when(row["occurred_at"]),
        "received_at": when(row["received_at"]),
        "deliveries": dict(row["deliveries"]),
    }


def events_table(rows: Iterable[Mapping[str, Any]]) -> Table:
    table = Table("received (UTC)", "tenant", "event", "type", "deliveries", box=None)
    for row in rows:
        counts = ", ".join(f"{n} {status}" for status, n in sorted(row["deliveries"].items()))
        table.add_row(
            when(row["received_at"]), row["tenant"], row["id"], row["type"], counts or "none"
        )
    return table


def delivery_line(r: DeliveryRecord) -> Text:
    """One line per change, for ``cxbridge deliveries --follow``."""
    line = Text(f"{when(datetime.now(UTC))}  {r.id}  {r.tenant}/{r.destination}  {r.event_type}  ")
    line.append(_status(r.status))
    line.append(f"  tries {r.attempts}")
    if r.status != DELIVERED and r.last_error:
        line.append(f"  {_one_line(r.last_error)}")
    return line


def deliveries_table(records: Iterable[DeliveryRecord]) -> Table:
    table = Table(
        "created (UTC)", "delivery", "tenant/destination", "event", "status", "tries", "last error",
        box=None,
    )  # fmt: skip
    for r in records:
        table.add_row(
            when(r.created_at),
            r.id,
            f"{r.tenant}/{r.destination}",
            f"{r.event_type} {r.event_id}",
            _status(r.status),
            str(r.attempts),
            _one_line(r.last_error or ""),
        )
    return table


def attempt_dict(row: Mapping[str, Any]) -> dict[str, Any]:
    data = dict(row)
    data["started_at"] = when(row["started_at"])
    return data


def delivery_detail(
    record: DeliveryRecord,
    attempts: Sequence[Mapping[str, Any]],
    dead_letters: Sequence[Mapping[str, Any]],
) -> Group:
    """One delivery: its state, every attempt (time, duration, status, error, response excerpt) and
    its dead letters."""
    head = Table.grid(padding=(0, 2))
    head.add_row("delivery", record.id)
    head.add_row("tenant/destination", f"{record.tenant}/{record.destination}")
    head.add_row("event", f"{record.event_type} {record.event_id}")
    head.add_row("status", _status(record.status))
    head.add_row("created", when(record.created_at))
    if record.status == PENDING:
        head.add_row("next attempt", when(record.next_attempt_at))
    if record.delivered_at is not None:
        head.add_row("delivered", when(record.delivered_at))
    if record.remote_id:
        head.add_row("remote id", record.remote_id)
    if record.last_error:
        head.add_row("last error", record.last_error)
    parts: list[Any] = [head, Text()]
    table = Table("#", "started (UTC)", "took", "outcome", "status", "error", title="attempts")
    for a in attempts:
        status = " ".join(str(x) for x in (a["status_code"], a["provider_code"]) if x) or "-"
        table.add_row(
            str(a["number"]),
            when(a["started_at"]),
            f"{a['duration_ms']:.0f} ms",
            Text(a["outcome"], style=OUTCOME_STYLE.get(a["outcome"], "")),
            status,
            a["error"] or "",
        )
    parts.append(table if attempts else Text("no attempts yet"))
    for a in attempts:
        if a["response_excerpt"]:
            parts += [
                Text(f"\nresponse of attempt {a['number']}:", style="bold"),
                a["response_excerpt"],
            ]
    for dead in dead_letters:
        replayed = f", replayed {when(dead['replayed_at'])}" if dead["replayed_at"] else ""
        parts.append(Text(f"\ndead letter {when(dead['dead_at'])}{replayed}: {dead['reason']}"))
    return Group(*parts)


def _one_line(text: str, limit: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def console() -> Console:
    """Rich output on a terminal; when piped, plain text whose tables are never squeezed to 80
    columns (a script's grep must find whole ids)."""
    width = None if sys.stdout.isatty() else 1000
    return Console(highlight=False, width=width)
