"""Liquid templating: JSON-first rendering, strictness, compile-time checks, limits, pydantic."""

from __future__ import annotations

import json
import time
import tracemalloc
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict, ValidationError

from cxbridge.errors import TemplateRenderError, TemplateSyntaxError
from cxbridge.events import parse_event
from cxbridge.templating import (
    Condition,
    JsonTemplate,
    TextTemplate,
    VariableRef,
    check_variables,
)
from tests.engine_support import make_event

EXAMPLE = {
    "qa_status": "{% if qi.score > 85 %}Pass{% else %}Review{% endif %}",
    "summary": "{{ ai.summary }}",
    "score": "{{ qi.score }}",
    "source": "cxmind",
}


def quality_event(score: float = 90, **extra: Any) -> dict[str, Any]:
    return {
        "id": "evt-1",
        "type": "quality_score",
        "occurredAt": "2024-05-01T23:30:00+02:00",
        "tenant": "acme",
        "call": {
            "id": "c-1",
            "externalId": "SF-42",
            "startedAt": "2024-05-01T21:00:00Z",
            "agent": {"id": "a-1", "name": "Dana"},
        },
        "qi": {
            "score": score,
            "passed": score > 85,
            "rubric": [{"criterion": "greeting", "score": 9}],
        },
        **extra,
    }


def context(score: float = 90, summary: str = "fine", timezone: str = "UTC") -> dict[str, Any]:
    ctx = parse_event(quality_event(score)).template_context(timezone)
    ctx["ai"] = {"summary": summary}
    return ctx


# --- JSON-first ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("score", "status"), [(80, "Review"), (90, "Pass")])
def test_product_example_says_review_at_80_and_pass_at_90(score: float, status: str) -> None:
    out = json.loads(JsonTemplate(EXAMPLE).render_bytes(context(score)))
    assert out["qa_status"] == status
    assert out["source"] == "cxmind"


def test_exact_output_leaf_keeps_the_value_type() -> None:
    template = JsonTemplate(
        {
            "score": "{{ qi.score }}",
            "passed": "{{qi.passed}}",
            "queue": "{{ call.queue }}",
            "rubric": "{{ qi.rubric }}",
            "agent": " {{ call.agent | default: nil }} ",
            "count": "{{ qi.rubric | size }}",
            "text": "agent {{ call.agent.name }}",
        }
    )
    out = template.render(context(90))
    assert out["score"] == 90 and isinstance(out["score"], int | float)
    assert out["passed"] is True
    assert out["queue"] is None
    assert out["rubric"] == [{"criterion": "greeting", "score": 9, "max": None, "comment": None}]
    assert out["agent"]["name"] == "Dana"
    assert out["count"] == 1
    assert out["text"] == "agent Dana"


@pytest.mark.parametrize(
    "summary",
    [
        'He said "cancel"',
        "line one\nline two\r\n\ttab",
        "back\\slash \\u0041 \\",
        "separators \u2028 and \u2029",
        '", "qa_status": "Pass',
        '"}, "injected": {"x": 1}, "y": "',
        "{{ qi.score }} {% if true %}not evaluated{% endif %}",
        "emoji 🎧 and NUL \x00",
    ],
)
def test_event_text_stays_inside_its_field_and_output_is_valid_json(summary: str) -> None:
    body = JsonTemplate(EXAMPLE).render_bytes(context(80, summary))
    out = json.loads(body)
    assert out == {"qa_status": "Review", "summary": summary, "score": 80.0, "source": "cxmind"}
    assert "\u2028".encode() not in body and "\u2029".encode() not in body


def test_plain_text_baseline_is_unsafe_for_the_same_body() -> None:
    text = TextTemplate('{"qa_status": "Review", "summary": "{{ ai.summary }}"}')
    rendered = text.render(context(80, '", "qa_status": "Pass'))
    assert json.loads(rendered)["qa_status"] == "Pass"  # why the body is JSON-first


