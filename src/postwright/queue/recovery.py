"""Start-up recovery of the queue: replay the journal, cut torn tails, quarantine damage.

:func:`replay` feeds every valid record of every segment, in order, to a :class:`QueueIndex`.
A damaged span at the end of the last segment is a write that never completed (and was never
acknowledged): it is cut off. Any other damaged span, or a record that validates but does not
decode, is copied to ``quarantine/`` and scanning resumes at the next valid record, so the rest
of the queue still loads. :func:`check_bodies` quarantines messages whose body file is missing
or truncated; :func:`clean_directories` removes unfinished and orphaned body files. In
read-only mode nothing on disk changes; the report says what was found.

Not here: opening, locking, writing new records (``store.py``). Not an RFC topic.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from . import journal
from .index import QueueIndex
from .journal import Damage
from .records import RecoveryEvent, RecoveryReport, decode


@dataclass(frozen=True)
class Layout:
    """The directories of one queue."""

    root: Path

    @property
    def segments(self) -> Path:
        return self.root / "segments"

    @property
    def bodies(self) -> Path:
        return self.root / "bodies"

    @property
    def incoming(self) -> Path:
        return self.root / "incoming"

    @property
    def quarantine(self) -> Path:
        return self.root / "quarantine"

    def segment(self, number: int) -> Path:
        return self.segments / journal.segment_name(number)


def replay(layout: Layout, index: QueueIndex, report: RecoveryReport, *, readonly: bool) -> None:
    numbers = journal.list_segments(layout.segments)
    report.segments = len(numbers)
    for n, number in enumerate(numbers):
        path = layout.segment(number)
        last = n == len(numbers) - 1
        cut: int | None = None
        try:
            for item in journal.scan(path):
                if isinstance(item, Damage):
                    if _damaged(layout, path, item, last, report, readonly):
                        cut = item.offset
                    continue
                try:
                    op = decode(item.rtype, item.payload)
                except ValueError as exc:
                    bad = Damage(item.offset, item.length, f"bad record: {exc}", False)
                    _damaged(layout, path, bad, last, report, readonly)
                    continue
                index.apply(op, number, item.offset, item.length)
                report.records += 1
        except FileNotFoundError:
            continue  # deleted by the running server meanwhile (read-only replay)
        if cut is not None and not readonly:
            journal.truncate(path, cut)


def _damaged(layout: Layout, path: Path, damage: Damage, last: bool, report: RecoveryReport,
             readonly: bool) -> bool:
    """Deal with one damaged span; True if the segment must be cut at its offset."""
    if damage.tail and last:
        report.truncated_bytes += damage.length
        report.events.append(RecoveryEvent("truncated", path.name, damage.offset,
                                           damage.length, f"torn tail: {damage.reason}"))
        return True
    target = layout.quarantine / f"{path.stem}-{damage.offset:012d}.bad"
    kind = "quarantined"
    if target.exists() and target.stat().st_size == damage.length:
        kind = "known"  # quarantined at an earlier start; the segment still holds it
    elif not readonly:
        journal.copy_span(path, damage.offset, damage.length, target)
    if kind == "quarantined":
        report.quarantined += 1
    report.events.append(RecoveryEvent(kind, path.name, damage.offset, damage.length,
                                       damage.reason, path=None if readonly else str(target)))
    return damage.tail


def check_bodies(layout: Layout, index: QueueIndex, report: RecoveryReport, *,
                 readonly: bool) -> list[str]:
    """Quarantine messages whose body file is missing or has the wrong size; their ids."""
    broken = []
    for qid, entry in list(index.entries.items()):
        if not entry.body_file:
            continue
        try:
            size = os.stat(layout.bodies / qid).st_size
        except FileNotFoundError:
            size = -1
        if size == entry.msg.size:
            continue
        reason = "body file missing" if size < 0 else f"body file has {size} bytes"
        target = layout.quarantine / f"{qid}.record"
        if not readonly:
            journal.copy_span(layout.segment(entry.segment), entry.offset, entry.length, target)
            if size >= 0:
                os.replace(layout.bodies / qid, layout.quarantine / f"{qid}.body")
        report.quarantined += 1
        report.events.append(RecoveryEvent("quarantined", journal.segment_name(entry.segment),
                                           entry.offset, entry.length, reason, qid=qid,
                                           path=None if readonly else str(target)))
        broken.append(qid)
        index.drop(qid)
    return broken


def clean_directories(layout: Layout, index: QueueIndex, report: RecoveryReport) -> None:
    """Delete unfinished bodies; set aside body files no queued message refers to."""
    for name in os.listdir(layout.incoming):
        os.unlink(layout.incoming / name)
        report.incoming_removed += 1
    damaged = report.quarantined > 0
    for name in os.listdir(layout.bodies):
        entry = index.entries.get(name)
        if entry is not None and entry.body_file:
            continue
        if damaged:  # it may belong to a quarantined record: keep it for the operator
            os.replace(layout.bodies / name, layout.quarantine / f"{name}.orphan")
        else:
            os.unlink(layout.bodies / name)
        report.orphan_bodies += 1
