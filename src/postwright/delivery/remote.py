"""The remote delivery agent: hands queued mail to other servers over SMTP.

For one destination domain it plans a route (MX by preference, implicit MX, null MX, or the
relay host), then tries the candidates in order, and over each connection it sends as many
of the waiting messages as it can (connection reuse), pipelined when the server offers it.
STARTTLS is used whenever offered (opportunistic, RFC 7435); for domains that require TLS a
server that does not offer it gets nothing, the mail is deferred. With MTA-STS (RFC 8461
section 5) a domain's policy in mode ``enforce`` limits the MX hosts to its ``mx`` patterns
and requires STARTTLS with a certificate valid for the MX host name, else 4.7.5; in mode
``testing`` such failures are only logged. Every recipient ends delivered, deferred (4xx,
connection trouble, anything unexpected) or failed (5xx).
"""

from __future__ import annotations

import asyncio
import io
import logging
import random
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, cast

from ..errors import LocalProtocolError, RemoteProtocolError
from ..message.trace import received_header, stored_header
from ..net.smtpclient import DEFAULT_TIMEOUTS, SmtpClient, SmtpFailure, Timeouts
from ..policy.dkim import DkimError, author_domain, sign
from ..policy.dkimkeys import DkimKeyError, signing_key
from ..policy.mtasts import MtaSts, Policy
from ..protocol.params import xtext_encode
from ..protocol.reply import Reply
from ..protocol.sasl_client import LoginClient, PlainClient, SaslClient
from ..queue import QueuedMessage, RecipientResult
from .mx import Candidate, DnsLookup, NoRoute, plan_route

log = logging.getLogger("postwright.delivery")

_INLINE_MAX = 1 << 20
_SIGN_MAX = 40 << 20  # messages up to this size are read whole to be signed
# Where mail comes from that we sign: our own users and local submission, not relayed MX mail.
_SIGNED_ORIGINS = frozenset({"submission", "submissions", "local"})


@dataclass
class _Cached:
    client: SmtpClient
    cand: Candidate
    timer: asyncio.TimerHandle
    verified: bool = False  # TLS with a certificate valid for cand.host (MTA-STS)


class _WouldFail(Exception):
    """MTA-STS in mode testing: this session would have failed under enforce."""


@dataclass
class Job:
    """One message and the indices of its recipients in one destination domain."""

    msg: QueuedMessage
    indices: list[int]
    results: dict[int, RecipientResult] = field(default_factory=dict)

    @property
    def done(self) -> bool:
        return len(self.results) == len(self.indices)


