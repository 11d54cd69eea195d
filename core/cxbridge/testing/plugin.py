"""The pytest plugin of the kit (entry point ``pytest11``): installed with ``cxbridge[testing]``, these
fixtures are available in every test without an import."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cxbridge.clock import FakeClock
from cxbridge.testing.bridge import Bridge
from cxbridge.testing.target import FakeTarget

__all__ = ["fake_clock", "fake_target", "make_bridge"]


@pytest.fixture
def fake_clock() -> FakeClock:
    """A :class:`~cxbridge.FakeClock` at 2026-01-01 00:00 UTC; it moves only when told to."""
    return FakeClock()


@pytest.fixture
def fake_target() -> Iterator[FakeTarget]:
    """A :class:`~cxbridge.testing.FakeTarget` on 127.0.0.1, answering ``200 ok`` until told
    otherwise; stopped after the test."""
    with FakeTarget() as target:
        yield target


@pytest.fixture
def make_bridge(tmp_path: Path, fake_clock: FakeClock) -> Iterator[Callable[..., Bridge]]:
    """Builds :class:`~cxbridge.testing.Bridge` engines on ``fake_clock`` in ``tmp_path`` —
    ``make_bridge(tenant_yaml, plugins=[...], entry_points=True, env={...})`` — and closes them
    after the test."""
    made: list[Bridge] = []

    def make(tenant_yaml: str, **options: Any) -> Bridge:
        directory = tmp_path / f"bridge-{len(made)}"
        directory.mkdir()
        bridge = Bridge(tenant_yaml, directory, clock=options.pop("clock", fake_clock), **options)
        made.append(bridge)
        return bridge

    yield make
    for bridge in made:
        bridge.close()
