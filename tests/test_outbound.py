"""The outbound guard under the requests-based plugins (Salesforce, Zendesk) and its requests
adapter: internal addresses refused before any connection, allowed with ``allow_networks``,
redirects refused on every method without reaching their target, endpoint overrides checked at
load. (The rules themselves and the httpx transport are tested in tests/test_ssrf.py.)"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import ValidationError

import cxbridge_salesforce
import cxbridge_zendesk
from cxbridge import (
    AddressRefused,
    Delivery,
    Destination,
    Event,
    GuardedSession,
    NetworkPolicy,
    Outcome,
    OutcomeKind,
    RedirectRefused,
)
from cxbridge.testing.fakes.zendesk import FakeZendesk
from cxbridge_salesforce import SalesforceOptions
from cxbridge_zendesk import ZendeskOptions
from tests.http_sink import HttpSink, Reply
from tests.test_salesforce import LIFECYCLE
from tests.test_ssrf import _fake_dns
from tests.test_zendesk import make_event

LOOPBACK = ["127.0.0.0/8"]


class Listener:
    """A listening socket on 127.0.0.1 that accepts nothing: ``connections()`` counts the TCP
    connections made to it (the kernel completes them into the backlog)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]

    def connections(self) -> int:
        count = 0
        while True:
            try:
                conn, _ = self.sock.accept()
            except BlockingIOError:
                return count
            conn.close()
            count += 1


@pytest.fixture
def listener() -> Iterator[Listener]:
    server = Listener()
    yield server
    server.sock.close()


@pytest.fixture(autouse=True)
def _fresh_plugins() -> Iterator[None]:
    yield
    cxbridge_salesforce.shutdown()
    cxbridge_zendesk.shutdown()


def deliver(plugin: Any, event: Event, dest: Destination) -> Outcome:
    payload = plugin.transform(event=event, destination=dest)
    delivery = Delivery("dlv-1", dest.tenant, dest.name, event.id, event.type, 1, payload)
    outcome = plugin.deliver(delivery=delivery, destination=dest)
    assert outcome is not None
    return outcome


def salesforce(options: dict[str, Any]) -> Destination:
    return Destination(
        "acme", "crm", "salesforce", frozenset(LIFECYCLE), SalesforceOptions.model_validate(options)
    )


def zendesk(options: dict[str, Any]) -> Destination:
    return Destination(
        "acme", "zd", "zendesk", frozenset(LIFECYCLE), ZendeskOptions.model_validate(options)
    )


def access_token(instance_url: str, **more: Any) -> dict[str, Any]:
    return {
        "auth": {"type": "access_token", "access_token": "tok", "instance_url": instance_url},
        **more,
    }


# -- Salesforce ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (access_token("https://127.0.0.1:8443"), "instance_url: refused: 127.0.0.1 is a loopback"),
        (access_token("https://[::ffff:169.254.169.254]"), "metadata"),
        ({**access_token("https://x.io"), "domain": "10.1.2.3"}, "domain: refused: 10.1.2.3"),
        (access_token("https://x.io", endpoint="http://127.0.0.1:9"), "endpoint: refused"),
        (access_token("http://acme.my.salesforce.com"), "instance_url must be https://"),
        (access_token("https://x.io", endpoint="http://sf.example"), "plain http outside"),
        (
            access_token("https://x.io", endpoint="http://93.184.215.14", allow_networks=LOOPBACK),
            "plain http outside allow_networks",
        ),
    ],
)
def test_salesforce_addresses_the_guard_refuses_fail_at_load(
    options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)):
        SalesforceOptions.model_validate(options)


