"""``cxbridge worker``: delivery workers in one process, or in several under a :class:`Supervisor`.

Everything a worker needs is checked before any work starts, by :func:`open_engine`: the plugins,
the tenant files, the store (migrated) and the broker (reached once). A problem is a
:class:`WorkerStartError` whose message is one line saying what to fix. With several processes the
parent checks first, so a bad configuration stops ``cxbridge worker`` at once with that line; a child
that finds a configuration problem later (a tenant file edited since) exits with
:data:`FATAL_EXIT` and is not restarted. Each process runs a scheduler thread; the store elects the one
that sweeps (:mod:`cxbridge.election`).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from multiprocessing.queues import SimpleQueue
from typing import TYPE_CHECKING

from cxbridge.errors import ConfigError, CxbridgeError
from cxbridge.logs import configure_logging
from cxbridge.settings import Settings, redact_url
from cxbridge.supervisor import FATAL_EXIT, Supervisor, WorkerStartError

if TYPE_CHECKING:
    from cxbridge.engine import Engine

__all__ = ["FATAL_EXIT", "WorkerStartError", "open_engine", "run_worker_process", "run_workers"]

log = logging.getLogger(__name__)


def _cause(exc: BaseException) -> str:
    cause = getattr(exc, "orig", None) or exc  # SQLAlchemy's own text adds the statement
    text = " ".join(str(cause).split()) or type(cause).__name__
    return f"{type(cause).__name__}: {text}"


def open_engine(settings: Settings) -> Engine:
    """The engine of one worker process, after checking each part it needs in turn.

    Raises:
      WorkerStartError: ``fatal`` for invalid plugins, tenant files or broker URL; not ``fatal``
        when the store or the broker cannot be reached (it may come back).
    """
    from cxbridge.brokers import broker_from_url, check_broker
    from cxbridge.config import load_config_dir
    from cxbridge.engine import Engine
    from cxbridge.plugins import load_plugins
    from cxbridge.store import Store

    try:
        plugins = load_plugins(settings)
        tenants = load_config_dir(settings.config_dir, plugins.destination_types)
    except ConfigError as exc:
        first = exc.problems[0] if exc.problems else exc.message
        raise WorkerStartError(
            f"{len(exc.problems)} problem(s) in the tenant files of {settings.config_dir}, the "
            f"first: {first}; run `cxbridge validate {settings.config_dir}` to see all",
            fatal=True,
        ) from None
    except CxbridgeError as exc:
        raise WorkerStartError(" ".join(str(exc).split()), fatal=True) from None
    database = redact_url(settings.database_url)
    try:
        store = Store(settings.database_url)
        store.migrate()
    except Exception as exc:
        raise WorkerStartError(
            f"cannot open the store {database} ({_cause(exc)}); check CXBRIDGE_DATABASE_URL "
            "and that the database is running",
            fatal=False,
        ) from None
    try:
        broker = broker_from_url(settings.broker_url)
    except CxbridgeError as exc:
        store.close()
        raise WorkerStartError(str(exc), fatal=True) from None
    try:
        check_broker(broker)
        return Engine(settings, plugins=plugins, tenants=tenants, store=store, broker=broker)
    except Exception as exc:
        store.close()
        broker.close()
        raise WorkerStartError(
            f"cannot reach the broker {redact_url(settings.broker_url)} ({_cause(exc)}); check "
            "CXBRIDGE_BROKER_URL and that the broker is running",
            fatal=False,
        ) from None


def run_worker_process(
    settings: Settings,
    threads: int,
    scheduler: bool,
    log_level: int | None = None,
    fatal: SimpleQueue[str] | None = None,
) -> None:
    """Run one worker process until SIGINT or SIGTERM; in-flight attempts finish or are requeued.
    SIGUSR1 logs how many of its consumer and worker threads run (:class:`~cxbridge.watchdog.ThreadHealth`).

    As a supervised child (``fatal`` given) it also stops when its parent is gone, and reports a
    start-up problem as one line: a fatal one on ``fatal`` with exit code :data:`FATAL_EXIT`, any
    other on stderr with exit code 1 (the supervisor restarts it).

    Raises:
      WorkerStartError: when not supervised.
    """
    if log_level is not None:  # a spawned child starts with no logging configured
        configure_logging(
            log_level, settings.log_format, "%(levelname)s %(name)s[%(process)d]: %(message)s"
        )
    stop, report = threading.Event(), threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    signal.signal(signal.SIGUSR1, lambda *_: report.set())
    parent = os.getppid()
    try:
        engine = open_engine(settings)
    except WorkerStartError as exc:
        if fatal is None:
            raise
        if exc.fatal:
            fatal.put(str(exc))
            sys.exit(FATAL_EXIT)
        print(f"cxbridge worker (pid {os.getpid()}): {exc}", file=sys.stderr)
        sys.exit(1)
    _tell_setup(engine, settings)
    engine.start(threads=threads, scheduler=scheduler)
    log.info(
        "worker ready: %d thread(s), scheduler %s",
        threads,
        "thread on (elected through the store)" if scheduler else "off",
    )
    last_summary = time.monotonic()
    while not stop.wait(1.0):
        if fatal is not None and os.getppid() != parent:
            log.warning("the supervising process is gone; stopping")
            break
        if report.is_set() and engine.watchdog is not None:
            report.clear()
            log.warning("health: %s", engine.watchdog.health())
        if time.monotonic() - last_summary >= SUMMARY_EVERY:
            last_summary = time.monotonic()
            _tell_summary(engine)
    engine.close()


#: Seconds between a worker's summary lines.
SUMMARY_EVERY = 60.0


def _tell_setup(engine: Engine, settings: Settings) -> None:
    """What this worker runs on, at INFO: store, broker, tenants and plugins (no secrets)."""
    log.info(
        "store %s, broker %s (queue %s)",
        redact_url(settings.database_url),
        redact_url(settings.broker_url),
        engine.queue_name,
    )
    for tenant in engine.tenants.values():
        destinations = ", ".join(f"{d.name} ({d.type})" for d in tenant.destinations.values())
        log.info("tenant %s from %s: %s", tenant.name, tenant.file, destinations or "none")
    plugins = ", ".join(f"{p.name} {p.version or ''}".strip() for p in engine.plugins.info())
    log.info("plugins: %s", plugins or "none")


def _tell_summary(engine: Engine) -> None:
    """One line a minute: what this process did, and what waits in the store."""
    tally = engine.take_tally()
    try:
        pending = engine.store.status_counts().get("pending", 0)
    except Exception as exc:  # a summary line must not stop the worker
        log.warning("summary: the store is unavailable (%s)", _cause(exc))
        return
    log.info(
        "last minute: %d delivered, %d retried, %d dead-lettered; %d pending in the store",
        tally.get("delivered", 0),
        tally.get("retried", 0),
        tally.get("dead", 0),
        pending,
    )


def run_workers(settings: Settings, *, processes: int, threads: int, scheduler: bool) -> None:
    """Run ``processes`` worker processes (under a :class:`Supervisor` when more than one).

    Raises:
      WorkerStartError: when the configuration, the store or the broker is not usable.
    """
    if processes <= 1:
        run_worker_process(settings, threads, scheduler)
        return
    open_engine(settings).close()  # check everything once, before any child starts
    level = logging.getLogger().getEffectiveLevel()
    Supervisor(run_worker_process, (settings, threads, scheduler, level), processes=processes).run()
