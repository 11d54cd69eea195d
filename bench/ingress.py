"""Events per second through ``cxbridge serve`` on the embedded default: ``POST /v1/events`` one at a
time and ``POST /v1/events:batch`` 100 at a time (202 = stored and fanned out), then how long the
in-process workers take until every delivery reached a uvicorn sink.

Reproduce::

    .venv/bin/python bench/ingress.py              # 2,000 events each way
    .venv/bin/python bench/ingress.py --events 5000 --threads 8
"""

from __future__ import annotations

import os
import sys

# A sibling of this file is named http.py (see bench/engine.py).
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]

import argparse  # noqa: E402
import json  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import httpx  # noqa: E402

sys.path.append(_HERE)
from _sink import BODY_TEMPLATE, EVENT, free_port, start_sink  # noqa: E402

TENANT = """
tenant: acme
api_keys: [bench-key]
destinations:
  hook:
    type: http
    events: [call_summary]
    url: http://127.0.0.1:{port}/hook
    allow_networks: ["127.0.0.0/8"]
    body: {body}
"""
AUTH = {"Authorization": "Bearer bench-key"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=4, help="worker threads of serve")
    args = parser.parse_args()
    sink_port, port = free_port(), free_port()
    sink = start_sink(sink_port)
    with tempfile.TemporaryDirectory() as work:
        tenants = Path(work, "tenants")
        tenants.mkdir()
        body = json.dumps(BODY_TEMPLATE)
        (tenants / "acme.yaml").write_text(TENANT.format(port=sink_port, body=body))
        env = {
            **os.environ,
            "CXBRIDGE_DATABASE_URL": f"sqlite:///{work}/store.db",
            "CXBRIDGE_BROKER_URL": f"sqlite:///{work}/broker.db",
        }
        command = [sys.executable, "-m", "cxbridge", "serve", "--port", str(port)]
        server = subprocess.Popen(
            [*command, "--threads", str(args.threads), "-c", str(tenants)], env=env
        )
        url = f"http://127.0.0.1:{port}"
        try:
            with httpx.Client(base_url=url, timeout=30) as client:
                while True:
                    try:
                        if client.get("/readyz").status_code == 200:
                            break
                    except httpx.TransportError:
                        time.sleep(0.1)
                run(client, args.events)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(60)
            sink.kill()


def run(client: httpx.Client, n: int) -> None:
    started = time.perf_counter()
    for index in range(n):
        answer = client.post("/v1/events", json={**EVENT, "id": f"one-{index}"}, headers=AUTH)
        assert answer.status_code == 202, answer.text
    one = n / (time.perf_counter() - started)
    started = time.perf_counter()
    for first in range(0, n, 100):
        batch = [{**EVENT, "id": f"batch-{i}"} for i in range(first, min(n, first + 100))]
        answer = client.post("/v1/events:batch", json=batch, headers=AUTH)
        assert answer.status_code == 200 and all(
            r["status"] == 202 for r in answer.json()["results"]
        )
    batched = n / (time.perf_counter() - started)
    while True:
        metrics = client.get("/metrics").text
        line = next(
            (
                m
                for m in metrics.splitlines()
                if m.startswith('cxbridge_deliveries{destination_type="http",status="delivered"}')
            ),
            "0 0",
        )
        if float(line.split()[-1]) >= 2 * n:
            break
        time.sleep(0.2)
    drained = 2 * n / (time.perf_counter() - started)
    print(f"POST /v1/events, one thread:        {one:,.0f} events/s accepted (202)")
    print(f"POST /v1/events:batch (100 each):   {batched:,.0f} events/s accepted")
    print(
        f"all {2 * n:,} delivered, overall:       {drained:,.0f} deliveries/s since the batches began"
    )


if __name__ == "__main__":
    main()
