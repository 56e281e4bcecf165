"""Send mail over SMTP from Python: an async client with a connection pool, and a blocking one.

Usable on its own, without a postwright server: it speaks to any SMTP server. Example::

    from email.message import EmailMessage
    from postwright.client import Client, SyncClient, send

    msg = EmailMessage()
    msg["From"] = "alice@example.org"
    msg["To"] = "bob@example.net"
    msg["Bcc"] = "carol@example.net"       # gets the message, removed from what is sent
    msg["Subject"] = "Hello"
    msg.set_content("Hi Bob!")

    async with Client("smtp.example.org", 587, username="alice@example.org",
                      password="secret") as client:
        result = await client.send(msg)     # many concurrent send() calls share the pool
        print(result.accepted, result.refused)

    with SyncClient("smtp.example.org", 465, tls=True, username=..., password=...) as c:
        c.send(b"Subject: hi\\r\\n\\r\\nbody\\r\\n", sender="a@example.org",
               recipients=["b@example.net"])

    send(msg, host="127.0.0.1", port=2525, starttls=False)   # one message, one connection

:class:`Client` keeps up to ``pool_size`` connections open and reuses them across ``send()``
calls (RSET between messages when a transaction was left unfinished); a connection that
failed, or that the server closed while idle, is dropped and replaced. Each message is one
transaction, pipelined when the server offers PIPELINING. TLS: ``tls=True`` is implicit TLS
(RFC 8314, port 465); otherwise ``starttls=None`` uses STARTTLS when offered, ``True``
requires it, ``False`` never uses it. Certificates are verified unless ``ssl_context`` says
otherwise; a failed handshake is a :class:`SendError`, never a fall-back to clear text.
With ``username`` and ``password`` the client authenticates (SCRAM-SHA-256, else PLAIN, else
LOGIN; PLAIN and LOGIN only over TLS). An ``EmailMessage`` gives the sender (Sender, else
From) and recipients (To, Cc, Bcc) unless they are passed; Bcc is removed before sending.
Content is sent with CRLF line ends; SMTPUTF8 is used when an address needs it, BODY=8BITMIME
when the content has 8-bit octets (a server without them gets nothing: every recipient is
refused with 553 5.6.7 or 554 5.6.3 before anything is sent).

Outcomes: :class:`SendResult` maps each recipient to the reply that accepted or refused it
(the RCPT reply, or the reply to the content when the server refused the message as a
whole); :class:`SendError` means the session failed (connect, greeting, TLS, AUTH, a
connection lost mid-transaction) and carries a :class:`Reply` (4xx unless the server said
5xx). Bad input (a malformed address, NUL in the content, no recipients) is ``ValueError``.

Covers RFC 5321 (sessions, section 4.5.3.2 timeouts through :class:`Timeouts`), RFC 2920
(PIPELINING), RFC 3207 (STARTTLS), RFC 8314 (implicit TLS), RFC 4954 (AUTH), RFC 6531
(SMTPUTF8), RFC 6152 (8BITMIME) and RFC 1870 (SIZE). It does not look up MX records, queue
or retry (a postwright server does that), convert 8-bit content, or use DSN, CHUNKING or
REQUIRETLS.
"""

from __future__ import annotations

import asyncio
import copy
import re
import socket
import ssl
import threading
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from email.policy import EmailPolicy
from email.utils import getaddresses
from types import TracebackType
from typing import Any, TypeVar

from .errors import LocalProtocolError, PostwrightError, RemoteProtocolError
from .net.smtpclient import DEFAULT_TIMEOUTS, SmtpClient, SmtpFailure, Timeouts, Transaction
from .protocol.address import AddressError, parse_mailbox
from .protocol.client import ClientConnection, ClientState
from .protocol.reply import Reply
from .protocol.sasl_client import LoginClient, PlainClient, SaslClient, ScramSha256Client

__all__ = ["Client", "SendError", "SendResult", "SyncClient", "Timeouts", "send"]

_T = TypeVar("_T")
_LINE_END = re.compile(rb"\r\n|\r|\n")
_NEEDS_UTF8 = Reply(553, "5.6.7", "An address needs SMTPUTF8 and the server does not offer it")
_NEEDS_8BIT = Reply(554, "5.6.3", "8-bit content and the server does not offer 8BITMIME")
_MECHANISMS = ("SCRAM-SHA-256", "PLAIN", "LOGIN")  # preference order
_SAFE_IN_CLEAR = frozenset({"SCRAM-SHA-256"})  # never reveals the password


