"""The sans-IO SMTP client core: commands in, bytes out; bytes in, replies out.

A :class:`ClientConnection` keeps a FIFO of the commands it sent and matches every complete
reply to the oldest one (a reply with nothing pending is a protocol error, which rules out a
whole class of desynchronisation bugs). The state follows what the caller sent; replies move
it only where they change framing or end a transaction (one table, ``_ON_REPLY``).

Covers RFC 5321 sections 3.1 (greeting), 4.1.1 (commands), 4.1.1.4 and 4.5.2 (DATA and
dot-stuffing), 4.2 (replies, multi-line replies) and 2.3.8 (CRLF only); RFC 2920 (PIPELINING:
order, commands that must end a group); RFC 1870 (SIZE); RFC 6152 (8BITMIME); RFC 3030
(CHUNKING, BINARYMIME); RFC 2034 and 3463 (enhanced status codes); RFC 6531 (SMTPUTF8);
RFC 3207 (STARTTLS: bytes received after the 220 are discarded) and RFC 4954 (AUTH framing).

It does not open sockets, speak TLS, run SASL mechanisms (``sasl_client``), convert content,
enforce SIZE or decide what a reply means for a message: the delivery agent does. The
caller's input is refused with :class:`LocalProtocolError` before any byte reaches the output,
carrying the reply to record: 8-bit content to a server without 8BITMIME gets 554 5.6.3 (our
policy is to bounce, not to convert), a non-ASCII address without SMTPUTF8 553 5.6.7. Anything
malformed from the server raises :class:`RemoteProtocolError` (451 4.5.0, temporary) and
closes the connection; so does a reply with nothing pending (an unsolicited 421 carries
itself).
"""

from __future__ import annotations

import enum
import re
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final, NoReturn

from ..errors import LocalProtocolError, RemoteProtocolError
from .address import AddressError, Mailbox, parse_domain, parse_mailbox
from .events import NEED_DATA, ConnectionClosed, Event, Sentinel
from .params import MailParams, ParamError, RcptParams, mail_params, parse_params, rcpt_params
from .reply import Reply

__all__ = ["AUTH_RESPONSE", "END_OF_DATA", "GREETING", "MAX_REPLY_LINE", "MAX_REPLY_LINES",
           "ClientConnection", "ClientState", "ReplyEvent", "SentCommand"]

MAX_REPLY_LINE: Final = 2048  # octets of one reply line, line end included (RFC 5321 asks 512)
MAX_REPLY_LINES: Final = 100  # lines of one multi-line reply
MAX_AUTH_LINE: Final = 512  # an AUTH command with its initial response (RFC 4954 section 4)
MAX_AUTH_RESPONSE: Final = 12_288  # RFC 4954 section 4: what a server must accept

GREETING: Final = "GREETING"  # the verb the greeting "answers"
END_OF_DATA: Final = "."  # the verb of the line that ends a DATA body
AUTH_RESPONSE: Final = "AUTH-RESPONSE"  # the verb of a SASL line (its data is never recorded)


class ClientState(enum.Enum):
    GREETING = "greeting"  # waiting for the server's greeting
    CONNECTED = "connected"  # greeted, or TLS just established: EHLO or HELO next
    READY = "ready"  # EHLO/HELO accepted, no transaction open
    MAIL = "mail"  # MAIL sent
    RCPT = "rcpt"  # at least one RCPT sent
    DATA = "data"  # 354 received: the body is being sent
    BDAT = "bdat"  # a non-final BDAT chunk sent
    FAILED = "failed"  # DATA or a BDAT chunk refused: RSET (or QUIT) before anything else
    AUTH = "auth"  # a 334 received: a SASL line is owed
    TLS_PENDING = "tls"  # 220 to STARTTLS received, handshake not done
    CLOSED = "closed"


_S = ClientState


@dataclass(frozen=True, slots=True)
class SentCommand:
    """What a reply answers: the verb as sent and its argument (SASL data left out)."""

    verb: str
    arg: str


@dataclass(frozen=True, slots=True)
class ReplyEvent(Event):
    command: SentCommand
    reply: Reply


