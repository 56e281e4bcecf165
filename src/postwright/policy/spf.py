"""Sender Policy Framework: may this IP address send mail for this domain? (RFC 7208)

:func:`check_host` is RFC 7208's function of that name, evaluated by our own asynchronous
code against an injected resolver (:class:`SpfResolver`: TXT, A, AAAA, MX and PTR lookups;
``postwright.net.dns.Resolver`` fits as it is). :func:`check` runs it for the two identities a
receiver checks: MAIL FROM (``postmaster@<helo>`` for the null sender) and HELO.

Why not pyspf: it is synchronous and does its own DNS, reached only by replacing its
module-level ``DNSLookup`` function (a global shared by every caller), so it would need a
thread per check and a bridge back to our resolver; its last release dates from 2020. The
SPF algorithm is small and fully specified, and the RFC 7208 test suite checks ours
(``tests/policy/test_spf_suite.py``).

It covers the whole record language: every mechanism (``ptr`` included, since receivers must
still evaluate it), ``redirect`` and ``exp``, macros with transformers and URL escaping, the
limits of section 4.6.4 (10 DNS-querying terms, 2 void lookups, 10 names per ``mx``/``ptr``),
DNS failures as ``temperror``, a 20-second budget per check. It makes no decision on the
result (the session does), has no local policy, best-guess or trusted-forwarder lists, does
not look up the obsolete SPF (type 99) record, and does not cache (the resolver may).

Covers RFC 7208 sections 2.3 and 2.4 (identities), 4 (check_host: 4.3 initial processing,
4.4 record lookup, 4.5 selection, 4.6 parsing and limits, 4.7 default result), 5 (mechanisms),
6 (modifiers), 7 (macros), 8 (results).
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import time
from collections.abc import Awaitable
from dataclasses import dataclass, replace
from typing import Literal, Protocol, TypeVar
from urllib.parse import quote

from ..dnstypes import DnsTemporaryError, MxAnswer

__all__ = ["Result", "SpfCheck", "SpfResolver", "SpfResult", "check", "check_host"]

Result = Literal["pass", "fail", "softfail", "neutral", "none", "temperror", "permerror"]
Scope = Literal["mfrom", "helo"]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
T = TypeVar("T")

MAX_DNS_TERMS = 10  # include, a, mx, ptr, exists, redirect (section 4.6.4)
MAX_VOID_LOOKUPS = 2
MAX_NAMES = 10  # MX hosts per "mx", PTR names per "ptr" or %{p}
MAX_NAME_LENGTH = 253
DEFAULT_TIMEOUT = 20.0  # section 4.6.4: at least 20 seconds for one check_host()

_QUALIFIERS: dict[str, Result] = {"+": "pass", "-": "fail", "~": "softfail", "?": "neutral"}
_MECHANISMS = frozenset({"all", "include", "a", "mx", "ptr", "ip4", "ip6", "exists"})
_TERM = re.compile(r"([+\-~?]?)([a-z][a-z0-9_.\-]*)(.*)", re.I | re.S)
_MODIFIER = re.compile(r"([a-z][a-z0-9_.\-]*)=(.*)", re.I | re.S)
_MACRO = re.compile(r"%\{([a-z])([0-9]*)(r?)([.\-+,/_=]*)\}", re.I)
_DUAL_CIDR = re.compile(r"(?:/([0-9]+))?(?://([0-9]+))?\Z")
_TOPLABEL = re.compile(r"[a-z0-9]*[a-z][a-z0-9]*|[a-z0-9]+-[a-z0-9\-]*[a-z0-9]", re.I)
_SPF_LETTERS = "slodipvh"
_EXP_LETTERS = _SPF_LETTERS + "crt"


@dataclass(frozen=True, slots=True)
class SpfResult:
    """The outcome of one check_host().

    ``domain`` is the domain checked (the MAIL FROM or HELO domain, as given), ``scope`` which
    identity it was. ``explanation`` is the publisher's ``exp=`` text, only for ``fail`` and
    only when the record has one ("" otherwise). ``reason`` says, for us and our logs, why an
    error result came about; never show it to the peer as the publisher's words.
    """

    result: Result
    explanation: str = ""
    domain: str = ""
    scope: Scope = "mfrom"
    reason: str = ""


@dataclass(frozen=True, slots=True)
class SpfCheck:
    """The results for both identities of one transaction (RFC 7208 section 2.3 and 2.4)."""

    mfrom: SpfResult
    helo: SpfResult


class SpfResolver(Protocol):
    """The lookups SPF needs; each raises DnsTemporaryError when the DNS failed for now.

    Names are taken as fully qualified. "No such name" and "no records" both give []
    (RFC 7208 treats them alike); ``mx`` answers as ``net.dns.Resolver.mx`` does.
    """

    async def txt(self, name: str) -> list[str]: ...
    async def a(self, name: str) -> list[str]: ...
    async def aaaa(self, name: str) -> list[str]: ...
    async def mx(self, domain: str) -> MxAnswer: ...
    async def ptr(self, address: str) -> list[str]: ...


class _PermError(Exception):
    """The record is broken or breaks a limit: the result is permerror."""


class _TempError(Exception):
    """A lookup failed for now: the result is temperror."""


# -- the record language (section 4.6, 5, 6, 7.1) -------------------------------------------

@dataclass(frozen=True, slots=True)
class _Macro:
    letter: str  # lower case
    digits: int  # 0: every part
    reverse: bool
    delimiters: str
    escape: bool  # an upper-case letter: URL-escape the expansion


_Parts = tuple[str | _Macro, ...]


@dataclass(frozen=True, slots=True)
class _Term:
    qualifier: str
    kind: str
    target: _Parts | None = None  # domain-spec, None for "this domain"
    network: Network | None = None  # ip4 and ip6
    cidr4: int = 32
    cidr6: int = 128


@dataclass(frozen=True, slots=True)
class _Record:
    terms: tuple[_Term, ...]
    redirect: _Parts | None
    exp: _Parts | None


def _macro_string(text: str, letters: str, *, spaces: bool = False) -> _Parts:
    """Parse a macro-string (or an explain-string when ``spaces``) into literals and macros."""
    parts: list[str | _Macro] = []
    literal: list[str] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c != "%":
            if not ("!" <= c <= "~" or (spaces and c == " ")):
                raise _PermError(f"character {c!r} not allowed in {text!r}")
            literal.append(c)
            i += 1
            continue
        follower = text[i + 1:i + 2]
        if follower in ("%", "_", "-"):
            literal.append({"%": "%", "_": " ", "-": "%20"}[follower])
            i += 2
            continue
        found = _MACRO.match(text, i) if follower == "{" else None
        if found is None:
            raise _PermError(f"bad macro in {text!r}")
        letter, digits, reverse, delimiters = found.groups()
        if letter.lower() not in letters:
            raise _PermError(f"macro letter {letter!r} not allowed here")
        if digits and int(digits) == 0:
            raise _PermError("a macro may not keep zero parts")
        if literal:
            parts.append("".join(literal))
            literal = []
        parts.append(_Macro(letter.lower(), int(digits or 0), bool(reverse), delimiters,
                            letter.isupper()))
        i = found.end()
    if literal:
        parts.append("".join(literal))
    return tuple(parts)


def _domain_spec(text: str) -> _Parts:
    """A domain-spec: a macro-string ending in a macro or in "." and a top label."""
    parts = _macro_string(text, _SPF_LETTERS)
    if parts and isinstance(parts[-1], _Macro):
        return parts
    tail = parts[-1] if parts else ""
    assert isinstance(tail, str)
    tail = tail[:-1] if tail.endswith(".") else tail
    dot = tail.rfind(".")
    if dot < 0 or not _TOPLABEL.fullmatch(tail[dot + 1:]):
        raise _PermError(f"{text!r} does not end in a valid top label")
    return parts


def _cidr(text: str | None, limit: int) -> int:
    if text is None:
        return limit
    if not text.isdigit() or (len(text) > 1 and text[0] == "0") or int(text) > limit:
        raise _PermError(f"bad prefix length /{text}")
    return int(text)


def _ip_network(kind: str, text: str) -> tuple[Network, int, int]:
    address, slash, length = text.partition("/")
    try:
        if kind == "ip4":
            net4 = ipaddress.IPv4Network((ipaddress.IPv4Address(address),
                                          _cidr(length if slash else None, 32)), strict=False)
            return net4, net4.prefixlen, 128
        if "%" in address:  # a zone index is no part of an SPF network
            raise ValueError(address)
        net6 = ipaddress.IPv6Network((ipaddress.IPv6Address(address),
                                      _cidr(length if slash else None, 128)), strict=False)
        return net6, 32, net6.prefixlen
    except ValueError as exc:
        raise _PermError(f"bad {kind} network {text!r}") from exc


def _mechanism(qualifier: str, kind: str, rest: str) -> _Term:
    if kind == "all":
        if rest:
            raise _PermError(f"'all' takes no argument: {rest!r}")
        return _Term(qualifier, kind)
    if kind in ("ip4", "ip6"):
        if not rest.startswith(":"):
            raise _PermError(f"{kind} needs a network")
        network, cidr4, cidr6 = _ip_network(kind, rest[1:])
        return _Term(qualifier, kind, network=network, cidr4=cidr4, cidr6=cidr6)
    cidr4, cidr6 = 32, 128
    if kind in ("a", "mx"):
        found = _DUAL_CIDR.search(rest)
        assert found is not None  # both groups are optional
        cidr4, cidr6 = _cidr(found.group(1), 32), _cidr(found.group(2), 128)
        rest = rest[:found.start()]
    if not rest:
        if kind in ("include", "exists"):
            raise _PermError(f"{kind} needs a domain")
        return _Term(qualifier, kind, cidr4=cidr4, cidr6=cidr6)
    if not rest.startswith(":"):
        raise _PermError(f"bad {kind} mechanism")
    return _Term(qualifier, kind, _domain_spec(rest[1:]), cidr4=cidr4, cidr6=cidr6)


def _parse_record(text: str) -> _Record:
    """Parse a whole record; any syntax error anywhere is a permerror (section 4.6)."""
    if not text.isascii():
        raise _PermError("record is not ASCII")
    terms: list[_Term] = []
    modifiers: dict[str, _Parts] = {}
    for word in text.split(" ")[1:]:
        if not word:
            continue
        modifier = _MODIFIER.fullmatch(word)
        if modifier is not None:
            name, value = modifier.group(1).lower(), modifier.group(2)
            if name in ("redirect", "exp"):
                if name in modifiers:
                    raise _PermError(f"{name}= given twice")
                modifiers[name] = _domain_spec(value)
            else:
                _macro_string(value, _EXP_LETTERS)  # unknown modifiers: syntax only
            continue
        term = _TERM.fullmatch(word)
        if term is None or term.group(2).lower() not in _MECHANISMS:
            raise _PermError(f"unknown term {word!r}")
        terms.append(_mechanism(term.group(1) or "+", term.group(2).lower(), term.group(3)))
    return _Record(tuple(terms), modifiers.get("redirect"), modifiers.get("exp"))


def _is_spf(text: str) -> bool:
    return text[:6].lower() == "v=spf1" and text[6:7] in ("", " ")


def _usable_domain(domain: str) -> bool:
    """Section 4.3: a multi-label name with labels of 1 to 63 octets, not an address."""
    name = domain[:-1] if domain.endswith(".") else domain
    labels = name.split(".")
    return (0 < len(name) <= MAX_NAME_LENGTH and len(labels) > 1
            and all(0 < len(label) <= 63 for label in labels)
            and not labels[-1].isdigit() and not any(c in name for c in "[]: \t"))


def _query_name(name: str) -> str:
    """Drop a trailing dot, then leading labels until the name fits (section 7.3)."""
    name = name[:-1] if name.endswith(".") else name
    while len(name) > MAX_NAME_LENGTH and "." in name:
        name = name.split(".", 1)[1]
    return name


def _subdomain_or_same(name: str, domain: str) -> bool:
    name, domain = name.rstrip(".").lower(), domain.rstrip(".").lower()
    return name == domain or name.endswith("." + domain)


def _ip(ip: str | IPAddress) -> IPAddress:
    address = ipaddress.ip_address(ip.strip("[]") if isinstance(ip, str) else ip)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


# -- evaluation (section 4 and 5) -----------------------------------------------------------

class _Evaluation:
    """One check_host() call with its shared counters (limits span include and redirect)."""

    def __init__(self, ip: IPAddress, sender: str, helo: str, dns: SpfResolver,
                 receiver: str, now: float) -> None:
        self.ip = ip
        local, _, self.sender_domain = sender.rpartition("@")
        self.local = local or "postmaster"
        self.sender = f"{self.local}@{self.sender_domain}"
        self.helo = helo
        self.dns = dns
        self.receiver = receiver
        self.now = now
        self.terms = 0
        self.voids = 0
        self._validated: list[str] | None = None

    async def check(self, domain: str, *, want_exp: bool) -> tuple[Result, str]:
        if not _usable_domain(domain):
            return "none", ""
        records = [t for t in await self._lookup(self.dns.txt(domain)) if _is_spf(t)]
        if not records:
            return "none", ""
        if len(records) > 1:
            raise _PermError(f"{domain} publishes several SPF records")
        record = _parse_record(records[0])
        for term in record.terms:
            if await self._matches(term, domain):
                result = _QUALIFIERS[term.qualifier]
                explanation = ""
                if result == "fail" and want_exp and record.exp is not None:
                    explanation = await self._explain(record.exp, domain)
                return result, explanation
        if record.redirect is not None and all(t.kind != "all" for t in record.terms):
            self._count_term()
            target = await self._expand(record.redirect, domain)
            result, explanation = await self.check(_query_name(target), want_exp=want_exp)
            if result == "none":
                raise _PermError(f"redirect to {target}, which has no SPF record")
            return result, explanation
        return "neutral", ""

    @staticmethod
    async def _lookup(query: Awaitable[T]) -> T:
        try:
            return await query
        except DnsTemporaryError as exc:
            raise _TempError(str(exc)) from exc

    def _count_term(self) -> None:
        self.terms += 1
        if self.terms > MAX_DNS_TERMS:
            raise _PermError(f"more than {MAX_DNS_TERMS} DNS-querying terms")

    def _void(self, answer: object) -> None:
        if not answer:
            self.voids += 1
            if self.voids > MAX_VOID_LOOKUPS:
                raise _PermError(f"more than {MAX_VOID_LOOKUPS} void lookups")

    async def _addresses(self, name: str) -> list[IPAddress]:
        lookup = self.dns.a if self.ip.version == 4 else self.dns.aaaa
        return [ipaddress.ip_address(a) for a in await self._lookup(lookup(name))]

    def _within(self, addresses: list[IPAddress], term: _Term) -> bool:
        length = term.cidr4 if self.ip.version == 4 else term.cidr6
        network = ipaddress.ip_network((self.ip, length), strict=False)
        return any(address in network for address in addresses)

    async def _matches(self, term: _Term, domain: str) -> bool:
        kind = term.kind
        if kind == "all":
            return True
        if kind in ("ip4", "ip6"):
            assert term.network is not None
            return self.ip.version == term.network.version and self.ip in term.network
        self._count_term()
        target = domain if term.target is None else _query_name(
            await self._expand(term.target, domain))
        if kind == "include":
            result, _ = await self.check(target, want_exp=False)
            if result == "none":
                raise _PermError(f"include of {target}, which has no SPF record")
            return result == "pass"
        if kind == "a":
            addresses = await self._addresses(target)
            self._void(addresses)
            return self._within(addresses, term)
        if kind == "mx":
            answer = await self._lookup(self.dns.mx(target))
            self._void(answer.hosts or answer.null_mx)
            if len(answer.hosts) > MAX_NAMES:
                raise _PermError(f"{target} has more than {MAX_NAMES} MX records")
            for _, host in answer.hosts:
                if self._within(await self._addresses(host), term):
                    return True
            return False
        if kind == "exists":
            found = await self._lookup(self.dns.a(target))
            self._void(found)
            return bool(found)
        assert kind == "ptr"
        names = await self._validated_names(count_void=True)
        return any(_subdomain_or_same(name, target) for name in names)

    async def _validated_names(self, *, count_void: bool = False) -> list[str]:
        """The PTR names of the client that resolve back to it (section 5.5)."""
        if self._validated is None:
            try:
                names = await self.dns.ptr(str(self.ip))
            except DnsTemporaryError:
                names = []
            else:
                if count_void:
                    self._void(names)
            validated: list[str] = []
            for name in names[:MAX_NAMES]:
                try:
                    if self.ip in await self._addresses(name):
                        validated.append(name.rstrip("."))
                except _TempError:
                    continue
            self._validated = validated
        return self._validated

    async def _explain(self, exp: _Parts, domain: str) -> str:
        """The expanded exp= text, or "" when anything about it is wrong (section 6.2)."""
        try:
            texts = await self.dns.txt(_query_name(await self._expand(exp, domain)))
            if len(texts) != 1 or not texts[0].isascii():
                return ""
            return await self._expand(_macro_string(texts[0], _EXP_LETTERS, spaces=True),
                                      domain)
        except (DnsTemporaryError, _PermError):
            return ""

    async def _expand(self, parts: _Parts, domain: str) -> str:
        out: list[str] = []
        for part in parts:
            if isinstance(part, str):
                out.append(part)
                continue
            value = await self._macro_value(part.letter, domain)
            pieces = re.split("[" + re.escape(part.delimiters or ".") + "]", value)
            if part.reverse:
                pieces.reverse()
            if part.digits:
                pieces = pieces[-part.digits:]
            value = ".".join(pieces)
            out.append(quote(value, safe="") if part.escape else value)
        return "".join(out)

    async def _macro_value(self, letter: str, domain: str) -> str:
        ip = self.ip
        if letter == "i":
            if ip.version == 4:
                return str(ip)
            return ".".join(ip.exploded.replace(":", "").upper())
        if letter == "p":  # prefer the domain itself, then a subdomain, then any name
            names = await self._validated_names()
            ranked = ([n for n in names if n.lower() == domain.lower()]
                      + [n for n in names if _subdomain_or_same(n, domain)] + names)
            return ranked[0] if ranked else "unknown"
        values = {"s": self.sender, "l": self.local, "o": self.sender_domain, "d": domain,
                  "v": "in-addr" if ip.version == 4 else "ip6", "h": self.helo,
                  "c": str(ip), "r": self.receiver, "t": str(int(self.now))}
        return values[letter]


# -- entry points -------------------------------------------------------------------------------

async def check_host(ip: str | IPAddress, domain: str, sender: str, helo: str,
                     dns: SpfResolver, *, receiver: str = "unknown", now: float | None = None,
                     timeout: float = DEFAULT_TIMEOUT, scope: Scope = "mfrom") -> SpfResult:
    """RFC 7208 check_host(): the SPF result for ``ip`` sending as ``sender`` for ``domain``.

    ``sender`` is the full identity (``local@domain``; a missing local part is taken as
    "postmaster"), ``helo`` the HELO/EHLO name (for the %{h} macro). ``receiver`` is our
    host name (%{r}) and ``now`` the time for %{t} (default: the clock), both used only in
    explanations. A bad ``ip`` raises ValueError: that is the caller's bug, not the peer's.
    """
    address = _ip(ip)
    evaluation = _Evaluation(address, sender, helo, dns, receiver,
                             time.time() if now is None else now)
    result: Result
    explanation = reason = ""
    try:
        async with asyncio.timeout(timeout):
            result, explanation = await evaluation.check(domain, want_exp=True)
    except _PermError as exc:
        result, reason = "permerror", str(exc)
    except _TempError as exc:
        result, reason = "temperror", str(exc)
    except TimeoutError:
        result, reason = "temperror", f"no answer within {timeout:g} s"
    return SpfResult(result, explanation, domain, scope, reason)


async def check(ip: str | IPAddress, mail_from: str, helo: str, dns: SpfResolver, *,
                receiver: str = "unknown", now: float | None = None,
                timeout: float = DEFAULT_TIMEOUT) -> SpfCheck:
    """Check both identities of a transaction: MAIL FROM and HELO (RFC 7208 section 2.3).

    ``mail_from`` is the reverse-path without angle brackets ("" for the null sender, whose
    MAIL FROM identity is ``postmaster@<helo>``: then both results are the same check, made
    once). The checks run concurrently, each with its own limits.
    """
    helo_sender = f"postmaster@{helo}"
    helo_check = check_host(ip, helo, helo_sender, helo, dns, receiver=receiver, now=now,
                            timeout=timeout, scope="helo")
    if not mail_from:
        helo_result = await helo_check
        return SpfCheck(replace(helo_result, scope="mfrom"), helo_result)
    domain = mail_from.rpartition("@")[2]
    mfrom_result, helo_result = await asyncio.gather(
        check_host(ip, domain, mail_from, helo, dns, receiver=receiver, now=now,
                   timeout=timeout),
        helo_check)
    return SpfCheck(mfrom_result, helo_result)