@dataclass(frozen=True)
class SendResult:
    """What the server did with one message, per recipient."""

    accepted: dict[str, Reply]  # recipient -> its RCPT reply; the server took the message
    refused: dict[str, Reply]  # recipient -> the reply that refused it (RCPT or content)
    data: Reply | None  # the reply to the content (or to DATA); None if no RCPT succeeded


class SendError(PostwrightError):
    """The session failed (connect, greeting, TLS, AUTH, connection lost); see ``reply``."""

    def __init__(self, reply: Reply, detail: str = "") -> None:
        super().__init__(f"{detail}: {reply}" if detail else str(reply))
        self.reply = reply
        self.detail = detail


@dataclass(frozen=True)
class _Outgoing:
    sender: str
    recipients: tuple[str, ...]
    content: bytes
    smtputf8: bool


class _Connection(SmtpClient):
    """A pooled session: counts the replies it read and the messages it carried."""

    replies = 0
    uses = 0

    async def command(self, timeout: float | None = None) -> Reply:
        reply = await super().command(timeout)
        self.replies += 1
        return reply


class Client:
    """An async SMTP client for one server, with a pool of up to ``pool_size`` connections."""

    def __init__(self, host: str, port: int = 25, *, local_hostname: str | None = None,
                 starttls: bool | None = None, tls: bool = False,
                 ssl_context: ssl.SSLContext | None = None,
                 username: str | None = None, password: str | None = None,
                 auth_mechanism: str | None = None,
                 pool_size: int = 4, timeouts: Timeouts = DEFAULT_TIMEOUTS) -> None:
        if pool_size < 1:
            raise ValueError("pool_size must be at least 1")
        if (username is None) != (password is None):
            raise ValueError("give both username and password, or neither")
        if auth_mechanism is not None and auth_mechanism.upper() not in _MECHANISMS:
            raise ValueError(f"auth_mechanism must be one of {', '.join(_MECHANISMS)}")
        self.host = host
        self.port = port
        self.local_hostname = _hostname(local_hostname)
        self.starttls = starttls
        self.tls = tls
        self.ssl_context = ssl_context
        self.username = username
        self._password = password
        self.auth_mechanism = auth_mechanism.upper() if auth_mechanism else None
        self.pool_size = pool_size
        self.timeouts = timeouts
        self.connections_opened = 0
        self._slots = asyncio.Semaphore(pool_size)
        self._idle: list[_Connection] = []
        self._quitting: set[asyncio.Task[None]] = set()
        self._closed = False

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()

    async def send(self, message: EmailMessage | bytes, *, sender: str | None = None,
                   recipients: Sequence[str] | None = None) -> SendResult:
        """Send one message; see the module docstring for what is returned and raised."""
        out = _prepare(message, sender, recipients)
        if self._closed:
            raise RuntimeError("the client is closed")
        async with self._slots:
            if self._closed:  # closed while this call waited for a connection
                raise RuntimeError("the client is closed")
            for attempt in (1, 2):
                conn = await self._checkout()
                start = conn.replies
                try:
                    result = await self._transact(conn, out)
                except (SmtpFailure, RemoteProtocolError, LocalProtocolError, OSError,
                        TimeoutError) as exc:
                    conn.close()
                    if attempt == 1 and conn.uses and conn.replies == start:
                        # A pooled connection that died before answering anything: the
                        # server cannot have taken the message, so a fresh one may retry.
                        continue
                    raise _failure(exc, self._where, "transaction") from exc
                except BaseException:
                    conn.close()
                    raise
                conn.uses += 1
                self._checkin(conn)
                return result
        raise AssertionError("unreachable")  # pragma: no cover

    async def aclose(self) -> None:
        """QUIT the idle connections; connections in use close when their send() ends."""
        self._closed = True
        idle, self._idle = self._idle, []
        await asyncio.gather(*(_quit(conn) for conn in idle))

    # ---- the pool ---------------------------------------------------------------------
    @property
    def _where(self) -> str:
        return f"{self.host}:{self.port}"

    async def _checkout(self) -> _Connection:
        while self._idle:
            conn = self._idle.pop()  # the most recently used: the least likely to time out
            if await _still_open(conn):
                return conn
            conn.close()
        return await self._open()

    def _checkin(self, conn: _Connection) -> None:
        if conn.conn.state is not ClientState.READY or conn.writer.is_closing():
            conn.close()
        elif self._closed:  # aclose() ran while this one was busy
            task = asyncio.get_running_loop().create_task(_quit(conn))
            self._quitting.add(task)
            task.add_done_callback(self._quitting.discard)
        else:
            self._idle.append(conn)

    async def _open(self) -> _Connection:
        context = self._context() if self.tls else None
        try:
            conn = await _Connection.connect(
                self.host, self.port, local_hostname=self.local_hostname,
                timeouts=self.timeouts, ssl_context=context,
                server_hostname=self.host if context else None)
        except (SmtpFailure, RemoteProtocolError, OSError, TimeoutError) as exc:
            raise _failure(exc, self._where, "connect") from exc
        assert isinstance(conn, _Connection)
        self.connections_opened += 1
        try:
            await self._start_session(conn)
        except BaseException as exc:
            conn.close()
            if isinstance(exc, (SmtpFailure, RemoteProtocolError, LocalProtocolError, OSError,
                                TimeoutError)):
                raise _failure(exc, self._where, "session set-up") from exc
            raise
        return conn

    async def _start_session(self, conn: _Connection) -> None:
        await conn.hello()
        if not self.tls and self.starttls is not False:
            if conn.conn.supports("STARTTLS"):
                await conn.starttls(self._context(), server_hostname=self.host)
            elif self.starttls:
                raise SendError(Reply(530, "5.7.10", "TLS is required and the server does "
                                      "not offer STARTTLS"), self._where)
        if self.username is not None and self._password is not None:
            mechanism, sasl = self._sasl(conn)
            await conn.authenticate(mechanism, sasl)

    def _context(self) -> ssl.SSLContext:
        if self.ssl_context is None:
            self.ssl_context = ssl.create_default_context()
        return self.ssl_context

    def _sasl(self, conn: _Connection) -> tuple[str, SaslClient]:
        assert self.username is not None and self._password is not None
        offered = conn.conn.extensions.get("AUTH", "").upper().split()
        secure = conn.tls is not None
        wanted = (self.auth_mechanism,) if self.auth_mechanism else _MECHANISMS
        usable = [m for m in wanted if m in offered]
        if not usable:
            raise SendError(Reply(530, "5.7.0", "The server offers no AUTH mechanism we use"),
                            self._where)
        choice = next((m for m in usable if secure or m in _SAFE_IN_CLEAR), None)
        if choice is None:
            raise SendError(Reply(538, "5.7.11", "Encryption required for the AUTH "
                                  "mechanism: no password is sent in clear"), self._where)
        if choice == "SCRAM-SHA-256":
            return choice, ScramSha256Client(self.username, self._password)
        if choice == "PLAIN":
            return choice, PlainClient(self.username, self._password)
        return choice, LoginClient(self.username, self._password)

    # ---- one message ------------------------------------------------------------------
    async def _transact(self, conn: _Connection, out: _Outgoing) -> SendResult:
        ext = conn.conn
        params: dict[str, str | None] = {}
        if out.smtputf8:
            if not ext.supports("SMTPUTF8"):
                return _refuse_all(out, _NEEDS_UTF8)
            params["SMTPUTF8"] = None
        if not out.content.isascii():
            if not ext.supports("8BITMIME"):
                return _refuse_all(out, _NEEDS_8BIT)
            params["BODY"] = "8BITMIME"
        if ext.supports("SIZE"):
            params["SIZE"] = str(len(out.content))
        txn = await conn.send(out.sender, [(r, {}) for r in out.recipients], out.content,
                              mail_params=params)
        if ext.state is not ClientState.READY:
            try:  # DATA refused, say: clear the transaction before the connection is reused
                await conn.reset()
            except (SmtpFailure, RemoteProtocolError, LocalProtocolError, OSError,
                    TimeoutError):
                conn.close()  # the result stands; the pool drops the connection
        return _outcome(out, txn)


