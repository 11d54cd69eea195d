"""``cxbridge worker``: delivery workers in one or more processes, stopped cleanly by SIGINT/SIGTERM."""

from __future__ import annotations

import logging
import multiprocessing
import signal
import threading

from cxbridge.settings import Settings

__all__ = ["run_worker_process", "run_workers"]

log = logging.getLogger(__name__)


def run_worker_process(settings: Settings, threads: int, scheduler: bool) -> None:
    """Run one worker process until SIGINT or SIGTERM; in-flight attempts finish or are requeued."""
    from cxbridge.engine import Engine

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    engine = Engine(settings)
    engine.start(threads=threads, scheduler=scheduler)
    log.warning("worker ready: %d thread(s), scheduler %s", threads, "on" if scheduler else "off")
    stop.wait()
    engine.close()


def run_workers(settings: Settings, *, processes: int, threads: int, scheduler: bool) -> None:
    """Run ``processes`` worker processes; the first one also runs the scheduler."""
    if processes <= 1:
        run_worker_process(settings, threads, scheduler)
        return
    context = multiprocessing.get_context("spawn")
    children = [
        context.Process(
            target=run_worker_process, args=(settings, threads, scheduler and index == 0)
        )
        for index in range(processes)
    ]
    for child in children:
        child.start()
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    for child in children:
        if child.pid is not None and child.is_alive():
            child.terminate()
    for child in children:
        child.join()
