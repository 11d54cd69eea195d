"""Running ``cxbridge worker`` in a subprocess for tests: its environment, its log, its children."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

READY = re.compile(r"\[(\d+)\]: worker ready")
TOOK_LOCK = re.compile(r"took the scheduler lock \(holder [^:]+:(\d+):(\w+)\)")


def http_tenant(config: Path, url: str, secret: str, retry: str) -> None:
    """One tenant, ``acme``, with one ``http`` destination ``sink`` for quality scores."""
    config.mkdir(exist_ok=True)
    (config / "acme.yaml").write_text(
        textwrap.dedent(f"""
        tenant: acme
        retry: {retry}
        destinations:
          sink:
            type: http
            events: [quality_score]
            url: {url}
            secrets: ["{secret}"]
            allow_networks: ["127.0.0.0/8"]
        """)
    )


def pid_alive(pid: int) -> bool:
    from cxbridge.brokers.sqlite import _pid_alive

    return _pid_alive(pid)


class WorkerProcess:
    """``cxbridge worker`` with its output in ``log``. :meth:`wait_for` polls the log."""

    def __init__(self, env: dict[str, str], log: Path, *args: str) -> None:
        self.log = log
        self._out = log.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cxbridge", "worker", *args],
            env=env,
            stdout=self._out,
            stderr=subprocess.STDOUT,
        )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, pattern: re.Pattern[str], count: int = 1, timeout: float = 60) -> list[str]:
        """The first group of the first ``count`` matches of ``pattern`` in the log."""
        deadline = time.monotonic() + timeout
        while True:
            found = [m.group(1) for m in pattern.finditer(self.text())]
            if len(found) >= count:
                return found
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise AssertionError(f"no {count} x {pattern.pattern!r} in log:\n{self.text()}")
            time.sleep(0.1)

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM, then the exit code (SIGKILL after ``timeout``: the test then fails on it)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait(10)
            raise AssertionError(f"worker did not stop on SIGTERM:\n{self.text()}") from None
        finally:
            self._out.close()
        return code


def worker_env(config: Path, database_url: str, broker_url: str, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "CXBRIDGE_CONFIG_DIR": str(config),
        "CXBRIDGE_DATABASE_URL": database_url,
        "CXBRIDGE_BROKER_URL": broker_url,
        **extra,
    }


class RedisServer:
    """A ``redis-server`` of the test's own on a free port, without persistence: a restart loses
    everything in it, as a crashed cache node would. Skips the test if there is no ``redis-server``."""

    def __init__(self, directory: Path) -> None:
        import shutil

        import pytest

        from tests.http_sink import closed_port

        binary = shutil.which("redis-server")
        if binary is None:
            from tests.conftest import REQUIRE_SERVICES

            message = "redis-server is not installed"
            if REQUIRE_SERVICES:
                pytest.fail(f"{message}, and CXBRIDGE_REQUIRE_SERVICES=1 requires it")
            pytest.skip(message)
        self.binary = binary
        self.directory = directory
        self.port = closed_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        import socket

        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
            ],
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None
