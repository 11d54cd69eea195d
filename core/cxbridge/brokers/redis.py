"""Dramatiq's ``RedisBroker``, tuned for cxbridge: bigger prefetch, acknowledgements in batches.

Dramatiq's Redis consumer acknowledges every message with its own round trip (one Lua script call),
from the worker thread that processed it. Here :meth:`_BatchAckConsumer.ack` only notes the message
id; the consumer thread sends the noted ids in one script call before its next fetch (so at most
every few milliseconds under load, and within one ``worker_timeout`` when idle), when
:data:`ACK_BATCH` ids are waiting, and when the consumer closes.

What that changes: an acknowledged message stays in Redis's "fetched, not acked" set for those
few milliseconds longer. If the worker process dies in that window, Redis hands the message out
again after the heartbeat timeout, exactly as for a message that was being processed when the
process died: Dramatiq's Redis broker is at-least-once either way, and cxbridge's actor turns a
second copy of a finished delivery into a no-op (the lease refuses it). Failed messages
(``nack``) are still sent at once.

Surviving a Redis restart: Dramatiq's ``ConsumerThread`` restarts its consumer after a
``ConnectionClosed``, but when it cleans up after any other error (e.g. the delay-queue thread's
re-enqueue failing) it calls ``requeue``, whose raw ``redis.ConnectionError`` escapes the cleanup and
ends the thread for good. Here every consumer call that talks to Redis turns connection errors into
``ConnectionClosed``, so the thread lives on and reconnects (every
``dramatiq_restart_delay`` ms, 3 s by default).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Iterator
from typing import Any

import redis
from dramatiq.brokers.redis import RedisBroker, _RedisConsumer
from dramatiq.common import current_millis
from dramatiq.errors import ConnectionClosed

__all__ = ["ACK_BATCH", "CxbridgeRedisBroker"]

#: Send the noted acknowledgements once this many are waiting, even before the next fetch.
ACK_BATCH = 64

# Acknowledge many messages of one queue: the body of dispatch.lua's "ack" command in a loop, with
# the heartbeat every dispatch.lua call records. Keys as dispatch.lua builds them.
_ACK_MANY = """
local namespace = KEYS[1]
local timestamp = ARGV[1]
local queue_name = ARGV[2]
local worker_id = ARGV[3]
redis.call("zadd", namespace .. ":__heartbeats__", timestamp, worker_id)
local queue_acks = namespace .. ":__acks__." .. worker_id .. "." .. queue_name
local queue_messages = namespace .. ":" .. queue_name .. ".msgs"
for i = 4, #ARGV do
    if redis.call("srem", queue_acks, ARGV[i]) > 0 then
        redis.call("hdel", queue_messages, ARGV[i])
    end
end
"""


#: What a Redis client raises while the server is away, restarting or loading its data.
_CONNECTION_ERRORS = (redis.ConnectionError, redis.TimeoutError)


@contextlib.contextmanager
def _connection_closed() -> Iterator[None]:
    try:
        yield
    except _CONNECTION_ERRORS as exc:
        raise ConnectionClosed(exc) from None  # type: ignore[no-untyped-call]  # untyped


class _BatchAckConsumer(_RedisConsumer):
    def __init__(self, broker: CxbridgeRedisBroker, *args: Any) -> None:
        super().__init__(broker, *args)  # type: ignore[no-untyped-call]  # untyped
        self._lock = threading.Lock()
        self._acks: list[str] = []
        self._closed = False

    def ack(self, message: Any) -> None:
        with self._lock:
            self._acks.append(message.options["redis_message_id"])
            # Counted as done for the prefetch at once, as Dramatiq's ack does after its round trip.
            self.queued_message_ids.discard(message.message_id)
            flush = self._closed or len(self._acks) >= ACK_BATCH
        if flush:
            self.flush_acks()

    def flush_acks(self) -> None:
        """Send every noted acknowledgement now (one script call per :data:`ACK_BATCH`)."""
        with self._lock:
            ids, self._acks = self._acks, []
        sent = 0
        try:
            while sent < len(ids):
                self.broker.ack_many(self.queue_name, ids[sent : sent + ACK_BATCH])
                sent += ACK_BATCH
        except _CONNECTION_ERRORS as exc:
            with self._lock:  # not lost: sent with the next flush (or redelivered, harmlessly)
                self._acks[:0] = ids[sent:]
            raise ConnectionClosed(exc) from None  # type: ignore[no-untyped-call]

    def requeue(self, messages: Iterable[Any]) -> None:
        with _connection_closed():
            super().requeue(messages)  # type: ignore[no-untyped-call]  # untyped

    def __next__(self) -> Any:
        # Before the consumer fetches (or idles): that is when its acks went out in one batch.
        if self._acks and not self.message_cache:
            self.flush_acks()
        with _connection_closed():  # Dramatiq's catches only ConnectionError, not TimeoutError
            return super().__next__()  # type: ignore[no-untyped-call]  # untyped

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self.flush_acks()
        super().close()


class CxbridgeRedisBroker(RedisBroker):
    """Dramatiq's RedisBroker whose consumers fetch at least ``min_prefetch`` messages per round trip
    and acknowledge messages in batches (see the module docstring)."""

    def __init__(self, *, min_prefetch: int, **options: Any) -> None:
        super().__init__(**options)  # type: ignore[no-untyped-call]  # untyped
        self.min_prefetch = min_prefetch
        self._ack_many = self.client.register_script(_ACK_MANY)

    @property
    def consumer_class(self) -> type[_BatchAckConsumer]:
        return _BatchAckConsumer

    def consume(self, queue_name: str, prefetch: int = 1, timeout: int = 5000) -> Any:
        if not queue_name.endswith(".DQ"):  # delay queues already prefetch 1,000 x threads
            prefetch = max(prefetch, self.min_prefetch)
        return super().consume(queue_name, prefetch, timeout)

    def ack_many(self, queue_name: str, message_ids: list[str]) -> None:
        args: list[str | int] = [current_millis(), queue_name, self.broker_id, *message_ids]
        self._ack_many(keys=[self.namespace], args=args)
