"""DMARC: does the From domain's owner vouch for this message, and what does it ask? (RFC 7489)

:func:`evaluate` takes the author (RFC 5322 From) domain, the SPF result for the MAIL FROM
identity and the DKIM results, finds the domain's DMARC record (at ``_dmarc.<domain>``, else
at the organizational domain's), checks identifier alignment (relaxed or strict, ``adkim=``,
``aspf=``) and returns pass or fail with the policy that applies (``p=``, or ``sp=`` for a
subdomain that inherits the organizational record) and the disposition after ``pct=``
sampling (with an injected random source). :func:`author_domains` reads the From field of a
message head; :func:`evaluate_message` does both, evaluating each domain of a multi-address
From and keeping the strictest failing outcome, as section 6.6.1 asks.

Organizational domains come from the Public Suffix List shipped inside the
``publicsuffixlist`` package (no download at run time; an unknown top-level domain counts as
a public suffix of one label, the list's "*" default rule).

It does not send or parse aggregate or failure reports (``rua``, ``ruf``, ``fo``, ``rf``,
``ri`` are read only to honour section 6.6.3 step 6), does not enforce the disposition (the
session does), and has no local overrides or ARC.

Covers RFC 7489 sections 3.1 (alignment), 3.2 (organizational domain), 6.3 (tags), 6.4 (record
syntax), 6.6.1 (author domain), 6.6.2 (checks), 6.6.3 (policy discovery), 6.6.4 (pct), and the
``none``/``pass``/``fail``/``temperror``/``permerror`` results of RFC 8601 section 2.7.7.
"""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from email.errors import InvalidHeaderDefect
from email.headerregistry import AddressHeader, HeaderRegistry
from functools import cache
from typing import Literal, Protocol

from publicsuffixlist import PublicSuffixList

from ..dnstypes import DnsTemporaryError
from ..protocol.address import AddressError, parse_domain
from .spf import SpfResult

__all__ = [
    "AuthorDomains", "DmarcRecord", "DmarcResult", "Policy", "Result", "TxtResolver",
    "aligned", "author_domains", "evaluate", "evaluate_message", "org_domain", "parse_record",
]

Result = Literal["pass", "fail", "none", "temperror", "permerror"]
Policy = Literal["none", "quarantine", "reject"]
Alignment = Literal["r", "s"]

_POLICIES: dict[str, Policy] = {"none": "none", "quarantine": "quarantine", "reject": "reject"}
_STRICTNESS = {"none": 0, "quarantine": 1, "reject": 2}
_DOWNGRADE: dict[Policy, Policy] = {"reject": "quarantine", "quarantine": "none", "none": "none"}
_VERSION = re.compile(r"v[ \t]*=[ \t]*DMARC1[ \t]*(;|\Z)")
_URI = re.compile(r"[a-z][a-z0-9+.\-]*:[^\s,!]+(![0-9]+[kmgt]?)?\Z", re.I)


@dataclass(frozen=True, slots=True)
class DmarcResult:
    """The DMARC outcome for one message.

    ``policy`` is what the record asks for this domain (``p=``, or ``sp=`` for a subdomain
    under the organizational record), reported whatever the result. ``applied`` is what to
    do with this message: ``none`` unless the result is ``fail``, and then the policy after
    ``pct=`` sampling (an unsampled message gets the next milder policy). ``domain`` is the
    author domain, ``org_domain`` its organizational domain, ``reason`` a short text for
    logs and the Authentication-Results comment.
    """

    result: Result
    policy: Policy = "none"
    applied: Policy = "none"
    domain: str = ""
    org_domain: str = ""
    reason: str = ""
    spf_aligned: bool = False
    dkim_aligned: bool = False


@dataclass(frozen=True, slots=True)
class DmarcRecord:
    """The tags of a DMARC record that decide a disposition (RFC 7489 section 6.3)."""

    policy: Policy
    subdomain_policy: Policy | None = None
    adkim: Alignment = "r"
    aspf: Alignment = "r"
    pct: int = 100


@dataclass(frozen=True, slots=True)
class AuthorDomains:
    """The domains (lower-case A-labels, in order, no repeats) of the message's From field;
    when there are none, ``result`` and ``reason`` say why (section 6.6.1)."""

    domains: tuple[str, ...] = ()
    result: Literal["none", "permerror"] = "none"
    reason: str = ""


class TxtResolver(Protocol):
    """The one lookup DMARC needs; ``postwright.net.dns.Resolver`` fits."""

    async def txt(self, name: str) -> list[str]: ...


