"""An async SMTP client connection: the sans-IO client core driven over asyncio streams.

Thin on purpose: it opens the TCP connection, moves bytes between the socket and
:class:`~postwright.protocol.client.ClientConnection`, upgrades to TLS on STARTTLS and runs
SASL exchanges. What a reply means for a message is the caller's business (delivery agents,
the client API). Every wait has a timeout (RFC 5321 section 4.5.3.2 gives the defaults).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import BinaryIO

from ..errors import RemoteProtocolError
from ..protocol.client import ClientConnection, ReplyEvent
from ..protocol.events import ConnectionClosed
from ..protocol.reply import Reply
from ..protocol.sasl_client import SaslClient

_CHUNK = 64 * 1024
_CLOSED = Reply(421, "4.4.2", "Connection closed by the server")


class SmtpFailure(Exception):
    """The session cannot go on; ``reply`` says why (temporary unless the server said 5xx)."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(str(reply))
        self.reply = reply


@dataclass(frozen=True)
class Timeouts:
    connect: float = 30.0
    greeting: float = 300.0  # RFC 5321 4.5.3.2.1: 5 minutes
    command: float = 300.0  # MAIL, RCPT and friends: 5 minutes
    data_block: float = 180.0  # 4.5.3.2.5: 3 minutes per block
    data_end: float = 600.0  # 4.5.3.2.6: 10 minutes for the final reply


DEFAULT_TIMEOUTS = Timeouts()


@dataclass
class Transaction:
    """What one message got: a reply per recipient, and the reply to the content."""

    mail: Reply
    recipients: list[Reply]
    data: Reply | None  # None when no recipient was accepted


class SmtpClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 conn: ClientConnection, timeouts: Timeouts) -> None:
        self.reader = reader
        self.writer = writer
        self.conn = conn
        self.timeouts = timeouts
        self.greeting: Reply | None = None
        self.messages_sent = 0

    @classmethod
    async def connect(cls, host: str, port: int, *, local_hostname: str,
                      timeouts: Timeouts = DEFAULT_TIMEOUTS,
                      ssl_context: ssl.SSLContext | None = None,
                      server_hostname: str | None = None) -> SmtpClient:
        """Connect and read the greeting; raises SmtpFailure unless it is a 220."""
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=ssl_context,
                                    server_hostname=server_hostname if ssl_context else None,
                                    limit=1 << 20),
            timeouts.connect)
        client = cls(reader, writer, ClientConnection(local_hostname=local_hostname), timeouts)
        try:
            event = await client._reply(timeouts.greeting)
        except BaseException:
            client.close()
            raise
        client.greeting = event.reply
        if event.reply.code != 220:
            client.close()
            raise SmtpFailure(event.reply)
        return client

    @property
    def usable(self) -> bool:
        """Idle and still open: nothing arrived unasked (a 421, an EOF) since the last reply."""
        if self.writer.is_closing() or self.reader.at_eof() or self.conn.pending:
            return False
        # Bytes waiting while no reply is owed mean the server spoke on its own (a 421
        # before closing, typically): the connection is not to be trusted.
        return not getattr(self.reader, "_buffer", b"")

    @property
    def peer(self) -> str:
        peer = self.writer.get_extra_info("peername")
        return str(peer[0]) if peer else ""

    @property
    def tls(self) -> tuple[str, str] | None:
        obj = self.writer.get_extra_info("ssl_object")
        if obj is None:
            return None
        cipher = obj.cipher()
        return (str(obj.version()), str(cipher[0]) if cipher else "")

    # ---- plumbing ------------------------------------------------------------------------
    async def _flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.writer.write(data)
            await asyncio.wait_for(self.writer.drain(), self.timeouts.data_block)

    async def _reply(self, timeout: float | None = None) -> ReplyEvent:
        await self._flush()
        while True:
            event = self.conn.next_event()
            if isinstance(event, ReplyEvent):
                return event
            if isinstance(event, ConnectionClosed):
                raise SmtpFailure(_CLOSED)
            data = await asyncio.wait_for(self.reader.read(65536),
                                          timeout or self.timeouts.command)
            if data:
                self.conn.receive_data(data)
            else:
                self.conn.receive_eof()

    async def command(self, timeout: float | None = None) -> Reply:
        return (await self._reply(timeout)).reply

    # ---- session steps -------------------------------------------------------------------
    async def hello(self) -> Reply:
        """EHLO, falling back to HELO when the server does not know it."""
        self.conn.ehlo()
        reply = await self.command()
        if reply.code in (500, 502):
            self.conn.helo()
            reply = await self.command()
        if reply.code != 250:
            raise SmtpFailure(reply)
        return reply

    async def starttls(self, context: ssl.SSLContext, server_hostname: str | None) -> None:
        self.conn.starttls()
        reply = await self.command()
        if reply.code != 220:
            raise SmtpFailure(reply)
        await asyncio.wait_for(self.writer.start_tls(context, server_hostname=server_hostname),
                               self.timeouts.connect)
        self.conn.tls_established()
        await self.hello()

    async def authenticate(self, mechanism: str, client: SaslClient) -> None:
        self.conn.auth(mechanism, client.initial())
        reply = await self.command()
        while reply.code == 334:
            self.conn.auth_response(client.respond(reply.text))
            reply = await self.command()
        if reply.code != 235:
            raise SmtpFailure(reply)
        client.check_success()  # SCRAM: the server must prove it knows the password too

    async def send(self, sender: str, recipients: Sequence[tuple[str, Mapping[str, str | None]]],
                   body: bytes | BinaryIO, *, mail_params: Mapping[str, str | None] = {}
                   ) -> Transaction:
        """One transaction; pipelined when the server offers PIPELINING.

        A BODY=BINARYMIME transaction goes with BDAT (RFC 3030), everything else with DATA.
        """
        if any(k.upper() == "BODY" and (v or "").upper() == "BINARYMIME"
               for k, v in mail_params.items()):
            return await self._send_chunked(sender, recipients, body, mail_params)
        pipelining = self.conn.supports("PIPELINING")
        self.conn.mail(sender, mail_params)
        if not pipelining:
            mail = await self.command()
            if mail.code != 250:
                return Transaction(mail, [mail] * len(recipients), None)
        rcpt_replies: list[Reply] = []
        for address, params in recipients:
            self.conn.rcpt(address, params)
            if not pipelining:
                rcpt_replies.append(await self.command())
        if pipelining:
            self.conn.data()
            mail = await self.command()
            rcpt_replies = [await self.command() for _ in recipients]
            data_reply = await self.command()
        else:
            if not any(r.code in (250, 251) for r in rcpt_replies):
                await self.reset()
                return Transaction(mail, rcpt_replies, None)
            self.conn.data()
            data_reply = await self.command()
        if mail.code != 250:
            rcpt_replies = [mail] * len(recipients)
        if data_reply.code != 354:
            if pipelining and data_reply.code < 400:
                raise RemoteProtocolError(data_reply, "unexpected reply to DATA")
            return Transaction(mail, rcpt_replies, None if data_reply.code >= 400
                               and not any(r.code < 300 for r in rcpt_replies) else data_reply)
        accepted = any(r.code in (250, 251) for r in rcpt_replies)
        if accepted:
            for chunk in _chunks(body):
                self.conn.send_body(chunk)
                await self._flush()
        self.conn.end_body()
        final = await self.command(self.timeouts.data_end)
        self.messages_sent += 1
        return Transaction(mail, rcpt_replies, final if accepted else None)

    async def _send_chunked(self, sender: str,
                            recipients: Sequence[tuple[str, Mapping[str, str | None]]],
                            body: bytes | BinaryIO, mail_params: Mapping[str, str | None]
                            ) -> Transaction:
        """MAIL, RCPT..., then the content as counted BDAT chunks, the last one LAST.

        The chunks go even when every recipient was refused (the server must read them);
        with PIPELINING everything is sent before the replies are read.
        """
        pipelining = self.conn.supports("PIPELINING")
        self.conn.mail(sender, mail_params)
        mail = await self.command() if not pipelining else None
        rcpt_replies: list[Reply] = []
        if mail is not None and mail.code != 250:
            return Transaction(mail, [mail] * len(recipients), None)
        for address, params in recipients:
            self.conn.rcpt(address, params)
            if not pipelining:
                rcpt_replies.append(await self.command())
        if not pipelining and not any(r.code in (250, 251) for r in rcpt_replies):
            await self.reset()
            return Transaction(mail or rcpt_replies[0], rcpt_replies, None)
        pieces = iter(_chunks(body))
        chunk = next(pieces, b"")
        chunk_replies: list[Reply] = []
        while True:
            following = next(pieces, None)
            self.conn.bdat(chunk, last=following is None)
            await self._flush()
            if not pipelining:
                chunk_replies.append(await self.command(self.timeouts.data_end))
            if following is None:
                break
            chunk = following
        if pipelining:
            mail = await self.command()
            rcpt_replies = [await self.command() for _ in recipients]
            chunk_replies = [await self.command(self.timeouts.data_end)
                             for _ in range(self.conn.pending)]
        assert mail is not None
        final = chunk_replies[-1] if chunk_replies else None
        refused = next((r for r in chunk_replies if r.code >= 400), None)
        accepted = any(r.code in (250, 251) for r in rcpt_replies)
        if mail.code != 250:
            rcpt_replies = [mail] * len(recipients)
        self.messages_sent += 1
        return Transaction(mail, rcpt_replies, (refused or final) if accepted else None)

    async def reset(self) -> Reply:
        self.conn.rset()
        return await self.command()

    async def quit(self) -> None:
        try:
            self.conn.quit()
            await self.command(10.0)
        except (SmtpFailure, RemoteProtocolError, OSError, TimeoutError):
            pass
        finally:
            self.close()

    def close(self) -> None:
        self.writer.close()


def _chunks(body: bytes | BinaryIO) -> Iterable[bytes]:
    if isinstance(body, bytes):
        for start in range(0, len(body), _CHUNK):
            yield body[start:start + _CHUNK]
        return
    while True:
        chunk = body.read(_CHUNK)
        if not chunk:
            return
        yield chunk
