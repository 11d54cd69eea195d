"""The Copilot WebSocket over real sockets: dead letters reach every panel of the tenant within 1 s,
a reconnect with a cursor gets what it missed, cursors are bound to their tenant, "still failing"
notices, ping/pong, and a slow panel dropped without holding up the others."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect

from cxbridge.service.copilot import GAP_SECONDS, CopilotHub, CursorSigner, FeedReader
from cxbridge.store import FeedItem, Store, deliveries
from tests.http_sink import HttpSink, Reply
from tests.service_support import (
    KEYS,
    auth,
    call_events,
    service_settings,
    serving,
    wait_until,
)


def ws_url(base: str, **query: str) -> str:
    params = "&".join(f"{k}={v}" for k, v in query.items())
    return base.replace("http://", "ws://") + "/v1/copilot" + (f"?{params}" if params else "")


def panel(base: str, tenant: str = "acme", **query: str) -> ClientConnection:
    return connect(ws_url(base, **query), additional_headers=auth(tenant), open_timeout=5)


def receive(ws: ClientConnection, timeout: float = 1.0) -> dict[str, Any]:
    return json.loads(ws.recv(timeout=timeout))


@pytest.fixture
def running(tmp_path: Path, sink: HttpSink) -> Iterator[tuple[str, httpx.Client]]:
    for tenant in KEYS:
        sink.reply(f"/broken/{tenant}", lambda request: Reply(400, b"rejected"))
    with (
        serving(service_settings(tmp_path, sink.url())) as (url, _),
        httpx.Client(base_url=url, timeout=10) as client,
    ):
        yield url, client


def post_summary(client: httpx.Client, tenant: str = "acme", agent: str = "a-7") -> str:
    event = call_events(tenant=tenant, agent=agent)[2]
    assert client.post("/v1/events", json=event, headers=auth(tenant)).status_code == 202
    return str(event["id"])


def test_a_dead_letter_reaches_every_panel_of_the_tenant_within_a_second(
    tmp_path: Path, sink: HttpSink
) -> None:
    sink.reply("/broken/acme", lambda request: Reply(400, b"rejected"))
    settings = service_settings(tmp_path, sink.url(), copilot_poll_interval=0.25)
    with (
        serving(settings) as (url, service),
        httpx.Client(base_url=url) as client,
        panel(url) as first,
        panel(url) as second,
        panel(url, "beta") as other,
    ):
        event_id = post_summary(client)
        wait_until(lambda: service.engine.store.feed((0, 0), "acme"))
        started = time.monotonic()
        messages = [receive(first, 1.0), receive(second, 1.0)]
        print(f"dead letter stored -> both panels: {time.monotonic() - started:.3f} s")
        for message in messages:
            assert message["type"] == "dead_letter"
            assert message["event_id"] == event_id and message["destination"] == "broken"
            assert message["event"]["ai"]["summary"] == "Refund."
            assert message["payload"]["id"] == event_id  # the rendered payload
            assert "400" in message["reason"]
        with pytest.raises(TimeoutError):
            other.recv(timeout=0.5)


def test_the_documented_message_has_the_fields_a_panel_receives(running: Any) -> None:
    url, client = running
    docs = (Path(__file__).parent.parent / "docs" / "service.md").read_text()
    (example,) = re.findall(r"```json\n(.*?)```", docs, flags=re.S)
    with panel(url) as ws:
        post_summary(client)
        assert set(receive(ws, 5)) == set(json.loads(example))


def test_a_reconnect_with_the_cursor_receives_what_it_missed(running: Any) -> None:
    url, client = running
    with panel(url) as ws:
        post_summary(client)
        cursor = receive(ws, 5)["cursor"]
    missed = [post_summary(client), post_summary(client)]
    time.sleep(0.1)
    with panel(url, cursor=cursor) as ws:
        got = [receive(ws, 5)["event_id"], receive(ws, 5)["event_id"]]
        with pytest.raises(TimeoutError):
            ws.recv(timeout=0.3)
    assert sorted(got) == sorted(missed)


def test_cursors_and_keys_are_bound_to_their_tenant(running: Any) -> None:
    url, client = running
    with panel(url, "beta") as ws:
        post_summary(client, "beta")
        beta_cursor = receive(ws, 5)["cursor"]
    post_summary(client, "beta")
    # Tenant A with B's cursor, a forged cursor, an altered one, and no key at all: refused.
    body, mac = beta_cursor.split(".")
    forged = [beta_cursor, "YWNtZTowOjA.AAAA", f"{body}.{mac[::-1]}"]
    for cursor in forged:
        with pytest.raises(InvalidStatus):
            panel(url, "acme", cursor=cursor)
    with pytest.raises(InvalidStatus):
        connect(ws_url(url, token=KEYS["acme"], cursor=beta_cursor), open_timeout=5)
    with pytest.raises(InvalidStatus):
        connect(ws_url(url), open_timeout=5)
    # B's own panel with the same cursor still works: the refusals above were about the tenant.
    with panel(url, "beta", cursor=beta_cursor) as ws:
        assert receive(ws, 5)["tenant"] == "beta"


def test_the_key_may_be_passed_as_a_query_parameter(running: Any) -> None:
    url, client = running
    with connect(ws_url(url, token=KEYS["acme"]), open_timeout=5) as ws:
        post_summary(client)
        assert receive(ws, 5)["type"] == "dead_letter"


def test_the_agent_filter_and_ping_pong(running: Any) -> None:
    url, client = running
    with panel(url, agent="a-1") as ws:
        post_summary(client, agent="a-2")
        mine = post_summary(client, agent="a-1")
        ws.send("[1]")  # not a message the server knows: ignored, the link stays
        ws.send(json.dumps({"type": "ping"}))
        messages = [receive(ws, 5), receive(ws, 5)]
    assert {"type": "pong"} in messages
    assert [m["event_id"] for m in messages if m["type"] == "dead_letter"] == [mine]


def test_a_delivery_failing_for_long_is_pushed_before_it_is_dead(
    tmp_path: Path, sink: HttpSink
) -> None:
    sink.reply("/broken/acme", lambda request: Reply(503, b"down"))
    settings = service_settings(tmp_path, sink.url(), copilot_failing_after=0.5)
    with serving(settings) as (url, _), httpx.Client(base_url=url) as client, panel(url) as ws:
        event_id = post_summary(client)
        message = receive(ws, 10)
    assert message["type"] == "failing" and message["event_id"] == event_id
    assert "503" in message["reason"]


def _item(index: int, tenant: str = "acme") -> FeedItem:
    return FeedItem(
        "dead_letter",
        index,
        tenant,
        "d",
        f"dlv-{index}",
        "e",
        "call_summary",
        "r",
        0.0,
        b"{}",
        "application/json",
        None,
    )


def test_a_slow_panel_is_dropped_and_never_blocks_the_others() -> None:
    async def scenario() -> tuple[int, bool]:
        hub = CopilotHub(CursorSigner("s"))
        slow = hub.subscribe("acme", None, queue_size=2)
        fast = hub.subscribe("acme", None, queue_size=1000)
        for index in range(1, 101):
            hub.publish([_item(index)])  # never waits, whatever the slow panel does
        received = 0
        while not fast.queue.empty():
            received += fast.queue.get_nowait() is not None
        return received, slow not in hub.subscribers and slow.queue.get_nowait() is None

    received, dropped = asyncio.run(scenario())
    assert received == 100 and dropped


def test_a_dead_letter_committed_below_ids_already_read_still_reaches_panels(
    tmp_path: Path,
) -> None:
    """PostgreSQL takes a serial id at insert and shows the row at commit: a row with id 2 can become
    visible after id 3 was read. The reader looks for skipped ids again, for a while."""
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    store.migrate()
    now = [0.0]
    reader = FeedReader(store, clock=lambda: now[0])
    reader.start()
    with store.engine.begin() as conn:
        conn.execute(
            deliveries.insert().values(
                id="dlv-1",
                tenant="acme",
                destination="d",
                event_id="e",
                event_type="call_summary",
                status="dead",
                body=b"{}",
                content_type="application/json",
                meta="{}",
                attempts=1,
                created_at=0.0,
                updated_at=0.0,
            )
        )

    def dead_letter(row_id: int) -> None:
        with store.engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO dead_letters (id, delivery_id, tenant, destination, reason, dead_at)"
                    " VALUES (:id, 'dlv-1', 'acme', 'd', 'r', 0)"
                ),
                {"id": row_id},
            )

    dead_letter(3)
    assert [i.id for i in reader.read()] == [3]
    dead_letter(2)  # committed late
    now[0] += 1
    assert [i.id for i in reader.read()] == [2]
    assert reader.read() == []
    now[0] += GAP_SECONDS
    reader.read()
    assert reader.gaps == {}  # id 1 never came (a rolled-back insert): no longer looked for
    store.close()
