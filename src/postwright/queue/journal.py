"""The queue journal: record framing and append-only segment files.

A record is ``magic (4) | type (1) | payload length (4, big endian) | CRC32 (4) | payload``,
the CRC covering the type byte and the payload, so every record validates itself. Segments are
``NNNNNNNN.log`` files in one directory; :class:`Journal` appends a batch of records with one
``writev`` and one ``fdatasync`` (group commit) and rolls to a new segment past a size limit.
:func:`scan` walks a segment and reports valid frames and damaged spans, resynchronising on
the next valid record after damage.

This module knows nothing about messages or what payloads mean (see ``store.py``); it does not
decide what to do with damage. No asyncio here: :meth:`Journal.append` blocks; the store's
event loop uses its two halves, :meth:`Journal.write` (on the loop) and :meth:`Journal.synced`
(once the sync process, ``syncer.py``, has made the batch durable).
Not an RFC topic; the durability rule is RFC 5321 section 4.5.4.1's "the receiver MUST NOT
lose the message" after a 2xx to end-of-data.
"""

from __future__ import annotations

import os
import struct
import threading
import zlib
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Final

from ..durable import fsync_dir as fsync_dir  # used by the store and recovery too
from ..durable import write_all

MAGIC: Final = b"\x8fPWJ"
_HEADER: Final = struct.Struct(">4sBII")
HEADER_SIZE: Final = _HEADER.size  # 13
MAX_PAYLOAD: Final = 1 << 30
_READ_CHUNK: Final = 1 << 20


class RecordType(IntEnum):
    MESSAGE = 1
    STATUS = 2
    REMOVE = 3
    HOLD = 4
    RELEASE = 5


_TYPES: Final = frozenset(int(t) for t in RecordType)

# What an append returns: (segment, offset of the first record, whether a segment started).
AppendResult = tuple[int, int, bool]


@dataclass
class QueueStats:
    """Counters the store keeps about its own I/O (tests and metrics read them)."""

    syncs: int = 0  # fdatasync calls on journal segments
    batches: int = 0  # group-commit batches written
    records: int = 0  # records appended
    dir_syncs: int = 0  # fsync calls on directories
    body_syncs: int = 0  # fdatasync calls on spilled body files
    segments_created: int = 0
    segments_deleted: int = 0
    compacted: int = 0  # messages re-committed by compaction


@dataclass(frozen=True, slots=True)
class Frame:
    """A valid record found in a segment: ``length`` counts header and payload."""

    offset: int
    length: int
    rtype: RecordType
    payload: bytes


@dataclass(frozen=True, slots=True)
class Damage:
    """A span of a segment that holds no valid record; ``tail`` if nothing valid follows."""

    offset: int
    length: int
    reason: str
    tail: bool


def encode(rtype: RecordType, payload: bytes) -> bytes:
    """Frame one record."""
    if len(payload) > MAX_PAYLOAD:
        raise ValueError("record payload too large")
    crc = zlib.crc32(payload, zlib.crc32(bytes((rtype,))))
    return _HEADER.pack(MAGIC, rtype, len(payload), crc) + payload


def segment_name(number: int) -> str:
    return f"{number:08d}.log"


