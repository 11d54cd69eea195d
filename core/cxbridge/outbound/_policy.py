"""Which addresses a destination may reach: the rules, the normalisation of addresses that
carry an IPv4 address inside IPv6, and one DNS lookup whose answers are vetted.

Every address is normalised before either list (the default refusals or ``allow_networks``) is
consulted:

- IPv4-mapped ``::ffff:a.b.c.d`` *is* the IPv4 host (the kernel connects to it over IPv4): it is
  checked as ``a.b.c.d``, against IPv4 rules only, so ``::/0`` never admits it.
- Forms that reach an IPv4 host through a translator or relay (IPv4-compatible ``::a.b.c.d``,
  SIIT ``::ffff:0:a.b.c.d``, NAT64 ``64:ff9b::/96``, 6to4 ``2002::/16``, ISATAP ``…:5efe:a.b.c.d``)
  reach it *from that relay*, off this host: the
  embedded IPv4 must be public by the default rules (an IPv4 rule such as ``127.0.0.0/8`` does
  not apply, since it names networks near this host), and the IPv6 address must pass too.
- Forms whose IPv4 target cannot be read reliably (Teredo ``2001::/32``, local-use NAT64
  ``64:ff9b:1::/48``) are refused outright.

Cloud metadata addresses are refused unless a rule names exactly that address (a ``/32`` or
``/128``); ``0.0.0.0/0`` or ``::/0`` do not admit them.

Odd spellings of IPv4 (``2130706433``, ``0177.0.0.1``, ``0x7f.1``, ``127.1``) are parsed here with
the classic ``inet_aton`` rules before any lookup, so they are refused on every platform.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from cxbridge.errors import AddressRefused, ResolutionFailed

__all__ = [
    "IPAddress",
    "NetworkPolicy",
    "literal_address",
    "parse_inet_aton",
    "resolve",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_CGNAT = ipaddress.IPv4Network("100.64.0.0/10")
_THIS_NETWORK = ipaddress.IPv4Network("0.0.0.0/8")
_RFC1918 = tuple(
    ipaddress.IPv4Network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")
)
_UNIQUE_LOCAL = ipaddress.IPv6Network("fc00::/7")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")
_TEREDO = ipaddress.IPv6Network("2001::/32")
_COMPATIBLE = ipaddress.IPv6Network("::/96")
_SIIT = ipaddress.IPv6Network("::ffff:0:0:0/96")
# Instance metadata and platform endpoints that hand out credentials: AWS (IMDS IPv4 and IPv6,
# ECS task metadata), GCP (IPv6), Azure (IMDS, WireServer), Oracle, Alibaba, Tencent.
METADATA = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",
        "169.254.170.2",
        "fd00:ec2::254",
        "fd20:ce::254",
        "168.63.129.16",
        "192.0.0.192",
        "100.100.100.200",
        "169.254.0.23",
    )
)
_DEFAULT_HINT = "add it to allow_networks to permit"


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


def literal_address(host: str) -> IPAddress | None:
    """``host`` as an IP address when it is written as one (any spelling), else ``None``."""
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        return ipaddress.ip_address(bare.split("%", 1)[0])
    except ValueError:
        return parse_inet_aton(bare)


def _relayed_ipv4(address: ipaddress.IPv6Address) -> tuple[str, ipaddress.IPv4Address] | None:
    """``(form, IPv4)`` for an IPv6 address that reaches an IPv4 host through a relay."""
    if address in _NAT64:
        return "NAT64", ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.sixtofour is not None:
        return "6to4", address.sixtofour
    low = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address in _COMPATIBLE and int(address) > 1:  # not :: or ::1, which are IPv6's own
        return "IPv4-compatible IPv6", low
    if address in _SIIT:
        return "SIIT IPv4-translated IPv6", low
    if (int(address) >> 32) & 0xFDFFFFFF == 0x5EFE:  # interface id 0000:5efe or 0200:5efe
        return "ISATAP", low
    return None


def _rule(address: IPAddress) -> str | None:
    """Why ``address`` is refused by default, or ``None`` when it is a public unicast address."""
    if address in METADATA:
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
            if any(address in net for net in _RFC1918):
                return "a private address (RFC 1918)"
            return "a special-purpose address"
    else:
        if address in _UNIQUE_LOCAL:
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


@dataclass(frozen=True)
class NetworkPolicy:
    """Which addresses a destination may reach: every public one, plus ``allow`` (its
    ``allow_networks``). Cloud metadata addresses need a rule naming exactly them."""

    allow: tuple[IPNetwork, ...] = ()

    @classmethod
    def from_cidrs(cls, cidrs: Iterable[str | IPNetwork]) -> NetworkPolicy:
        return cls(tuple(ipaddress.ip_network(c, strict=False) for c in cidrs))

    def allowed(self, address: IPAddress) -> bool:
        """Whether a rule of ``allow`` covers ``address`` (an IPv4-mapped one as its IPv4)."""
        address = _unmapped(address)
        if address in METADATA:
            return any(net.num_addresses == 1 and address in net for net in self.allow)
        return any(address.version == net.version and address in net for net in self.allow)

    def check(self, host: str, address: IPAddress, *, cleartext: bool = False) -> None:
        """Raise :class:`~cxbridge.AddressRefused` unless ``address`` (of ``host``) may be
        reached. ``cleartext``: the connection carries plain http, allowed only to networks
        ``allow`` names (not to any public address)."""
        shown = _show(address)
        target = _unmapped(address)
        inside = f" ({target} inside IPv6)" if target is not address else ""
        if isinstance(target, ipaddress.IPv6Address):
            if target in _TEREDO or target in _NAT64_LOCAL:
                form = "Teredo" if target in _TEREDO else "local-use NAT64"
                raise AddressRefused(
                    host,
                    shown,
                    f"a {form} address, which tunnels to an IPv4 host it does not name reliably",
                    hint="it cannot be allowed: use the IPv4 address itself",
                )
            relayed = _relayed_ipv4(target)
            if relayed is not None:
                form, ipv4 = relayed
                rule = _rule(ipv4)
                if rule is not None:
                    raise AddressRefused(
                        host,
                        shown,
                        f"{rule} ({ipv4} inside {form}, reached through a relay off this host)",
                        hint="it cannot be allowed: use the IPv4 address itself",
                    )
        if self.allowed(target):
            return
        rule = _rule(target)
        if rule is not None:
            hint = _DEFAULT_HINT
            if target in METADATA:
                exact = f"{target}/{target.max_prefixlen}"
                hint = f"only a rule naming it exactly ({exact}) in allow_networks permits it"
            raise AddressRefused(host, shown, rule + inside, hint=hint)
        if cleartext:
            raise AddressRefused(
                host,
                shown,
                "a public address reached over plain http",
                hint="use https, or add its network to allow_networks to send plain http to it",
            )

    def check_literal(self, host: str) -> IPAddress | None:
        """``host`` as an address when it is written as one (raising
        :class:`~cxbridge.AddressRefused` if it is refused), ``None`` for a name."""
        address = literal_address(host)
        if address is not None:
            self.check(host, address)
        return address

    def endpoint_problem(self, url: str) -> str | None:
        """Why ``url`` cannot be a destination's endpoint override, or ``None``; for option
        validators. https anywhere the guard permits; plain http only to a host inside
        ``allow`` (credentials would cross other networks in clear text)."""
        try:
            parts = urlsplit(url)
            host = parts.hostname or ""
            parts.port  # noqa: B018 - raises ValueError for a port that is not a number
        except ValueError:
            return f"{url!r} is not a valid URL"
        if parts.scheme not in ("http", "https") or not host:
            return f"{url!r} must be an http:// or https:// URL with a host"
        if parts.username is not None or parts.query or parts.fragment:
            return f"{url!r} must not carry credentials, a query or a fragment"
        try:
            address = self.check_literal(host)
        except AddressRefused as exc:
            return str(exc)
        if parts.scheme == "http":
            inside = self.allowed(address) if address is not None else bool(self.allow)
            if not inside:
                return (
                    f"{url!r} uses plain http outside allow_networks; use https, or add the "
                    "host's network to allow_networks"
                )
        return None


def _unmapped(address: IPAddress) -> IPAddress:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _show(address: IPAddress) -> str:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return f"::ffff:{address.ipv4_mapped}"
    return str(address)


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


def vetted_addresses(
    host: str, port: int, policy: NetworkPolicy, *, cleartext: bool = False
) -> list[IPAddress]:
    """The addresses to dial for ``host``, as ``policy`` allows them (an IPv4-mapped answer as
    its IPv4 address); the first :class:`~cxbridge.AddressRefused` if none is allowed."""
    allowed: list[IPAddress] = []
    first_refusal: AddressRefused | None = None
    for address in resolve(host, port):
        try:
            policy.check(host, address, cleartext=cleartext)
        except AddressRefused as exc:
            first_refusal = first_refusal or exc
            continue
        allowed.append(_unmapped(address))
    if not allowed:
        assert first_refusal is not None
        raise first_refusal
    return allowed
