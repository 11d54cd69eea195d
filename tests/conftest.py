"""Shared fixtures. Services (Redis, RabbitMQ, PostgreSQL) are real: a test that needs one skips with a
reason when it is down, or fails when CXBRIDGE_REQUIRE_SERVICES=1 (as in CI)."""

from __future__ import annotations

import os
import socket

import pytest

REQUIRE_SERVICES = os.environ.get("CXBRIDGE_REQUIRE_SERVICES") == "1"

REDIS_URL = os.environ.get("CXBRIDGE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
AMQP_URL = os.environ.get("CXBRIDGE_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
POSTGRES_URL = os.environ.get(
    "CXBRIDGE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
SERVICE_PORTS = {"redis": 6379, "rabbitmq": 5672, "postgres": 5432}


def _reachable(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def require_service(name: str) -> None:
    """Skip (or fail under CXBRIDGE_REQUIRE_SERVICES=1) when the named local service is down."""
    port = SERVICE_PORTS[name]
    if _reachable(port):
        return
    reason = f"{name} is not running on 127.0.0.1:{port}"
    if REQUIRE_SERVICES:
        pytest.fail(f"{reason}, and CXBRIDGE_REQUIRE_SERVICES=1 requires it")
    pytest.skip(f"{reason}; start it or set CXBRIDGE_TEST_* URLs to run this test")


@pytest.fixture
def redis_url() -> str:
    require_service("redis")
    return REDIS_URL


@pytest.fixture
def amqp_url() -> str:
    require_service("rabbitmq")
    return AMQP_URL


@pytest.fixture
def postgres_url() -> str:
    require_service("postgres")
    return POSTGRES_URL
