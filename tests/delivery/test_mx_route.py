"""Tests for MX route planning, with the real resolver against the loopback DNS server."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator

import pytest

from postwright.delivery.mx import Candidate, Hosts, NoRoute, Route, plan_route
from postwright.net.dns import Resolver
from postwright.testing.dnsserver import DnsServer, Records

PORT = 2525

RECORDS: Records = {
    "pref.test": {"MX": ["20 backup.pref.test.", "10 primary.pref.test."]},
    "primary.pref.test": {"A": ["127.0.0.10"]},
    "backup.pref.test": {"A": ["127.0.0.20"]},
    "equal.test": {"MX": ["10 a.equal.test.", "10 b.equal.test."]},
    "a.equal.test": {"A": ["127.0.1.1"]},
    "b.equal.test": {"A": ["127.0.1.2"]},
    "dual.test": {"MX": ["10 mx.dual.test.", "20 mx2.dual.test."]},
    "mx.dual.test": {"A": ["127.0.2.1", "127.0.2.2"], "AAAA": ["::1"]},
    "mx2.dual.test": {"AAAA": ["::2"], "A": ["127.0.2.3"]},
    "implicit.test": {"A": ["127.0.3.1"], "AAAA": ["::3"], "TXT": ["v=spf1 a -all"]},
    "nothing.test": {"TXT": ["no mail here"]},
    "null.test": {"MX": ["0 ."]},
    "lame.test": {"MX": ["5 ghost.lame.test.", "10 void.lame.test.", "20 ok.lame.test."]},
    "void.lame.test": {"TXT": ["exists, no address"]},
    "ok.lame.test": {"A": ["127.0.4.1"]},
    "allgone.test": {"MX": ["10 ghost.allgone.test.", "20 void.allgone.test."]},
    "void.allgone.test": {"TXT": ["exists, no address"]},
    "literal.test": {"MX": ["5 127.0.5.5.", "10 real.literal.test."]},
    "real.literal.test": {"A": ["127.0.5.1"]},
    "shared.test": {"MX": ["10 one.shared.test.", "20 two.shared.test."]},
    "one.shared.test": {"A": ["127.0.6.1"]},
    "two.shared.test": {"A": ["127.0.6.1", "127.0.6.2"]},
    "halfbroken.test": {"MX": ["10 sick.halfbroken.test.", "20 well.halfbroken.test."]},
    "well.halfbroken.test": {"A": ["127.0.7.2"]},
    "allbroken.test": {"MX": ["10 sick.halfbroken.test."]},
    "failing.test": {"MX": ["10 mx.failing.test."]},
    "relay.test": {"A": ["127.0.8.1"], "AAAA": ["::8"], "MX": ["10 elsewhere.test."]},
}


@pytest.fixture
def server() -> Iterator[DnsServer]:
    with DnsServer(RECORDS, servfail={"failing.test", "sick.halfbroken.test"},
                   timeout={"slow.test"}) as srv:
        yield srv
    assert srv.errors == []


@pytest.fixture
def resolver(server: DnsServer) -> Resolver:
    return Resolver([server.nameserver], timeout=0.3)


def plan(domain: str, resolver: Resolver, *, relayhost: tuple[str, int] | None = None,
         rng: random.Random | None = None) -> Route:
    return asyncio.run(plan_route(domain, resolver, port=PORT, relayhost=relayhost, rng=rng))


def hosts(route: Route) -> list[Candidate]:
    assert isinstance(route, Hosts), route
    return route.candidates


def test_mx_by_preference(resolver: Resolver) -> None:
    assert hosts(plan("pref.test", resolver)) == [
        ("primary.pref.test", "127.0.0.10", PORT),
        ("backup.pref.test", "127.0.0.20", PORT),
    ]


def test_each_mx_in_turn_ipv6_first(resolver: Resolver) -> None:
    assert hosts(plan("dual.test", resolver)) == [
        ("mx.dual.test", "::1", PORT),
        ("mx.dual.test", "127.0.2.1", PORT),
        ("mx.dual.test", "127.0.2.2", PORT),
        ("mx2.dual.test", "::2", PORT),
        ("mx2.dual.test", "127.0.2.3", PORT),
    ]


def test_equal_preference_order_comes_from_the_rng(resolver: Resolver) -> None:
    first = hosts(plan("equal.test", resolver, rng=random.Random(7)))
    again = hosts(plan("equal.test", resolver, rng=random.Random(7)))
    assert first == again
    assert {c.host for c in first} == {"a.equal.test", "b.equal.test"}


def test_equal_preference_both_orders_occur(resolver: Resolver) -> None:
    async def many() -> set[str]:
        seen = set()
        for _ in range(40):
            route = await plan_route("equal.test", resolver, port=PORT)
            seen.add(hosts(route)[0].host)
        return seen

    assert asyncio.run(many()) == {"a.equal.test", "b.equal.test"}  # 2**-39 to fail by luck


def test_implicit_mx(resolver: Resolver) -> None:
    assert hosts(plan("implicit.test", resolver)) == [
        ("implicit.test", "::3", PORT),
        ("implicit.test", "127.0.3.1", PORT),
    ]


def test_neither_mx_nor_address_is_permanent(resolver: Resolver) -> None:
    route = plan("nothing.test", resolver)
    assert isinstance(route, NoRoute) and route.permanent
    assert route.enhanced == "5.1.2"


def test_null_mx(resolver: Resolver) -> None:
    route = plan("null.test", resolver)
    assert route == NoRoute(True, "5.1.10 Recipient address has null MX")
    assert str(route.to_reply()) == "556 5.1.10 Recipient address has null MX"


def test_nxdomain(resolver: Resolver) -> None:
    route = plan("nowhere.test", resolver)
    assert route == NoRoute(True, "5.1.2 domain not found")
    assert route.to_reply().code == 550


def test_servfail_is_temporary(resolver: Resolver) -> None:
    route = plan("failing.test", resolver)
    assert route == NoRoute(False, "4.4.3 DNS lookup failed")
    assert route.to_reply().code == 451


def test_timeout_is_temporary(server: DnsServer, resolver: Resolver) -> None:
    assert plan("slow.test", resolver) == NoRoute(False, "4.4.3 DNS lookup failed")
    assert server.queries[("slow.test", "MX")] >= 1


def test_mx_hosts_without_addresses_are_skipped(resolver: Resolver) -> None:
    # ghost.lame.test does not exist, void.lame.test has no A/AAAA
    assert hosts(plan("lame.test", resolver)) == [("ok.lame.test", "127.0.4.1", PORT)]


def test_no_mx_host_with_an_address_is_temporary(resolver: Resolver) -> None:
    assert plan("allgone.test", resolver) == NoRoute(False, "4.4.4 no reachable MX hosts")


def test_mx_host_whose_lookup_fails_is_skipped(resolver: Resolver) -> None:
    assert hosts(plan("halfbroken.test", resolver)) == [
        ("well.halfbroken.test", "127.0.7.2", PORT)]
    assert plan("allbroken.test", resolver) == NoRoute(False, "4.4.3 DNS lookup failed")


def test_mx_naming_an_ip_address_is_skipped(server: DnsServer, resolver: Resolver) -> None:
    assert hosts(plan("literal.test", resolver)) == [("real.literal.test", "127.0.5.1", PORT)]
    assert ("127.0.5.5", "A") not in server.queries


def test_an_address_is_tried_once(resolver: Resolver) -> None:
    assert hosts(plan("shared.test", resolver)) == [
        ("one.shared.test", "127.0.6.1", PORT),
        ("two.shared.test", "127.0.6.2", PORT),
    ]


def test_relayhost_replaces_the_domain_lookup(server: DnsServer, resolver: Resolver) -> None:
    route = plan("pref.test", resolver, relayhost=("relay.test", 587))
    assert hosts(route) == [("relay.test", "::8", 587), ("relay.test", "127.0.8.1", 587)]
    assert set(server.queries) == {("relay.test", "AAAA"), ("relay.test", "A")}


def test_bracketed_relayhost(resolver: Resolver) -> None:
    route = plan("pref.test", resolver, relayhost=("[relay.test]", 25))
    assert [c.ip for c in hosts(route)] == ["::8", "127.0.8.1"]


def test_relayhost_ip_literal_needs_no_dns(server: DnsServer, resolver: Resolver) -> None:
    assert hosts(plan("pref.test", resolver, relayhost=("127.0.0.99", 2600))) == [
        ("127.0.0.99", "127.0.0.99", 2600)]
    assert hosts(plan("pref.test", resolver, relayhost=("[::1]", 2600))) == [
        ("::1", "::1", 2600)]
    assert server.queries == {}


def test_unresolvable_relayhost_is_temporary(resolver: Resolver) -> None:
    route = plan("pref.test", resolver, relayhost=("nowhere.test", 25))
    assert route == NoRoute(False, "4.4.4 relay host has no address")
    assert plan("pref.test", resolver, relayhost=("failing.test", 25)) == NoRoute(
        False, "4.4.3 DNS lookup failed")


def test_address_literal_domain_needs_no_dns(server: DnsServer, resolver: Resolver) -> None:
    assert hosts(plan("[127.0.0.42]", resolver)) == [("127.0.0.42", "127.0.0.42", PORT)]
    assert hosts(plan("[IPv6:::1]", resolver)) == [("::1", "::1", PORT)]
    route = plan("[not-an-address]", resolver)
    assert isinstance(route, NoRoute) and route.permanent
    assert server.queries == {}
