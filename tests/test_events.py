"""Event models: wire names, forward compatibility, precise refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cxbridge import CallSummary, EventValidationError, QualityScore, parse_event
from cxbridge.events import event_json_schema

EXAMPLES = Path(__file__).parent.parent / "examples" / "events"


def test_examples_parse_into_their_typed_models():
    summary = parse_event((EXAMPLES / "call_summary.json").read_bytes())
    assert isinstance(summary, CallSummary)
    assert summary.call.external_id == "CX-8812"
    assert summary.call.from_ == "+15550109999"
    assert summary.ai.action_items[0].due_date.isoformat() == "2026-11-30"
    assert isinstance(parse_event((EXAMPLES / "quality_score.json").read_text()), QualityScore)


def test_unknown_fields_are_kept_for_forward_compatibility():
    data = json.loads((EXAMPLES / "quality_score.json").read_text())
    data["qi"]["calibratedBy"] = "auditor-3"
    data["newTopLevel"] = {"x": 1}
    event = parse_event(data)
    context = event.template_context()
    assert context["qi"]["calibratedBy"] == "auditor-3"
    assert context["newTopLevel"] == {"x": 1}


def test_wrong_types_are_refused_with_the_field_path():
    data = json.loads((EXAMPLES / "quality_score.json").read_text())
    data["qi"]["score"] = 140
    data["call"]["durationSeconds"] = "long"
    with pytest.raises(EventValidationError) as info:
        parse_event(data)
    paths = [path for path, _ in info.value.problems]
    assert "quality_score.qi.score" in paths
    assert "quality_score.call.durationSeconds" in paths
    assert info.value.event_id == "evt-qa-0001"


@pytest.mark.parametrize(
    "change",
    [
        {"type": "call_exploded"},
        {"occurredAt": "2026-11-27T09:35:00"},  # naive: no time zone
        {"id": ""},
        {"tenant": "acme/../other"},
    ],
)
def test_malformed_envelopes_are_refused(change):
    data = json.loads((EXAMPLES / "quality_score.json").read_text())
    data.update(change)
    with pytest.raises(EventValidationError):
        parse_event(data)


def test_invalid_json_is_a_validation_error_not_a_crash():
    with pytest.raises(EventValidationError, match="invalid event"):
        parse_event(b"{not json")


def test_template_context_uses_wire_names_and_the_envelope():
    event = parse_event((EXAMPLES / "call_summary.json").read_bytes())
    context = event.template_context()
    assert context["call"]["externalId"] == "CX-8812"
    assert context["call"]["from"] == "+15550109999"
    assert context["event"]["type"] == "call_summary"
    assert context["ai"]["actionItems"][0]["dueDate"] == "2026-11-30"


def test_json_schema_describes_all_four_events():
    schema = json.dumps(event_json_schema())
    for name in ("CallCreate", "CallOutcome", "CallSummary", "QualityScore", "externalId"):
        assert name in schema


def test_an_event_of_a_newer_schema_version_is_refused_with_what_to_do():
    data = json.loads((EXAMPLES / "call_summary.json").read_text())
    data["version"] = 2
    with pytest.raises(EventValidationError, match="version 2 is newer than this cxbridge reads"):
        parse_event(data)
