"""The durable queue: the only hand-off between receiving and delivering.

A message is committed (body and envelope on stable storage, group-committed) before the
session answers 250; per-recipient status, retry times and holds are kept in the same journal.
See ``store.py`` for the design. Covers RFC 5321 sections 4.5.4.1 and 6.1 (retry strategy,
reliable delivery).
"""

from .body import BodyWriter
from .journal import QueueStats
from .records import (
    QueuedMessage,
    RecipientResult,
    RecipientState,
    RecoveryEvent,
    RecoveryReport,
)
from .schedule import RetrySchedule
from .store import QueueStore

__all__ = [
    "BodyWriter",
    "QueueStats",
    "QueueStore",
    "QueuedMessage",
    "RecipientResult",
    "RecipientState",
    "RecoveryEvent",
    "RecoveryReport",
    "RetrySchedule",
]
