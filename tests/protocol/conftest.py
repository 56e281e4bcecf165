"""Fixtures for the sans-IO server core tests: a greeted connection and a transcript runner.

A transcript is text, one step a line (leading blanks and ``#`` comments are ignored)::

    C: EHLO client.example      a command line; CRLF is appended
    C~ body\\r\\n.\\r\\n           raw bytes, nothing appended
    S: 250 2.1.0                the next reply must start with this
    -- tls                      the driver finished the STARTTLS handshake
    -- greet                    the driver sends its 220 greeting now
    -- eof                      the client closed its side

In C and C~ lines ``\\r``, ``\\n``, ``\\t``, ``\\0``, ``\\xNN`` and ``\\\\`` are escapes.
Consecutive C/C~ lines are sent as one packet (a pipelined group). After each packet the
runner answers every event with a fixed policy (``ANSWERS``; per-test overrides by kind) and
the replies produced must match the S lines that follow, in number and in order.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Callable, Iterable, Mapping

import pytest

from postwright.protocol.events import (
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
    MessageData,
)
from postwright.protocol.reply import Reply
from postwright.protocol.server import ServerConnection, ServerSettings

HOSTNAME = "mx.example.test"

Answer = Reply | Callable[[Event], Reply]

# The fixed policy: one reply per kind of event. AUTH accepts the response "good" only.
ANSWERS: dict[str, Answer] = {
    "MAIL": Reply(250, "2.1.0", "Sender ok"),
    "RCPT": Reply(250, "2.1.5", "Recipient ok"),
    "DATA": Reply(354, None, "End data with <CR><LF>.<CR><LF>"),
    "RSET": Reply(250, "2.0.0", "Ok"),
    "NOOP": Reply(250, "2.0.0", "Ok"),
    "QUIT": Reply(221, "2.0.0", "Bye"),
    "VRFY": Reply(252, "2.5.0", "Cannot VRFY user, but will accept message"),
    "EXPN": Reply(502, "5.5.1", "EXPN not available"),
    "HELP": Reply(214, "2.0.0", "See RFC 5321"),
    "STARTTLS": Reply(220, "2.0.0", "Ready to start TLS"),
    "AUTH": lambda ev: _sasl(ev.initial) if isinstance(ev, Auth) else _sasl(None),
    "AUTH-RESPONSE": lambda ev: _sasl(ev.data if isinstance(ev, AuthResponse) else None),
    "CHUNK": Reply(250, "2.0.0", "Chunk ok"),
    "MESSAGE": Reply(250, "2.0.0", "Ok: queued"),
}


def _sasl(data: str | None) -> Reply:
    if data is None:
        return Reply(334, None, "")
    if data == "good":
        return Reply(235, "2.7.0", "Authentication successful")
    if data == "*":
        return Reply(501, "5.7.0", "Authentication aborted")
    return Reply(535, "5.7.8", "Authentication credentials invalid")


def kind(ev: Event) -> str:
    """The policy key for an event that is owed a reply."""
    if isinstance(ev, AuthResponse):
        return "AUTH-RESPONSE"
    if isinstance(ev, EndOfChunk):
        return "CHUNK"
    if isinstance(ev, EndOfMessage):
        return "MESSAGE"
    if isinstance(ev, BadCommand):
        return "BAD"
    assert isinstance(ev, Command), ev
    return ev.verb


def answer(conn: ServerConnection, ev: Event, overrides: Mapping[str, Answer]) -> None:
    """Send the policy's reply to ``ev`` (nothing for MessageData and ConnectionClosed)."""
    if isinstance(ev, (MessageData, ConnectionClosed)):
        return
    key = kind(ev)
    chosen = overrides.get(key)
    if chosen is None:
        if isinstance(ev, BadCommand):
            chosen = ev.reply
        elif isinstance(ev, EndOfMessage) and ev.error is not None:
            chosen = ev.error
        elif isinstance(ev, Hello):
            chosen = conn.hello_reply("greets you")
        else:
            chosen = ANSWERS[key]
    conn.send(chosen if isinstance(chosen, Reply) else chosen(ev))


def drain(conn: ServerConnection, overrides: Mapping[str, Answer] = {}) -> list[Event]:
    """Take events until the core needs data or waits; answer each with the policy."""
    events: list[Event] = []
    while True:
        ev = conn.next_event()
        if ev is NEED_DATA or ev is PAUSED:
            return events
        assert isinstance(ev, Event)
        events.append(ev)
        answer(conn, ev, overrides)
        if isinstance(ev, ConnectionClosed):
            return events


def feed(conn: ServerConnection, data: bytes, overrides: Mapping[str, Answer] = {},
         pieces: Iterable[int] | None = None) -> tuple[list[Event], bytes]:
    """Feed ``data`` (whole, or cut after each offset in ``pieces``), draining after each
    piece; return the events and the bytes the core produced."""
    cuts = sorted({c for c in (pieces or ()) if 0 < c < len(data)})
    events: list[Event] = []
    start = 0
    for end in [*cuts, len(data)]:
        conn.receive_data(data[start:end])
        events += drain(conn, overrides)
        start = end
    return events, conn.data_to_send()


