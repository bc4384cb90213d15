"""Which Redis addresses a tenant may name (in the Secret of `spec.redis`). Pure.

A tenant's Secret can point the operator anywhere; the operator would connect and
report what it got (a confused deputy: the apiserver, a cloud metadata service, an
internal host). The decision is taken before any connection is opened, on the host
name and every address it resolves to:

1. refused when the host or any address is denied: link-local (cloud metadata
   services live there), unspecified addresses, the metadata host names, the
   cluster's own API endpoints, and what the administrator adds;
2. with an allow-list, refused unless the host matches one of its host patterns or
   every address lies in one of its networks.

The operator's own default Redis (set by the administrator) is not policed.
"""

from __future__ import annotations

import fnmatch
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = ["DEFAULT_DENIED", "AddressPolicy", "Endpoint", "refusal"]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_DENIED: tuple[str, ...] = (
    "169.254.0.0/16",          # IPv4 link-local: cloud metadata (169.254.169.254)
    "fe80::/10",               # IPv6 link-local
    "fd00:ec2::254/128",       # AWS metadata over IPv6
    "0.0.0.0/8",               # "this host" / unspecified
    "::/128",
    "metadata.google.internal",
    "metadata",
)
"""Refused unless the administrator turns the defaults off."""


@dataclass(frozen=True)
class Endpoint:
    """An address and port the operator must never be sent to (the cluster's API)."""

    address: str
    port: int


@dataclass(frozen=True)
class AddressPolicy:
    allow: tuple[str, ...] = ()
    """Networks (CIDR) or host patterns (``*.redis.svc.cluster.local``) tenants may
    name; empty: anything not denied."""
    deny: tuple[str, ...] = ()
    """Networks or host patterns refused in addition to the defaults."""
    deny_defaults: bool = True
    api_endpoints: tuple[Endpoint, ...] = ()
    """The cluster's API (found at start-up): refused on its port. Its address may also
    serve Redis on another port (a single-node cluster, the local dev stack)."""

    @classmethod
    def build(cls, allow: Iterable[str] = (), deny: Iterable[str] = (),
              deny_defaults: bool = True,
              api_endpoints: Iterable[Endpoint] = ()) -> AddressPolicy:
        """A policy whose entries are checked now: a typo is an error at start-up."""
        allow_t, deny_t = tuple(_entry(e) for e in allow), tuple(_entry(e) for e in deny)
        return cls(allow_t, deny_t, deny_defaults, tuple(api_endpoints))


def _entry(text: str) -> str:
    text = text.strip()
    if not text:
        raise ValueError("an empty Redis address policy entry")
    if "/" in text and _network(text) is None:
        raise ValueError(f"{text!r} is not a network (CIDR such as 10.0.0.0/8)")
    return text.lower()


def _network(entry: str) -> IPNetwork | None:
    try:
        net = ipaddress.ip_network(entry, strict=False)
    except ValueError:
        return None
    mapped = net.network_address.ipv4_mapped if isinstance(net, ipaddress.IPv6Network) else None
    if mapped is None:
        return net
    # ::ffff:10.0.0.0/104 is 10.0.0.0/8: addresses are compared unmapped (_ip), so a
    # network left mapped would never match, not even the address it names
    return ipaddress.IPv4Network((mapped, net.prefixlen - 96))


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(text.partition("%")[0])  # fe80::1%eth0: the scope goes
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped  # ::ffff:169.254.169.254 is 169.254.169.254
    return ip


def _matches(entry: str, host: str, ips: Sequence[ipaddress.IPv4Address
                                                   | ipaddress.IPv6Address]) -> str | None:
    """What of (host, ips) `entry` matches, for the message; None: nothing."""
    net = _network(entry)
    if net is not None:
        for ip in ips:
            if ip in net:  # False across IP versions: no IPv6 address is in 0.0.0.0/8
                return f"{ip} is in {net}"
        return None
    if fnmatch.fnmatchcase(host, entry):
        return f"host {host} matches {entry}"
    return None


def refusal(policy: AddressPolicy, host: str, port: int,
            addresses: Sequence[str]) -> str | None:
    """Why the operator may not connect to `host`:`port` (which resolves to
    `addresses`), or None when it may. `host` may itself be an IP literal."""
    host = host.strip().rstrip(".").lower()
    ips = [ip for ip in (_ip(a) for a in [host, *addresses]) if ip is not None]
    denied = (*(DEFAULT_DENIED if policy.deny_defaults else ()), *policy.deny)
    for entry in denied:
        why = _matches(entry, host, ips)
        if why:
            return f"Redis address refused by the operator's address policy: {why}"
    for ep in policy.api_endpoints:
        # an endpoint named by host name has no address (_ip: None), never in `ips`
        if port == ep.port and (host == ep.address.lower() or _ip(ep.address) in ips):
            return (f"Redis address refused by the operator's address policy: "
                    f"{host}:{port} is the cluster's API server")
    if policy.allow:
        # a network entry matches as a pattern only a host written as that address
        # (10.0.0.1), which is inside it anyway
        if any(fnmatch.fnmatchcase(host, e) for e in policy.allow):
            return None
        nets = [n for n in (_network(e) for e in policy.allow) if n is not None]
        if ips and all(any(ip in n for n in nets) for ip in ips):
            return None
        return (f"Redis address refused by the operator's address policy: {host} is not "
                f"in its allow-list ({', '.join(policy.allow)})")
    return None


def needs_resolution(policy: AddressPolicy, host: str) -> bool:
    """Whether deciding on `host` needs the addresses it resolves to: not for an IP
    literal, nor when no rule is a network or an API endpoint."""
    if _ip(host) is not None:
        return False
    entries = (*policy.allow, *policy.deny, *(DEFAULT_DENIED if policy.deny_defaults else ()))
    return bool(policy.api_endpoints) or any(_network(e) is not None for e in entries)