@dataclass(frozen=True, slots=True)
class _Rule:
    states: tuple[ClientState, ...]  # where the caller may issue the command (a tuple:
    # membership compares identities, where a frozenset would call Enum.__hash__)
    last: bool = False  # RFC 2920 section 3.1: nothing may follow it before its reply
    then: ClientState | None = None  # the state once it is sent (None: unchanged)
    needs: str | None = None  # the extension the server must have advertised


_TALK: Final = (_S.CONNECTED, _S.READY, _S.MAIL, _S.RCPT, _S.BDAT, _S.FAILED)
_RULES: Final[dict[str, _Rule]] = {
    "EHLO": _Rule(_TALK, last=True),
    "HELO": _Rule(_TALK, last=True),
    "MAIL": _Rule((_S.READY,), then=_S.MAIL),
    "RCPT": _Rule((_S.MAIL, _S.RCPT), then=_S.RCPT),
    "DATA": _Rule((_S.RCPT,), last=True),
    "BDAT": _Rule((_S.RCPT, _S.BDAT), then=_S.BDAT, needs="CHUNKING"),
    END_OF_DATA: _Rule((_S.DATA,), then=_S.READY),
    "RSET": _Rule(_TALK, then=_S.READY),
    "NOOP": _Rule(_TALK, last=True),
    "QUIT": _Rule(_TALK, last=True),
    "STARTTLS": _Rule((_S.READY,), last=True, needs="STARTTLS"),
    "AUTH": _Rule((_S.READY,), last=True, needs="AUTH"),
    AUTH_RESPONSE: _Rule((_S.AUTH,), last=True),
}

# How a reply moves the state: (codes meaning success, state then, state otherwise); None
# keeps the state. Verbs not listed never move it (RCPT, RSET, NOOP, end of data...).
_ON_REPLY: Final[dict[str, tuple[tuple[int, ...], ClientState | None, ClientState | None]]] = {
    GREETING: ((220,), _S.CONNECTED, _S.CLOSED),
    "EHLO": ((250,), _S.READY, None),
    "HELO": ((250,), _S.READY, None),
    "MAIL": ((250,), None, _S.READY),
    "DATA": ((354,), _S.DATA, _S.FAILED),
    "BDAT": ((250,), None, _S.FAILED),
    "STARTTLS": ((220,), _S.TLS_PENDING, None),
    "AUTH": ((334,), _S.AUTH, _S.READY),
    AUTH_RESPONSE: ((334,), _S.AUTH, _S.READY),
    "QUIT": ((221,), _S.CLOSED, _S.CLOSED),
}
# Replies that only count while their transaction is the current one: a late refusal of an
# old transaction must not disturb the one the caller has pipelined after it.
_TRANSACTIONAL: Final = frozenset({"MAIL", "DATA", "BDAT"})
# Parameters whose extension is not named after them; the others need their own keyword.
_PARAM_EXTENSION: Final = {"BODY": "8BITMIME", "RET": "DSN", "ENVID": "DSN", "NOTIFY": "DSN",
                    "ORCPT": "DSN"}
_MAIL_KNOWN: Final = frozenset({"SIZE", "BODY", "SMTPUTF8", "RET", "ENVID", "AUTH"})
_RCPT_KNOWN: Final = frozenset({"NOTIFY", "ORCPT"})

_ENHANCED: Final = re.compile(r"[245]\.[0-9]{1,3}\.[0-9]{1,3}")
_KEYWORD: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")
_MECHANISM: Final = re.compile(r"[A-Z0-9_-]{1,20}")  # RFC 4422 section 3.1 sasl-mech
_BASE64: Final = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")

_OUT_OF_ORDER: Final = Reply(451, "4.3.0", "Internal error: command out of sequence")
_BAD_SENDER: Final = Reply(553, "5.1.7", "Bad sender address syntax")
_BAD_RECIPIENT: Final = Reply(553, "5.1.3", "Bad recipient address syntax")
_BAD_ARGUMENT: Final = Reply(501, "5.5.4", "Invalid command argument")
_NEEDS_UTF8: Final = Reply(553, "5.6.7", "Non-ASCII address or parameter and no SMTPUTF8")
_NEEDS_8BIT: Final = Reply(554, "5.6.3", "8-bit content and the server does not offer 8BITMIME")
_BAD_CONTENT: Final = Reply(554, "5.6.0", "Content has a bare CR or LF, or a NUL")
_REMOTE: Final = Reply(451, "4.5.0", "Remote protocol error")


