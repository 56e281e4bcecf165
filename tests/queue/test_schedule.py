"""Tests for the retry schedule."""

from __future__ import annotations

import pytest

from postwright.queue import RetrySchedule


def test_back_off_doubles_up_to_the_cap() -> None:
    s = RetrySchedule(first=300, factor=2, cap=3600)
    assert [s.next_delay(n) for n in range(1, 7)] == [300, 600, 1200, 2400, 3600, 3600]
    assert s.next_delay(0) == 300
    assert s.next_delay(10_000) == 3600  # no overflow


def test_constant_schedule_and_expiry() -> None:
    s = RetrySchedule(first=60, factor=1, cap=60, lifetime=3600)
    assert s.next_delay(5) == 60
    assert not s.expired(1000.0, 4599.0)
    assert s.expired(1000.0, 4600.0)


@pytest.mark.parametrize("kwargs", [{"first": 0}, {"factor": 0.5}, {"first": 10, "cap": 5},
                                    {"lifetime": 0}])
def test_bad_parameters_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RetrySchedule(**kwargs)
