"""Which process runs the scheduler: an election through the store, so that every worker process can
run a scheduler thread and exactly one of them sweeps at a time, whichever processes are alive.

- **PostgreSQL**: a session-level advisory lock (``pg_try_advisory_lock``) held on a connection kept
  for it. The server frees the lock when that session ends, so a killed leader is replaced at the next
  campaign of another process (about a second), as soon as the server sees the connection closed.
- **SQLite**: a row in ``scheduler_lock`` naming the holder and when its hold expires. The holder
  renews it at every campaign; another process takes it once it has expired (``ttl`` seconds after
  the last renewal), so a killed leader is replaced within ``ttl`` plus one campaign interval.

The election keeps sweeping to one process; it is not what makes sweeping safe. A leader stalled
past its ``ttl`` may sweep once beside its successor, which is harmless: a sweep only enqueues, and a
delivery is leased before any attempt.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import uuid

import sqlalchemy as sa

from cxbridge.store import Store, scheduler_lock

__all__ = ["Election", "advisory_key"]

log = logging.getLogger(__name__)


def advisory_key(name: str) -> int:
    """The PostgreSQL advisory lock key (a signed 64-bit integer) of a lock name."""
    digest = hashlib.sha256(f"cxbridge:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class Election:
    """One process's candidacy for the lock ``name`` in ``store``.

    Call :meth:`campaign` regularly (more often than ``ttl``); it returns whether this process leads
    now. :meth:`resign` gives the lock up at once, for a clean shutdown.
    """

    def __init__(
        self, store: Store, *, name: str = "scheduler", ttl: float = 5.0, holder: str | None = None
    ) -> None:
        self.store = store
        self.name = name
        self.ttl = ttl
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.leader = False
        self._engine: sa.Engine | None = None  # PostgreSQL: a connection of the election's own
        self._session: sa.Connection | None = None

    def campaign(self) -> bool:
        """Try to become, or stay, the leader. A database error makes this process a follower."""
        try:
            leader = self._campaign_pg() if not self.store.is_sqlite else self._campaign_row()
        except Exception as exc:
            if not self.store.is_database_error(exc):
                raise
            self._close_session()
            if self.leader:
                log.warning("scheduler: lost the %s lock: %s", self.name, exc)
            self.leader = False
            return False
        if leader != self.leader:
            # What an operator looks for after a process died: taking the lock at INFO (the
            # worker's story), losing it at WARNING.
            log.log(
                logging.INFO if leader else logging.WARNING,
                "scheduler: %s the %s lock (holder %s)",
                "took" if leader else "lost",
                self.name,
                self.holder,
            )
        self.leader = leader
        return leader

    def resign(self) -> None:
        """Give the lock up (a no-op for a follower), so another process can take it at once."""
        try:
            if self.leader and self.store.is_sqlite:
                with self.store.engine.begin() as conn:
                    conn.execute(
                        scheduler_lock.delete().where(
                            scheduler_lock.c.name == self.name,
                            scheduler_lock.c.holder == self.holder,
                        )
                    )
        except Exception as exc:
            if not self.store.is_database_error(exc):
                raise
            log.warning("scheduler: could not release the %s lock: %s", self.name, exc)
        finally:
            self._close_session()  # on PostgreSQL, ending the session releases the lock
            if self._engine is not None:
                self._engine.dispose()
                self._engine = None
            self.leader = False

    def _campaign_pg(self) -> bool:
        if self._session is None:
            # Its own connection, never pooled: closing it must end the session, hence the lock.
            if self._engine is None:
                self._engine = sa.create_engine(self.store.engine.url, poolclass=sa.pool.NullPool)
            self._session = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        if self.leader:
            self._session.execute(sa.text("SELECT 1"))  # our session, hence our lock, is alive
            return True
        # Asked only while not holding it: the lock counts re-entries.
        taken = self._session.execute(
            sa.text("SELECT pg_try_advisory_lock(:key)"), {"key": advisory_key(self.name)}
        ).scalar()
        return bool(taken)

    def _campaign_row(self) -> bool:
        now = self.store.now()
        c = scheduler_lock.c
        with self.store.engine.begin() as conn:  # BEGIN IMMEDIATE: one campaigner at a time
            row = conn.execute(sa.select(c.holder, c.expires_at).where(c.name == self.name)).first()
            if row is None:
                conn.execute(
                    scheduler_lock.insert().values(
                        name=self.name, holder=self.holder, expires_at=now + self.ttl
                    )
                )
                return True
            if row.holder != self.holder and row.expires_at >= now:
                return False
            conn.execute(
                scheduler_lock.update()
                .where(c.name == self.name)
                .values(holder=self.holder, expires_at=now + self.ttl)
            )
            return True

    def _close_session(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            try:
                session.close()
            except Exception:  # a broken connection may fail to close; it is gone either way
                log.debug("closing the election's session failed", exc_info=True)
