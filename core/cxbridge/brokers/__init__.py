"""Dramatiq brokers: the embedded SQLite default, and Dramatiq's own Redis and RabbitMQ brokers
tuned for cxbridge. :func:`broker_from_url` picks one from a URL."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import dramatiq
from dramatiq.middleware import Middleware, Retries

from cxbridge.brokers.sqlite import SQLiteBroker, SQLiteMessageProxy
from cxbridge.errors import CxbridgeError

__all__ = [
    "REDIS_DEFAULTS",
    "BrokerURLError",
    "SQLiteBroker",
    "SQLiteMessageProxy",
    "broker_from_url",
    "check_broker",
    "cxbridge_middleware",
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


def cxbridge_middleware() -> list[Middleware]:
    """The middleware :func:`broker_from_url` installs: only what cxbridge's actor needs.

    Every middleware runs on every message (``before_``/``after_process_message`` and more), so
    Dramatiq's default stack (AgeLimit, TimeLimit, ShutdownNotifications, Callbacks, Pipelines,
    Retries) is cut down to:

    - ``Retries``: it owns the ``max_retries`` actor option our actor is declared with
      (``max_retries=0``: the retry decision is the engine's), and it is what marks a message
      whose actor raised as failed, so that the broker dead-letters it instead of acking it.

    Left out, and why:

    - ``TimeLimit``: its timer only starts on ``process_boot``, which the engine's in-process
      worker never emits, so it limited nothing; an attempt is bounded by the plugin's own
      timeouts and by its lease.
    - ``AgeLimit``: messages carry no ``max_age``; a delivery's retry window is the engine's.
    - ``Callbacks``, ``Pipelines``: the actor uses neither ``on_success`` nor pipelines.
    - ``ShutdownNotifications``: no actor asks for ``notify_shutdown``; ``Engine.stop`` lets
      running attempts finish.

    Pass ``middleware=`` to :func:`broker_from_url` for another stack (e.g. Dramatiq's default).
    """
    return [Retries()]


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
      (``queue_prefetch=`` overrides it) and acknowledge messages in batches
      (:mod:`cxbridge.brokers.redis`).
    - ``amqp://…``: Dramatiq's ``RabbitmqBroker`` with publisher confirms
      (``confirm_delivery=True``), so ``send()`` returns only once RabbitMQ has the message.

    Every broker gets :func:`cxbridge_middleware` unless ``middleware=`` is passed.

    Raises:
      BrokerURLError: for any other scheme, or a ``sqlite`` URL without a file path.
    """
    scheme = urlsplit(url).scheme.lower()
    if scheme in ("sqlite", "redis", "rediss", "unix", "amqp", "amqps"):
        options.setdefault("middleware", cxbridge_middleware())
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


def check_broker(broker: dramatiq.Broker) -> None:
    """Reach the broker once, so that a worker fails at start rather than later: Redis answers a
    ``PING``, RabbitMQ opens a connection; the SQLite broker opened its file when created. Raises
    the broker client's own error."""
    client = getattr(broker, "client", None)  # Dramatiq's RedisBroker
    if client is not None:
        client.ping()
    elif not isinstance(broker, SQLiteBroker) and hasattr(broker, "connection"):
        broker.connection  # noqa: B018 - RabbitmqBroker's property opens this thread's connection


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
    from cxbridge.brokers.redis import CxbridgeRedisBroker

    min_prefetch = int(options.pop("queue_prefetch", REDIS_MIN_PREFETCH))
    broker: dramatiq.Broker = CxbridgeRedisBroker(
        url=url, min_prefetch=min_prefetch, **{**REDIS_DEFAULTS, **options}
    )
    return broker
