"""Where a webhook request may connect: public addresses only, pinned against DNS rebinding.

A tenant names the URL, so the hub must not become a way to reach its own
internal services. :func:`pinned_target` resolves the host once, requires every
address it resolves to to be public (including the IPv4 address that NAT64,
6to4, Teredo and IPv4-compatible IPv6 forms carry inside), and returns URLs
that connect to those addresses by IP. The name stays in the ``Host`` header
and the TLS SNI (httpx's ``sni_hostname`` extension), so certificates are still
checked against it. Connecting by name would resolve a second time, and a DNS
answer with a short TTL could then point the request at an internal service
after the check passed.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[..., list[tuple[Any, ...]]]

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052: the IPv4 address is the low 32 bits
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")  # RFC 8215: local use, never public
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")  # deprecated, low 32 bits are IPv4
MAX_ADDRESSES = 4  # tried in turn when a connection fails; every answer is vetted


@dataclass(frozen=True, slots=True)
class Target:
    """Where one attempt may connect: each URL in turn, with these headers and extensions."""

    urls: tuple[str, ...]
    headers: dict[str, str]
    extensions: dict[str, str]


def unpinned(url: str) -> Target:
    """``url`` as it is (private addresses allowed: labs and tests)."""
    return Target((url,), {}, {})


def pinned_target(url: str, resolve: Resolver = socket.getaddrinfo) -> Target | str:
    """``url`` pinned to the public addresses its host resolves to now, or why it may not be called.

    Args:
        url: The endpoint's URL (http or https).
        resolve: ``socket.getaddrinfo`` or a stand-in.

    Returns:
        A :class:`Target` with one URL per address (tried in the resolver's order, at
        most :data:`MAX_ADDRESSES`), or the reason the URL is refused.
    """
    try:
        parsed = httpx.URL(url)
        host = parsed.raw_host.decode("ascii")  # IDNA-encoded, as DNS and SNI want it
    except (httpx.InvalidURL, UnicodeError) as exc:
        return f"invalid URL: {exc}"
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        infos = resolve(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError, ValueError) as exc:  # bad IDNA labels raise UnicodeError
        return f"cannot resolve {host}: {exc}"
    addresses = list(dict.fromkeys(ipaddress.ip_address(info[4][0]) for info in infos))
    if not addresses:
        return f"cannot resolve {host}: no address"
    for address in addresses:
        if not is_public(address):
            return f"{host} resolves to a non-public address ({address})"
    if _is_ip_literal(host):  # nothing to pin, and SNI never carries an address
        return unpinned(url)
    urls = tuple(str(parsed.copy_with(host=str(a))) for a in addresses[:MAX_ADDRESSES])
    sni = host.rstrip(".")  # the absolute form's dot is not part of a certificate's name
    return Target(urls, {"Host": parsed.netloc.decode("ascii")}, {"sni_hostname": sni})


def is_public(address: IPAddress) -> bool:
    """Whether ``address``, and any IPv4 address an IPv6 form carries, is a public unicast one."""
    if not _plainly_public(address):
        return False
    if isinstance(address, ipaddress.IPv4Address):
        return True
    if address.is_site_local or address in _NAT64_LOCAL:  # fec0::/10 still routes inside some sites
        return False
    return all(_plainly_public(inner) for inner in _embedded_ipv4(address))


def _plainly_public(address: IPAddress) -> bool:
    # IPv6 "reserved" is ::/8 and the like, which holds the NAT64 prefix: the
    # embedded-IPv4 check judges those; 240.0.0.0/4 is IPv4's reserved space.
    reserved = isinstance(address, ipaddress.IPv4Address) and address.is_reserved
    return address.is_global and not (address.is_multicast or reserved)


def _embedded_ipv4(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    found: list[ipaddress.IPv4Address] = []
    if address.ipv4_mapped is not None:
        found.append(address.ipv4_mapped)
    if address.sixtofour is not None:
        found.append(address.sixtofour)
    if address.teredo is not None:  # defence only: 3.11 counts 2001::/32 as not global
        found.extend(address.teredo)  # (server, client)
    if address in _NAT64 or address in _IPV4_COMPATIBLE:
        found.append(ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF))
    return found


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