def test_salesforce_instance_resolving_to_loopback_is_refused_without_a_connection(
    listener: Listener, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_dns(monkeypatch, {"acme.my.salesforce.com": ["127.0.0.1"]})
    url = f"https://acme.my.salesforce.com:{listener.port}"
    outcome = deliver(cxbridge_salesforce, LIFECYCLE["call_create"], salesforce(access_token(url)))
    assert outcome.kind is OutcomeKind.PERMANENT
    assert "refused: acme.my.salesforce.com -> 127.0.0.1 is a loopback address" in (
        outcome.error or ""
    )
    assert listener.connections() == 0

    # allowed, the connection is made (and fails TLS on this plain socket, a retry)
    allowed = salesforce(
        access_token(url, allow_networks=LOOPBACK, read_timeout=0.5, connect_timeout=0.5)
    )
    outcome = deliver(cxbridge_salesforce, LIFECYCLE["call_create"], allowed)
    assert outcome.kind is OutcomeKind.RETRY
    assert listener.connections() == 1


def test_salesforce_redirects_are_permanent_and_never_followed(sink: HttpSink) -> None:
    with HttpSink() as target:
        sink.reply("/services/oauth2/token", Reply(302, headers={"Location": target.url("/x")}))
        options = {
            "domain": "acme.my.salesforce.com",
            "auth": {"type": "client_credentials", "consumer_key": "k", "consumer_secret": "s"},
            "endpoint": sink.url("/"),
            "allow_networks": LOOPBACK,
        }
        outcome = deliver(cxbridge_salesforce, LIFECYCLE["call_create"], salesforce(options))
        assert outcome.kind is OutcomeKind.PERMANENT and outcome.status_code == 302
        assert f"redirect to {target.url('/x')}" in (outcome.error or "")
        assert target.requests == []


# -- Zendesk ---------------------------------------------------------------------------------------


def test_zendesk_loopback_account_url_is_refused_at_load() -> None:
    with pytest.raises(ValidationError, match=r"refused: 127\.0\.0\.1 is a loopback address"):
        ZendeskOptions.model_validate(
            {"subdomain": "127", "domain": "0.0.1:8080", "oauth_token": "o"}
        )
    with pytest.raises(ValidationError, match=r"endpoint: .*plain http outside allow_networks"):
        ZendeskOptions.model_validate(
            {"subdomain": "acme", "endpoint": "http://zd-proxy.example", "oauth_token": "o"}
        )


def test_zendesk_subdomain_resolving_to_loopback_is_refused_without_a_connection(
    listener: Listener, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_dns(monkeypatch, {"acme.zd.example": ["127.0.0.1"]})
    options = {"subdomain": "acme", "domain": f"zd.example:{listener.port}", "oauth_token": "o"}
    outcome = deliver(cxbridge_zendesk, make_event("call_create"), zendesk(options))
    assert outcome.kind is OutcomeKind.PERMANENT
    assert "refused: acme.zd.example -> 127.0.0.1 is a loopback address" in (outcome.error or "")
    assert listener.connections() == 0

    allowed = zendesk(
        {**options, "allow_networks": LOOPBACK, "read_timeout": 0.5, "connect_timeout": 0.5}
    )
    outcome = deliver(cxbridge_zendesk, make_event("call_create"), allowed)
    assert outcome.kind is OutcomeKind.RETRY  # connected; TLS fails on this plain socket
    assert listener.connections() == 1


@pytest.mark.parametrize(
    ("method", "path"), [("GET", r"/api/v2/tickets\.json"), ("POST", r"/api/v2/tickets\.json")]
)
def test_a_zendesk_redirect_is_permanent_names_its_location_and_is_never_followed(
    method: str, path: str
) -> None:
    with FakeZendesk() as fake, HttpSink() as target:
        location = target.url("/api/v2/tickets.json")
        fake.fail(method, path, status=302, headers={"Location": location}, times=None)
        dest = zendesk(fake.options(email=fake.email, api_token=fake.token))
        outcome = deliver(cxbridge_zendesk, make_event("call_create"), dest)
        assert outcome.kind is OutcomeKind.PERMANENT and outcome.status_code == 302
        assert f"redirect to {location}" in (outcome.error or "")
        assert target.requests == []  # neither the request nor its Authorization went there


# -- the requests adapter --------------------------------------------------------------------------


def test_plain_http_goes_only_to_networks_allow_networks_names(
    listener: Listener, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a name that resolves to a public address: https would be fine, plain http is not
    _fake_dns(monkeypatch, {"public.example": ["93.184.215.14"]})
    with GuardedSession(NetworkPolicy()) as session, pytest.raises(AddressRefused) as refused:
        session.get("http://public.example/")
    assert "plain http" in str(refused.value)


def test_the_session_ignores_proxy_variables_and_rebases_onto_the_endpoint(
    sink: HttpSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://10.0.0.1:3128")
    monkeypatch.setenv("HTTPS_PROXY", "http://10.0.0.1:3128")
    policy = NetworkPolicy.from_cidrs(LOOPBACK)
    with GuardedSession(policy, endpoint=sink.url("/base")) as session:
        response = session.get("https://api.example.com/v1/things?x=1")
    assert response.status_code == 200
    assert response.url == "https://api.example.com/v1/things?x=1"  # as the library asked
    (request,) = sink.requests
    assert (request.path, request.query) == ("/base/v1/things", "x=1")
    assert request.header("X-Forwarded-Host") == "api.example.com"


def test_a_redirect_raises_on_every_method(sink: HttpSink) -> None:
    sink.reply("/r", *[Reply(307, headers={"Location": "http://10.0.0.1/"})] * 2)
    with GuardedSession(NetworkPolicy.from_cidrs(LOOPBACK)) as session:
        for method in ("GET", "POST"):
            with pytest.raises(RedirectRefused, match=r"HTTP 307 redirect to http://10\.0\.0\.1/"):
                session.request(method, sink.url("/r"))
    assert len(sink.requests) == 2


def test_importing_cxbridge_does_not_import_requests() -> None:
    code = "import sys, cxbridge; assert 'requests' not in sys.modules; cxbridge.GuardedSession"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
