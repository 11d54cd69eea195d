"""Dramatiq brokers: the embedded SQLite default, and Dramatiq's own Redis and RabbitMQ brokers
tuned for cxbridge. :func:`broker_from_url` picks one from a URL."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import dramatiq
from dramatiq.broker import Consumer

from cxbridge.brokers.sqlite import SQLiteBroker, SQLiteMessageProxy
from cxbridge.errors import CxbridgeError

__all__ = [
    "REDIS_DEFAULTS",
    "BrokerURLError",
    "SQLiteBroker",
    "SQLiteMessageProxy",
    "broker_from_url",
]

SUPPORTED_SCHEMES = (
    "sqlite:///relative/path.db or sqlite:////absolute/path.db (embedded, the default)",
    "redis://[:password@]host[:port][/db] (or rediss://)",
    "amqp://user:password@host[:port][/vhost] (or amqps://)",
)

#: What :func:`broker_from_url` passes to Dramatiq's ``RedisBroker`` unless the caller overrides it.
REDIS_DEFAULTS: dict[str, Any] = {
    # A worker that sent no command for this long is dead and its unacked messages are requeued.
    # Every fetch and ack is a heartbeat, so only a worker whose threads are all busy with a full
    # prefetch goes quiet; 30 s stays above our 15 s HTTP timeout (Dramatiq's default: 60 s).
    "heartbeat_timeout": 30_000,
    # Out of a million commands, how many also run the (cheap) dead-worker maintenance. Dramatiq's
    # 1,000 means an idle worker finds a dead one only after minutes; 50,000 makes it seconds.
    "maintenance_chance": 50_000,
}

#: The least number of messages a Redis consumer prefetches (Dramatiq's default: 2 x threads).
REDIS_MIN_PREFETCH = 64


class BrokerURLError(CxbridgeError, ValueError):
    """A broker URL has an unsupported scheme or no usable path."""


def broker_from_url(url: str, **options: Any) -> dramatiq.Broker:
    """Create the Dramatiq broker that ``url`` names; ``options`` go to the broker's constructor.

    - ``sqlite:///path/to/broker.db``: :class:`SQLiteBroker` on that file (three slashes: a path
      relative to the working directory; four: absolute); its parent directory is created.
    - ``redis://…``: Dramatiq's ``RedisBroker`` with :data:`REDIS_DEFAULTS` (faster dead-worker
      recovery) and consumers that prefetch at least :data:`REDIS_MIN_PREFETCH` messages
      (``queue_prefetch=`` overrides it).
    - ``amqp://…``: Dramatiq's ``RabbitmqBroker`` with publisher confirms
      (``confirm_delivery=True``), so ``send()`` returns only once RabbitMQ has the message.

    Raises:
      BrokerURLError: for any other scheme, or a ``sqlite`` URL without a file path.
    """
    scheme = urlsplit(url).scheme.lower()
    if scheme == "sqlite":
        return SQLiteBroker(_sqlite_path(url), **options)
    if scheme in ("redis", "rediss", "unix"):
        return _redis_broker(url, **options)
    if scheme in ("amqp", "amqps"):
        from dramatiq.brokers.rabbitmq import RabbitmqBroker

        options.setdefault("confirm_delivery", True)
        broker: dramatiq.Broker = RabbitmqBroker(url=url, **options)
        return broker
    # Only the scheme is echoed: the rest of a URL may carry a password.
    raise BrokerURLError(
        f"unsupported broker URL scheme {scheme + '://' if scheme else '(none)'!r}; "
        "set CXBRIDGE_BROKER_URL to one of: " + "; ".join(SUPPORTED_SCHEMES)
    )


def _sqlite_path(url: str) -> Path:
    prefix = "sqlite:///"
    if not url.lower().startswith(prefix) or len(url) == len(prefix):
        raise BrokerURLError(
            "a sqlite broker URL needs a file path, e.g. sqlite:///var/cxbridge/broker.db "
            "(relative) or sqlite:////var/lib/cxbridge/broker.db (absolute)"
        )
    raw = unquote(url[len(prefix) :].split("?", 1)[0])
    if raw == ":memory:":
        raise BrokerURLError(
            "the sqlite broker cannot run in memory: workers share it through a file; "
            "use sqlite:///path/to/broker.db"
        )
    return Path(os.path.expanduser(raw))


def _redis_broker(url: str, **options: Any) -> dramatiq.Broker:
    from dramatiq.brokers.redis import RedisBroker

    min_prefetch = int(options.pop("queue_prefetch", REDIS_MIN_PREFETCH))

    class _PrefetchingRedisBroker(RedisBroker):
        """Dramatiq's RedisBroker whose consumers fetch bigger batches per round trip."""

        def consume(self, queue_name: str, prefetch: int = 1, timeout: int = 5000) -> Consumer:
            if not queue_name.endswith(".DQ"):  # delay queues already prefetch 1,000 x threads
                prefetch = max(prefetch, min_prefetch)
            consumer: Consumer = super().consume(queue_name, prefetch, timeout)
            return consumer

    broker: dramatiq.Broker = _PrefetchingRedisBroker(  # type: ignore[no-untyped-call]  # untyped
        url=url, **{**REDIS_DEFAULTS, **options}
    )
    return broker
