"""``cxbridge serve``: the application on uvicorn, with the signals a service manager sends.

SIGTERM or SIGINT: stop accepting connections, let in-flight requests finish, stop the workers (an
attempt in progress finishes; messages not started go back to the broker), exit 0. SIGHUP: reload the
tenant files. Request logs are off and uvicorn's own lines have ``token=`` values masked: Copilot
panels may pass their key in the query string.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import uvicorn

from cxbridge.errors import ConfigError
from cxbridge.service.app import create_app
from cxbridge.service.runtime import Service
from cxbridge.service.settings import ServiceSettings

__all__ = ["run_serve"]

log = logging.getLogger(__name__)
EXAMPLES = Path("examples/tenants")
_TOKEN = re.compile(r"(token=)[^&\s\"]*")


class _MaskTokens(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                _TOKEN.sub(r"\1***", a) if isinstance(a, str) else a for a in record.args
            )
        return True


class _Server(uvicorn.Server):
    """uvicorn's server, without re-raising the stop signal after shutdown (which would make the
    exit status 143 instead of 0), and with SIGHUP reloading the tenant files."""

    def __init__(self, config: uvicorn.Config, service: Service) -> None:
        super().__init__(config)
        self.service = service

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        previous = {
            sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, self._hangup)
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _hangup(self, *_: object) -> None:
        threading.Thread(target=self._reload, name="cxbridge-reload", daemon=True).start()

    def _reload(self) -> None:
        try:
            self.service.reload()
        except ConfigError as exc:
            log.error("reload refused; still running version %s:\n%s", self.service.version, exc)


def run_serve(
    settings: ServiceSettings, *, host: str, port: int, workers: bool, threads: int
) -> None:
    """Serve until SIGTERM/SIGINT. Raises :class:`ConfigError` when the tenant files are invalid."""
    with _example_receiver(settings):
        service = Service(settings, workers=workers, threads=threads)
        for name in ("uvicorn.error", "uvicorn.access"):
            logging.getLogger(name).addFilter(_MaskTokens())
        config = uvicorn.Config(
            create_app(service),
            host=host,
            port=port,
            lifespan="on",
            log_config=None,
            access_log=False,
            ws="websockets-sansio",
            ws_ping_interval=20,
            ws_ping_timeout=20,
            timeout_graceful_shutdown=30,
        )
        log.warning(
            "serving on http://%s:%d (config version %s, workers %s)",
            host,
            port,
            service.version,
            "on" if workers else "off",
        )
        _Server(config, service).run()


@contextlib.contextmanager
def _example_receiver(settings: ServiceSettings) -> Iterator[None]:
    """On the example tenant with its variables unset, do as ``cxbridge demo``: a local receiver
    that verifies signatures (its ticketing endpoint rejects everything, so call summaries become
    dead letters for the Copilot panel), fake Salesforce and Zendesk servers, and the API key
    ``demo-key``: the service runs out of the box."""
    if settings.config_dir != EXAMPLES or "ACME_WEBHOOK_URL" in os.environ:
        yield
        return
    from cxbridge.demo import example_endpoints

    with example_endpoints() as endpoints:
        log.warning(
            "example tenant acme: API key from ACME_API_KEY, receiver at %s, fake Salesforce at "
            "%s, fake Zendesk at %s",
            endpoints.receiver.base,
            endpoints.salesforce.url,
            endpoints.zendesk.url,
        )
        yield
