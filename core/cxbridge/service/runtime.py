"""The state one server process runs on: the engine, the key ring, the config version, the rate
limiter and the Copilot hub, and the reload that swaps tenant files in without a restart."""

from __future__ import annotations

import hashlib
import logging
import secrets
import threading
from pathlib import Path

from cxbridge.config import load_config_dir
from cxbridge.engine import Engine
from cxbridge.service.auth import KeyRing
from cxbridge.service.copilot import CopilotHub, CursorSigner
from cxbridge.service.metrics import ServiceMetrics
from cxbridge.service.ratelimit import RateLimiter
from cxbridge.service.settings import ServiceSettings

__all__ = ["Service", "config_version"]

log = logging.getLogger(__name__)


def config_version(directory: Path) -> str:
    """A short hash of the tenant files' names and bytes: equal on every process that runs them."""
    digest = hashlib.sha256()
    for path in sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")]):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


class Service:
    """One server process. ``workers=False`` (``serve --no-workers``) only accepts and serves: the
    deliveries are made by ``cxbridge worker`` processes sharing the broker and the store."""

    def __init__(
        self,
        settings: ServiceSettings,
        *,
        engine: Engine | None = None,
        workers: bool = True,
        threads: int = 4,
    ) -> None:
        self.settings = settings
        self.engine = engine or Engine(settings)
        self.workers = workers
        self.threads = threads
        self.version = config_version(settings.config_dir)
        self.keys = self._key_ring()
        self.limiter = RateLimiter(settings.rate_limit, settings.rate_burst)
        secret = settings.cursor_secret.get_secret_value() if settings.cursor_secret else None
        if secret is None:
            log.warning("CXBRIDGE_CURSOR_SECRET is unset: Copilot cursors end with this process")
        self.hub = CopilotHub(CursorSigner(secret or secrets.token_hex(32)))
        self.metrics = ServiceMetrics(self)
        self._reload_lock = threading.Lock()

    def _key_ring(self) -> KeyRing:
        token = self.settings.admin_token
        return KeyRing(self.engine.tenants, token.get_secret_value() if token else None)

    def start(self) -> None:
        if self.workers:
            self.engine.start(threads=self.threads)

    def close(self) -> None:
        self.engine.close()

    def reload(self) -> str:
        """Load the tenant files again and switch to them; returns the new version. On a
        :class:`~cxbridge.errors.ConfigError` the running configuration stays as it was."""
        with self._reload_lock:
            directory = self.settings.config_dir
            version = config_version(directory)
            tenants = load_config_dir(directory, self.engine.plugins.destination_types)
            self.engine.replace_tenants(tenants)
            self.keys = self._key_ring()
            self.version = version
        log.warning("tenant files reloaded: version %s, %d tenant(s)", version, len(tenants))
        return version
