"""Tests for the DNS resolver wrapper, against the loopback DNS server (no mocked resolver)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import pytest

from postwright.net.dns import DnsTemporaryError, MxAnswer, Resolver
from postwright.testing.dnsserver import DnsServer, Records

T = TypeVar("T")

RECORDS: Records = {
    "example.test": {"MX": ["20 mx2.example.test.", "10 mx1.example.test.",
                            "20 mx3.example.test."],
                     "TXT": ["v=spf1 mx -all", ("part one, ", "part two")]},
    "mx1.example.test": {"A": ["127.0.0.2", "127.0.0.3"], "AAAA": ["::2", "::1"]},
    "mx2.example.test": {"A": ["127.0.0.4"]},
    "null.test": {"MX": ["0 ."]},
    "mixed.test": {"MX": ["0 .", "10 mx2.example.test."]},
    "plain.test": {"A": ["127.0.0.5"]},
    "alias.test": {"CNAME": ["mx1.example.test."]},
    "mxalias.test": {"CNAME": ["example.test."]},
    "big.test": {"TXT": ["k=" + "z" * 1500]},
}


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


@pytest.fixture
def server() -> Iterator[DnsServer]:
    with DnsServer(RECORDS, servfail={"broken.test"}, timeout={"slow.test"}) as srv:
        yield srv
    assert srv.errors == []


@pytest.fixture
def resolver(server: DnsServer) -> Resolver:
    return Resolver([server.nameserver], timeout=0.4)


def test_mx_sorted_by_preference(resolver: Resolver) -> None:
    answer = run(resolver.mx("example.test"))
    assert answer == MxAnswer(hosts=((10, "mx1.example.test"), (20, "mx2.example.test"),
                                     (20, "mx3.example.test")))
    assert not (answer.null_mx or answer.nxdomain or answer.no_records)


def test_mx_through_a_cname(resolver: Resolver) -> None:
    assert run(resolver.mx("mxalias.test")).hosts[0] == (10, "mx1.example.test")


def test_null_mx(resolver: Resolver) -> None:
    answer = run(resolver.mx("null.test"))
    assert answer.null_mx and not answer.hosts and not answer.no_records


def test_root_exchange_mixed_with_real_ones_is_dropped(resolver: Resolver) -> None:
    assert run(resolver.mx("mixed.test")) == MxAnswer(hosts=((10, "mx2.example.test"),))


def test_nxdomain(resolver: Resolver) -> None:
    answer = run(resolver.mx("nowhere.test"))
    assert answer.nxdomain and not answer.no_records


def test_no_mx_records(resolver: Resolver) -> None:
    answer = run(resolver.mx("plain.test"))
    assert answer.no_records and not answer.nxdomain and not answer.null_mx


def test_impossible_name_does_not_exist_and_is_not_asked(server: DnsServer,
                                                        resolver: Resolver) -> None:
    assert run(resolver.mx("a" * 64 + ".test")).nxdomain
    assert run(resolver.mx("a..test")).nxdomain
    assert server.queries == {}


def test_addresses_ipv6_first(server: DnsServer, resolver: Resolver) -> None:
    assert run(resolver.addresses("mx1.example.test")) == ["::2", "::1", "127.0.0.2",
                                                           "127.0.0.3"]
    assert server.queries == {("mx1.example.test", "AAAA"): 1, ("mx1.example.test", "A"): 1}


def test_addresses_ipv4_only_and_cname(resolver: Resolver) -> None:
    assert run(resolver.addresses("mx2.example.test")) == ["127.0.0.4"]
    assert run(resolver.addresses("alias.test")) == ["::2", "::1", "127.0.0.2", "127.0.0.3"]


def test_addresses_empty_when_none(resolver: Resolver) -> None:
    assert run(resolver.addresses("null.test")) == []  # exists, no A/AAAA
    assert run(resolver.addresses("nowhere.test")) == []  # does not exist


def test_txt_joins_the_strings_of_each_record(resolver: Resolver) -> None:
    assert run(resolver.txt("example.test")) == ["v=spf1 mx -all", "part one, part two"]
    assert run(resolver.txt("plain.test")) == []
    assert run(resolver.txt("nowhere.test")) == []


def test_large_txt_comes_over_tcp(server: DnsServer, resolver: Resolver) -> None:
    # 1500 octets do not fit a UDP answer: truncated, then asked again over TCP
    assert run(resolver.txt("big.test")) == ["k=" + "z" * 1500]
    assert server.queries[("big.test", "TXT")] == 2


@pytest.mark.parametrize("call", ["mx", "addresses", "txt"])
def test_servfail_is_temporary(resolver: Resolver, call: str) -> None:
    with pytest.raises(DnsTemporaryError):
        run(getattr(resolver, call)("broken.test"))


def test_timeout_is_temporary_and_bounded(server: DnsServer) -> None:
    resolver = Resolver([server.nameserver], timeout=0.3)
    start = time.monotonic()
    with pytest.raises(DnsTemporaryError, match="timed out"):
        run(resolver.mx("slow.test"))
    assert time.monotonic() - start < 1.0
    assert server.queries[("slow.test", "MX")] >= 1


def test_nothing_listening_is_temporary() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))  # a port that stays silent: bound, never read
        resolver = Resolver([sock.getsockname()], timeout=0.3)
        with pytest.raises(DnsTemporaryError):
            run(resolver.mx("example.test"))


def test_second_nameserver_answers_when_the_first_fails(server: DnsServer) -> None:
    with DnsServer(servfail={"example.test"}) as failing:
        resolver = Resolver([failing.nameserver, server.nameserver], timeout=1.0)
        assert run(resolver.mx("example.test")).hosts[0] == (10, "mx1.example.test")
        assert failing.queries[("example.test", "MX")] == 1
        assert server.queries[("example.test", "MX")] == 1


def test_answers_follow_changes_without_cache(server: DnsServer, resolver: Resolver) -> None:
    assert run(resolver.addresses("mx2.example.test")) == ["127.0.0.4"]
    server.set("mx2.example.test", "A", ["127.0.0.40"])
    assert run(resolver.addresses("mx2.example.test")) == ["127.0.0.40"]


def test_optional_cache(server: DnsServer) -> None:
    resolver = Resolver([server.nameserver], timeout=0.4, cache=True)

    async def twice() -> None:
        assert (await resolver.mx("example.test")).hosts
        assert (await resolver.mx("example.test")).hosts

    run(twice())
    assert server.queries[("example.test", "MX")] == 1


def test_timeout_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Resolver([("127.0.0.1", 53)], timeout=0)
