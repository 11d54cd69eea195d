"""The WebSocket fallback to the Copilot panel: ``GET /v1/copilot``.

Every dead letter of a tenant, and every delivery failing for longer than
``CXBRIDGE_COPILOT_FAILING_AFTER``, is pushed to each connected panel of that tenant. The store is the
durable record and the cross-process channel: one poller per server process reads rows with an id
above the last one seen (``dead_letters`` and ``notices`` have autoincrement ids; ids skipped over are
looked for again, as a PostgreSQL row can commit after a higher id) and fans them out in process, so
a dead letter written by a worker on another machine reaches every server's panels.

A cursor names the last row a panel received. It is signed with the server secret and bound to the
tenant: a panel reconnecting with it first receives what it missed (rows are kept for the retention
period), and a cursor altered or issued to another tenant is refused. A panel that cannot keep up is
disconnected (close code 1013) rather than slowing the others.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from starlette.websockets import WebSocket, WebSocketDisconnect

from cxbridge.service._http import json_or_text
from cxbridge.service.auth import bearer_token
from cxbridge.store import FeedItem, Store

if TYPE_CHECKING:
    from cxbridge.service.runtime import Service

__all__ = ["CopilotHub", "CursorSigner", "FeedReader", "copilot_socket", "poll_feed"]

log = logging.getLogger(__name__)
POLICY_VIOLATION, TRY_AGAIN_LATER = 1008, 1013
SEND_TIMEOUT = 10.0
FEED_PAGE = 500  # rows of each kind per read
GAP_SECONDS = 30.0
MAX_GAP_RUN = 1000  # ids skipped at once that are looked for again
SENT_MEMORY = 5000  # ids a panel remembers having sent
Position = tuple[int, int]  # (last dead letter id, last notice id)


class CursorSigner:
    """Opaque cursors: ``base64(tenant:dead_id:notice_id).base64(HMAC-SHA256)``."""

    def __init__(self, secret: str) -> None:
        self._key = hashlib.sha256(secret.encode()).digest()

    def _mac(self, body: bytes) -> bytes:
        return hmac.new(self._key, body, hashlib.sha256).digest()[:18]

    def sign(self, tenant: str, position: Position) -> str:
        body = f"{tenant}:{position[0]}:{position[1]}".encode()
        return f"{_b64(body)}.{_b64(self._mac(body))}"

    def verify(self, cursor: str, tenant: str) -> Position | None:
        """The position of a cursor issued to ``tenant``; ``None`` if forged, altered or another's."""
        try:
            body_part, mac_part = cursor.split(".", 1)
            body, mac = _unb64(body_part), _unb64(mac_part)
            owner, dead, notice = body.decode().rsplit(":", 2)
            position = (int(dead), int(notice))
        except (ValueError, UnicodeDecodeError):
            return None
        if not hmac.compare_digest(mac, self._mac(body)) or owner != tenant:
            return None
        return position


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(eq=False)
class Subscriber:
    """One connected panel: its tenant, optional agent filter and bounded queue."""

    tenant: str
    agent: str | None
    queue: asyncio.Queue[FeedItem | None] = field(default_factory=lambda: asyncio.Queue(256))

    def wants(self, item: FeedItem) -> bool:
        return item.tenant == self.tenant and (self.agent is None or _agent_of(item) == self.agent)


def _agent_of(item: FeedItem) -> str | None:
    try:
        agent = json.loads(item.event or b"null")["call"]["agent"]["id"]
    except (ValueError, KeyError, TypeError):
        return None
    return agent if isinstance(agent, str) else None


class CopilotHub:
    """In-process fan-out. Publishing never waits: a full queue disconnects its panel."""

    def __init__(self, signer: CursorSigner) -> None:
        self.signer = signer
        self.position: Position = (0, 0)
        self.subscribers: set[Subscriber] = set()

    def subscribe(self, tenant: str, agent: str | None, queue_size: int = 256) -> Subscriber:
        subscriber = Subscriber(tenant, agent, asyncio.Queue(queue_size))
        self.subscribers.add(subscriber)
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        self.subscribers.discard(subscriber)

    def publish(self, items: list[FeedItem]) -> None:
        for item in items:
            for subscriber in list(self.subscribers):
                if subscriber.wants(item):
                    try:
                        subscriber.queue.put_nowait(item)
                    except asyncio.QueueFull:
                        self._drop(subscriber)

    def _drop(self, subscriber: Subscriber) -> None:
        log.warning("Copilot panel of tenant %s too slow: disconnected", subscriber.tenant)
        self.unsubscribe(subscriber)
        while not subscriber.queue.empty():
            subscriber.queue.get_nowait()
        subscriber.queue.put_nowait(None)  # tells its connection to close


