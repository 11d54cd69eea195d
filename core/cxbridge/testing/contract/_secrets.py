"""The contract's check of secrets: no ``SecretStr`` option value (nor one listed in ``secrets``)
shows up in an outcome, the attempt log kept by a real engine, or any log line."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, SecretStr

from cxbridge.outcome import Outcome
from cxbridge.plugins import PluginManager
from cxbridge.testing.bridge import Bridge
from cxbridge.testing.contract._base import ContractBase

__all__ = ["SecretsContract"]

_FORMAT = logging.Formatter("%(name)s %(message)s")


def _secret_values(value: Any) -> Iterator[str]:
    """Every ``SecretStr`` value inside a validated options model."""
    if isinstance(value, SecretStr):
        yield value.get_secret_value()
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            yield from _secret_values(getattr(value, name))
    elif isinstance(value, dict):
        for item in value.values():
            yield from _secret_values(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _secret_values(item)


def _outcome_text(outcome: Outcome) -> str:
    return " ".join(
        str(part)
        for part in (
            outcome.error,
            outcome.provider_code,
            outcome.remote_id,
            outcome.response_excerpt,
        )
        if part is not None
    )


class SecretsContract(ContractBase):
    # -- secrets ---------------------------------------------------------------------------------

    def test_secrets_stay_out_of_outcomes_attempt_logs_and_log_lines(
        self,
        plugins: PluginManager,
        target: Any,
        tmp_path: Path,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        caplog.set_level(logging.DEBUG)
        destination = self._destination(plugins, target)
        secrets = [s for s in (*self.secrets, *_secret_values(destination.options)) if len(s) >= 4]
        if not secrets:
            pytest.skip("no SecretStr option and no `secrets` listed: nothing can leak")
        texts = [_outcome_text(self._attempt(plugins, destination))]
        for status in (503, 401):
            self.fail(target, status)
            texts.append(_outcome_text(self._attempt(plugins, destination)))

        # The attempt log, through the real engine: a failure, then success.
        self.fail(target, 503)
        document = {
            "tenant": "acme",
            "destinations": {
                "dest": {
                    "type": self.destination_type,
                    "events": list(self.events),
                    **self.options(target),
                }
            },
        }
        plugin_objects = [self.plugin] if self.plugin is not None else []
        bridge = Bridge(
            yaml.safe_dump(document),
            tmp_path,
            plugins=plugin_objects,
            entry_points=self.plugin is None,
        )
        try:
            (delivery_id,) = bridge.send(self._event(self.events[0])).delivery_ids
            bridge.engine.process(delivery_id)
            self.recover(target)
            bridge.settle()
            for attempt in bridge.attempts(delivery_id):
                texts.append(_outcome_text(attempt.outcome))
            stored = bridge.engine.delivery(delivery_id)
            texts.append(str(stored.last_error if stored else ""))
        finally:
            bridge.close()
        for secret in secrets:
            for text in texts:
                assert secret not in text, (
                    "a secret option value appears in an outcome or the attempt log: keep "
                    "secrets out of Outcome.error and response_excerpt (scrub echoed requests)"
                )
            for line in caplog.records:  # formatted: a logged exception's traceback counts too
                assert secret not in _FORMAT.format(line), (
                    f"a secret option value appears in a log line of {line.name!r}: never log "
                    "headers, tokens or options; log the destination name instead"
                )
