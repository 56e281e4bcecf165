"""The queue's sync process: ``fdatasync`` for the event loop, without a thread.

The event loop writes each group-commit batch to the journal segment itself (a copy into the
page cache, microseconds) and has this child process make it durable. Why not a thread: a
thread must take the interpreter lock back after every blocking call, and while the event
loop is busy that wait was about 0.8 ms per hand-off, on top of a 1.2 ms sync (measured with
20 sessions: a commit took 4.2 ms from hand-off to reply). A child process has an
interpreter of its own; with it a commit takes about 3.3 ms.

Wire, over a ``SOCK_SEQPACKET`` socket pair (one datagram per message):

* parent -> child: an 8-byte token (1, 2, 3, ...), with 1 to 8 file descriptors attached
  (``SCM_RIGHTS``): directories that got new entries, then the segment to ``fdatasync``.
  The parent does not wait for an answer before sending the next request.
* The child takes every request waiting, ``fsync``s their directories, ``fdatasync``s each
  file once, closes its copies and answers once for all of them:
* child -> parent: the last token served, a 4-byte errno (0 when all went well) and a UTF-8
  message. So while one sync runs, the batches written meanwhile wait for the next one,
  which serves them together (group commit across batches).

The child runs this file as a script (``python -I -S syncer.py FD``), so it imports nothing
but the standard library and starts in milliseconds. It ignores SIGINT (Ctrl-C in a terminal
must not interrupt a sync; the server decides when to stop) and exits when the socket closes,
which is also what happens when the server dies. Not an RFC topic.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import Sequence

_REQUEST = struct.Struct(">Q")
_REPLY = struct.Struct(">QI")
MAX_FDS = 8


class SyncerGone(OSError):
    """The sync process is not running any more; what it was asked is not known to be done."""


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
        """Started, and the child has exited since."""
        return self._proc is not None and self._proc.poll() is not None

    def start(self) -> None:
        if self._sock is not None:
            return
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-I", "-S", __file__, str(theirs.fileno())],
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
            socket.send_fds(self._sock, [_REQUEST.pack(self._token)], list(fds))
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


def _serve(sock: socket.socket) -> None:
    sock.setblocking(False)
    while True:
        select.select([sock], [], [])
        # Every request waiting now is served by the same syncs: each arrived after its
        # batch was written, so one fdatasync per file covers them all.
        requests: list[tuple[bytes, list[int]]] = []
        while True:
            try:
                data, fds, _flags, _addr = socket.recv_fds(sock, 64, MAX_FDS)
            except BlockingIOError:
                break
            except ConnectionResetError:
                return
            if not data:
                if not requests:
                    return  # the server closed its end
                break
            requests.append((data, fds))
        if not requests:
            continue
        (token,) = _REQUEST.unpack_from(requests[-1][0])
        errno, message = 0, b""
        try:
            files: dict[tuple[int, int], int] = {}
            for _data, group in requests:
                if not group:
                    raise OSError(22, "no descriptor to sync")
                for fd in group[:-1]:
                    os.fsync(fd)
                st = os.fstat(group[-1])
                files.setdefault((st.st_dev, st.st_ino), group[-1])
            for fd in files.values():
                os.fdatasync(fd)
        except OSError as exc:
            errno, message = exc.errno or 5, str(exc).encode("utf-8", "replace")
        finally:
            for _data, group in requests:
                for fd in group:
                    os.close(fd)
        try:
            sock.send(_REPLY.pack(token, errno) + message)
        except (BrokenPipeError, ConnectionResetError):
            return  # the server is gone


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _serve(socket.socket(fileno=int(sys.argv[1])))
