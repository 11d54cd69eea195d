"""The generic HTTP plugin (cxbridge_http) against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest
import standardwebhooks
import svix.webhooks
from pydantic import ValidationError

import cxbridge
import cxbridge_http
from cxbridge import Delivery, Destination, Outcome, OutcomeKind, Payload, parse_event
from cxbridge.errors import SignatureError
from cxbridge.events import Event
from cxbridge.plugins import PluginManager
from cxbridge.signing import generate_secret, verify
from cxbridge_http import HttpOptions
from tests.http_sink import HttpSink, Recorded, Reply, closed_port

SECRET = generate_secret()
LOCAL = ["127.0.0.0/8"]


@pytest.fixture(autouse=True)
def _fresh_plugin_state() -> Iterator[None]:
    yield
    cxbridge_http.shutdown()


def make_event(**extra: Any) -> Event:
    data: dict[str, Any] = {
        "id": "evt-1",
        "type": "call_summary",
        "occurredAt": "2026-01-01T10:00:00Z",
        "tenant": "acme",
        "call": {"id": "call-1", "externalId": "CX-42"},
        "ai": {"summary": "Customer asked for a refund — agreed.", "tags": ["refund", "vip"]},
    }
    data.update(extra)
    return parse_event(data)


def destination(url: str, **options: Any) -> Destination:
    options.setdefault("allow_networks", LOCAL)
    return Destination(
        tenant="acme",
        name="hook",
        type="http",
        events=frozenset({"call_summary"}),
        options=HttpOptions.model_validate({"url": url, **options}),
    )


def render(dest: Destination, event: Event | None = None) -> Payload:
    payload = cxbridge_http.transform(event=event or make_event(), destination=dest)
    assert payload is not None
    return payload


def send(
    dest: Destination,
    payload: Payload | None = None,
    *,
    attempt: int = 1,
    delivery_id: str = "dlv_evt-1_hook",
) -> Outcome:
    delivery = Delivery(
        id=delivery_id,
        tenant=dest.tenant,
        destination=dest.name,
        event_id="evt-1",
        event_type="call_summary",
        attempt=attempt,
        payload=payload or render(dest),
    )
    outcome = cxbridge_http.deliver(delivery=delivery, destination=dest)
    assert outcome is not None
    return outcome


# -- transform -------------------------------------------------------------------------------------


def test_transform_renders_url_headers_and_json_first_body() -> None:
    dest = destination(
        "https://hooks.example.com/cx/{{ call.externalId }}?t={{ event.type }}",
        method="put",
        headers={"X-Call": "{{ call.id }}", "X-Team": "support"},
        body={"summary": "{{ ai.summary }}", "tags": "{{ ai.tags }}", "n": 1},
    )
    payload = render(dest)
    assert payload.meta["url"] == "https://hooks.example.com/cx/CX-42?t=call_summary"
    assert payload.meta["method"] == "PUT"
    # only templated headers are stored; static ones are read from the options at send time
    assert payload.meta["headers"] == {"X-Call": "call-1"}
    assert payload.content_type == "application/json"
    assert json.loads(payload.body) == {
        "summary": "Customer asked for a refund — agreed.",
        "tags": ["refund", "vip"],
        "n": 1,
    }


def test_default_body_is_the_event_json() -> None:
    payload = render(destination("http://127.0.0.1/x"))
    data = json.loads(payload.body)
    assert data["id"] == "evt-1" and data["call"]["externalId"] == "CX-42"
    assert payload.content_type == "application/json"


def test_text_body_with_its_content_type() -> None:
    dest = destination(
        "http://127.0.0.1/x",
        text_body="call={{ call.externalId }}&summary={{ ai.summary | url_encode }}",
        content_type="application/x-www-form-urlencoded",
    )
    payload = render(dest)
    assert payload.body.startswith(b"call=CX-42&summary=Customer")
    assert payload.content_type == "application/x-www-form-urlencoded"
    assert render(destination("http://127.0.0.1/x", text_body="hi")).content_type.startswith(
        "text/plain"
    )


@pytest.mark.parametrize("url", ["ftp://x/{{ call.externalId }}", "not a url", "https:///path"])
def test_a_url_that_is_not_http_is_refused_at_load(url: str) -> None:
    with pytest.raises(ValidationError, match=r"not an http\(s\) URL"):
        destination(url)


@pytest.mark.parametrize(
    "url",
    [
        "{{ call.externalId }}://x/",
        "https://{{ call.externalId }}.example.com/",
        "http://h{{ call.id }}/",
    ],
)
def test_the_scheme_and_host_of_a_url_cannot_come_from_data(url: str) -> None:
    with pytest.raises(ValidationError, match="scheme and host of a url must be written out"):
        destination(url)


def test_other_destination_types_are_left_alone() -> None:
    other = Destination("acme", "sf", "salesforce", frozenset({"call_summary"}), options=None)
    assert cxbridge_http.transform(event=make_event(), destination=other) is None
    delivery = Delivery("d", "acme", "sf", "evt-1", "call_summary", 1, Payload(b"{}"))
    assert cxbridge_http.deliver(delivery=delivery, destination=other) is None


# -- options ---------------------------------------------------------------------------------------


def test_options_forbid_unknown_keys_and_validate_secrets_without_echoing_them() -> None:
    with pytest.raises(ValidationError, match="extra"):
        HttpOptions.model_validate({"url": "http://x/", "retries": 3})
    bad = "whsec_" + base64.b64encode(b"too short").decode()
    with pytest.raises(ValidationError, match="at least 32 bytes") as info:
        HttpOptions.model_validate({"url": "http://x/", "secrets": [bad]})
    assert bad not in str(info.value)
    with pytest.raises(ValidationError) as info:
        HttpOptions.model_validate({"url": "http://x/", "auth": {"type": "bearer", "tok": "s3cr"}})
    assert "s3cr" not in str(info.value)


def test_options_accept_one_secret_string_a_list_and_expiring_entries() -> None:
    one = HttpOptions.model_validate({"url": "http://x/", "secrets": SECRET})
    assert one.active_secrets() == [SECRET]
    old, new = generate_secret(), generate_secret()
    past = datetime.now(UTC) - timedelta(hours=1)
    rotated = HttpOptions.model_validate(
        {
            "url": "http://x/",
            "secrets": [new, {"secret": old, "expires_at": past.replace(tzinfo=None).isoformat()}],
        }
    )
    assert rotated.secrets[1].expires_at is not None and rotated.secrets[1].expires_at.tzinfo
    assert rotated.active_secrets() == [new]
    assert rotated.active_secrets(past - timedelta(minutes=1)) == [new, old]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"body": {"a": 1}, "text_body": "x"}, "either body"),
        ({"headers": {"webhook-signature": "x"}}, "set by cxbridge"),
        ({"headers": {"Content-Type": "x"}}, "use content_type"),
        ({"headers": {"Bad Header": "x"}}, "not a valid header name"),
        ({"method": "DELETE"}, "POST"),
        ({"timeout": {"connect": 20, "total": 10}}, "connect cannot be longer"),
        ({"allow_networks": ["10.0.0.1/8"]}, "network"),
        ({"auth": {"type": "kerberos"}}, "tag"),
        (
            {"auth": {"type": "bearer", "token": "t"}, "headers": {"Authorization": "x"}},
            "conflicts",
        ),
    ],
)
def test_invalid_options(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        HttpOptions.model_validate({"url": "http://x/", **options})


# -- sending and signing ---------------------------------------------------------------------------


def test_body_bytes_arrive_exactly_with_every_header_and_a_signature_that_verifies(
    sink: HttpSink,
) -> None:
    dest = destination(sink.url("/hook"), secrets=[SECRET], headers={"X-Team": "support"})
    payload = render(dest)
    outcome = send(dest, payload, attempt=3)
    assert outcome.kind is OutcomeKind.DELIVERED and outcome.status_code == 200
    (request,) = sink.requests
    assert request.method == "POST" and request.path == "/hook"
    assert request.body == payload.body
    h = request.header_map
    assert h["webhook-id"] == "dlv_evt-1_hook"
    assert abs(int(h["webhook-timestamp"]) - time.time()) < 5
    assert h["webhook-signature"].startswith("v1,")
    assert h["x-cxmind-signature"] == h["webhook-signature"]
    assert h["x-cxmind-event"] == "call_summary"
    assert h["x-cxmind-attempt"] == "3"
    assert h["idempotency-key"] == "dlv_evt-1_hook"
    assert h["user-agent"] == f"cxbridge/{cxbridge.__version__}"
    assert h["content-type"] == "application/json"
    assert h["x-team"] == "support"
    assert h["host"] == f"127.0.0.1:{sink.port}"
    headers = dict(request.headers)
    verify(request.body, headers, SECRET)
    standardwebhooks.Webhook(SECRET).verify(request.body, headers)
    svix.webhooks.Webhook(SECRET).verify(request.body, headers)


def test_tampered_body_and_stale_timestamp_fail_verification(sink: HttpSink) -> None:
    dest = destination(sink.url("/hook"), secrets=[SECRET])
    send(dest)
    request = sink.requests[0]
    headers = dict(request.headers)
    with pytest.raises(SignatureError):
        verify(request.body + b" ", headers, SECRET)
    with pytest.raises(standardwebhooks.webhooks.WebhookVerificationError):
        svix.webhooks.Webhook(SECRET).verify(request.body.replace(b"refund", b"rebate"), headers)
    with pytest.raises(SignatureError, match="old"):
        verify(request.body, headers, SECRET, now=time.time() + 3600)


def test_every_attempt_is_re_signed_with_a_fresh_timestamp_and_the_same_id(
    sink: HttpSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    dest = destination(sink.url("/hook"), secrets=[SECRET])
    sink.reply("/hook", Reply(503), Reply(200))
    payload = render(dest)
    start = time.time()
    assert send(dest, payload, attempt=1).kind is OutcomeKind.RETRY
    monkeypatch.setattr(time, "time", lambda: start + 120)
    assert send(dest, payload, attempt=2).ok
    first, second = sink.requests
    assert first.body == second.body == payload.body
    assert first.header("webhook-id") == second.header("webhook-id")
    assert (
        int(second.header("webhook-timestamp") or 0) - int(first.header("webhook-timestamp") or 0)
        >= 119
    )
    assert first.header("webhook-signature") != second.header("webhook-signature")
    assert (first.header("x-cxmind-attempt"), second.header("x-cxmind-attempt")) == ("1", "2")
    for request in (first, second):
        verify(
            request.body,
            dict(request.headers),
            SECRET,
            now=int(request.header("webhook-timestamp") or 0),
        )


def test_rotation_sends_one_signature_per_active_secret_and_skips_expired_ones(
    sink: HttpSink,
) -> None:
    old, new, gone = generate_secret(), generate_secret(), generate_secret()
    expired = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    later = (datetime.now(UTC) + timedelta(days=7)).isoformat()
    dest = destination(
        sink.url("/hook"),
        secrets=[
            new,
            {"secret": old, "expires_at": later},
            {"secret": gone, "expires_at": expired},
        ],
    )
    send(dest)
    request = sink.requests[0]
    headers = dict(request.headers)
    assert len((request.header("webhook-signature") or "").split()) == 2
    verify(request.body, headers, old)
    verify(request.body, headers, new)
    standardwebhooks.Webhook(old).verify(request.body, headers)
    svix.webhooks.Webhook(new).verify(request.body, headers)
    with pytest.raises(SignatureError):
        verify(request.body, headers, gone)


def test_every_secret_expired_sends_nothing_and_retries(sink: HttpSink) -> None:
    expired = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    dest = destination(sink.url("/hook"), secrets=[{"secret": SECRET, "expires_at": expired}])
    outcome = send(dest)
    assert outcome.kind is OutcomeKind.RETRY and "expired" in (outcome.error or "")
    assert sink.requests == []


def test_without_secrets_the_id_and_timestamp_are_still_sent(sink: HttpSink) -> None:
    send(destination(sink.url("/hook")))
    h = sink.requests[0].header_map
    assert h["webhook-id"] == "dlv_evt-1_hook" and "webhook-timestamp" in h
    assert "webhook-signature" not in h


@pytest.mark.parametrize("method", ["PUT", "PATCH"])
def test_methods(sink: HttpSink, method: str) -> None:
    assert send(destination(sink.url("/hook"), method=method)).ok
    assert sink.requests[0].method == method


# -- outcomes --------------------------------------------------------------------------------------

DELIVERED, RETRY, PERMANENT = OutcomeKind.DELIVERED, OutcomeKind.RETRY, OutcomeKind.PERMANENT


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (200, DELIVERED),
        (201, DELIVERED),
        (204, DELIVERED),
        (400, PERMANENT),
        (401, PERMANENT),
        (403, PERMANENT),
        (404, PERMANENT),
        (422, PERMANENT),
        (408, RETRY),
        (425, RETRY),
        (429, RETRY),
        (500, RETRY),
        (502, RETRY),
        (503, RETRY),
        (504, RETRY),
    ],
)
def test_status_matrix(sink: HttpSink, status: int, kind: OutcomeKind) -> None:
    body = b"" if status == 204 else f'{{"status": {status}}}'.encode()
    sink.reply("/hook", Reply(status, body))
    outcome = send(destination(sink.url("/hook")))
    assert outcome.kind is kind
    assert outcome.status_code == status
    assert not outcome.disable_destination
    if kind is not DELIVERED:
        assert f"HTTP {status}" in (outcome.error or "") and "127.0.0.1" in (outcome.error or "")
    if body:
        assert outcome.response_excerpt == body.decode()


def test_410_is_permanent_and_disables_the_destination(sink: HttpSink) -> None:
    sink.reply("/hook", Reply(410, b"gone"))
    outcome = send(destination(sink.url("/hook")))
    assert outcome.kind is PERMANENT and outcome.disable_destination
    assert outcome.status_code == 410
    assert (outcome.error or "").startswith("HTTP 410 Gone from 127.0.0.1: ")
    assert "`cxbridge enable`" in (outcome.error or "")


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_redirects_are_not_followed_and_name_the_location(sink: HttpSink, status: int) -> None:
    sink.reply("/hook", Reply(status, headers={"Location": sink.url("/elsewhere")}))
    outcome = send(destination(sink.url("/hook")))
    assert outcome.kind is PERMANENT and outcome.status_code == status
    assert sink.url("/elsewhere") in (outcome.error or "") and "not followed" in (
        outcome.error or ""
    )
    assert [r.path for r in sink.requests] == ["/hook"]


@pytest.mark.parametrize(
    ("header", "expected"),
    [("7", 7.0), (None, None), ("soon", None)],
)
def test_retry_after_seconds(sink: HttpSink, header: str | None, expected: float | None) -> None:
    sink.reply("/hook", Reply(429, headers={"Retry-After": header} if header else {}))
    outcome = send(destination(sink.url("/hook")))
    assert outcome.kind is RETRY and outcome.retry_after == expected


def test_retry_after_http_date(sink: HttpSink) -> None:
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=90), usegmt=True)
    sink.reply("/hook", Reply(503, headers={"Retry-After": when}))
    outcome = send(destination(sink.url("/hook")))
    assert outcome.kind is RETRY and outcome.retry_after is not None
    assert 80 <= outcome.retry_after <= 91


def test_connection_refused_is_retryable() -> None:
    outcome = send(destination(f"http://127.0.0.1:{closed_port()}/hook"))
    assert outcome.kind is RETRY and "connection refused" in (outcome.error or "")
    assert outcome.status_code is None


def test_read_timeout_is_retryable(sink: HttpSink) -> None:
    sink.reply("/hook", Reply(200, delay=1.5))
    dest = destination(sink.url("/hook"), timeout={"connect": 0.3, "total": 0.3})
    started = time.monotonic()
    outcome = send(dest)
    assert time.monotonic() - started < 1.4
    assert outcome.kind is RETRY and "timeout" in (outcome.error or "")


def test_unresolvable_name_is_retryable() -> None:
    outcome = send(destination("http://nonexistent.invalid/hook"))
    assert outcome.kind is RETRY and "DNS lookup failed" in (outcome.error or "")


def test_tls_error_is_retryable(sink: HttpSink) -> None:
    # an https URL to a plain-HTTP server: the TLS handshake fails
    outcome = send(destination(sink.url("/hook").replace("http://", "https://")))
    assert outcome.kind is RETRY and "TLS" in (outcome.error or "")


def test_response_excerpt_is_capped(sink: HttpSink) -> None:
    sink.reply("/hook", Reply(500, b"x" * 100_000))
    outcome = send(destination(sink.url("/hook")))
    assert outcome.response_excerpt is not None and len(outcome.response_excerpt) == 16 * 1024
    small = send(destination(sink.url("/hook"), max_response_excerpt=10))
    assert small.response_excerpt == "x" * 10


# -- pooling ---------------------------------------------------------------------------------------


def test_one_pooled_connection_serves_many_deliveries(sink: HttpSink) -> None:
    dest = destination(sink.url("/hook"), secrets=[SECRET])
    payload = render(dest)
    for n in range(20):
        assert send(dest, payload, attempt=n + 1).ok
    assert len(sink.requests) == 20
    assert sink.connections == 1


def test_deliveries_from_many_threads_share_the_client(sink: HttpSink) -> None:
    dest = destination(sink.url("/hook"), secrets=[SECRET])
    payload = render(dest)
    outcomes: list[Outcome] = []

    def work() -> None:
        for _ in range(25):
            outcomes.append(send(dest, payload))

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(outcomes) == 200 and all(o.ok for o in outcomes)
    assert len(cxbridge_http.sender.clients) == 1
    assert sink.connections <= 8


# -- authentication --------------------------------------------------------------------------------


def test_bearer_auth(sink: HttpSink) -> None:
    send(destination(sink.url("/hook"), auth={"type": "bearer", "token": "tok-123456"}))
    assert sink.requests[0].header("Authorization") == "Bearer tok-123456"


def test_basic_auth(sink: HttpSink) -> None:
    send(destination(sink.url("/hook"), auth={"type": "basic", "username": "u", "password": "pw"}))
    expected = "Basic " + base64.b64encode(b"u:pw").decode()
    assert sink.requests[0].header("Authorization") == expected


class TokenServer:
    """A token endpoint that hands out tok-1, tok-2, ... and a hook that accepts only the newest."""

    def __init__(self, sink: HttpSink) -> None:
        self.sink = sink
        self.issued: list[str] = []
        self.lock = threading.Lock()
        sink.reply("/token", self.token)
        sink.reply("/hook", self.hook)

    def token(self, request: Recorded) -> Reply:
        with self.lock:
            self.issued.append(f"tok-{len(self.issued) + 1}")
            return Reply.json({"access_token": self.issued[-1], "expires_in": 3600})

    def hook(self, request: Recorded) -> Reply:
        with self.lock:
            current = self.issued[-1] if self.issued else None
        if request.header("Authorization") != f"Bearer {current}":
            return Reply(401, b'{"error":"invalid_token"}')
        return Reply(200)

    def revoke(self) -> None:
        with self.lock:
            self.issued.append(f"tok-{len(self.issued) + 1}-server-side")


def oauth_destination(sink: HttpSink, **auth: Any) -> Destination:
    return destination(
        sink.url("/hook"),
        auth={
            "type": "oauth2",
            "token_url": sink.url("/token"),
            "client_id": "cx-client",
            "client_secret": "cx-secret-value",
            "scope": "events:write",
            **auth,
        },
    )


def test_oauth2_fetches_one_token_for_many_deliveries(sink: HttpSink) -> None:
    server = TokenServer(sink)
    dest = oauth_destination(sink)
    payload = render(dest)
    for _ in range(5):
        assert send(dest, payload).ok
    assert server.issued == ["tok-1"]
    (token_request,) = sink.to("/token")
    assert (
        token_request.header("Authorization")
        == "Basic " + base64.b64encode(b"cx-client:cx-secret-value").decode()
    )
    form = dict(p.split("=") for p in token_request.body.decode().split("&"))
    assert form == {"grant_type": "client_credentials", "scope": "events%3Awrite"}


def test_oauth2_concurrent_first_use_fetches_once(sink: HttpSink) -> None:
    server = TokenServer(sink)
    dest = oauth_destination(sink)
    payload = render(dest)
    results: list[Outcome] = []
    threads = [
        threading.Thread(target=lambda: results.append(send(dest, payload))) for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(o.ok for o in results) and len(results) == 8
    assert len(server.issued) == 1


def test_oauth2_refreshes_once_on_401_and_resends(sink: HttpSink) -> None:
    server = TokenServer(sink)
    dest = oauth_destination(sink, client_auth="body", audience="https://api.example.com")
    payload = render(dest)
    assert send(dest, payload).ok
    server.revoke()  # the cached tok-1 is now refused
    outcome = send(dest, payload)
    assert outcome.ok
    assert len(sink.to("/token")) == 2
    hooks = sink.to("/hook")
    assert [r.header("Authorization") for r in hooks] == [
        "Bearer tok-1",
        "Bearer tok-1",
        "Bearer tok-3",
    ]
    form = sink.to("/token")[1].body.decode()
    assert "client_secret=cx-secret-value" in form and "audience=" in form
    assert sink.to("/token")[1].header("Authorization") is None


def test_oauth2_a_second_401_is_permanent_without_a_third_token(sink: HttpSink) -> None:
    TokenServer(sink)
    sink.reply("/hook", Reply(401, b"nope"))
    outcome = send(oauth_destination(sink))
    assert outcome.kind is PERMANENT and outcome.status_code == 401
    assert len(sink.to("/token")) == 2 and len(sink.to("/hook")) == 2


@pytest.mark.parametrize(
    ("reply", "kind", "text"),
    [
        (Reply.json({"error": "invalid_client"}, status=401), PERMANENT, "invalid_client"),
        (Reply(503, b"down"), RETRY, "HTTP 503"),
        (Reply(200, b"not json"), PERMANENT, "access_token"),
    ],
)
def test_oauth2_token_endpoint_failures(
    sink: HttpSink, reply: Reply, kind: OutcomeKind, text: str
) -> None:
    sink.reply("/token", reply)
    outcome = send(oauth_destination(sink))
    assert outcome.kind is kind and text in (outcome.error or "")
    assert sink.to("/hook") == []
    assert "cx-secret-value" not in repr(outcome)


def test_oauth2_token_url_is_behind_the_ssrf_guard(sink: HttpSink) -> None:
    dest = destination(
        "http://127.0.0.1:1/hook",
        allow_networks=[],
        auth={
            "type": "oauth2",
            "token_url": sink.url("/token"),
            "client_id": "c",
            "client_secret": "s",
        },
    )
    outcome = send(dest)
    assert outcome.kind is PERMANENT and "loopback" in (outcome.error or "")
    assert sink.requests == []


# -- secrets stay secret ---------------------------------------------------------------------------


def _echo(request: Recorded) -> Reply:
    """A hostile endpoint: answers 400 with everything it received, headers included."""
    dump = json.dumps({"headers": request.headers, "body": request.body.decode()}).encode()
    return Reply(400, dump)


@pytest.mark.parametrize(
    "auth",
    [
        {"type": "bearer", "token": "bearer-token-SECRET"},
        {"type": "basic", "username": "user", "password": "basic-password-SECRET"},
        {
            "type": "oauth2",
            "token_url": "TOKEN_URL",
            "client_id": "cid",
            "client_secret": "client-secret-SECRET",
        },
    ],
)
def test_secrets_never_appear_in_outcomes_or_logs(
    sink: HttpSink, caplog: pytest.LogCaptureFixture, auth: dict[str, Any]
) -> None:
    caplog.set_level(logging.DEBUG)
    sink.reply("/hook", _echo)
    sink.reply("/token", lambda r: Reply.json({"access_token": "access-token-SECRET"}))
    if auth["type"] == "oauth2":
        auth = {**auth, "token_url": sink.url("/token")}
    dest = destination(sink.url("/hook"), secrets=[SECRET], auth=auth)
    outcome = send(dest)
    assert outcome.kind is PERMANENT and outcome.response_excerpt
    assert "[redacted]" in outcome.response_excerpt
    secrets = [
        SECRET,
        SECRET.removeprefix("whsec_"),
        "bearer-token-SECRET",
        "basic-password-SECRET",
        base64.b64encode(b"user:basic-password-SECRET").decode(),
        "client-secret-SECRET",
        "access-token-SECRET",
    ]
    text = repr(outcome) + caplog.text + repr(dest) + str(dest.options.model_dump())
    for secret in secrets:
        assert secret not in text


def test_refused_outcomes_carry_no_secret() -> None:
    dest = destination(
        "http://169.254.169.254/latest",
        allow_networks=[],
        secrets=[SECRET],
        auth={"type": "bearer", "token": "tok-SECRET-1"},
    )
    outcome = send(dest)
    assert outcome.kind is PERMANENT and "metadata" in (outcome.error or "")
    assert "tok-SECRET-1" not in repr(outcome) and SECRET not in repr(outcome)


# -- through the plugin manager --------------------------------------------------------------------


def test_the_entry_point_loads_and_delivers(sink: HttpSink) -> None:
    manager = PluginManager(allow=["http"])
    manager.load_entrypoints()
    assert not manager.failures
    kind = manager.destination_types["http"]
    assert kind.plugin == "http" and kind.options is HttpOptions
    options = kind.options.model_validate(
        {"url": sink.url("/hook/{{ call.externalId }}"), "secrets": SECRET, "allow_networks": LOCAL}
    )
    dest = Destination("acme", "hook", "http", frozenset({"call_summary"}), options=options)
    payload = manager.hooks.transform(make_event(), dest)
    assert payload is not None
    delivery = Delivery("dlv-1", "acme", "hook", "evt-1", "call_summary", 1, payload)
    outcome = manager.hooks.deliver(delivery, dest)
    assert outcome is not None and outcome.ok
    assert sink.requests[0].path == "/hook/CX-42"
    verify(sink.requests[0].body, dict(sink.requests[0].headers), SECRET)
