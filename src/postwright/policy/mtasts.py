"""MTA-STS (RFC 8461) decisions: the TXT record, the policy file, MX matching, the cache.

:func:`parse_record` reads a ``_mta-sts.<domain>`` TXT record (RFC 8461 section 3.1),
:func:`parse_policy` the policy file (section 3.2), :meth:`Policy.allows` matches an MX host
against the policy's ``mx`` patterns (section 4.1, one leftmost wildcard label at most), and
:class:`MtaSts` runs the discovery of section 5.1 and the refresh rules of section 5.1 and 10:
look up the TXT record, reuse the cached policy while its id is unchanged and it has not
expired, fetch a new one otherwise, and fall back to an unexpired cached policy when DNS or
the fetch fails.

No sockets here: DNS and HTTPS come in as injected callables (in production
``net.dns.Resolver.txt`` and ``net.mtasts_fetch.PolicyFetcher``). Given a ``path``, the cache
is also kept in a JSON file (written whole and renamed into place at each change, read at
start), so a restart does not forget a domain's policy: an attacker who blocks the policy
fetch after a restart cannot turn "enforce" into "send in clear" (section 10.2's concern).
A file that cannot be read or written is logged and ignored. Not done: TLSRPT (RFC 8460),
proactive refresh of cached policies (section 10.2).
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from ..dnstypes import DnsTemporaryError

log = logging.getLogger("postwright.delivery")

MODES = ("enforce", "testing", "none")
MAX_AGE_LIMIT = 31557600  # one year, RFC 8461 section 3.2
_ID = re.compile(r"[A-Za-z0-9]{1,32}")
_FIELD = re.compile(r"[A-Za-z0-9_.-]+=[\x21-\x3a\x3c\x3e-\x7e]+")  # RFC 8461 3.1 sts-ext


class PolicyError(ValueError):
    """A record or policy that does not follow RFC 8461, or a fetch that failed."""


@dataclass(frozen=True, slots=True)
class Policy:
    """One parsed policy file; ``mx`` holds lower-case patterns without trailing dots."""

    mode: str
    max_age: int
    mx: tuple[str, ...]

    def allows(self, host: str) -> bool:
        """Whether MX ``host`` matches one of the ``mx`` patterns (RFC 8461 section 4.1)."""
        return any(mx_matches(pattern, host) for pattern in self.mx)


def mx_matches(pattern: str, host: str) -> bool:
    """``*.example.net`` covers exactly one more label on the left; otherwise equality."""
    pattern = pattern.lower().rstrip(".")
    host = host.lower().rstrip(".")
    if pattern.startswith("*."):
        label, dot, rest = host.partition(".")
        return bool(label) and bool(dot) and rest == pattern[2:]
    return host == pattern


def parse_record(texts: list[str]) -> str | None:
    """The policy id from the TXT records of ``_mta-sts.<domain>``, or None.

    Records not starting with ``v=STSv1`` are ignored; more than one STSv1 record, or one
    without a valid id, counts as no record (RFC 8461 section 3.1).
    """
    ids: list[str | None] = []
    for text in texts:
        fields = [f.strip(" \t") for f in text.split(";")]
        if not fields or fields[0] != "v=STSv1":
            continue
        found: str | None = None
        good = True
        for item in fields[1:]:
            if not item:
                continue
            if not _FIELD.fullmatch(item):
                good = False
                break
            key, _, value = item.partition("=")
            if key == "id" and found is None:
                found = value if _ID.fullmatch(value) else None
                good = found is not None
        ids.append(found if good else None)
    if len(ids) != 1:
        return None
    return ids[0]


def parse_policy(text: str) -> Policy:
    """Read a policy file (RFC 8461 section 3.2); raises :class:`PolicyError`.

    Lines end in LF or CRLF; unknown keys are ignored; ``version``, ``mode`` and
    ``max_age`` must each be there once, and modes other than ``none`` need an ``mx``.
    """
    values: dict[str, str] = {}
    mx: list[str] = []
    for line in text.replace("\r\n", "\n").split("\n"):
        if not line.strip():
            continue
        key, colon, value = line.partition(":")
        if not colon or not key or key != key.strip():
            raise PolicyError(f"bad policy line {line[:80]!r}")
        value = value.strip(" \t")
        if key == "mx":
            if not re.fullmatch(r"(\*\.)?[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\.?", value):
                raise PolicyError(f"bad mx pattern {value[:80]!r}")
            mx.append(value.lower().rstrip("."))
        elif key in ("version", "mode", "max_age"):
            if key in values:
                raise PolicyError(f"{key} given twice")
            values[key] = value
    if values.get("version") != "STSv1":
        raise PolicyError("version is not STSv1")
    mode = values.get("mode")
    if mode not in MODES:
        raise PolicyError(f"bad mode {mode!r}")
    age = values.get("max_age", "")
    if not age.isdigit() or len(age) > 10 or int(age) > MAX_AGE_LIMIT:
        raise PolicyError(f"bad max_age {age!r}")
    if mode != "none" and not mx:
        raise PolicyError(f"mode {mode} without mx patterns")
    return Policy(mode=mode, max_age=int(age), mx=tuple(mx))


@dataclass(frozen=True, slots=True)
class CachedPolicy:
    policy_id: str
    policy: Policy
    expires: float  # on the cache's clock


TxtLookup = Callable[[str], Awaitable[list[str]]]
Fetch = Callable[[str], Awaitable[str]]


class MtaSts:
    """Policy discovery with an in-memory cache keyed by domain (RFC 8461 sections 5.1, 10).

    ``fetch(domain)`` returns the policy file text or raises :class:`PolicyError`;
    ``txt(name)`` returns TXT strings or raises :class:`DnsTemporaryError`.
    """

    def __init__(self, *, txt: TxtLookup, fetch: Fetch,
                 clock: Callable[[], float] = time.time, path: Path | None = None) -> None:
        self._txt = txt
        self._fetch = fetch
        self._clock = clock  # wall-clock seconds: expiry times outlive the process in ``path``
        self.path = path
        self.cache: dict[str, CachedPolicy] = self._load() if path is not None else {}
        self.fetches = 0

    def _load(self) -> dict[str, CachedPolicy]:
        assert self.path is not None
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
            now = self._clock()
            return {domain: CachedPolicy(str(e["id"]), Policy(
                mode=str(e["mode"]), max_age=int(e["max_age"]),
                mx=tuple(str(m) for m in e["mx"])), float(e["expires"]))
                for domain, e in doc.items() if float(e["expires"]) > now
                and str(e["mode"]) in MODES}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
            log.warning("MTA-STS cache file unreadable, starting empty", extra={
                "event": "mta_sts", "path": str(self.path), "reason": str(exc)})
            return {}

    def _save(self) -> None:
        if self.path is None:
            return
        doc = {domain: {"id": e.policy_id, "mode": e.policy.mode, "max_age": e.policy.max_age,
                        "mx": list(e.policy.mx), "expires": e.expires}
               for domain, e in self.cache.items()}
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            tmp.write_text(json.dumps(doc, sort_keys=True), encoding="utf-8")
            os.replace(tmp, self.path)
        except OSError as exc:
            log.warning("MTA-STS cache file not written", extra={
                "event": "mta_sts", "path": str(self.path), "reason": str(exc)})

    def cached(self, domain: str) -> Policy | None:
        """The cached policy for ``domain`` if it has not expired."""
        entry = self.cache.get(domain.lower())
        if entry is None:
            return None
        if entry.expires <= self._clock():
            del self.cache[domain.lower()]
            return None
        return entry.policy

    async def policy(self, domain: str) -> Policy | None:
        """The policy that applies to mail for ``domain``, or None (none, or mode none)."""
        domain = domain.lower().rstrip(".")
        found = self._usable(await self._lookup(domain))
        return found

    @staticmethod
    def _usable(policy: Policy | None) -> Policy | None:
        return None if policy is None or policy.mode == "none" else policy

    async def _lookup(self, domain: str) -> Policy | None:
        cached = self.cached(domain)
        try:
            policy_id = parse_record(await self._txt(f"_mta-sts.{domain}"))
        except DnsTemporaryError:
            return cached
        if policy_id is None:
            return cached  # no record: an unexpired cached policy still holds (5.1)
        entry = self.cache.get(domain)
        if cached is not None and entry is not None and entry.policy_id == policy_id:
            return cached
        self.fetches += 1
        try:
            policy = parse_policy(await self._fetch(domain))
        except PolicyError as exc:
            log.warning("MTA-STS policy fetch failed", extra={
                "event": "mta_sts", "domain": domain, "reason": str(exc)})
            return cached
        self.cache[domain] = CachedPolicy(policy_id, policy, self._clock() + policy.max_age)
        self._save()
        return policy