def test_keys_may_be_templates_and_stay_strings() -> None:
    out = JsonTemplate(
        {"{{ call.externalId }}": "{{ qi.score }}", "n{{ call.agent.name }}": 1}
    ).render(context(90))
    assert out == {"SF-42": 90, "nDana": 1}


def test_literal_leaves_and_nested_lists_are_kept() -> None:
    document = {"a": [1, 2.5, True, None, "plain", {"b": ["{{ call.externalId }}"]}]}
    assert JsonTemplate(document).render(context()) == {
        "a": [1, 2.5, True, None, "plain", {"b": ["SF-42"]}]
    }


def test_leaves_do_not_share_assigns() -> None:
    template = JsonTemplate({"a": "{% assign x = 1 %}{{ x }}", "b": "{{ x | default: 'none' }}"})
    assert template.render({}) == {"a": "1", "b": "none"}


# --- strict undefined ----------------------------------------------------------------------------


def test_default_filter_covers_a_missing_variable() -> None:
    assert TextTemplate('{{ ai.sentiment | default: "n/a" }}').render(context()) == "n/a"


def test_missing_variable_in_output_is_a_clear_render_error() -> None:
    with pytest.raises(TemplateRenderError) as info:
        TextTemplate("id: {{ call.externalID }}").render(context())
    assert "undefined" in info.value.message and "default" in info.value.message
    assert (info.value.line, info.value.column) == (1, 8)


def test_missing_variable_in_a_typed_leaf_names_the_leaf() -> None:
    with pytest.raises(TemplateRenderError) as info:
        JsonTemplate({"x": [{"y": "{{ nope.deep }}"}]}).render(context())
    assert info.value.path == ("x", 0, "y")
    assert "x[0].y" in info.value.message


def test_missing_variable_is_falsy_in_conditions() -> None:
    assert TextTemplate("{% if ai.sentiment %}a{% else %}b{% endif %}").render(context()) == "b"
    assert Condition("qi.score > 85").matches({"call": {}}) is False


# --- compile-time checks -------------------------------------------------------------------------


def test_unknown_filter_is_refused_at_compile_time_with_position_and_hint() -> None:
    with pytest.raises(TemplateSyntaxError) as info:
        TextTemplate("a\n  {{ call.externalId | upcas }}")
    assert "unknown filter 'upcas'" in info.value.message
    assert "upcase" in info.value.message
    assert (info.value.line, info.value.column) == (2, 24)


@pytest.mark.parametrize(
    "source",
    ['{{ "a" | upcase: 1 }}', '{{ "a" | truncate: 1, 2, 3 }}', '{{ "a" | replace }}'],
)
def test_wrong_filter_arity_is_refused_at_compile_time(source: str) -> None:
    with pytest.raises(TemplateSyntaxError, match="takes"):
        TextTemplate(source)


def test_syntax_error_in_a_json_leaf_carries_the_leaf_path_and_position() -> None:
    with pytest.raises(TemplateSyntaxError) as info:
        JsonTemplate({"a": [1, {"b": "ok\n{% if %}"}]})
    assert info.value.path == ("a", 1, "b")
    assert (info.value.line, info.value.column) == (2, 4)


def test_partials_are_not_available() -> None:
    with pytest.raises(TemplateSyntaxError, match="include"):
        TextTemplate("{% include 'secrets' %}")


# --- time zones ----------------------------------------------------------------------------------


def test_context_datetimes_are_utc_by_default_and_tenant_local_when_asked() -> None:
    event = parse_event(quality_event())
    assert event.template_context()["occurredAt"] == "2024-05-01T21:30:00Z"
    assert event.template_context()["event"]["occurredAt"] == "2024-05-01T21:30:00Z"
    tokyo = event.template_context("Asia/Tokyo")
    assert tokyo["call"]["startedAt"] == "2024-05-02T06:00:00+09:00"


def test_date_filter_formats_in_the_render_time_zone() -> None:
    template = TextTemplate('{{ event.occurredAt | date: "%Y-%m-%d %H:%M %Z" }}')
    assert template.render(context()) == "2024-05-01 21:30 UTC"
    assert template.render(context(), timezone="Asia/Tokyo") == "2024-05-02 06:30 JST"


