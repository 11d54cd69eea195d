"""An embedded Dramatiq broker on one SQLite file: the default when no Redis or RabbitMQ is
configured.

How it works
    One ``messages`` table holds every message as a row with a ``state``: ``ready`` (claimable),
    ``leased`` (claimed by a worker, with an ``owner`` and a ``lease_expires_at``) or
    ``scheduled`` (a delay: ``available_at`` is in the future). Delays live on the canonical
    queue as rows, never in worker memory, so 100,000 messages in backoff cost disk, not RAM. A
    consumer claims a batch in one ``BEGIN IMMEDIATE`` transaction (``UPDATE … WHERE id IN
    (SELECT … LIMIT n) RETURNING …``), lowest ``priority`` first, then oldest. ``ack`` deletes
    the row; ``nack`` moves it to the ``dead`` table.

Wake-ups
    Inside a process, consumers wait on a condition notified on enqueue and on ack. Across
    processes they poll (``poll_interval``, 50 ms by default); an idle poll is one indexed read,
    no write lock.

Crash recovery
    Each worker process registers in the ``workers`` table and runs one maintenance thread that,
    every ``heartbeat_interval``: refreshes its heartbeat and extends the leases it owns;
    requeues leases that expired (``lease_ms`` without a heartbeat) and, on the same host,
    leases owned by a PID that no longer exists (so a SIGKILLed worker's messages come back
    within about a second); promotes due scheduled rows. A graceful stop requeues prefetched,
    unprocessed messages at once.

Durability
    WAL journal with ``synchronous=NORMAL``: a committed enqueue or ack survives a crash of any
    process (including SIGKILL), but the last transactions before an OS crash or power loss may
    be rolled back. Pass ``synchronous="FULL"`` to survive power loss too, at about half the
    enqueue rate.

Limits
    One host only: the file must be on a local disk (not NFS/SMB — SQLite's locking and WAL
    shared memory do not work there), and the dead-PID check assumes the processes share a PID
    namespace and hostname. Writes are serialized (one writer at a time); this suits one
    machine's worth of workers. Delivery is at least once: a message whose worker dies
    mid-processing runs again.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import sqlite3
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

from dramatiq.broker import Broker, Consumer, MessageProxy
from dramatiq.common import q_name
from dramatiq.errors import ConnectionClosed, DecodeError, QueueJoinTimeout, QueueNotFound
from dramatiq.message import Message
from dramatiq.middleware import Middleware

__all__ = ["SQLiteBroker", "SQLiteMessageProxy"]

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: acks address rows by id
    queue            TEXT    NOT NULL,
    state            TEXT    NOT NULL CHECK (state IN ('ready', 'leased', 'scheduled')),
    priority         INTEGER NOT NULL DEFAULT 0,          -- lower runs first, like Dramatiq's
    available_at     INTEGER NOT NULL,                    -- unix ms, in the future while scheduled
    owner            TEXT,                                -- workers.id while leased
    lease_expires_at INTEGER,                             -- unix ms, while leased
    deliveries       INTEGER NOT NULL DEFAULT 0,
    enqueued_at      INTEGER NOT NULL,
    message_id       TEXT    NOT NULL,
    actor_name       TEXT    NOT NULL,
    data             BLOB    NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_claim ON messages (queue, state, priority, id);
CREATE INDEX IF NOT EXISTS messages_due   ON messages (state, available_at);
CREATE INDEX IF NOT EXISTS messages_owner ON messages (owner, state);

CREATE TABLE IF NOT EXISTS dead (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    queue      TEXT    NOT NULL,
    message_id TEXT    NOT NULL,
    actor_name TEXT    NOT NULL,
    failed_at  INTEGER NOT NULL,
    error      TEXT,
    data       BLOB    NOT NULL
);
CREATE INDEX IF NOT EXISTS dead_queue     ON dead (queue, id);
CREATE INDEX IF NOT EXISTS dead_failed_at ON dead (failed_at);

CREATE TABLE IF NOT EXISTS workers (
    id           TEXT    PRIMARY KEY,
    hostname     TEXT    NOT NULL,
    pid          INTEGER NOT NULL,
    started_at   INTEGER NOT NULL,
    heartbeat_at INTEGER NOT NULL
);
"""

