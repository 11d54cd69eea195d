"""One behaviour suite, three brokers: every broker that broker_from_url builds must enqueue,
deliver, ack, honour a delay and dead-letter a failed message under a real Dramatiq Worker."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dramatiq
import pytest
from dramatiq import Worker
from dramatiq.common import xq_name

from cxbridge.brokers import REDIS_DEFAULTS, BrokerURLError, SQLiteBroker, broker_from_url
from cxbridge.errors import CxbridgeError


def wait_for(predicate: Callable[[], Any], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return bool(predicate())


def dead_count(broker: dramatiq.Broker, queue: str) -> int:
    if isinstance(broker, SQLiteBroker):
        return broker.message_counts(queue)["dead"]
    if hasattr(broker, "get_queue_message_counts"):  # RabbitMQ
        return int(broker.get_queue_message_counts(queue)[2])
    return int(broker.client.zcard(f"{broker.namespace}:{xq_name(queue)}"))  # Redis


@pytest.fixture
def queue() -> str:
    """A queue of this test's own, so parallel runs on shared services do not collide."""
    return f"cxbridge-test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def broker(broker_url: str, queue: str) -> Iterator[dramatiq.Broker]:
    broker = broker_from_url(broker_url)
    yield broker
    broker.flush(queue)
    if hasattr(broker, "get_queue_message_counts"):  # RabbitMQ keeps declared queues: drop ours
        for name in (queue, f"{queue}.DQ", f"{queue}.XQ"):
            broker.channel.queue_delete(name)
    broker.close()


@pytest.fixture
def worker(broker: dramatiq.Broker) -> Iterator[Worker]:
    worker = Worker(broker, worker_threads=4, worker_timeout=100)
    worker.start()
    yield worker
    worker.stop()


def test_a_sent_message_is_processed_and_acked(
    broker: dramatiq.Broker, worker: Worker, queue: str
) -> None:
    seen: list[int] = []

    @dramatiq.actor(broker=broker, queue_name=queue)
    def record(i: int) -> None:
        seen.append(i)

    for i in range(50):
        record.send(i)
    assert wait_for(lambda: len(seen) >= 50, timeout=15)
    broker.join(queue, timeout=10_000)
    time.sleep(0.2)
    assert sorted(seen) == list(range(50))  # each exactly once


def test_a_delayed_message_runs_after_its_delay(
    broker: dramatiq.Broker, worker: Worker, queue: str
) -> None:
    ran_at: list[float] = []

    @dramatiq.actor(broker=broker, queue_name=queue)
    def later() -> None:
        ran_at.append(time.time())

    sent_at = time.time()
    later.send_with_options(delay=700)
    assert wait_for(lambda: ran_at, timeout=10)
    assert ran_at[0] - sent_at >= 0.7


def test_a_failed_message_is_dead_lettered(
    broker: dramatiq.Broker, worker: Worker, queue: str
) -> None:
    @dramatiq.actor(broker=broker, queue_name=queue, max_retries=0)
    def broken() -> None:
        raise ValueError("boom")

    broken.send()
    assert wait_for(lambda: dead_count(broker, queue) == 1, timeout=10)


# -- broker_from_url -----------------------------------------------------------------------------


def test_an_unknown_scheme_names_the_supported_ones_and_hides_the_rest_of_the_url() -> None:
    with pytest.raises(BrokerURLError) as info:
        broker_from_url("kafka://admin:s3cret@127.0.0.1:9092")
    message = str(info.value)
    assert "'kafka://'" in message
    assert all(scheme in message for scheme in ("sqlite:///", "redis://", "amqp://"))
    assert "s3cret" not in message
    assert isinstance(info.value, CxbridgeError) and isinstance(info.value, ValueError)


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///", "sqlite:///:memory:"])
def test_a_sqlite_url_needs_a_file(url: str) -> None:
    with pytest.raises(BrokerURLError, match="sqlite"):
        broker_from_url(url)


def test_a_relative_sqlite_path_is_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    broker = broker_from_url("sqlite:///var/broker.db", lease_ms=5_000)
    try:
        assert isinstance(broker, SQLiteBroker)
        assert (tmp_path / "var" / "broker.db").exists()
        assert broker.lease_ms == 5_000
    finally:
        broker.close()


def test_redis_is_tuned_for_throughput_and_dead_worker_recovery(redis_url: str) -> None:
    from dramatiq.brokers.redis import RedisBroker

    broker = broker_from_url(redis_url, heartbeat_timeout=20_000)
    try:
        assert isinstance(broker, RedisBroker)
        assert broker.heartbeat_timeout == 20_000  # options override the defaults
        assert broker.maintenance_chance == REDIS_DEFAULTS["maintenance_chance"] > 1_000
        broker.declare_queue("cxbridge-prefetch-probe")
        consumer = broker.consume("cxbridge-prefetch-probe", prefetch=8)
        assert consumer.prefetch >= 64
    finally:
        broker.close()


def test_rabbitmq_uses_publisher_confirms(amqp_url: str) -> None:
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    broker = broker_from_url(amqp_url)
    try:
        assert isinstance(broker, RabbitmqBroker) and broker.confirm_delivery is True
    finally:
        broker.close()
