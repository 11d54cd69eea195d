"""The plugin kit (cxbridge.testing) catches what it promises to catch: each planted mistake in a small
plugin fails the contract with a message that says what to fix, and the good plugin passes it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cxbridge import EVENT_TYPES, OutcomeKind, __version__
from cxbridge.scaffold import new_plugin
from cxbridge.testing import (
    EVENTS_DIR,
    Bridge,
    FakeTarget,
    Reply,
    canned_event,
    make_delivery,
    make_destination,
    plugin_manager,
)

pytest_plugins = ["pytester"]
ROOT = Path(__file__).resolve().parent.parent

CONTRACT = """
from typing import Any

import cxbridge_acme
from cxbridge.testing import PluginContract


class TestAcme(PluginContract):
    destination_type = "acme"
    plugin = cxbridge_acme
    timeout_options = {"timeout": 0.5}
    slow_seconds = 1.5

    def options(self, target: Any) -> dict[str, Any]:
        return {"base_url": target.url(""), "token": "planted-token-1234"}
"""


def _plant(pytester: pytest.Pytester, tmp_path: Path, *changes: tuple[str, str]):
    """The scaffold's plugin with ``changes`` (old, new) applied, and a test enabling the kit."""
    root = new_plugin("acme", tmp_path, cxbridge_version=__version__)
    source = (root / "cxbridge_acme" / "__init__.py").read_text()
    for old, new in changes:
        assert old in source, old
        source = source.replace(old, new)
    package = pytester.mkpydir("cxbridge_acme")
    (package / "__init__.py").write_text(source)
    pytester.syspathinsert()
    pytester.makepyfile(test_planted=CONTRACT)


def _run(pytester: pytest.Pytester, check: str) -> pytest.RunResult:
    return pytester.runpytest_inprocess("-p", "no:cacheprovider", "-k", check)


def test_the_scaffolds_plugin_passes_the_whole_contract(pytester, tmp_path):
    _plant(pytester, tmp_path)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-rs")
    result.assert_outcomes(passed=18, skipped=1)
    result.stdout.fnmatch_lines(["*set entry_point = NAME*"])  # every skip says why


def test_a_plugin_that_treats_5xx_as_success_is_caught(pytester, tmp_path):
    _plant(
        pytester,
        tmp_path,
        (
            "    return outcome_for_status(",
            "    if 400 <= response.status_code < 500:\n"
            "        return Outcome.permanent(f'HTTP {response.status_code}')\n"
            "    return Outcome.delivered()\n"
            "    return outcome_for_status(",
        ),
    )
    result = _run(pytester, "test_5xx_is_retried")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(
        ["*HTTP 503 from the target gave DELIVERED*must be RETRY*outcome_for_status*"]
    )


def test_a_plugin_that_writes_twice_on_redelivery_is_caught(pytester, tmp_path):
    _plant(pytester, tmp_path, ('                "Idempotency-Key": delivery.id,', ""))
    result = _run(pytester, "test_the_same_delivery_twice")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*sent twice left 2 records where once left 1*send delivery.id as the idempotency key*"]
    )


def test_a_plugin_that_logs_its_token_is_caught(pytester, tmp_path):
    _plant(
        pytester,
        tmp_path,
        ("import threading\n", "import logging\nimport threading\n"),
        (
            "    try:\n        response = client().post(",
            "    logging.getLogger(__name__).info('token %s', options.token.get_secret_value())\n"
            "    try:\n        response = client().post(",
        ),
    )
    result = _run(pytester, "test_secrets_stay_out")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*secret option value appears in a log line of 'cxbridge_acme'*"])


def test_a_plugin_that_dead_letters_a_429_is_caught(pytester, tmp_path):
    # The hookspec example before issue 14: >= 500 retry, >= 400 permanent.
    _plant(
        pytester,
        tmp_path,
        (
            "    return outcome_for_status(",
            "    if response.status_code >= 500:\n"
            "        return Outcome.retry(f'HTTP {response.status_code}')\n"
            "    if response.status_code >= 400:\n"
            "        return Outcome.permanent(f'HTTP {response.status_code}')\n"
            "    return outcome_for_status(",
        ),
    )
    result = _run(pytester, "test_429")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*HTTP 429 with Retry-After: 7 gave PERMANENT*must be RETRY*outcome_for_status*"]
    )


def test_a_plugin_whose_option_typo_is_not_refused_is_caught(pytester, tmp_path):
    _plant(
        pytester,
        tmp_path,
        ('model_config = ConfigDict(extra="forbid")', 'model_config = ConfigDict(extra="ignore")'),
    )
    result = _run(pytester, "test_options_refuse_a_misspelt_key")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*accepted the misspelt key 'base_urll'*ConfigDict(extra='forbid')*"]
    )


# -- the pieces -------------------------------------------------------------------------------------


def test_canned_events_cover_every_type_and_are_the_examples():
    for event_type in EVENT_TYPES:
        assert canned_event(event_type).type == event_type
        example = ROOT / "examples" / "events" / f"{event_type}.json"
        assert json.loads(example.read_text()) == json.loads(
            (EVENTS_DIR / f"{event_type}.json").read_text()
        )


def test_a_bridge_settles_a_24_hour_retry_story_on_the_fake_clock(tmp_path):
    """A 503, a 429 with Retry-After: 120, then success: three attempts, the clock moved for the
    waits (the server's wait honoured), and no real waiting."""
    with FakeTarget() as target:
        target.reply("/hook", Reply(503), Reply(429, headers={"Retry-After": "120"}), Reply(200))
        bridge = Bridge(
            f"""
            tenant: acme
            destinations:
              hook:
                type: http
                events: [call_summary]
                url: {target.url("/hook")}
                allow_networks: ["127.0.0.0/8"]
            """,
            tmp_path,
        )
        try:
            start = bridge.clock.now()
            (delivery_id,) = bridge.send(canned_event("call_summary")).delivery_ids
            (record,) = bridge.settle()
            assert record.id == delivery_id and record.status == "delivered"
            kinds = [a.outcome.kind for a in bridge.attempts(delivery_id)]
            assert kinds == [OutcomeKind.RETRY, OutcomeKind.RETRY, OutcomeKind.DELIVERED]
            third = bridge.attempts(delivery_id)[2]
            second = bridge.attempts(delivery_id)[1]
            assert (third.started_at - second.started_at).total_seconds() >= 120
            assert bridge.clock.now() > start
        finally:
            bridge.close()


def test_make_delivery_gives_the_id_the_engine_gives(tmp_path):
    with FakeTarget() as target:
        bridge = Bridge(
            f"""
            tenant: acme
            destinations:
              dest:
                type: http
                events: [quality_score]
                url: {target.url("/hook")}
                allow_networks: ["127.0.0.0/8"]
            """,
            tmp_path,
        )
        try:
            event = canned_event("quality_score")
            (engine_id,) = bridge.send(event).delivery_ids
            plugins = plugin_manager(entry_points=True)
            destination = make_destination(
                "http",
                {"url": target.url("/hook"), "allow_networks": ["127.0.0.0/8"]},
                plugins=plugins,
                events=["quality_score"],
            )
            assert make_delivery(event, destination).id == engine_id
        finally:
            bridge.close()
