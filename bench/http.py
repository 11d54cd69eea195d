"""Deliveries per second of the generic HTTP plugin next to a bare ``httpx.Client`` loop.

Both post the same body bytes, one at a time from one thread, to a local uvicorn sink running in
its own process on 127.0.0.1. The plugin side renders the payload once (``transform``) and calls
``deliver`` for every request, so it pays for what a worker pays per attempt: signing (two
secrets), headers, the SSRF-guarded pooled transport, the response excerpt and the outcome.

Reproduce::

    .venv/bin/python bench/http.py                 # 3 runs x 3,000 requests each
    .venv/bin/python bench/http.py --requests 5000 --runs 5
"""

from __future__ import annotations

import os
import sys

# This file is named http.py: drop its folder from the path so that it cannot shadow the standard
# library's ``http`` package that httpx imports.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import cxbridge_http  # noqa: E402
from cxbridge import Delivery, Destination, parse_event  # noqa: E402
from cxbridge.signing import generate_secret  # noqa: E402
from cxbridge_http import HttpOptions  # noqa: E402

# httpx (through cxbridge_http) imported the standard library's ``http``, so the folder can come back for the shared sink module.
sys.path.append(_HERE)
from _sink import BODY_TEMPLATE, EVENT, bare, free_port, start_sink  # noqa: E402


def plugin(url: str, n: int) -> tuple[float, int]:
    options = HttpOptions.model_validate(
        {
            "url": url,
            "secrets": [generate_secret(), generate_secret()],
            "allow_networks": ["127.0.0.0/8"],
            "body": BODY_TEMPLATE,
        }
    )
    dest = Destination("acme", "bench", "http", frozenset({"call_summary"}), options=options)
    payload = cxbridge_http.transform(event=parse_event(EVENT), destination=dest)
    assert payload is not None
    delivery = Delivery("dlv-bench", "acme", "bench", "evt-bench-1", "call_summary", 1, payload)
    warm = cxbridge_http.deliver(delivery=delivery, destination=dest)
    assert warm is not None and warm.ok, warm
    started = time.perf_counter()
    for _ in range(n):
        outcome = cxbridge_http.deliver(delivery=delivery, destination=dest)
        assert outcome is not None and outcome.ok, outcome
    rate = n / (time.perf_counter() - started)
    cxbridge_http.sender.close()
    return rate, len(payload.body)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    port = free_port()
    proc = start_sink(port)
    url = f"http://127.0.0.1:{port}/hook"
    results: dict[str, list[float]] = {"bare httpx.Client": [], "cxbridge_http deliver": []}
    size = 0
    try:
        for run in range(args.runs):
            rate, size = plugin(url, args.requests)
            results["cxbridge_http deliver"].append(rate)
            body = b"x" * size
            results["bare httpx.Client"].append(bare(url, body, args.requests))
            print(f"run {run + 1}/{args.runs} done", file=sys.stderr)
    finally:
        proc.terminate()
        proc.wait(10)
    print(
        f"\n{args.requests:,} sequential POSTs of a {size}-byte body per run, {args.runs} runs, "
        f"uvicorn sink in its own process on 127.0.0.1 ({os.cpu_count()} CPUs)\n"
    )
    print(f"| {'client':<24} | {'requests/s (runs)':<28} | {'median':>7} |")
    print(f"| {'-' * 24} | {'-' * 28} | {'-' * 7} |")
    for name, rates in results.items():
        runs = ", ".join(f"{r:,.0f}" for r in rates)
        print(f"| {name:<24} | {runs:<28} | {statistics.median(rates):>7,.0f} |")
    bare_median = statistics.median(results["bare httpx.Client"])
    plugin_median = statistics.median(results["cxbridge_http deliver"])
    per_request_us = (1 / plugin_median - 1 / bare_median) * 1e6
    print(
        f"\nplugin overhead: {100 * (1 - plugin_median / bare_median):.0f}% fewer requests/s, "
        f"{per_request_us:,.0f} µs per delivery (signing 2 secrets, guarded transport, outcome)"
    )
    print(
        f"reproduce: .venv/bin/python bench/http.py --requests {args.requests} --runs {args.runs}"
    )


if __name__ == "__main__":
    main()