_CLAIM = """
UPDATE messages
   SET state = 'leased', owner = ?, lease_expires_at = ?, deliveries = deliveries + 1
 WHERE id IN (SELECT id FROM messages
               WHERE queue = ? AND state = 'ready'
               ORDER BY priority, id
               LIMIT ?)
RETURNING id, priority, data
"""

_REQUEUE_OWNED = """
UPDATE messages SET state = 'ready', owner = NULL, lease_expires_at = NULL
 WHERE owner = ? AND state = 'leased'
"""

_DEAD_MESSAGE_TTL_MS = 7 * 24 * 3600 * 1000
_DEAD_PRUNE_EVERY_S = 60.0


def _now_ms() -> int:
    return int(time.time() * 1000)


def _pid_alive(pid: int) -> bool:
    """Whether a process with this PID runs on this host (zombies count as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            # Format: "pid (comm) S ..."; comm may hold spaces or parens, so split at the last ')'.
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


class SQLiteMessageProxy(MessageProxy):
    """A delivered message and the id of the row that carries it (``row_id``)."""

    def __init__(self, message: Message[Any], row_id: int) -> None:
        super().__init__(message)
        self.row_id = row_id


class SQLiteBroker(Broker):
    """A Dramatiq broker storing messages in the SQLite file at ``path`` (created if missing).

    Parameters:
      path: the database file. Its parent directory is created. ``:memory:`` is refused.
      middleware: as for :class:`dramatiq.Broker`; ``None`` means Dramatiq's default middleware.
      lease_ms: how long a claimed message stays leased without a heartbeat from its owner
        before any worker may requeue it. Living owners extend it every ``heartbeat_interval``.
      heartbeat_interval: seconds between heartbeats, reaper runs and promotions of due rows.
      poll_interval: the longest a consumer sleeps before looking for work that another
        process wrote.
      busy_timeout_ms: how long a connection waits for the write lock before failing.
      synchronous: ``"NORMAL"`` survives process crashes; ``"FULL"`` also survives power loss.
      dead_message_ttl_ms: dead rows older than this are deleted (``None`` keeps them forever).

    A message's priority is ``options["priority"]`` if the sender set one, else its actor's
    ``priority`` when the actor is declared on this broker, else 0; lower runs first.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        middleware: list[Middleware] | None = None,
        lease_ms: int = 30_000,
        heartbeat_interval: float = 1.0,
        poll_interval: float = 0.05,
        busy_timeout_ms: int = 10_000,
        synchronous: Literal["NORMAL", "FULL"] = "NORMAL",
        dead_message_ttl_ms: int | None = _DEAD_MESSAGE_TTL_MS,
    ) -> None:
        super().__init__(middleware=middleware)
        if str(path) in ("", ":memory:") or str(path).startswith("file::memory:"):
            raise ValueError(
                "SQLiteBroker needs a file path: an in-memory database is private to one "
                "connection, and the broker opens one connection per thread"
            )
        if synchronous not in ("NORMAL", "FULL"):
            raise ValueError(f"synchronous must be 'NORMAL' or 'FULL', not {synchronous!r}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.lease_ms = lease_ms
        self.heartbeat_interval = heartbeat_interval
        self.poll_interval = poll_interval
        self.busy_timeout_ms = busy_timeout_ms
        self.synchronous = synchronous
        self.dead_message_ttl_ms = dead_message_ttl_ms
        self.queues: set[str] = set()
        self.hostname = socket.gethostname()

        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        # One writer at a time: threads of this process queue here rather than in SQLite's busy
        # handler, which sleeps 1, 2, 5, 10, 25 ... ms between tries. Other processes still do.
        self._write_lock = threading.Lock()
        self._epoch = 0  # bumped by close(): threads then reopen their connections
        # Wakes consumers and joiners in this process: notified on enqueue, ack, nack and requeue.
        self._cond = threading.Condition()
        self._generation = 0
        self._next_due_ms = math.inf  # earliest scheduled row this process knows of
        self._promote_lock = threading.Lock()
        # Worker registration and the maintenance thread start with the first consume().
        self._worker_lock = threading.Lock()
        self._worker_id: str | None = None
        self._worker_pid = 0
        self._stop = threading.Event()
        self._maintenance: threading.Thread | None = None
        self._create_schema()

    # -- connections ---------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path,
            timeout=self.busy_timeout_ms / 1000,
            isolation_level=None,  # autocommit; multi-statement writes use BEGIN IMMEDIATE
            check_same_thread=False,  # only close() touches a connection from another thread
        )
        conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
        conn.execute(f"PRAGMA synchronous = {self.synchronous}")
        with self._connections_lock:
            self._connections.append(conn)
        return conn

    def _conn(self) -> sqlite3.Connection:
        """This thread's connection (one per thread: ack and nack come from worker threads)."""
        local = self._local
        conn: sqlite3.Connection | None = getattr(local, "conn", None)
        if conn is None or local.pid != os.getpid() or local.epoch != self._epoch:
            conn = self._connect()
            local.conn, local.pid, local.epoch = conn, os.getpid(), self._epoch
        return conn

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction that takes the lock up front, so the busy timeout applies."""
        conn = self._conn()
        with self._write_lock:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _create_schema(self) -> None:
        conn = self._conn()
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise RuntimeError(f"{self.path}: SQLite refused WAL mode (got {mode!r})")
        with self._write() as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, SCHEMA_VERSION):
                raise RuntimeError(
                    f"{self.path} has broker schema version {version}; this cxbridge expects "
                    f"{SCHEMA_VERSION}. Drain the queues and delete the file, or upgrade cxbridge."
                )
            # One by one: executescript() would COMMIT the transaction first.
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    # -- the Broker interface ------------------------------------------------------------------

    def declare_queue(self, queue_name: str) -> None:
        """Declare a queue (idempotent). Delays stay on the queue itself: there is no ``.DQ``."""
        if queue_name not in self.queues:
            self.emit_before("declare_queue", queue_name)
            self.queues.add(queue_name)
            self.emit_after("declare_queue", queue_name)

    def get_declared_queues(self) -> set[str]:
        return set(self.queues)

    def enqueue(self, message: Message[Any], *, delay: int | None = None) -> Message[Any]:
        """Store ``message``; with ``delay`` (ms) it becomes claimable only once the delay passed.

        Also accepts the :class:`MessageProxy` that Dramatiq's ``Retries`` middleware re-enqueues.
        An ``eta`` option is dropped: the row's ``available_at`` carries the delay instead, so the
        Dramatiq worker never parks the message in its in-memory delay queue.
        """
        queue_name = q_name(message.queue_name)
        options = {k: v for k, v in message.options.items() if k != "eta"}
        message = Message(
            queue_name=queue_name,
            actor_name=message.actor_name,
            args=message.args,
            kwargs=message.kwargs,
            options=options,
            message_id=message.message_id,
            message_timestamp=message.message_timestamp,
        )
        priority = options.get("priority")
        if not isinstance(priority, int):
            actor = self.actors.get(message.actor_name)
            priority = actor.priority if actor is not None else 0
        now = _now_ms()
        due = now + max(0, int(delay)) if delay else now

        self.emit_before("enqueue", message, delay)
        data = message.encode()
        conn = self._conn()
        with self._write_lock:
            conn.execute(
                "INSERT INTO messages (queue, state, priority, available_at, enqueued_at, message_id,"
                " actor_name, data) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    queue_name,
                    "scheduled" if due > now else "ready",
                    priority,
                    due,
                    now,
                    message.message_id,
                    message.actor_name,
                    data,
                ),
            )
        with self._cond:
            if due > now:
                self._next_due_ms = min(self._next_due_ms, due)
            self._generation += 1
            self._cond.notify_all()
        self.emit_after("enqueue", message, delay)
        return message

    def consume(self, queue_name: str, prefetch: int = 1, timeout: int = 30000) -> Consumer:
        """A consumer of ``queue_name`` holding at most ``prefetch`` unacked messages; its
        ``__next__`` returns ``None`` after at most ``timeout`` ms without a message."""
        if queue_name not in self.queues:
            raise QueueNotFound(queue_name)  # type: ignore[no-untyped-call]  # untyped __init__
        self._ensure_worker()
        return _SQLiteConsumer(self, queue_name, prefetch, timeout)

    def flush(self, queue_name: str) -> None:
        """Delete every message of ``queue_name`` (ready, leased and scheduled; not dead ones)."""
        with self._write() as conn:
            conn.execute("DELETE FROM messages WHERE queue = ?", (queue_name,))
        self._notify()

    def flush_all(self) -> None:
        """Delete the messages and dead letters of every declared queue."""
        with self._write() as conn:
            for queue_name in self.queues:
                conn.execute("DELETE FROM messages WHERE queue = ?", (queue_name,))
                conn.execute("DELETE FROM dead WHERE queue = ?", (queue_name,))
        self._notify()

    def join(self, queue_name: str, *, timeout: int | None = None) -> None:
        """Wait until ``queue_name`` holds no message in any state (scheduled ones included).

        Raises:
          QueueJoinTimeout: when ``timeout`` (ms) elapses first.
        """
        deadline = None if timeout is None else time.monotonic() + timeout / 1000
        while True:
            with self._cond:
                generation = self._generation
            if self._pending(queue_name) == 0:
                return
            wait = self.poll_interval
            if deadline is not None:
                wait = min(wait, deadline - time.monotonic())
                if wait <= 0:
                    raise QueueJoinTimeout(queue_name)  # type: ignore[no-untyped-call]  # untyped __init__
            with self._cond:
                if self._generation == generation:
                    self._cond.wait(wait)

    def close(self) -> None:
        """Stop heartbeats, requeue messages this process still holds, close connections."""
        self._stop_worker()
        with self._connections_lock:
            connections, self._connections = self._connections, []
            self._epoch += 1
        for conn in connections:
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    # -- inspection, for operations and tests --------------------------------------------------

    def message_counts(self, queue_name: str) -> dict[str, int]:
        """Counts of ``queue_name``'s messages: ``ready``, ``leased``, ``scheduled``, ``dead``."""
        conn = self._conn()
        counts = dict.fromkeys(("ready", "leased", "scheduled", "dead"), 0)
        for state, count in conn.execute(
            "SELECT state, COUNT(*) FROM messages WHERE queue = ? GROUP BY state", (queue_name,)
        ):
            counts[state] = count
        counts["dead"] = conn.execute(
            "SELECT COUNT(*) FROM dead WHERE queue = ?", (queue_name,)
        ).fetchone()[0]
        return counts

    def dead_letters(
        self, queue_name: str | None = None, *, limit: int = 100
    ) -> list[Message[Any]]:
        """The most recent dead-lettered messages (of one queue, or all), newest first."""
        sql = "SELECT data FROM dead"
        params: tuple[Any, ...] = ()
        if queue_name is not None:
            sql += " WHERE queue = ?"
            params = (queue_name,)
        rows = self._conn().execute(sql + " ORDER BY id DESC LIMIT ?", (*params, limit))
        return [Message.decode(data) for (data,) in rows]

    # -- internals used by the consumer --------------------------------------------------------

    def _notify(self) -> None:
        with self._cond:
            self._generation += 1
            self._cond.notify_all()

    def _pending(self, queue_name: str) -> int:
        row = (
            self._conn()
            .execute("SELECT COUNT(*) FROM messages WHERE queue = ?", (queue_name,))
            .fetchone()
        )
        return int(row[0])

    def _claim(self, queue_name: str, limit: int) -> list[tuple[int, bytes]]:
        """Lease up to ``limit`` ready messages, in priority then id order."""
        conn = self._conn()
        # An indexed read first, so idle polling never takes the write lock.
        if (
            conn.execute(
                "SELECT 1 FROM messages WHERE queue = ? AND state = 'ready' LIMIT 1", (queue_name,)
            ).fetchone()
            is None
        ):
            return []
        with self._write() as conn:
            rows = conn.execute(
                _CLAIM, (self._worker_id, _now_ms() + self.lease_ms, queue_name, limit)
            ).fetchall()
        rows.sort(key=lambda row: (row[1], row[0]))  # RETURNING does not keep ORDER BY
        return [(row_id, data) for row_id, _, data in rows]

    def _ack(self, row_id: int) -> None:
        # A lease that expired and went back to 'ready' is still ours to delete: the work is done.
        conn = self._conn()
        with self._write_lock:
            conn.execute(
                "DELETE FROM messages WHERE id = ? AND (owner = ? OR state = 'ready')",
                (row_id, self._worker_id),
            )
        self._notify()

    def _nack(self, row_id: int, message: MessageProxy) -> None:
        exception = getattr(message, "_exception", None)  # stuffed by the Worker before nack
        with self._write() as conn:
            deleted = conn.execute(
                "DELETE FROM messages WHERE id = ? AND (owner = ? OR state = 'ready')",
                (row_id, self._worker_id),
            ).rowcount
            if deleted:
                conn.execute(
                    "INSERT INTO dead (queue, message_id, actor_name, failed_at, error, data)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        q_name(message.queue_name),
                        message.message_id,
                        message.actor_name,
                        _now_ms(),
                        None if exception is None else repr(exception)[:4000],
                        message.encode(),
                    ),
                )
        self._notify()

    def _dead_letter_undecodable(self, queue_name: str, row_id: int, error: Exception) -> None:
        with self._write() as conn:
            conn.execute(
                "INSERT INTO dead (queue, message_id, actor_name, failed_at, error, data)"
                " SELECT queue, message_id, actor_name, ?, ?, data FROM messages WHERE id = ?",
                (_now_ms(), f"cannot decode: {error}", row_id),
            )
            conn.execute("DELETE FROM messages WHERE id = ?", (row_id,))

    def _requeue(self, row_ids: Iterable[int]) -> None:
        ids = list(row_ids)
        if not ids:
            return
        with self._write() as conn:
            conn.executemany(
                "UPDATE messages SET state = 'ready', owner = NULL, lease_expires_at = NULL"
                " WHERE id = ? AND owner = ? AND state = 'leased'",
                [(row_id, self._worker_id) for row_id in ids],
            )
        self._notify()

    def _seconds_until_due(self) -> float:
        return max(0.0, (self._next_due_ms - _now_ms()) / 1000)

    def _promote_due(self, *, force: bool = False) -> None:
        """Make due scheduled rows ready and remember when the next one falls due."""
        if not force and _now_ms() < self._next_due_ms:
            return
        if not self._promote_lock.acquire(blocking=False):
            return  # another thread of this process is doing it
        try:
            now = _now_ms()
            promoted = 0
            conn = self._conn()
            due = conn.execute(
                "SELECT 1 FROM messages WHERE state = 'scheduled' AND available_at <= ? LIMIT 1",
                (now,),
            ).fetchone()
            if due is not None:
                with self._write() as conn:
                    promoted = conn.execute(
                        "UPDATE messages SET state = 'ready'"
                        " WHERE state = 'scheduled' AND available_at <= ?",
                        (now,),
                    ).rowcount
            (next_due,) = conn.execute(
                "SELECT MIN(available_at) FROM messages WHERE state = 'scheduled'"
            ).fetchone()
            with self._cond:
                self._next_due_ms = math.inf if next_due is None else next_due
                if promoted:
                    self._generation += 1
                    self._cond.notify_all()
        finally:
            self._promote_lock.release()

    # -- worker registration, heartbeats and the reaper ----------------------------------------

    def _ensure_worker(self) -> None:
        with self._worker_lock:
            if self._worker_id is not None and self._worker_pid == os.getpid():
                return
            # First consumer in this process (or in a fork of a process that had one).
            pid = os.getpid()
            self._worker_id = f"{self.hostname}:{pid}:{uuid.uuid4().hex[:12]}"
            self._worker_pid = pid
            now = _now_ms()
            with self._write() as conn:
                conn.execute(
                    "INSERT INTO workers (id, hostname, pid, started_at, heartbeat_at)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (self._worker_id, self.hostname, pid, now, now),
                )
            self._stop = threading.Event()
            self._maintenance = threading.Thread(
                target=self._maintain,
                args=(self._worker_id, self._stop),
                name="cxbridge-sqlite-broker-maintenance",
                daemon=True,
            )
            self._maintenance.start()

    def _stop_worker(self) -> None:
        with self._worker_lock:
            worker_id, thread = self._worker_id, self._maintenance
            if worker_id is None or self._worker_pid != os.getpid():
                return
            self._stop.set()
            if thread is not None:
                thread.join(timeout=10)
            with contextlib.suppress(sqlite3.Error), self._write() as conn:
                conn.execute(_REQUEUE_OWNED, (worker_id,))
                conn.execute("DELETE FROM workers WHERE id = ?", (worker_id,))
            self._worker_id = None
            self._maintenance = None
        self._notify()

    def _maintain(self, worker_id: str, stop: threading.Event) -> None:
        last_prune = 0.0
        while not stop.wait(self.heartbeat_interval):
            try:
                reaped = self._heartbeat_and_reap(worker_id)
                self._promote_due(force=True)
                if reaped:
                    logger.warning("requeued %d message(s) of dead or stalled workers", reaped)
                    self._notify()
                if (
                    self.dead_message_ttl_ms is not None
                    and time.monotonic() - last_prune > _DEAD_PRUNE_EVERY_S
                ):
                    last_prune = time.monotonic()
                    with self._write() as conn:
                        conn.execute(
                            "DELETE FROM dead WHERE failed_at < ?",
                            (_now_ms() - self.dead_message_ttl_ms,),
                        )
            except sqlite3.Error:
                logger.exception("SQLite broker maintenance failed; retrying")

    def _heartbeat_and_reap(self, worker_id: str) -> int:
        """One maintenance transaction; returns how many messages went back to their queue."""
        now = _now_ms()
        reaped = 0
        with self._write() as conn:
            updated = conn.execute(
                "UPDATE workers SET heartbeat_at = ? WHERE id = ?", (now, worker_id)
            ).rowcount
            if not updated:  # deleted as stale by another process after a long stall: re-register
                conn.execute(
                    "INSERT INTO workers (id, hostname, pid, started_at, heartbeat_at)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (worker_id, self.hostname, os.getpid(), now, now),
                )
            conn.execute(
                "UPDATE messages SET lease_expires_at = ? WHERE owner = ? AND state = 'leased'",
                (now + self.lease_ms, worker_id),
            )
            reaped += conn.execute(
                "UPDATE messages SET state = 'ready', owner = NULL, lease_expires_at = NULL"
                " WHERE state = 'leased' AND lease_expires_at < ?",
                (now,),
            ).rowcount
            others = conn.execute(
                "SELECT id, pid, heartbeat_at FROM workers WHERE hostname = ? AND id != ?",
                (self.hostname, worker_id),
            ).fetchall()
            for other_id, pid, heartbeat_at in others:
                dead = not _pid_alive(pid)
                if dead:
                    reaped += conn.execute(_REQUEUE_OWNED, (other_id,)).rowcount
                if dead or heartbeat_at < now - 10 * self.lease_ms:
                    conn.execute("DELETE FROM workers WHERE id = ?", (other_id,))
        return reaped


