"""Tests for DMARC evaluation, against the loopback DNS server through the real resolver."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from postwright.net.dns import Resolver
from postwright.policy.dmarc import (
    AuthorDomains,
    DmarcRecord,
    DmarcResult,
    aligned,
    author_domains,
    evaluate,
    evaluate_message,
    org_domain,
    parse_record,
)
from postwright.policy.spf import Result, SpfResult
from postwright.testing.dnsserver import DnsServer, Records

RECORDS: Records = {
    "_dmarc.example.test": {"TXT": ["v=DMARC1; p=reject; sp=quarantine; "
                                    "rua=mailto:r@example.test"]},
    "_dmarc.strict.test": {"TXT": ["v=DMARC1; p=reject; adkim=s; aspf=s"]},
    "_dmarc.half.test": {"TXT": ["v=DMARC1; p=reject; pct=50"]},
    "_dmarc.zero.test": {"TXT": ["v=DMARC1; p=quarantine; pct=0"]},
    "_dmarc.own.example.test": {"TXT": ["v=DMARC1; p=none"]},
    "_dmarc.example.co.uk": {"TXT": ["v=DMARC1; p=quarantine"]},
    "_dmarc.twice.test": {"TXT": ["v=DMARC1; p=none", "v=DMARC1; p=reject"]},
    "_dmarc.nop.test": {"TXT": ["v=DMARC1; p=block"]},
    "_dmarc.nop-rua.test": {"TXT": ["v=DMARC1; p=block; rua=mailto:agg@nop-rua.test"]},
    "_dmarc.other.test": {"TXT": ["some other text", "v=spf1 -all"]},
}


def never() -> float:
    raise AssertionError("rand must not be called here")


def fixed(value: float) -> Callable[[], float]:
    return lambda: value


@pytest.fixture(scope="module")
def server() -> Iterator[DnsServer]:
    with DnsServer(RECORDS, servfail={"_dmarc.broken.test"}) as srv:
        yield srv
    assert srv.errors == []


@pytest.fixture
def dns(server: DnsServer) -> Resolver:
    return Resolver([server.nameserver], timeout=0.5)


def dmarc(dns: Resolver, domain: str, spf: tuple[str, Result] | None = None,
          dkim: list[tuple[str, str]] | None = None,
          rand: Callable[[], float] = never) -> DmarcResult:
    spf_result = SpfResult(spf[1], domain=spf[0]) if spf else None
    return asyncio.run(evaluate(domain, spf_result, dkim or [], dns, rand=rand))


def test_aligned_spf_relaxed(dns: Resolver) -> None:
    result = dmarc(dns, "example.test", spf=("bounces.example.test", "pass"))
    assert result == DmarcResult("pass", "reject", "none", "example.test", "example.test",
                                 "aligned SPF pass", spf_aligned=True)


def test_aligned_dkim_relaxed(dns: Resolver) -> None:
    result = dmarc(dns, "example.test", spf=("elsewhere.test", "pass"),
                   dkim=[("other.test", "pass"), ("mail.example.test", "pass")])
    assert (result.result, result.spf_aligned, result.dkim_aligned) == ("pass", False, True)


def test_unaligned_or_failing_is_fail_with_policy(dns: Resolver) -> None:
    result = dmarc(dns, "example.test", spf=("elsewhere.test", "pass"),
                   dkim=[("example.test", "fail"), ("other.test", "pass")])
    assert (result.result, result.policy, result.applied) == ("fail", "reject", "reject")
    softfail = dmarc(dns, "example.test", spf=("example.test", "softfail"))
    assert softfail.result == "fail"


def test_strict_alignment(dns: Resolver) -> None:
    assert dmarc(dns, "strict.test", spf=("mail.strict.test", "pass"),
                 dkim=[("mail.strict.test", "pass")]).result == "fail"
    assert dmarc(dns, "strict.test", spf=("strict.test", "pass")).result == "pass"
    assert dmarc(dns, "strict.test", dkim=[("STRICT.test.", "pass")]).result == "pass"


def test_subdomain_policy_from_org_record(dns: Resolver, server: DnsServer) -> None:
    server.reset_queries()
    sub = dmarc(dns, "news.example.test")
    assert (sub.result, sub.policy, sub.applied) == ("fail", "quarantine", "quarantine")
    assert sub.org_domain == "example.test"
    assert server.queries[("_dmarc.news.example.test", "TXT")] == 1
    assert server.queries[("_dmarc.example.test", "TXT")] == 1
    # The organizational domain itself gets p=, and a subdomain's own record wins over sp=.
    assert dmarc(dns, "example.test").policy == "reject"
    own = dmarc(dns, "own.example.test")
    assert (own.result, own.policy, own.applied) == ("fail", "none", "none")


def test_org_domain_discovery_uses_public_suffix_list(dns: Resolver, server: DnsServer) -> None:
    server.reset_queries()
    result = dmarc(dns, "a.b.Example.co.uk")
    assert (result.domain, result.org_domain) == ("a.b.example.co.uk", "example.co.uk")
    assert (result.result, result.policy) == ("fail", "quarantine")
    assert ("_dmarc.co.uk", "TXT") not in server.queries
    assert ("_dmarc.b.example.co.uk", "TXT") not in server.queries  # no tree walk


@pytest.mark.parametrize(("draw", "applied"), [(0.0, "reject"), (0.49, "reject"),
                                               (0.5, "quarantine"), (0.99, "quarantine")])
def test_pct_sampling(dns: Resolver, draw: float, applied: str) -> None:
    result = dmarc(dns, "half.test", rand=fixed(draw))
    assert (result.result, result.policy, result.applied) == ("fail", "reject", applied)


def test_pct_zero_and_hundred_do_not_draw(dns: Resolver) -> None:
    zero = dmarc(dns, "zero.test")
    assert (zero.policy, zero.applied) == ("quarantine", "none")
    assert dmarc(dns, "example.test").applied == "reject"
    assert dmarc(dns, "half.test", spf=("half.test", "pass")).applied == "none"


def test_no_record_is_none(dns: Resolver) -> None:
    assert dmarc(dns, "nothing.test").result == "none"
    assert dmarc(dns, "other.test").result == "none"  # TXT, but no DMARC1 record


def test_dns_failure_is_temperror(dns: Resolver) -> None:
    result = dmarc(dns, "broken.test", spf=("broken.test", "pass"))
    assert (result.result, result.policy, result.applied) == ("temperror", "none", "none")


def test_aligned_temporary_failure_is_temperror_not_fail(dns: Resolver) -> None:
    spf_later = dmarc(dns, "example.test", spf=("mail.example.test", "temperror"))
    assert (spf_later.result, spf_later.policy, spf_later.applied) == \
        ("temperror", "reject", "none")
    assert dmarc(dns, "example.test", dkim=[("example.test", "temperror")]).result == \
        "temperror"
    # Unaligned temporary failures change nothing, and an aligned pass still wins.
    assert dmarc(dns, "example.test", spf=("other.test", "temperror")).result == "fail"
    assert dmarc(dns, "example.test", spf=("example.test", "temperror"),
                 dkim=[("example.test", "pass")]).result == "pass"


def test_unusable_records(dns: Resolver) -> None:
    assert dmarc(dns, "twice.test").result == "permerror"
    assert dmarc(dns, "nop.test").result == "permerror"
    with_rua = dmarc(dns, "nop-rua.test")  # reads as p=none (section 6.6.3 step 6)
    assert (with_rua.result, with_rua.policy, with_rua.applied) == ("fail", "none", "none")


def test_parse_record() -> None:
    assert parse_record("v=DMARC1;p=Reject; SP = none ;adkim=s;aspf=x;pct=abc; foo=bar") == \
        DmarcRecord("reject", "none", "s", "r", 100)
    assert parse_record("v=DMARC1; p=quarantine; pct=7") == DmarcRecord("quarantine", pct=7)
    for bad in ("v=DMARC2; p=none", "p=none; v=DMARC1", "v=dmarc1; p=none",
                "v=DMARC1; p=reject; sp=bogus", "v=DMARC1"):
        with pytest.raises(ValueError):
            parse_record(bad)


def test_org_domain_and_alignment() -> None:
    assert org_domain("mail.example.com") == "example.com"
    assert org_domain("a.b.example.co.uk.") == "example.co.uk"
    assert org_domain("me.github.io") == "me.github.io"  # the list's private section
    assert org_domain("x.y.example.test") == "example.test"  # "*" default rule
    assert org_domain("co.uk") == "co.uk"
    assert aligned("mail.example.com", "example.com", "r")
    assert not aligned("mail.example.com", "example.com", "s")
    assert not aligned("you.github.io", "me.github.io", "r")
    assert not aligned("", "example.com", "r")


# -- the author domain --------------------------------------------------------------------

@pytest.mark.parametrize(("head", "expected"), [
    (b"Subject: x\r\nFrom: Alice <alice@Example.TEST>\r\n\r\nFrom: body@evil.test\r\n",
     AuthorDomains(("example.test",))),
    (b"from :\r\n \"Bob, Jr.\" (work)\r\n\t<bob@example.test>\r\nTo: x@y.test\r\n",
     AuthorDomains(("example.test",))),
    (b"From: =?utf-8?q?J=C3=B6rg?= <j@b\xc3\xbccher.test>\r\n",
     AuthorDomains(("xn--bcher-kva.test",))),
    (b"From: a@one.test, b@two.test, c@one.test\r\n",
     AuthorDomains(("one.test", "two.test"))),
    (b"Subject: no author\r\n\r\n", AuthorDomains(reason="no From field")),
    (b"From: undisclosed:;\r\n", AuthorDomains(reason="no mailbox in the From field")),
    (b"From: a@one.test\r\nFrom: b@two.test\r\n",
     AuthorDomains(result="permerror", reason="several From fields")),
    (b"From: ceo@bank.test <attacker@evil.test>\r\n",
     AuthorDomains(result="permerror", reason="malformed From field")),
    (b"From: a@[192.0.2.1]\r\n",
     AuthorDomains(result="permerror", reason="a From mailbox has no usable domain")),
    (b"From: nobody\r\n", AuthorDomains(result="permerror", reason="malformed From field")),
])
def test_author_domains(head: bytes, expected: AuthorDomains) -> None:
    assert author_domains(head) == expected


def test_author_domains_never_raises() -> None:
    for head in (b"From: a@\r\n", b"From: <\r\n", b"From: \"\r\n", b"From: (((\r\n",
                 b"From: a@b@c\r\n", b"From: \xff\xfe@\x00\r\n"):
        found = author_domains(head)
        assert found.result == "permerror" or found.domains


def test_evaluate_message_keeps_the_strictest_failure(dns: Resolver) -> None:
    spf = SpfResult("pass", domain="own.example.test")

    def run(head: bytes, **kw: Any) -> DmarcResult:
        return asyncio.run(evaluate_message(head, spf, [], dns, rand=never, **kw))

    # own.example.test passes, strict.test fails with p=reject: the failure stands.
    both = run(b"From: a@own.example.test, b@strict.test\r\n\r\n")
    assert (both.result, both.domain, both.applied) == ("fail", "strict.test", "reject")
    assert run(b"From: a@own.example.test\r\n\r\n").result == "pass"
    assert run(b"Subject: none\r\n\r\n") == DmarcResult("none", reason="no From field")
    assert run(b"From: a@x.test\r\nFrom: b@y.test\r\n").result == "permerror"
