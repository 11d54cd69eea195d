"""Operations: ``/metrics`` (Prometheus), ``/healthz`` (the process answers) and ``/readyz`` (store and
broker reachable).

Delivery figures are read from the store at scrape time, so every server reports the same numbers
whichever process made the deliveries; events received and WebSocket clients are this process's own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import dramatiq
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from cxbridge.brokers import SQLiteBroker
from cxbridge.store import LATENCY_BUCKETS_MS, StoreCounts

if TYPE_CHECKING:
    from cxbridge.service.runtime import Service

__all__ = ["ServiceMetrics", "healthz", "metrics", "readyz"]


class ServiceMetrics:
    """The registry of one server process."""

    def __init__(self, service: Service) -> None:
        self.registry = CollectorRegistry()
        self.events_received = Counter(
            "cxbridge_events_received",
            "Events accepted by this process's ingress (duplicates not counted), by type.",
            ["type"],
            registry=self.registry,
        )
        self.registry.register(_StoreCollector(service))


class _StoreCollector(Collector):
    def __init__(self, service: Service) -> None:
        self.service = service

    def collect(self) -> Iterator[Metric]:
        clients = GaugeMetricFamily(
            "cxbridge_websocket_clients", "Copilot panels connected to this process."
        )
        clients.add_metric([], len(self.service.hub.subscribers))
        yield clients
        up = GaugeMetricFamily("cxbridge_store_up", "1 if the store answered this scrape.")
        try:
            counts = self.service.engine.store.counts()
        except Exception:  # the scrape still answers, saying the store is down
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from _store_metrics(counts, self._destination_type)

    def _destination_type(self, tenant: str, destination: str) -> str:
        config = self.service.engine.tenants.get(tenant)
        found = config.destinations.get(destination) if config else None
        return found.type if found else "unknown"


def _store_metrics(counts: StoreCounts, type_of: Callable[[str, str], str]) -> Iterator[Metric]:
    by_type: dict[tuple[str, str], int] = {}
    for (tenant, destination, status), count in counts.deliveries.items():
        key = (type_of(tenant, destination), status)
        by_type[key] = by_type.get(key, 0) + count
    deliveries = GaugeMetricFamily(
        "cxbridge_deliveries",
        "Deliveries in the store by destination type and status (pending, delivered, dead).",
        labels=["destination_type", "status"],
    )
    for (dtype, status), count in sorted(by_type.items()):
        deliveries.add_metric([dtype, status], count)
    yield deliveries
    for name, text, value in (
        ("cxbridge_dead_letters", "Dead letters kept (retention period).", counts.dead_letters),
        ("cxbridge_queue_depth", "Pending deliveries that are due now.", counts.due),
        ("cxbridge_backoff_deliveries", "Pending deliveries waiting for a retry.", counts.backoff),
    ):
        yield GaugeMetricFamily(name, text, value=value)
    bounds = [f"{ms / 1000:g}" for ms in LATENCY_BUCKETS_MS] + ["+Inf"]
    yield HistogramMetricFamily(
        "cxbridge_attempt_duration_seconds",
        "How long delivery attempts took (attempts kept in the store).",
        buckets=list(zip(bounds, counts.latency_buckets, strict=True)),
        sum_value=counts.latency_sum_ms / 1000,
    )


async def metrics(request: Request) -> Response:
    """Prometheus metrics.
    ---
    summary: Prometheus metrics
    tags: [operations]
    responses:
      "200": {description: Prometheus text format}
    """
    service: Service = request.app.state.service
    body = await run_in_threadpool(generate_latest, service.metrics.registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


async def healthz(request: Request) -> JSONResponse:
    """The process is up.
    ---
    summary: Liveness
    tags: [operations]
    responses:
      "200": {description: ok}
    """
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> JSONResponse:
    """Store and broker reachable.
    ---
    summary: Readiness
    tags: [operations]
    responses:
      "200": {description: Store and broker answer}
      "503": {description: "One of them does not; the body says which"}
    """
    service: Service = request.app.state.service
    engine = service.engine
    checks = {
        "store": await _check(engine.store.ping),
        "broker": await _check(broker_ping, engine.broker, engine.queue_name),
    }
    ready = all(value == "ok" for value in checks.values())
    return JSONResponse(checks, status_code=200 if ready else 503)


async def _check(func: Callable[..., Any], *args: Any) -> str:
    try:
        await run_in_threadpool(func, *args)
    except Exception as exc:
        return f"unreachable: {type(exc).__name__}"
    return "ok"


def broker_ping(broker: dramatiq.Broker, queue_name: str) -> None:
    """One round trip to the broker; raises if it cannot be reached."""
    if isinstance(broker, SQLiteBroker):
        broker.message_counts(queue_name)
    elif hasattr(broker, "client"):  # Redis
        broker.client.ping()
    elif hasattr(broker, "get_queue_message_counts"):  # RabbitMQ
        broker.get_queue_message_counts(queue_name)