class _SQLiteConsumer(Consumer):
    """Iterates over one queue. ``__next__`` runs on Dramatiq's consumer thread; ``ack``, ``nack``
    and ``requeue`` come from worker threads, hence the lock around the bookkeeping."""

    def __init__(self, broker: SQLiteBroker, queue_name: str, prefetch: int, timeout: int) -> None:
        self.broker = broker
        self.queue_name = queue_name
        self.prefetch = max(1, prefetch)
        self.timeout = timeout
        self._buffer: deque[tuple[int, bytes]] = deque()  # claimed, not yet handed out
        self._delivered: set[int] = set()  # handed out, not yet acked
        self._lock = threading.Lock()
        self._closed = False

    def __next__(self) -> MessageProxy | None:
        broker = self.broker
        deadline = time.monotonic() + self.timeout / 1000
        try:
            while True:
                if self._buffer:
                    row_id, data = self._buffer.popleft()
                    try:
                        message = Message.decode(data)
                    except DecodeError as e:
                        logger.error("undecodable message in row %d moved to dead: %s", row_id, e)
                        broker._dead_letter_undecodable(self.queue_name, row_id, e)
                        continue
                    with self._lock:
                        self._delivered.add(row_id)
                    return SQLiteMessageProxy(message, row_id)
                if self._closed:
                    return None
                with broker._cond:
                    generation = broker._generation
                broker._promote_due()
                with self._lock:
                    capacity = self.prefetch - len(self._delivered)
                if capacity > 0:
                    rows = broker._claim(self.queue_name, capacity)
                    if rows:
                        self._buffer.extend(rows)
                        continue
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                wait = min(remaining, broker.poll_interval, broker._seconds_until_due())
                with broker._cond:
                    if broker._generation == generation:
                        broker._cond.wait(wait)
        except sqlite3.OperationalError as e:
            raise _connection_closed(e) from e

    def ack(self, message: MessageProxy) -> None:
        row_id = _row_id(message)
        try:
            self.broker._ack(row_id)
        except sqlite3.OperationalError as e:
            raise _connection_closed(e) from e  # Dramatiq retries post-processing on these
        with self._lock:
            self._delivered.discard(row_id)

    def nack(self, message: MessageProxy) -> None:
        row_id = _row_id(message)
        try:
            self.broker._nack(row_id, message)
        except sqlite3.OperationalError as e:
            raise _connection_closed(e) from e
        with self._lock:
            self._delivered.discard(row_id)

    def requeue(self, messages: Iterable[MessageProxy]) -> None:
        row_ids = [_row_id(message) for message in messages]
        try:
            self.broker._requeue(row_ids)
        except sqlite3.OperationalError as e:
            raise _connection_closed(e) from e
        with self._lock:
            self._delivered.difference_update(row_ids)

    def close(self) -> None:
        """Give back the messages claimed but never handed to the worker."""
        self._closed = True
        buffered = [row_id for row_id, _ in self._buffer]
        self._buffer.clear()
        try:
            self.broker._requeue(buffered)
        except sqlite3.OperationalError as e:
            raise _connection_closed(e) from e


def _connection_closed(error: sqlite3.Error) -> ConnectionClosed:
    """Dramatiq's worker retries ack/nack and restarts consumers on connection errors."""
    return ConnectionClosed(error)  # type: ignore[no-untyped-call]  # untyped __init__


def _row_id(message: MessageProxy) -> int:
    if not isinstance(message, SQLiteMessageProxy):
        raise TypeError(f"expected a message delivered by SQLiteBroker, got {message!r}")
    return message.row_id
