"""The durable store: events, deliveries, attempts and dead letters (SQLAlchemy 2 Core).

The store, not the broker, is the source of truth: a delivery row exists before its message is enqueued,
and a delivery in backoff waits here (``next_attempt_at``) rather than in the broker. SQLite (embedded,
the default) and PostgreSQL (scale-out) are supported. Times are stored as UTC epoch seconds.
"""

from cxbridge.store._connect import normalize_database_url
from cxbridge.store._records import (
    AttemptRecord,
    DeadLetter,
    DeliveryFilter,
    DeliveryRecord,
    NewDelivery,
    ReplayReset,
)
from cxbridge.store._schema import (
    DEAD,
    DELIVERED,
    EXCERPT_LIMIT,
    PENDING,
    deliveries,
    metadata,
    scheduler_lock,
    schema_version,
)
from cxbridge.store._service import LATENCY_BUCKETS_MS, FeedItem, StoreCounts
from cxbridge.store._store import Store

__all__ = [  # noqa: RUF022 - grouped by purpose, like dramatiq's
    # the store
    "Store",
    "normalize_database_url",
    # records
    "AttemptRecord",
    "DeadLetter",
    "DeliveryFilter",
    "DeliveryRecord",
    "NewDelivery",
    "ReplayReset",
    "FeedItem",
    "StoreCounts",
    "LATENCY_BUCKETS_MS",
    # schema: delivery statuses, limits, tables (for tests and the benchmark)
    "DEAD",
    "DELIVERED",
    "PENDING",
    "EXCERPT_LIMIT",
    "deliveries",
    "metadata",
    "scheduler_lock",
    "schema_version",
]
