"""``cxbridge serve`` as a process: SIGTERM under load then a restart loses no accepted event; the
scale-out shape (``serve --no-workers`` + ``cxbridge worker`` on Redis and PostgreSQL) end to end."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.client import connect

from cxbridge.signing import verify
from tests.http_sink import HttpSink, Reply
from tests.service_support import (
    KEYS,
    SECRET,
    auth,
    call_events,
    free_port,
    wait_until,
    write_tenants,
)

CXBRIDGE = str(Path(sys.executable).parent / "cxbridge")


def environment(tmp_path: Path, sink: HttpSink, **extra: str) -> dict[str, str]:
    env = {
        **os.environ,
        "CXBRIDGE_CONFIG_DIR": str(write_tenants(tmp_path / "tenants", sink.url())),
        "CXBRIDGE_DATABASE_URL": f"sqlite:///{tmp_path / 'store.db'}",
        "CXBRIDGE_BROKER_URL": f"sqlite:///{tmp_path / 'broker.db'}",
        "CXBRIDGE_CURSOR_SECRET": "process-test-secret",
        "CXBRIDGE_LOST_AFTER": "3",
    }
    env.update(extra)
    return env


@contextlib.contextmanager
def process(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("ab") as out:
        proc = subprocess.Popen([CXBRIDGE, *args], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)


def wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    def ready() -> bool:
        assert proc.poll() is None, log.read_text()
        try:
            return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    wait_until(ready, timeout=60, interval=0.1)


def scores(count: int) -> list[dict[str, Any]]:
    run = uuid.uuid4().hex[:8]
    return [{**call_events(call=f"{run}-{i}")[3], "id": f"{run}-score-{i}"} for i in range(count)]


@pytest.mark.slow
def test_sigterm_under_load_then_restart_delivers_every_accepted_event(
    tmp_path: Path, sink: HttpSink
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = environment(tmp_path, sink)
    args = ["serve", "--port", str(port)]
    log = tmp_path / "serve.log"
    events = scores(500)
    accepted: list[str] = []

    def post(client: httpx.Client, event: dict[str, Any]) -> None:
        try:
            answer = client.post("/v1/events", json=event, headers=auth("acme"))
        except httpx.TransportError:
            return  # the server was going away: not accepted, so not owed
        if answer.status_code == 202:
            accepted.append(event["id"])

    with process(args, env, log) as proc:
        wait_ready(url, proc, log)
        with httpx.Client(base_url=url, timeout=30) as client, ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(post, client, event) for event in events]
            wait_until(lambda: len(accepted) >= 150, timeout=60)
            proc.send_signal(signal.SIGTERM)
            for future in futures:
                future.result()
        assert proc.wait(60) == 0, log.read_text()
    stopped_with = len(accepted)
    delivered_before_restart = len({json.loads(r.body)["id"] for r in sink.to("/hook/acme")})
    with process(args, env, log) as proc:
        wait_ready(url, proc, log)

        def all_delivered() -> bool:
            return set(accepted) <= {json.loads(r.body)["id"] for r in sink.to("/hook/acme")}

        wait_until(all_delivered, timeout=90, interval=0.2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, log.read_text()
    print(
        f"accepted {stopped_with} of 500 before SIGTERM; {delivered_before_restart} delivered "
        "before the restart, every accepted one after it"
    )
    assert 150 <= stopped_with < 500


@pytest.mark.services
def test_scaled_out_serve_and_worker_on_redis_and_postgres(
    tmp_path: Path, sink: HttpSink, redis_url: str, _postgres_database: str
) -> None:
    sink.reply("/broken/acme", lambda request: Reply(400, b"rejected"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = environment(
        tmp_path,
        sink,
        CXBRIDGE_BROKER_URL=redis_url,
        CXBRIDGE_DATABASE_URL=_postgres_database,
        CXBRIDGE_QUEUE_NAME=f"serve-test-{uuid.uuid4().hex[:8]}",
    )
    log = tmp_path / "processes.log"
    ws_url = f"ws://127.0.0.1:{port}/v1/copilot"
    with (
        process(["serve", "--no-workers", "--port", str(port)], env, log) as server,
        process(["worker", "--threads", "2"], env, log),
    ):
        wait_ready(url, server, log)
        with (
            httpx.Client(base_url=url, timeout=10) as client,
            connect(ws_url, additional_headers=auth("acme"), open_timeout=10) as panel,
        ):
            first_call = call_events()
            for event in first_call:
                assert (
                    client.post("/v1/events", json=event, headers=auth("acme")).status_code == 202
                )
            received = wait_until(
                lambda: len(sink.to("/hook/acme")) >= 4 and sink.to("/hook/acme"), 30
            )
            for request in received:
                verify(request.body, request.header_map, SECRET)
            dead = json.loads(panel.recv(timeout=30))
            assert dead["type"] == "dead_letter" and dead["event_id"] == first_call[2]["id"]
            missed = call_events()[2]
            assert client.post("/v1/events", json=missed, headers=auth("acme")).status_code == 202
            wait_until(
                lambda: client.get("/v1/admin/dead-letters", headers=auth("acme")).json()["items"][
                    1:
                ],
                30,
            )
            with connect(
                f"{ws_url}?cursor={dead['cursor']}&token={KEYS['acme']}", open_timeout=10
            ) as again:
                assert json.loads(again.recv(timeout=10))["event_id"] == missed["id"]
        server.send_signal(signal.SIGTERM)
        assert server.wait(60) == 0, log.read_text()


def test_sighup_reloads_tenant_files_and_logs_keep_keys_out(tmp_path: Path, sink: HttpSink) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = environment(tmp_path, sink, CXBRIDGE_ADMIN_TOKEN="the-admin-token")
    log = tmp_path / "serve.log"
    with process(["-vv", "serve", "--port", str(port)], env, log) as proc:
        wait_ready(url, proc, log)
        version = httpx.get(f"{url}/v1/admin/version", headers=auth("acme")).json()["version"]
        with connect(f"ws://127.0.0.1:{port}/v1/copilot?token={KEYS['acme']}", open_timeout=10):
            pass
        httpx.get(f"{url}/v1/admin/version", headers=auth("the-admin-token")).raise_for_status()
        tenant_file = Path(env["CXBRIDGE_CONFIG_DIR"]) / "acme.yaml"
        tenant_file.write_text(tenant_file.read_text().replace("key-acme-rotated", "key-acme-3"))
        proc.send_signal(signal.SIGHUP)

        def reloaded() -> bool:
            answer = httpx.get(f"{url}/v1/admin/version", headers=auth("key-acme-3"))
            return answer.status_code == 200 and answer.json()["version"] != version

        wait_until(reloaded, timeout=30, interval=0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    text = log.read_text()
    assert "WebSocket /v1/copilot?token=***" in text, text  # the line is there, masked
    for secret in (KEYS["acme"], "the-admin-token", "process-test-secret", SECRET):
        assert secret not in text


def test_serve_on_invalid_tenant_files_says_why_without_a_traceback(tmp_path: Path) -> None:
    (tmp_path / "acme.yaml").write_text(
        "tenant: acme\napi_keys: [k]\ndestinations: {x: {type: nope, events: ['*']}}\n"
    )
    result = subprocess.run(
        [CXBRIDGE, "serve", "-c", str(tmp_path), "--port", str(free_port())],
        env={**os.environ, "CXBRIDGE_DATABASE_URL": f"sqlite:///{tmp_path / 's.db'}"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "acme.yaml:3:" in result.stderr and "unknown destination type" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.services
def test_servers_and_workers_starting_together_migrate_one_fresh_postgres_database(
    postgres_url: str,
) -> None:
    """``serve --no-workers`` and ``cxbridge worker`` on several machines start at once: each
    migrates, and none fails on the others' CREATE TABLE."""
    import threading

    import sqlalchemy as sa

    from cxbridge.store import Store

    name = f"cxbridge_migrate_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = postgres_url.rsplit("/", 1)[0] + "/" + name
    stores = [Store(url) for _ in range(4)]
    start = threading.Barrier(len(stores))
    errors: list[BaseException] = []

    def migrate(store: Store) -> None:
        start.wait()
        try:
            store.migrate()
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=migrate, args=(store,)) for store in stores]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    finally:
        for store in stores:
            store.close()
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()
    assert errors == []
