"""The plugin kit (cxbridge.testing) catches what it promises to catch: each planted mistake in a small
plugin fails the contract with a message that says what to fix, and the good plugin passes it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from cxbridge import EVENT_TYPES, OutcomeKind, __version__
from cxbridge.scaffold import new_plugin
from cxbridge.testing import (
    EVENTS_DIR,
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
        return {
            "base_url": target.url(""),
            "token": "planted-token-1234",
            "allow_networks": ["127.0.0.0/8"],
        }
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


def test_the_scaffolds_plugin_passes_the_whole_contract(pytester, tmp_path):
    _plant(pytester, tmp_path)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-rs")
    result.assert_outcomes(passed=18, skipped=1)
    result.stdout.fnmatch_lines(["*set entry_point = NAME*"])  # every skip says why


STATUS_CALL = "    return outcome_for_status("
# Each planted mistake: the scaffold's plugin changed by (old, new) pairs, the contract check that
# must catch it, how many of its cases fail, and the message that says what to fix.
PLANTED = {
    "5xx treated as success": (
        [
            (
                STATUS_CALL,
                "    if 400 <= response.status_code < 500:\n"
                "        return Outcome.permanent(f'HTTP {response.status_code}')\n"
                "    return Outcome.delivered()\n" + STATUS_CALL,
            )
        ],
        "test_5xx_is_retried",
        2,
        "*HTTP 503 from the target gave DELIVERED*must be RETRY*outcome_for_status*",
    ),
    "writes twice on redelivery": (
        [('                "Idempotency-Key": delivery.id,', "")],
        "test_the_same_delivery_twice",
        1,
        "*sent twice left 2 records where once left 1*send delivery.id as the idempotency key*",
    ),
    "logs its token": (
        [
            ("import threading\n", "import logging\nimport threading\n"),
            (
                "    try:\n        response = client(destination).post(",
                "    logging.getLogger(__name__).info('token %s', options.token.get_secret_value())"
                "\n    try:\n        response = client(destination).post(",
            ),
        ],
        "test_secrets_stay_out",
        1,
        "*secret option value appears in a log line of 'cxbridge_acme'*",
    ),
    # The hookspec example before issue 14: >= 500 retry, >= 400 permanent.
    "dead-letters a 429": (
        [
            (
                STATUS_CALL,
                "    if response.status_code >= 500:\n"
                "        return Outcome.retry(f'HTTP {response.status_code}')\n"
                "    if response.status_code >= 400:\n"
                "        return Outcome.permanent(f'HTTP {response.status_code}')\n" + STATUS_CALL,
            )
        ],
        "test_429",
        1,
        "*HTTP 429 with Retry-After: 7 gave PERMANENT*must be RETRY*outcome_for_status*",
    ),
    "option typo not refused": (
        [
            (
                'model_config = ConfigDict(extra="forbid")',
                'model_config = ConfigDict(extra="ignore")',
            )
        ],
        "test_options_refuse_a_misspelt_key",
        1,
        "*accepted the misspelt key 'base_urll'*ConfigDict(extra='forbid')*",
    ),
}


@pytest.mark.parametrize("mistake", PLANTED)
def test_a_planted_mistake_is_caught_with_what_to_fix(pytester, tmp_path, mistake):
    changes, check, failures, message = PLANTED[mistake]
    _plant(pytester, tmp_path, *changes)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-k", check)
    result.assert_outcomes(failed=failures)
    result.stdout.fnmatch_lines([message])


# -- the pieces -------------------------------------------------------------------------------------


def test_canned_events_cover_every_type_and_are_the_examples():
    for event_type in EVENT_TYPES:
        assert canned_event(event_type).type == event_type
        example = ROOT / "examples" / "events" / f"{event_type}.json"
        assert json.loads(example.read_text()) == json.loads(
            (EVENTS_DIR / f"{event_type}.json").read_text()
        )


def _http_options(target: FakeTarget) -> dict[str, object]:
    return {"url": target.url("/hook"), "allow_networks": ["127.0.0.0/8"]}


def _http_tenant(target: FakeTarget, name: str, event_type: str) -> str:
    destination = {"type": "http", "events": [event_type], **_http_options(target)}
    return yaml.safe_dump({"tenant": "acme", "destinations": {name: destination}})


def test_a_bridge_settles_a_24_hour_retry_story_on_the_fake_clock(make_bridge, fake_target):
    """A 503, a 429 with Retry-After: 120, then success: three attempts, the clock moved for the
    waits (the server's wait honoured), and no real waiting. Uses the kit's own fixtures."""
    fake_target.reply("/hook", Reply(503), Reply(429, headers={"Retry-After": "120"}), Reply(200))
    bridge = make_bridge(_http_tenant(fake_target, "hook", "call_summary"))
    start = bridge.clock.now()
    (delivery_id,) = bridge.send(canned_event("call_summary")).delivery_ids
    (record,) = bridge.settle()
    assert record.id == delivery_id and record.status == "delivered"
    first, second, third = bridge.attempts(delivery_id)
    kinds = [a.outcome.kind for a in (first, second, third)]
    assert kinds == [OutcomeKind.RETRY, OutcomeKind.RETRY, OutcomeKind.DELIVERED]
    assert (third.started_at - second.started_at).total_seconds() >= 120
    assert bridge.clock.now() > start


def test_make_delivery_gives_the_id_the_engine_gives(make_bridge, fake_target):
    bridge = make_bridge(_http_tenant(fake_target, "dest", "quality_score"))
    event = canned_event("quality_score")
    (engine_id,) = bridge.send(event).delivery_ids
    destination = make_destination(
        "http",
        _http_options(fake_target),
        plugins=plugin_manager(entry_points=True),
        events=["quality_score"],
    )
    assert make_delivery(event, destination).id == engine_id


def test_every_skip_in_the_kit_says_why():
    import ast

    import cxbridge.testing

    package = Path(cxbridge.testing.__file__).parent
    for source in package.rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "skip"
            ):
                reason = node.args[0] if node.args else None
                assert isinstance(reason, ast.Constant | ast.JoinedStr), f"{source}:{node.lineno}"
                text = reason.value if isinstance(reason, ast.Constant) else "f-string"
                assert len(str(text)) > 20, f"{source}:{node.lineno}: a skip needs a real reason"
