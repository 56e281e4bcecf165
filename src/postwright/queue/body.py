"""A message body being received: kept in memory while small, streamed to a file past a limit.

:class:`BodyWriter` buffers up to ``spill_threshold`` bytes; beyond that it writes the buffer
and every later chunk straight to a file in the queue's ``incoming/`` directory, so a 50 MB
message never grows the process by 50 MB. A write error is remembered and reported at commit
(the session then answers 4xx) rather than raised in the middle of DATA.

Not here: journal records, ids, the final location of the body (``store.py`` decides).
Not an RFC topic beyond RFC 5321 section 4.5.3.1.7 (message content size).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import zlib
from pathlib import Path

from ..durable import write_all
from ..errors import QueueError


class BodyWriter:
    """Collects one body. ``write`` it, then hand it to ``QueueStore.commit`` or ``discard``."""

    def __init__(self, incoming: Path, spill_threshold: int) -> None:
        self._incoming = incoming
        self._threshold = spill_threshold
        self._buffer: bytearray | None = bytearray()
        self._fd = -1
        self.path: Path | None = None  # the spill file, once there is one
        self._size = 0
        self._crc = 0
        self._error: OSError | None = None
        self._state = "open"  # open | committing | done

    @property
    def size(self) -> int:
        return self._size

    @property
    def crc(self) -> int:
        """CRC32 of the bytes written so far: kept up to date once the body is in a file of
        its own, computed when asked while it is in memory (a body committed inline needs
        none: the journal record's own CRC covers it); 0 once its bytes were taken."""
        if self._buffer is not None:
            return zlib.crc32(self._buffer)
        return self._crc

    @property
    def spilled(self) -> bool:
        return self._buffer is None

    def write(self, data: bytes) -> None:
        if self._state != "open":
            raise QueueError("body already committed or discarded")
        self._size += len(data)
        if self._error is not None:
            return
        try:
            if self._buffer is not None:
                if len(self._buffer) + len(data) <= self._threshold:
                    self._buffer += data
                    return
                self._spill()
            self._crc = zlib.crc32(data, self._crc)
            write_all(self._fd, [data])
        except OSError as exc:
            self._error = exc

    def _spill(self) -> None:
        assert self._buffer is not None
        path = self._incoming / f"{secrets.token_hex(12)}.tmp"
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        self.path = path
        buffered, self._buffer = self._buffer, None
        self._crc = zlib.crc32(buffered)
        write_all(self._fd, [buffered])

    def read_all(self, limit: int) -> bytes | None:
        """The content written so far when it is at most ``limit`` octets, else None.

        For checks that need the whole message before it is committed (DKIM, DMARC); it
        reads a spilled body back from its file and changes nothing.
        """
        if self._state != "open" or self._error is not None or self._size > limit:
            return None
        if self._buffer is not None:
            return bytes(self._buffer)
        parts = []
        offset = 0
        while offset < self._size:
            chunk = os.pread(self._fd, self._size - offset, offset)
            if not chunk:
                return None
            parts.append(chunk)
            offset += len(chunk)
        return b"".join(parts)

    def take_inline(self) -> bytes | None:
        """Start committing: the inline bytes, or None when the body is in a file."""
        if self._state != "open":
            raise QueueError("body already committed or discarded")
        if self._error is not None:
            self.abandon()
            raise QueueError(f"writing the body failed: {self._error}") from self._error
        self._state = "committing"
        if self._buffer is not None:
            data, self._buffer = bytes(self._buffer), None
            self._state = "done"
            return data
        return None

    def finish(self, target: Path) -> None:
        """Make a spilled body durable and move it to ``target`` (blocks: run in a thread).

        The caller syncs ``target``'s directory (the store does it once per commit batch).
        """
        assert self._state == "committing" and self.path is not None
        try:
            os.fdatasync(self._fd)
        except OSError:
            self.abandon()
            raise
        os.close(self._fd)
        self._fd = -1
        os.rename(self.path, target)
        self.path = target
        self._state = "done"

    def abandon(self) -> None:
        """Drop the spill file wherever it is (a commit failed)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self.path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            self.path = None
        self._buffer = None
        self._state = "done"

    def discard(self) -> None:
        """Forget an uncommitted body; a no-op once commit has started."""
        if self._state == "open":
            self.abandon()

    def __del__(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
