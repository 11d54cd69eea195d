"""µs per render of a realistic quality/summary webhook body: JSON-first vs plain Liquid text.

Run: .venv/bin/python bench/render.py

JSON-first (JsonTemplate) renders each string leaf and lets the JSON encoder escape; the baseline is
the same body written as one TextTemplate producing JSON text (unsafe: an event string containing a
quote breaks or injects into the JSON). Both render the same event context; the best of 5 rounds is
reported, so the figures are the machine's floor rather than its noise.
"""

from __future__ import annotations

import json
import sys
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "core"))

from cxbridge.events import parse_event
from cxbridge.templating import JsonTemplate, TextTemplate

EVENT = {
    "id": "evt_01HY9ZK3",
    "type": "quality_score",
    "occurredAt": "2024-05-01T12:34:56+02:00",
    "tenant": "acme",
    "call": {
        "id": "call_9f2",
        "externalId": "SF-00042",
        "direction": "inbound",
        "from": "+15551234567",
        "startedAt": "2024-05-01T12:00:00+02:00",
        "durationSeconds": 312.5,
        "agent": {"id": "a-17", "name": "Dana Smith", "email": "dana@example.com"},
    },
    "qi": {
        "score": 90,
        "passed": True,
        "rubric": [{"criterion": "greeting", "score": 10}, {"criterion": "empathy", "score": 8}],
    },
    # Not in the quality_score model: kept as an extra field, as a newer platform might send it.
    "ai": {"summary": 'Customer asked about "pricing"; agent offered a demo.\nFollow up Friday.'},
}

BODY = {
    "event_id": "{{ event.id }}",
    "call_id": "{{ call.externalId }}",
    "agent": "{{ call.agent.name }}",
    "direction": "{{ call.direction }}",
    "score": "{{ qi.score }}",
    "passed": "{{ qi.passed }}",
    "qa_status": "{% if qi.score > 85 %}Pass{% else %}Review{% endif %}",
    "summary": "{{ ai.summary }}",
    "occurred": "{{ event.occurredAt | date: '%Y-%m-%d %H:%M' }}",
    "subject": "QA {{ qi.score }} for call {{ call.externalId }}",
    "source": "cxmind",
}

TEXT = """{"event_id": "{{ event.id }}", "call_id": "{{ call.externalId }}", \
"agent": "{{ call.agent.name }}", "direction": "{{ call.direction }}", "score": {{ qi.score }}, \
"passed": {{ qi.passed }}, "qa_status": "{% if qi.score > 85 %}Pass{% else %}Review{% endif %}", \
"summary": "{{ ai.summary }}", "occurred": "{{ event.occurredAt | date: '%Y-%m-%d %H:%M' }}", \
"subject": "QA {{ qi.score }} for call {{ call.externalId }}", "source": "cxmind"}"""


def per_render_us(func: object, number: int) -> float:
    timer = timeit.Timer(func)  # type: ignore[arg-type]
    return min(timer.repeat(repeat=5, number=number)) / number * 1e6


def main() -> None:
    context = parse_event(EVENT).template_context()
    json_first = JsonTemplate(BODY)
    text = TextTemplate(TEXT)

    body = json_first.render_bytes(context)
    json.loads(body)  # always valid JSON
    try:
        json.loads(text.render(context))
        text_valid = "valid JSON"
    except ValueError:
        text_valid = "INVALID JSON (the summary's quote and newline are not escaped)"

    n = 5_000
    rows = [
        (
            "JSON-first  JsonTemplate.render_bytes",
            per_render_us(lambda: json_first.render_bytes(context), n),
        ),
        (
            "JSON-first  JsonTemplate.render (object)",
            per_render_us(lambda: json_first.render(context), n),
        ),
        ("plain text  TextTemplate.render", per_render_us(lambda: text.render(context), n)),
        (
            "context     event.template_context()",
            per_render_us(parse_event(EVENT).template_context, n),
        ),
    ]
    print(f"python {sys.version.split()[0]}; {len(BODY)}-field quality/summary webhook body")
    print(f"{'what':44} {'µs / render':>12}")
    for name, us in rows:
        print(f"{name:44} {us:12.1f}")
    print(f"\nJSON-first output: {len(body)} bytes, valid JSON. Plain-text output: {text_valid}.")
    print("reproduce: .venv/bin/python bench/render.py")


if __name__ == "__main__":
    main()
