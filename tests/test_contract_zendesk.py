"""The Zendesk plugin passes the plugin kit's contract against the fake Zendesk in core/cxbridge/testing/fakes/."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from cxbridge.testing import PluginContract
from cxbridge.testing.fakes.zendesk import FakeZendesk

FOREVER = None  # a Fault with times=None answers from now on


class TestZendeskContract(PluginContract):
    destination_type = "zendesk"
    timeout_options = {"read_timeout": 0.5}
    slow_seconds = 1.5

    @pytest.fixture
    def target(self) -> Iterator[FakeZendesk]:
        with FakeZendesk() as fake:
            yield fake

    def options(self, target: FakeZendesk) -> dict[str, Any]:
        # The one place this plugin's contract config lives: the fake through the endpoint override.
        return target.options(email=target.email, api_token=target.token)

    def fail(
        self, target: FakeZendesk, status: int, headers: Mapping[str, str] | None = None
    ) -> None:
        target.faults.clear()
        target.fail("*", ".*", status=status, headers=dict(headers or {}), times=FOREVER)

    def slow(self, target: FakeZendesk, seconds: float) -> None:
        target.faults.clear()
        target.fail("*", ".*", status=0, delay=seconds, times=FOREVER)

    def drop(self, target: FakeZendesk) -> None:
        pytest.skip("the fake Zendesk cannot lose an answer; timeouts cover this path")

    def recover(self, target: FakeZendesk) -> None:
        target.faults.clear()

    def records(self, target: FakeZendesk) -> int:
        with target.lock:
            return len(target.tickets)
