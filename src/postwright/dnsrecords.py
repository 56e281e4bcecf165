"""The DNS records a local mail domain should publish, and how they compare with the DNS.

:func:`plan_records` decides what ``postwright dns-records DOMAIN`` prints: the MX pointing at
our hostname, an SPF record letting the MX send, the DKIM key record of the domain's active
key, a DMARC record (``p=quarantine`` to start), the MTA-STS record (its policy file shown
in a comment) and the TLS-RPT record. :meth:`Plan.lines` renders them as zone-file lines:
absolute names, class IN, no TTL (the zone's ``$TTL`` applies), TXT values quoted and cut
into character-strings of at most 255 octets, operator notes as ``;`` comments.

:func:`check_records` (``--check``) looks each record up through an injected resolver and
says ``OK``, ``MISSING``, ``DIFFERENT`` (with what was found) or that the lookup failed.
Records are compared by meaning, not text: the MX by preference and host (case and trailing
dot ignored; other MX hosts beside ours are fine); SPF by evaluating the published record
for each address of our hostname (RFC 7208 check_host, so ``ip4:``, ``a``, ``include:`` all
count), or, when the hostname has no address, by looking for an ``mx`` or ``a:<hostname>``
term before ``all``; DKIM by the ``p=`` public key; DMARC by its policy (``quarantine`` or
``reject``); MTA-STS by a single ``v=STSv1`` record with a valid ``id=`` (the id is ours to
change); TLS-RPT by its fields (whitespace around ``;`` ignored).

It does not edit zones or talk to DNS providers, does not fetch the MTA-STS policy over HTTPS,
does not validate DNSSEC and picks no TTLs. The resolver is injected (layer 2): the command
line passes :class:`postwright.net.dns.Resolver`.

Covers RFC 1035 sections 5.1 (master file format: ``;`` comments, quoted strings, ``\\DDD``
escapes), 3.3.9 (MX) and 3.3.14 (TXT), RFC 7208 sections 3.2 (one SPF record), 4.5 and 5.4
(``mx``), RFC 6376 section 3.6.1 (key record tags), RFC 7489 sections 6.3 and 6.6.3 (DMARC
tags, one record), RFC 8461 sections 3.1 and 3.2 (MTA-STS record and policy file), RFC 8460
section 3 (TLS-RPT record).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from .dnstypes import DnsTemporaryError
from .policy import dmarc, spf
from .policy.dkimkeys import Key

__all__ = ["CheckResult", "Kind", "Plan", "Record", "Status", "check_records", "plan_records",
           "zone_line"]

Kind = Literal["MX", "SPF", "DKIM", "DMARC", "MTA-STS", "TLS-RPT"]
Status = Literal["OK", "MISSING", "DIFFERENT", "DNS FAILURE", "NO KEY"]

MX_PREFERENCE = 10
TXT_STRING = 255  # octets in one TXT character-string (RFC 1035 section 3.3)
MTA_STS_MAX_AGE = 86400
FOUND_WIDTH = 100  # longer values found in the DNS are shortened in check lines

_STS_ID = re.compile(r"[A-Za-z0-9]{1,32}\Z")
_STS_FIELD = re.compile(r"[A-Za-z0-9_.-]{1,32}=[\x21-\x3a\x3c\x3e-\x7e]{1,}\Z")


# -- what to publish --------------------------------------------------------------------------

def _quote(text: str) -> str:
    """TXT content as quoted character-strings of at most 255 octets each."""
    raw = text.encode("utf-8")
    chunks = [raw[i:i + TXT_STRING] for i in range(0, len(raw), TXT_STRING)] or [b""]
    return " ".join('"' + "".join(_escape(b) for b in chunk) + '"' for chunk in chunks)


def _escape(octet: int) -> str:
    if octet in (0x22, 0x5C):  # '"' and '\\'
        return "\\" + chr(octet)
    return chr(octet) if 0x20 <= octet < 0x7F else f"\\{octet:03d}"


def zone_line(name: str, rtype: str, value: str) -> str:
    """One zone-file line: ``name. IN TYPE rdata``; TXT ``value`` is quoted and split."""
    rdata = _quote(value) if rtype == "TXT" else value
    return f"{name.rstrip('.')}. IN {rtype} {rdata}"


@dataclass(frozen=True, slots=True)
class Record:
    """One record to publish. ``name`` is absolute (trailing dot); ``value`` is the MX rdata
    (``10 mx.example.test.``) or the TXT text, unquoted and whole; ``notes`` are comment lines
    (without the ``;``) printed before it."""

    kind: Kind
    name: str
    rtype: Literal["MX", "TXT"]
    value: str
    notes: tuple[str, ...] = ()

    def zone_line(self) -> str:
        return zone_line(self.name, self.rtype, self.value)


@dataclass(frozen=True, slots=True)
class Plan:
    """The records for ``domain`` (a lower-case A-label), served by ``hostname``.
    ``dkim_missing``: the domain has no DKIM key yet, so there is no DKIM record."""

    domain: str
    hostname: str
    records: tuple[Record, ...]
    dkim_missing: bool = False

    def lines(self) -> list[str]:
        """The zone-file text, one line per item: comments, then each record."""
        out = [f"; DNS records for {self.domain}, to add to its zone "
               "(the zone's $TTL applies)"]
        for record in self.records:
            out.append(";")
            out.extend(f"; {note}" if note else ";" for note in record.notes)
            out.append(record.zone_line())
            if record.kind == "SPF" and self.dkim_missing:
                out.append(";")
                out.extend(f"; {note}" for note in _no_key_notes(self.domain))
        return out


def _no_key_notes(domain: str) -> tuple[str, ...]:
    return (f"DKIM: {domain} has no signing key yet; run `postwright dkim keygen {domain}`",
            "and publish the record it prints (then run this command again).")


def plan_records(domain: str, hostname: str, dkim_key: Key | None, now: datetime) -> Plan:
    """The records ``domain`` should publish when ``hostname`` is its MX.

    ``domain`` and ``hostname`` are lower-case A-labels (a trailing dot is dropped);
    ``dkim_key`` is the domain's active signing key, if it has one; ``now`` makes the
    MTA-STS policy id (``yyyymmddhhmmss``, UTC).
    """
    domain = domain.rstrip(".").lower()
    host = hostname.rstrip(".").lower()
    report = f"mailto:postmaster@{domain}"
    stamp = now.astimezone(UTC).strftime("%Y%m%d%H%M%S")
    policy_url = f"https://mta-sts.{domain}/.well-known/mta-sts.txt"
    records = [
        Record("MX", f"{domain}.", "MX", f"{MX_PREFERENCE} {host}.",
               (f"MX: mail for {domain} goes to {host}, which needs A/AAAA records.",)),
        Record("SPF", f"{domain}.", "TXT", "v=spf1 mx -all",
               ("SPF: only the domain's MX hosts may send its mail. Add every other sender",
                "(e.g. ip4:192.0.2.1 or include:<provider>) before -all; keep ONE v=spf1 "
                "record.")),
    ]
    if dkim_key is not None:
        records.append(Record(
            "DKIM", f"{dkim_key.selector}._domainkey.{domain}.", "TXT", dkim_key.txt(),
            (f"DKIM: the public key of the active signing key (selector {dkim_key.selector}).",)))
    records += [
        Record("DMARC", f"_dmarc.{domain}.", "TXT", f"v=DMARC1; p=quarantine; rua={report}",
               ("DMARC: start at p=quarantine and read the aggregate reports; once every",
                "legitimate sender passes SPF or DKIM, move to p=reject (the goal).")),
        Record("MTA-STS", f"_mta-sts.{domain}.", "TXT", f"v=STSv1; id={stamp}",
               ("MTA-STS: serve this policy file at",
                f"  {policy_url}",
                f"(HTTPS, with a certificate valid for mta-sts.{domain}):",
                "",
                "  version: STSv1",
                "  mode: testing",
                f"  mx: {host}",
                f"  max_age: {MTA_STS_MAX_AGE}",
                "",
                "Change id= whenever the policy changes; switch to mode: enforce once the",
                "TLS reports are clean.")),
        Record("TLS-RPT", f"_smtp._tls.{domain}.", "TXT", f"v=TLSRPTv1; rua={report}",
               ("TLS-RPT: where senders report TLS failures delivering to us.",)),
    ]
    return Plan(domain, host, tuple(records), dkim_missing=dkim_key is None)


# -- comparing with the DNS -------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class CheckResult:
    """How one record compares with the DNS. ``found`` is what the DNS holds (for
    DIFFERENT), ``detail`` why it differs or why the lookup failed."""

    kind: Kind
    name: str
    status: Status
    found: tuple[str, ...] = ()
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "OK"

    def line(self) -> str:
        """``KIND name STATUS`` plus ``(found: ...)`` or ``(detail)``."""
        extra = []
        if self.found:
            extra.append("found: " + ", ".join(_short(f) for f in self.found))
        if self.detail:
            extra.append(self.detail)
        suffix = f" ({'; '.join(extra)})" if extra else ""
        return f"{self.kind} {self.name} {self.status}{suffix}"


def _short(text: str) -> str:
    return text if len(text) <= FOUND_WIDTH else text[:FOUND_WIDTH - 3] + "..."


def _is_spf(text: str) -> bool:
    """RFC 7208 section 4.5: "v=spf1" alone or followed by a space (case-insensitive)."""
    return text[:6].lower() == "v=spf1" and text[6:7] in ("", " ")


def _tags(text: str) -> dict[str, str]:
    """``tag=value; ...`` as a dict (first of each tag wins; names lower case)."""
    tags: dict[str, str] = {}
    for item in text.split(";"):
        name, equals, value = item.partition("=")
        name = name.strip(" \t\r\n").lower()
        if equals and name and name not in tags:
            tags[name] = value.strip(" \t\r\n")
    return tags


def _fields(text: str) -> list[str]:
    return [f.strip(" \t") for f in text.split(";") if f.strip(" \t")]


def _first_field(text: str) -> str:
    return text.split(";", 1)[0].strip(" \t")


def _quoted(texts: list[str]) -> tuple[str, ...]:
    return tuple(f'"{t}"' for t in texts)


Checker = Callable[[Record, Plan, spf.SpfResolver], Awaitable[CheckResult]]


async def _check_mx(record: Record, plan: Plan, dns: spf.SpfResolver) -> CheckResult:
    answer = await dns.mx(plan.domain)
    if answer.null_mx:
        return CheckResult(record.kind, record.name, "DIFFERENT", ("0 .",),
                           "a null MX refuses all mail")
    if not answer.hosts:
        return CheckResult(record.kind, record.name, "MISSING")
    ours = (MX_PREFERENCE, plan.hostname)
    found = [(pref, host.rstrip(".").lower()) for pref, host in answer.hosts]
    if ours in found:
        return CheckResult(record.kind, record.name, "OK")
    return CheckResult(record.kind, record.name, "DIFFERENT",
                       tuple(f"{pref} {host}." for pref, host in found))


def _spf_names_us(text: str, plan: Plan) -> bool:
    """Without addresses to evaluate: does a pass term before ``all`` name our MX?"""
    for word in text.split()[1:]:
        qualifier = word[0] if word[:1] in "+-~?" else "+"
        term = word.lstrip("+-~?").lower()
        name, _, rest = term.partition(":")
        target = rest.split("/", 1)[0].rstrip(".")
        if name.split("/", 1)[0] == "all":
            return False
        if qualifier != "+":
            continue
        if name.split("/", 1)[0] == "mx" and target in ("", plan.domain):
            return True
        if name.split("/", 1)[0] == "a" and (target or plan.domain) == plan.hostname:
            return True
    return False


def _only_one(record: Record, found: list[str], what: str, why: str) -> CheckResult | None:
    """The verdict when there is not exactly one ``what`` record (``why`` two or more are
    wrong), else None."""
    if not found:
        return CheckResult(record.kind, record.name, "MISSING")
    if len(found) > 1:
        return CheckResult(record.kind, record.name, "DIFFERENT", _quoted(found),
                           f"more than one {what} record {why}")
    return None


async def _check_spf(record: Record, plan: Plan, dns: spf.SpfResolver) -> CheckResult:
    found = [t for t in await dns.txt(plan.domain) if _is_spf(t)]
    if (wrong := _only_one(record, found, "v=spf1", "is a permerror")) is not None:
        return wrong
    v4, v6 = await asyncio.gather(dns.a(plan.hostname), dns.aaaa(plan.hostname))
    addresses = v4 + v6
    if not addresses:
        if _spf_names_us(found[0], plan):
            return CheckResult(record.kind, record.name, "OK")
        return CheckResult(record.kind, record.name, "DIFFERENT", _quoted(found),
                           f"no mx term and {plan.hostname} has no address to test")
    results = await asyncio.gather(*(
        spf.check_host(ip, plan.domain, f"postmaster@{plan.domain}", plan.hostname, dns,
                       receiver=plan.hostname) for ip in addresses))
    for ip, result in zip(addresses, results, strict=True):
        if result.result == "temperror":
            return CheckResult(record.kind, record.name, "DNS FAILURE",
                               detail=f"evaluating SPF for {ip}: {result.reason}")
    refused = [f"{ip} gets {r.result}" for ip, r in zip(addresses, results, strict=True)
               if r.result != "pass"]
    if refused:
        return CheckResult(record.kind, record.name, "DIFFERENT", _quoted(found),
                           f"does not authorise {plan.hostname}: {', '.join(refused)}")
    return CheckResult(record.kind, record.name, "OK")


async def _check_dkim(record: Record, plan: Plan, dns: spf.SpfResolver) -> CheckResult:
    want = "".join(_tags(record.value).get("p", "").split())
    found = [t for t in await dns.txt(record.name) if "p" in _tags(t)]
    if not found:
        return CheckResult(record.kind, record.name, "MISSING")
    if any("".join(_tags(t)["p"].split()) == want for t in found):
        return CheckResult(record.kind, record.name, "OK")
    return CheckResult(record.kind, record.name, "DIFFERENT", _quoted(found),
                       "p= is not the public key of the active signing key")


async def _check_dmarc(record: Record, plan: Plan, dns: spf.SpfResolver) -> CheckResult:
    found = [t for t in await dns.txt(record.name) if _tags(t).get("v") == "DMARC1"]
    if (wrong := _only_one(record, found, "DMARC", "counts as none")) is not None:
        return wrong
    try:
        policy = dmarc.parse_record(found[0]).policy
    except ValueError as exc:
        return CheckResult(record.kind, record.name, "DIFFERENT", _quoted(found), str(exc))
    if policy == "none":
        return CheckResult(record.kind, record.name, "DIFFERENT", _quoted(found),
                           "p=none protects nothing; publish p=quarantine or p=reject")
    return CheckResult(record.kind, record.name, "OK")


async def _check_mta_sts(record: Record, plan: Plan, dns: spf.SpfResolver) -> CheckResult:
    found = [t for t in await dns.txt(record.name) if _first_field(t) == "v=STSv1"]
    if (wrong := _only_one(record, found, "v=STSv1", "counts as none")) is not None:
        return wrong
    fields = _fields(found[0])[1:]
    ids = [f.partition("=")[2] for f in fields if f.startswith("id=")]
    if not all(_STS_FIELD.match(f) for f in fields) or not ids or not _STS_ID.match(ids[0]):
        return CheckResult(record.kind, record.name, "DIFFERENT", _quoted(found),
                           "needs id= of 1 to 32 letters and digits")
    return CheckResult(record.kind, record.name, "OK")


async def _check_tls_rpt(record: Record, plan: Plan, dns: spf.SpfResolver) -> CheckResult:
    found = [t for t in await dns.txt(record.name) if _first_field(t) == "v=TLSRPTv1"]
    if (wrong := _only_one(record, found, "v=TLSRPTv1", "counts as none")) is not None:
        return wrong
    if _fields(found[0]) == _fields(record.value):
        return CheckResult(record.kind, record.name, "OK")
    return CheckResult(record.kind, record.name, "DIFFERENT", _quoted(found))


_CHECKERS: dict[Kind, Checker] = {
    "MX": _check_mx, "SPF": _check_spf, "DKIM": _check_dkim, "DMARC": _check_dmarc,
    "MTA-STS": _check_mta_sts, "TLS-RPT": _check_tls_rpt,
}


async def _check_one(record: Record, plan: Plan, dns: spf.SpfResolver) -> CheckResult:
    try:
        return await _CHECKERS[record.kind](record, plan, dns)
    except DnsTemporaryError as exc:
        return CheckResult(record.kind, record.name, "DNS FAILURE", detail=f"lookup failed: {exc}")


async def check_records(plan: Plan, dns: spf.SpfResolver) -> list[CheckResult]:
    """Look up every record of ``plan`` (concurrently) and compare; one result each, in
    the plan's order. A domain without a DKIM key gets a ``NO KEY`` result after SPF."""
    results = list(await asyncio.gather(*(_check_one(r, plan, dns) for r in plan.records)))
    if plan.dkim_missing:
        at = next((i + 1 for i, r in enumerate(results) if r.kind == "SPF"), len(results))
        results.insert(at, CheckResult("DKIM", f"{plan.domain}.", "NO KEY",
                                       detail=f"run `postwright dkim keygen {plan.domain}`"))
    return results