class SyncClient:
    """:class:`Client`, blocking: its event loop runs in a background thread.

    Thread-safe: several threads may call :meth:`send` at once and share the pool.
    """

    def __init__(self, host: str, port: int = 25, *, local_hostname: str | None = None,
                 starttls: bool | None = None, tls: bool = False,
                 ssl_context: ssl.SSLContext | None = None,
                 username: str | None = None, password: str | None = None,
                 auth_mechanism: str | None = None,
                 pool_size: int = 4, timeouts: Timeouts = DEFAULT_TIMEOUTS) -> None:
        self._client = Client(host, port, local_hostname=local_hostname, starttls=starttls,
                              tls=tls, ssl_context=ssl_context, username=username,
                              password=password, auth_mechanism=auth_mechanism,
                              pool_size=pool_size, timeouts=timeouts)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="postwright-client",
                                        daemon=True)
        self._thread.start()
        self._closed = False

    @property
    def client(self) -> Client:
        """The async client underneath (use it only from the background loop)."""
        return self._client

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    def _call(self, coro: Coroutine[Any, Any, _T]) -> _T:
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("SyncClient called from its own event loop")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def send(self, message: EmailMessage | bytes, *, sender: str | None = None,
             recipients: Sequence[str] | None = None) -> SendResult:
        if self._closed:
            raise RuntimeError("the client is closed")
        return self._call(self._client.send(message, sender=sender, recipients=recipients))

    def close(self) -> None:
        """QUIT every connection and stop the background thread (idempotent); a send
        still under way in another thread is cancelled."""
        if self._closed:
            return
        self._closed = True
        try:
            self._call(self._shutdown())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()

    async def _shutdown(self) -> None:
        await self._client.aclose()
        # As asyncio.run ends: whatever still runs (a send from another thread) is cancelled.
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        await self._loop.shutdown_asyncgens()
        await self._loop.shutdown_default_executor()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def send(message: EmailMessage | bytes, *, host: str, port: int = 25,
         sender: str | None = None, recipients: Sequence[str] | None = None,
         **options: Any) -> SendResult:
    """Send one message over one connection and close it; ``options`` as for Client."""
    options.setdefault("pool_size", 1)
    with SyncClient(host, port, **options) as client:
        return client.send(message, sender=sender, recipients=recipients)


