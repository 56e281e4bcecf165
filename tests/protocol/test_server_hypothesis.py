"""Property tests: the server core does not care how its input is cut into packets.

Random well-formed dialogs (pipelined transactions, DATA bodies with dot lines and arbitrary
octets, BDAT chunks of any content, AUTH, the simple commands) are fed turn by turn: whole,
one byte at a time, and in random pieces. The events (adjacent MessageData merged) and the
bytes produced must be identical. The DATA decoder and the BDAT line-end checker are checked
the same way on their own, against a plain reference. RFC 5321 sections 4.1.1.4 and 4.5.2,
RFC 2920, RFC 3030.
"""

from __future__ import annotations

from collections.abc import Callable

from hypothesis import given, settings
from hypothesis import strategies as st

from postwright.protocol.bodycheck import LineEndChecker
from postwright.protocol.dotstuff import DataDecoder, dot_stuff
from postwright.protocol.events import (
    BadCommand,
    ConnectionClosed,
    EndOfMessage,
    Event,
    MessageData,
)
from postwright.protocol.reply import Reply
from postwright.protocol.server import ServerConnection, State

Server = Callable[..., ServerConnection]
Feeder = Callable[..., tuple[list[Event], bytes]]

SETTINGS = {"auth_mechanisms": ("PLAIN",), "auth_without_tls": True, "max_errors": 1000,
            "max_line_length": 128}
# Malformed turns the core must refuse the same way however they arrive, and how many
# BadCommand events each gives: unknown verb; bare LF (then "OP"); an overlong line; BDAT
# outside a transaction, whose bytes are consumed.
REFUSED = {b"FOO\r\n": 1, b"NO\nOP\r\n": 2, b"NOOP " + b"y" * 300 + b"\r\n": 1,
           b"BDAT 5\r\nab\r\nc": 1}


def rcpt_policy(ev: Event) -> Reply:
    if "nobody" in str(getattr(ev, "path", "")):
        return Reply(550, "5.1.1", "Mailbox unavailable")
    return Reply(250, "2.1.5", "Recipient ok")


OVERRIDES = {"RCPT": rcpt_policy}

# ---- dialog generation -------------------------------------------------------------------
# CRLF-safe lines: any octet but CR and LF, with dot lines over-represented.
line = st.one_of(
    st.binary(max_size=30).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
    st.sampled_from([b"", b".", b"..", b"...", b".x", b". ", b"From x", b"MAIL FROM:<x@y>"]),
)
clean_body = st.lists(line, max_size=8).map(b"\r\n".join)
any_body = st.binary(max_size=80)  # bare CR, LF and NUL too: the message is then refused
simple = st.sampled_from([b"NOOP\r\n", b"NOOP some text\r\n", b"HELP\r\n", b"VRFY bob\r\n",
                          b"EXPN staff\r\n", b"RSET\r\n", b"EHLO again.example\r\n",
                          *REFUSED])


@st.composite
def envelope(draw: st.DrawFn, binary: bool = False) -> bytes:
    params = draw(st.sampled_from(["", " SIZE=500", " BODY=8BITMIME", " SMTPUTF8",
                                   " RET=HDRS ENVID=abc"]))
    if binary:
        params = " BODY=BINARYMIME"
    out = f"MAIL FROM:<sender@example.org>{params}\r\nRCPT TO:<first@example.test>\r\n"
    for i in range(draw(st.integers(0, 2))):
        who = draw(st.sampled_from(["rcpt", "nobody"]))
        out += f"RCPT TO:<{who}{i}@example.test> NOTIFY=NEVER\r\n"
    return out.encode()


@st.composite
def data_transaction(draw: st.DrawFn) -> list[bytes]:
    body = draw(st.one_of(clean_body, any_body))
    return [draw(envelope()) + b"DATA\r\n", dot_stuff(body)]