def test_unknown_time_zone_is_a_render_error() -> None:
    with pytest.raises(TemplateRenderError, match="time zone"):
        TextTemplate("x").render({}, timezone="Mars/Olympus")


# --- type errors and sandbox ---------------------------------------------------------------------


def test_comparing_text_with_a_number_is_a_render_error_naming_the_expression() -> None:
    with pytest.raises(TemplateRenderError) as info:
        TextTemplate("ok\n{% if qi.score > 85 %}P{% endif %}").render({"qi": {"score": "90"}})
    assert "qi.score > 85" in info.value.message
    assert info.value.line == 2


def test_condition_type_error_names_the_expression() -> None:
    with pytest.raises(TemplateRenderError, match=r"qi\.score > 85"):
        Condition("qi.score > 85").matches({"qi": {"score": "90"}})


@pytest.mark.parametrize(
    "source",
    ["{{ x.__class__ }}", "{{ x.__class__.__mro__ }}", "{{ x.upper }}", "{{ x.__len__ }}"],
)
def test_templates_cannot_reach_python_attributes(source: str) -> None:
    with pytest.raises(TemplateRenderError, match="undefined"):
        TextTemplate(source).render({"x": "text"})


@pytest.mark.parametrize(
    "source",
    ["{{ x | map: '__globals__' | join }}", "{{ x | map: '__class__' | join }}"],
)
def test_filters_cannot_reach_python_attributes(source: str) -> None:
    assert TextTemplate(source).render({"x": [{"k": 1}, "a"]}).strip() == ""


# --- resource limits -----------------------------------------------------------------------------


def bounded(source: str, ctx: dict[str, Any] | None = None) -> TemplateRenderError:
    """Render a hostile template: it must fail cleanly in under a second and under 50 MB."""
    template = TextTemplate(source)
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(TemplateRenderError) as info:
            template.render(ctx or {})
        elapsed = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert elapsed < 1.0, f"took {elapsed:.2f} s"
    assert peak < 50 * 2**20, f"peak {peak / 2**20:.0f} MiB"
    return info.value


def test_range_bomb_is_stopped() -> None:
    err = bounded('{{ (1..10000000) | join: "," }}')
    assert "range" in err.message and err.line == 1


def test_nested_loops_are_stopped() -> None:
    err = bounded("{% for i in (1..10000) %}{% for j in (1..10000) %}x{% endfor %}{% endfor %}")
    assert "loop iteration limit" in err.message


def test_many_sequential_loops_are_stopped() -> None:
    loop = "{% for i in (1..5000) %}{{ i }}{% endfor %}"
    err = bounded(loop * 3)
    assert "loop iteration limit" in err.message


def test_string_doubling_is_stopped() -> None:
    err = bounded(
        '{% assign s = "x" %}{% for i in (1..64) %}{% assign s = s | append: s %}{% endfor %}'
    )
    assert "resource limit" in err.message


def test_replace_amplification_is_stopped() -> None:
    source = (
        '{% assign s = "x" %}{% for i in (1..19) %}{% assign s = s | append: s %}{% endfor %}'
        '{{ s | replace: "x", "yyyyyyyyyy" }}'
    )
    assert "replace" in bounded(source).message


def test_repeated_big_filters_hit_the_work_limit() -> None:
    source = (
        '{% assign s = "x" %}{% for i in (1..19) %}{% assign s = s | append: s %}{% endfor %}'
        "{% for i in (1..5000) %}{% assign t = s | upcase %}{% endfor %}"
    )
    assert "work limit" in bounded(source).message


def test_join_with_a_huge_separator_is_stopped() -> None:
    source = (
        '{% assign s = "x" %}{% for i in (1..17) %}{% assign s = s | append: s %}{% endfor %}'
        "{{ (1..1000) | join: s }}"
    )
    assert "join" in bounded(source).message


def test_integer_squaring_bomb_is_stopped() -> None:
    source = "{% assign x = 10 %}{% for i in (1..64) %}{% assign x = x | times: x %}{% endfor %}"
    assert "bits" in bounded(source).message


