"""The Maildir delivery agent as a child process, and the server's handle on it.

Why a process: writing Maildir files is Python work (names, paths, CRLF -> LF) plus many
small system calls. Done in a thread of the server it competes for the interpreter lock with
the sessions that receive mail, so under load receiving and delivering take turns on one
core. As a child process (as Postfix runs ``virtual(8)`` beside ``smtpd(8)``) it runs on the
other core. :class:`MaildirAgent` starts the child on first use, sends it one batch at a
time over a pipe and restarts it if it dies; :func:`main` of this module is the child
(``python -c`` with :data:`CHILD`: ``-m`` cannot run a compiled module), which hands each
batch to :class:`~postwright.delivery.maildir.MaildirDelivery`.

Wire format (private to this module, both ends are this file and run the same interpreter):
a frame is a 4-byte big-endian length and a payload. A request's payload is a 4-byte length,
a ``marshal`` description of the batch (the standard library's serializer for plain values,
the fastest there is), then the bodies' bytes, each once, as they are: marshal would copy
them, which for 100 KB bodies cost more than all the rest. The description lists each body
(its length, or the path of the body's own file) and each item (address, folder,
Return-Path, Delivered-To, header bytes, number of its body): a message for 100 local
recipients crosses the pipe once. A reply's payload is a ``marshal`` list of (kind, text)
per item: delivered (text: the path in ``new/``), bad name, error. A frame that does not
decode to that shape is an :class:`AgentError`.

Not here: routing, the queue, retries (the manager decides what a failure means). A child
that exits mid-batch fails that whole batch as temporary: some of its messages may be in
Maildir already and are delivered again on retry (a duplicate, never a loss).
"""

from __future__ import annotations

import asyncio
import marshal
import os
import signal
import struct
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Final

from ..errors import AgentError
from .maildir import DeliveryItem, MaildirDelivery, MaildirNameError

_U32: Final = struct.Struct(">I")
_CHUNK: Final = 256 * 1024
_DELIVERED, _BAD_NAME, _ERROR = 0, 1, 2
# The child's command line after the interpreter: MAIL_ROOT and HOSTNAME follow.
CHILD: Final = ("-c", "import sys; from postwright.delivery.agent import main; "
               "sys.exit(main(sys.argv[1:]))")


# Final fields and an __init__ of its own rather than frozen=True (see protocol.address).
@dataclass(init=False, unsafe_hash=True, slots=True)
class AgentItem:
    """One message for one local mailbox: ``head`` (trace fields) then the body, which is
    either ``body`` (bytes, CRLF line ends) or the file at ``body_path``."""

    address: Final[str]
    return_path: Final[str]
    delivered_to: Final[str]
    head: Final[bytes]
    body: Final[bytes | None]
    body_path: Final[Path | None]
    folder: Final[str | None]

    def __init__(self, address: str, return_path: str, delivered_to: str, head: bytes,
                 body: bytes | None = None, body_path: Path | None = None,
                 folder: str | None = None) -> None:
        self.address = address
        self.return_path = return_path
        self.delivered_to = delivered_to
        self.head = head
        self.body = body
        self.body_path = body_path
        self.folder = folder


# ---- wire format ------------------------------------------------------------------------
def _frame(value: Any) -> bytes:
    payload = marshal.dumps(value)
    return _U32.pack(len(payload)) + payload


def _load(payload: bytes) -> Any:
    try:
        return marshal.loads(payload)
    except (EOFError, ValueError, TypeError) as exc:
        raise AgentError(f"bad agent frame: {exc}") from exc


def request_parts(items: Sequence[AgentItem]) -> list[bytes]:
    """A request frame in pieces, to be written one after the other: the body bytes go to
    the pipe as they are, never copied into a bigger buffer (for 100 KB bodies, serializing
    them was the event loop's second largest cost)."""
    bodies: dict[tuple[int, Path | None], int] = {}  # the same body object is sent once
    specs: list[tuple[int, str | None]] = []  # per body: its length (-1: none) and path
    data: list[bytes] = []
    rows = []
    for it in items:
        key = (id(it.body), it.body_path)
        number = bodies.get(key)
        if number is None:
            number = bodies[key] = len(specs)
            specs.append((-1 if it.body is None else len(it.body),
                          None if it.body_path is None else os.fspath(it.body_path)))
            if it.body:
                data.append(it.body)
        rows.append((it.address, it.folder, it.return_path, it.delivered_to, it.head, number))
    meta = marshal.dumps((specs, rows))
    size = 4 + len(meta) + sum(len(d) for d in data)
    return [_U32.pack(size) + _U32.pack(len(meta)), meta, *data]


def encode_request(items: Sequence[AgentItem]) -> bytes:
    """:func:`request_parts` as one frame."""
    return b"".join(request_parts(items))


