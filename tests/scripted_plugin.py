"""A plugin for engine tests: its ``scripted`` destinations answer with outcomes a test queues up."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict

from cxbridge import Delivery, Destination, Outcome, Payload, hookimpl


class ScriptedOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    label: str = ""


class ScriptedPlugin:
    """Answers each attempt with the next queued outcome (or ``default``); records every call."""

    def __init__(self, default: Outcome | Callable[[Delivery], Outcome] | None = None) -> None:
        self.default = default or Outcome.delivered()
        self.script: deque[Outcome | Exception] = deque()
        self.calls: list[Delivery] = []
        self.failed: list[tuple[Delivery, str]] = []
        self.events: list[Any] = []
        self.lock = threading.Lock()

    @hookimpl
    def register_destinations(self, register: Callable[..., None]) -> None:
        register("scripted", ScriptedOptions, description="test destination")

    @hookimpl
    def on_event(self, event: Any) -> None:
        self.events.append(event)

    @hookimpl
    def transform(self, destination: Destination) -> Payload | None:
        if destination.type == "scripted" and destination.options.label == "explode":
            raise RuntimeError("plugin bug")
        return None

    @hookimpl
    def deliver(self, delivery: Delivery, destination: Destination) -> Outcome | None:
        if destination.type != "scripted":
            return None
        with self.lock:
            self.calls.append(delivery)
            step = self.script.popleft() if self.script else None
        if isinstance(step, Exception):
            raise step
        if step is not None:
            return step
        return self.default(delivery) if callable(self.default) else self.default

    @hookimpl
    def on_delivery_failed(self, delivery: Delivery, destination: Destination, reason: str) -> None:
        self.failed.append((delivery, reason))


class BlockingFirstAttempt:
    """A plugin answer: the first call blocks until released and then returns ``first``; later
    calls return ``later`` at once."""

    def __init__(self, first: Outcome, later: Outcome | None = None) -> None:
        self.first, self.later = first, later or Outcome.delivered()
        self.started = threading.Event()
        self.release = threading.Event()
        self._calls = 0
        self._lock = threading.Lock()

    def __call__(self, delivery: Delivery) -> Outcome:
        with self._lock:
            self._calls += 1
            first = self._calls == 1
        if not first:
            return self.later
        self.started.set()
        assert self.release.wait(30), "the test never released the first attempt"
        return self.first