def opportunistic_context() -> ssl.SSLContext:
    """TLS without certificate checks (RFC 7435): better than clear text, no worse."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


class RemoteDelivery:
    def __init__(self, *, resolver: DnsLookup, hostname: str, port: int = 25,
                 relayhost: tuple[str, int] | None = None,
                 relay_credentials: tuple[str, str] | None = None,
                 require_tls: frozenset[str] = frozenset(),
                 timeouts: Timeouts = DEFAULT_TIMEOUTS, messages_per_connection: int = 100,
                 rng: random.Random | None = None, dkim_dir: Path | None = None,
                 cache_time: float = 5.0, mta_sts: MtaSts | None = None,
                 verify_context: ssl.SSLContext | None = None) -> None:
        self.resolver = resolver
        self.dkim_dir = dkim_dir  # data_dir: keys under data_dir/dkim (None: never sign)
        self.hostname = hostname
        self.port = port
        self.relayhost = relayhost
        self.relay_credentials = relay_credentials
        self.require_tls = require_tls
        self.timeouts = timeouts
        self.messages_per_connection = messages_per_connection
        self.rng = rng
        self.tls_context = opportunistic_context()
        self.mta_sts = mta_sts  # None: no MTA-STS; never used with a relay host
        self.verify_context = verify_context or ssl.create_default_context()
        self.connections_opened = 0
        self.cache_time = cache_time
        self._cache: dict[str, list[_Cached]] = {}
        self._closing: set[asyncio.Task[None]] = set()

    async def deliver_domain(self, domain: str, jobs: list[Job],
                             open_body: Callable[[str], BinaryIO]) -> None:
        """Fill in ``job.results`` for every recipient of every job."""
        sts: Policy | None = None
        if self.mta_sts is not None and self.relayhost is None:
            sts = await self.mta_sts.policy(domain)
        enforce = sts is not None and sts.mode == "enforce"
        # First the connections earlier deliveries to this domain left open (a connection
        # cache, as Postfix's scache): no new TCP, TLS and EHLO per batch. A cached
        # connection that fails costs nothing: its jobs go on to a fresh route below.
        while (waiting := [job for job in jobs if not job.done]) and (
                cached := self._take_cached(self._cache_key(domain), domain,
                                            sts if enforce else None)):
            client, cand = cached
            await self._session(domain, cand, client, waiting, open_body, fresh=False)
        if all(job.done for job in jobs):
            return
        route = await plan_route(domain, self.resolver, port=self.port,
                                 relayhost=self.relayhost, rng=self.rng)
        if isinstance(route, NoRoute):
            status = "failed" if route.permanent else "deferred"
            for job in jobs:
                _settle(job, RecipientResult(status, route.reply))
            return
        last = "4.4.1 no host could be reached"
        candidates = route.candidates
        if sts is not None:
            allowed = [c for c in candidates if sts.allows(c.host)]
            if len(allowed) < len(candidates):
                outside = sorted({c.host for c in candidates if not sts.allows(c.host)})
                _sts_warning(domain, sts, f"MX hosts not in the policy: {', '.join(outside)}")
            if enforce:
                candidates = allowed
                last = (f"4.7.5 MTA-STS policy of {domain} allows none of its MX hosts "
                        f"({', '.join(sorted({c.host for c in route.candidates}))})")
        for candidate in candidates:
            # A host that took its share of messages on one connection gets another one for
            # the rest: the per-connection limit is no reason to defer them.
            while waiting := [job for job in jobs if not job.done]:
                stopped = await self._try_host(domain, candidate, waiting, open_body, sts)
                if stopped is not None:
                    last = stopped
                    break
            else:
                return
        for job in jobs:
            _settle(job, RecipientResult("deferred", last))

    async def _try_host(self, domain: str, cand: Candidate, jobs: list[Job],
                        open_body: Callable[[str], BinaryIO],
                        sts: Policy | None = None) -> str | None:
        """Deliver what this host takes on one connection; returns why it failed, if it did.

        None means the session went well: every job in ``jobs`` has its results, or the
        per-connection message limit was reached with some of them done. Under an MTA-STS
        policy in mode testing a certificate that does not verify is logged, and the host
        is tried once more with opportunistic TLS.
        """
        client_or_why = await self._connect(cand)
        if isinstance(client_or_why, str):
            return client_or_why
        try:
            return await self._session(domain, cand, client_or_why, jobs, open_body,
                                       fresh=True, sts=sts)
        except _WouldFail as exc:
            assert sts is not None
            _sts_warning(domain, sts, str(exc))
        client_or_why = await self._connect(cand)
        if isinstance(client_or_why, str):
            return client_or_why
        return await self._session(domain, cand, client_or_why, jobs, open_body, fresh=True)

    async def _connect(self, cand: Candidate) -> SmtpClient | str:
        where = f"{cand.host}[{cand.ip}]:{cand.port}"
        try:
            client = await SmtpClient.connect(cand.ip, cand.port, local_hostname=self.hostname,
                                              timeouts=self.timeouts)
        except SmtpFailure as exc:
            return _why(exc.reply, where, "greeting")
        except (OSError, TimeoutError) as exc:
            return f"4.4.1 connect to {where} failed: {str(exc) or type(exc).__name__}"
        self.connections_opened += 1
        return client

    async def _session(self, domain: str, cand: Candidate, client: SmtpClient, jobs: list[Job],
                       open_body: Callable[[str], BinaryIO], *, fresh: bool,
                       sts: Policy | None = None) -> str | None:
        where = f"{cand.host}[{cand.ip}]:{cand.port}"
        verified = False
        try:
            if fresh:
                await client.hello()
                if client.conn.supports("STARTTLS") and sts is not None:
                    try:
                        await client.starttls(self.verify_context, server_hostname=cand.host)
                    except ssl.SSLCertVerificationError as exc:
                        client.close()
                        why = f"certificate of {where} not valid: {exc.verify_message}"
                        if sts.mode != "enforce":
                            raise _WouldFail(why) from None
                        return f"4.7.5 MTA-STS policy of {domain}: {why}"[:400]
                    verified = True
                elif client.conn.supports("STARTTLS"):
                    try:
                        await client.starttls(self.tls_context, server_hostname=cand.host)
                    except SmtpFailure as exc:
                        # STARTTLS offered, then refused (454): opportunistic TLS goes on in
                        # clear (RFC 3207, RFC 7435) unless TLS is required (checked below).
                        log.info("STARTTLS refused, continuing without TLS",
                                 extra={"event": "tls_error", "domain": domain,
                                        "host": where, "reply": str(exc.reply)})
                elif sts is not None and sts.mode == "enforce":
                    await client.quit()
                    return f"4.7.5 MTA-STS policy of {domain} requires STARTTLS, {where} " \
                           f"does not offer it"
                elif sts is not None:
                    _sts_warning(domain, sts, f"{where} does not offer STARTTLS")
                if client.tls is None and (domain in self.require_tls or (self.relayhost
                                                    and "*" in self.require_tls)):
                    await client.quit()
                    return f"4.7.10 TLS is required for {domain} but {where} does not offer it"
                if self.relay_credentials is not None and self.relayhost is not None:
                    await client.authenticate(*self._sasl(client))
            sent = 0
            for job in jobs:
                if client.messages_sent >= self.messages_per_connection:
                    break
                await self._send(client, job, where, open_body)
                sent += 1
            if client.messages_sent < self.messages_per_connection and self.cache_time > 0:
                self._park(self._cache_key(domain), cand, client, verified)
            else:
                await client.quit()
            return None if sent else "4.4.2 no message sent on the connection"
        except SmtpFailure as exc:
            client.close()
            return _why(exc.reply, where, "session")
        except (RemoteProtocolError, LocalProtocolError, OSError, TimeoutError,
                ssl.SSLError) as exc:
            client.close()
            return f"4.4.2 conversation with {where} failed: {str(exc) or type(exc).__name__}"

    # ---- connection cache ------------------------------------------------------------------
    def _park(self, key: str, cand: Candidate, client: SmtpClient, verified: bool) -> None:
        loop = asyncio.get_running_loop()
        entry = _Cached(client, cand, loop.call_later(self.cache_time, self._expire, key,
                                                      client), verified)
        self._cache.setdefault(key, []).append(entry)

    def _cache_key(self, domain: str) -> str:
        """Connections are shared per destination: the domain, or the one relay host."""
        return "[relayhost]" if self.relayhost is not None else domain

    def _take_cached(self, key: str, domain: str, enforced: Policy | None = None
                     ) -> tuple[SmtpClient, Candidate] | None:
        """A parked connection fit for ``domain``; with an ``enforced`` MTA-STS policy
        only one with a verified certificate of an MX host the policy allows."""
        entries = self._cache.get(key)
        needs_tls = domain in self.require_tls or (self.relayhost is not None
                                                   and "*" in self.require_tls)
        for entry in list(reversed(entries or [])):
            if needs_tls and entry.client.tls is None:
                continue  # fine for other domains, not for this one
            if enforced is not None and not (entry.verified
                                             and enforced.allows(entry.cand.host)):
                continue
            assert entries is not None
            entries.remove(entry)
            entry.timer.cancel()
            if entry.client.usable:
                return entry.client, entry.cand
            entry.client.close()
        return None

    def _expire(self, key: str, client: SmtpClient) -> None:
        entries = self._cache.get(key, [])
        for entry in entries:
            if entry.client is client:
                entries.remove(entry)
                task = asyncio.get_running_loop().create_task(client.quit())
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)
                return

    async def close(self) -> None:
        """Say QUIT on every cached connection (shutdown)."""
        clients = [e.client for entries in self._cache.values() for e in entries]
        for entries in self._cache.values():
            for e in entries:
                e.timer.cancel()
        self._cache.clear()
        await asyncio.gather(*(c.quit() for c in clients), *self._closing,
                             return_exceptions=True)

    def _sasl(self, client: SmtpClient) -> tuple[str, SaslClient]:
        assert self.relay_credentials is not None
        user, password = self.relay_credentials
        offered = client.conn.extensions.get("AUTH", "").upper().split()
        if "PLAIN" in offered:
            return "PLAIN", PlainClient(user, password)
        if "LOGIN" in offered:
            return "LOGIN", LoginClient(user, password)
        raise SmtpFailure(Reply(454, "4.7.0", "relay host offers no AUTH mechanism we use"))

    def _signature(self, qid: str, message: bytes) -> bytes:
        """A DKIM-Signature for the author's domain when we hold a key for it (RFC 6376)."""
        assert self.dkim_dir is not None
        domain = author_domain(message)
        if domain is None:
            return b""
        try:
            key = signing_key(self.dkim_dir, domain)
            if key is None:
                return b""
            return sign(message, domain=key.domain, selector=key.selector,
                        key=key.private_key)
        except (DkimError, DkimKeyError) as exc:
            log.warning("not signed", extra={"event": "dkim", "id": qid, "domain": domain,
                                             "reason": str(exc)})
            return b""

    async def _send(self, client: SmtpClient, job: Job, where: str,
                    open_body: Callable[[str], BinaryIO]) -> None:
        env = job.msg.envelope
        conn = client.conn
        params: dict[str, str | None] = {}
        body: bytes | BinaryIO
        only = (job.msg.recipients[job.indices[0]].recipient.address
                if len(job.indices) == 1 else None)
        trace = received_header(
            helo=env.helo, client_address=env.client_address, client_name=None,
            hostname=self.hostname, protocol=env.extra.get("protocol", "ESMTP"),
            queue_id=job.msg.id, recipient=only, tls=env.extra.get("tls"),
            when=env.received_at) + stored_header(env.extra.get("authres"))
        sign = self.dkim_dir is not None and env.listener in _SIGNED_ORIGINS
        if job.msg.size <= _INLINE_MAX or (sign and job.msg.size <= _SIGN_MAX):
            with open_body(job.msg.id) as f:
                raw = f.read()
            body = trace + (self._signature(job.msg.id, raw) if sign else b"") + raw
            eight_bit = not body.isascii()
        else:
            body = cast(BinaryIO, _Prefixed(trace, open_body(job.msg.id)))
            eight_bit = env.body != "7BIT"
        try:
            if conn.supports("SIZE"):
                params["SIZE"] = str(job.msg.size)
            if env.body == "BINARYMIME":
                if not (conn.supports("CHUNKING") and conn.supports("BINARYMIME")):
                    _settle(job, RecipientResult(
                        "failed", f"5.6.3 {where} does not accept binary content "
                                  "(no CHUNKING/BINARYMIME)"))
                    return
                params["BODY"] = "BINARYMIME"
            elif eight_bit:
                if not conn.supports("8BITMIME"):
                    _settle(job, RecipientResult(
                        "failed", f"5.6.3 {where} does not accept 8-bit content (no 8BITMIME)"))
                    return
                params["BODY"] = "8BITMIME"
            if env.smtputf8 and conn.supports("SMTPUTF8"):
                params["SMTPUTF8"] = None
            dsn = conn.supports("DSN")
            if dsn and env.ret:
                params["RET"] = env.ret
            if dsn and env.envid:
                params["ENVID"] = xtext_encode(env.envid)
            rcpts = []
            for i in job.indices:
                r = job.msg.recipients[i].recipient
                rparams: dict[str, str | None] = {}
                if dsn and r.notify:
                    rparams["NOTIFY"] = ",".join(r.notify)
                if dsn and r.orcpt:
                    kind, _, addr = r.orcpt.partition(";")
                    rparams["ORCPT"] = f"{kind};{xtext_encode(addr)}"
                rcpts.append((r.address, rparams))
            try:
                txn = await client.send(env.sender, rcpts, body, mail_params=params)
            except LocalProtocolError as exc:
                # Our input the next hop cannot take (SMTPUTF8 needed, say): permanent.
                _settle(job, RecipientResult("failed", f"{exc.reply.enhanced} {exc.reply.text}"
                                             f" ({where})"))
                await client.reset()
                return
        finally:
            if not isinstance(body, bytes):
                body.close()
        for i, reply in zip(job.indices, txn.recipients, strict=True):
            if reply.code >= 300:
                job.results[i] = _result(reply, where, "RCPT")
            elif txn.data is None:
                job.results[i] = RecipientResult("deferred", f"4.4.2 no reply to the content "
                                                 f"from {where}")
            else:
                job.results[i] = _result(txn.data, where, "end of data")
        if txn.data is None or txn.data.code >= 300:
            await client.reset()


