"""BDAT (RFC 3030 CHUNKING and BINARYMIME) in the server core, and the line-end checker.

Chunks are counted bytes: never unstuffed, never searched for an end; a refused BDAT still
consumes its bytes (RFC 3030 section 2); DATA and BDAT do not mix in one transaction; content
that is not BINARYMIME must use CRLF only (RFC 5321 section 2.3.8).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from postwright.protocol.bodycheck import LineEndChecker
from postwright.protocol.events import (
    BadCommand,
    Command,
    EndOfChunk,
    EndOfMessage,
    Event,
    MessageData,
)
from postwright.protocol.reply import Reply
from postwright.protocol.server import ServerConnection, State

Server = Callable[..., ServerConnection]
Converse = Callable[..., list[Event]]
Feeder = Callable[..., tuple[list[Event], bytes]]

TRANSACTION = """
    C: MAIL FROM:<a@example.org>
    C: RCPT TO:<b@example.test>
    S: 250 2.1.0
    S: 250 2.1.5
"""
BINARY = """
    C: MAIL FROM:<a@example.org> BODY=BINARYMIME
    C: RCPT TO:<b@example.test>
    S: 250 2.1.0
    S: 250 2.1.5
"""


def body_of(events: list[Event]) -> bytes:
    return b"".join(ev.data for ev in events if isinstance(ev, MessageData))


def ends(events: list[Event]) -> list[EndOfMessage]:
    return [ev for ev in events if isinstance(ev, EndOfMessage)]


def bdat(data: bytes, last: bool = False) -> str:
    """A C~ transcript line sending ``data`` as one chunk (escaped for the transcript)."""
    esc = "".join(chr(b) if 0x20 <= b < 0x7F and b != 0x5C else f"\\x{b:02x}" for b in data)
    return f"C~ BDAT {len(data)}{' LAST' if last else ''}\\r\\n{esc}"


@pytest.mark.parametrize("bytewise", [False, True])
def test_chunk_bytes_are_never_unstuffed(ehlo: Server, converse: Converse,
                                         bytewise: bool) -> None:
    content = b"a\r\n.\r\n..b\r\nMAIL FROM:<x@example.org>\r\n.\r\n"
    conn = ehlo()
    events = converse(conn, TRANSACTION + bdat(content, last=True) + "\nS: 250 2.0.0",
                      bytewise=bytewise)
    assert body_of(events) == content
    assert [(e.size, e.error) for e in ends(events)] == [(len(content), None)]
    assert not any(isinstance(ev, Command) for ev in events[2:])
    assert conn.state is State.READY


def test_pipelined_chunks(ehlo: Server, converse: Converse) -> None:
    conn = ehlo()
    events = converse(conn, """
        C: MAIL FROM:<a@example.org>
        C: RCPT TO:<b@example.test>
        C~ BDAT 5\\r\\n12345BDAT 3\\r\\nabcBDAT 0\\r\\nBDAT 2 LAST\\r\\nxy
        S: 250 2.1.0
        S: 250 2.1.5
        S: 250 2.0.0 Chunk
        S: 250 2.0.0 Chunk
        S: 250 2.0.0 Chunk
        S: 250 2.0.0 Ok
    """)
    chunks = [(ev.size, ev.total) for ev in events if isinstance(ev, EndOfChunk)]
    assert chunks == [(5, 5), (3, 8), (0, 8)]
    assert body_of(events) == b"12345abcxy" and ends(events)[0].size == 10
    assert conn.state is State.READY


def test_bdat_0_last(ehlo: Server, converse: Converse) -> None:
    events = converse(ehlo(), TRANSACTION + "C: BDAT 0 LAST\nS: 250 2.0.0")
    assert [(e.size, e.error) for e in ends(events)] == [(0, None)]
    events = converse(ehlo(), TRANSACTION + bdat(b"hi\r\n") + "\nS: 250\nC: BDAT 0 last\nS: 250")
    assert ends(events)[0].size == 4


@pytest.mark.parametrize("prelude", ["", "C: EHLO client.example\nS: 250",
                                     "C: EHLO client.example\nS: 250\n"
                                     "C: MAIL FROM:<a@example.org>\nS: 250"])
def test_bdat_out_of_order_consumes_its_bytes(server: Server, converse: Converse,
                                              prelude: str) -> None:
    # RFC 3030 section 2: the chunk is read even when BDAT is refused, so its bytes are
    # never taken for commands.
    conn = server()
    events = converse(conn, prelude + """
        C~ BDAT 16\\r\\nRSET\\r\\nQUIT\\r\\nxyzw
        S: 503 5.5.1
        C: NOOP
        S: 250
    """)
    assert [ev.verb for ev in events if isinstance(ev, Command)][-1:] == ["NOOP"]
    assert not any(isinstance(ev, MessageData) for ev in events)
    assert conn.state is (State.READY if prelude else State.CONNECTED)
    assert conn.mail_params is None


def test_bdat_after_helo_is_not_offered(server: Server, converse: Converse) -> None:
    conn = server()
    converse(conn, "C: HELO client.example\nS: 250" + TRANSACTION + """
        C~ BDAT 4 LAST\\r\\nQUIT
        S: 503
    """)
    assert conn.state is State.READY


@pytest.mark.parametrize("arg", ["", "x", "-1", "5 FIRST", "5 LAST more", "1e3", "0x10",
                                 "123456789012345678901", "\u00b2 LAST", "\u0661",
                                 "5 la\u017ft"])
def test_bdat_syntax_errors(ehlo: Server, converse: Converse, arg: str) -> None:
    conn = ehlo()
    converse(conn, TRANSACTION + f"C: BDAT {arg}\nS: 501 5.5.4\nC: NOOP\nS: 250")
    assert conn.state is State.RCPT  # nothing consumed, the transaction goes on


def test_data_after_bdat_gets_503(ehlo: Server, converse: Converse) -> None:
    # RFC 3030 section 2: "If a DATA statement is issued after a BDAT for the current
    # transaction, a 503 'Bad sequence of commands' MUST be issued."
    conn = ehlo()
    events = converse(conn, TRANSACTION + bdat(b"part one\r\n") + """
        S: 250 2.0.0
        C: DATA
        S: 503 5.5.1
    """ + bdat(b"part two\r\n", last=True) + "\nS: 250 2.0.0")
    assert body_of(events) == b"part one\r\npart two\r\n"


def test_size_limit_across_chunks(ehlo: Server, converse: Converse) -> None:
    # RFC 1870 / RFC 3030: 552 once the total passes the limit; the transaction is over and
    # the pipelined rest of it is still consumed.
    conn = ehlo(max_message_size=10)
    events = converse(conn, TRANSACTION + """
        C~ BDAT 6\\r\\n123456BDAT 6\\r\\n789012BDAT 3 LAST\\r\\nabc
        S: 250 2.0.0
        S: 552 5.3.4
        S: 503 5.5.1
        C: RCPT TO:<b@example.test>
        S: 503
    """)
    assert len(body_of(events)) <= 10
    end = ends(events)
    assert len(end) == 1 and end[0].error is not None and end[0].error.code == 552
    assert conn.state is State.READY and conn.mail_params is None


def test_refused_chunk_ends_the_transaction(ehlo: Server, converse: Converse) -> None:
    conn = ehlo()
    converse(conn, TRANSACTION + bdat(b"abc") + """
        S: 452 4.3.1
        C: RCPT TO:<b@example.test>
        S: 503
    """, {"CHUNK": Reply(452, "4.3.1", "Insufficient system storage")})
    assert conn.state is State.READY


@pytest.mark.parametrize("content", [b"bare\nLF\r\n", b"bare\rCR\r\n", b"nul\x00\r\n",
                                     b"ends in CR\r", b"\n"])
def test_bad_line_ends_in_text_content_are_refused(ehlo: Server, converse: Converse,
                                                   content: bytes) -> None:
    events = converse(ehlo(), TRANSACTION + bdat(content, last=True) + "\nS: 550 5.6.0")
    assert ends(events)[0].error is not None


def test_crlf_split_between_chunks_is_fine(ehlo: Server, converse: Converse) -> None:
    events = converse(ehlo(), TRANSACTION + bdat(b"line\r") + "\nS: 250\n"
                      + bdat(b"\nmore\r\n", last=True) + "\nS: 250 2.0.0")
    assert ends(events)[0].error is None


def test_bare_line_end_in_an_early_chunk_refuses_the_message(ehlo: Server,
                                                             converse: Converse) -> None:
    events = converse(ehlo(), TRANSACTION + bdat(b"a\nb") + "\nS: 250\n"
                      + bdat(b"\r\n", last=True) + "\nS: 550 5.6.0")
    assert ends(events)[0].error is not None


def test_binarymime_takes_any_octets(ehlo: Server, converse: Converse) -> None:
    content = bytes(range(256)) + b"\n.\n\r"
    conn = ehlo()
    events = converse(conn, BINARY + bdat(content[:100]) + "\nS: 250\n"
                      + bdat(content[100:], last=True) + "\nS: 250 2.0.0")
    assert body_of(events) == content and ends(events)[0].error is None


def test_data_after_binarymime_gets_503(ehlo: Server, converse: Converse) -> None:
    # RFC 3030 section 3: BINARYMIME content is sent with BDAT only.
    conn = ehlo()
    converse(conn, BINARY + "C: DATA\nS: 503 5.5.1")
    assert conn.state is State.RCPT


def test_binarymime_needs_chunking(ehlo: Server, converse: Converse) -> None:
    converse(ehlo(chunking=False), "C: MAIL FROM:<a@example.org> BODY=BINARYMIME\nS: 501")


def test_eof_inside_a_chunk(ehlo: Server, converse: Converse) -> None:
    events = converse(ehlo(), TRANSACTION + "C~ BDAT 10\\r\\nabc\n-- eof")
    assert not ends(events) and type(events[-1]).__name__ == "ConnectionClosed"


def test_bad_command_then_bdat_chunk_is_still_framed(ehlo: Server, converse: Converse) -> None:
    events = converse(ehlo(), TRANSACTION + """
        C: BOGUS
        C~ BDAT 6 LAST\\r\\nBOGUS\\n
        S: 500
        S: 550 5.6.0
    """)
    assert [type(ev) for ev in events[2:]] == [BadCommand, MessageData, EndOfMessage]


# ---- LineEndChecker alone ----------------------------------------------------------------
@pytest.mark.parametrize(("pieces", "clean"), [
    ([b"a\r\nb\r\n"], True),
    ([b"a\r", b"\nb\r", b"\n"], True),
    ([b"\r", b"\n", b"\r", b"\n"], True),
    ([], True),
    ([b"a\r", b"b"], False),
    ([b"a\r", b"\r\n"], False),
    ([b"a\n"], False),
    ([b"a\r\n", b"\n"], False),
    ([b"a\r"], False),
    ([b"x\x00y"], False),
    ([b"\r\r\n"], False),
])
def test_line_end_checker(pieces: list[bytes], clean: bool) -> None:
    check = LineEndChecker()
    for piece in pieces:
        check.feed(piece)
    assert check.finish() is clean


def test_line_end_checker_bytewise_matches_whole() -> None:
    samples = [b"a\r\nb\r\n", b"a\rb", b"a\nb", b"\r\n\r", b"\n\r", b"x\r\r\n\n"]
    for data in samples:
        whole, bytewise = LineEndChecker(), LineEndChecker()
        whole.feed(data)
        for i in range(len(data)):
            bytewise.feed(data[i:i + 1])
        assert whole.finish() == bytewise.finish(), data
        assert (whole.bare_cr, whole.bare_lf) == (bytewise.bare_cr, bytewise.bare_lf), data
