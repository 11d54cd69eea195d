"""The Salesforce plugin passes the plugin kit's contract against the fake org in core/cxbridge/testing/fakes/."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from cxbridge.testing import PluginContract
from cxbridge.testing.fakes.salesforce import FakeSalesforce

FOREVER = 10_000  # fault answers "from now on": more than any test sends


class TestSalesforceContract(PluginContract):
    destination_type = "salesforce"
    timeout_options = {"read_timeout": 0.5}
    slow_seconds = 1.5

    @pytest.fixture
    def target(self) -> Iterator[FakeSalesforce]:
        with FakeSalesforce() as fake:
            fake.add_contact("Ada", "Lovelace", phone="(555) 010-9999")
            yield fake

    def options(self, target: FakeSalesforce) -> dict[str, Any]:
        # The one place this plugin's contract config lives: the fake through the endpoint override.
        return target.options(
            domain="acme.my.salesforce.com",
            auth={
                "type": "client_credentials",
                "consumer_key": target.consumer_key,
                "consumer_secret": target.consumer_secret,
            },
        )

    def fail(
        self, target: FakeSalesforce, status: int, headers: Mapping[str, str] | None = None
    ) -> None:
        target.faults.clear()
        target.fail(status, "KIT_FAULT", times=FOREVER, headers=dict(headers or {}))

    def slow(self, target: FakeSalesforce, seconds: float) -> None:
        target.faults.clear()
        target.fail(503, times=FOREVER, delay=seconds)

    def drop(self, target: FakeSalesforce) -> None:
        pytest.skip("the fake Salesforce org cannot lose an answer; timeouts cover this path")

    def recover(self, target: FakeSalesforce) -> None:
        target.faults.clear()

    def records(self, target: FakeSalesforce) -> int:
        with target.lock:
            return sum(len(records) for records in target.records.values())