class _Prefixed(io.RawIOBase):
    """A large body read from the queue, with our trace header in front."""

    def __init__(self, head: bytes, body: BinaryIO) -> None:
        super().__init__()
        self._head = head
        self._body = body

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if self._head:
            out, self._head = self._head, b""
            return out
        return self._body.read(size)

    def close(self) -> None:
        self._body.close()
        super().close()


def _sts_warning(domain: str, policy: Policy, reason: str) -> None:
    """Log what an MTA-STS policy objects to (RFC 8461 section 5, mode testing)."""
    log.warning("MTA-STS policy check failed", extra={
        "event": "mta_sts", "domain": domain, "mode": policy.mode, "reason": reason})


def _settle(job: Job, result: RecipientResult) -> None:
    for i in job.indices:
        job.results.setdefault(i, result)


def _result(reply: Reply, where: str, stage: str) -> RecipientResult:
    text = f"{reply.code} {reply.enhanced + ' ' if reply.enhanced else ''}{reply.text}"[:400]
    line = f"{text} (in reply to {stage}, from {where})"
    if reply.code < 300:
        return RecipientResult("delivered", line)
    return RecipientResult("failed" if reply.code >= 500 else "deferred", line)


def _why(reply: Reply, where: str, stage: str) -> str:
    enhanced = reply.enhanced or ("4.4.2" if reply.code < 500 else "5.0.0")
    # A refusal of the whole session is never final for the message: try later or elsewhere.
    if enhanced.startswith("5"):
        enhanced = "4" + enhanced[1:]
    return f"{enhanced} {where} refused the {stage}: {reply.code} {reply.text}"[:400]