def decode_request(payload: bytes) -> list[AgentItem]:
    view = memoryview(payload)
    if len(view) < 4:
        raise AgentError("truncated agent frame")
    (meta_size,) = _U32.unpack_from(view)
    try:
        specs, rows = _load(bytes(view[4:4 + meta_size]))
        pos = 4 + meta_size
        bodies: list[tuple[bytes | None, Path | None]] = []
        for length, where in specs:
            body = None
            if length >= 0:
                if pos + length > len(view):
                    raise AgentError("truncated agent frame")
                body = bytes(view[pos:pos + length])
                pos += length
            bodies.append((body, None if where is None else Path(where)))
        if pos != len(view):
            raise AgentError("agent frame longer than its bodies")
        items = []
        for address, folder, return_path, delivered_to, head, number in rows:
            body, path = bodies[number]
            items.append(AgentItem(address, return_path, delivered_to, head, body, path, folder))
    except (TypeError, ValueError, IndexError) as exc:
        raise AgentError(f"malformed agent request: {exc}") from exc
    return items


def encode_reply(results: Sequence[str | Path | Exception]) -> bytes:
    out: list[tuple[int, str]] = []
    for result in results:
        if not isinstance(result, Exception):
            out.append((_DELIVERED, os.fspath(result)))
        else:
            kind = _BAD_NAME if isinstance(result, MaildirNameError) else _ERROR
            out.append((kind, str(result) or type(result).__name__))
    return _frame(out)


def decode_reply(payload: bytes, expected: int) -> list[str | Exception]:
    reply = _load(payload)
    if not isinstance(reply, list) or len(reply) != expected:
        raise AgentError("agent replied for a different number of items")
    out: list[str | Exception] = []
    try:
        for kind, text in reply:
            if kind == _DELIVERED:
                out.append(text)
            elif kind == _BAD_NAME:
                out.append(MaildirNameError(text))
            else:
                out.append(AgentError(text))
    except (TypeError, ValueError) as exc:
        raise AgentError(f"malformed agent reply: {exc}") from exc
    return out


# ---- the server's side -----------------------------------------------------------------
class MaildirAgent:
    """Delivers batches through a child process; one batch at a time, in order."""

    def __init__(self, mail_root: Path, *, hostname: str) -> None:
        self.mail_root = Path(mail_root)
        self.hostname = hostname
        self._proc: asyncio.subprocess.Process | None = None
        self._lock = asyncio.Lock()
        self.started = 0  # child processes started so far (a restart shows as 2, 3, ...)

    async def deliver_batch(self, items: Sequence[AgentItem]) -> list[str | Exception]:
        """One result per item: the path of the file in ``new/``, or why it was not
        delivered."""
        if not items:
            return []
        request = request_parts(items)
        async with self._lock:
            try:
                proc = await self._running()
                assert proc.stdin is not None and proc.stdout is not None
                proc.stdin.writelines(request)
                await proc.stdin.drain()
                (size,) = _U32.unpack(await proc.stdout.readexactly(4))
                return decode_reply(await proc.stdout.readexactly(size), len(items))
            except (OSError, EOFError, asyncio.IncompleteReadError) as exc:
                await self._stop()
                error = AgentError(f"delivery agent failed: {str(exc) or type(exc).__name__}")
                return [error] * len(items)

    async def start(self) -> None:
        """Start the child now (else it starts with the first batch)."""
        async with self._lock:
            await self._running()

    async def _running(self) -> asyncio.subprocess.Process:
        if self._proc is not None and self._proc.returncode is None:
            return self._proc
        await self._stop()
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable, *CHILD, str(self.mail_root),
            self.hostname, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        self.started += 1
        return self._proc

    async def _stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.stdin is not None:
            proc.stdin.close()  # end of input: the child finishes its batch and exits
        try:
            await asyncio.wait_for(proc.wait(), timeout=10)
        except TimeoutError:
            proc.kill()
            await proc.wait()

    async def close(self) -> None:
        async with self._lock:
            await self._stop()

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid


# ---- the child -------------------------------------------------------------------------
def _read_exactly(stream: BinaryIO, n: int) -> bytes | None:
    data = stream.read(n)
    if not data:
        return None
    while len(data) < n:
        more = stream.read(n - len(data))
        if not more:
            raise AgentError("input ended inside a frame")
        data += more
    return data


def _chunks(item: AgentItem) -> Iterator[bytes]:
    yield item.head
    if item.body is not None:
        yield item.body
    if item.body_path is not None:
        with open(item.body_path, "rb") as f:
            while chunk := f.read(_CHUNK):
                yield chunk


def serve(stdin: BinaryIO, stdout: BinaryIO, delivery: MaildirDelivery) -> None:
    """Answer batches until the input ends."""
    while (head := _read_exactly(stdin, 4)) is not None:
        (size,) = _U32.unpack(head)
        payload = _read_exactly(stdin, size) if size else b""
        if payload is None:
            raise AgentError("input ended inside a frame")
        items = [DeliveryItem(it.address, _chunks(it), it.return_path, it.delivered_to,
                              it.folder) for it in decode_request(payload)]
        stdout.write(encode_reply(delivery.deliver_batch_paths(items)))
        stdout.flush()


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: MAIL_ROOT HOSTNAME (the server starts this process)", file=sys.stderr)
        return 2
    # The server decides when the agent stops (it closes our input); a Ctrl-C meant for the
    # server's terminal must not cut a batch in half.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    serve(sys.stdin.buffer, sys.stdout.buffer, MaildirDelivery(Path(argv[0]), hostname=argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