def test_output_size_is_capped() -> None:
    source = (
        '{% assign s = "x" %}{% for i in (1..19) %}{% assign s = s | append: s %}{% endfor %}'
        "{% for i in (1..10) %}{{ s }}{% endfor %}"
    )
    assert "output limit" in bounded(source).message


def test_output_cap_holds_across_the_leaves_of_a_document() -> None:
    grow = '{% assign s = "x" %}{% for i in (1..19) %}{% assign s = s | append: s %}{% endfor %}'
    template = JsonTemplate({f"k{i}": grow + "{{ s }}" for i in range(3)})
    with pytest.raises(TemplateRenderError, match="output limit"):
        template.render({})


def test_limits_hold_in_strict_mode_errors_are_not_swallowed() -> None:
    with pytest.raises(TemplateRenderError):
        TextTemplate("{{ 1 | divided_by: 0 }}").render({})


# --- conditions ----------------------------------------------------------------------------------


def test_condition_matches_with_and_or_not_and_parentheses() -> None:
    ctx = context(90)
    assert Condition('qi.score > 85 and call.direction == "inbound"').matches(ctx)
    assert not Condition('qi.score > 95 or call.direction == "outbound"').matches(ctx)
    assert Condition("not (qi.score < 50 or qi.passed == false)").matches(ctx)


def test_condition_refuses_tags() -> None:
    with pytest.raises(TemplateSyntaxError, match="one expression"):
        Condition("x %}{{ secret }}{% if y")


def test_condition_syntax_error_is_positioned_in_the_expression() -> None:
    with pytest.raises(TemplateSyntaxError) as info:
        Condition("qi.score > 85 and | x")
    assert info.value.line == 1 and info.value.column is not None


# --- variables and checking them against the events ----------------------------------------------


def test_variables_report_paths_and_positions() -> None:
    refs = TextTemplate(
        "{{ call.externalId }}\n{% for r in qi.rubric %}{{ r.score }}{% endfor %}"
    ).variables()
    assert refs == [
        VariableRef(("call", "externalId"), 1, 4),
        VariableRef(("qi", "rubric"), 2, 13),
    ]


def test_json_template_variables_carry_the_leaf_path() -> None:
    refs = JsonTemplate({"a": ["x", "{{ call.id }}"]}).variables()
    assert refs == [VariableRef(("call", "id"), 1, 4, ("a", 1))]


def test_condition_variables_are_positioned_in_the_expression() -> None:
    refs = Condition('qi.score > 85 and\ncall.direction == "inbound"').variables()
    assert [(r.path, r.line, r.column) for r in refs] == [
        (("qi", "score"), 1, 1),
        (("call", "direction"), 2, 1),
    ]


def test_check_variables_flags_a_misspelt_field_and_suggests_the_right_one() -> None:
    errors = check_variables(
        TextTemplate("{{ call.externalId }}\n  {{ call.externalID }}"), ["quality_score"]
    )
    assert len(errors) == 1
    assert "did you mean 'call.externalId'?" in errors[0].message
    assert (errors[0].line, errors[0].column) == (2, 6)


def test_check_variables_accepts_envelope_tenant_destination_lists_and_sizes() -> None:
    source = (
        "{{ event.id }} {{ event.occurredAt }} {{ tenant }} {{ destination.name }}"
        " {{ qi.rubric[0].criterion }} {{ qi.rubric.first.score }} {{ qi.rubric.size }}"
        " {{ call.agent.name }} {{ call.from }} {{ now }}"
        " {% for r in qi.rubric %}{{ r.criterion }}{% endfor %}{% assign a = 1 %}{{ a }}"
    )
    assert check_variables(TextTemplate(source), ["quality_score"]) == []


def test_check_variables_names_the_event_type_that_lacks_an_unguarded_variable() -> None:
    template = JsonTemplate({"s": "{{ ai.summary }}", "q": "{{ qi.score }}"})
    errors = check_variables(template, ["call_summary", "quality_score"])
    assert [(e.path, str(e).split(" events")[0]) for e in errors] == [
        (("s",), "'ai.summary' is not in quality_score"),
        (("q",), "'qi.score' is not in call_summary"),
    ]
    errors = check_variables(template, ["quality_score"])
    assert [e.path for e in errors] == [("s",)]


