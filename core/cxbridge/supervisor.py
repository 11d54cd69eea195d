"""A parent process that keeps N worker processes running.

- A child that dies (any exit code, or a signal such as SIGKILL) is logged at WARNING with how it
  ended and restarted after a backoff: 1 s, doubling to 30 s, back to 1 s once a child of that slot
  had run ``healthy_after`` seconds.
- A child that exits with :data:`FATAL_EXIT` stopped on a problem a restart cannot fix (invalid
  configuration): it first puts one line saying what to fix on the supervisor's queue. The
  supervisor then stops the others and raises :class:`WorkerStartError` with that line.
- SIGTERM or SIGINT: SIGTERM goes to every child, the supervisor waits up to ``stop_timeout``
  seconds for them (then SIGKILLs the rest) and returns.

Children are started with the ``spawn`` method: no lock or connection of the parent leaks into them.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from multiprocessing.queues import SimpleQueue
from signal import SIGINT, SIGTERM
from typing import Any

from cxbridge.errors import CxbridgeError

__all__ = ["FATAL_EXIT", "Supervisor", "WorkerStartError", "describe_exit"]

log = logging.getLogger(__name__)

#: A child's exit code for "do not restart me" (EX_CONFIG of sysexits.h).
FATAL_EXIT = 78


class WorkerStartError(CxbridgeError):
    """A worker cannot start: invalid configuration (``fatal``: restarting will not help), or the
    store or the broker cannot be reached."""

    def __init__(self, message: str, *, fatal: bool) -> None:
        super().__init__(message)
        self.fatal = fatal


def describe_exit(exitcode: int | None) -> str:
    if exitcode is None:
        return "is still running"
    if exitcode < 0:
        try:
            return f"was killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"was killed by signal {-exitcode}"
    return f"exited with code {exitcode}"


@dataclass
class _Slot:
    index: int
    process: BaseProcess | None = None
    started_at: float = 0.0
    restart_at: float = 0.0
    backoff: float = 0.0


#: What a child runs: ``target(*args, fatal_queue)``.
Target = Callable[..., None]


class Supervisor:
    """Runs ``processes`` children, each ``target(*args, fatal_queue)``; see the module docstring."""

    def __init__(
        self,
        target: Target,
        args: tuple[Any, ...],
        *,
        processes: int,
        backoff_initial: float = 1.0,
        backoff_max: float = 30.0,
        healthy_after: float = 60.0,
        stop_timeout: float = 30.0,
    ) -> None:
        self.target = target
        self.args = args
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.healthy_after = healthy_after
        self.stop_timeout = stop_timeout
        self._context = multiprocessing.get_context("spawn")
        self._fatal: SimpleQueue[str] = self._context.SimpleQueue()
        self._slots = [_Slot(i, backoff=backoff_initial) for i in range(processes)]
        self._stopping = False

    def run(self) -> None:
        """Supervise until SIGTERM or SIGINT. Raises :class:`WorkerStartError` if a child stopped
        on a fatal problem (after stopping the others)."""
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (SIGINT, SIGTERM)}
        try:
            while not self._stopping:
                self._start_due()
                running = [s.process.sentinel for s in self._slots if s.process is not None]
                multiprocessing.connection.wait(running, timeout=0.5)
                self._reap()
        finally:
            self._stop_all()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_signal(self, signum: int, _frame: object) -> None:
        log.warning("received %s: stopping the worker processes", signal.Signals(signum).name)
        self._stopping = True

    def _start_due(self) -> None:
        now = time.monotonic()
        for slot in self._slots:
            if slot.process is None and now >= slot.restart_at and not self._stopping:
                process = self._context.Process(
                    target=self.target,
                    args=(*self.args, self._fatal),
                    name=f"cxbridge-worker-{slot.index}",
                )
                process.start()
                slot.process, slot.started_at = process, now

    def _reap(self) -> None:
        now = time.monotonic()
        for slot in self._slots:
            process = slot.process
            if process is None or process.is_alive() or self._stopping:
                continue
            process.join()
            slot.process = None
            if process.exitcode == FATAL_EXIT:
                message = (
                    self._fatal.get()
                    if not self._fatal.empty()
                    else f"worker process {slot.index} stopped on a fatal problem"
                )
                raise WorkerStartError(message, fatal=True)
            ran = now - slot.started_at
            if ran >= self.healthy_after:
                slot.backoff = self.backoff_initial
            log.warning(
                "worker process %d (pid %s) %s after %.1f s; restarting it in %.0f s",
                slot.index,
                process.pid,
                describe_exit(process.exitcode),
                ran,
                slot.backoff,
            )
            slot.restart_at = now + slot.backoff
            slot.backoff = min(slot.backoff * 2, self.backoff_max)

    def _stop_all(self) -> None:
        self._stopping = True
        children = [s.process for s in self._slots if s.process is not None]
        for process in children:
            if process.is_alive():
                process.terminate()  # SIGTERM: the child finishes or requeues in-flight work
        deadline = time.monotonic() + self.stop_timeout
        for process in children:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                log.warning(
                    "worker pid %s did not stop within %.0f s; killing it",
                    process.pid,
                    self.stop_timeout,
                )
                process.kill()
                process.join()
        for slot in self._slots:
            slot.process = None