@st.composite
def bdat_transaction(draw: st.DrawFn) -> list[bytes]:
    binary = draw(st.booleans())
    chunks = draw(st.lists(st.binary(max_size=40), min_size=1, max_size=4))
    framed = [b"BDAT %d%s\r\n%s" % (len(c), b" LAST" if i == len(chunks) - 1 else b"", c)
              for i, c in enumerate(chunks)]
    head = draw(envelope(binary))
    if draw(st.booleans()):  # the whole transaction in one pipelined group
        return [head + b"".join(framed)]
    return [head, *framed]


@st.composite
def auth_exchange(draw: st.DrawFn) -> list[bytes]:
    answer = draw(st.sampled_from([b"good", b"bad", b"*", b"x" * 200]))
    if len(answer) < 100 and draw(st.booleans()):  # the command line limit is 128
        return [b"AUTH PLAIN " + answer + b"\r\n"]
    return [b"AUTH PLAIN\r\n", answer + b"\r\n"]  # a SASL line may be longer


@st.composite
def dialogs(draw: st.DrawFn) -> list[bytes]:
    turns = [b"EHLO client.example\r\n"]
    steps = st.one_of(simple.map(lambda t: [t]), data_transaction(), bdat_transaction(),
                      auth_exchange())
    authenticated = False
    for step in draw(st.lists(steps, max_size=5)):
        if step[0].startswith(b"AUTH"):
            if authenticated:
                continue  # a second AUTH is refused with 503; keep the dialog well formed
            authenticated = step[-1].endswith(b"good\r\n")
        turns += step
    return [*turns, b"QUIT\r\n"]


# ---- feeding -----------------------------------------------------------------------------
def merged(events: list[Event]) -> list[Event]:
    out: list[Event] = []
    for ev in events:
        if isinstance(ev, MessageData) and out and isinstance(out[-1], MessageData):
            out[-1] = MessageData(out[-1].data + ev.data)
        elif not (isinstance(ev, MessageData) and not ev.data):
            out.append(ev)
    return out


def play(server: Server, feeder: Feeder, turns: list[bytes],
         cut: Callable[[bytes], list[int] | None]) -> tuple[list[Event], bytes]:
    conn = server(**SETTINGS)
    events: list[Event] = []
    out = b""
    for turn in turns:
        got, produced = feeder(conn, turn, OVERRIDES, cut(turn))
        events += got
        out += produced
    assert conn.state is State.CLOSED and conn.must_close
    return merged(events), out


@settings(max_examples=200, deadline=None)
@given(turns=dialogs(), data=st.data())
def test_event_stream_does_not_depend_on_packet_boundaries(
        server: Server, feeder: Feeder, turns: list[bytes], data: st.DataObject) -> None:
    whole = play(server, feeder, turns, lambda t: None)
    bytewise = play(server, feeder, turns, lambda t: list(range(1, len(t))))
    pieces = play(server, feeder, turns, lambda t: data.draw(
        st.lists(st.integers(1, max(1, len(t) - 1)), max_size=6)))
    assert bytewise == whole
    assert pieces == whole

    events, out = whole
    # the generator and the core agree: refusals only where expected, one end per transaction
    bad = [ev for ev in events if isinstance(ev, BadCommand)]
    assert len(bad) == sum(REFUSED.get(t, 0) for t in turns)
    assert not any(ev.fatal for ev in bad)
    transactions = sum(t.startswith(b"MAIL FROM:<sender@") for t in turns)
    assert len([ev for ev in events if isinstance(ev, EndOfMessage)]) == transactions
    assert not any(isinstance(ev, ConnectionClosed) for ev in events)
    assert out.endswith(b"221 2.0.0 Bye\r\n")


# ---- arbitrary input -----------------------------------------------------------------------
GARBAGE_SETTINGS = {"tls_available": True, "auth_mechanisms": ("PLAIN",), "auth_without_tls": True,
                    "max_message_size": 20, "max_recipients": 2, "max_line_length": 64}
