"""Listening sockets: accept connections, enforce connection limits, drain on shutdown.

A :class:`Listener` owns one or more asyncio servers for one role (smtp, submission,
submissions). Each accepted connection gets a :class:`~postwright.net.stream.Stream` and a
task running the role's handler. Limits: a global maximum and a per-client-address maximum;
a connection over a limit is told ``421`` and closed before any session starts.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, Final, cast

from ..protocol.reply import Reply
from .stream import Stream

Handler = Callable[[Stream], Awaitable[None]]

log: Final = logging.getLogger("postwright.net")


class Listener:
    def __init__(self, role: str, addresses: list[tuple[str, int]], handler: Handler, *,
                 max_connections: int, max_per_client: int,
                 ssl_context: ssl.SSLContext | None = None,
                 handshake_timeout: float = 30.0) -> None:
        self.role = role
        self.addresses = addresses
        self.handler = handler
        self.max_connections = max_connections
        self.max_per_client = max_per_client
        self.ssl_context = ssl_context
        self.handshake_timeout = handshake_timeout
        self.servers: list[asyncio.Server] = []
        self.sessions: dict[Stream, asyncio.Task[None]] = {}
        self.per_client: Counter[str] = Counter()
        # Looked up once in start(), not per connection: asyncio.get_running_loop() makes a
        # getpid() system call (Python 3.11).
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        for host, port in self.addresses:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            server = await loop.create_server(
                self._make_stream, host, port, family=family, reuse_address=True,
                backlog=1024, ssl=self.ssl_context,
                ssl_handshake_timeout=self.handshake_timeout if self.ssl_context else None,
            )
            self.servers.append(server)

    @property
    def bound(self) -> list[tuple[str, int]]:
        out = []
        for server in self.servers:
            sockets: Any = cast(Any, server).sockets  # uvloop: a list of pseudo-sockets
            for sock in sockets:
                name = sock.getsockname()
                out.append((str(name[0]), int(name[1])))
        return out

    def _make_stream(self) -> Stream:
        return _ListenerStream(self, self._loop)

    def _accepted(self, stream: Stream) -> None:
        client = stream.peer[0]
        if len(self.sessions) >= self.max_connections:
            self._refuse(stream, "too many connections")
            return
        if self.per_client[client] >= self.max_per_client:
            self._refuse(stream, "too many connections from client")
            return
        self.per_client[client] += 1
        assert self._loop is not None
        self.sessions[stream] = self._loop.create_task(self._run(stream))

    def _refuse(self, stream: Stream, reason: str) -> None:
        log.warning("connection refused", extra={"event": "reject", "role": self.role,
                                                 "client": stream.peer[0], "reason": reason})
        stream.write(Reply(421, "4.7.0", "Too many connections, try again later").to_bytes())
        stream.close()

    async def _run(self, stream: Stream) -> None:
        client = stream.peer[0]
        try:
            await self.handler(stream)
        except Exception:
            log.exception("session crashed", extra={"event": "error", "role": self.role,
                                                    "client": client})
        finally:
            stream.close()
            self.sessions.pop(stream, None)
            self.per_client[client] -= 1
            if self.per_client[client] <= 0:
                del self.per_client[client]

    def stop_accepting(self) -> None:
        for server in self.servers:
            server.close()

    async def drain(self, timeout: float) -> None:
        """Stop accepting; end idle sessions now, busy ones after ``timeout``.

        A cancelled session answers 421 and closes (the session handles the cancellation).
        """
        self.stop_accepting()
        for stream, task in list(self.sessions.items()):
            if stream.idle:
                task.cancel()
        if self.sessions:
            _done, pending = await asyncio.wait(set(self.sessions.values()), timeout=timeout)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5)
        for server in self.servers:
            await server.wait_closed()


class _ListenerStream(Stream):
    def __init__(self, listener: Listener, loop: asyncio.AbstractEventLoop | None) -> None:
        super().__init__(loop)
        self._listener = listener

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._listener._accepted(self)
