"""Tests for SPF evaluation, against the loopback DNS server through the real resolver."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import pytest

from postwright.net.dns import DnsTemporaryError, Resolver
from postwright.policy.spf import SpfCheck, SpfResult, check, check_host
from postwright.testing.dnsserver import DnsServer, Records

T = TypeVar("T")

INCLUDES = {f"i{n}.example.test": {"TXT": [f"v=spf1 include:i{n + 1}.example.test"]}
            for n in range(12)}
HOSTS = {f"h{n}.example.test": {"A": ["192.0.2.200"]} for n in range(12)}

RECORDS: Records = {
    "example.test": {"TXT": ["google-site-verification=abc", "v=spf1 ip4:192.0.2.0/28 "
                             "a:mail.example.test mx ~all"],
                     "MX": ["10 mx.example.test."]},
    "mail.example.test": {"A": ["192.0.2.50"], "AAAA": ["2001:db8::50"]},
    "mx.example.test": {"A": ["192.0.2.60"], "AAAA": ["2001:db8::60"],
                        "TXT": ["v=spf1 a -all"]},
    "hard.test": {"TXT": ["v=spf1 ip4:192.0.2.1 -all exp=why.hard.test"]},
    "why.hard.test": {"TXT": ["%{c} may not send for %{d} as %{L} (to %{r} at %{t})"]},
    "neutral.test": {"TXT": ["v=spf1 ip4:192.0.2.1"]},
    "v6.test": {"TXT": ["v=spf1 ip6:2001:db8:1::/48 a:mail.example.test//64 -all"]},
    "inc.test": {"TXT": ["v=spf1 include:example.test -all"]},
    "inc-none.test": {"TXT": ["v=spf1 include:nothing.test -all"]},
    "redir.test": {"TXT": ["v=spf1 redirect=hard.test"]},
    "redir-all.test": {"TXT": ["v=spf1 redirect=hard.test ?all"]},
    "two.test": {"TXT": ["v=spf1 -all", "v=spf1 +all"]},
    "spf10.test": {"TXT": ["v=spf10 -all"]},
    "syntax.test": {"TXT": ["v=spf1 ip4:192.0.2.1 a:bad_end. -all"]},
    "loop.test": {"TXT": ["v=spf1 include:loop.test -all"]},
    "chain.test": {"TXT": ["v=spf1 include:i0.example.test -all"]},
    "ten.test": {"TXT": [" ".join(["v=spf1"] + [f"a:h{n}.example.test" for n in range(10)]
                                  + ["ip4:192.0.2.1", "-all"])]},
    "eleven.test": {"TXT": [" ".join(["v=spf1"] + [f"a:h{n}.example.test" for n in range(11)]
                                     + ["ip4:192.0.2.1", "-all"])]},
    "void2.test": {"TXT": ["v=spf1 a:n1.void.test a:n2.void.test ip4:192.0.2.1 -all"]},
    "void3.test": {"TXT": ["v=spf1 a:n1.void.test a:n2.void.test a:n3.void.test "
                           "ip4:192.0.2.1 -all"]},
    "manymx.test": {"TXT": ["v=spf1 mx -all"],
                    "MX": [f"{n} h{n}.example.test." for n in range(11)]},
    "broken-a.test": {"TXT": ["v=spf1 a:broken.test -all"]},
    "slow-a.test": {"TXT": ["v=spf1 a:slow.test -all"]},
    "ptr.test": {"TXT": ["v=spf1 ptr -all"]},
    "host.ptr.test": {"A": ["192.0.2.77"]},
    "77.2.0.192.in-addr.arpa": {"PTR": ["host.ptr.test."]},
    "78.2.0.192.in-addr.arpa": {"PTR": ["liar.ptr.test."]},
    "liar.ptr.test": {"A": ["192.0.2.99"]},
    "exists.test": {"TXT": ["v=spf1 exists:%{ir}.%{l1-}.lists.exists.test -all"]},
    "1.2.0.192.bob.lists.exists.test": {"A": ["127.0.0.2"]},
    "helo.example.test": {"TXT": ["v=spf1 a -all"], "A": ["192.0.2.20"]},
    **INCLUDES,
    **HOSTS,
}


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


@pytest.fixture(scope="module")
def server() -> Iterator[DnsServer]:
    with DnsServer(RECORDS, servfail={"broken.test", "servfail.test"},
                   timeout={"slow.test"}) as srv:
        yield srv
    assert srv.errors == []


@pytest.fixture
def dns(server: DnsServer) -> Resolver:
    return Resolver([server.nameserver], timeout=0.5)


def spf(dns: Resolver, ip: str, domain: str, local: str = "bob", **kw: Any) -> SpfResult:
    return run(check_host(ip, domain, f"{local}@{domain}", "helo.example.test", dns, **kw))


@pytest.mark.parametrize(("ip", "result"), [
    ("192.0.2.3", "pass"),  # ip4 network
    ("192.0.2.50", "pass"),  # a:mail.example.test
    ("192.0.2.60", "pass"),  # mx
    ("198.51.100.1", "softfail"),
    ("::ffff:192.0.2.50", "pass"),  # an IPv4-mapped client is an IPv4 client
    ("2001:db8::60", "pass"),  # mx, AAAA
    ("2001:db8::61", "softfail"),
])
def test_mechanisms(dns: Resolver, ip: str, result: str) -> None:
    outcome = spf(dns, ip, "example.test")
    assert (outcome.result, outcome.domain, outcome.scope) == (result, "example.test", "mfrom")


def test_ip6_and_dual_cidr(dns: Resolver) -> None:
    assert spf(dns, "2001:db8:1:ffff::1", "v6.test").result == "pass"
    assert spf(dns, "2001:db8::ffff", "v6.test").result == "pass"  # 2001:db8::50 within /64
    assert spf(dns, "2001:db8:0:1::50", "v6.test").result == "fail"
    assert spf(dns, "192.0.2.50", "v6.test").result == "pass"  # an IPv4 client: A, /32
    assert spf(dns, "192.0.2.51", "v6.test").result == "fail"


def test_none_neutral_and_record_selection(dns: Resolver) -> None:
    assert spf(dns, "192.0.2.9", "nothing.test").result == "none"  # NXDOMAIN
    assert spf(dns, "192.0.2.9", "mail.example.test").result == "none"  # no TXT at all
    assert spf(dns, "192.0.2.9", "spf10.test").result == "none"
    assert spf(dns, "192.0.2.9", "neutral.test").result == "neutral"
    assert spf(dns, "192.0.2.9", "localhost").result == "none"  # not a multi-label name
    two = spf(dns, "192.0.2.9", "two.test")
    assert two.result == "permerror" and "several" in two.reason


def test_syntax_error_anywhere_is_permerror(dns: Resolver) -> None:
    # The address matches the first term, but the record is judged whole before evaluation.
    assert spf(dns, "192.0.2.1", "syntax.test").result == "permerror"


def test_fail_explanation_with_exp_only_macros(dns: Resolver, server: DnsServer) -> None:
    server.reset_queries()
    outcome = spf(dns, "198.51.100.7", "hard.test", local="Jo&Co", receiver="mx.ours.test",
                  now=1234567890.9)
    assert outcome.result == "fail"
    assert outcome.explanation == ("198.51.100.7 may not send for hard.test as Jo%26Co "
                                   "(to mx.ours.test at 1234567890)")
    assert spf(dns, "192.0.2.1", "hard.test").explanation == ""
    assert server.queries[("why.hard.test", "TXT")] == 1  # not fetched for the pass


def test_include_and_redirect(dns: Resolver) -> None:
    assert spf(dns, "192.0.2.50", "inc.test").result == "pass"
    assert spf(dns, "198.51.100.1", "inc.test").result == "fail"  # included ~all: no match
    assert spf(dns, "192.0.2.50", "inc-none.test").result == "permerror"
    redirected = spf(dns, "198.51.100.1", "redir.test")
    assert redirected.result == "fail"  # the target's exp is used, with %{d} the target
    assert redirected.explanation.startswith("198.51.100.1 may not send for hard.test as")
    assert spf(dns, "198.51.100.1", "redir-all.test").result == "neutral"  # all wins


def test_dns_term_limit(dns: Resolver) -> None:
    assert spf(dns, "192.0.2.1", "ten.test").result == "pass"
    eleven = spf(dns, "192.0.2.1", "eleven.test")
    assert eleven.result == "permerror" and "more than 10" in eleven.reason
    assert spf(dns, "192.0.2.1", "loop.test").result == "permerror"
    assert spf(dns, "192.0.2.1", "chain.test").result == "permerror"


def test_void_lookup_limit(dns: Resolver) -> None:
    assert spf(dns, "192.0.2.1", "void2.test").result == "pass"
    void3 = spf(dns, "192.0.2.1", "void3.test")
    assert void3.result == "permerror" and "void" in void3.reason


def test_mx_with_more_than_ten_hosts(dns: Resolver) -> None:
    assert spf(dns, "192.0.2.200", "manymx.test").result == "permerror"


def test_dns_failures_are_temperror(dns: Resolver) -> None:
    assert spf(dns, "192.0.2.1", "servfail.test").result == "temperror"
    assert spf(dns, "192.0.2.1", "broken-a.test").result == "temperror"
    slow = spf(dns, "192.0.2.1", "slow-a.test")
    assert slow.result == "temperror"


def test_overall_time_budget(server: DnsServer) -> None:
    patient = Resolver([server.nameserver], timeout=5.0)
    outcome = spf(patient, "192.0.2.1", "slow-a.test", timeout=0.3)
    assert outcome.result == "temperror" and "0.3" in outcome.reason


def test_ptr_mechanism(dns: Resolver) -> None:
    assert spf(dns, "192.0.2.77", "ptr.test").result == "pass"
    assert spf(dns, "192.0.2.78", "ptr.test").result == "fail"  # PTR does not resolve back
    assert spf(dns, "192.0.2.79", "ptr.test").result == "fail"  # no PTR at all


def test_exists_with_transformed_macros(dns: Resolver) -> None:
    # %{ir} reverses the address; %{l1-} splits "x-bob" on "-" and keeps the last part.
    assert spf(dns, "192.0.2.1", "exists.test", local="x-bob").result == "pass"
    assert spf(dns, "192.0.2.1", "exists.test", local="x-alice").result == "fail"


def test_check_both_identities(dns: Resolver) -> None:
    both = run(check("192.0.2.20", "bob@example.test", "helo.example.test", dns))
    assert both == SpfCheck(SpfResult("softfail", domain="example.test"),
                            SpfResult("pass", domain="helo.example.test", scope="helo"))


def test_null_sender_uses_postmaster_at_helo(dns: Resolver, server: DnsServer) -> None:
    server.reset_queries()
    both = run(check("192.0.2.6", "", "helo.example.test", dns))
    assert both.mfrom == SpfResult("fail", domain="helo.example.test", scope="mfrom")
    assert both.helo == SpfResult("fail", domain="helo.example.test", scope="helo")
    assert server.queries[("helo.example.test", "TXT")] == 1  # one check serves both


def test_helo_literal_or_bare_name_is_none(dns: Resolver) -> None:
    assert run(check("192.0.2.6", "", "[192.0.2.6]", dns)).helo.result == "none"
    assert run(check("192.0.2.6", "", "workstation", dns)).mfrom.result == "none"


def test_bad_client_address_is_the_callers_bug(dns: Resolver) -> None:
    with pytest.raises(ValueError):
        spf(dns, "not-an-ip", "example.test")


def test_resolver_address_and_ptr_lookups(dns: Resolver, server: DnsServer) -> None:
    assert run(dns.a("mail.example.test")) == ["192.0.2.50"]
    assert run(dns.aaaa("mail.example.test")) == ["2001:db8::50"]
    assert run(dns.a("nothing.test")) == [] and run(dns.aaaa("host.ptr.test")) == []
    assert run(dns.ptr("192.0.2.77")) == ["host.ptr.test"]
    assert run(dns.ptr("2001:db8::1")) == []
    with pytest.raises(DnsTemporaryError):
        run(dns.a("broken.test"))
    with pytest.raises(ValueError):
        run(dns.ptr("bogus"))