def test_a_default_after_another_filter_does_not_guard() -> None:
    (error,) = check_variables(
        TextTemplate("{{ ai.summary | upcase | default: '' }}"), ["call_summary", "quality_score"]
    )
    assert "not in quality_score events" in str(error)


@pytest.mark.parametrize(
    "source",
    [
        "{{ ai.summary | default: '' }}",
        "{{ ai.summary | default: '' | upcase }}",
        "{% if ai.summary %}{{ ai.summary }}{% endif %}",
        "{% unless qi %}{{ ai.summary }}{% endunless %}",
        "{% case event.type %}{% when 'call_summary' %}{{ ai.summary }}{% endcase %}",
    ],
)
def test_a_guarded_variable_may_be_missing_from_some_event_types(source: str) -> None:
    assert check_variables(TextTemplate(source), ["call_summary", "quality_score"]) == []
    TextTemplate(source).render(make_event("quality_score").template_context())  # no error


def test_check_variables_on_a_condition() -> None:
    errors = check_variables(Condition("qi.scor > 85"), ["quality_score"])
    assert "did you mean 'qi.score'?" in errors[0].message
    assert (errors[0].line, errors[0].column) == (1, 1)


def test_check_variables_explains_a_step_into_a_plain_value() -> None:
    (error,) = check_variables(TextTemplate("{{ call.direction.name }}"), ["call_create"])
    assert "call.direction" in error.message


def test_check_variables_flags_a_misspelt_loop_variable_field_with_position_and_hint() -> None:
    errors = check_variables(
        TextTemplate("{% for r in qi.rubric %}\n  {{ r.scor }}{% endfor %}"), ["quality_score"]
    )
    assert len(errors) == 1
    assert "'r.scor'" in errors[0].message and "item of qi.rubric" in errors[0].message
    assert "did you mean 'r.score'?" in errors[0].message
    assert (errors[0].line, errors[0].column) == (2, 6)


def test_check_variables_flags_a_loop_variable_typo_in_a_json_leaf_with_the_leaf_path() -> None:
    template = JsonTemplate(
        {"items": ["{% for a in ai.actionItems %}{{ a.txt }} {{ a.dueDate }}{% endfor %}"]}
    )
    (error,) = check_variables(template, ["call_summary"])
    assert "did you mean 'a.text'?" in error.message
    assert (error.path, error.line, error.column) == (("items", 0), 1, 33)


def test_check_variables_accepts_declared_loop_variable_fields_and_forloop() -> None:
    source = (
        "{% for r in qi.rubric reversed limit: 2 %}{{ r.score }} {{ r.comment }} {{ r.criterion }}"
        " {{ r.max }} {{ r }} {{ r.size }} {{ forloop.index }} {{ forloop.last }}{% endfor %}"
        "{% tablerow c in qi.rubric %}{{ c.score }} {{ tablerowloop.col }}{% endtablerow %}"
    )
    assert check_variables(TextTemplate(source), ["quality_score"]) == []
    intents = "{% for i in ai.intents %}{{ i.name }} {{ i.confidence }}{% endfor %}"
    assert check_variables(TextTemplate(intents), ["call_outcome"]) == []


def test_check_variables_resolves_nested_loops_to_their_own_items() -> None:
    source = (
        "{% if qi and ai %}"  # each event type lacks one of them: guarded
        "{% for r in qi.rubric %}{% for i in ai.intents %}"
        "{{ r.score }} {{ i.name }} {{ i.scor }}"
        "{% for c in r.criterion %}{{ c.size }} {{ c.name }}{% endfor %}"
        "{% for r in ai.intents %}{{ r.confidence }}{% endfor %}"
        "{% endfor %}{{ r.nam }}{% endfor %}"
        "{% endif %}"
    )
    errors = check_variables(TextTemplate(source), ["call_outcome", "quality_score"])
    assert [e.message.split(" (")[0] for e in errors] == [
        "unknown variable 'i.scor'",
        "unknown variable 'c.name'",
        "unknown variable 'r.nam'",
    ]
    assert "'c' is text" in errors[1].message
    assert "'r' has: comment, criterion, max, score" in errors[2].message


