"""The durable queue: messages, their envelopes and per-recipient status, on local disk.

"250 means durable": :meth:`QueueStore.commit` returns only once the body and envelope are
on stable storage. Records pending at the end of an event-loop turn are written with one
writev and a child process (``syncer.py``) is asked to fdatasync them; batches written while
a sync runs share the next one (group commit, pipelined), so many sessions ending DATA at
once share one sync and none waits for a sync that started before its record was written.
Large bodies are streamed to files and never held whole in memory. At :meth:`QueueStore.open`
the journal is replayed into an in-memory index; torn tails are cut, damaged records are
quarantined and the rest still loads. Old segments are deleted or compacted.

Not here: deciding bounces or retries beyond the schedule (the delivery manager does), sockets,
clocks (``now`` is passed in). Covers the storage duty of RFC 5321 sections 4.5.4.1 and 6.1.
Value types and record payloads live in ``records.py``, body files in ``body.py``, the
index in ``index.py``, start-up repair in ``recovery.py``, framing in ``journal.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import io
import logging
import os
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, BinaryIO, Final

from ..envelope import Envelope
from ..errors import QueueError
from . import journal, recovery
from .body import BodyWriter
from .index import Entry, QueueIndex
from .journal import AppendResult, Journal, QueueStats, RecordType
from .records import (
    FINAL,
    Op,
    QueuedMessage,
    RecipientResult,
    RecipientState,
    RecoveryReport,
    encode,
)
from .schedule import RetrySchedule
from .sync import Syncer, SyncerGone

_MAX_BATCH_RECORDS: Final = 1024
_MAX_BATCH_BYTES: Final = 4 * 1024 * 1024
_RECENT_BYTES: Final = 16 * 1024 * 1024  # small bodies kept in memory between commit and delivery
_ALPHABET: Final = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford base32: ASCII order = value
# Every pair of digits: an 80-bit id is 8 table look-ups rather than 16 shifts and masks.
_DIGIT_PAIRS: Final = [a + b for a in _ALPHABET for b in _ALPHABET]
_RANDOM_BLOCK: Final = 128  # random id starts fetched per os.urandom call


log: Final = logging.getLogger("postwright.queue")

# Told once a record is durable and applied (None) or will not be (the error).
Settled = Callable[[QueueError | None], None]


class _Pending:
    """One record on its way to the journal, and who waits for it: a future (an awaiting
    task) or a callback, called straight from the loop callback that learns the outcome."""

    __slots__ = ("data", "op", "future", "callback", "body_dir")

    def __init__(self, data: bytes, op: Op, future: asyncio.Future[None] | None,
                 callback: Settled | None, body_dir: bool) -> None:
        self.data = data
        self.op = op
        self.future = future
        self.callback = callback
        self.body_dir = body_dir

    def settle(self, error: QueueError | None) -> None:
        callback = self.callback
        if callback is not None:
            self.callback = None
            try:
                callback(error)
            except Exception:  # never let one waiter stop the others being settled
                log.exception("queue commit callback failed", extra={"event": "error"})
            return
        future = self.future
        if future is not None and not future.done():
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(error)


class _Slot:
    """The lock of one message, taken by whoever made the slot: a FIFO of the futures of
    those waiting for it (asyncio.Lock is interpreted code, and nearly every take of one of
    these finds it free)."""

    __slots__ = ("waiters",)

    def __init__(self) -> None:
        self.waiters: deque[asyncio.Future[None]] = deque()


class QueueStore:
    """One queue directory. Open it with :meth:`open` before use.

    The CLI, when no server holds the queue, calls the async methods with ``asyncio.run``
    (``asyncio.run(store.hold(qid))``); each call finishes its writes before returning.
    """

    def __init__(self, directory: Path, *, spill_threshold: int = 256 * 1024,
                 segment_size: int = 64 * 1024 * 1024, commit_window: float = 0.0,
                 schedule: RetrySchedule | None = None) -> None:
        self.directory = Path(directory)
        self.spill_threshold = spill_threshold
        self.segment_size = segment_size
        self.commit_window = commit_window
        self.schedule = schedule or RetrySchedule()
        self.stats = QueueStats()
        self.readonly = False
        self._layout = recovery.Layout(self.directory)
        self._bodies = self._layout.bodies
        self._incoming = self._layout.incoming
        self._segment_paths: dict[int, Path] = {}
        # Small bodies just committed, kept for their delivery: most are read back within
        # milliseconds, and this spares a read (and its CRC check) of the journal.
        self._recent: dict[str, bytes] = {}
        self._recent_bytes = 0
        self._index = QueueIndex()
        self._journal: Journal | None = None
        self._syncer = Syncer()  # its process starts with the first write
        self._lock_fd = -1
        self._pending: list[_Pending] = []
        self._send_scheduled = False
        # Batches written and sent to the sync process, with where they went, in order.
        self._in_flight: list[tuple[int, list[_Pending], AppendResult]] = []  # token first
        self._watching: asyncio.AbstractEventLoop | None = None  # reads the sync answers
        self._drained: asyncio.Future[None] | None = None  # aclose() waits for the batches
        self._maintainer: asyncio.Task[None] | None = None
        self._slots: dict[str, _Slot] = {}
        self._last_id = (0, 0)
        self._random_starts: list[int] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._opened = False
        self.maintenance_error: Exception | None = None

    # ---- opening and closing ----------------------------------------------------------
    def open(self, *, readonly: bool = False) -> RecoveryReport:
        """Replay the journal into memory. Read-write takes ``D/lock`` and repairs damage."""
        if self._opened:
            raise QueueError("queue store already open")
        self.readonly = readonly
        report = RecoveryReport()
        if not readonly:
            self._lock()
        try:
            self._index = QueueIndex()
            recovery.replay(self._layout, self._index, report, readonly=readonly)
            broken = recovery.check_bodies(self._layout, self._index, report, readonly=readonly)
            if not readonly:
                recovery.clean_directories(self._layout, self._index, report)
                self._journal = Journal(self._layout.segments, segment_size=self.segment_size,
                                        stats=self.stats)
                self._journal.start()
                self._index.active = self._journal.active
                for qid in broken:  # so that they are not found again at the next start
                    data, op = encode(Op(RecordType.REMOVE, qid))
                    segment, offset, _ = self._journal.append([data])
                    self._index.apply(op, segment, offset, len(data))
                self._index.dirty = bool(self._journal.closed())  # look at the first batch
        except BaseException:
            self._release()
            raise
        self._opened = True
        report.messages = len(self._index.entries)
        return report

    def _lock(self) -> None:
        layout = self._layout
        for d in (layout.segments, layout.bodies, layout.incoming, layout.quarantine):
            d.mkdir(parents=True, exist_ok=True)
        journal.fsync_dir(layout.root)
        journal.fsync_dir(layout.root.parent)
        self._lock_fd = os.open(layout.root / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                                0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(self._lock_fd)
            self._lock_fd = -1
            raise QueueError(f"queue {self.directory} is in use by another process") from exc

    @property
    def is_open(self) -> bool:
        return self._opened

    async def aclose(self) -> None:
        """Finish pending writes and maintenance, then release the lock."""
        while self._journal is not None:
            if self._pending and not self._in_flight:
                self._send_pending()
            if self._in_flight:
                self._drained = asyncio.get_running_loop().create_future()
                await self._drained
            elif self._maintainer is not None and not self._maintainer.done():
                await asyncio.wait([self._maintainer])
            elif not self._pending:
                break
        self._release()

    def close(self) -> None:
        """Close without an event loop (CLI); nothing may be in flight."""
        if self._pending or self._in_flight or (
                self._maintainer is not None and not self._maintainer.done()):
            raise QueueError("queue has writes in flight; use aclose()")
        self._release()

    def _release(self) -> None:
        self._stop_syncer()
        if self._journal is not None:
            self._journal.close()
            self._journal = None
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = -1
        self._opened = False

    # ---- reading ----------------------------------------------------------------------
    def _entry(self, qid: str) -> Entry:
        entry = self._index.entries.get(qid)
        if entry is None:
            raise QueueError(f"no queued message {qid}")
        return entry

    def ids(self) -> list[str]:
        """Queue ids in arrival order (ids sort by arrival)."""
        return sorted(self._index.entries)

    def get(self, qid: str) -> QueuedMessage:
        """A snapshot of one queued message; QueueError if unknown."""
        msg = self._entry(qid).msg
        # Not dataclasses.replace: this runs for every delivery, and that is 4x slower.
        return QueuedMessage(msg.id, msg.envelope, msg.size, msg.arrived, msg.held,
                             list(msg.recipients))

    def due_recipients(self, qid: str, now: float) -> list[int]:
        """Positions of the recipients of ``qid`` due by ``now``; [] if held or unknown.
        A look at the live entry, no snapshot: cheap enough for every pass of a scheduler."""
        entry = self._index.entries.get(qid)
        if entry is None or entry.msg.held:
            return []
        return [i for i, r in enumerate(entry.msg.recipients)
                if r.status not in FINAL and r.next_attempt <= now]

    def read_body(self, qid: str) -> bytes:
        """The whole body at once (for a body kept in the journal: a small one)."""
        recent = self._recent.get(qid)
        if recent is not None:
            return recent
        with self.open_body(qid) as f:
            return f.read()

    def open_body(self, qid: str) -> BinaryIO:
        """The body as a binary file object; safe to call from a worker thread."""
        recent = self._recent.get(qid)
        if recent is not None:
            return io.BytesIO(recent)
        for _ in range(3):
            entry = self._entry(qid)
            try:
                if entry.body_file:
                    return open(self._bodies / qid, "rb")
                frame = journal.read_frame(self._segment_path(entry.segment), entry.offset,
                                           entry.length)
            except FileNotFoundError:
                continue  # moved by compaction meanwhile: look it up again
            except ValueError as exc:
                raise QueueError(f"queue record of {qid} is damaged: {exc}") from exc
            start = entry.body_start
            return io.BytesIO(frame.payload[start:start + entry.msg.size])
        raise QueueError(f"body of {qid} not found")

    def _segment_path(self, number: int) -> Path:
        path = self._segment_paths.get(number)
        if path is None:
            path = self._segment_paths[number] = self._layout.segment(number)
        return path

    def _keep_recent(self, qid: str, body: bytes) -> None:
        self._recent[qid] = body
        self._recent_bytes += len(body)
        while self._recent_bytes > _RECENT_BYTES:  # oldest first (dicts keep insertion order)
            self._recent_bytes -= len(self._recent.pop(next(iter(self._recent))))

    def _forget_recent(self, qid: str) -> None:
        body = self._recent.pop(qid, None)
        if body is not None:
            self._recent_bytes -= len(body)

    def body_path(self, qid: str) -> Path | None:
        """The file holding the body when it has one of its own (large bodies), else None."""
        return self._bodies / qid if self._entry(qid).body_file else None

    def next_attempt(self, qid: str) -> float | None:
        """When ``qid`` is next due: the earliest next attempt among its recipients that are
        pending or deferred; None if it is held, unknown or has none."""
        entry = self._index.entries.get(qid)
        if entry is None or entry.msg.held:
            return None
        return min((r.next_attempt for r in entry.msg.recipients if r.status not in FINAL),
                   default=None)

    def next_attempts(self) -> list[tuple[str, float]]:
        """(id, :meth:`next_attempt`) of every message that will be due some time: one pass
        over the whole queue."""
        out = []
        for qid in self._index.entries:
            when = self.next_attempt(qid)
            if when is not None:
                out.append((qid, when))
        return out

    def due(self, now: float) -> list[str]:
        """Messages not held with some recipient pending or deferred and due by ``now``."""
        return sorted(qid for qid, when in self.next_attempts() if when <= now)

    def next_due_time(self) -> float | None:
        """Earliest next attempt among messages that are not held, or None."""
        return min((when for _qid, when in self.next_attempts()), default=None)

    # ---- bodies and commits -----------------------------------------------------------
    def new_body(self) -> BodyWriter:
        return BodyWriter(self._incoming, self.spill_threshold)

    def discard(self, body: BodyWriter) -> None:
        body.discard()

    async def commit(self, body: BodyWriter, envelope: Envelope, *, now: float) -> str:
        """Queue a message; returns its id once body and envelope are on stable storage."""
        self._admit(envelope)
        inline = body.take_inline()  # raises QueueError if the body cannot be committed
        qid = self._new_id(now)
        if inline is None:
            try:
                await asyncio.to_thread(body.finish, self._bodies / qid)
            except OSError as exc:
                body.abandon()
                raise QueueError(f"saving the body failed: {exc}") from exc
            self.stats.body_syncs += 1
        op = self._message_op(qid, body, envelope, now, inline)
        try:
            await self._submit(op, inline or b"", body_dir=inline is None)
        except QueueError:
            self._abandon(qid, body)
            raise
        return qid

    def commit_soon(self, body: BodyWriter, envelope: Envelope, *, now: float,
                    done: Callable[[str, QueueError | None], None]) -> bool:
        """:meth:`commit` without waiting, for a body kept in memory; False (nothing done)
        for one in a file of its own, which needs :meth:`commit`.

        ``done(qid, None)`` is called once the message is on stable storage, or
        ``done(qid, error)`` if it will not be, straight from the event-loop callback that
        reads the sync process's answer: a reply can leave in that same loop turn, where an
        awaiting task would run one turn later. QueueError here for a body that cannot be
        committed (nothing is queued then).
        """
        self._admit(envelope)
        if body.spilled:
            return False
        inline = body.take_inline()
        assert inline is not None
        qid = self._new_id(now)
        op = self._message_op(qid, body, envelope, now, inline)

        def settled(error: QueueError | None) -> None:
            if error is not None:
                self._abandon(qid, body)
            done(qid, error)

        self._enqueue(op, inline, callback=settled)
        return True

    def _admit(self, envelope: Envelope) -> None:
        self._writable()
        if not envelope.recipients:
            raise QueueError("a message needs at least one recipient")

    def _abandon(self, qid: str, body: BodyWriter) -> None:
        """A commit that failed: neither the body nor its copy kept for delivery stays."""
        self._forget_recent(qid)
        body.abandon()

    def _message_op(self, qid: str, body: BodyWriter, envelope: Envelope, now: float,
                    inline: bytes | None) -> Op:
        msg = QueuedMessage(qid, envelope, body.size, now, False,
                            [RecipientState(r, "pending", 0, now, None)
                             for r in envelope.recipients])
        if inline is not None:  # kept before the record is applied: delivery may start then
            self._keep_recent(qid, inline)
        return Op(RecordType.MESSAGE, qid, message=msg, body_file=inline is None,
                  crc=body.crc if inline is None else None)

    def _new_id(self, now: float) -> str:
        ms = max(int(now * 1000), 0)
        last_ms, last_seq = self._last_id
        if ms <= last_ms and last_seq < (1 << 32) - 1:
            ms, seq = last_ms, last_seq + 1
        else:
            ms, seq = max(ms, last_ms + 1), self._random_start()
        while True:
            self._last_id = (ms, seq)
            value = (ms << 32) | seq
            qid = "".join([_DIGIT_PAIRS[(value >> shift) & 1023] for shift in range(70, -1, -10)])
            if qid not in self._index.entries:
                return qid
            seq += 1

    def _random_start(self) -> int:
        """24 random bits to start a new millisecond's ids with, as from secrets.randbits(24).

        Fetched from os.urandom in blocks: a system call per message showed in profiles of
        the event loop thread.
        """
        if not self._random_starts:
            block = os.urandom(3 * _RANDOM_BLOCK)
            self._random_starts = [int.from_bytes(block[i:i + 3], "big")
                                   for i in range(0, len(block), 3)]
        return self._random_starts.pop()

    def _writable(self) -> None:
        if not self._opened:
            raise QueueError("queue store is not open")
        if self.readonly:
            raise QueueError("queue store is open read-only")

    # ---- group commit -----------------------------------------------------------------
    async def _submit(self, op: Op, body: bytes = b"", *, body_dir: bool = False) -> None:
        """Hand one record to the flusher and wait until it is durable and applied."""
        future = self._enqueue(op, body, body_dir=body_dir)
        assert future is not None
        await future

    def _enqueue(self, op: Op, body: bytes = b"", *, body_dir: bool = False,
                 callback: Settled | None = None) -> asyncio.Future[None] | None:
        """Hand one record to the flusher. Without a callback: the future returned is done
        once it is durable and applied; with one, that is called instead (no future)."""
        loop = self._running_loop()
        data, op = encode(op, body)
        item = _Pending(data, op, None if callback is not None else loop.create_future(),
                        callback, body_dir)
        self._pending.append(item)
        if not self._send_scheduled:
            self._send_scheduled = True
            if self.commit_window > 0:
                loop.call_later(self.commit_window, self._send_pending)
            else:
                loop.call_soon(self._send_pending)  # after this turn: its other commits too
        return item.future

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        """The caller's event loop, remembered while it runs.

        asyncio.get_running_loop() makes a getpid() system call each time (Python 3.11),
        which showed in profiles at one call per message. A store is used from one thread,
        and a thread runs one loop at a time: while the remembered loop runs, it is the
        caller's. A new loop (the CLI runs one per command) is looked up again.
        """
        loop = self._loop
        if loop is None or not loop.is_running():
            loop = self._loop = asyncio.get_running_loop()
        return loop

    def _send_pending(self) -> None:
        """Write what is pending to the journal, here on the loop, and ask the sync process
        to make it durable; do not wait for its answer (:meth:`_on_answers` takes it)."""
        self._send_scheduled = False
        journal = self._journal
        while self._pending and journal is not None:
            if journal.must_rotate and journal.in_flight:
                return  # a new segment waits for the old one's batches (see _on_answers)
            batch = self._take_batch()
            try:
                self._ready_syncer()  # before the write: a restart fails what is in flight
                appended = journal.write([p.data for p in batch])
            except (OSError, RuntimeError) as exc:
                _fail(batch, exc)
                continue
            dirs: list[int] = []
            token: int | None
            try:
                if any(p.body_dir for p in batch):
                    dirs.append(os.open(self._bodies,
                                        os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
                token = self._syncer.send([*dirs, journal.fd])
            except OSError as exc:  # the child is gone: what is in flight is lost with it
                self._lose_in_flight(exc)  # the journal cuts this batch off too
                _fail(batch, exc)
                token = None
            finally:
                for fd in dirs:
                    os.close(fd)
            if token is not None:
                self.stats.dir_syncs += len(dirs)
                self._in_flight.append((token, batch, appended))

    def start_sync_process(self) -> None:
        """Start the sync process now rather than at the first write (a server does, so
        that a failure to start it is a start-up error). Call from the event loop."""
        self._writable()
        self._ready_syncer()

    def _ready_syncer(self) -> None:
        """Have the sync process running and its answers watched from this loop."""
        syncer = self._syncer
        if syncer.exited:  # died since its last answer: what it held is lost with it
            self._lose_in_flight(SyncerGone("the queue's sync process exited"))
        if not syncer.running:
            syncer.start()
        loop = self._running_loop()
        if self._watching is not loop:
            # Answers are read by a reader callback, not a task awaiting them: a task would
            # resume one loop turn later, and every turn is a fraction of a millisecond
            # more for each session waiting for its 250.
            loop.add_reader(syncer.fileno(), self._on_answers)
            self._watching = loop

    def _on_answers(self) -> None:
        """The sync process answered (or died): settle the batches in flight, in order."""
        try:
            token, error = self._syncer.answers()
        except OSError as exc:
            self._lose_in_flight(exc)
        else:
            if token is not None:
                self._settle_in_flight(token)
            if error is not None:
                self._lose_in_flight(error)
        if self._pending and not self._send_scheduled:
            self._send_pending()
        self._check_drained()

    def _check_drained(self) -> None:
        if not self._in_flight and self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def _stop_syncer(self) -> None:
        if self._watching is not None:
            # Any: uvloop's remove_reader returns None where typeshed says bool, and
            # compiled code checks the types it is told.
            watching: Any = self._watching
            if not watching.is_closed() and self._syncer.running:
                watching.remove_reader(self._syncer.fileno())
            self._watching = None
        self._syncer.stop()

    def _settle_in_flight(self, token: int) -> None:
        """The batches sent up to request ``token`` are durable: apply them, in order."""
        assert self._journal is not None
        rotated = False
        done = 0
        for sent, batch, (segment, offset, new_segment) in self._in_flight:
            if sent > token:
                break
            done += 1
            self._journal.synced()
            self._index.active = segment
            rotated |= new_segment
            for p in batch:
                self._index.apply(p.op, segment, offset, len(p.data))
                offset += len(p.data)
                p.settle(None)
        del self._in_flight[:done]
        if rotated or self._index.dirty:
            self._schedule_maintenance()

    def _lose_in_flight(self, exc: BaseException) -> None:
        """Their sync failed or is unknown: cut them off the segment, fail their commits.
        The sync process starts afresh, so no answer meant for them can reach later ones."""
        self._stop_syncer()
        if self._journal is not None:
            self._journal.failed()
        for _token, batch, _appended in self._in_flight:
            _fail(batch, exc)
        self._in_flight.clear()
        self._check_drained()

    def _take_batch(self) -> list[_Pending]:
        size, count = 0, 0
        for p in self._pending:
            if count and (count >= _MAX_BATCH_RECORDS or size + len(p.data) > _MAX_BATCH_BYTES):
                break
            size += len(p.data)
            count += 1
        batch, self._pending = self._pending[:count], self._pending[count:]
        return batch

    def _exclusive(self, qid: str) -> _Exclusive:
        """Serialize read-modify-write of one message: ``async with`` it for its entry."""
        return _Exclusive(self, qid)

    async def _take(self, qid: str) -> None:
        """Take the lock of one message (what :meth:`_exclusive` holds); :meth:`_give`
        gives it back. Waiters get it in the order they asked."""
        slot = self._slots.get(qid)
        if slot is None:
            self._slots[qid] = _Slot()  # free: ours now
            return
        waiter = self._running_loop().create_future()
        slot.waiters.append(waiter)
        try:
            await waiter  # done when _give hands the lock over
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self._give(qid)  # handed over just as we were cancelled: pass it on
            elif waiter in slot.waiters:
                slot.waiters.remove(waiter)
            raise

    def _give(self, qid: str) -> None:
        slot = self._slots[qid]
        while slot.waiters:
            waiter = slot.waiters.popleft()
            if not waiter.done():  # else cancelled while waiting
                waiter.set_result(None)
                return
        del self._slots[qid]

    # ---- status changes ---------------------------------------------------------------
    async def record(self, qid: str, results: Mapping[int, RecipientResult], *,
                     now: float) -> None:
        """Record delivery results; index = position in ``envelope.recipients``.

        Each result counts as an attempt; "deferred" gets its next attempt from the schedule.
        Once every recipient is delivered or failed the message leaves the queue.
        """
        [error] = await self.record_many([(qid, results)], now=now)
        if error is not None:
            raise error

    async def record_many(self, batch: Sequence[tuple[str, Mapping[int, RecipientResult]]],
                          *, now: float) -> list[QueueError | None]:
        """:meth:`record` for several messages, all written in one go; per message, None or
        the QueueError that stopped it (an unknown id: deleted meanwhile)."""
        self._writable()
        if len({qid for qid, _ in batch}) != len(batch):
            raise ValueError("a message appears twice in one record batch")
        errors: list[QueueError | None] = [None] * len(batch)
        waits: list[asyncio.Future[None]] = []
        removed: list[Entry] = []
        held: list[str] = []
        try:
            # Each message under its own lock, taken in id order so that two batches can
            # never wait for each other; all are held until the records are durable.
            for n in sorted(range(len(batch)), key=lambda n: batch[n][0]):
                qid, results = batch[n]
                await self._take(qid)
                held.append(qid)
                try:
                    entry = self._entry(qid)
                    op = self._status_op(entry, results, now)
                except QueueError as exc:
                    errors[n] = exc
                    continue
                if op is not None:
                    wait = self._enqueue(op)
                    assert wait is not None
                    waits.append(wait)
                    if op.rtype == RecordType.REMOVE:
                        removed.append(entry)
            for wait in waits:
                await wait
        finally:
            for qid in held:
                self._give(qid)
        for entry in removed:
            await self._removed(entry)
        return errors

    def _status_op(self, entry: Entry, results: Mapping[int, RecipientResult],
                   now: float) -> Op | None:
        """The record that applies ``results`` to a message: STATUS, REMOVE or nothing."""
        qid = entry.msg.id
        states = entry.msg.recipients
        for i, result in results.items():
            if result.status not in FINAL and result.status != "deferred":
                raise ValueError(f"bad recipient status {result.status!r}")
            if not 0 <= i < len(states):
                raise QueueError(f"message {qid} has no recipient {i}")
        if all((results[i] if i in results else s).status in FINAL
               for i, s in enumerate(states)):
            return Op(RecordType.REMOVE, qid)
        updates: dict[int, RecipientState] = {}
        for i, result in results.items():
            attempts = states[i].attempts + 1
            later = now + self.schedule.next_delay(attempts)
            updates[i] = replace(states[i], status=result.status, attempts=attempts,
                                 next_attempt=later if result.status == "deferred" else now,
                                 last_reply=result.reply)
        return Op(RecordType.STATUS, qid, updates=updates) if updates else None

    async def _remove(self, entry: Entry) -> None:
        await self._submit(Op(RecordType.REMOVE, entry.msg.id))
        await self._removed(entry)

    async def _removed(self, entry: Entry) -> None:
        """After a durable REMOVE: let go of the body."""
        self._forget_recent(entry.msg.id)
        if entry.body_file:
            with contextlib.suppress(FileNotFoundError):
                await asyncio.to_thread(os.unlink, self._bodies / entry.msg.id)

    async def hold(self, qid: str) -> None:
        """Keep a message from delivery until released."""
        self._writable()
        async with self._exclusive(qid) as entry:
            if not entry.msg.held:
                await self._submit(Op(RecordType.HOLD, qid))

    async def release(self, qid: str) -> None:
        self._writable()
        async with self._exclusive(qid) as entry:
            if entry.msg.held:
                await self._submit(Op(RecordType.RELEASE, qid))

    async def delete(self, qid: str) -> None:
        """Remove a message without delivering it (no bounce)."""
        self._writable()
        async with self._exclusive(qid) as entry:
            await self._remove(entry)

    async def flush(self, *, now: float) -> int:
        """Make every waiting recipient of messages not held due at ``now``; returns how many."""
        self._writable()
        targets = [qid for qid, e in self._index.entries.items() if not e.msg.held
                   and any(r.status not in FINAL and r.next_attempt > now
                           for r in e.msg.recipients)]
        counts = await asyncio.gather(*(self._flush_one(qid, now) for qid in targets))
        return sum(counts)

    async def _flush_one(self, qid: str, now: float) -> int:
        try:
            async with self._exclusive(qid) as entry:
                updates = {i: replace(r, next_attempt=now)
                           for i, r in enumerate(entry.msg.recipients)
                           if r.status not in FINAL and r.next_attempt > now}
                if updates and not entry.msg.held:
                    await self._submit(Op(RecordType.STATUS, qid, updates=updates))
                    return len(updates)
                return 0
        except QueueError:
            if qid in self._index.entries:
                raise
            return 0  # removed meanwhile

    # ---- segment maintenance ----------------------------------------------------------
    def _schedule_maintenance(self) -> None:
        self._index.dirty = True
        if self._maintainer is None or self._maintainer.done():
            self._maintainer = asyncio.get_running_loop().create_task(self._maintain())

    async def _maintain(self) -> None:
        while self._index.dirty and self._journal is not None:
            self._index.dirty = False
            try:
                await self.compact()
            except (OSError, QueueError) as exc:
                self.maintenance_error = exc  # tried again at the next rotation or removal
                return

    async def compact(self) -> int:
        """Delete closed segments no longer needed; compact those with little live data.

        A segment goes once no live message has its MESSAGE record there and the older
        segments its records refer to are gone (see ``index.py``). One with live messages
        taking at most half its size is compacted first: those messages are re-committed, with
        their current status, into the active segment. Returns the number of segments deleted.
        Called after each rotation and whenever a closed segment loses its last live message.
        """
        self._writable()
        deleted = 0
        assert self._journal is not None
        for number in self._journal.closed():
            if self._journal is None or self._index.blocked(number, self._journal.sizes.keys()):
                continue
            live = self._index.live(number)
            if live:
                if 2 * self._index.live_bytes(number) > self._journal.sizes.get(number, 0):
                    continue
                for qid in live:
                    await self._recommit(qid, number)
                if self._index.live(number) or self._journal is None:
                    continue
            if await asyncio.to_thread(self._journal.delete, number):
                deleted += 1
            self._index.forget(number)
        return deleted

    async def _recommit(self, qid: str, number: int) -> None:
        try:
            async with self._exclusive(qid) as entry:
                if entry.segment != number:
                    return
                body = b""
                if not entry.body_file:
                    frame = await asyncio.to_thread(journal.read_frame,
                                                    self._layout.segment(number),
                                                    entry.offset, entry.length)
                    body = frame.payload[entry.body_start:entry.body_start + entry.msg.size]
                msg = replace(entry.msg, recipients=list(entry.msg.recipients))
                await self._submit(Op(RecordType.MESSAGE, qid, message=msg,
                                      body_file=entry.body_file, crc=entry.crc), body)
                self.stats.compacted += 1
        except QueueError:
            if qid in self._index.entries:
                raise


class _Exclusive:
    """The lock of one message while ``async with`` holds it (see ``_exclusive``)."""

    __slots__ = ("_store", "_qid")

    def __init__(self, store: QueueStore, qid: str) -> None:
        self._store = store
        self._qid = qid

    async def __aenter__(self) -> Entry:
        store = self._store
        await store._take(self._qid)
        try:
            return store._entry(self._qid)
        except BaseException:
            store._give(self._qid)
            raise

    async def __aexit__(self, *exc_info: object) -> None:
        self._store._give(self._qid)


def _fail(batch: list[_Pending], exc: BaseException) -> None:
    error = QueueError(f"queue write failed: {exc}")
    error.__cause__ = exc
    for p in batch:
        p.settle(error)


__all__ = ["BodyWriter", "QueueStore", "QueueStats", "QueuedMessage", "RecipientResult",
           "RecipientState", "RecoveryReport"]
