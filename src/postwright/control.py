"""The control socket: how `postwright queue ...` talks to a running server.

A Unix socket at ``data_dir/control.sock`` carrying one JSON request per line and one JSON
answer per line. Only the queue operations of the CLI are offered: list, show, hold, release,
delete, flush. The socket is created mode 0600, so only the server's user can use it. When no
server runs, the CLI opens the queue itself instead (see ``cli.py``). A socket path longer
than ``sockaddr_un`` allows (a deep data_dir) is reached through ``/proc/self/fd`` on Linux.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .delivery.routing import Router
from .errors import PostwrightError, QueueError
from .queue import QueueStore
from .submit import enqueue

log = logging.getLogger("postwright.control")

_SUN_PATH_MAX = 107  # sockaddr_un.sun_path is 108 octets on Linux, the last one a NUL


@contextlib.contextmanager
def _socket_name(path: Path) -> Iterator[str]:
    """A name for ``path`` that fits in sockaddr_un, valid inside the ``with`` block.

    A long path is named through an open descriptor of its directory
    (``/proc/self/fd/N/control.sock``), which bind and connect resolve like any path.
    """
    if len(os.fsencode(path)) <= _SUN_PATH_MAX:
        yield str(path)
        return
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


async def queue_op(queue: QueueStore, op: str, qid: str | None) -> Any:
    """Run one queue operation; shared by the control socket and the offline CLI."""
    now = time.time()
    if op == "list":
        return [queue.get(i).to_json() for i in queue.ids()]
    if op == "flush":
        return {"flushed": await queue.flush(now=now)}
    if qid is None:
        raise QueueError(f"{op} needs a queue id")
    if op == "show":
        msg = queue.get(qid)
        out = msg.to_json()
        with queue.open_body(qid) as body:
            out["headers"] = _headers(body.read(64 * 1024))
        out["envelope"] = msg.envelope.to_dict()
        return out
    if op == "hold":
        await queue.hold(qid)
    elif op == "release":
        await queue.release(qid)
    elif op == "delete":
        await queue.delete(qid)
    else:
        raise QueueError(f"unknown operation {op!r}")
    return {"id": qid, "done": op}


def _headers(head: bytes) -> str:
    end = head.find(b"\r\n\r\n")
    return head[: end if end >= 0 else len(head)].decode("utf-8", "replace")


async def submit_op(queue: QueueStore, router: Router, hostname: str,
                    req: dict[str, Any]) -> dict[str, str]:
    """Queue a locally submitted message (``postwright send`` without ``--server``)."""
    message = base64.b64decode(str(req["message"]), validate=True)
    recipients = req["recipients"]
    if not isinstance(recipients, list):
        raise ValueError("recipients must be a list")
    qid = await enqueue(queue, router, sender=str(req["sender"]),
                        recipients=[str(r) for r in recipients], message=message,
                        hostname=hostname)
    return {"id": qid}


class ControlServer:
    def __init__(self, path: Path, queue: QueueStore, on_change: Callable[[], None],
                 router: Router, hostname: str) -> None:
        self.path = path
        self.queue = queue
        self.on_change = on_change
        self.router = router
        self.hostname = hostname
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        if self.path.exists() or self.path.is_symlink():
            self.path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            with _socket_name(self.path) as name:
                sock.bind(name)
        except BaseException:
            sock.close()
            raise
        finally:
            os.umask(old)
        self.server = await asyncio.start_unix_server(self._client, sock=sock)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 30)
            op = "?"
            req: Any = None
            try:
                req = json.loads(line)
                op = str(req["op"])
                if op == "submit":
                    result = await submit_op(self.queue, self.router, self.hostname, req)
                else:
                    result = await queue_op(self.queue, op, req.get("id"))
                answer: dict[str, Any] = {"ok": True, "result": result}
                if op in ("release", "flush", "submit"):
                    self.on_change()
            except (PostwrightError, KeyError, ValueError, TypeError) as exc:
                answer = {"ok": False, "error": str(exc)}
            log.info("control", extra={"event": "control", "op": op, "id": req.get("id")
                                       if isinstance(req, dict) else None,
                                       "ok": answer["ok"]})
            writer.write(json.dumps(answer).encode() + b"\n")
            await writer.drain()
        finally:
            writer.close()


def request(path: Path, op: str, qid: str | None = None, timeout: float = 30.0,
            **fields: Any) -> Any:
    """Client side (blocking): send one request; raise ConnectionError if no server listens."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        with _socket_name(path) as name:
            sock.connect(name)
        sock.sendall(json.dumps({"op": op, "id": qid, **fields}).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    answer = json.loads(data)
    if not answer.get("ok"):
        raise QueueError(str(answer.get("error")))
    return answer["result"]