# ---- helpers ------------------------------------------------------------------------------

def _hostname(name: str | None) -> str:
    """The EHLO name: as given (checked), else this host's name when it is a valid one."""
    candidate = socket.gethostname() if name is None else name
    try:
        ClientConnection(local_hostname=candidate)
    except LocalProtocolError:
        if name is not None:
            raise ValueError(f"local_hostname is not a valid domain: {name!r}") from None
        return "localhost"
    return candidate


def _prepare(message: EmailMessage | bytes, sender: str | None,
             recipients: Sequence[str] | None) -> _Outgoing:
    """The envelope and wire content of one message; ValueError for bad input."""
    if isinstance(message, (bytes, bytearray, memoryview)):
        if sender is None or recipients is None:
            raise ValueError("sender and recipients are required when sending bytes")
        raw = bytes(message)
    elif isinstance(message, EmailMessage):
        if sender is None:
            found = _addresses(message, "Sender") or _addresses(message, "From")
            if not found:
                raise ValueError("the message has no From (or Sender) address: pass sender")
            sender = found[0]
        if recipients is None:
            recipients = [a for h in ("To", "Cc", "Bcc") for a in _addresses(message, h)]
        raw = b""
    else:
        raise TypeError(f"message must be EmailMessage or bytes, not {type(message).__name__}")
    if isinstance(recipients, str):
        raise ValueError("recipients must be a sequence of addresses, not one string")
    rcpts = tuple(dict.fromkeys(recipients))  # exact duplicates once, order kept
    if not rcpts:
        raise ValueError("no recipients")
    _check_address(sender, "sender", allow_null=True)
    for rcpt in rcpts:
        _check_address(rcpt, "recipient", allow_null=False)
    smtputf8 = not all(a.isascii() for a in (sender, *rcpts))
    if isinstance(message, EmailMessage):
        raw = _serialize(message, smtputf8)
    content = _LINE_END.sub(b"\r\n", raw)
    if content and not content.endswith(b"\r\n"):
        content += b"\r\n"
    if b"\0" in content:
        raise ValueError("the content contains NUL, which SMTP DATA cannot carry")
    return _Outgoing(sender, rcpts, content, smtputf8)


