"""The admin API over real sockets: tenant isolation, pages, attempts, dead letters, replay,
disable / enable, preview, the configuration version and its reload, and the published OpenAPI."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.http_sink import HttpSink, Reply
from tests.service_support import (
    ADMIN,
    auth,
    call_events,
    service_settings,
    serving,
    wait_until,
)


@pytest.fixture
def running(tmp_path: Path, sink: HttpSink) -> Iterator[tuple[httpx.Client, Any, HttpSink]]:
    for tenant in ("acme", "beta"):
        sink.reply(f"/broken/{tenant}", lambda request: Reply(400, b"rejected: bad field"))
    with (
        serving(service_settings(tmp_path, sink.url())) as (url, service),
        httpx.Client(base_url=url, timeout=10) as client,
    ):
        for tenant in ("acme", "beta"):
            for event in call_events(tenant=tenant):
                client.post("/v1/events", json=event, headers=auth(tenant)).raise_for_status()
        wait_until(lambda: service.engine.store.status_counts().get("pending", 0) == 0)
        yield client, service, sink


def test_a_tenant_key_reads_only_its_own_tenant(running: Any) -> None:
    client, _, _ = running
    for path in ("/v1/admin/events", "/v1/admin/deliveries", "/v1/admin/dead-letters"):
        own = client.get(path, headers=auth("acme")).json()["items"]
        assert own and {item["tenant"] for item in own} == {"acme"}, path
        assert client.get(path, params={"tenant": "beta"}, headers=auth("acme")).status_code == 403
        everyone = client.get(path, headers=auth(ADMIN)).json()["items"]
        assert {item["tenant"] for item in everyone} == {"acme", "beta"}
    beta_delivery = client.get(
        "/v1/admin/deliveries", params={"tenant": "beta"}, headers=auth(ADMIN)
    ).json()["items"][0]["id"]
    assert (
        client.get(f"/v1/admin/deliveries/{beta_delivery}", headers=auth("acme")).status_code == 404
    )
    replay = client.post(f"/v1/admin/deliveries/{beta_delivery}/replay", headers=auth("acme"))
    assert replay.status_code == 404
    by_filter = client.post("/v1/admin/replay", json={"tenant": "beta"}, headers=auth("acme"))
    assert by_filter.status_code == 403
    disable = client.post("/v1/admin/destinations/beta/hook/disable", headers=auth("acme"))
    assert disable.status_code == 403


def test_deliveries_page_through_with_a_cursor(running: Any) -> None:
    client, _, _ = running
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = client.get("/v1/admin/deliveries", params=params, headers=auth("acme")).json()
        seen += [item["id"] for item in page["items"]]
        cursor = page["next"]
        if cursor is None:
            break
    everything = client.get("/v1/admin/deliveries", headers=auth("acme")).json()["items"]
    assert seen == [item["id"] for item in everything] and len(seen) == 5
    dead = client.get("/v1/admin/deliveries", params={"status": "dead"}, headers=auth("acme"))
    assert [d["destination"] for d in dead.json()["items"]] == ["broken"]


def test_a_delivery_shows_its_attempts_and_dead_letter_reason(running: Any) -> None:
    client, _, _ = running
    dead = client.get("/v1/admin/dead-letters", headers=auth("acme")).json()["items"][0]
    answer = client.get(f"/v1/admin/deliveries/{dead['delivery_id']}", headers=auth("acme")).json()
    attempt = answer["attempts"][0]
    assert attempt["status_code"] == 400 and "bad field" in attempt["response_excerpt"]
    assert "permanent" in answer["dead_letters"][0]["reason"]


def test_replay_one_and_by_filter(running: Any) -> None:
    client, _, sink = running
    sink.reply("/broken/acme", Reply(200))
    dry = client.post("/v1/admin/replay", json={"dry_run": True}, headers=auth("acme"))
    assert dry.json() == {"matched": 1}
    replayed = client.post("/v1/admin/replay", json={}, headers=auth("acme"))
    assert replayed.status_code == 202 and replayed.json()["replayed"] == 1
    wait_until(lambda: len(sink.to("/broken/acme")) == 2)
    delivered = client.get(
        "/v1/admin/deliveries", params={"status": "delivered"}, headers=auth("acme")
    )
    one = delivered.json()["items"][0]["id"]
    again = client.post(f"/v1/admin/deliveries/{one}/replay", headers=auth("acme"))
    assert again.status_code == 202 and again.json()["replayed"] == 1


def test_disable_and_enable_a_destination(running: Any) -> None:
    client, service, sink = running
    path = "/v1/admin/destinations/acme/hook"
    assert client.post(
        f"{path}/disable", json={"reason": "maintenance"}, headers=auth("acme")
    ).json()["changed"]
    before = len(sink.to("/hook/acme"))
    event = call_events()[0]
    client.post("/v1/events", json=event, headers=auth("acme")).raise_for_status()
    wait_until(lambda: service.engine.store.status_counts().get("pending", 0) == 0)
    assert len(sink.to("/hook/acme")) == before
    assert client.post(f"{path}/enable", headers=auth("acme")).json()["changed"]
    assert client.post(f"{path}/explode", headers=auth("acme")).status_code == 404


def test_preview_renders_without_sending(running: Any) -> None:
    client, _, sink = running
    before = len(sink.requests)
    body = {"destination": "hook", "event": call_events()[3]}
    answer = client.post("/v1/admin/preview", json=body, headers=auth("acme"))
    assert answer.status_code == 200, answer.text
    assert answer.json()["subscribed"] and answer.json()["body"]["qi"]["score"] == 42
    assert len(sink.requests) == before
    missing = client.post(
        "/v1/admin/preview", json={**body, "destination": "nope"}, headers=auth("acme")
    )
    assert missing.status_code == 404


def test_reload_switches_tenant_files_and_the_version_says_so(running: Any) -> None:
    client, service, _ = running
    first = client.get("/v1/admin/version", headers=auth("acme")).json()
    assert first["tenants"] == ["acme"]
    tenant_file = service.settings.config_dir / "acme.yaml"
    text = tenant_file.read_text()
    tenant_file.write_text(text.replace('"key-acme-rotated"', '"key-acme-new"'))
    assert client.post("/v1/admin/reload", headers=auth("acme")).status_code == 403
    reloaded = client.post("/v1/admin/reload", headers=auth(ADMIN))
    assert reloaded.status_code == 200 and reloaded.json()["version"] != first["version"]
    assert client.get("/v1/admin/version", headers=auth("key-acme-new")).status_code == 200
    assert client.get("/v1/admin/version", headers=auth("key-acme-rotated")).status_code == 401
    tenant_file.write_text("tenant: [broken")
    refused = client.post("/v1/admin/reload", headers=auth(ADMIN))
    assert refused.status_code == 422 and "acme.yaml" in json.dumps(refused.json())
    assert (
        client.get("/v1/admin/version", headers=auth(ADMIN)).json()["version"]
        == reloaded.json()["version"]
    )


def test_operations_endpoints(running: Any) -> None:
    client, _, _ = running
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"store": "ok", "broker": "ok"}
    text = client.get("/metrics").text
    assert 'cxbridge_events_received_total{type="call_summary"} 2.0' in text
    assert 'cxbridge_deliveries{destination_type="http",status="dead"} 2.0' in text
    assert "cxbridge_attempt_duration_seconds_count 10.0" in text
    assert "key-acme" not in text


def test_readyz_says_which_part_is_unreachable(
    running: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, service, _ = running

    def down() -> None:
        raise ConnectionRefusedError("store down")

    monkeypatch.setattr(service.engine.store, "ping", down)
    monkeypatch.setattr(service.engine.store, "counts", down)
    answer = client.get("/readyz")
    assert answer.status_code == 503
    assert answer.json() == {"store": "unreachable: ConnectionRefusedError", "broker": "ok"}
    assert "cxbridge_store_up 0.0" in client.get("/metrics").text
