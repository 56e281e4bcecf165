"""Shared fixture for the queue tests: a store factory on a temporary directory."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from postwright.queue import QueueStore


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[Callable[..., QueueStore]]:
    """Make stores on tmp_path/q; any left open are closed at the end."""
    made: list[QueueStore] = []

    def make(**kwargs: object) -> QueueStore:
        store = QueueStore(tmp_path / "q", **kwargs)  # type: ignore[arg-type]
        made.append(store)
        return store

    yield make
    for store in made:
        if store.is_open:
            store.close()
