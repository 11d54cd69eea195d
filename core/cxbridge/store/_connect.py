"""Opening a database: URL normalisation, the engines (on SQLite: a writer whose transactions
begin with ``BEGIN IMMEDIATE``, an autocommit reader, WAL and busy-timeout pragmas, and the
in-process write mutex), and the dialect's ``INSERT … ON CONFLICT`` construct."""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

__all__ = ["Engines", "create_engines", "normalize_database_url"]


def normalize_database_url(url: str) -> str:
    """``postgresql://`` uses psycopg 3; ``sqlite:///relative/path`` gets its folder created."""
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return url


class Engines(NamedTuple):
    """The engines of one database. Writes go through ``engine`` while holding ``write_lock``;
    reads through ``reader`` (the same engine except on a file-backed SQLite database)."""

    engine: sa.Engine
    reader: sa.Engine
    write_lock: contextlib.AbstractContextManager[Any]
    insert: Any  # the dialect's ``insert``, which has ``on_conflict_do_nothing``


def create_engines(url: str) -> Engines:
    """The engines for a URL already through :func:`normalize_database_url`."""
    write_lock: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
    if url.startswith("sqlite"):
        connect_args = {"timeout": 30, "check_same_thread": False}
        engine = sa.create_engine(url, connect_args=connect_args, pool_size=10, max_overflow=20)
        sa.event.listen(engine, "connect", _sqlite_on_connect)
        # Take the write lock when a transaction begins: a deferred transaction that upgrades from
        # read to write fails at once with "database is locked" instead of waiting.
        sa.event.listen(engine, "begin", lambda c: c.exec_driver_sql("BEGIN IMMEDIATE"))
        # SQLite has one writer at a time. Threads of this process queue for it on a mutex:
        # waiting in SQLite's busy handler means sleeping 1, 2, 5, 10, 25 ... ms between tries.
        # (Other processes still wait in the busy handler.)
        write_lock = threading.Lock()
        if ":memory:" in url:
            reader = engine
        else:
            # Reads run in autocommit (each statement its own snapshot, WAL): they never take
            # the write lock, so they neither wait for writers nor make writers wait.
            reader = sa.create_engine(url, connect_args=connect_args, pool_size=10, max_overflow=20)
            sa.event.listen(reader, "connect", _sqlite_on_connect)
        return Engines(engine, reader, write_lock, sqlite.insert)
    engine = sa.create_engine(url, pool_size=10, max_overflow=20)
    return Engines(engine, engine, write_lock, postgresql.insert)


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # Autocommit at the driver level, so that SQLAlchemy's "begin" event decides the BEGIN statement.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()
