"""How many messages of a queue a broker still holds, and how soon it hands out again a message whose
consumer died: what the scheduler needs to tell a lost message from one waiting in a long queue.

:func:`queue_depth` counts every message of the queue the broker has not yet been told is done with:
ready, delayed (Dramatiq's ``.DQ`` queue, or the SQLite broker's scheduled rows) and, where the
broker can tell, fetched by a consumer but not acknowledged. The store knows how many deliveries
wait for a message; only when the broker holds fewer than that can a message have been lost.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import dramatiq
from dramatiq.brokers.stub import StubBroker
from dramatiq.common import dq_name

from cxbridge.brokers.sqlite import SQLiteBroker

__all__ = ["RABBITMQ_REDELIVERY_BOUND", "QueueDepth", "queue_depth"]

#: RabbitMQ requeues a consumer's unacknowledged messages as soon as its connection closes; this
#: margin covers the broker noticing a dead connection (TCP reset, or missed AMQP heartbeats).
RABBITMQ_REDELIVERY_BOUND = 5.0


@dataclass(frozen=True)
class QueueDepth:
    """What a broker holds of one queue.

    :param messages: its messages that are ready, delayed, or fetched and not yet acknowledged
        (on RabbitMQ: ready and delayed ones only; see :func:`queue_depth`).
    :param redelivery_bound: the longest, in seconds, the broker takes to hand out again a message
        whose consumer died.
    """

    messages: int
    redelivery_bound: float


def queue_depth(broker: dramatiq.Broker, queue_name: str) -> QueueDepth | None:
    """How many messages of ``queue_name`` (and its delay queue) ``broker`` holds; ``None`` for a
    broker class this function cannot ask.

    - :class:`SQLiteBroker`: its ready, leased and scheduled rows; a dead worker's leases are
      requeued by the reaper, which runs every ``heartbeat_interval``.
    - Dramatiq's ``RedisBroker``: the message hashes of the queue and its ``.DQ`` (a message stays in
      its hash until acknowledged, so this counts fetched ones too); a dead worker's messages are
      requeued after ``heartbeat_timeout``.
    - Dramatiq's ``RabbitmqBroker``: the ready counts of the queue and its ``.DQ``, from declaring
      them again as Dramatiq does (``get_queue_message_counts``). That cannot see messages a live
      consumer holds unacknowledged, including delayed ones it keeps until their time (see
      docs/architecture.md for what that costs); a dead consumer's messages return to the queue
      when its connection closes.
    - Dramatiq's ``StubBroker`` (tests): the unfinished tasks of both queues.
    """
    if isinstance(broker, SQLiteBroker):
        counts = broker.message_counts(queue_name)
        held = counts["ready"] + counts["leased"] + counts["scheduled"]
        return QueueDepth(held, broker.heartbeat_interval)
    if isinstance(broker, StubBroker):
        queues = [broker.queues.get(name) for name in (queue_name, dq_name(queue_name))]
        return QueueDepth(sum(q.unfinished_tasks for q in queues if q is not None), 0.0)
    if _is_a(broker, "RedisBroker"):
        return _redis_depth(broker, queue_name)
    if _is_a(broker, "RabbitmqBroker"):
        return _rabbitmq_depth(broker, queue_name)
    return None


def _is_a(broker: dramatiq.Broker, class_name: str) -> bool:
    # By name, so that neither redis nor pika is imported unless that broker is in use.
    return any(cls.__name__ == class_name for cls in type(broker).__mro__)


def _redis_depth(broker: Any, queue_name: str) -> QueueDepth:
    with broker.client.pipeline(transaction=False) as pipe:
        for name in (queue_name, dq_name(queue_name)):
            pipe.hlen(f"{broker.namespace}:{name}.msgs")
        held = sum(int(n) for n in pipe.execute())
    return QueueDepth(held, broker.heartbeat_timeout / 1000)


def _rabbitmq_depth(broker: Any, queue_name: str) -> QueueDepth:
    import pika.exceptions

    try:
        ready, delayed, _dead = broker.get_queue_message_counts(queue_name)
    except (pika.exceptions.AMQPConnectionError, pika.exceptions.AMQPChannelError):
        del broker.connection  # this thread's next call opens a fresh connection and channel
        raise
    return QueueDepth(int(ready) + int(delayed), RABBITMQ_REDELIVERY_BOUND)
