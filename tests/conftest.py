"""Shared fixtures. Services (Redis, RabbitMQ, PostgreSQL) are real: a test that needs one skips with a
reason when it is down, or fails when CXBRIDGE_REQUIRE_SERVICES=1 (as in CI)."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REQUIRE_SERVICES = os.environ.get("CXBRIDGE_REQUIRE_SERVICES") == "1"
# Processes the tests start log text lines, which the tests read (JSON is the default off a terminal;
# tests/test_logs.py checks it).
os.environ["CXBRIDGE_LOG_FORMAT"] = "text"

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


@pytest.fixture(params=["sqlite", "redis", "rabbitmq"])
def broker_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A broker URL: the embedded SQLite broker on a file, or the shared Redis or RabbitMQ (tests
    on those use a queue of their own)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'broker.db'}"
    return str(request.getfixturevalue("redis_url" if request.param == "redis" else "amqp_url"))


@pytest.fixture(scope="session")
def _postgres_database() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, dropped at the end."""
    require_service("postgres")
    import sqlalchemy as sa

    name = f"cxbridge_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield POSTGRES_URL.rsplit("/", 1)[0] + "/" + name
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@pytest.fixture
def sink() -> Iterator[Any]:
    """A recording HTTP server on 127.0.0.1 (:class:`tests.http_sink.HttpSink`)."""
    from tests.http_sink import HttpSink

    with HttpSink() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The store's database URL: a SQLite file, or a clean PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    url: str = request.getfixturevalue("postgres_store_url")
    return url


@pytest.fixture
def postgres_store_url(_postgres_database: str) -> str:
    """A clean PostgreSQL database for a store (for what only PostgreSQL does)."""
    import sqlalchemy as sa

    from cxbridge.store import metadata, schema_version

    engine = sa.create_engine(_postgres_database)
    with engine.begin() as conn:
        metadata.drop_all(conn)
        schema_version.drop(conn, checkfirst=True)
    engine.dispose()
    return _postgres_database


@pytest.fixture
def make_engine() -> Iterator[Callable[..., Any]]:
    """``build_engine`` from tests.engine_support, closing every engine it made after the test."""
    from tests.engine_support import build_engine

    made: list[Any] = []

    def make(*args: Any, **kwargs: Any) -> Any:
        result = build_engine(*args, **kwargs)
        made.append(result[0])
        return result

    yield make
    for engine in made:
        engine.close()