def split_replies(out: bytes) -> list[bytes]:
    """Cut wire output into whole (possibly multi-line) replies."""
    replies: list[bytes] = []
    current = b""
    for line in out.splitlines(keepends=True):
        assert line.endswith(b"\r\n") and line[:3].isdigit(), line
        current += line
        if line[3:4] != b"-":
            replies.append(current)
            current = b""
    assert not current, f"unfinished reply {current!r}"
    return replies


_ESCAPE = re.compile(r"\\(x[0-9a-fA-F]{2}|[rnt0\\])")
_SIMPLE = {"r": b"\r", "n": b"\n", "t": b"\t", "0": b"\0", "\\": b"\\"}


def unescape(text: str) -> bytes:
    out = b""
    pos = 0
    for m in _ESCAPE.finditer(text):
        out += text[pos:m.start()].encode("utf-8")
        code = m.group(1)
        out += bytes([int(code[1:], 16)]) if code[0] == "x" else _SIMPLE[code]
        pos = m.end()
    return out + text[pos:].encode("utf-8")


def run(conn: ServerConnection, transcript: str, overrides: Mapping[str, Answer] = {},
        bytewise: bool = False) -> list[Event]:
    """Play ``transcript`` against ``conn``; return every event the core produced."""
    events: list[Event] = []
    packet = b""
    pending: list[bytes] = []  # replies produced and not yet matched by S lines
    lineno = 0

    def send_packet() -> None:
        nonlocal packet
        if packet:
            assert not pending, f"line {lineno}: unexpected replies {pending!r}"
            pieces = range(1, len(packet)) if bytewise else None
            got, out = feed(conn, packet, overrides, pieces)
            events.extend(got)
            pending.extend(split_replies(out))
            packet = b""

    for lineno, raw in enumerate(textwrap.dedent(transcript).splitlines(), 1):
        line = raw.lstrip()
        if not line or line.startswith("#"):
            continue
        tag, body = line[:3], line[3:]
        if tag == "C: ":
            packet += unescape(body) + b"\r\n"
            continue
        if tag == "C~ ":
            packet += unescape(body)
            continue
        send_packet()
        if tag == "S: " or line == "S:":
            assert pending, f"line {lineno}: expected {body!r}, the server said nothing"
            got_reply = pending.pop(0)
            assert got_reply.startswith(body.encode()), (
                f"line {lineno}: expected {body!r}, got {got_reply!r}")
        elif line.startswith("-- "):
            assert not pending, f"line {lineno}: unexpected replies {pending!r}"
            _directive(conn, line[3:].strip())
            events.extend(drain(conn, overrides))
            pending.extend(split_replies(conn.data_to_send()))
        else:
            raise ValueError(f"line {lineno}: bad transcript line {raw!r}")
    send_packet()
    assert not pending, f"unexpected replies at the end: {pending!r}"
    return events


def _directive(conn: ServerConnection, name: str) -> None:
    if name == "tls":
        conn.tls_established()
    elif name == "greet":
        conn.send(Reply(220, None, f"{HOSTNAME} ESMTP"))
    elif name == "eof":
        conn.receive_eof()
    else:
        raise ValueError(f"unknown directive {name!r}")


def make_server(greet: bool = True, **settings: object) -> ServerConnection:
    """A connection with test settings; greeted (220 sent, output discarded) by default."""
    return _connect(settings, greet)


def _connect(settings: dict[str, object], greet: bool) -> ServerConnection:
    conn = ServerConnection(ServerSettings(HOSTNAME, **settings))  # type: ignore[arg-type]
    if greet:
        conn.send(Reply(220, None, f"{HOSTNAME} ESMTP"))
        conn.data_to_send()
    return conn


def helo(conn: ServerConnection, verb: str = "EHLO") -> None:
    """Say EHLO (or HELO) and check the 250."""
    run(conn, f"C: {verb} client.example\nS: 250")


# ---- fixtures: these helpers, as typed callables (tests directories are not packages) ----
@pytest.fixture(scope="session")
def server() -> Callable[..., ServerConnection]:
    return make_server


@pytest.fixture(scope="session")
def converse() -> Callable[..., list[Event]]:
    """``converse(conn, transcript, overrides={}, bytewise=False)`` -> events."""
    return run


@pytest.fixture(scope="session")
def feeder() -> Callable[..., tuple[list[Event], bytes]]:
    """``feeder(conn, data, overrides={}, pieces=None)`` -> (events, output bytes)."""
    return feed


@pytest.fixture(scope="session")
def ehlo() -> Callable[..., ServerConnection]:
    """``ehlo(**settings)``: a greeted connection that has done EHLO."""

    def make(**settings: object) -> ServerConnection:
        conn = _connect(settings, True)
        helo(conn)
        return conn

    return make