def list_segments(directory: Path) -> list[int]:
    """Segment numbers present in ``directory``, ascending."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    found = []
    for name in names:
        stem, dot, ext = name.partition(".")
        if dot and ext == "log" and len(stem) == 8 and stem.isdigit():
            found.append(int(stem))
    return sorted(found)


def _crc_range(fd: int, start: int, length: int, crc: int) -> int:
    end = start + length
    while start < end:
        chunk = os.pread(fd, min(_READ_CHUNK, end - start), start)
        if not chunk:
            raise EOFError
        crc = zlib.crc32(chunk, crc)
        start += len(chunk)
    return crc


@dataclass(frozen=True, slots=True)
class _Valid:
    length: int
    rtype: RecordType
    payload: bytes | None  # read already when small


def _check(fd: int, pos: int, size: int) -> _Valid | str:
    """The record starting at ``pos`` if it is valid, else the reason it is not."""
    head = os.pread(fd, HEADER_SIZE, pos)
    if len(head) < HEADER_SIZE:
        return "truncated header"
    magic, rtype, length, crc = _HEADER.unpack(head)
    if magic != MAGIC:
        return "bad magic"
    if rtype not in _TYPES:
        return f"unknown record type {rtype}"
    if length > MAX_PAYLOAD or length > size - pos - HEADER_SIZE:
        return "truncated payload"
    seed = zlib.crc32(bytes((rtype,)))
    payload: bytes | None = None
    if length <= 4 * _READ_CHUNK:
        payload = os.pread(fd, length, pos + HEADER_SIZE)
        if len(payload) < length:
            return "truncated payload"
        actual = zlib.crc32(payload, seed)
    else:
        try:
            actual = _crc_range(fd, pos + HEADER_SIZE, length, seed)
        except EOFError:
            return "truncated payload"
    if actual != crc:
        return "CRC mismatch"
    return _Valid(HEADER_SIZE + length, RecordType(rtype), payload)


def _resync(fd: int, pos: int, size: int) -> int | None:
    """Offset of the next valid record at or after ``pos``, or None."""
    while pos < size:
        window = os.pread(fd, _READ_CHUNK + len(MAGIC) - 1, pos)
        if not window:
            return None
        at = window.find(MAGIC)
        while at != -1:
            if isinstance(_check(fd, pos + at, size), _Valid):
                return pos + at
            at = window.find(MAGIC, at + 1)
        pos += _READ_CHUNK
    return None


def scan(path: Path) -> Iterator[Frame | Damage]:
    """Walk one segment: every valid record as a Frame, every damaged span as a Damage.

    Uses plain reads (no mmap), so a segment truncated by another process while a read-only
    reader walks it gives short reads, never SIGBUS. Raises FileNotFoundError if the segment
    is gone.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        pos = 0
        while pos < size:
            found = _check(fd, pos, size)
            if isinstance(found, _Valid):
                payload = found.payload
                if payload is None:
                    payload = os.pread(fd, found.length - HEADER_SIZE, pos + HEADER_SIZE)
                yield Frame(pos, found.length, found.rtype, payload)
                pos += found.length
                continue
            following = _resync(fd, pos + 1, size)
            end = size if following is None else following
            yield Damage(pos, end - pos, found, following is None)
            pos = end
    finally:
        os.close(fd)


def read_frame(path: Path, offset: int, length: int) -> Frame:
    """Read and validate the record at ``offset``; ValueError if it is not intact."""
    with open(path, "rb") as f:
        data = os.pread(f.fileno(), length, offset)
    if len(data) != length or length < HEADER_SIZE:
        raise ValueError("record truncated")
    magic, rtype, size, crc = _HEADER.unpack_from(data)
    if magic != MAGIC or rtype not in _TYPES or size != length - HEADER_SIZE:
        raise ValueError("record header damaged")
    payload = data[HEADER_SIZE:]
    if zlib.crc32(payload, zlib.crc32(bytes((rtype,)))) != crc:
        raise ValueError("record CRC mismatch")
    return Frame(offset, length, RecordType(rtype), payload)


def copy_span(path: Path, offset: int, length: int, dest: Path) -> None:
    """Copy bytes of a segment to ``dest`` (quarantine), chunk by chunk, and sync it."""
    with open(path, "rb") as src, open(dest, "wb") as out:
        pos, end = offset, offset + length
        while pos < end:
            chunk = os.pread(src.fileno(), min(_READ_CHUNK, end - pos), pos)
            if not chunk:
                break
            out.write(chunk)
            pos += len(chunk)
        out.flush()
        os.fsync(out.fileno())