@dataclass(frozen=True, slots=True)
class _Pending:
    command: SentCommand
    txn: int  # which transaction it belongs to
    last: bool


class ClientConnection:
    """One SMTP session seen from the client, without any I/O."""

    def __init__(self, *, local_hostname: str) -> None:
        if any(c in local_hostname for c in "\r\n\0 "):
            raise LocalProtocolError(_BAD_ARGUMENT, "local hostname has CR, LF, NUL or space")
        try:
            parse_domain(local_hostname, smtputf8=False)
        except AddressError as exc:
            raise LocalProtocolError(_BAD_ARGUMENT, f"bad local hostname: {exc}") from None
        self.local_hostname = local_hostname
        self.state = _S.GREETING
        self.extensions: dict[str, str] = {}
        self.tls_active = False
        self.authenticated = False
        self.discarded_after_starttls = 0
        self._hello = False  # an EHLO or HELO was accepted (since TLS, if any)
        self._fifo: deque[_Pending] = deque([_Pending(SentCommand(GREETING, ""), 0, True)])
        self._barriers = 1  # pending commands that end a pipelined group
        self._out: list[bytes] = []
        self._buf = bytearray()
        self._lines: list[str] = []  # the reply being assembled
        self._code = 0
        self._eof = False
        # the transaction
        self._txn = 0
        self._smtputf8 = False
        self._body_type: str | None = None
        self._held = b""  # a CR at the end of content, until we know what follows it
        self._line_start = True

    # ---- what the driver asks ---------------------------------------------------------
    @property
    def pending(self) -> int:
        """Replies owed by the server (the driver reads while this is positive)."""
        return len(self._fifo)

    @property
    def max_size(self) -> int | None:
        """The SIZE the server advertised (RFC 1870), None when absent or unlimited (0)."""
        value = self.extensions.get("SIZE", "")
        return int(value) if value.isascii() and value.isdigit() and int(value) else None

    def supports(self, keyword: str) -> bool:
        return keyword.upper() in self.extensions

    def data_to_send(self) -> bytes:
        out = b"".join(self._out)
        self._out.clear()
        return out

    # ---- input ------------------------------------------------------------------------
    def receive_data(self, data: bytes) -> None:
        if self.state is _S.TLS_PENDING:
            # Plaintext between the 220 to STARTTLS and the handshake is an injection.
            self.discarded_after_starttls += len(data)
        elif self.state is not _S.CLOSED:
            self._buf += data

    def receive_eof(self) -> None:
        self._eof = True

    def next_event(self) -> ReplyEvent | ConnectionClosed | Sentinel:
        if self.state is _S.CLOSED:
            return ConnectionClosed()
        if self.state is _S.TLS_PENDING:
            return NEED_DATA
        while True:
            line = self._take_line()
            if line is None:
                if self._eof:
                    self.state = _S.CLOSED
                    return ConnectionClosed()
                return NEED_DATA
            code, final, text = self._parse_line(line)
            if self._lines and code != self._code:
                self._fail(f"reply code changes inside a multi-line reply: {code}")
            self._code = code
            self._lines.append(text)
            if len(self._lines) > MAX_REPLY_LINES:
                self._fail("multi-line reply too long")
            if final:
                break
        reply = _build_reply(code, self._lines)
        self._lines = []
        if not self._fifo:
            if code == 421:  # a server closing an idle connection (RFC 5321 section 3.8)
                self._fail("unsolicited 421", reply)
            self._fail(f"reply with no command pending: {code}")
        entry = self._fifo.popleft()
        self._barriers -= entry.last
        self._apply(entry, reply)
        return ReplyEvent(entry.command, reply)

    def _take_line(self) -> bytes | None:
        nl = self._buf.find(b"\n")
        if nl < 0:
            if len(self._buf) >= MAX_REPLY_LINE:
                self._fail("reply line too long")
            return None
        if nl >= MAX_REPLY_LINE:
            self._fail("reply line too long")
        line = bytes(self._buf[:nl])
        del self._buf[: nl + 1]
        return line[:-1] if line.endswith(b"\r") else line  # a bare LF ends a line too

    def _parse_line(self, line: bytes) -> tuple[int, bool, str]:
        head, sep = line[:3], line[3:4]
        if not (len(head) == 3 and head.isdigit() and sep in (b"", b" ", b"-")
                and 200 <= int(head) <= 599):
            self._fail(f"malformed reply line {line[:16]!r}")
        text = line[4:].decode("utf-8", "replace")
        if not text.isprintable():
            text = "".join(c if c.isprintable() or c == "\t" else "?" for c in text)
        return int(head), sep != b"-", text

    def _fail(self, detail: str, reply: Reply = _REMOTE) -> NoReturn:
        self.state = _S.CLOSED
        self._buf.clear()
        self._lines = []
        raise RemoteProtocolError(reply, detail)

    def _apply(self, entry: _Pending, reply: Reply) -> None:
        verb = entry.command.verb
        codes, good, bad = _ON_REPLY.get(verb, ((), None, None))
        success = reply.code in codes
        new = good if success else bad
        if new is not None and (verb not in _TRANSACTIONAL or entry.txn == self._txn):
            self.state = new
        if success and verb in ("EHLO", "HELO"):
            self._hello = True
            self.extensions = _parse_extensions(reply.lines) if verb == "EHLO" else {}
        elif success and verb == "STARTTLS":
            self.discarded_after_starttls += len(self._buf)
            self._buf.clear()
        elif verb in ("AUTH", AUTH_RESPONSE) and reply.code == 235:
            self.authenticated = True
        if reply.code == 421:
            self.state = _S.CLOSED

    # ---- commands ---------------------------------------------------------------------
    def ehlo(self) -> None:
        self._send("EHLO", self.local_hostname, new_txn=True)

    def helo(self) -> None:
        self._send("HELO", self.local_hostname, new_txn=True)

    def mail(self, sender: str, params: Mapping[str, str | None] = {}) -> None:
        """``MAIL FROM:<sender>``; the empty string is the null reverse-path."""
        self._check("MAIL")
        if sender:
            mailbox = _mailbox(sender, _BAD_SENDER)
            if mailbox.is_utf8 and not ("SMTPUTF8" in self.extensions and any(
                    k.upper() == "SMTPUTF8" for k in params)):
                raise LocalProtocolError(_NEEDS_UTF8, "non-ASCII sender without SMTPUTF8")
        text, typed = self._params(params, _MAIL_KNOWN, mail_params)
        assert isinstance(typed, MailParams)
        line = f"MAIL FROM:<{sender}>" + (f" {text}" if text else "")
        if not line.isascii() and not typed.smtputf8:
            raise LocalProtocolError(_NEEDS_UTF8, "non-ASCII MAIL without SMTPUTF8")
        self._send("MAIL", line[5:], line, new_txn=True)
        self._smtputf8 = typed.smtputf8
        self._body_type = typed.body
        self._held, self._line_start = b"", True

    def rcpt(self, address: str, params: Mapping[str, str | None] = {}) -> None:
        self._check("RCPT")
        if address.lower() != "postmaster":  # RFC 5321 section 4.5.1 allows it bare
            mailbox = _mailbox(address, _BAD_RECIPIENT)
            if mailbox.is_utf8 and not self._smtputf8:
                raise LocalProtocolError(_NEEDS_UTF8, "non-ASCII recipient without SMTPUTF8")
        text, _ = self._params(params, _RCPT_KNOWN, rcpt_params)
        line = f"RCPT TO:<{address}>" + (f" {text}" if text else "")
        if not line.isascii() and not self._smtputf8:
            raise LocalProtocolError(_NEEDS_UTF8, "non-ASCII RCPT without SMTPUTF8")
        self._send("RCPT", line[5:], line)

    def data(self) -> None:
        self._check("DATA")
        if self._body_type == "BINARYMIME":  # RFC 3030 section 3
            raise LocalProtocolError(_OUT_OF_ORDER, "BODY=BINARYMIME needs BDAT, not DATA")
        self._send("DATA", "")

    def send_body(self, chunk: bytes) -> None:
        """Send a piece of the content (after the 354): dot-stuffed, checked, streamed."""
        if self.state is not _S.DATA:
            raise LocalProtocolError(_OUT_OF_ORDER, f"body in state {self.state.value}")
        data = self._held + chunk
        held = b"\r" if data.endswith(b"\r") else b""
        body = data[:-1] if held else data
        self._check_content(body)
        if body:
            stuffed = body.replace(b"\r\n.", b"\r\n..")
            if self._line_start and body[:1] == b".":
                stuffed = b"." + stuffed
            self._out.append(stuffed)
            self._line_start = body.endswith(b"\r\n")
        self._held = held

    def end_body(self) -> None:
        """End the content: CRLF if the last line lacks one, then ".CRLF" (gets a reply)."""
        self._check(END_OF_DATA)
        if self._held:
            raise LocalProtocolError(_BAD_CONTENT, "content ends with a bare CR")
        self._send(END_OF_DATA, "", (b"" if self._line_start else b"\r\n") + b".\r\n")

    def bdat(self, chunk: bytes, *, last: bool) -> None:
        """Send one counted chunk (RFC 3030), never stuffed. Unless the transaction is
        BODY=BINARYMIME the content is checked as for DATA, and a CR ending a non-final
        chunk is carried over to the next one (so the size sent may differ by one)."""
        self._check("BDAT")
        if self._body_type == "BINARYMIME":
            payload, held = chunk, b""
        else:
            data = self._held + chunk
            held = b"\r" if data.endswith(b"\r") and not last else b""
            payload = data[:-1] if held else data
            self._check_content(payload)
        arg = f"{len(payload)} LAST" if last else str(len(payload))
        self._send("BDAT", arg, f"BDAT {arg}", then=_S.READY if last else _S.BDAT)
        self._out.append(payload)
        self._held = held

    def rset(self) -> None:
        self._send("RSET", "", then=_S.READY if self._hello else _S.CONNECTED, new_txn=True)

    def noop(self) -> None:
        self._send("NOOP", "")

    def quit(self) -> None:
        self._send("QUIT", "")

    def starttls(self) -> None:
        if self.tls_active:
            raise LocalProtocolError(_OUT_OF_ORDER, "TLS already active")
        self._send("STARTTLS", "")

    def tls_established(self) -> None:
        """The driver finished the handshake: forget what was learnt in clear; EHLO next."""
        if self.state is not _S.TLS_PENDING:
            raise LocalProtocolError(_OUT_OF_ORDER, "no STARTTLS accepted")
        self.tls_active = True
        self.authenticated = False
        self.extensions = {}
        self._hello = False
        self._txn += 1
        self.state = _S.CONNECTED

    def auth(self, mechanism: str, initial: str | None = None) -> None:
        """``AUTH mechanism [initial]``: ``initial`` is base64, "" sends "=" (empty)."""
        mech = mechanism.upper()
        self._check("AUTH")
        if not _MECHANISM.fullmatch(mech) or initial is not None and not (
                initial == "=" or _BASE64.fullmatch(initial)):
            raise LocalProtocolError(_BAD_ARGUMENT, "bad AUTH mechanism or initial response")
        if mech not in self.extensions.get("AUTH", "").upper().split():
            raise LocalProtocolError(_OUT_OF_ORDER, f"the server does not offer {mech}")
        line = f"AUTH {mech}" if initial is None else f"AUTH {mech} {initial or '='}"
        if len(line) + 2 > MAX_AUTH_LINE:
            raise LocalProtocolError(_BAD_ARGUMENT, "initial response too long: send it "
                                     "after the 334 instead (RFC 4954 section 4)")
        self._send("AUTH", mech, line)

    def auth_response(self, line: str) -> None:
        """One SASL line after a 334: base64, empty, or "*" to abort."""
        self._check(AUTH_RESPONSE)
        if line != "*" and not (_BASE64.fullmatch(line) and len(line) <= MAX_AUTH_RESPONSE):
            raise LocalProtocolError(_BAD_ARGUMENT, "SASL response is not base64")
        self._send(AUTH_RESPONSE, "*" if line == "*" else "", line)

    # ---- plumbing ---------------------------------------------------------------------
    def _check(self, verb: str) -> _Rule:
        rule = _RULES[verb]
        if self.state not in rule.states:
            raise LocalProtocolError(_OUT_OF_ORDER, f"{verb} in state {self.state.value}")
        if rule.needs is not None and rule.needs not in self.extensions:
            raise LocalProtocolError(_OUT_OF_ORDER, f"the server does not offer {rule.needs}")
        if self._fifo and (self._barriers or "PIPELINING" not in self.extensions):
            raise LocalProtocolError(_OUT_OF_ORDER, f"{verb} while a reply is pending")
        return rule

    def _send(self, verb: str, arg: str, line: str | bytes | None = None,
              then: ClientState | None = None, new_txn: bool = False) -> None:
        rule = self._check(verb)
        if line is None:
            line = f"{verb} {arg}" if arg else verb
        if isinstance(line, str):
            if any(c in line for c in "\r\n\0"):
                raise LocalProtocolError(_BAD_ARGUMENT, f"CR, LF or NUL in {verb}")
            line = line.encode("utf-8") + b"\r\n"
        self._txn += new_txn
        self._out.append(line)
        self._fifo.append(_Pending(SentCommand(verb, arg), self._txn, rule.last))
        self._barriers += rule.last
        new = then or rule.then
        if new is not None:
            self.state = new

    def _params(self, params: Mapping[str, str | None], known: frozenset[str],
                interpret: Callable[..., MailParams | RcptParams],
                ) -> tuple[str, MailParams | RcptParams]:
        """Render ESMTP parameters; refuse bad syntax and anything the server did not offer."""
        if any(c in k + (v or "") for k, v in params.items() for c in "\r\n\0"):
            raise LocalProtocolError(_BAD_ARGUMENT, "CR, LF or NUL in a parameter")
        wanted = {k.upper(): v for k, v in params.items()}
        text = " ".join(k if v is None else f"{k}={v}" for k, v in wanted.items())
        offered = frozenset(self.extensions)
        try:
            parsed = parse_params(text)
            typed = interpret({k: v for k, v in parsed.items() if k in known},
                              extensions=offered)
        except ParamError as exc:
            raise LocalProtocolError(_BAD_ARGUMENT, f"parameter refused: {exc}") from None
        if parsed != wanted or len(wanted) != len(params):
            raise LocalProtocolError(_BAD_ARGUMENT, "malformed parameter")
        for key in parsed:
            if key not in known and _PARAM_EXTENSION.get(key, key) not in offered:
                raise LocalProtocolError(_BAD_ARGUMENT, f"the server does not offer {key}")
        return text, typed

    def _check_content(self, body: bytes) -> None:
        crlf = body.count(b"\r\n")
        if body.count(b"\r") != crlf or body.count(b"\n") != crlf or body.find(b"\0") >= 0:
            raise LocalProtocolError(_BAD_CONTENT, "bare CR or LF, or NUL, in content")
        if not body.isascii() and "8BITMIME" not in self.extensions:
            raise LocalProtocolError(_NEEDS_8BIT, "8-bit content without 8BITMIME")


def _mailbox(address: str, error: Reply) -> Mailbox:
    if any(c in address for c in "\r\n\0"):
        raise LocalProtocolError(error, "CR, LF or NUL in an address")
    try:
        return parse_mailbox(address, smtputf8=True)
    except AddressError as exc:
        raise LocalProtocolError(error, f"bad address: {exc}") from None


def _build_reply(code: int, lines: list[str]) -> Reply:
    """Join the lines of one reply; take the enhanced status code (RFC 2034) off each."""
    token = lines[0].split(" ", 1)[0]
    if not (_ENHANCED.fullmatch(token) and token[0] == str(code)[0]):
        return Reply(code, None, *lines)
    texts = [line[len(token) + 1:] if line.startswith(token + " ")
             else "" if line == token else line for line in lines]
    return Reply(code, token, *texts)


def _parse_extensions(lines: tuple[str, ...]) -> dict[str, str]:
    """The EHLO keywords (RFC 5321 section 4.1.1.1), upper case, with their parameters."""
    found: dict[str, str] = {}
    for line in lines[1:]:
        keyword, _, params = line.strip().partition(" ")
        if _KEYWORD.fullmatch(keyword) and keyword.upper() not in found:
            found[keyword.upper()] = " ".join(params.split())
    return found