def _addresses(message: EmailMessage, header: str) -> list[str]:
    values = [str(v) for v in message.get_all(header, [])]
    return [addr for _name, addr in getaddresses(values) if addr]


def _check_address(address: str, what: str, *, allow_null: bool) -> None:
    if address == "" and allow_null:
        return
    if what == "recipient" and address.lower() == "postmaster":
        return
    if any(c in address for c in "\r\n\0"):
        raise ValueError(f"{what} contains CR, LF or NUL: {address!r}")
    try:
        parse_mailbox(address, smtputf8=True)
    except AddressError as exc:
        raise ValueError(f"malformed {what} {address!r}: {exc}") from None


def _serialize(message: EmailMessage, smtputf8: bool) -> bytes:
    if "Bcc" in message or "Resent-Bcc" in message:
        message = copy.copy(message)  # deleting a header rebinds the list: a shallow copy will do
        del message["Bcc"]
        del message["Resent-Bcc"]
    policy = message.policy
    if isinstance(policy, EmailPolicy):
        policy = policy.clone(linesep="\r\n", utf8=smtputf8)
    else:
        policy = policy.clone(linesep="\r\n")
    return message.as_bytes(policy=policy)


def _refuse_all(out: _Outgoing, reply: Reply) -> SendResult:
    return SendResult(accepted={}, refused=dict.fromkeys(out.recipients, reply), data=None)


def _outcome(out: _Outgoing, txn: Transaction) -> SendResult:
    taken = txn.data is not None and txn.data.code < 300
    accepted: dict[str, Reply] = {}
    refused: dict[str, Reply] = {}
    for rcpt, reply in zip(out.recipients, txn.recipients, strict=True):
        if reply.code >= 300:
            refused[rcpt] = reply
        elif taken:
            accepted[rcpt] = reply
        else:
            refused[rcpt] = txn.data or reply
    return SendResult(accepted=accepted, refused=refused, data=txn.data)


def _failure(exc: BaseException, where: str, stage: str) -> SendError:
    """The SendError for an exception from a session step."""
    if isinstance(exc, SendError):
        return exc
    if isinstance(exc, (SmtpFailure, RemoteProtocolError, LocalProtocolError)):
        return SendError(exc.reply, f"{where}: {stage} failed")
    if isinstance(exc, ssl.SSLError):
        reason = getattr(exc, "verify_message", None) or exc.reason or type(exc).__name__
        return SendError(Reply(421, "4.7.0", "TLS handshake failed"),
                         f"{where}: {stage} failed: {_one_line(str(reason))}")
    if isinstance(exc, TimeoutError):
        return SendError(Reply(421, "4.4.2", "Timed out"), f"{where}: {stage} timed out")
    if stage == "connect":
        return SendError(Reply(421, "4.4.1", "Connection failed"),
                         f"{where}: connect failed: {_one_line(str(exc))}")
    return SendError(Reply(421, "4.4.2", "Connection lost"),
                     f"{where}: {stage} failed: {_one_line(str(exc))}")


def _one_line(text: str) -> str:
    return " ".join(text.split())[:300]


async def _still_open(conn: _Connection) -> bool:
    """Whether an idle connection can carry a message: nothing may have arrived while idle
    (an unsolicited 421 or the end of the connection both mean the server is gone)."""
    if conn.writer.is_closing() or conn.reader.at_eof() or \
            conn.conn.state is not ClientState.READY:
        return False
    probe = asyncio.ensure_future(conn.reader.read(1))
    await asyncio.sleep(0)  # the probe runs first: it finishes at once only if data waits
    if probe.done():
        probe.exception()  # retrieved, so never "exception was never retrieved"
        return False
    probe.cancel()
    await asyncio.wait([probe])
    return True


async def _quit(conn: _Connection) -> None:
    try:
        await conn.quit()
    except PostwrightError:
        conn.close()
    try:
        await asyncio.wait_for(conn.writer.wait_closed(), 5.0)
    except (OSError, TimeoutError, ssl.SSLError):
        pass