class _RecordError(ValueError):
    pass


# -- organizational domains and alignment (sections 3.1 and 3.2) -----------------------------

@cache
def _suffix_list() -> PublicSuffixList:
    return PublicSuffixList()


def org_domain(domain: str) -> str:
    """The organizational domain: the public suffix plus one label (the domain itself when it
    is a public suffix)."""
    name = domain.rstrip(".").lower()
    return _suffix_list().privatesuffix(name) or name


def aligned(identifier: str, author: str, mode: Alignment) -> bool:
    """Whether an authenticated domain aligns with the author domain in ``mode``."""
    a, b = identifier.rstrip(".").lower(), author.rstrip(".").lower()
    if not a or not b:
        return False
    return a == b if mode == "s" else org_domain(a) == org_domain(b)


# -- records (sections 6.3, 6.4, 6.6.3) -----------------------------------------------------

def _is_dmarc(text: str) -> bool:
    return _VERSION.match(text) is not None


def parse_record(text: str) -> DmarcRecord:
    """Read a DMARC record; ValueError when it is not usable.

    Unknown tags and bad optional values are ignored (defaults apply). A missing or invalid
    ``p=``, or an invalid ``sp=``, makes the record unusable unless ``rua=`` holds a valid
    URI, when it reads as ``p=none`` (section 6.6.3 step 6).
    """
    if not _is_dmarc(text):
        raise _RecordError("not a DMARC1 record")
    tags: dict[str, str] = {}
    for item in text.split(";")[1:]:
        name, equals, value = item.partition("=")
        name = name.strip(" \t").lower()
        if equals and name and name not in tags:
            tags[name] = value.strip(" \t")
    policy = _POLICIES.get(tags.get("p", "").lower())
    sub_text = tags.get("sp")
    subdomain = _POLICIES.get(sub_text.lower()) if sub_text is not None else None
    if policy is None or (sub_text is not None and subdomain is None):
        reports = [u.strip(" \t") for u in tags.get("rua", "").split(",")]
        if not any(_URI.match(u) for u in reports):
            raise _RecordError("no valid p= (or an invalid sp=) and no rua=")
        policy, subdomain = "none", None
    pct_text = tags.get("pct", "100")
    pct = int(pct_text) if pct_text.isdigit() and int(pct_text) <= 100 else 100
    adkim: Alignment = "s" if tags.get("adkim", "r").lower() == "s" else "r"
    aspf: Alignment = "s" if tags.get("aspf", "r").lower() == "s" else "r"
    return DmarcRecord(policy, subdomain, adkim, aspf, pct)


async def _records(name: str, dns: TxtResolver) -> list[str]:
    return [t for t in await dns.txt(name) if _is_dmarc(t)]


# -- evaluation (section 6.6) ---------------------------------------------------------------

async def evaluate(from_domain: str, spf: SpfResult | None, dkim: Iterable[tuple[str, str]],
                   dns: TxtResolver, *, rand: Callable[[], float] = random.random
                   ) -> DmarcResult:
    """The DMARC result for one author domain.

    ``spf`` is the MAIL FROM result (its ``domain`` is the authenticated identifier: the
    MAIL FROM domain, or the HELO name for the null sender); ``dkim`` is (``d=``, result)
    for each signature. ``rand`` returns a float in [0, 1) and is called only when ``pct``
    is strictly between 0 and 100. DNS failures give ``temperror``: a failed record lookup,
    and, when nothing aligned passed, an aligned SPF or DKIM ``temperror`` (it might have
    passed: the message should be deferred, not refused).
    """
    domain = from_domain.rstrip(".").lower()
    org = org_domain(domain)
    try:
        found = await _records(f"_dmarc.{domain}", dns)
        at_org = False
        if not found and org != domain:
            found, at_org = await _records(f"_dmarc.{org}", dns), True
    except DnsTemporaryError as exc:
        return DmarcResult("temperror", domain=domain, org_domain=org,
                           reason=f"DMARC record lookup failed: {exc}")
    if not found:
        return DmarcResult("none", domain=domain, org_domain=org, reason="no DMARC record")
    where = org if at_org else domain
    if len(found) > 1:
        return DmarcResult("permerror", domain=domain, org_domain=org,
                           reason=f"several DMARC records at _dmarc.{where}")
    try:
        record = parse_record(found[0])
    except ValueError as exc:
        return DmarcResult("permerror", domain=domain, org_domain=org,
                           reason=f"unusable DMARC record at _dmarc.{where}: {exc}")
    policy = record.policy
    if at_org and record.subdomain_policy is not None:
        policy = record.subdomain_policy
    spf_ok = (spf is not None and spf.result == "pass"
              and aligned(spf.domain, domain, record.aspf))
    signatures = list(dkim)
    dkim_ok = any(result == "pass" and aligned(d, domain, record.adkim)
                  for d, result in signatures)
    if spf_ok or dkim_ok:
        which = " and ".join(n for n, ok in (("SPF", spf_ok), ("DKIM", dkim_ok)) if ok)
        return DmarcResult("pass", policy, "none", domain, org, f"aligned {which} pass",
                           spf_ok, dkim_ok)
    # An aligned check that could not finish might have passed: defer rather than fail.
    if ((spf is not None and spf.result == "temperror"
         and aligned(spf.domain, domain, record.aspf))
            or any(result == "temperror" and aligned(d, domain, record.adkim)
                   for d, result in signatures)):
        return DmarcResult("temperror", policy, "none", domain, org,
                           "an aligned SPF or DKIM check failed for now")
    if record.pct >= 100:
        applied = policy
    elif record.pct > 0 and rand() * 100 < record.pct:
        applied = policy
    else:
        applied = _DOWNGRADE[policy]
    return DmarcResult("fail", policy, applied, domain, org, "no aligned SPF or DKIM pass")


