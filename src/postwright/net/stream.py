"""A small stream over ``asyncio.Protocol``, built for the SMTP fast path.

``data_received`` hands bytes to a sink (the sans-IO core's ``receive_data``) and wakes the
session task; writes go straight to the transport. Compared with asyncio streams this skips a
buffer copy and a layer of futures per read. It also carries what the session needs to know
of the connection: peer address and TLS details, and the STARTTLS upgrade.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from typing import Final, cast

_HIGH_WATER: Final = 1 << 20  # pause reading when this much input is waiting for the session


class Stream(asyncio.Protocol):
    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: tuple[str, int] = ("", 0)
        self.sink: Callable[[bytes], None] | None = None
        self.idle = True  # no mail transaction under way (set by the session)
        self.pending = 0  # bytes handed to the sink that the session has not processed
        self._waiter: asyncio.Future[bool] | None = None
        self._answer: Callable[[], bool] | None = None  # see wait_data
        self._eof = False
        self._paused = False
        # Kept: asyncio.get_running_loop() checks the process id on every call, and a
        # session waits once per command. The listener passes its own.
        self._loop = loop if loop is not None else asyncio.get_running_loop()
        self._closed = self._loop.create_future()
        # One timer per connection, re-armed only when it fires early (see wait_data).
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._tls: tuple[str, str] | None | _Unset = _UNSET
        self._early: list[bytes] = []

    # ---- asyncio.Protocol --------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not inherit from asyncio.Transport, but behave as one.
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self.peer = (str(peer[0]), int(peer[1]))

    def data_received(self, data: bytes) -> None:
        if self.sink is None:
            self._early.append(data)
        else:
            self.sink(data)
        self.pending += len(data)
        if self.pending > _HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        w = self._waiter
        if w is not None and not w.done() and (self._answer is None or self._answer()):
            w.set_result(True)

    def eof_received(self) -> bool:
        self._eof = True
        self.wake()
        # Half-closed by the client (its QUIT, or its end of data, may still be waiting for
        # an answer): keep our side open, so the replies still go out; the session closes
        # the connection once it has answered everything. TLS cannot half-close.
        return self.tls is None

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._closed.done():
            self._closed.set_result(None)
        self.wake()

    # ---- for the session ---------------------------------------------------------------
    def attach(self, sink: Callable[[bytes], None]) -> None:
        self.sink = sink
        for data in self._early:
            sink(data)
        self._early.clear()

    @property
    def at_eof(self) -> bool:
        return self._eof

    def consumed(self, remaining: int) -> None:
        """The session processed input down to ``remaining`` buffered bytes."""
        self.pending = remaining
        if self._paused and remaining < _HIGH_WATER // 2 and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()

    async def wait_data(self, timeout: float,
                        answer: Callable[[], bool] | None = None) -> bool:
        """Wait for more input or EOF; False on timeout.

        ``answer``, if given, is called from ``data_received`` when input comes during the
        wait: it may handle the input right there (and call :meth:`extend` to wait on) and
        returns True to end the wait.

        A bare future rather than ``asyncio.wait_for``, and no new timer per wait: a session
        waits once per command, so the connection keeps one timer that is left running
        between waits. When it fires it compares the clock with the deadline of the current
        wait and sets itself again if that lies further ahead; a wait with a nearer deadline
        moves it forward.
        """
        if self._eof:
            return True
        loop = self._loop
        waiter: asyncio.Future[bool] = loop.create_future()
        self._waiter = waiter
        self._answer = answer
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        self.extend(timeout)
        try:
            return await waiter
        finally:
            self._waiter = None
            self._answer = None

    def extend(self, timeout: float) -> None:
        """The current wait now ends ``timeout`` seconds from now."""
        self._deadline = deadline = self._loop.time() + timeout
        if self._timer is None or deadline < self._timer_at:
            self._arm(deadline)

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = self._loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        waiter = self._waiter
        if waiter is None or waiter.done():
            return  # not waiting: the next wait sets a new timer
        if self._loop.time() >= self._deadline:
            waiter.set_result(False)
        else:
            self._arm(self._deadline)

    def write(self, data: bytes) -> None:
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    async def wait_closed(self) -> None:
        await self._closed

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    @property
    def tls(self) -> tuple[str, str] | None:
        """(protocol version, cipher name) once TLS is up."""
        if not isinstance(self._tls, _Unset):
            return self._tls  # asked once per message; fixed until start_tls
        if self.transport is None:
            return None
        obj = self.transport.get_extra_info("ssl_object")
        if obj is None:
            self._tls = None
        else:
            cipher = obj.cipher()
            self._tls = (str(obj.version()), str(cipher[0]) if cipher else "")
        return self._tls

    async def start_tls(self, context: ssl.SSLContext, timeout: float) -> None:
        """Upgrade this connection in place (STARTTLS, RFC 3207).

        From the moment the TLS layer takes the transport, input is decrypted: it is held
        back (not given to the sink) until the caller re-attaches a sink once the core knows
        TLS is up. Some event loops deliver the first decrypted bytes before ``start_tls``
        returns; without the hold they would reach a core still waiting for the handshake.
        Plaintext that came before this call went to the old sink, which discards it.
        """
        assert self.transport is not None
        loop = self._loop
        self._early.clear()
        self._tls = _UNSET
        self.sink = None  # no await between this and start_tls taking the transport
        new = await loop.start_tls(self.transport, self, context, server_side=True,
                                   ssl_handshake_timeout=timeout)
        if new is None:
            raise ConnectionError("TLS handshake failed")
        self.transport = new
        self._tls = _UNSET

    def wake(self) -> None:
        """End the session's current wait, if any (as input would)."""
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(True)


class _Unset:
    """Marks the TLS details as not looked up yet (None means: no TLS)."""


_UNSET: Final = _Unset()
