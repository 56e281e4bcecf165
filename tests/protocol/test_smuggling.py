"""SMTP smuggling: only CRLF "." CRLF ends DATA, and a body with a fake end is refused.

RFC 5321 section 4.1.1.4 (the end of mail data is CRLF.CRLF), section 2.3.8 (CR and LF only
as CRLF) and section 4.5.2 (transparency). The attack (SEC Consult, December 2023) hides a
second transaction behind an end-of-data sequence that another server reads differently;
here that sequence must neither end the message nor let the smuggled commands through, and
the message that carried it is refused as a whole (550 5.6.0).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from postwright.protocol.events import Command, EndOfMessage, Event, MessageData
from postwright.protocol.server import ServerConnection, State

Server = Callable[..., ServerConnection]
Converse = Callable[..., list[Event]]
Feeder = Callable[..., tuple[list[Event], bytes]]

OPEN = b"MAIL FROM:<sender@example.org>\r\nRCPT TO:<rcpt@example.test>\r\nDATA\r\n"
BODY = b"From: sender@example.org\r\nSubject: hello\r\n\r\nFirst line"

FAKE_ENDS = {
    "LF.LF": b"\n.\n",
    "LF.CRLF": b"\n.\r\n",
    "CR.CRLF": b"\r.\r\n",
    "CRLF.LF": b"\r\n.\n",
    "CRLF.CR": b"\r\n.\r",
    "CRLF-NUL.CRLF": b"\r\n\x00.\r\n",
    "CRLF.NUL-CRLF": b"\r\n.\x00\r\n",
    "LF..LF": b"\n..\n",
}

SMUGGLED = (b"MAIL FROM:<ceo@example.org>\r\nRCPT TO:<victim@example.test>\r\nDATA\r\n"
            b"From: ceo@example.org\r\nSubject: wire the money\r\n\r\nsmuggled\r\n")


def open_transaction(ehlo: Server, feeder: Feeder) -> ServerConnection:
    conn = ehlo()
    events, out = feeder(conn, OPEN)
    assert out.endswith(b"354 End data with <CR><LF>.<CR><LF>\r\n")
    assert conn.state is State.DATA
    return conn


def body_of(events: list[Event]) -> bytes:
    return b"".join(ev.data for ev in events if isinstance(ev, MessageData))


@pytest.mark.parametrize("split", ["whole", "bytewise"])
@pytest.mark.parametrize("payload", [b"", SMUGGLED], ids=["plain", "smuggled-transaction"])
@pytest.mark.parametrize("at_start", [False, True], ids=["mid-body", "body-start"])
@pytest.mark.parametrize("fake", list(FAKE_ENDS.values()), ids=list(FAKE_ENDS))
def test_fake_end_of_data_is_refused(ehlo: Server, feeder: Feeder, fake: bytes,
                                     payload: bytes, at_start: bool, split: str) -> None:
    conn = open_transaction(ehlo, feeder)
    data = (b"" if at_start else BODY) + fake + payload + b"\r\n.\r\n"
    pieces = range(1, len(data)) if split == "bytewise" else None
    events, out = feeder(conn, data, {}, pieces)

    ends = [ev for ev in events if isinstance(ev, EndOfMessage)]
    assert len(ends) == 1, "the fake end must not end the message"
    assert ends[0].error is not None and (ends[0].error.code, ends[0].error.enhanced) == (
        550, "5.6.0")
    assert isinstance(events[-1], EndOfMessage)
    assert not any(isinstance(ev, Command) for ev in events), "smuggled commands went through"
    assert out == b"550 5.6.0 Bare CR or LF, or NUL, in message content\r\n"
    assert conn.state is State.READY and conn.mail_params is None and conn.buffered == 0
    # everything up to the real end was content (which the driver then discards)
    if payload:
        assert b"RCPT TO:<victim@example.test>" in body_of(events)

    # the session goes on normally afterwards
    events, out = feeder(conn, OPEN)
    assert out.startswith(b"250 2.1.0") and conn.in_data


def test_smuggled_end_split_across_packets(ehlo: Server, feeder: Feeder) -> None:
    conn = open_transaction(ehlo, feeder)
    events: list[Event] = []
    for piece in (BODY + b"\r", b"\n.", b"\n", SMUGGLED, b"\r\n.", b"\r\n"):
        got, _ = feeder(conn, piece)
        events += got
    ends = [ev for ev in events if isinstance(ev, EndOfMessage)]
    assert len(ends) == 1 and ends[0].error is not None
    assert not any(isinstance(ev, Command) for ev in events)


def test_clean_message_unstuffs_and_ends_only_at_crlf_dot_crlf(ehlo: Server,
                                                               feeder: Feeder) -> None:
    # RFC 5321 section 4.5.2: the first "." of a line is removed when the line starts with one.
    conn = open_transaction(ehlo, feeder)
    data = (b"..leading dot\r\n"
            b"..\r\n"
            b"...\r\n"
            b"mid.dle.\r\n"
            b". space\r\n"
            b"end .\r\n"
            b".\r\n")
    events, out = feeder(conn, data)
    assert body_of(events) == (b".leading dot\r\n.\r\n..\r\nmid.dle.\r\n space\r\nend .\r\n")
    ends = [ev for ev in events if isinstance(ev, EndOfMessage)]
    assert len(ends) == 1 and ends[0].error is None and ends[0].size == len(body_of(events))
    assert out == b"250 2.0.0 Ok: queued\r\n"


def test_terminator_pieces_that_are_not_the_end(ehlo: Server, feeder: Feeder) -> None:
    conn = open_transaction(ehlo, feeder)
    events, out = feeder(conn, b"a\r\n.\r")
    assert out == b"" and not any(isinstance(ev, EndOfMessage) for ev in events)
    more, out = feeder(conn, b"X\r\n.\r\n")
    end = more[-1]
    assert isinstance(end, EndOfMessage) and end.error is not None  # the CR before X is bare
    assert body_of(events + more) == b"a\r\n\rX\r\n"


def test_data_after_the_end_is_read_as_commands(ehlo: Server, feeder: Feeder) -> None:
    # RFC 2920: a client may pipeline commands after the end of data.
    conn = open_transaction(ehlo, feeder)
    events, out = feeder(conn, b"text\r\n.\r\nRSET\r\nNOOP\r\n")
    assert out == b"250 2.0.0 Ok: queued\r\n250 2.0.0 Ok\r\n250 2.0.0 Ok\r\n"
    assert [ev.verb for ev in events if isinstance(ev, Command)] == ["RSET", "NOOP"]


def test_eof_inside_data_closes_without_a_message(ehlo: Server, feeder: Feeder,
                                                  converse: Converse) -> None:
    conn = open_transaction(ehlo, feeder)
    events = converse(conn, "C~ half a message\\r\\n.\n-- eof")
    assert not any(isinstance(ev, EndOfMessage) for ev in events)
    assert type(events[-1]).__name__ == "ConnectionClosed"
