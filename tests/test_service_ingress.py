"""Ingress over real sockets: auth, tenant from the key, body cap, validation, duplicates, batches,
rate limit, and a failing store answering 503 without losing what got a 202."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from cxbridge.signing import verify
from cxbridge.store import Store
from tests.http_sink import HttpSink, Reply
from tests.service_support import (
    SECRET,
    auth,
    call_events,
    service_settings,
    serving,
    wait_until,
)


@pytest.fixture
def service(tmp_path: Path, sink: HttpSink) -> Iterator[tuple[httpx.Client, Any, HttpSink]]:
    sink.reply("/broken/acme", lambda request: Reply(400, b"no"))
    with (
        serving(service_settings(tmp_path, sink.url())) as (url, svc),
        httpx.Client(base_url=url, timeout=10) as client,
    ):
        yield client, svc, sink


def test_four_events_of_a_call_reach_the_receiver_signed(service: Any) -> None:
    client, _, sink = service
    for event in call_events():
        answer = client.post("/v1/events", json=event, headers=auth("acme"))
        assert answer.status_code == 202, answer.text
        assert answer.json()["delivery_ids"]
    received = wait_until(lambda: len(sink.to("/hook/acme")) >= 4 and sink.to("/hook/acme"))
    assert sorted(json.loads(r.body)["type"] for r in received) == sorted(
        ["call_create", "call_outcome", "call_summary", "quality_score"]
    )
    for request in received:
        verify(request.body, request.header_map, SECRET)


def test_unknown_or_missing_key_is_401(service: Any) -> None:
    client, _, _ = service
    event = call_events()[0]
    assert client.post("/v1/events", json=event).status_code == 401
    assert client.post("/v1/events", json=event, headers=auth("wrong")).status_code == 401


def test_a_rotated_second_key_works(service: Any) -> None:
    client, _, _ = service
    answer = client.post("/v1/events", json=call_events()[0], headers=auth("key-acme-rotated"))
    assert answer.status_code == 202


def test_the_tenant_comes_from_the_key_never_the_body(service: Any) -> None:
    client, svc, _ = service
    as_beta = call_events(tenant="beta")[0]
    assert client.post("/v1/events", json=as_beta, headers=auth("acme")).status_code == 403
    assert not svc.engine.store.has_event("beta", as_beta["id"])
    unnamed = {k: v for k, v in call_events()[0].items() if k != "tenant"}
    assert client.post("/v1/events", json=unnamed, headers=auth("beta")).status_code == 202
    assert svc.engine.store.has_event("beta", unnamed["id"])


def test_a_body_over_the_cap_is_413_even_without_content_length(service: Any) -> None:
    client, svc, _ = service
    event = call_events()[2]
    event["ai"]["summary"] = "x" * 300_000
    assert client.post("/v1/events", json=event, headers=auth("acme")).status_code == 413
    chunks = iter([json.dumps(event).encode()])
    streamed = client.post("/v1/events", content=chunks, headers=auth("acme"))
    assert streamed.status_code == 413
    assert not svc.engine.store.has_event("acme", event["id"])


def test_validation_errors_are_422_with_field_paths(service: Any) -> None:
    client, _, _ = service
    event = call_events()[3]
    event["qi"]["score"] = "high"
    answer = client.post("/v1/events", json=event, headers=auth("acme"))
    assert answer.status_code == 422
    assert any("qi.score" in e["path"] for e in answer.json()["errors"]), answer.text
    broken = client.post("/v1/events", content=b"{not json", headers=auth("acme"))
    assert broken.status_code == 422


def test_the_same_event_again_gets_the_first_answer_and_fans_out_nothing(service: Any) -> None:
    client, _, sink = service
    event = call_events()[3]
    first = client.post("/v1/events", json=event, headers=auth("acme"))
    wait_until(lambda: sink.to("/hook/acme"))
    again = client.post("/v1/events", json=event, headers=auth("acme"))
    assert first.status_code == 202 and again.status_code == 200
    assert again.json() == {**first.json(), "duplicate": True}
    assert len(sink.to("/hook/acme")) == 1


def test_a_batch_answers_each_event(service: Any) -> None:
    client, _, _ = service
    good, other, bad = call_events()[0], call_events(tenant="beta")[0], {"id": "x"}
    answer = client.post("/v1/events:batch", json=[good, other, bad, good], headers=auth("acme"))
    assert answer.status_code == 200
    assert [r["status"] for r in answer.json()["results"]] == [202, 403, 422, 200]
    too_many = client.post("/v1/events:batch", json=[good] * 101, headers=auth("acme"))
    assert too_many.status_code == 422


def test_rate_limit_answers_429_with_retry_after(tmp_path: Path, sink: HttpSink) -> None:
    settings = service_settings(tmp_path, sink.url(), rate_limit=0.01, rate_burst=2)
    with serving(settings) as (url, _), httpx.Client(base_url=url) as client:
        codes = [
            client.post("/v1/events", json=e, headers=auth("acme")).status_code
            for e in call_events()[:3]
        ]
        limited = client.post("/v1/events", json=call_events()[0], headers=auth("acme"))
        other_tenant = client.post(
            "/v1/events", json=call_events(tenant="beta")[0], headers=auth("beta")
        )
    assert codes == [202, 202, 429]
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
    assert other_tenant.status_code == 202


class FullDiskStore(Store):
    """A store whose writes fail as SQLite's do on a full disk, while ``full`` is set."""

    full = False

    def _write(self) -> Any:
        if self.full:
            raise sa.exc.OperationalError(
                "INSERT", {}, sqlite3.OperationalError("database or disk is full")
            )
        return super()._write()


def test_a_full_disk_answers_503_and_loses_nothing_that_got_202(
    tmp_path: Path, sink: HttpSink
) -> None:
    from cxbridge.engine import Engine

    settings = service_settings(tmp_path, sink.url())
    store = FullDiskStore(settings.database_url)
    engine = Engine(settings, store=store)
    accepted: list[str] = []
    refused = 0
    with serving(settings, engine=engine) as (url, _), httpx.Client(base_url=url) as client:
        for index, event in enumerate([*call_events(), *call_events(), *call_events()]):
            store.full = 4 <= index < 8
            answer = client.post("/v1/events", json=event, headers=auth("acme"))
            if answer.status_code == 202:
                accepted.append(event["id"])
            else:
                assert answer.status_code == 503, answer.text
                assert int(answer.headers["Retry-After"]) > 0
                refused += 1
        batch = call_events()
        store.full = True
        answer = client.post("/v1/events:batch", json=batch, headers=auth("acme"))
        assert answer.status_code == 503 and answer.headers["Retry-After"], answer.text
        assert [r["status"] for r in answer.json()["results"]] == [503] * 4
        store.full = False
        retried = client.post("/v1/events:batch", json=batch, headers=auth("acme"))
        assert [r["status"] for r in retried.json()["results"]] == [202] * 4
        accepted += [event["id"] for event in batch]
        retried = client.post("/v1/events", json=call_events()[0], headers=auth("acme"))
        assert retried.status_code == 202
        wait_until(lambda: store.status_counts().get("pending", 0) == 0)
    assert refused == 4 and len(accepted) == 12
    delivered = {json.loads(r.body)["id"] for r in sink.to("/hook/acme")}
    assert set(accepted) <= delivered
