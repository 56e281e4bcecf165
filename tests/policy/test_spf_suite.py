"""The RFC 7208 test suite (openspf.org, release 2014.04) against our SPF evaluator.

Each scenario's zone data is served by the loopback DNS server and every case runs through
``spf.check`` with the real resolver. The suite's conventions, as its own drivers read them:
an SPF-type record is served as TXT when the name has no TXT entry (``TXT: NONE`` says "no
TXT, and none generated"); ``TIMEOUT`` makes the name fail to answer the types not listed
before it (served here as SERVFAIL, which our resolver reports exactly as a timeout, without
waiting for one); a case lists one result or several acceptable ones; an explanation of
``DEFAULT`` means the record gave none (ours is then ""). The one TXT record with no strings
at all (illegal, and dnspython will not send it) is left out. Cases we knowingly fail are xfailed
(strictly) with the reason in KNOWN_FAILURES.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from postwright.net.dns import Resolver
from postwright.policy.spf import check
from postwright.testing.dnsserver import DnsServer

SUITE = Path(__file__).parent / "data" / "rfc7208-tests.json"
NOW = 1_400_000_000.0
RECEIVER = "mx.receiver.test"

# "scenario description/case name": why we fail it.
KNOWN_FAILURES: dict[str, str] = {}


@dataclass(frozen=True)
class Case:
    scenario: int
    name: str
    helo: str
    host: str
    mailfrom: str
    results: tuple[str, ...]
    explanation: str | None


def _load() -> tuple[list[dict[str, Any]], list[Any]]:
    scenarios: list[dict[str, Any]] = json.loads(SUITE.read_text("utf-8"))["scenarios"]
    params = []
    for index, scenario in enumerate(scenarios):
        for name, data in scenario["tests"].items():
            result = data["result"]
            case = Case(index, name, data["helo"], data["host"], data["mailfrom"],
                        tuple(result) if isinstance(result, list) else (result,),
                        data.get("explanation"))
            key = f"{scenario['description']}/{name}"
            marks = ([pytest.mark.xfail(strict=True, reason=KNOWN_FAILURES[key])]
                     if key in KNOWN_FAILURES else [])
            params.append(pytest.param(case, id=key, marks=marks))
    return scenarios, params


SCENARIOS, CASES = _load()


def zone(zonedata: dict[str, list[Any]]) -> tuple[dict[str, dict[str, list[Any]]], set[str]]:
    """The suite's zone data as DnsServer records, and the names that must fail."""
    records: dict[str, dict[str, list[Any]]] = {}
    failing: set[str] = set()
    for name, entries in zonedata.items():
        types: dict[str, list[Any]] = {}
        spf: list[Any] = []
        has_txt = False
        for entry in entries:
            if entry == "TIMEOUT":
                if "TXT" not in types:  # only TXT is ever asked of such names before it
                    failing.add(name)
                continue
            ((rtype, value),) = entry.items()
            if rtype in ("SPF", "TXT"):
                if value == []:  # a TXT record without strings cannot be sent (dnspython)
                    continue
                value = tuple(value) if isinstance(value, list) else value
                if rtype == "SPF":
                    spf.append(value)
                    continue
                has_txt = True
                if value == "NONE":
                    continue
            elif rtype == "MX":
                value = f"{value[0]} {value[1] or '.'}".rstrip(".") + "."
            elif rtype in ("PTR", "CNAME"):
                value = value.rstrip(".") + "."
            types.setdefault(rtype, []).append(value)
        if spf and not has_txt:
            types["TXT"] = spf
        records[name] = types
    return records, failing


@pytest.fixture(scope="module")
def servers() -> Iterator[Callable[[int], DnsServer]]:
    started: dict[int, DnsServer] = {}

    def server(index: int) -> DnsServer:
        if index not in started:
            records, failing = zone(SCENARIOS[index]["zonedata"])
            started[index] = DnsServer(records, servfail=failing).start()
        return started[index]

    yield server
    for srv in started.values():
        srv.stop()
        assert srv.errors == []


@pytest.mark.parametrize("case", CASES)
def test_rfc7208(case: Case, servers: Callable[[int], DnsServer]) -> None:
    resolver = Resolver([servers(case.scenario).nameserver], timeout=2.0)
    outcome = asyncio.run(check(case.host, case.mailfrom, case.helo, resolver,
                                receiver=RECEIVER, now=NOW))
    result = outcome.mfrom
    assert result.result in case.results, result
    if case.explanation is not None and result.result == "fail":
        expected = "" if case.explanation == "DEFAULT" else case.explanation
        assert result.explanation == expected
