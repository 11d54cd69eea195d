"""The cxbridge plugin kit's contract against a fake HubSpot, plus what is HubSpot-specific."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import cxbridge_hubspot
import pytest
from fake_hubspot import FakeHubSpot

from cxbridge.testing import (
    PluginContract,
    canned_event,
    make_delivery,
    make_destination,
    plugin_manager,
)


class TestHubSpot(PluginContract):
    destination_type = "hubspot"
    timeout_options = {"timeout": 0.5}
    slow_seconds = 1.5

    @pytest.fixture
    def target(self) -> Iterator[FakeHubSpot]:
        with FakeHubSpot() as fake:
            yield fake

    def options(self, target: FakeHubSpot) -> dict[str, Any]:
        return {
            "access_token": "pat-na1-kit-0001",
            "base_url": target.url(""),
            "allow_networks": ["127.0.0.0/8"],  # the fake is on loopback
        }

    def records(self, target: FakeHubSpot) -> int:
        return target.count()


def test_a_new_call_is_a_call_engagement_and_a_summary_a_note() -> None:
    manager = plugin_manager([cxbridge_hubspot])
    with FakeHubSpot() as fake:
        destination = make_destination(
            "hubspot",
            {
                "access_token": "pat-na1-kit-0002",
                "base_url": fake.url(""),
                "owner_id": "77",
                "allow_networks": ["127.0.0.0/8"],
            },
            plugins=manager,
        )
        for event_type in ("call_create", "call_summary"):
            event = canned_event(event_type)
            payload = manager.hooks.transform(event, destination)
            assert payload is not None
            outcome = manager.hooks.deliver(make_delivery(event, destination, payload), destination)
            assert outcome is not None and outcome.ok and outcome.remote_id
        (call,) = fake.objects["calls"].values()
        (note,) = fake.objects["notes"].values()
        assert call["hs_call_direction"] == "INBOUND" and call["hubspot_owner_id"] == "77"
        assert note["hs_note_body"].startswith("Customer said")
        search = json.loads(fake.to("/crm/v3/objects/notes/search")[0].body)
        assert search["filterGroups"][0]["filters"][0]["propertyName"] == "cxbridge_delivery_id"
        manager.hooks.shutdown()
