"""Brakes on password guessing and connection floods: sliding-window counters, no I/O.

:class:`AuthThrottle` counts failed AUTH attempts per client network and per account over a
sliding window. It tells the session how long to wait before answering a failure (doubling
with each recent failure, capped) and when to stop listening altogether (the session then
answers 421 4.7.0 and closes, RFC 4954 section 6 leaves the policy to the server).
:class:`ConnectionRate` counts accepted connections per client network.

Clients are keyed by IPv4 address and by IPv6 /64 (one customer's allocation; an IPv4-mapped
IPv6 address counts as the IPv4 address); anything that is not an IP address is keyed as given.
Account names are compared case-insensitively.

Time is passed in as ``now`` (seconds, any monotonic origin); nothing here sleeps or reads a
clock. Memory is bounded: each key keeps at most as many timestamps as its limit, stale keys are
swept as time moves on, and the number of keys is capped (least recently touched evicted).
It does not decide what to log or which reply text to send.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict, deque

__all__ = ["AuthThrottle", "ConnectionRate", "client_key"]

MAX_KEYS = 100_000


def client_key(client: str) -> str:
    """The counting key for a peer address: IPv4 as is, IPv6 by /64."""
    text = client.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    text = text.split("%", 1)[0]  # an IPv6 zone id names a local interface, not the peer
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return client.strip().lower()
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.IPv6Network((int(addr) >> 64 << 64, 64)))
    return str(addr)


class _Window:
    """Timestamps per key within ``window`` seconds, at most ``limit`` kept per key."""

    def __init__(self, window: float, limit: int, max_keys: int) -> None:
        self.window = window
        self.limit = limit
        self.max_keys = max_keys
        self._events: OrderedDict[str, deque[float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._events)

    def count(self, key: str, now: float) -> int:
        events = self._events.get(key)
        if events is None:
            return 0
        horizon = now - self.window
        while events and events[0] <= horizon:
            events.popleft()
        if not events:
            del self._events[key]
            return 0
        return len(events)

    def add(self, key: str, now: float) -> None:
        events = self._events.get(key)
        if events is None:
            events = self._events[key] = deque(maxlen=self.limit)
        else:
            self._events.move_to_end(key)
        events.append(now)
        self.sweep(now)

    def clear(self, key: str) -> None:
        self._events.pop(key, None)

    def sweep(self, now: float) -> None:
        """Drop keys whose newest event has left the window, then enforce the key cap.

        Keys are kept in order of last addition, so stale ones gather at the front.
        """
        horizon = now - self.window
        while self._events:
            key, events = next(iter(self._events.items()))
            if events and events[-1] > horizon and len(self._events) <= self.max_keys:
                break
            del self._events[key]


class AuthThrottle:
    """Counts authentication failures per client network and per account."""

    def __init__(self, *, window: float = 900.0, per_client: int = 10, per_account: int = 20,
                 base_delay: float = 1.0, max_delay: float = 30.0,
                 max_keys: int = MAX_KEYS) -> None:
        if window <= 0 or per_client < 1 or per_account < 1 or max_keys < 1:
            raise ValueError("window, limits and max_keys must be positive")
        if base_delay < 0 or max_delay < 0:
            raise ValueError("delays must not be negative")
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.per_client = per_client
        self.per_account = per_account
        self._clients = _Window(window, per_client, max_keys)
        self._accounts = _Window(window, per_account, max_keys)

    def _counts(self, client: str, account: str | None, now: float) -> tuple[int, int]:
        by_client = self._clients.count(client_key(client), now)
        by_account = self._accounts.count(account.casefold(), now) if account else 0
        return by_client, by_account

    def delay(self, client: str, account: str | None, now: float) -> float:
        """Seconds to wait before answering a failure; 0 when there are no recent failures.

        ``base_delay * 2**(n-1)``, capped at ``max_delay``, where n is the larger of the
        client's and the account's recent failure counts (the current one included once it
        has been recorded with :meth:`failure`).
        """
        n = max(self._counts(client, account, now))
        if n == 0:
            return 0.0
        return float(min(self.max_delay, self.base_delay * 2.0 ** min(n - 1, 64)))

    def blocked(self, client: str, account: str | None, now: float) -> bool:
        """True once recent failures reach ``per_client`` or (for the account) ``per_account``."""
        by_client, by_account = self._counts(client, account, now)
        return by_client >= self.per_client or by_account >= self.per_account

    def failure(self, client: str, account: str | None, now: float) -> None:
        """Record one failed attempt (``account`` None when no name was given)."""
        self._clients.add(client_key(client), now)
        if account:
            self._accounts.add(account.casefold(), now)
        else:
            self._accounts.sweep(now)

    def success(self, client: str, account: str | None, now: float) -> None:
        """Forget the client's failures; the account's stay, as they may come from elsewhere."""
        self._clients.clear(client_key(client))

    @property
    def tracked(self) -> tuple[int, int]:
        """How many client keys and account keys are held (for tests and metrics)."""
        return len(self._clients), len(self._accounts)


class ConnectionRate:
    """Accepted connections per client network in a sliding window."""

    def __init__(self, *, window: float = 60.0, per_client: int = 60,
                 max_keys: int = MAX_KEYS) -> None:
        if window <= 0 or per_client < 1 or max_keys < 1:
            raise ValueError("window, per_client and max_keys must be positive")
        self._window = _Window(window, per_client, max_keys)

    def allow(self, client: str, now: float) -> bool:
        """Count this connection and return True, or return False (not counted) when over."""
        key = client_key(client)
        if self._window.count(key, now) >= self._window.limit:
            return False
        self._window.add(key, now)
        return True

    @property
    def tracked(self) -> int:
        """How many client keys are held."""
        return len(self._window)
