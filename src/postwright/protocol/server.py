"""The sans-IO SMTP server core: bytes in, events out; replies in, bytes out.

Covers RFC 5321 (commands, order, reply codes, limits of section 4.5.3.1), RFC 1870 (SIZE),
RFC 6152 (8BITMIME), RFC 2920 (PIPELINING: strict order, "must be last" commands),
RFC 2034/3463 (enhanced status codes), RFC 6531 (SMTPUTF8), RFC 3030 (CHUNKING, BINARYMIME),
RFC 3461 (DSN parameters), RFC 3207 (STARTTLS framing) and RFC 4954 (AUTH framing).

It does not decide policy (who may send to whom), does not speak TLS or SASL mechanisms and
keeps no time: the driver owns sockets and timers, the session owns policy. The protocol
is data: a ``State`` enum, a command table with flags, and a table of what a positive reply
to each command moves the state to.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from ..errors import LocalProtocolError
from .address import AddressError, Path, parse_path
from .bodycheck import LineEndChecker
from .dotstuff import DataDecoder
from .events import (
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
from .params import MailParams, ParamError, mail_params, parse_params, rcpt_params
from .reply import Reply


class State(enum.Enum):
    GREETING = "greeting"  # connected, our 220 not sent yet
    CONNECTED = "connected"  # greeted, no HELO/EHLO yet
    READY = "ready"  # HELO/EHLO done, no transaction
    MAIL = "mail"  # MAIL accepted
    RCPT = "rcpt"  # at least one RCPT accepted
    DATA = "data"  # reading a DATA body
    BDAT = "bdat"  # reading a BDAT chunk
    AUTH = "auth"  # inside a SASL exchange
    TLS_PENDING = "tls"  # 220 to STARTTLS sent, handshake not done
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class ServerSettings:
    hostname: str
    max_message_size: int = 36_700_160
    max_recipients: int = 1000
    max_line_length: int = 2048  # a command line, CRLF included (RFC 5321 minimum is 512)
    max_auth_line_length: int = 12_290  # RFC 4954 section 4: at least 12,288 octets + CRLF
    max_errors: int = 20
    tls_available: bool = False  # STARTTLS may be offered
    tls_active: bool = False  # TLS from the first byte (RFC 8314 implicit TLS)
    require_tls: bool = False  # only EHLO/STARTTLS/NOOP/RSET/QUIT before TLS
    auth_mechanisms: tuple[str, ...] = ()
    auth_without_tls: bool = False
    require_auth: bool = False  # MAIL needs a successful AUTH first
    chunking: bool = True
    smtputf8: bool = True
    dsn: bool = True


@dataclass(frozen=True, slots=True)
class _Spec:
    states: tuple[State, ...]
    parse: Callable[[ServerConnection, str, str], Event | Sentinel]
    must_be_last: bool = False  # RFC 2920 section 3.1
    before_tls: bool = False  # allowed while TLS is required but not active
    wrong_state: Callable[[State], Reply] = field(
        default=lambda s: Reply(503, "5.5.1", "Bad sequence of commands")
    )


# Tuples, not frozensets: a frozenset hashes the state, and Enum.__hash__ is a Python
# function; a tuple compares identities.
_TALKING: Final = (State.CONNECTED, State.READY, State.MAIL, State.RCPT)


def _mail_order(state: State) -> Reply:
    if state is State.CONNECTED:
        return Reply(503, "5.5.1", "Send HELO or EHLO first")
    return Reply(503, "5.5.1", "Nested MAIL command")


def _rcpt_order(state: State) -> Reply:
    return Reply(503, "5.5.1", "Need MAIL before RCPT")


def _data_order(state: State) -> Reply:
    if state is State.MAIL:
        return Reply(554, "5.5.1", "No valid recipients")
    return Reply(503, "5.5.1", "Need RCPT before DATA")


def _needs_hello(state: State) -> Reply:
    return Reply(503, "5.5.1", "Send EHLO first")


# What a positive reply to a command moves the state to; None keeps the state.
_ON_POSITIVE: Final[dict[str, State | None]] = {
    "EHLO": State.READY, "HELO": State.READY, "MAIL": State.MAIL, "RCPT": State.RCPT,
    "DATA": State.DATA, "RSET": None, "NOOP": None, "VRFY": None, "EXPN": None,
    "HELP": None, "QUIT": State.CLOSED, "STARTTLS": State.TLS_PENDING, "AUTH": State.READY,
}
# The positive codes each command expects (anything else leaves the state alone); 250 when
# not listed. RCPT may also be accepted with 251 (RFC 5321 section 4.3.2).
_POSITIVE_CODE: Final[dict[str, tuple[int, ...]]] = {
    "DATA": (354,), "QUIT": (221,), "STARTTLS": (220,), "AUTH": (235,), "RCPT": (250, 251),
}

_SYNC_ERROR: Final = Reply(554, "5.5.0", "SMTP synchronization error")
_TOO_MANY_ERRORS: Final = Reply(421, "4.7.0", "Too many errors, closing connection")


class ServerConnection:
    """One SMTP session seen from the server, without any I/O."""

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.state = State.GREETING
        self.tls_active = settings.tls_active
        self.authenticated = False
        self.esmtp = False
        self.helo = ""
        self.extensions: frozenset[str] = frozenset()
        self.errors = 0
        self.must_close = False
        self.discarded_after_starttls = 0
        self._buf = bytearray()
        self._out: list[bytes] = []
        self._owed: Event | None = None
        self._eof = False
        self._early = False
        self._fatal: BadCommand | None = None
        self._discarding_line = False
        # transaction
        self._mail: MailParams | None = None
        self._rcpts = 0
        self._size = 0
        self._too_big = False
        self._decoder: DataDecoder | None = None
        self._bdat_left = 0
        self._bdat_size = 0
        self._bdat_last = False
        self._bdat_skip = False
        self._bdat_check: LineEndChecker | None = None

    # ---- input -------------------------------------------------------------------------
    def receive_data(self, data: bytes) -> None:
        if self.state is State.GREETING and data:
            self._early = True
        if self.state is State.CLOSED:
            return
        if self.state is State.TLS_PENDING:
            # Plaintext after our 220 to STARTTLS and before the handshake is an injection
            # attempt (CVE-2011-0411 class): it is counted and dropped, never parsed.
            self.discarded_after_starttls += len(data)
            return
        self._buf += data

    def receive_eof(self) -> None:
        self._eof = True

    @property
    def buffered(self) -> int:
        """Bytes received and not yet turned into events."""
        return len(self._buf)

    @property
    def in_data(self) -> bool:
        """True while a message body is being read (the driver picks the data timeout)."""
        return self.state in (State.DATA, State.BDAT)

    @property
    def in_transaction(self) -> bool:
        return self.state in (State.MAIL, State.RCPT, State.DATA, State.BDAT)

    @property
    def mail_params(self) -> MailParams | None:
        return self._mail

    def next_event(self) -> Event | Sentinel:
        if self._owed is not None or self.state in (State.GREETING, State.TLS_PENDING):
            return PAUSED
        if self._fatal is not None:
            return self._issue(self._fatal)
        if self.state is State.CLOSED:
            return ConnectionClosed() if self._eof else PAUSED
        if self.state is State.DATA:
            return self._data_event()
        if self.state is State.BDAT:
            return self._bdat_event()
        return self._line_event()

    # ---- output ------------------------------------------------------------------------
    def send(self, reply: Reply) -> None:
        """Queue ``reply`` as the answer to the event last returned (or the greeting)."""
        if self.state is State.CLOSED:
            raise LocalProtocolError(Reply(421, "4.3.0", "closed"), "send after close")
        owed, self._owed = self._owed, None
        if owed is None:
            self._unsolicited(reply)
        else:
            self._answer(owed, reply)
        self._out.append(reply.to_bytes())
        if reply.code == 421:
            self.state = State.CLOSED
            self.must_close = True

    def data_to_send(self) -> bytes:
        out = b"".join(self._out)
        self._out.clear()
        return out

    def hello_reply(self, text: str = "") -> Reply:
        """The 250 reply to the HELO or EHLO being answered, keywords included."""
        if not isinstance(self._owed, Hello):
            raise LocalProtocolError(Reply(421, "4.3.0", "internal error"), "no HELO owed")
        first = f"{self.settings.hostname} {text}".strip()
        if not self._owed.esmtp:
            return Reply(250, None, first)
        return _ehlo_reply(first, self._keywords())

    def tls_established(self) -> None:
        """The driver finished the TLS handshake after STARTTLS: forget everything."""
        if self.state is not State.TLS_PENDING:
            raise LocalProtocolError(Reply(421, "4.3.0", "internal error"), "no STARTTLS")
        self.tls_active = True
        self.esmtp = False
        self.helo = ""
        self.extensions = frozenset()
        self.authenticated = False
        self._reset()
        self.state = State.CONNECTED

    # ---- reply bookkeeping -------------------------------------------------------------
    def _unsolicited(self, reply: Reply) -> None:
        if self.state is State.GREETING:
            if reply.code == 220:
                self.state = State.CONNECTED
                if self._early:
                    self._fatal = BadCommand(_SYNC_ERROR, True, "client talked before greeting")
            return
        if reply.code != 421:
            raise LocalProtocolError(Reply(421, "4.3.0", "internal error"), "unsolicited reply")

    def _answer(self, owed: Event, reply: Reply) -> None:
        if reply.code >= 400:
            self.errors += 1
        if isinstance(owed, BadCommand):
            if owed.fatal:
                self.state = State.CLOSED
                self.must_close = True
            elif self.state is State.AUTH:
                # A refused SASL line ends the exchange (RFC 4954 section 4): the client
                # reads the 5xx as the end of AUTH, so its next line is a command again.
                self._after_auth(reply)
        elif isinstance(owed, Command):
            self._after_command(owed, reply)
        elif isinstance(owed, AuthResponse):
            self._after_auth(reply)
        elif isinstance(owed, (EndOfMessage, EndOfChunk)):
            if isinstance(owed, EndOfMessage) or reply.code >= 400:
                self._reset()
                self.state = State.READY
            else:
                self.state = State.RCPT
        if (self.errors >= self.settings.max_errors and self.state is not State.CLOSED
                and self._fatal is None):
            self._fatal = BadCommand(_TOO_MANY_ERRORS, True, "error limit reached")

    def _after_command(self, cmd: Command, reply: Reply) -> None:
        verb = cmd.verb
        if verb == "AUTH" and reply.code == 334:
            self.state = State.AUTH
            return
        if verb == "RSET" and reply.code == 250:
            self._reset()
            self.state = State.READY if self.helo else State.CONNECTED
            return
        if reply.code not in _POSITIVE_CODE.get(verb, (250,)):
            return
        new = _ON_POSITIVE.get(verb)
        if isinstance(cmd, Hello):
            self._reset()
            self.helo = cmd.domain
            self.esmtp = cmd.esmtp
            self.extensions = _extensions(self._keywords()) if cmd.esmtp else frozenset()
        elif isinstance(cmd, Mail):
            self._mail = cmd.params
        elif isinstance(cmd, Rcpt):
            self._rcpts += 1
        elif verb == "DATA":
            self._decoder = DataDecoder()
        elif verb == "AUTH":
            self.authenticated = True
        elif verb == "QUIT":
            self.must_close = True
        elif verb == "STARTTLS":
            self.discarded_after_starttls += len(self._buf)
            self._buf.clear()
        if new is not None:
            self.state = new

    def _after_auth(self, reply: Reply) -> None:
        if reply.code == 334:
            return
        if reply.code == 235:
            self.authenticated = True
        self.state = State.READY

    def _reset(self) -> None:
        self._mail = None
        self._rcpts = 0
        self._size = 0
        self._too_big = False
        self._decoder = None
        self._bdat_check = None

    def _keywords(self) -> tuple[str, ...]:
        s = self.settings
        words = ["PIPELINING", f"SIZE {s.max_message_size}", "8BITMIME", "ENHANCEDSTATUSCODES"]
        if s.smtputf8:
            words.append("SMTPUTF8")
        if s.chunking:
            words += ["CHUNKING", "BINARYMIME"]
        if s.dsn:
            words.append("DSN")
        if s.tls_available and not self.tls_active:
            words.append("STARTTLS")
        if s.auth_mechanisms and not self.authenticated and (
                self.tls_active or s.auth_without_tls):
            words.append("AUTH " + " ".join(s.auth_mechanisms))
        return tuple(words)

    # ---- events ------------------------------------------------------------------------
    def _issue(self, event: Event) -> Event:
        if not isinstance(event, (MessageData, ConnectionClosed)):
            self._owed = event
        if isinstance(event, BadCommand) and event is self._fatal:
            self._fatal = None
        return event

    def _bad(self, reply: Reply, detail: str = "") -> Event:
        return self._issue(BadCommand(reply, False, detail))

    def _closed(self) -> Event | Sentinel:
        if self._eof:
            self.state = State.CLOSED
            return ConnectionClosed()
        return NEED_DATA

    def _line_event(self) -> Event | Sentinel:
        limit = (self.settings.max_auth_line_length if self.state is State.AUTH
                 else self.settings.max_line_length)
        nl = self._buf.find(b"\n")
        if nl < 0:
            if len(self._buf) > limit:
                self._discarding_line = True
                self._buf.clear()
            return self._closed()
        raw = bytes(self._buf[: nl + 1])
        del self._buf[: nl + 1]
        if self._discarding_line or len(raw) > limit:
            self._discarding_line = False
            return self._bad(Reply(500, "5.5.2", "Line too long"), "line too long")
        if not raw.endswith(b"\r\n"):
            return self._bad(Reply(500, "5.5.2", "Bare LF in command line"), "bare LF")
        body = raw[:-2]
        if body.find(b"\r") >= 0 or body.find(b"\0") >= 0:  # not "in": see dotstuff._scan
            return self._bad(Reply(500, "5.5.2", "Invalid character in command"), "bad char")
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            return self._bad(Reply(500, "5.5.2", "Invalid UTF-8 in command"), "bad utf-8")
        if self.state is State.AUTH:
            return self._issue(AuthResponse(text))
        return self._command(text)

    def _command(self, text: str) -> Event | Sentinel:
        raw_verb, _, arg = text.partition(" ")
        verb = raw_verb.upper()
        # Only ASCII verbs: str.upper() maps look-alikes ("maıl", "rſet") onto real verbs.
        spec = _COMMANDS.get(verb) if raw_verb.isascii() else None
        if spec is None:
            return self._bad(Reply(500, "5.5.1", "Command unrecognized"), f"unknown {verb!r}")
        if spec.must_be_last and self._buf:
            self._buf.clear()
            return self._issue(BadCommand(
                _SYNC_ERROR, True, f"data pipelined after {verb}"))
        if self.settings.require_tls and not self.tls_active and not spec.before_tls:
            if verb == "BDAT":
                return self._p_bdat(verb, arg, skip=True)
            return self._bad(Reply(530, "5.7.0", "Must issue a STARTTLS command first"))
        if self.state not in spec.states:
            if verb == "BDAT":
                return self._p_bdat(verb, arg, skip=True)
            return self._bad(spec.wrong_state(self.state), f"{verb} in {self.state.value}")
        return spec.parse(self, verb, arg)

    # ---- command parsers (each returns the event to issue) -----------------------------
    def _p_any(self, verb: str, arg: str) -> Event:
        return self._issue(Command(verb, arg))

    def _p_noarg(self, verb: str, arg: str) -> Event:
        if arg.strip():
            return self._bad(Reply(501, "5.5.4", f"{verb} takes no arguments"))
        if verb == "DATA" and self._mail is not None and self._mail.body == "BINARYMIME":
            return self._bad(Reply(503, "5.5.1", "BINARYMIME requires BDAT"))
        if verb == "DATA" and self._bdat_check is not None:  # a BDAT chunk was taken
            # RFC 3030 section 2: DATA after BDAT in one transaction MUST get 503.
            return self._bad(Reply(503, "5.5.1", "DATA not allowed after BDAT"))
        return self._issue(Command(verb, ""))

    def _p_required(self, verb: str, arg: str) -> Event:
        if not arg.strip():
            return self._bad(Reply(501, "5.5.4", f"{verb} needs an argument"))
        return self._issue(Command(verb, arg.strip()))

    def _p_hello(self, verb: str, arg: str) -> Event:
        domain = arg.strip()
        if not domain or " " in domain or not domain.isprintable():
            return self._bad(Reply(501, "5.5.4", f"Syntax: {verb} hostname"))
        return self._issue(Hello(verb, arg, domain, verb == "EHLO"))

    def _p_mail(self, verb: str, arg: str) -> Event:
        if self.settings.require_auth and not self.authenticated:
            return self._bad(Reply(530, "5.7.0", "Authentication required"))
        if arg[:5].upper() != "FROM:":
            return self._bad(Reply(501, "5.5.4", "Syntax: MAIL FROM:<address>"))
        try:
            path, rest = parse_path(arg[5:], smtputf8=True, allow_null=True)
        except AddressError as exc:
            return self._bad(Reply(501, "5.1.7", "Bad sender address syntax"), str(exc))
        try:
            params = mail_params(parse_params(rest), extensions=self.extensions)
        except ParamError as perr:
            return self._bad(perr.reply, str(perr))
        if _is_utf8(path) and not params.smtputf8:
            return self._bad(Reply(553, "5.6.7", "Non-ASCII address needs SMTPUTF8"))
        if params.size is not None and params.size > self.settings.max_message_size:
            return self._bad(Reply(552, "5.3.4", "Message size exceeds fixed maximum size"))
        return self._issue(Mail(verb, arg, path, params))

    def _p_rcpt(self, verb: str, arg: str) -> Event:
        if arg[:3].upper() != "TO:":
            return self._bad(Reply(501, "5.5.4", "Syntax: RCPT TO:<address>"))
        try:
            path, rest = parse_path(arg[3:], smtputf8=True, allow_null=False,
                                    allow_postmaster=True)
        except AddressError as exc:
            return self._bad(Reply(501, "5.1.3", "Bad recipient address syntax"), str(exc))
        if _is_utf8(path) and not (self._mail and self._mail.smtputf8):
            return self._bad(Reply(553, "5.6.7", "Non-ASCII address needs SMTPUTF8"))
        try:
            params = rcpt_params(parse_params(rest), extensions=self.extensions)
        except ParamError as perr:
            return self._bad(perr.reply, str(perr))
        if self._rcpts >= self.settings.max_recipients:
            return self._bad(Reply(452, "4.5.3", "Too many recipients"))
        return self._issue(Rcpt(verb, arg, path, params))

    def _p_bdat(self, verb: str, arg: str, skip: bool = False) -> Event | Sentinel:
        parts = arg.split()
        # isascii: str.isdigit() accepts "²", which int() refuses, and upper() maps "laſt".
        if (not arg.isascii() or not parts or len(parts) > 2 or not parts[0].isdigit()
                or len(parts[0]) > 20 or (len(parts) == 2 and parts[1].upper() != "LAST")):
            return self._bad(Reply(501, "5.5.4", "Syntax: BDAT size [LAST]"))
        if "CHUNKING" not in self.extensions:
            skip = True
        self._bdat_left = self._bdat_size = int(parts[0])
        self._bdat_last = len(parts) == 2
        self._bdat_skip = skip
        if not skip and self._bdat_check is None:
            self._bdat_check = LineEndChecker()
        self.state = State.BDAT
        return self._bdat_event()

    def _p_starttls(self, verb: str, arg: str) -> Event:
        if arg.strip():
            return self._bad(Reply(501, "5.5.4", "STARTTLS takes no arguments"))
        if self.tls_active:
            return self._bad(Reply(503, "5.5.1", "TLS already active"))
        if not self.settings.tls_available:
            return self._bad(Reply(454, "4.7.0", "TLS not available"))
        return self._issue(Command(verb, ""))

    def _p_auth(self, verb: str, arg: str) -> Event:
        s = self.settings
        if not s.auth_mechanisms or not self.esmtp:
            return self._bad(Reply(503, "5.5.1", "AUTH not available"))
        if self.authenticated:
            return self._bad(Reply(503, "5.5.1", "Already authenticated"))
        if not self.tls_active and not s.auth_without_tls:
            return self._bad(Reply(538, "5.7.11", "Encryption required for authentication"))
        parts = arg.split()
        if not parts or len(parts) > 2:
            return self._bad(Reply(501, "5.5.4", "Syntax: AUTH mechanism [initial-response]"))
        mech = parts[0].upper()
        if mech not in s.auth_mechanisms:
            return self._bad(Reply(504, "5.5.4", "Unrecognized authentication type"))
        return self._issue(Auth(verb, arg, mech, parts[1] if len(parts) == 2 else None))

    # ---- bodies ------------------------------------------------------------------------
    def _data_event(self) -> Event | Sentinel:
        dec = self._decoder
        assert dec is not None
        while True:
            chunk = dec.feed(self._buf)
            if chunk:
                self._size += len(chunk)
                if self._size > self.settings.max_message_size:
                    self._too_big = True
                if not self._too_big:
                    return self._issue(MessageData(chunk))
            if dec.done:
                return self._issue(EndOfMessage(self._size, self._body_error(dec.clean)))
            if not chunk:
                return self._closed()

    def _bdat_event(self) -> Event | Sentinel:
        if self._bdat_left:
            if not self._buf:
                return self._closed()
            take = min(self._bdat_left, len(self._buf))
            piece = bytes(self._buf[:take])
            del self._buf[:take]
            self._bdat_left -= take
            if not self._bdat_skip:
                self._size += take
                if self._size > self.settings.max_message_size:
                    self._too_big = True
                binary = self._mail is not None and self._mail.body == "BINARYMIME"
                if self._bdat_check is not None and not binary:
                    self._bdat_check.feed(piece)
                if not self._too_big:
                    return self._issue(MessageData(piece))
            if self._bdat_left:
                return self._closed() if not self._buf else self._bdat_event()
        # the chunk is complete
        if self._bdat_skip:
            self._reset()
            self.state = State.READY if self.helo else State.CONNECTED
            return self._bad(Reply(503, "5.5.1", "BDAT without a valid transaction"))
        if self._bdat_last:
            check = self._bdat_check
            clean = check is None or check.finish()
            return self._issue(EndOfMessage(self._size, self._body_error(clean)))
        if self._too_big:
            return self._issue(EndOfMessage(self._size, self._body_error(True)))
        return self._issue(EndOfChunk(self._bdat_size, self._size))

    def _body_error(self, clean: bool) -> Reply | None:
        if self._too_big:
            return Reply(552, "5.3.4", "Message size exceeds fixed maximum size")
        if not clean:
            return Reply(550, "5.6.0", "Bare CR or LF, or NUL, in message content")
        return None


# The command table (after the class, whose parsing methods it names).
_COMMANDS: Final[dict[str, _Spec]] = {
    "EHLO": _Spec(_TALKING, ServerConnection._p_hello, must_be_last=True, before_tls=True),
    "HELO": _Spec(_TALKING, ServerConnection._p_hello, must_be_last=True, before_tls=True),
    "MAIL": _Spec((State.READY,), ServerConnection._p_mail, wrong_state=_mail_order),
    "RCPT": _Spec((State.MAIL, State.RCPT), ServerConnection._p_rcpt,
                  wrong_state=_rcpt_order),
    "DATA": _Spec((State.RCPT,), ServerConnection._p_noarg, must_be_last=True,
                  wrong_state=_data_order),
    "BDAT": _Spec((State.RCPT,), ServerConnection._p_bdat, wrong_state=_data_order),
    "RSET": _Spec(_TALKING, ServerConnection._p_noarg, before_tls=True),
    "NOOP": _Spec(_TALKING, ServerConnection._p_any, must_be_last=True, before_tls=True),
    "QUIT": _Spec(_TALKING, ServerConnection._p_noarg, must_be_last=True, before_tls=True),
    "VRFY": _Spec(_TALKING, ServerConnection._p_required, must_be_last=True),
    "EXPN": _Spec(_TALKING, ServerConnection._p_required, must_be_last=True),
    "HELP": _Spec(_TALKING, ServerConnection._p_any, before_tls=True),
    "STARTTLS": _Spec((State.READY,), ServerConnection._p_starttls, must_be_last=True,
                      before_tls=True, wrong_state=_needs_hello),
    # AUTH passes the STARTTLS gate so that it gets its own answer, 538 5.7.11 (RFC 4954).
    "AUTH": _Spec((State.READY,), ServerConnection._p_auth, must_be_last=True, before_tls=True,
                  wrong_state=lambda s: Reply(503, "5.5.1", "AUTH not allowed now")
                  if s is not State.CONNECTED else _needs_hello(s)),
}


# The EHLO reply is the longest one, and the same for every client that gives the same
# name: it is built and rendered once per (first line, keywords), not per connection.
@functools.lru_cache(maxsize=256)
def _ehlo_reply(first: str, keywords: tuple[str, ...]) -> Reply:
    return Reply(250, None, first, *keywords)


@functools.lru_cache(maxsize=16)
def _extensions(keywords: tuple[str, ...]) -> frozenset[str]:
    return frozenset(k.split()[0] for k in keywords)


def _is_utf8(path: Path) -> bool:
    return path.mailbox is not None and path.mailbox.is_utf8
