"""Deliveries per second of the whole engine, per broker and store, next to a bare ``httpx.Client`` loop;
and the idle cost of 100,000 deliveries waiting in backoff.

Throughput: for each configuration a fresh child process builds an :class:`~cxbridge.engine.Engine`
with the generic HTTP plugin and one ``http`` destination (two signing secrets, a JSON body template)
pointing at a uvicorn sink in its own process on 127.0.0.1. It then

1. *ingest*: accepts N events (store the event, fan out, render, store the delivery, enqueue), one
   thread, no worker running;
2. *delivery*: starts the engine's worker (1 process x ``--threads`` threads) and the scheduler and
   waits until the store holds N ``delivered`` deliveries, i.e. claim → plugin ``deliver`` → POST to
   the sink → attempt row + status recorded, for every one of them.

The bare loop posts the same rendered body N times from one thread over one ``httpx.Client``.

Backoff: inserts N pending deliveries due in an hour (in bulk, through the store's tables), then runs
an engine worker (SQLite broker, 8 threads) and its scheduler (1 s passes) in a fresh process and
reports its RSS and CPU over ``--seconds``, how long ``store.due()`` takes and the query plan.

Reproduce::

    .venv/bin/python bench/engine.py                       # 3,000 deliveries per config, 8 threads
    .venv/bin/python bench/engine.py --deliveries 5000 --threads 16 --backoff 100000

Services: Redis 127.0.0.1:6379 (db 14), RabbitMQ 127.0.0.1:5672 guest/guest, PostgreSQL
127.0.0.1:5432 (user postgres; a scratch database is created and dropped); absent ones are skipped.
"""

from __future__ import annotations

import os
import sys

# A sibling of this file is named http.py: drop the folder from the path while httpx imports the
# standard library's ``http``, then bring it back (last) for the shared sink module.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import textwrap  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import httpx  # noqa: E402, F401
import sqlalchemy as sa  # noqa: E402

sys.path.append(_HERE)
from _sink import BODY_TEMPLATE, EVENT, bare, free_port, start_sink  # noqa: E402

from cxbridge.config import load_tenant  # noqa: E402
from cxbridge.engine import QUEUE_NAME, Engine  # noqa: E402
from cxbridge.events import parse_event  # noqa: E402
from cxbridge.plugins import load_plugins  # noqa: E402
from cxbridge.settings import Settings  # noqa: E402
from cxbridge.signing import generate_secret  # noqa: E402
from cxbridge.store import DeliveryFilter, Store, deliveries  # noqa: E402

