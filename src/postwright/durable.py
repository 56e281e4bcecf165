"""Writing files whole and making file-system changes durable: fsync a directory, or a file
by its name; write a list of buffers completely.

After a file is created, renamed or removed, the directory entry is only on stable storage
once the directory itself is fsync'ed. The queue, Maildir delivery, the account store and the
DKIM key store all need this; they share these functions.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Final

_IOV_MAX: Final = 1024  # buffers per writev (the Linux limit)


def write_all(fd: int, bufs: Sequence[bytes | bytearray | memoryview]) -> int:
    """Write every buffer, in order, with as few ``writev`` calls as the kernel allows (it
    may write less than asked); returns the number of bytes written."""
    views = [memoryview(b) for b in bufs if b]
    total = sum(len(v) for v in views)
    i = 0
    while i < len(views):
        n = os.writev(fd, views[i:i + _IOV_MAX])
        if n <= 0:
            raise OSError("writev wrote nothing")
        while i < len(views) and n >= len(views[i]):
            n -= len(views[i])
            i += 1
        if n:
            views[i] = views[i][n:]
    return total


def fsync_dir(path: Path | str) -> None:
    _fsync(path, getattr(os, "O_DIRECTORY", 0))


def fsync_file(path: Path | str) -> None:
    _fsync(path, 0)


def _fsync(path: Path | str, flags: int) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
