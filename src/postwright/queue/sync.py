"""The parent's side of the queue's sync process (``syncer.py``, the child, which explains
the wire format): start the child, send it requests, read its answers.

Compiled with the rest of the queue, which asks before every batch whether the child still
runs, sends it every batch and reads every answer; the child runs ``syncer.py`` from source.
Not an RFC topic.
"""

from __future__ import annotations

import array
import os
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from ..errors import SyncerGone
from .syncer import _REPLY, _REQUEST, MAX_FDS

# The child runs the file itself, from source (python -I -S FILE FD).
CHILD: Final = os.fspath(Path(__file__).with_name("syncer.py"))

__all__ = ["MAX_FDS", "Syncer", "SyncerGone"]


class Syncer:
    """Parent side, used from one event loop: :meth:`start` the child, :meth:`send` requests,
    and when :meth:`fileno` is readable, read the answers with :meth:`answers`. It never
    stops or restarts the child by itself: its owner decides (see the store)."""

    def __init__(self) -> None:
        self._sock: socket.socket | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._token = 0

    @property
    def running(self) -> bool:
        """Started and not stopped (the child may have died meanwhile: see :attr:`exited`)."""
        return self._sock is not None

    @property
    def exited(self) -> bool:
        """Started, and the child has exited since. (One waitpid, without Popen.poll's lock
        and bookkeeping: the store asks before every batch it writes.)"""
        proc = self._proc
        if proc is None:
            return False
        if proc.returncode is not None:
            return True
        try:
            pid, status = os.waitpid(proc.pid, os.WNOHANG)
        except ChildProcessError:
            return True
        if pid == 0:
            return False
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped: Popen must not wait
        return True

    def start(self) -> None:
        if self._sock is not None:
            return
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-I", "-S", CHILD, str(theirs.fileno())],
                pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.setblocking(False)
        self._sock = ours

    def fileno(self) -> int:
        """The parent's end of the socket: readable when answers (or the child's end) came."""
        if self._sock is None:
            raise SyncerGone("the queue's sync process is not running")
        return self._sock.fileno()

    def send(self, fds: Sequence[int]) -> int:
        """Ask for ``fds`` to be synced (directories first, the file to fdatasync last);
        returns the request's token (1, 2, 3, ...). Requests may be sent before earlier ones
        are answered. SyncerGone if the child cannot be reached."""
        if not 1 <= len(fds) <= MAX_FDS:
            raise ValueError("1 to 8 descriptors per request")
        if self._sock is None:
            raise SyncerGone("the queue's sync process is not running")
        self._token += 1
        try:
            self._sock.sendmsg([_REQUEST.pack(self._token)],
                               [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
        except OSError as exc:
            raise SyncerGone(f"the queue's sync process is gone: {exc}") from exc
        return self._token

    def answers(self) -> tuple[int | None, OSError | None]:
        """Read every answer waiting, without blocking: the last token they say is synced
        (every request up to it is; None if no such answer), and the error of an answer that
        says its syncs failed (what was sent up to it is then not known to be durable).
        SyncerGone if the child has died."""
        if self._sock is None:
            raise SyncerGone("the queue's sync process is not running")
        synced: int | None = None
        while True:
            try:
                reply = self._sock.recv(4096)
            except BlockingIOError:
                return synced, None
            except ConnectionError as exc:  # died with requests unread
                raise SyncerGone(f"the queue's sync process is gone: {exc}") from exc
            if not reply:
                raise SyncerGone("the queue's sync process exited")
            token, errno = _REPLY.unpack_from(reply)
            if not 0 < token <= self._token:
                raise SyncerGone(f"the queue's sync process answered unknown request {token}")
            if errno:
                return synced, OSError(errno, reply[_REPLY.size:].decode("utf-8", "replace"))
            synced = int(token)

    def stop(self) -> None:
        """Close the socket (the child then exits) and reap the child."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._proc is not None:
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:  # stuck in a sync of a dead disk
                self._proc.kill()
                self._proc.wait()
            self._proc = None

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid
