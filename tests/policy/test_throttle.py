"""Tests for the authentication throttle and the connection rate limit, with explicit times."""

from __future__ import annotations

import pytest

from postwright.policy.throttle import AuthThrottle, ConnectionRate, client_key


@pytest.mark.parametrize("given, expected", [
    ("192.0.2.7", "192.0.2.7"),
    ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
    ("[2001:db8:1:2::ffff]", "2001:db8:1:2::/64"),
    ("fe80::1%eth0", "fe80::/64"),
    ("::ffff:192.0.2.7", "192.0.2.7"),
    ("/run/postwright.sock", "/run/postwright.sock"),
])
def test_client_key(given: str, expected: str) -> None:
    assert client_key(given) == expected


def test_no_failures_no_delay_not_blocked() -> None:
    t = AuthThrottle()
    assert t.delay("192.0.2.1", "alice@example.test", 0.0) == 0.0
    assert not t.blocked("192.0.2.1", "alice@example.test", 0.0)
    assert not t.blocked("192.0.2.1", None, 0.0)


def test_delay_doubles_and_is_capped() -> None:
    t = AuthThrottle(base_delay=1.0, max_delay=30.0)
    seen = []
    for i in range(8):
        t.failure("192.0.2.1", None, float(i))
        seen.append(t.delay("192.0.2.1", None, float(i)))
    assert seen == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]


def test_delay_uses_the_worse_of_client_and_account() -> None:
    t = AuthThrottle()
    for i in range(4):
        t.failure(f"192.0.2.{i}", "alice@example.test", 10.0)
    assert t.delay("198.51.100.9", "alice@example.test", 11.0) == 8.0
    assert t.delay("198.51.100.9", "bob@example.test", 11.0) == 0.0
    assert t.delay("192.0.2.0", None, 11.0) == 1.0


def test_client_blocked_at_limit_and_released_by_sliding_window() -> None:
    t = AuthThrottle(window=100.0, per_client=3)
    t.failure("192.0.2.1", None, 0.0)
    t.failure("192.0.2.1", "a", 10.0)
    assert not t.blocked("192.0.2.1", None, 10.0)
    t.failure("192.0.2.1", "b", 20.0)
    assert t.blocked("192.0.2.1", None, 20.0)
    assert t.blocked("192.0.2.1", "someone-else", 99.0)
    assert not t.blocked("192.0.2.2", None, 20.0)
    assert not t.blocked("192.0.2.1", None, 100.0)  # the failure at 0 has left the window
    assert t.delay("192.0.2.1", None, 100.0) == 2.0
    assert t.delay("192.0.2.1", None, 120.0) == 0.0


def test_account_blocked_across_clients_case_insensitively() -> None:
    t = AuthThrottle(per_client=100, per_account=3)
    t.failure("192.0.2.1", "Alice@Example.test", 1.0)
    t.failure("198.51.100.1", "alice@example.TEST", 2.0)
    assert not t.blocked("203.0.113.1", "ALICE@example.test", 2.0)
    t.failure("2001:db8::1", "alice@example.test", 3.0)
    assert t.blocked("203.0.113.1", "ALICE@example.test", 3.0)
    assert not t.blocked("203.0.113.1", None, 3.0)
    assert not t.blocked("203.0.113.1", "bob@example.test", 3.0)


def test_ipv6_counted_per_64() -> None:
    t = AuthThrottle(per_client=2)
    t.failure("2001:db8:0:1::1", None, 0.0)
    t.failure("2001:db8:0:1:ffff::2", None, 1.0)
    assert t.blocked("2001:db8:0:1::abcd", None, 1.0)
    assert not t.blocked("2001:db8:0:2::1", None, 1.0)


def test_ipv4_counted_per_address() -> None:
    t = AuthThrottle(per_client=2)
    t.failure("192.0.2.1", None, 0.0)
    t.failure("192.0.2.2", None, 0.0)
    assert not t.blocked("192.0.2.1", None, 0.0)
    assert not t.blocked("192.0.2.2", None, 0.0)


def test_success_clears_client_but_not_account() -> None:
    t = AuthThrottle(per_client=3, per_account=3)
    for i in range(3):
        t.failure("192.0.2.1", "alice", float(i))
    assert t.blocked("192.0.2.1", None, 3.0)
    t.success("192.0.2.1", "alice", 3.0)
    assert not t.blocked("192.0.2.1", None, 3.0)
    assert t.delay("192.0.2.1", None, 3.0) == 0.0
    assert t.blocked("198.51.100.1", "alice", 3.0)


def test_memory_bounded_per_key_and_stale_keys_swept() -> None:
    t = AuthThrottle(window=10.0, per_client=5, per_account=5)
    for i in range(1000):
        t.failure("192.0.2.1", "alice", i / 1000)
    assert t.blocked("192.0.2.1", "alice", 1.0)
    assert len(t._clients._events["192.0.2.1"]) == 5  # only what the limit needs
    for i in range(50):
        t.failure(f"198.51.100.{i}", f"user{i}", 1.0)
    assert t.tracked == (51, 51)
    t.failure("203.0.113.1", None, 100.0)  # everything else is older than the window
    assert t.tracked == (1, 0)


def test_key_cap_evicts_least_recently_touched() -> None:
    t = AuthThrottle(per_client=2, max_keys=3)
    for i, ip in enumerate(["192.0.2.1", "192.0.2.2", "192.0.2.3"]):
        t.failure(ip, None, float(i))
    t.failure("192.0.2.1", None, 3.0)  # touched again: now the most recent
    t.failure("192.0.2.4", None, 4.0)  # evicts 192.0.2.2
    assert t.tracked[0] == 3
    assert t.blocked("192.0.2.1", None, 4.0)
    assert t.delay("192.0.2.2", None, 4.0) == 0.0
    assert t.delay("192.0.2.3", None, 4.0) == 1.0


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        AuthThrottle(per_client=0)
    with pytest.raises(ValueError):
        AuthThrottle(window=0)
    with pytest.raises(ValueError):
        AuthThrottle(base_delay=-1)
    with pytest.raises(ValueError):
        ConnectionRate(per_client=0)


def test_connection_rate_sliding_window() -> None:
    r = ConnectionRate(window=60.0, per_client=3)
    assert [r.allow("192.0.2.1", t) for t in (0.0, 10.0, 20.0, 30.0)] == [
        True, True, True, False]
    assert r.allow("192.0.2.2", 30.0)  # other clients unaffected
    assert not r.allow("192.0.2.1", 59.9)
    assert r.allow("192.0.2.1", 60.0)  # the connection at 0 has left the window
    assert not r.allow("192.0.2.1", 60.0)
    assert r.allow("192.0.2.1", 70.0)


def test_connection_rate_ipv6_per_64_and_bounded() -> None:
    r = ConnectionRate(window=1.0, per_client=2, max_keys=10)
    assert r.allow("2001:db8::1", 0.0)
    assert r.allow("2001:db8::2", 0.0)
    assert not r.allow("2001:db8::ffff:3", 0.0)
    for i in range(100):
        r.allow(f"192.0.2.{i}", 0.5)
    assert r.tracked == 10
    r.allow("198.51.100.1", 5.0)
    assert r.tracked == 1
