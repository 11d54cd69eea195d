"""The outbound (SSRF) guard, its rules and through the HTTP plugin: internal addresses are
refused before any connection is opened, allowed once allowlisted, and the connection goes to the
address that was vetted."""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import cxbridge_http
from cxbridge import (
    AddressRefused,
    Delivery,
    Destination,
    NetworkPolicy,
    Outcome,
    OutcomeKind,
    parse_event,
)
from cxbridge.outbound._policy import parse_inet_aton
from cxbridge_http import HttpOptions
from tests.http_sink import HttpSink

EVENT = parse_event(
    {
        "id": "evt-1",
        "type": "call_create",
        "occurredAt": "2026-01-01T10:00:00Z",
        "tenant": "acme",
        "call": {"id": "call-1"},
    }
)


@pytest.fixture(autouse=True)
def _fresh_plugin_state() -> Iterator[None]:
    yield
    cxbridge_http.shutdown()


class ConnectionCounter:
    """Counts (and records the targets of) every outgoing TCP connection attempt of this process."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.targets: list[tuple[Any, ...]] = []
        real = socket.create_connection

        def counting(address: tuple[Any, ...], *args: Any, **kwargs: Any) -> socket.socket:
            self.targets.append(address)
            return real(address, *args, **kwargs)

        monkeypatch.setattr(socket, "create_connection", counting)


@pytest.fixture
def connections(monkeypatch: pytest.MonkeyPatch) -> ConnectionCounter:
    return ConnectionCounter(monkeypatch)


def send(url: str, allow: list[str] | None = None, **options: Any) -> Outcome:
    dest = Destination(
        tenant="acme",
        name="hook",
        type="http",
        events=frozenset({"call_create"}),
        options=HttpOptions.model_validate({"url": url, "allow_networks": allow or [], **options}),
    )
    payload = cxbridge_http.transform(event=EVENT, destination=dest)
    assert payload is not None
    delivery = Delivery("dlv-1", "acme", "hook", "evt-1", "call_create", 1, payload)
    outcome = cxbridge_http.deliver(delivery=delivery, destination=dest)
    assert outcome is not None
    return outcome


# -- the rules -------------------------------------------------------------------------------------


def refusal(address: str, allow: list[str] | None = None) -> str | None:
    """Why the guard refuses ``address`` (a literal IP) under ``allow``, or ``None``."""
    try:
        NetworkPolicy.from_cidrs(allow or []).check(address, ipaddress.ip_address(address))
    except AddressRefused as exc:
        return str(exc)
    return None


@pytest.mark.parametrize(
    ("address", "rule"),
    [
        ("127.0.0.1", "loopback"),
        ("127.255.0.9", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private address (RFC 1918)"),
        ("172.16.0.1", "private address (RFC 1918)"),
        ("192.168.1.1", "private address (RFC 1918)"),
        ("169.254.169.254", "cloud metadata"),
        ("169.254.1.1", "link-local"),
        ("fe80::1", "link-local"),
        ("100.64.0.1", "carrier-grade NAT"),
        ("100.127.255.254", "carrier-grade NAT"),
        ("fc00::1", "unique-local"),
        ("fd12:3456::1", "unique-local"),
        ("::ffff:127.0.0.1", "loopback address (127.0.0.1 inside IPv6)"),
        ("::ffff:10.0.0.1", "RFC 1918"),
        ("::ffff:169.254.169.254", "metadata"),
        ("64:ff9b::a9fe:a9fe", "metadata"),
        ("::127.0.0.1", "loopback"),
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo"),
        ("64:ff9b:1::1", "local-use NAT64"),
        ("168.63.129.16", "metadata"),
        ("2002:7f00:1::1", "loopback"),
        ("0.0.0.0", "unspecified"),
        ("0.1.2.3", "0.0.0.0/8"),
        ("::", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "broadcast"),
        ("192.0.2.1", "special-purpose"),
        ("198.18.0.1", "special-purpose"),
        ("2001:db8::1", "special-purpose"),
    ],
)
def test_internal_addresses_are_refused_with_the_rule_named(address: str, rule: str) -> None:
    reason = refusal(address)
    assert reason is not None and rule in reason, reason
    assert "allow_networks" in reason or "cannot be allowed" in reason


@pytest.mark.parametrize(
    "address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"]
)
def test_public_addresses_pass(address: str) -> None:
    assert refusal(address) is None


def test_allow_networks_permits_exactly_what_it_names() -> None:
    assert refusal("10.1.2.3", ["10.0.0.0/8"]) is None
    assert refusal("10.1.2.3", ["10.2.0.0/16"]) is not None
    assert refusal("::ffff:127.0.0.1", ["127.0.0.0/8"]) is None  # the mapped IPv4 is checked
    assert refusal("::1", ["127.0.0.0/8"]) is not None
    assert refusal("fd00::5", ["fd00::/8"]) is None


# -- addresses that carry IPv4 inside IPv6 are checked as the IPv4 host they reach ----------------

EMBEDDED_INTERNAL = [
    "::ffff:169.254.169.254",  # IPv4-mapped
    "::ffff:127.0.0.1",
    "::ffff:10.0.0.1",
    "::169.254.169.254",  # IPv4-compatible (deprecated)
    "::127.0.0.1",
    "64:ff9b::a9fe:a9fe",  # NAT64 well-known prefix
    "64:ff9b::7f00:1",
    "64:ff9b::a00:1",
    "64:ff9b:1::a9fe:a9fe",  # local-use NAT64: refused outright
    "64:ff9b:1:ffff::1",
    "2002:a9fe:a9fe::1",  # 6to4
    "2002:7f00:1::1",
    "2002:c0a8:101::1",
    "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo: refused outright
    "::ffff:0:7f00:1",  # SIIT IPv4-translated
    "::ffff:0:a9fe:a9fe",
    "2600::5efe:7f00:1",  # ISATAP
    "2600::200:5efe:a9fe:a9fe",
]


@pytest.mark.parametrize("address", EMBEDDED_INTERNAL)
def test_every_embedded_ipv4_spelling_of_an_internal_host_is_refused_under_an_ipv6_catch_all(
    address: str,
) -> None:
    assert refusal(address, ["::/0"]) is not None
    assert refusal(address, ["::/0", "2000::/3", "64:ff9b::/32"]) is not None


@pytest.mark.parametrize(
    "address",
    ["64:ff9b::7f00:1", "::127.0.0.1", "2002:7f00:1::1", "64:ff9b::a9fe:a9fe", "::ffff:0:7f00:1"],
)
def test_a_relayed_form_of_loopback_is_not_loopback_under_an_ipv4_allow_rule(address: str) -> None:
    # NAT64 and 6to4 reach 127.0.0.1 of a relay, off this host: 127.0.0.0/8 does not admit them
    reason = refusal(address, ["127.0.0.0/8", "169.254.0.0/16"])
    assert reason is not None and "relay" in reason and "cannot be allowed" in reason


def test_a_mapped_address_is_its_ipv4_host_and_only_ipv4_rules_apply() -> None:
    assert refusal("::ffff:127.0.0.1", ["::/0"]) is not None
    assert refusal("::ffff:127.0.0.1", ["127.0.0.0/8"]) is None
    assert refusal("::ffff:8.8.8.8", ["::/0"]) is None
    # NAT64 of a public host, once its IPv6 prefix is allowed (it is reserved space by default)
    assert refusal("64:ff9b::808:808", ["64:ff9b::/96"]) is None


@pytest.mark.parametrize(
    "address",
    ["169.254.169.254", "::ffff:169.254.169.254", "fd00:ec2::254", "100.100.100.200",
     "168.63.129.16", "169.254.170.2"],
)  # fmt: skip
def test_metadata_needs_a_rule_naming_it_exactly(address: str) -> None:
    target = ipaddress.ip_address(address)
    if isinstance(target, ipaddress.IPv6Address) and target.ipv4_mapped is not None:
        target = target.ipv4_mapped
    catch_all = ["0.0.0.0/0", "::/0", "169.254.0.0/16", "100.64.0.0/10", "fd00::/8"]
    reason = refusal(address, catch_all)
    assert reason is not None and "metadata" in reason
    assert f"{target}/{target.max_prefixlen}" in reason
    assert refusal(address, [f"{target}/{target.max_prefixlen}"]) is None


def test_the_metadata_address_is_refused_through_the_plugin_under_a_catch_all(
    connections: ConnectionCounter,
) -> None:
    for url in ("http://169.254.169.254/latest/", "http://[::ffff:169.254.169.254]/"):
        outcome = send(url, allow=["0.0.0.0/0", "::/0"])
        assert outcome.kind is OutcomeKind.PERMANENT and "metadata" in (outcome.error or "")
    assert connections.targets == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("10.1", "10.0.0.1"),
        ("0251.0376.0251.0376", "169.254.169.254"),
        ("127.0.0.1.", "127.0.0.1"),
        ("example.com", None),
        ("1.2.3.4.5", None),
        ("256.1.1.1", None),
        ("08.0.0.1", None),
        ("4294967296", None),
        ("", None),
    ],
)
def test_inet_aton_spellings(text: str, expected: str | None) -> None:
    parsed = parse_inet_aton(text)
    assert (str(parsed) if parsed else None) == expected


# -- through the plugin: refused without a connection, allowed once allowlisted --------------------

SPELLINGS = [
    ("http://127.0.0.1:{port}/", "loopback"),
    ("http://localhost:{port}/", "loopback"),
    ("http://2130706433:{port}/", "loopback"),
    ("http://0177.0.0.1:{port}/", "loopback"),
    ("http://0x7f.1:{port}/", "loopback"),
    ("http://0x7f000001:{port}/", "loopback"),
    ("http://127.1:{port}/", "loopback"),
    ("http://[::ffff:127.0.0.1]:{port}/", "loopback"),
    ("http://[::1]:{port}/", "loopback"),
    ("http://0.0.0.0:{port}/", "unspecified"),
    ("http://[::]:{port}/", "unspecified"),
    ("http://169.254.169.254/latest/meta-data/", "metadata"),
    ("http://0251.0376.0251.0376/", "metadata"),
    ("http://10.0.0.1/", "RFC 1918"),
    ("http://192.168.0.1/", "RFC 1918"),
    ("http://100.64.0.1/", "carrier-grade NAT"),
    ("http://[fd00::1]/", "unique-local"),
    ("http://[fe80::1]/", "link-local"),
    ("https://127.0.0.1:{port}/", "loopback"),
]


@pytest.mark.parametrize(("template", "rule"), SPELLINGS)
def test_each_spelling_is_refused_without_opening_a_connection(
    sink: HttpSink, connections: ConnectionCounter, template: str, rule: str
) -> None:
    outcome = send(template.format(port=sink.port))
    assert outcome.kind is OutcomeKind.PERMANENT
    assert outcome.error is not None and outcome.error.startswith("refused: ")
    assert rule in outcome.error and "allow_networks" in outcome.error
    assert connections.targets == []
    assert sink.connections == 0 and sink.requests == []


@pytest.mark.parametrize(
    "template",
    [
        "http://127.0.0.1:{port}/in",
        "http://localhost:{port}/in",
        "http://2130706433:{port}/in",
        "http://0x7f.1:{port}/in",
        "http://127.1:{port}/in",
        "http://[::ffff:127.0.0.1]:{port}/in",
    ],
)
def test_allowlisted_spellings_are_delivered_to_the_vetted_address(
    sink: HttpSink, connections: ConnectionCounter, template: str
) -> None:
    url = template.format(port=sink.port)
    outcome = send(url, allow=["127.0.0.0/8"])
    assert outcome.ok, outcome.error
    assert connections.targets == [("127.0.0.1", sink.port)]  # an address, never the name
    (request,) = sink.requests
    assert request.path == "/in"
    host = url.split("//", 1)[1].split("/", 1)[0]
    assert request.header("Host") == host  # the Host header keeps the URL's spelling


def test_a_spelling_httpx_cannot_send_is_refused_by_rule_or_named_when_allowed(
    sink: HttpSink, connections: ConnectionCounter
) -> None:
    # httpx rejects dotted parts with leading zeros; the outcome still says what the address is
    url = f"http://0177.0.0.1:{sink.port}/"
    allowed = send(url, allow=["127.0.0.0/8"])
    assert allowed.kind is OutcomeKind.PERMANENT
    assert "write the address as 127.0.0.1" in (allowed.error or "")
    assert connections.targets == [] and sink.connections == 0


def test_ipv6_loopback_allowlisted() -> None:
    try:
        server = HttpSink("::1")
    except OSError:
        pytest.skip("IPv6 loopback is not available here")
    with server:
        assert send(server.url("/v6"), allow=["::1/128"]).ok
        assert server.requests[0].path == "/v6"
        assert send(server.url("/v6"), allow=["127.0.0.0/8"]).kind is OutcomeKind.PERMANENT


def _fake_dns(monkeypatch: pytest.MonkeyPatch, answers: dict[str, list[str]]) -> list[str]:
    """Make ``socket.getaddrinfo`` answer ``answers`` for these names; returns the names asked."""
    asked: list[str] = []
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        if name in answers:
            asked.append(name)
            result = []
            for address in answers[name]:
                family = socket.AF_INET6 if ":" in address else socket.AF_INET
                sockaddr: tuple[Any, ...] = (
                    (address, port, 0, 0) if family == socket.AF_INET6 else (address, port)
                )
                result.append((family, socket.SOCK_STREAM, 6, "", sockaddr))
            return result
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return asked


def test_a_name_resolving_to_an_internal_address_is_refused_after_one_lookup(
    sink: HttpSink, connections: ConnectionCounter, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked = _fake_dns(monkeypatch, {"rebind.example": ["127.0.0.1"]})
    outcome = send(f"http://rebind.example:{sink.port}/")
    assert outcome.kind is OutcomeKind.PERMANENT
    assert outcome.error == (
        "refused: rebind.example -> 127.0.0.1 is a loopback address; "
        "add it to allow_networks to permit"
    )
    assert asked == ["rebind.example"] and connections.targets == []


def test_the_connection_uses_the_vetted_answer_and_never_resolves_again(
    sink: HttpSink, connections: ConnectionCounter, monkeypatch: pytest.MonkeyPatch
) -> None:
    # one answer holds a refused address and an allowed one: only the allowed one is dialled
    asked = _fake_dns(monkeypatch, {"hooks.example": ["10.9.9.9", "127.0.0.1"]})
    outcome = send(f"http://hooks.example:{sink.port}/x", allow=["127.0.0.0/8"])
    assert outcome.ok
    assert asked == ["hooks.example"]
    assert connections.targets == [("127.0.0.1", sink.port)]
    assert sink.requests[0].header("Host") == f"hooks.example:{sink.port}"


def test_proxies_from_the_environment_are_ignored(
    sink: HttpSink, connections: ConnectionCounter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://10.0.0.1:3128")
    monkeypatch.setenv("ALL_PROXY", "http://10.0.0.1:3128")
    assert send(sink.url("/p"), allow=["127.0.0.0/8"]).ok
    assert connections.targets == [("127.0.0.1", sink.port)]


# -- TLS: SNI and certificate checks stay on the name while the socket goes to the vetted address --


def _certificates(tmp: Path) -> dict[str, Path]:
    """A CA, a server certificate for hooks.example and a client certificate, as PEM files."""
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)

    def name(cn: str) -> Any:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def issue(cn: str, issuer_key: Any, issuer: Any, key: Any, *, ca: bool, san: str | None) -> Any:
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(cn))
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if ca:
            builder = builder.add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            builder = builder.add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
        else:
            builder = builder.add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                critical=False,
            )
        if san:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName(san)]), critical=False
            )
        return builder.sign(issuer_key, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = issue("test CA", ca_key, name("test CA"), ca_key, ca=True, san=None)
    files: dict[str, Path] = {}
    for label, cn in (("server", "hooks.example"), ("client", "cxbridge client")):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = issue(cn, ca_key, ca.subject, key, ca=False, san=cn if label == "server" else None)
        files[f"{label}_cert"] = tmp / f"{label}.pem"
        files[f"{label}_cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        files[f"{label}_key"] = tmp / f"{label}.key"
        files[f"{label}_key"].write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    files["ca"] = tmp / "ca.pem"
    files["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    return files


def test_tls_keeps_sni_and_certificate_checks_on_the_name_with_mtls(
    tmp_path: Path, connections: ConnectionCounter, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = _certificates(tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(files["ca"]))
    server_tls.load_cert_chain(files["server_cert"], files["server_key"])
    server_tls.verify_mode = ssl.CERT_REQUIRED  # mutual TLS: the client must present its cert
    mtls = {
        "type": "mtls",
        "cert_file": str(files["client_cert"]),
        "key_file": str(files["client_key"]),
        "ca_file": str(files["ca"]),
    }
    with HttpSink(tls=server_tls) as server:
        _fake_dns(monkeypatch, {"hooks.example": ["127.0.0.1"], "other.example": ["127.0.0.1"]})
        outcome = send(server.url("/tls", host="hooks.example"), allow=["127.0.0.0/8"], auth=mtls)
        assert outcome.ok, outcome.error
        assert server.sni == ["hooks.example"]
        assert connections.targets == [("127.0.0.1", server.port)]
        assert server.requests[0].header("Host") == f"hooks.example:{server.port}"

        # the same address under a name the certificate does not cover: verification fails
        cxbridge_http.shutdown()
        bad = send(server.url("/tls", host="other.example"), allow=["127.0.0.0/8"], auth=mtls)
        assert bad.kind is OutcomeKind.RETRY and "TLS" in (bad.error or "")
        assert len(server.requests) == 1


def test_policy_object_is_immutable_and_parses_cidrs() -> None:
    policy = NetworkPolicy.from_cidrs(["10.0.0.0/8", "fd00::/8"])
    assert policy.allowed(ipaddress.ip_address("10.2.3.4"))
    assert not policy.allowed(ipaddress.ip_address("11.2.3.4"))
