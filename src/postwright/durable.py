"""Making file-system changes durable: the one place that fsyncs a directory.

After a file is created, renamed or removed, the directory entry is only on stable storage
once the directory itself is fsync'ed. The queue, Maildir delivery, the account store and the
DKIM key store all need this; they share this function.
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
