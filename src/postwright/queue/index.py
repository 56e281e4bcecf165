"""The in-memory index of the queue, rebuilt from journal records, and segment liveness.

:class:`QueueIndex` applies :class:`~.records.Op` values in journal order (at replay and after
each durable batch) and tracks, per segment, which messages have their current MESSAGE record
there and which older segments its records refer to. That is what decides when a closed
segment may be deleted: only when no live message lives there and none of the segments it
refers to remains, since dropping a REMOVE or STATUS record while the MESSAGE it applies to
survives would bring that message, or an old state, back at the next replay.

No I/O and no asyncio. Not an RFC topic.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, replace
from typing import Final

from .journal import RecordType
from .records import Op, QueuedMessage


# Final fields and an __init__ of its own rather than frozen=True (see protocol.address).
@dataclass(init=False, slots=True)
class Entry:
    """Where the current MESSAGE record of a queued message lives; replaced, never mutated."""

    msg: Final[QueuedMessage]
    segment: Final[int]
    offset: Final[int]
    length: Final[int]
    body_start: Final[int]  # offset of an inline body inside the record payload
    body_file: Final[bool]
    crc: Final[int | None]

    def __init__(self, msg: QueuedMessage, segment: int, offset: int, length: int,
                 body_start: int, body_file: bool, crc: int | None) -> None:
        self.msg = msg
        self.segment = segment
        self.offset = offset
        self.length = length
        self.body_start = body_start
        self.body_file = body_file
        self.crc = crc


class QueueIndex:
    def __init__(self) -> None:
        self.entries: dict[str, Entry] = {}
        self.active = -1  # the segment taking appends; -1 while replaying
        self.dirty = False  # a closed segment lost its last live message
        self._live: dict[int, set[str]] = {}
        self._live_bytes: dict[int, int] = {}
        self._refs: dict[int, set[int]] = {}

    def apply(self, op: Op, segment: int, offset: int, length: int) -> None:
        """Bring the index up to date with one durable record."""
        old = self.entries.get(op.qid)
        if old is not None and old.segment != segment:
            self._refs.setdefault(segment, set()).add(old.segment)
        if op.rtype == RecordType.MESSAGE:
            assert op.message is not None
            if old is not None:
                self._unplace(old)
            self.entries[op.qid] = Entry(op.message, segment, offset, length, op.body_start,
                                         op.body_file, op.crc)
            self._live.setdefault(segment, set()).add(op.qid)
            self._live_bytes[segment] = self._live_bytes.get(segment, 0) + length
            return
        if old is None:
            return  # about a message whose MESSAGE record is gone: nothing to do
        msg = old.msg
        if op.rtype == RecordType.STATUS:
            for i, state in op.updates.items():
                if 0 <= i < len(msg.recipients):
                    msg.recipients[i] = replace(state, recipient=msg.recipients[i].recipient)
        elif op.rtype in (RecordType.HOLD, RecordType.RELEASE):
            msg.held = op.rtype == RecordType.HOLD
        elif op.rtype == RecordType.REMOVE:
            self.drop(op.qid)

    def drop(self, qid: str) -> Entry:
        """Take a message out of the index (removed, or quarantined at start-up)."""
        entry = self.entries.pop(qid)
        self._unplace(entry)
        return entry

    def _unplace(self, entry: Entry) -> None:
        live = self._live.get(entry.segment)
        if live is not None and entry.msg.id in live:
            live.discard(entry.msg.id)
            self._live_bytes[entry.segment] -= entry.length
            if not live and entry.segment != self.active:
                self.dirty = True

    def live(self, segment: int) -> list[str]:
        """Ids whose current MESSAGE record is in ``segment``."""
        return sorted(self._live.get(segment, ()))

    def live_bytes(self, segment: int) -> int:
        return self._live_bytes.get(segment, 0)

    def blocked(self, segment: int, existing: Collection[int]) -> bool:
        """True while an older segment that ``segment``'s records refer to still exists."""
        return any(n in existing for n in self._refs.get(segment, ()))

    def forget(self, segment: int) -> None:
        """The segment has been deleted."""
        self._live.pop(segment, None)
        self._live_bytes.pop(segment, None)
        self._refs.pop(segment, None)
