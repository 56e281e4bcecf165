"""When to try a deferred recipient again, and when to give up.

Exponential back-off: ``first`` seconds after the first failed attempt, multiplied by
``factor`` after each further one, never more than ``cap``; a message older than ``lifetime``
has expired (the delivery manager then bounces it). Deterministic (no jitter), no clock:
times are passed in. Follows the advice of RFC 5321 section 4.5.4.1 (retry at least 30 minutes
apart by default, give up after 4-5 days).
"""

from __future__ import annotations

import math


class RetrySchedule:
    def __init__(self, first: float = 300, factor: float = 2.0, cap: float = 3600,
                 lifetime: float = 5 * 86400) -> None:
        if first <= 0 or factor < 1 or cap < first or lifetime <= 0:
            raise ValueError("retry schedule needs first > 0, factor >= 1, cap >= first, "
                             "lifetime > 0")
        self.first = float(first)
        self.factor = float(factor)
        self.cap = float(cap)
        self.lifetime = float(lifetime)

    def next_delay(self, attempts: int) -> float:
        """Seconds to wait after the ``attempts``-th failed attempt (1 for the first)."""
        steps = max(0, attempts - 1)
        if self.factor == 1.0 or steps == 0:
            return min(self.cap, self.first)
        # first * factor**steps, without overflowing for a large number of attempts
        if steps * math.log(self.factor) >= math.log(self.cap / self.first):
            return self.cap
        return min(self.cap, self.first * self.factor ** steps)

    def expired(self, arrived: float, now: float) -> bool:
        """True once a message that arrived at ``arrived`` is too old to keep retrying."""
        return now - arrived >= self.lifetime

    def __repr__(self) -> str:
        return (f"RetrySchedule(first={self.first}, factor={self.factor}, cap={self.cap}, "
                f"lifetime={self.lifetime})")
