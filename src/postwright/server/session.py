"""One inbound SMTP session: the sans-IO core driven over a :class:`~postwright.net.stream.Stream`.

The session answers the core's events: it applies relay and recipient policy at RCPT, streams
the body into the queue and replies 250 to end-of-data only after the queue says the message
is durable. It never delivers mail itself. Replies are written here and only here.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Final, Protocol

from ..delivery.routing import Router
from ..envelope import Envelope, Recipient
from ..errors import QueueError
from ..message.trace import with_protocol
from ..net.stream import Stream
from ..policy.emailauth import Lookups, check_message
from ..policy.relay import relay_check
from ..policy.sender import owns
from ..policy.throttle import AuthThrottle, ConnectionRate
from ..protocol.address import Mailbox
from ..protocol.events import (
    NEED_DATA,
    PAUSED,
    Auth,
    AuthResponse,
    BadCommand,
    Command,
    ConnectionClosed,
    EndOfChunk,
    EndOfMessage,
    Event,
    Hello,
    Mail,
    MessageData,
    Rcpt,
    Sentinel,
)
from ..protocol.params import MailParams
from ..protocol.reply import Reply
from ..protocol.server import ServerConnection, ServerSettings
from ..queue import BodyWriter, QueueStore

log: Final = logging.getLogger("postwright.smtpd")


class Authenticator(Protocol):
    """SASL back end for AUTH (RFC 4954); supplied by the submission layer."""

    def start(self, mechanism: str, initial: str | None) -> Reply: ...
    def step(self, data: str) -> Reply: ...
    @property
    def identity(self) -> str | None: ...


@dataclass(frozen=True)
class Role:
    """How a listener behaves: smtp (MX), submission (587) or submissions (465)."""

    name: str
    settings: ServerSettings
    relay_when_authenticated: bool = False


_TRUSTED_MEMORY = 4096  # client addresses whose is_trusted answer is kept


@dataclass
class Services:
    hostname: str
    router: Router
    queue: QueueStore
    command_timeout: float = 300.0
    data_timeout: float = 180.0
    tls_context: ssl.SSLContext | None = None
    handshake_timeout: float = 30.0
    on_queued: Callable[[str], None] = field(default=lambda qid: None)
    new_authenticator: Callable[[], Authenticator] | None = None
    auth_throttle: AuthThrottle = field(default_factory=AuthThrottle)
    connection_rate: ConnectionRate | None = None
    trusted_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    sender_policy: str = "own"
    greeting_delay: float = 0.0
    auth_checks: AuthChecks | None = None
    # Answers of is_trusted by client address: parsing the address and testing it against
    # each network took longer than the rest of setting up a session.
    _trusted: dict[str, bool] = field(default_factory=dict, repr=False, compare=False)

    def is_trusted(self, client: str) -> bool:
        known = self._trusted.get(client)
        if known is None:
            if len(self._trusted) >= _TRUSTED_MEMORY:
                self._trusted.clear()
            known = self._trusted[client] = self._in_trusted_networks(client)
        return known

    def _in_trusted_networks(self, client: str) -> bool:
        try:
            address = ipaddress.ip_address(client)
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        return any(address in net for net in self.trusted_networks)


@dataclass(frozen=True)
class AuthChecks:
    """Inbound SPF/DKIM/DMARC settings for the smtp listener."""

    dns: Lookups
    on_reject: str = "reject"
    on_quarantine: str = "quarantine"
    max_size: int = 10 << 20


# Replies sent on every transaction, made once: a Reply keeps its rendered bytes.
_OK: Final = Reply(250, "2.0.0", "Ok")
_SENDER_OK: Final = Reply(250, "2.1.0", "Sender ok")
_RECIPIENT_OK: Final = Reply(250, "2.1.5", "Recipient ok")
_GO_AHEAD: Final = Reply(354, None, "End data with <CR><LF>.<CR><LF>")
_BYE: Final = Reply(221, "2.0.0", "Bye")
_TRY_LATER: Final = Reply(451, "4.3.0", "Temporary failure, try again later")


@functools.lru_cache(maxsize=16)
def _greeting(hostname: str) -> Reply:
    return Reply(220, None, f"{hostname} ESMTP postwright")


class InboundSession:
    def __init__(self, stream: Stream, role: Role, services: Services) -> None:
        self.stream = stream
        self.role = role
        self.services = services
        self.client = stream.peer[0]
        self.trusted = services.is_trusted(self.client)
        settings = role.settings
        if self.trusted and settings.require_auth:
            settings = replace(settings, require_auth=False)
        self.conn = ServerConnection(settings)
        self.sender: str | None = None
        self.mail_auth: str | None = None
        self.mail_params: MailParams | None = None
        self.recipients: list[Recipient] = []
        self._seen: set[str] = set()
        self.body: BodyWriter | None = None
        self.account: str | None = None
        self.auth: Authenticator | None = None
        self._held: Event | Sentinel | None = None  # taken by _answer_now, left for the task
        self._failure: Exception | None = None  # raised by _answer_now, for the task to raise
        # A commit started by _answer_now is under way (its reply is owed); the task, if it
        # wakes meanwhile, waits on _commit_waiter for it.
        self._committing = False
        self._commit_waiter: asyncio.Future[None] | None = None
        stream.attach(self.conn.receive_data)

    # ---- main loop ---------------------------------------------------------------------
    async def run(self) -> None:
        log.info("connect", extra={"event": "connect", "role": self.role.name,
                                   "client": self.client})
        conn = self.conn
        rate = self.services.connection_rate
        if rate is not None and not self.trusted and not rate.allow(self.client, time.time()):
            log.warning("connection rate exceeded", extra={"event": "reject",
                                                          "client": self.client,
                                                          "reason": "connection rate"})
            self.stream.write(Reply(421, "4.7.0", "Too many connections, slow down").to_bytes())
            return
        try:
            if self.services.greeting_delay > 0:
                # Clients that talk before the greeting are told 554 by the core.
                await asyncio.sleep(self.services.greeting_delay)
            self.send(_greeting(self.services.hostname))
            while not conn.must_close:
                ev = self._held
                if ev is None:
                    ev = conn.next_event()
                else:
                    self._held = None
                if ev is NEED_DATA:
                    self.flush()
                    if self.stream.at_eof:
                        conn.receive_eof()
                        continue
                    self.stream.idle = not conn.in_transaction
                    if not await self.stream.wait_data(self._timeout(), self._answer_now):
                        log.info("timeout", extra={"event": "timeout", "client": self.client})
                        self.send(Reply(421, "4.4.2", "Timeout, closing connection"))
                        break
                    if self._failure is not None:
                        raise self._failure
                    self.stream.idle = False
                    continue
                if ev is PAUSED and self._committing:
                    # Woken (end of input, say) while _answer_now's commit is under way:
                    # its reply comes first.
                    self._commit_waiter = asyncio.get_running_loop().create_future()
                    await self._commit_waiter
                    continue
                if isinstance(ev, Sentinel):
                    break  # nothing more can happen on this connection
                if isinstance(ev, ConnectionClosed):
                    break
                if not self.handle_now(ev):
                    await self.handle(ev)
                self.stream.consumed(conn.buffered)
        except asyncio.CancelledError:
            if not conn.must_close:
                self.send(Reply(421, "4.3.2", "Server shutting down"))
            self.flush()
            raise
        finally:
            self.flush()
            self._drop_body()
            log.info("disconnect", extra={"event": "disconnect", "client": self.client,
                                          "errors": conn.errors})

    def send(self, reply: Reply) -> None:
        self.conn.send(reply)

    def flush(self) -> None:
        self.stream.write(self.conn.data_to_send())

    def _timeout(self) -> float:
        """How long the client may take to send more."""
        return (self.services.data_timeout if self.conn.in_data
                else self.services.command_timeout)

    def _answer_now(self) -> bool:
        """Input came while the session waits for it (the stream calls this from its
        ``data_received``): answer here what needs no waiting, and keep the session asleep
        while that is all there is. True wakes it, for an event it must handle itself (end of
        data, AUTH, STARTTLS, end of input) or for an error to raise there.

        A transaction of MAIL, RCPT, DATA and the message's lines thus costs the session task
        no wake-up at all when the message is committed from here too (:meth:`_commit_soon`),
        and each reply leaves in the same loop turn its command arrived in, or, for the end
        of data, the turn the queue learns the message is durable.
        """
        conn = self.conn
        stream = self.stream
        try:
            while not conn.must_close:
                ev = conn.next_event()
                if ev is NEED_DATA:
                    self.flush()
                    stream.consumed(conn.buffered)
                    if stream.at_eof:
                        return True
                    stream.idle = not conn.in_transaction
                    stream.extend(self._timeout())
                    return False
                if ev is PAUSED and self._committing:
                    return False  # input waits in the core until the commit's reply is sent
                if isinstance(ev, EndOfMessage) and self._commit_soon(ev):
                    continue
                if isinstance(ev, (Sentinel, ConnectionClosed)) or not self.handle_now(ev):
                    self._held = ev
                    return True
                stream.consumed(conn.buffered)
        except Exception as exc:  # raised in the session task, as if it had been there
            self._failure = exc
        self.flush()
        return True

    # ---- event handlers ----------------------------------------------------------------
    def handle_now(self, ev: Event) -> bool:
        """Handle an event that needs no waiting; False (nothing done) for the others."""
        if isinstance(ev, MessageData):
            if self.body is None:
                self.body = self.services.queue.new_body()
            self.body.write(ev.data)
        elif isinstance(ev, EndOfMessage):
            return False
        elif isinstance(ev, EndOfChunk):
            self.send(Reply(250, "2.0.0", f"{ev.size} octets received"))
        elif isinstance(ev, BadCommand):
            log.info("bad command", extra={"event": "reject", "client": self.client,
                                           "reply": str(ev.reply), "reason": ev.detail})
            self.send(ev.reply)
            if ev.fatal:
                self.flush()
        elif isinstance(ev, Hello):
            self._clear()
            self.send(self.conn.hello_reply(f"Hello {ev.domain}"))
        elif isinstance(ev, Mail):
            self.mail(ev)
        elif isinstance(ev, Rcpt):
            self.rcpt(ev)
        elif isinstance(ev, Command) and not isinstance(ev, Auth) and ev.verb != "STARTTLS":
            self.simple(ev)
        else:
            return False
        return True

    async def handle(self, ev: Event) -> None:
        """Handle an event that :meth:`handle_now` left: these wait for something."""
        if isinstance(ev, EndOfMessage):
            await self.end_of_message(ev)
        elif isinstance(ev, Auth):
            await self.auth_start(ev)
        elif isinstance(ev, AuthResponse):
            await self.auth_step(ev)
        elif isinstance(ev, Command) and ev.verb == "STARTTLS":
            await self.starttls()

    def simple(self, ev: Command) -> None:
        verb = ev.verb
        if verb == "DATA":
            self.send(_GO_AHEAD)
        elif verb == "RSET":
            self._clear()
            self.send(_OK)
        elif verb == "NOOP":
            self.send(_OK)
        elif verb == "QUIT":
            self.send(_BYE)
        elif verb == "VRFY":
            self.send(Reply(252, "2.5.0", "Cannot VRFY user, but will accept message"))
        elif verb == "EXPN":
            self.send(Reply(502, "5.5.1", "EXPN not available"))
        elif verb == "HELP":
            self.send(Reply(214, "2.0.0", "See RFC 5321; postwright"))

    def mail(self, ev: Mail) -> None:
        path = ev.path
        self._clear()
        if (self.role.relay_when_authenticated and self.account is not None
                and self.services.sender_policy == "own"
                and not owns(self.account, path.mailbox, self.services.router)):
            log.info("sender refused", extra={"event": "reject", "client": self.client,
                                              "account": self.account, "sender": str(path),
                                              "reason": "sender not owned"})
            self.send(Reply(553, "5.7.1", "Sender address not owned by authenticated user"))
            return
        self.sender = "" if path.mailbox is None else str(path.mailbox)
        self.mail_params = ev.params
        # RFC 4954 section 5: AUTH= on MAIL names who submitted the message. It is taken
        # only from trusted peers; from anyone else it is parsed and ignored.
        self.mail_auth = (ev.params.auth if self.trusted and ev.params.auth not in (None, "<>")
                          else None)
        self.send(_SENDER_OK)

    def rcpt(self, ev: Rcpt) -> None:
        path = ev.path
        mailbox = path.mailbox
        assert mailbox is not None
        # A bare <postmaster> (RFC 5321 section 4.5.1) is the router's and relay check's job.
        may_relay = self.trusted or (self.role.relay_when_authenticated
                                     and self.conn.authenticated)
        refusal = relay_check(mailbox, router=self.services.router, may_relay=may_relay)
        if refusal is not None:
            self._reject_rcpt(mailbox, refusal, "relay denied")
            return
        res = self.services.router.resolve(mailbox)
        if res.kind == "unknown":
            self._reject_rcpt(mailbox, Reply(550, "5.1.1", "Mailbox unavailable"),
                              "unknown recipient")
            return
        given = str(mailbox)
        orcpt = ev.params.orcpt or (None if res.targets == (given,) else f"rfc822;{given}")
        for target in res.targets:
            if target.lower() in self._seen:
                continue
            self._seen.add(target.lower())
            self.recipients.append(Recipient(target, orcpt, ev.params.notify))
        self.send(_RECIPIENT_OK)

    def _reject_rcpt(self, mailbox: Mailbox, reply: Reply, reason: str) -> None:
        log.info("recipient refused", extra={"event": "reject", "client": self.client,
                                             "recipient": str(mailbox), "reason": reason,
                                             "reply": str(reply)})
        self.send(reply)

    async def end_of_message(self, ev: EndOfMessage) -> None:
        body, self.body = self.body, None
        if ev.error is not None:
            if body is not None:
                self.services.queue.discard(body)
            log.info("message refused", extra={"event": "reject", "client": self.client,
                                               "reason": ev.error.text, "size": ev.size})
            self.send(ev.error)
            self._clear()
            return
        if body is None:
            body = self.services.queue.new_body()
        envelope = self._envelope()
        if self.services.auth_checks is not None and self._checked_here():
            checked = await self._authenticate(body, envelope)
            if checked is None:
                return
            body, envelope = checked
        try:
            qid = await self.services.queue.commit(body, envelope, now=envelope.received_at)
        except Exception:
            self._commit_refused(body)
            return
        self._log_queued(qid, envelope, ev.size)
        self.send(Reply(250, "2.0.0", f"Ok: queued as {qid}"))
        self._clear()
        self.services.on_queued(qid)

    def _commit_soon(self, ev: EndOfMessage) -> bool:
        """End of data from :meth:`_answer_now`: start the commit here, without the session
        task, when nothing needs waiting for first (a refused message, the inbound checks, a
        body that spilled to a file of its own go to :meth:`end_of_message`). The reply
        follows in :meth:`_committed`. False when the task must handle it."""
        body = self.body
        if (ev.error is not None or (body is not None and body.spilled)
                or (self.services.auth_checks is not None and self._checked_here())):
            return False
        self.body = None
        if body is None:
            body = self.services.queue.new_body()
        envelope = self._envelope()
        try:
            started = self.services.queue.commit_soon(
                body, envelope, now=envelope.received_at,
                done=lambda qid, error: self._committed(qid, error, envelope, ev.size))
        except Exception:
            self._commit_refused(body)
            return True
        assert started  # the body is in memory
        self._committing = True
        return True

    def _committed(self, qid: str, error: QueueError | None, envelope: Envelope,
                   size: int) -> None:
        """The queue's word on a commit :meth:`_commit_soon` started: reply, then go on
        with whatever input came meanwhile (or let the task, if it is waiting, go on)."""
        self._committing = False
        if error is None:
            self.services.on_queued(qid)
            self._log_queued(qid, envelope, size)
        else:
            log.error("queue commit failed", extra={"event": "error", "client": self.client,
                                                    "reason": str(error)})
        waiter, self._commit_waiter = self._commit_waiter, None
        try:
            if self.conn.must_close:
                return  # the session ended meanwhile (timeout, shutdown): no one to tell
            if error is None:
                self.send(Reply(250, "2.0.0", f"Ok: queued as {qid}"))
            else:
                self.send(_TRY_LATER)
            self._clear()
            if waiter is not None:
                self.flush()  # the task goes on from here
            elif self._answer_now():
                self.stream.wake()
        except Exception as exc:  # raised in the session task, as if it had been there
            if waiter is not None:
                waiter.set_exception(exc)
                waiter = None
            else:
                self._failure = exc
                self.stream.wake()
        finally:
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    def _commit_refused(self, body: BodyWriter) -> None:
        """The queue would not take the message: nothing is kept, the client tries later."""
        log.exception("queue commit failed", extra={"event": "error", "client": self.client})
        self.services.queue.discard(body)
        self.send(_TRY_LATER)
        self._clear()

    def _log_queued(self, qid: str, envelope: Envelope, size: int) -> None:
        if log.isEnabledFor(logging.INFO):  # spares building the fields for every message
            log.info("queued", extra={"event": "queued", "id": qid, "client": self.client,
                                      "sender": envelope.sender, "size": size,
                                      "recipients": [r.address for r in envelope.recipients]})

    def _checked_here(self) -> bool:
        """SPF, DKIM and DMARC apply to mail from strangers on the MX listener."""
        return (self.role.name == "smtp" and not self.trusted
                and not self.conn.authenticated)

    async def _authenticate(self, body: BodyWriter, envelope: Envelope
                            ) -> tuple[BodyWriter, Envelope] | None:
        """Run the inbound checks; None when the message was refused (reply sent)."""
        settings = self.services.auth_checks
        assert settings is not None
        queue = self.services.queue
        message = body.read_all(settings.max_size)
        outcome = await check_message(
            message, client_ip=self.client, helo=self.conn.helo, mail_from=envelope.sender,
            authserv_id=self.services.hostname, dns=settings.dns,
            on_reject=settings.on_reject, on_quarantine=settings.on_quarantine)
        fields = {"event": "auth_check", "client": self.client, "action": outcome.action,
                  **outcome.summary}
        if outcome.reply is not None:
            queue.discard(body)
            log.info("message refused by authentication checks",
                     extra={**fields, "event": "reject", "reply": str(outcome.reply)})
            self.send(outcome.reply)
            self._clear()
            return None
        log.info("authentication checks", extra=fields)
        if outcome.stripped is not None:
            # Incoming Authentication-Results claiming our authserv-id are forgeries.
            queue.discard(body)
            body = queue.new_body()
            body.write(outcome.stripped)
        extra = dict(envelope.extra)
        extra["authres"] = outcome.header
        if outcome.action == "quarantine":
            extra["folder"] = "Junk"
        return body, replace(envelope, extra=extra)

    def _envelope(self) -> Envelope:
        params = self.mail_params or MailParams()
        tls = self.stream.tls
        extra = {
            "protocol": with_protocol(esmtp=self.conn.esmtp, tls=self.conn.tls_active,
                                      auth=self.conn.authenticated, utf8=params.smtputf8),
        }
        if tls:
            extra["tls"] = f"{tls[0]} {tls[1]}"
        return Envelope(
            sender=self.sender or "",
            recipients=tuple(self.recipients),
            body=params.body or "7BIT",
            smtputf8=params.smtputf8,
            ret=params.ret,
            envid=params.envid,
            helo=self.conn.helo,
            client_address=self.client,
            received_at=time.time(),
            auth=self.account or self.mail_auth,
            listener=self.role.name,
            extra=extra,
        )

    # ---- TLS and AUTH ------------------------------------------------------------------
    async def starttls(self) -> None:
        context = self.services.tls_context
        assert context is not None  # the core offers STARTTLS only when configured
        self.send(Reply(220, "2.0.0", "Ready to start TLS"))
        self.flush()
        try:
            await self.stream.start_tls(context, self.services.handshake_timeout)
        except (OSError, ssl.SSLError, ConnectionError, TimeoutError) as exc:
            log.info("tls handshake failed", extra={"event": "tls_error",
                                                    "client": self.client, "reason": str(exc)})
            self.conn.must_close = True
            return
        if self.conn.discarded_after_starttls:
            log.warning("plaintext injected after STARTTLS discarded",
                        extra={"event": "reject", "client": self.client,
                               "bytes": self.conn.discarded_after_starttls})
        self.conn.tls_established()
        self.stream.attach(self.conn.receive_data)  # input held during the upgrade
        self._clear()
        self.account = None

    async def auth_start(self, ev: Auth) -> None:
        factory = self.services.new_authenticator
        if factory is None:
            self.send(Reply(503, "5.5.1", "AUTH not available"))
            return
        if self.services.auth_throttle.blocked(self.client, None, time.time()):
            self._auth_blocked()
            return
        self.auth = factory()
        # Password checks hash (argon2): keep them off the event loop.
        reply = await asyncio.to_thread(self.auth.start, ev.mechanism, ev.initial)
        await self._auth_reply(reply)

    async def auth_step(self, ev: AuthResponse) -> None:
        assert self.auth is not None
        reply = await asyncio.to_thread(self.auth.step, ev.data)
        await self._auth_reply(reply)

    async def _auth_reply(self, reply: Reply) -> None:
        auth = self.auth
        assert auth is not None
        throttle = self.services.auth_throttle
        now = time.time()
        if reply.code == 235:
            self.account = auth.identity
            throttle.success(self.client, self.account, now)
            log.info("authenticated", extra={"event": "auth", "client": self.client,
                                             "account": self.account})
        elif reply.code == 535:
            tried = getattr(auth, "failed_identity", None)
            throttle.failure(self.client, tried, now)
            log.info("authentication failed", extra={"event": "auth_failed",
                                                     "client": self.client, "account": tried,
                                                     "reply": str(reply)})
            if throttle.blocked(self.client, tried, now):
                self.auth = None
                self._auth_blocked()
                return
            delay = throttle.delay(self.client, tried, now)
            if delay > 0:
                await asyncio.sleep(delay)
        elif reply.code != 334:
            log.info("authentication ended", extra={"event": "auth_failed",
                                                    "client": self.client,
                                                    "reply": str(reply)})
        if reply.code != 334:
            self.auth = None
        self.send(reply)

    def _auth_blocked(self) -> None:
        log.warning("authentication blocked", extra={"event": "reject", "client": self.client,
                                                     "reason": "too many AUTH failures"})
        self.send(Reply(421, "4.7.0", "Too many authentication failures, closing connection"))

    # ---- helpers -----------------------------------------------------------------------
    def _clear(self) -> None:
        self._drop_body()
        self.sender = None
        self.mail_params = None
        self.mail_auth = None
        self.recipients = []
        self._seen = set()

    def _drop_body(self) -> None:
        if self.body is not None:
            self.services.queue.discard(self.body)
            self.body = None


async def serve_connection(stream: Stream, role: Role, services: Services) -> None:
    await InboundSession(stream, role, services).run()