# -- the author domain (section 6.6.1) ------------------------------------------------------

def author_domains(message_head: bytes) -> AuthorDomains:
    """The author domains of a message head (the header section, or the whole message).

    No From field gives ``none`` (DMARC does not apply); several From fields, an unparsable
    or ambiguous From, a mailbox without a usable domain, or an address literal give
    ``permerror``: RFC 5322 forbids these, and a receiver should not let them pass as
    unchecked. A group with no mailboxes is ``none``.
    """
    fields: list[list[bytes]] = []
    current: list[bytes] | None = None
    for line in message_head.splitlines():
        if not line:
            break  # the end of the header section
        if line[:1] in (b" ", b"\t"):
            if current is not None:
                current.append(line)
            continue
        name, colon, value = line.partition(b":")
        current = [value] if colon and name.rstrip(b" \t").lower() == b"from" else None
        if current is not None:
            fields.append(current)
    if not fields:
        return AuthorDomains(reason="no From field")
    if len(fields) > 1:
        return AuthorDomains(result="permerror", reason="several From fields")
    text = b"".join(fields[0]).decode("utf-8", "replace")
    try:
        header = HeaderRegistry()("from", text)
    except Exception:  # the standard parser has failed on odd input before; treat as junk
        return AuthorDomains(result="permerror", reason="unparsable From field")
    assert isinstance(header, AddressHeader)
    addresses = header.addresses
    if any(isinstance(defect, InvalidHeaderDefect) for defect in header.defects):
        return AuthorDomains(result="permerror", reason="malformed From field")
    if not addresses:
        return AuthorDomains(reason="no mailbox in the From field")
    domains: list[str] = []
    for address in addresses:
        try:
            parsed = parse_domain(address.domain.rstrip("."), smtputf8=True)
            if parsed.is_literal:
                raise AddressError("address literal")
            name = parsed.ascii()
        except AddressError:
            return AuthorDomains(result="permerror",
                                 reason="a From mailbox has no usable domain")
        if name not in domains:
            domains.append(name)
    return AuthorDomains(tuple(domains))


def _severity(result: DmarcResult) -> tuple[int, int, int]:
    rank = {"pass": 0, "none": 1, "permerror": 2, "temperror": 3, "fail": 4}[result.result]
    return rank, _STRICTNESS[result.applied], _STRICTNESS[result.policy]


async def evaluate_message(message_head: bytes, spf: SpfResult | None,
                           dkim: Iterable[tuple[str, str]], dns: TxtResolver, *,
                           rand: Callable[[], float] = random.random) -> DmarcResult:
    """:func:`evaluate` for the From domain(s) of a message: with several domains, the
    strictest failing outcome (else the worst other one) stands for the message."""
    found = author_domains(message_head)
    if not found.domains:
        return DmarcResult(found.result, reason=found.reason)
    signatures = list(dkim)
    results = await asyncio.gather(*(evaluate(d, spf, signatures, dns, rand=rand)
                                     for d in found.domains))
    return max(results, key=_severity)
