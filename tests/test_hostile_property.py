"""Property: whatever text an event carries, it is refused with a cxbridge error, or every payload the
``http`` plugin renders from it is sendable — valid JSON within the output limit, headers of
printable ASCII, a URL on the configured host — and arrives signed at a receiver on 127.0.0.1."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cxbridge_http
from cxbridge import (
    Delivery,
    Destination,
    EventValidationError,
    OutcomeKind,
    TemplateRenderError,
    parse_event,
)
from cxbridge.events import MAX_EVENT_BYTES
from cxbridge.signing import generate_secret, verify
from cxbridge.templating import MAX_OUTPUT
from tests.http_sink import HttpSink

SECRET = generate_secret()

# Any code point (lone surrogates and control characters included), Liquid and JSON markup, and
# sizes around the event limit (drawn as a piece and a count, so that examples print short).
hostile_piece = st.one_of(
    st.text(st.characters(codec=None, exclude_categories=()), max_size=40),
    st.sampled_from(
        [
            "{{ call.id }}",
            "{% raw %}",
            '"},"x":"',
            "\\",
            "\r\nX-Injected: 1",
            "\x00",
            "\u2028",
            "\ud800",
            "../../admin",
            "é",
            "a&b=c#d?e",
        ]
    ),
)
hostile_text = st.one_of(
    st.tuples(hostile_piece, st.just(1)),
    st.tuples(
        st.sampled_from(["x", "é", "\x01", "\u2028"]), st.integers(0, MAX_EVENT_BYTES + 10_000)
    ),
)


def text(drawn: tuple[str, int]) -> str:
    piece, count = drawn
    return piece * count


def destinations(base: str) -> list[Destination]:
    def make(name: str, **options: Any) -> Destination:
        valid = cxbridge_http.HttpOptions.model_validate(
            {"allow_networks": ["127.0.0.0/8"], "secrets": [SECRET], **options}
        )
        return Destination("acme", name, "http", frozenset({"call_summary"}), options=valid)

    url = base + "/cx/{{ call.externalId | default: 'none' }}?q={{ ai.summary }}"
    return [
        make("event", url=base + "/event"),
        make(
            "json",
            url=url,
            body={
                "summary": "{{ ai.summary }}",
                "mixed": "{{ call.agent.name | default: '' }} / {{ ai.summary | upcase }}",
                "tags": "{{ ai.tags }}",
                "extra": "{{ note | default: nil }}",
            },
            headers={"X-Call": "{{ call.id }}", "X-Queue": "{{ call.queue | default: '-' }}"},
        ),
        make("text", url=base + "/text", text_body="{{ ai.summary }}|{{ call.id }}"),
    ]


@pytest.fixture(scope="module")
def receiver() -> Iterator[HttpSink]:
    with HttpSink() as sink:
        yield sink
    cxbridge_http.shutdown()


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    event_id=hostile_text,
    call_id=hostile_text,
    external_id=hostile_text,
    agent=hostile_text,
    queue=hostile_text,
    summary=hostile_text,
    tags=st.lists(hostile_text, max_size=3),
    extra_key=hostile_text,
    extra_value=hostile_text,
)
def test_hostile_event_text_is_refused_or_sendable(
    receiver: HttpSink,
    event_id: tuple[str, int],
    call_id: tuple[str, int],
    external_id: tuple[str, int],
    agent: tuple[str, int],
    queue: tuple[str, int],
    summary: tuple[str, int],
    tags: list[tuple[str, int]],
    extra_key: tuple[str, int],
    extra_value: tuple[str, int],
) -> None:
    data = {
        "id": text(event_id),
        "type": "call_summary",
        "occurredAt": "2026-01-01T10:00:00Z",
        "tenant": "acme",
        "call": {
            "id": text(call_id),
            "externalId": text(external_id),
            "agent": {"id": "a1", "name": text(agent)},
            "queue": text(queue),
        },
        "ai": {"summary": text(summary), "tags": [text(tag) for tag in tags]},
        "note": {text(extra_key): text(extra_value)},
    }
    try:
        event = parse_event(data)
    except EventValidationError as err:
        str(err).encode("utf-8")  # the refusal itself can be printed and logged
        return
    receiver.requests.clear()
    host = urlsplit(receiver.url("/")).netloc
    for destination in destinations(receiver.url("").rstrip("/")):
        try:
            payload = cxbridge_http.transform(event=event, destination=destination)
        except TemplateRenderError as err:
            str(err).encode("utf-8")
            continue
        assert payload is not None
        assert len(payload.body) <= 4 * MAX_OUTPUT
        if payload.content_type == "application/json":
            json.loads(payload.body)
        for value in payload.meta["headers"].values():
            value.encode("ascii")
            assert "\r" not in value and "\n" not in value
        url = urlsplit(payload.meta["url"])
        assert url.netloc == host and not url.path.startswith("/admin")
        delivery = Delivery("dlv_p", "acme", destination.name, event.id, event.type, 1, payload)
        outcome = cxbridge_http.deliver(delivery=delivery, destination=destination)
        assert outcome is not None and outcome.kind is OutcomeKind.DELIVERED, (
            destination.name,
            outcome.error,
        )
        request = receiver.requests[-1]
        assert request.body == payload.body
        verify(request.body, dict(request.headers), SECRET)