def truncate(path: Path, size: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.ftruncate(fd, size)
        os.fsync(fd)
    finally:
        os.close(fd)


class Journal:
    """The writable set of segments of one queue; one active segment takes appends.

    Methods block. The event loop calls :meth:`write` and :meth:`synced` while a worker
    thread may call :meth:`delete`; a lock keeps the segment table consistent.
    """

    def __init__(self, directory: Path, *, segment_size: int, stats: QueueStats) -> None:
        self.directory = directory
        self.segment_size = segment_size
        self.stats = stats
        self.sizes: dict[int, int] = {}
        self.active = 0
        self._fd = -1
        self._broken = False
        self._lock = threading.Lock()
        self._unsynced: deque[tuple[int, int]] = deque()  # (start, records) per batch

    def path(self, number: int) -> Path:
        return self.directory / segment_name(number)

    def start(self) -> None:
        """Take the segments on disk; append to the last one, or create the first."""
        for number in list_segments(self.directory):
            self.sizes[number] = os.stat(self.path(number)).st_size
        if self.sizes:
            self.active = max(self.sizes)
            self._fd = os.open(self.path(self.active),
                               os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        else:
            self._rotate()

    def closed(self) -> list[int]:
        """Segments that take no more appends, ascending."""
        with self._lock:
            return sorted(n for n in self.sizes if n != self.active)

    def _rotate(self) -> None:
        number = max(self.sizes, default=0) + 1
        fd = os.open(self.path(number),
                     os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            fsync_dir(self.directory)
        except OSError:
            os.close(fd)
            raise
        self.stats.dir_syncs += 1
        self.stats.segments_created += 1
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = fd
        self.sizes[number] = 0
        self.active = number
        self._broken = False

    def append(self, bufs: Sequence[bytes], sync_dirs: Sequence[Path] = ()) -> AppendResult:
        """Write ``bufs`` with one writev and one fdatasync.

        Returns (segment, offset of the first record, whether a new segment was started).
        ``sync_dirs`` are fsync'ed first (directories that got new body files). On error the
        segment is cut back to where the batch began and the next batch starts a new segment,
        since after a failed fdatasync the file's state cannot be trusted.
        """
        if self._unsynced:
            raise RuntimeError("batches are in flight")
        result = self.write(bufs)
        try:
            for d in sync_dirs:
                fsync_dir(d)
                self.stats.dir_syncs += 1
            os.fdatasync(self._fd)
        except OSError:
            self.failed()
            raise
        self.synced()
        return result

    def write(self, bufs: Sequence[bytes]) -> AppendResult:
        """The first half of :meth:`append`: one writev, no sync.

        The caller makes the batch durable (fdatasync of :attr:`fd`, see ``syncer.py``) and
        then calls :meth:`synced` (or :meth:`failed`). Further batches may be written before
        that (pipelining); they are settled in the order they were written. A batch that
        needs a new segment may not be written while others await their sync
        (:attr:`must_rotate`): RuntimeError.
        """
        with self._lock:
            rotated = False
            if self.must_rotate:
                if self._unsynced:
                    raise RuntimeError("a new segment must wait for the batches in flight")
                self._rotate()
                rotated = True
            start = self.sizes[self.active]
            try:
                written = write_all(self._fd, bufs)
            except OSError:
                self._cut(start)
                raise
            self.sizes[self.active] = start + written
            self._unsynced.append((start, len(bufs)))
            return self.active, start, rotated

    @property
    def must_rotate(self) -> bool:
        """The next write starts a new segment (the active one is full or broken)."""
        return self._broken or self.sizes[self.active] >= self.segment_size

    @property
    def in_flight(self) -> int:
        """Batches written and not yet settled by :meth:`synced` or :meth:`failed`."""
        return len(self._unsynced)

    @property
    def fd(self) -> int:
        """The active segment's descriptor (for the process that syncs it)."""
        return self._fd

    def synced(self) -> None:
        """The oldest batch in flight is durable."""
        with self._lock:
            _start, records = self._unsynced.popleft()
            self.stats.syncs += 1
            self.stats.batches += 1
            self.stats.records += records

    def failed(self) -> None:
        """The sync of the batches in flight failed, or is unknown: drop them all from the
        segment, and start a new segment with the next write."""
        with self._lock:
            if self._unsynced:
                self._cut(self._unsynced[0][0])
                self._unsynced.clear()

    def _cut(self, start: int) -> None:
        """A write or sync failed: drop what was written from ``start`` on; start a new
        segment next time."""
        self._broken = True
        self.sizes[self.active] = start
        try:
            os.ftruncate(self._fd, start)
        except OSError:
            pass

    def delete(self, number: int) -> bool:
        """Remove a closed segment, durably (the directory is synced); False if gone already."""
        with self._lock:
            if number == self.active:
                raise ValueError("cannot delete the active segment")
            if number not in self.sizes:
                return False
            try:
                os.unlink(self.path(number))
            except FileNotFoundError:
                pass
            self.stats.segments_deleted += 1
            del self.sizes[number]
        # Outside the lock: the event loop takes it for every write.
        fsync_dir(self.directory)
        self.stats.dir_syncs += 1
        return True

    def close(self) -> None:
        """Close the active segment."""
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
