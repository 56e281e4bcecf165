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
but the standard library and starts in milliseconds; the parent's side is ``sync.py``. It
ignores SIGINT (Ctrl-C in a terminal must not interrupt a sync; the server decides when to
stop) and exits when the socket closes, which is also what happens when the server dies. Not
an RFC topic.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import struct
import sys

_REQUEST = struct.Struct(">Q")
_REPLY = struct.Struct(">QI")
MAX_FDS = 8


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