fragment = st.one_of(
    st.sampled_from(["EHLO x", "HELO", "MAIL FROM:<a@b.example>", "RCPT TO:<c@d.example>",
                     "MAIL FROM:<a@b.example> BODY=BINARYMIME", "DATA", "BDAT ", "BDAT 3",
                     "BDAT 0 LAST", "RSET", "NOOP", "QUIT", "VRFY", "STARTTLS", "AUTH PLAIN",
                     "good"]).map(str.encode),
    st.sampled_from([b"\r\n", b"\n", b"\r", b" ", b".", b"\r\n.\r\n", b"\x00", b"\xc2\xb2"]),
    st.text(max_size=8).map(str.encode),
    st.binary(max_size=8),
    # numbers in any script: str.isdigit() is true for more than int() accepts
    st.text(st.characters(categories=["Nd", "No"]), min_size=1, max_size=3).map(
        lambda n: f"BDAT {n}\r\n".encode()),
)


PREFIXES = [b"", b"EHLO client.example\r\n",
            b"MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\n"]


@settings(max_examples=200, deadline=None)
@given(depth=st.integers(0, 2), fragments=st.lists(fragment, max_size=40), data=st.data())
def test_arbitrary_input_never_breaks_the_core(server: Server, feeder: Feeder, depth: int,
                                               fragments: list[bytes],
                                               data: st.DataObject) -> None:
    # No exception, every event answered once, well-formed replies, and EOF always ends it.
    # The garbage starts after 0, 1 or 2 valid turns (greeted, EHLO, in a transaction).
    conn = server(**GARBAGE_SETTINGS)
    out = b"".join(feeder(conn, turn)[1] for turn in PREFIXES[1:depth + 1])
    blob = b"".join(fragments)
    _, got = feeder(conn, blob, {}, data.draw(st.lists(st.integers(1, len(blob) + 1))))
    out += got
    if conn.state is State.TLS_PENDING:
        conn.tls_established()
    conn.receive_eof()
    events, more = feeder(conn, b"")
    assert conn.state is State.CLOSED
    assert not events or isinstance(events[-1], ConnectionClosed) or conn.must_close
    for reply in (out + more).split(b"\r\n")[:-1]:
        assert reply[:3].isdigit() and reply[3:4] in (b" ", b"-", b"")


# ---- the DATA decoder and the line-end checker alone -------------------------------------
def bad_line_ends(data: bytes) -> bool:
    """Reference: any NUL, or any CR or LF that is not part of a CRLF pair."""
    return b"\0" in data or b"\r" in data.replace(b"\r\n", b"") or b"\n" in data.replace(
        b"\r\n", b"")


def cuts_of(data: st.DataObject, blob: bytes) -> list[bytes]:
    offsets = sorted(set(data.draw(st.lists(st.integers(0, len(blob)), max_size=12))))
    bounds = [0, *offsets, len(blob)]
    return [blob[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


@settings(max_examples=200, deadline=None)
@given(body=st.one_of(clean_body, any_body), data=st.data())
def test_decoder_round_trip_in_random_pieces(body: bytes, data: st.DataObject) -> None:
    wire = dot_stuff(body) + b"AFTER"
    dec = DataDecoder()
    buf = bytearray()
    out = b""
    for piece in cuts_of(data, wire):
        buf += piece
        out += dec.feed(buf)
    normal = body if not body or body.endswith(b"\r\n") else body + b"\r\n"
    assert out == normal
    assert dec.done and buf == b"AFTER"
    assert dec.clean is not bad_line_ends(normal)


@settings(max_examples=200, deadline=None)
@given(blob=st.binary(max_size=60).filter(lambda b: b"\r\n.\r\n" not in b"\r\n" + b),
       data=st.data())
def test_decoder_never_ends_without_the_terminator(blob: bytes, data: st.DataObject) -> None:
    dec = DataDecoder()
    buf = bytearray()
    for piece in cuts_of(data, blob):
        buf += piece
        dec.feed(buf)
    assert not dec.done


@settings(max_examples=200, deadline=None)
@given(blob=st.binary(max_size=60), data=st.data())
def test_line_end_checker_matches_reference(blob: bytes, data: st.DataObject) -> None:
    check = LineEndChecker()
    for piece in cuts_of(data, blob):
        check.feed(piece)
    assert check.finish() is not bad_line_ends(blob)
