"""The SSRF guard: resolve a host once, refuse internal addresses, connect to the vetted address.

:class:`GuardedBackend` is an ``httpcore`` network backend. ``httpcore`` hands its ``connect_tcp``
the host name of the request URL; the backend resolves it (one lookup), checks every answer with
:class:`NetworkPolicy`, and opens the TCP connection to a vetted *address*, never to the name again,
so a DNS answer that changes between check and connect (DNS rebinding) cannot reach anything that
was not checked. TLS still runs over that socket with ``server_hostname`` = the URL's host
(``httpcore`` takes it from the request, not from the socket), so SNI and certificate verification
are for the name, and the ``Host`` header is the URL's.

Odd spellings of addresses (``2130706433``, ``0177.0.0.1``, ``0x7f.1``, ``127.1``) are parsed here
with the classic ``inet_aton`` rules before any lookup, so they are refused on every platform.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import httpcore

__all__ = [
    "AddressRefused",
    "GuardedBackend",
    "NetworkPolicy",
    "ResolutionFailed",
    "parse_inet_aton",
    "refusal",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_CGNAT = ipaddress.IPv4Network("100.64.0.0/10")
_THIS_NETWORK = ipaddress.IPv4Network("0.0.0.0/8")
_METADATA = {
    ipaddress.IPv4Address("169.254.169.254"),
    ipaddress.IPv4Address("100.100.100.200"),
    ipaddress.IPv6Address("fd00:ec2::254"),
}


class AddressRefused(Exception):
    """The host resolves only to addresses the guard refuses. ``str()`` names the rule."""

    def __init__(self, host: str, address: str, rule: str) -> None:
        self.host = host
        self.address = address
        self.rule = rule
        named = address if host in (address, f"[{address}]") else f"{host} -> {address}"
        super().__init__(f"refused: {named} is {rule}; add it to allow_networks to permit")


class ResolutionFailed(Exception):
    """The host name does not resolve (NXDOMAIN, no network, resolver failure)."""

    def __init__(self, host: str, reason: str) -> None:
        self.host = host
        super().__init__(f"DNS lookup failed for {host!r}: {reason}")


def parse_inet_aton(text: str) -> ipaddress.IPv4Address | None:
    """An IPv4 address written the way ``inet_aton`` reads it, or ``None`` if ``text`` is not one.

    Accepts 1 to 4 dot-separated parts, each decimal, octal (leading ``0``) or hex (``0x``); the
    last part fills the remaining bytes: ``127.1``, ``2130706433``, ``0177.0.0.1``, ``0x7f.1``.
    """
    parts = text.rstrip(".").split(".") if text else []
    if not 1 <= len(parts) <= 4:
        return None
    numbers = []
    for part in parts:
        try:
            if part[:2].lower() == "0x":
                numbers.append(int(part[2:] or "0", 16))
            elif len(part) > 1 and part.startswith("0"):
                numbers.append(int(part[1:], 8))
            elif part.isdigit():
                numbers.append(int(part, 10))
            else:
                return None
        except ValueError:
            return None
    *head, last = numbers
    if any(n > 255 for n in head) or last >= 256 ** (4 - len(head)):
        return None
    value = 0
    for n in head:
        value = value << 8 | n
    value = value << 8 * (4 - len(head)) | last
    return ipaddress.IPv4Address(value)


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped ``::ffff:a.b.c.d``, NAT64, 6to4)."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address.sixtofour


def _rule(address: IPAddress) -> str | None:
    """Why ``address`` is refused by default, or ``None`` when it is a public unicast address."""
    if address in _METADATA:
        return "a cloud metadata address"
    if address.is_unspecified:
        return "the unspecified address"
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_multicast:
        return "a multicast address"
    if isinstance(address, ipaddress.IPv4Address):
        if address in _THIS_NETWORK:
            return "in 0.0.0.0/8 ('this network')"
        if address in _CGNAT:
            return "a carrier-grade NAT address (100.64.0.0/10)"
        if address == ipaddress.IPv4Address("255.255.255.255"):
            return "the broadcast address"
        if address.is_reserved:
            return "a reserved address"
        if address.is_private:
            if any(address in ipaddress.IPv4Network(n) for n in _RFC1918):
                return "a private address (RFC 1918)"
            return "a special-purpose address"
    else:
        if address in ipaddress.IPv6Network("fc00::/7"):
            return "a unique-local address (fc00::/7)"
        if address.is_site_local:
            return "a site-local address"
        if address.is_reserved:
            return "a reserved address"
        if address.is_private:
            return "a special-purpose address"
    if not address.is_global:
        return "not a globally routable address"
    return None


_RFC1918 = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")


@dataclass(frozen=True)
class NetworkPolicy:
    """Which addresses a destination may reach: every public one, plus ``allow`` (CIDRs)."""

    allow: tuple[IPNetwork, ...] = ()

    @classmethod
    def from_cidrs(cls, cidrs: Iterable[str | IPNetwork]) -> NetworkPolicy:
        return cls(tuple(ipaddress.ip_network(c, strict=False) for c in cidrs))

    def allowed(self, address: IPAddress) -> bool:
        return any(address.version == net.version and address in net for net in self.allow)

    def check(self, host: str, address: IPAddress) -> None:
        """Raise :class:`AddressRefused` unless ``address`` (of ``host``) may be reached."""
        if self.allowed(address):
            return
        if isinstance(address, ipaddress.IPv6Address):
            inner = _embedded_ipv4(address)
            if inner is not None:
                if self.allowed(inner):
                    return
                rule = _rule(inner)
                if rule is not None:
                    raise AddressRefused(host, _show(address), f"{rule} ({inner} inside IPv6)")
                if address.ipv4_mapped is not None:
                    return  # ::ffff:a.b.c.d is a.b.c.d, and that one is public
        rule = _rule(address)
        if rule is not None:
            raise AddressRefused(host, str(address), rule)


def _show(address: IPAddress) -> str:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return f"::ffff:{address.ipv4_mapped}"
    return str(address)


def refusal(address: str, allow: Sequence[str] = ()) -> str | None:
    """Why ``address`` (a literal IP) would be refused, or ``None``; for docs and tests."""
    try:
        NetworkPolicy.from_cidrs(allow).check(address, ipaddress.ip_address(address))
    except AddressRefused as exc:
        return str(exc)
    return None


def literal_address(host: str) -> IPAddress | None:
    """``host`` as an IP address when it is written as one (any spelling), else ``None``."""
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        return ipaddress.ip_address(bare.split("%", 1)[0])
    except ValueError:
        return parse_inet_aton(bare)


def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address of ``host``, in the resolver's order, without duplicates. One lookup."""
    literal = literal_address(host)
    if literal is not None:
        return [literal]
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError, OSError) as exc:
        raise ResolutionFailed(host, str(exc)) from None
    found: list[IPAddress] = []
    for family, _, _, _, sockaddr in infos:
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if address not in found:
            found.append(address)
    if not found:
        raise ResolutionFailed(host, "no IPv4 or IPv6 address")
    return found


def vetted_addresses(host: str, port: int, policy: NetworkPolicy) -> list[IPAddress]:
    """The addresses of ``host`` that ``policy`` allows; :class:`AddressRefused` if none."""
    addresses = resolve(host, port)
    allowed: list[IPAddress] = []
    first_refusal: AddressRefused | None = None
    for address in addresses:
        try:
            policy.check(host, address)
        except AddressRefused as exc:
            first_refusal = first_refusal or exc
            continue
        allowed.append(address)
    if not allowed:
        assert first_refusal is not None
        raise first_refusal
    return allowed


class GuardedBackend(httpcore.NetworkBackend):
    """A network backend that connects only to vetted addresses (see the module docstring)."""

    def __init__(self, policy: NetworkPolicy, inner: httpcore.NetworkBackend | None = None) -> None:
        self.policy = policy
        self._inner = inner or httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        addresses = vetted_addresses(host, port, self.policy)
        last: Exception | None = None
        for address in addresses:
            target = address
            if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
                target = address.ipv4_mapped  # the same host; works without a dual-stack socket
            try:
                return self._inner.connect_tcp(
                    str(target),
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        assert last is not None
        raise last

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        raise httpcore.UnsupportedProtocol("unix sockets are not allowed for http destinations")

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)