def test_check_variables_does_not_guess_items_of_non_lists_and_unknown_iterables() -> None:
    source = (
        "{% for x in qi.score %}{{ x.a }}{% endfor %}"  # a number: the loop never runs
        "{% for x in call.agent %}{{ x[0] }} {{ x.a }}{% endfor %}"  # a model: [key, value] pairs
        "{% for x in destination.items %}{{ x.a }}{% endfor %}"  # the destination's own
        "{% assign rs = qi.rubric %}{% for x in rs %}{{ x.a }}{% endfor %}"  # an assign
        "{% for x in qi.rubric %}{{ x.score }}{% else %}{{ x.a }}{% endfor %}"  # else: no item
    )
    assert check_variables(TextTemplate(source), ["quality_score"]) == []
    unknown = TextTemplate("{% for x in qi.rubrics %}{{ x.a }}{% endfor %}")
    (error,) = check_variables(unknown, ["quality_score"])
    assert "'qi.rubrics'" in error.message and "did you mean 'qi.rubric'?" in error.message
    (error,) = check_variables(
        TextTemplate("{% for i in (1..3) %}{{ i }}{{ i.a }}{% endfor %}"), ["quality_score"]
    )
    assert "'i' is a plain value" in error.message


# --- pydantic fields -----------------------------------------------------------------------------


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: TextTemplate
    body: JsonTemplate | None = None
    when: Condition | None = None


def test_model_fields_compile_raw_values_and_serialize_back_to_source() -> None:
    options = Options(
        url="https://x/{{ call.externalId }}", body={"s": "{{ qi.score }}"}, when="qi"
    )
    assert isinstance(options.url, TextTemplate)
    assert options.url.render(context()) == "https://x/SF-42"
    assert options.body is not None and options.body.render(context()) == {"s": 90.0}
    assert options.when is not None and options.when.matches(context())
    assert options.model_dump() == {
        "url": "https://x/{{ call.externalId }}",
        "body": {"s": "{{ qi.score }}"},
        "when": "qi",
    }
    assert Options.model_validate_json(options.model_dump_json()) == options


def test_model_collects_every_template_error_with_its_position() -> None:
    with pytest.raises(ValidationError) as info:
        Options(url="{{ x | nope }}", body={"a": ["{% if %}"]}, when="a >")
    errors = {err["loc"][0]: err for err in info.value.errors()}
    assert set(errors) == {"url", "body", "when"}
    assert all(err["type"] == "template_syntax" for err in errors.values())
    assert errors["url"]["ctx"] == {
        "message": "unknown filter 'nope'",
        "line": 1,
        "column": 8,
        "path": [],
        "more": [],
    }
    assert errors["body"]["ctx"]["path"] == ["a", 0]
    assert errors["url"]["msg"] == "unknown filter 'nope'"


def test_a_document_reports_every_broken_leaf_not_just_the_first() -> None:
    with pytest.raises(TemplateSyntaxError) as info:
        JsonTemplate({"a": "{{ x | nope }}", "b": ["ok", "{% if %}"], "c": "{{ y }}"})
    assert info.value.path == ("a",)
    assert [err.path for err in info.value.more] == [("b", 1)]


def test_model_refuses_a_non_string_template() -> None:
    with pytest.raises(ValidationError) as info:
        Options(url=5)  # type: ignore[arg-type]
    assert info.value.errors()[0]["type"] == "string_type"


def test_json_schema_is_a_string_for_text_and_conditions_and_any_for_documents() -> None:
    props = Options.model_json_schema()["properties"]
    assert props["url"]["type"] == "string"
    assert {"type": "string"}.items() <= props["when"]["anyOf"][0].items()
    assert "type" not in props["body"]["anyOf"][0]
