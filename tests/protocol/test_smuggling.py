"""Smuggling and injection: input that tries to be read as something it is not.

DATA: only CRLF "." CRLF ends the body (RFC 5321 sections 4.1.1.4, 2.3.8, 4.5.2). The attack
(SEC Consult, December 2023) hides a second transaction behind an end-of-data sequence that
another server reads differently; here that sequence must neither end the message nor let the
smuggled commands through, and the message that carried it is refused whole (550 5.6.0).
Commands: bare CR, LF and NUL are not line ends (RFC 5321 section 2.3.8); input sent before
the greeting or after a command that must end a pipelined group (RFC 2920 section 3.1) is a
synchronization error; plaintext after STARTTLS is dropped (RFC 3207 section 4.2,
CVE-2011-0411).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from postwright.protocol.events import (
    PAUSED,
    BadCommand,
    Command,
    EndOfMessage,
    Event,
    MessageData,
)
from postwright.protocol.reply import Reply
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


# ---- commands --------------------------------------------------------------------------------
TRANSACTION = """
    C: MAIL FROM:<alice@example.org>
    S: 250 2.1.0
    C: RCPT TO:<bob@example.test>
    S: 250 2.1.5
"""


@pytest.mark.parametrize("line", [
    "NOOP\\n", "NO\\nOP", "NOOP\\rx", "NO\\rOP", "NOOP\\0", "MAIL FROM:<a\\x00@example.org>",
    "NOOP \\xff\\xfe",  # not UTF-8
])
def test_bare_lf_cr_nul_and_bad_utf8_in_command_get_500(ehlo: Server, converse: Converse,
                                                        line: str) -> None:
    # RFC 5321 section 2.3.8: a line ends with CRLF only; CR, LF and NUL are not command text.
    conn = ehlo()
    replies = "S: 500 5.5.2\nS: 500" if "\\n" in line else "S: 500 5.5.2"
    converse(conn, f"C~ {line}\\r\\n\n{replies}\nC: NOOP\nS: 250")
    assert conn.state is State.READY


def test_bytes_between_starttls_and_220_are_dropped(ehlo: Server) -> None:
    conn = ehlo(tls_available=True)
    conn.receive_data(b"STARTTLS\r\n")
    ev = conn.next_event()
    assert isinstance(ev, Command) and ev.verb == "STARTTLS"
    conn.receive_data(b"MAIL FROM:<evil@example.org>\r\n")  # arrives before our 220
    conn.send(Reply(220, "2.0.0", "Ready"))
    assert conn.discarded_after_starttls == 30 and conn.buffered == 0
    conn.tls_established()
    assert conn.next_event() is not PAUSED and conn.buffered == 0


def test_client_talking_before_greeting_is_fatal(server: Server, converse: Converse) -> None:
    conn = server(greet=False)
    conn.receive_data(b"EHLO early.example\r\n")
    events = converse(conn, """
        -- greet
        S: 220
        S: 554 5.5.0
    """)
    assert len(events) == 1 and isinstance(events[0], BadCommand) and events[0].fatal
    assert conn.must_close and conn.state is State.CLOSED


@pytest.mark.parametrize("line", ["EHLO client.example", "HELO client.example", "DATA", "QUIT",
                                  "NOOP", "VRFY bob", "EXPN staff", "STARTTLS",
                                  "AUTH PLAIN"])
def test_data_after_a_must_be_last_command_is_fatal(ehlo: Server, converse: Converse,
                                                    line: str) -> None:
    # RFC 2920 section 3.1; RFC 3207 section 4.2 and RFC 4954 section 4 for STARTTLS, AUTH.
    conn = ehlo(tls_available=True, auth_mechanisms=("PLAIN",), auth_without_tls=True)
    prelude = TRANSACTION if line == "DATA" else ""
    events = converse(conn, prelude + f"C: {line}\nC: NOOP\nS: 554 5.5.0")
    assert isinstance(events[-1], BadCommand) and events[-1].fatal
    assert conn.must_close and conn.state is State.CLOSED
    assert conn.discarded_after_starttls == 0
