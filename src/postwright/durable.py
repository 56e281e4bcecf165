"""Making file-system changes durable by path: fsync a directory, or a file by its name.

After a file is created, renamed or removed, the directory entry is only on stable storage
once the directory itself is fsync'ed. The queue, Maildir delivery, the account store and the
DKIM key store all need this; they share these functions.
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(path: Path) -> None:
    _fsync(path, getattr(os, "O_DIRECTORY", 0))


def fsync_file(path: Path) -> None:
    _fsync(path, 0)


def _fsync(path: Path, flags: int) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
