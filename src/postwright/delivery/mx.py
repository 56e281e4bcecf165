"""Route planning for remote delivery: which hosts, addresses and port to try, in what order.

:func:`plan_route` turns a recipient domain into a :class:`Hosts` route (candidates in try
order) or a :class:`NoRoute` (permanent or temporary, with an enhanced status text). A
decision only: DNS comes through an injected :class:`DnsLookup` (in production the
``postwright.net.dns.Resolver``), nothing here opens a socket or keeps state.

Rules: MX hosts by ascending preference, random order among equal preferences (RFC 5321
section 5.1), each host's addresses in turn, IPv6 before IPv4; no MX records means the
domain itself is the implicit MX (RFC 5321 section 5.1); MX hosts that have no addresses or
whose lookup failed are skipped, as are MX records naming an IP address (RFC 5321 section
5.1 forbids them; RFC 7505 null MX, "0 .", means the domain takes no mail). An address
already listed under an earlier host is not tried twice. A domain written as an address
literal (RFC 5321 section 4.1.3) goes to that address without DNS. With a relay host, the
recipient domain is not looked up: the relay host's own addresses are used, as Postfix does
for ``relayhost = [host]:port``.

Not done here: connecting, TLS policy (DANE, MTA-STS), dropping MX hosts that are ourselves
(RFC 5321 section 5.1, loop avoidance), remembering unreachable hosts between attempts.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
from dataclasses import dataclass
from typing import NamedTuple, Protocol, TypeAlias

from ..dnstypes import DnsTemporaryError, MxAnswer
from ..protocol.reply import Reply

MAX_MX_HOSTS = 16  # MX hosts looked at per domain; protects against absurd MX sets

NULL_MX = "5.1.10 Recipient address has null MX"
DOMAIN_NOT_FOUND = "5.1.2 domain not found"
NO_MAIL_HOSTS = "5.1.2 domain has no MX or address records"
BAD_LITERAL = "5.1.2 unusable address literal"
NO_REACHABLE_MX = "4.4.4 no reachable MX hosts"
NO_RELAYHOST_ADDRESS = "4.4.4 relay host has no address"
DNS_FAILED = "4.4.3 DNS lookup failed"


class DnsLookup(Protocol):
    """What route planning needs from DNS; ``postwright.net.dns.Resolver`` provides it."""

    async def mx(self, domain: str) -> MxAnswer: ...

    async def addresses(self, host: str) -> list[str]: ...

    async def txt(self, name: str) -> list[str]: ...


class Candidate(NamedTuple):
    """One place to try: the host name (for TLS and logs), its address, the port."""

    host: str
    ip: str
    port: int


@dataclass(frozen=True, slots=True)
class Hosts:
    """Candidates in the order they should be tried; never empty."""

    candidates: list[Candidate]


@dataclass(frozen=True, slots=True)
class NoRoute:
    """No host to try. ``reply`` is "<enhanced code> <text>", e.g. "4.4.3 DNS lookup failed"."""

    permanent: bool
    reply: str

    @property
    def enhanced(self) -> str:
        return self.reply.split(" ", 1)[0]

    def to_reply(self) -> Reply:
        """As an SMTP reply: 556 for a null MX (RFC 7504, RFC 7505), else 550 or 451."""
        enhanced, _, text = self.reply.partition(" ")
        if enhanced == "5.1.10":
            code = 556
        else:
            code = 550 if self.permanent else 451
        return Reply(code, enhanced, text)


Route: TypeAlias = Hosts | NoRoute


def _ip_literal(text: str) -> str | None:
    """``text`` as an IP address string if it is one ("[...]" and "IPv6:" allowed)."""
    inner = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    if inner[:5].lower() == "ipv6:":
        inner = inner[5:]
    try:
        return str(ipaddress.ip_address(inner))
    except ValueError:
        return None


async def _host_addresses(host: str, resolver: DnsLookup) -> list[str] | DnsTemporaryError:
    try:
        return await resolver.addresses(host)
    except DnsTemporaryError as exc:
        return exc


def _mx_order(hosts: tuple[tuple[int, str], ...], rng: random.Random) -> list[str]:
    """Host names by preference, shuffled within a preference, each name once."""
    groups: dict[int, list[str]] = {}
    for preference, host in hosts:
        groups.setdefault(preference, []).append(host)
    ordered: list[str] = []
    seen: set[str] = set()
    for preference in sorted(groups):
        group = groups[preference]
        rng.shuffle(group)
        for host in group:
            key = host.lower().rstrip(".")
            if key not in seen:
                seen.add(key)
                ordered.append(host)
    return ordered


async def _direct(host: str, port: int, resolver: DnsLookup, *, empty: NoRoute) -> Route:
    """A single named host: its addresses, or ``empty`` when it has none."""
    try:
        addresses = await resolver.addresses(host)
    except DnsTemporaryError:
        return NoRoute(False, DNS_FAILED)
    if not addresses:
        return empty
    return Hosts([Candidate(host, ip, port) for ip in addresses])


async def plan_route(domain: str, resolver: DnsLookup, *, port: int,
                     relayhost: tuple[str, int] | None = None,
                     rng: random.Random | None = None) -> Route:
    """Where to deliver mail for ``domain``: candidates to try in order, or why none."""
    if relayhost is not None:
        host, relay_port = relayhost
        literal = _ip_literal(host)
        if literal is not None:
            return Hosts([Candidate(literal, literal, relay_port)])
        name = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        return await _direct(name, relay_port, resolver,
                             empty=NoRoute(False, NO_RELAYHOST_ADDRESS))

    domain = domain.strip()
    if domain.startswith("["):
        literal = _ip_literal(domain)
        if literal is None:
            return NoRoute(True, BAD_LITERAL)
        return Hosts([Candidate(literal, literal, port)])
    if not domain.rstrip("."):
        return NoRoute(True, DOMAIN_NOT_FOUND)

    try:
        answer = await resolver.mx(domain)
    except DnsTemporaryError:
        return NoRoute(False, DNS_FAILED)
    if answer.nxdomain:
        return NoRoute(True, DOMAIN_NOT_FOUND)
    if answer.null_mx:
        return NoRoute(True, NULL_MX)
    if not answer.hosts:  # implicit MX: the domain's own addresses
        return await _direct(domain, port, resolver, empty=NoRoute(True, NO_MAIL_HOSTS))

    names = [h for h in _mx_order(answer.hosts, rng or random.Random())
             if _ip_literal(h) is None][:MAX_MX_HOSTS]
    results = await asyncio.gather(*(_host_addresses(h, resolver) for h in names))
    candidates: list[Candidate] = []
    seen: set[str] = set()
    failed = False
    for host, result in zip(names, results, strict=True):
        if isinstance(result, DnsTemporaryError):
            failed = True
            continue
        for ip in result:
            if ip not in seen:
                seen.add(ip)
                candidates.append(Candidate(host, ip, port))
    if candidates:
        return Hosts(candidates)
    return NoRoute(False, DNS_FAILED if failed else NO_REACHABLE_MX)