class FeedReader:
    """Reads new feed rows by id. On PostgreSQL an id is taken at insert but visible at commit, so a
    row can appear below ids already read: the ids skipped over are looked up again on every read
    until they appear, or for ``GAP_SECONDS`` (a rolled-back insert leaves its id unused)."""

    def __init__(self, store: Store, clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.clock = clock
        self.position: Position = (0, 0)
        self.gaps: dict[tuple[int, int], float] = {}  # (0 dead letter | 1 notice, id) -> since

    def start(self) -> None:
        self.position = self.store.feed_heads()

    def read(self) -> list[FeedItem]:
        now = self.clock()
        self.gaps = {gap: since for gap, since in self.gaps.items() if now - since < GAP_SECONDS}
        late: list[FeedItem] = []
        if self.gaps:
            only = tuple([i for kind, i in self.gaps if kind == k] for k in (0, 1))
            late = self.store.feed((0, 0), only=(only[0], only[1]))
            for item in late:
                del self.gaps[(_kind_index(item), item.id)]
        new = self.store.feed(self.position)
        for item in sorted(new, key=lambda each: each.id):
            kind = _kind_index(item)
            last = self.position[kind]
            for missing in range(last + 1, min(item.id, last + 1 + MAX_GAP_RUN)):
                self.gaps.setdefault((kind, missing), now)
            self.position = _after(self.position, item)
        return late + new


def _kind_index(item: FeedItem) -> int:
    return 0 if item.kind == "dead_letter" else 1


async def poll_feed(service: Service) -> None:
    """Read new dead letters and notices from the store and publish them, until cancelled."""
    store, hub, settings = service.engine.store, service.hub, service.settings
    reader = FeedReader(store)
    await asyncio.to_thread(reader.start)
    hub.position = reader.position
    notices_every = max(settings.copilot_poll_interval, 1.0)
    last_notices = 0.0
    while True:
        try:
            if time.monotonic() - last_notices >= notices_every:
                last_notices = time.monotonic()
                await asyncio.to_thread(store.record_failing, settings.copilot_failing_after)
            items = await asyncio.to_thread(reader.read)
            hub.publish(items)
            hub.position = reader.position
            if len(items) >= FEED_PAGE:
                continue  # more waiting
        except Exception as exc:
            log.warning("Copilot feed poll failed (%s); retrying", type(exc).__name__)
        await asyncio.sleep(settings.copilot_poll_interval)


class _Panel:
    """One accepted WebSocket: sends feed items newer than its position, answers pings."""

    def __init__(
        self, ws: WebSocket, subscriber: Subscriber, position: Position, signer: CursorSigner
    ) -> None:
        self.ws = ws
        self.subscriber = subscriber
        self.position = position
        self.signer = signer
        self._lock = asyncio.Lock()
        self._sent: dict[tuple[str, int], None] = {}  # insertion-ordered, bounded

    async def send_json(self, data: dict[str, Any]) -> None:
        async with self._lock:
            await asyncio.wait_for(self.ws.send_text(json.dumps(data)), SEND_TIMEOUT)

    async def send_item(self, item: FeedItem) -> None:
        key = (item.kind, item.id)
        if key in self._sent:
            return  # already sent (from the backlog)
        self._sent[key] = None
        if len(self._sent) > 2 * SENT_MEMORY:
            for old in list(self._sent)[:SENT_MEMORY]:
                del self._sent[old]
        self.position = _after(self.position, item)
        await self.send_json(
            _message(item, self.signer.sign(self.subscriber.tenant, self.position))
        )

    async def pump(self) -> None:
        while (item := await self.subscriber.queue.get()) is not None:
            await self.send_item(item)
        await self.ws.close(TRY_AGAIN_LATER, "too slow: reconnect with your last cursor")

    async def listen(self) -> None:
        while True:
            text = await self.ws.receive_text()
            with contextlib.suppress(ValueError):
                message = json.loads(text)
                if isinstance(message, dict) and message.get("type") == "ping":
                    await self.send_json({"type": "pong"})


def _message(item: FeedItem, cursor: str) -> dict[str, Any]:
    if "json" in item.content_type:
        payload = json_or_text(item.payload)
    else:
        payload = item.payload.decode("utf-8", "replace")
    return {
        "type": item.kind,
        "cursor": cursor,
        "tenant": item.tenant,
        "destination": item.destination,
        "delivery_id": item.delivery_id,
        "event_id": item.event_id,
        "event_type": item.event_type,
        "reason": item.reason,
        "at": datetime.fromtimestamp(item.at, UTC).isoformat(),
        "event": json.loads(item.event) if item.event is not None else None,
        "payload": payload,
    }


async def copilot_socket(ws: WebSocket) -> None:
    """``GET /v1/copilot?agent=&cursor=`` with the tenant key as ``Authorization: Bearer`` or
    ``?token=``. Refused (HTTP 403) without a valid key or with a cursor not issued to the tenant."""
    service: Service = ws.app.state.service
    tenant = service.keys.tenant_for(bearer_token(ws.headers) or ws.query_params.get("token"))
    cursor = ws.query_params.get("cursor")
    hub = service.hub
    position: Position | None = hub.position
    if tenant is not None and cursor:
        position = hub.signer.verify(cursor, tenant)
    if tenant is None or position is None:
        await ws.close(POLICY_VIOLATION)
        return
    await ws.accept()
    # Subscribe before reading the backlog, so that nothing falls between the two.
    subscriber = hub.subscribe(tenant, ws.query_params.get("agent"))
    panel = _Panel(ws, subscriber, position, hub.signer)
    tasks: list[asyncio.Task[None]] = []
    try:
        if cursor:
            while backlog := await asyncio.to_thread(
                service.engine.store.feed, panel.position, tenant
            ):
                for item in backlog:
                    if subscriber.wants(item):
                        await panel.send_item(item)
                    else:  # another agent's: skip it, but move past it
                        panel.position = _after(panel.position, item)
        tasks = [asyncio.create_task(panel.pump()), asyncio.create_task(panel.listen())]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    except (WebSocketDisconnect, TimeoutError, RuntimeError):
        pass
    finally:
        hub.unsubscribe(subscriber)
        for task in tasks:
            task.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.gather(*tasks, return_exceptions=True)


def _after(position: Position, item: FeedItem) -> Position:
    """The position once ``item`` was seen."""
    if item.kind == "dead_letter":
        return (max(position[0], item.id), position[1])
    return (position[0], max(position[1], item.id))
