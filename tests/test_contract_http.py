"""The in-tree HTTP plugin passes the plugin kit's contract, as a third-party plugin would."""

from __future__ import annotations

from typing import Any

from cxbridge.testing import PluginContract


class TestHttpContract(PluginContract):
    destination_type = "http"
    timeout_options = {"timeout": {"connect": 0.5, "total": 0.5}}
    slow_seconds = 1.5

    def options(self, target: Any) -> dict[str, Any]:
        # The one place this plugin's test config lives (SSRF: the fake target is on loopback).
        return {
            "url": target.url("/hook"),
            "allow_networks": ["127.0.0.0/8"],
            "auth": {"type": "bearer", "token": "kit-bearer-token-0001"},
        }