REDIS_URL = os.environ.get("CXBRIDGE_BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
AMQP_URL = os.environ.get("CXBRIDGE_BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
POSTGRES_URL = os.environ.get(
    "CXBRIDGE_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)

# (label, broker, store)
CONFIGS = [
    ("sqlite broker + sqlite store", "sqlite", "sqlite"),
    ("redis + sqlite store", "redis", "sqlite"),
    ("redis + postgresql store", "redis", "postgres"),
    ("rabbitmq + sqlite store", "rabbitmq", "sqlite"),
]
PORTS = {"redis": 6379, "rabbitmq": 5672, "postgres": 5432}

TENANT = """
tenant: acme
destinations:
  bench:
    type: http
    events: [call_summary]
    url: {url}
    secrets: ["${{SECRET_1}}", "${{SECRET_2}}"]
    allow_networks: ["127.0.0.0/8"]
    body: {body}
"""


def reachable(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class ScratchPostgres:
    """A fresh PostgreSQL database, dropped on exit."""

    def __init__(self) -> None:
        self.name = f"cxbridge_bench_{uuid.uuid4().hex[:10]}"
        self.admin = sa.create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
        self.url = POSTGRES_URL.rsplit("/", 1)[0] + "/" + self.name

    def __enter__(self) -> str:
        with self.admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{self.name}"')
        return self.url

    def __exit__(self, *exc: object) -> None:
        with self.admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        self.admin.dispose()


def build_engine(tmp: Path, url: str, broker_url: str, store_url: str) -> Engine:
    (tmp / "tenants").mkdir(exist_ok=True)
    tenant_file = tmp / "tenants" / "acme.yaml"
    tenant_file.write_text(textwrap.dedent(TENANT).format(url=url, body=json.dumps(BODY_TEMPLATE)))
    settings = Settings(
        config_dir=tmp / "tenants",
        database_url=store_url,
        broker_url=broker_url,
        plugins_allow=["http"],
    )
    plugins = load_plugins(settings)
    env = {"SECRET_1": generate_secret(), "SECRET_2": generate_secret()}
    tenant = load_tenant(tenant_file, plugins.destination_types, env)
    return Engine(settings, plugins=plugins, tenants={tenant.name: tenant})


def broker_url_for(name: str, tmp: Path) -> str:
    return {"sqlite": f"sqlite:///{tmp}/broker.db", "redis": REDIS_URL, "rabbitmq": AMQP_URL}[name]


def drain(engine: Engine) -> None:
    engine.broker.declare_queue(QUEUE_NAME)
    engine.broker.flush_all()


def extra_worker(broker_url: str, store_url: str, sink_url: str, threads: int) -> None:
    """Child mode (``--processes`` > 1): one more worker process on the same broker and store. Prints
    ``ready`` once built, starts its worker (no scheduler) on a ``go`` line from stdin, stops at EOF
    and prints its CPU seconds."""
    with tempfile.TemporaryDirectory() as tmp:
        engine = build_engine(Path(tmp), sink_url, broker_url, store_url)
        print("ready", flush=True)
        sys.stdin.readline()
        cpu0 = time.process_time()
        engine.start(threads=threads, scheduler=False)
        sys.stdin.read()
        engine.stop()
        cpu = time.process_time() - cpu0
        engine.close()
    print(json.dumps({"cpu_s": cpu}), flush=True)


def run_one(
    broker: str, store: str, n: int, threads: int, sink_url: str, processes: int = 1
) -> dict[str, Any]:
    """Child mode: ingest then deliver ``n`` events on one configuration; returns the figures.

    With ``processes`` > 1, that many - 1 extra worker processes (same broker and store, no
    scheduler) are started and built before the ingest and start consuming with this one."""
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if store == "postgres":
            scratch = ScratchPostgres()
            store_url = scratch.__enter__()
        else:
            store_url = f"sqlite:///{tmp}/store.db"
        broker_url = broker_url_for(broker, tmp)
        engine = build_engine(tmp, sink_url, broker_url, store_url)
        helpers: list[subprocess.Popen[str]] = []
        try:
            drain(engine)
            for _ in range(processes - 1):
                helper = subprocess.Popen(
                    [
                        sys.executable,
                        __file__,
                        "--extra-worker",
                        f"{broker_url},{store_url}",
                        "--sink",
                        sink_url,
                        "--threads",
                        str(threads),
                    ],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
                helpers.append(helper)
            for helper in helpers:
                assert helper.stdout is not None
                if helper.stdout.readline().strip() != "ready":
                    raise SystemExit("an extra worker process did not start")
            events = []
            for i in range(n):
                data = dict(EVENT, id=f"evt-{i}")
                events.append(parse_event(data))
            started = time.perf_counter()
            for event in events:
                engine.accept(event)
            ingest_s = time.perf_counter() - started

            delivered = DeliveryFilter(status="delivered")
            started = time.perf_counter()
            cpu0 = time.process_time()
            for helper in helpers:
                assert helper.stdin is not None
                helper.stdin.write("go\n")
                helper.stdin.flush()
            engine.start(threads=threads, interval=1.0)
            deadline = time.monotonic() + 300
            while engine.store.count_deliveries(delivered) < n:
                if time.monotonic() > deadline:
                    raise SystemExit(f"{broker}/{store}: not all deliveries were delivered")
                time.sleep(0.02)
            deliver_s = time.perf_counter() - started
            cpu = (time.process_time() - cpu0) / deliver_s * 100
            engine.stop()
            helper_cpu = 0.0
            for helper in helpers:
                out, _ = helper.communicate(timeout=60)
                helper_cpu += json.loads(out.strip().splitlines()[-1])["cpu_s"]
            helpers = []
            counts = engine.store.status_counts()
            with engine.store.engine.connect() as conn:
                attempts = conn.exec_driver_sql("SELECT COUNT(*) FROM attempts").scalar()
            drain(engine)
        finally:
            for helper in helpers:
                helper.kill()
                helper.wait()
            engine.close()
            if store == "postgres":
                scratch.__exit__()
    return {
        "ingest": n / ingest_s,
        "deliver": n / deliver_s,
        "cpu": cpu,
        # CPU % of the extra worker processes together, over the same wall time (one core = 100).
        "helper_cpu": helper_cpu / deliver_s * 100,
        "counts": counts,
        "attempts": attempts,
    }


def throughput(args: argparse.Namespace) -> None:
    port = free_port()
    sink = start_sink(port)
    url = f"http://127.0.0.1:{port}/hook"
    rows: list[tuple[str, dict[str, Any] | None]] = []
    bare_rates: list[float] = []
    try:
        # The same bytes as the engine sends: the rendered body of the bench destination.
        with tempfile.TemporaryDirectory() as tmp:
            engine = build_engine(Path(tmp), url, f"sqlite:///{tmp}/b.db", f"sqlite:///{tmp}/s.db")
            destination = engine.tenants["acme"].destinations["bench"]
            payload = engine.hooks.transform(parse_event(EVENT), destination)
            assert payload is not None
            body = payload.body
            engine.close()
        bare_rates.append(bare(url, body, args.deliveries))
        for label, broker, store in CONFIGS:
            if args.configs and f"{broker},{store}" not in args.configs.split(";"):
                continue
            if any(not reachable(PORTS[s]) for s in (broker, store) if s in PORTS):
                rows.append((label, None))
                continue
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--one",
                    f"{broker},{store}",
                    "--deliveries",
                    str(args.deliveries),
                    "--threads",
                    str(args.threads),
                    "--processes",
                    str(args.processes),
                    "--sink",
                    url,
                ],
                check=True,
                capture_output=True,
                text=True,
            )
            result = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append((label, result))
            print(f"{label}: done", file=sys.stderr)
        bare_rates.append(bare(url, body, args.deliveries))
    finally:
        sink.terminate()
        sink.wait(10)

    raw = statistics.mean(bare_rates)
    print(
        f"\n{args.deliveries:,} deliveries per configuration of a {len(body)}-byte signed JSON "
        f"body, worker {args.processes} process(es) x {args.threads} threads, uvicorn sink in its own process on "
        f"127.0.0.1 ({os.cpu_count()} CPUs)\n"
    )
    print(
        f"| {'configuration':<28} | {'ingest events/s':>15} | {'delivered/s':>11} "
        f"| {'% of raw loop':>13} | {'worker CPU %':>12} |"
    )
    print(f"| {'-' * 28} | {'-' * 15}:| {'-' * 11}:| {'-' * 13}:| {'-' * 12}:|")
    # worker CPU %: all worker processes together (one core = 100 %).
    for label, r in rows:
        if r is None:
            print(f"| {label:<28} | skipped: a service is not running on 127.0.0.1 |")
            continue
        ok = r["counts"] == {"delivered": args.deliveries} and r["attempts"] == args.deliveries
        note = "" if ok else f" (!) {r['counts']} attempts={r['attempts']}"
        print(
            f"| {label:<28} | {r['ingest']:>15,.0f} | {r['deliver']:>11,.0f} "
            f"| {100 * r['deliver'] / raw:>12.0f}% | {r['cpu'] + r['helper_cpu']:>12.0f} |{note}"
        )
    runs = " / ".join(f"{r:,.0f}" for r in bare_rates)
    print(f"| {'bare httpx.Client, 1 thread':<28} | {'':>15} | {raw:>11,.0f} | {100:>12}% | |")
    print(f"\nbare loop runs (before / after the engine runs): {runs} requests/s")
    print(
        f"reproduce: .venv/bin/python bench/engine.py --deliveries {args.deliveries} "
        f"--threads {args.threads} --processes {args.processes} --backoff 0"
    )


# -- deliveries waiting in backoff ------------------------------------------------------------------


def fill_backoff(store_url: str, n: int) -> None:
    """``n`` pending deliveries that failed once and wait an hour for their next attempt."""
    store = Store(store_url)
    store.migrate()
    now = time.time()
    body = json.dumps(EVENT).encode()
    meta = json.dumps({"url": "http://127.0.0.1:9/hook", "method": "POST", "headers": {}})
    chunk = 5_000
    with store.engine.begin() as conn:
        for start in range(0, n, chunk):
            conn.execute(
                deliveries.insert(),
                [
                    {
                        "id": f"dlv_backoff_{i:08d}",
                        "tenant": "acme",
                        "destination": "bench",
                        "event_id": f"evt-{i}",
                        "event_type": "call_summary",
                        "status": "pending",
                        "body": body,
                        "content_type": "application/json",
                        "meta": meta,
                        "attempts": 1,
                        "created_at": now,
                        "updated_at": now,
                        "first_attempt_at": now,
                        "next_attempt_at": now + 3600 + (i % 600),
                        "enqueued_at": None,
                        "last_error": "HTTP 503",
                    }
                    for i in range(start, min(n, start + chunk))
                ],
            )
    store.close()


def explain_due(store: Store) -> str:
    """The query plan of the scheduler's ``due()`` query, one line."""
    with store.engine.connect() as conn:
        query = sa.text(
            "SELECT id FROM deliveries WHERE status = 'pending' AND next_attempt_at <= :now "
            "AND (lease_until IS NULL OR lease_until < :now) AND (enqueued_at IS NULL OR "
            "enqueued_at < next_attempt_at) "
            "ORDER BY next_attempt_at LIMIT 1000"
        )
        params = {"now": time.time()}
        if store.is_sqlite:
            rows = conn.execute(sa.text("EXPLAIN QUERY PLAN " + query.text), params)
            return "; ".join(str(r[-1]) for r in rows)
        rows = conn.execute(sa.text("EXPLAIN " + query.text), params)
        return "; ".join(str(r[0]).strip() for r in rows)


def idle_worker(broker_url: str, store_url: str, seconds: float, threads: int) -> dict[str, Any]:
    """Child mode: run the engine's worker and scheduler over the backoff store; measure it."""
    with tempfile.TemporaryDirectory() as tmp:
        engine = build_engine(Path(tmp), "http://127.0.0.1:9/hook", broker_url, store_url)
        drain(engine)
        times = []
        for _ in range(20):
            started = time.perf_counter()
            due = engine.store.due()
            times.append((time.perf_counter() - started) * 1000)
        assert due == [], due
        engine.start(threads=threads, interval=1.0)
        time.sleep(2)  # warm up
        cpu0, wall0 = time.process_time(), time.monotonic()
        time.sleep(seconds)
        cpu = (time.process_time() - cpu0) / (time.monotonic() - wall0) * 100
        rss = rss_mb()
        pending = engine.store.count_deliveries(DeliveryFilter(status="pending"))
        plan = explain_due(engine.store)
        engine.stop()
        drain(engine)
        engine.close()
    return {
        "rss": rss,
        "cpu": cpu,
        "pending": pending,
        "due_ms": statistics.median(times),
        "plan": plan,
    }


def backoff(args: argparse.Namespace) -> None:
    configs = [("sqlite broker + sqlite store", "sqlite", "sqlite")]
    if reachable(6379) and reachable(5432):
        configs.append(("redis + postgresql store", "redis", "postgres"))
    print(
        f"\n{args.backoff:,} pending deliveries due in 1 h; engine worker (1 process x "
        f"{args.threads} threads) + scheduler (1 s passes), measured over {args.seconds:.0f} s "
        "after 2 s of warm-up\n"
    )
    print(
        f"| {'configuration':<28} | {'RSS MB':>6} | {'CPU %':>5} | {'due() ms':>8} | still pending |"
    )
    print(f"| {'-' * 28} | {'-' * 6}:| {'-' * 5}:| {'-' * 8}:| {'-' * 13}:|")
    plans = []
    for label, broker, store in configs:
        with tempfile.TemporaryDirectory() as tmp_name:
            tmp = Path(tmp_name)
            scratch = ScratchPostgres() if store == "postgres" else None
            store_url = scratch.__enter__() if scratch else f"sqlite:///{tmp}/store.db"
            try:
                fill_backoff(store_url, args.backoff)
                out = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--idle-worker",
                        f"{broker_url_for(broker, tmp)},{store_url}",
                        "--seconds",
                        str(args.seconds),
                        "--threads",
                        str(args.threads),
                    ],
                    check=True,
                    capture_output=True,
                    text=True,
                )
            finally:
                if scratch:
                    scratch.__exit__()
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(
            f"| {label:<28} | {r['rss']:>6.1f} | {r['cpu']:>5.1f} | {r['due_ms']:>8.2f} "
            f"| {r['pending']:>13,} |"
        )
        plans.append(f"  {label}: {r['plan']}")
    print("\nplan of the scheduler's due() query:")
    print("\n".join(plans))
    print(
        f"reproduce: .venv/bin/python bench/engine.py --deliveries 0 --backoff {args.backoff} "
        f"--seconds {args.seconds:.0f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deliveries", type=int, default=3_000)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--backoff", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument(
        "--processes", type=int, default=1, help="worker processes per configuration (default 1)"
    )
    parser.add_argument(
        "--configs",
        help="only these configurations, e.g. 'redis,sqlite;sqlite,sqlite' (broker,store pairs)",
    )
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--extra-worker", help=argparse.SUPPRESS)
    parser.add_argument("--sink", help=argparse.SUPPRESS)
    parser.add_argument("--idle-worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    if args.one:
        broker, store = args.one.split(",")
        result = run_one(broker, store, args.deliveries, args.threads, args.sink, args.processes)
        print(json.dumps(result))
        return
    if args.extra_worker:
        broker_url, store_url = args.extra_worker.split(",", 1)
        extra_worker(broker_url, store_url, args.sink, args.threads)
        return
    if args.idle_worker:
        broker_url, store_url = args.idle_worker.split(",", 1)
        print(json.dumps(idle_worker(broker_url, store_url, args.seconds, args.threads)))
        return
    if args.deliveries:
        throughput(args)
    if args.backoff:
        backoff(args)


if __name__ == "__main__":
    main()
