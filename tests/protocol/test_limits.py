"""Limits and requirements of the server core: sizes, recipients, line length, errors, TLS, AUTH.

RFC 1870 (SIZE, 552), RFC 5321 section 4.5.3.1 (line and recipient limits, 452 4.5.3),
RFC 3207 section 4 (530 before STARTTLS), RFC 4954 section 6 (530 authentication required).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from postwright.protocol.events import AuthResponse, BadCommand, EndOfMessage, Event, MessageData
from postwright.protocol.reply import Reply
from postwright.protocol.server import ServerConnection, State

Server = Callable[..., ServerConnection]
Converse = Callable[..., list[Event]]
Feeder = Callable[..., tuple[list[Event], bytes]]

AUTH_TLS = {"auth_mechanisms": ("PLAIN", "LOGIN"), "tls_active": True}
OPEN = """
    C: MAIL FROM:<a@example.org>
    C: RCPT TO:<b@example.test>
    C: DATA
    S: 250
    S: 250
    S: 354
"""


def body_of(events: list[Event]) -> bytes:
    return b"".join(ev.data for ev in events if isinstance(ev, MessageData))


# ---- message size (RFC 1870) -------------------------------------------------------------
def test_declared_size_over_the_limit_gets_552(ehlo: Server, converse: Converse) -> None:
    conn = ehlo(max_message_size=1000)
    converse(conn, """
        C: MAIL FROM:<a@example.org> SIZE=1001
        S: 552 5.3.4
        C: MAIL FROM:<a@example.org> SIZE=1000
        S: 250
    """)
    assert conn.mail_params is not None and conn.mail_params.size == 1000


@pytest.mark.parametrize("bytewise", [False, True])
def test_body_over_the_limit_is_refused_at_the_end(ehlo: Server, converse: Converse,
                                                   bytewise: bool) -> None:
    conn = ehlo(max_message_size=100)
    converse(conn, OPEN)
    events = converse(conn, """
        C~ %s\\r\\n.\\r\\n
        S: 552 5.3.4
        C: RCPT TO:<b@example.test>
        S: 503
    """ % ("0123456789" * 15), bytewise=bytewise)
    ends = [ev for ev in events if isinstance(ev, EndOfMessage)]
    assert len(ends) == 1 and ends[0].error is not None and ends[0].error.code == 552
    assert ends[0].size == 152
    assert len(body_of(events)) <= 100  # nothing past the limit is handed on
    assert conn.state is State.READY and conn.mail_params is None


def test_body_at_the_limit_is_accepted(ehlo: Server, converse: Converse) -> None:
    conn = ehlo(max_message_size=100)
    events = converse(conn, OPEN + "C~ %s\\r\\n.\\r\\n\nS: 250 2.0.0" % ("x" * 98))
    end = events[-1]
    assert isinstance(end, EndOfMessage) and end.error is None and end.size == 100
    assert body_of(events) == b"x" * 98 + b"\r\n"


# ---- recipients (RFC 5321 section 4.5.3.1.8) ---------------------------------------------
def test_too_many_recipients_get_452(ehlo: Server, converse: Converse) -> None:
    def rcpt(ev: Event) -> Reply:
        if "nobody" in str(getattr(ev, "path", "")):
            return Reply(550, "5.1.1", "Mailbox unavailable")
        return Reply(250, "2.1.5", "Recipient ok")

    # refused recipients do not count; the third accepted one is over the limit
    converse(ehlo(max_recipients=2), """
        C: MAIL FROM:<a@example.org>
        C: RCPT TO:<nobody@example.test>
        C: RCPT TO:<b1@example.test>
        C: RCPT TO:<nobody@example.test>
        C: RCPT TO:<b2@example.test>
        C: RCPT TO:<b3@example.test>
        C: RCPT TO:<b4@example.test>
        C: DATA
        S: 250 2.1.0
        S: 550
        S: 250 2.1.5
        S: 550
        S: 250 2.1.5
        S: 452 4.5.3
        S: 452 4.5.3
        S: 354
    """, {"RCPT": rcpt})


def test_recipient_count_resets_with_the_transaction(ehlo: Server, converse: Converse) -> None:
    converse(ehlo(max_recipients=1), """
        C: MAIL FROM:<a@example.org>
        C: RCPT TO:<b@example.test>
        C: RSET
        C: MAIL FROM:<a@example.org>
        C: RCPT TO:<b@example.test>
        S: 250
        S: 250 2.1.5
        S: 250
        S: 250
        S: 250 2.1.5
    """)


# ---- command line length (RFC 5321 section 4.5.3.1.4) ------------------------------------
def test_line_at_the_limit_accepted_one_more_refused(ehlo: Server, converse: Converse) -> None:
    conn = ehlo(max_line_length=512)
    fill = "x" * (512 - len("NOOP \r\n"))
    converse(conn, f"C: NOOP {fill}\nS: 250\nC: NOOP {fill}y\nS: 500 5.5.2\nC: NOOP\nS: 250")


def test_long_auth_response_accepted_long_command_refused(ehlo: Server,
                                                         converse: Converse) -> None:
    # RFC 4954 section 4: a SASL line may be 12,288 octets; RFC 5321 4.5.3.1.4 for commands.
    conn = ehlo(**AUTH_TLS)
    blob = "QUFB" * 3072
    events = converse(conn, f"C: AUTH PLAIN\nS: 334\nC: {blob}\nS: 535")
    assert isinstance(events[-1], AuthResponse) and events[-1].data == blob
    converse(conn, f"C: NOOP {'x' * 3000}\nS: 500 5.5.2\nC: NOOP\nS: 250")


def test_default_limit_refuses_a_3kb_line(ehlo: Server, converse: Converse) -> None:
    converse(ehlo(), f"C: MAIL FROM:<{'a' * 3000}@example.org>\nS: 500 5.5.2")


def test_overlong_line_in_pieces_is_discarded_whole(ehlo: Server, feeder: Feeder) -> None:
    # Memory stays bounded: the core drops an overlong line as it arrives, then says 500 once.
    conn = ehlo(max_line_length=512)
    for _ in range(10):
        events, out = feeder(conn, b"RCPT TO:<" + b"z" * 300)
        assert events == [] and out == b""
        assert conn.buffered <= 512
    events, out = feeder(conn, b">\r\nNOOP\r\n")
    assert out == b"500 5.5.2 Line too long\r\n250 2.0.0 Ok\r\n"
    assert isinstance(events[0], BadCommand) and not events[0].fatal


# ---- error limit -------------------------------------------------------------------------
def test_error_limit_closes_with_421(ehlo: Server, converse: Converse) -> None:
    conn = ehlo(max_errors=3)
    events = converse(conn, """
        C: FOO
        S: 500
        C: MAIL FROM:<a@example.org>
        S: 250
        C: RCPT TO:<nobody@example.test>
        S: 550
        C: BAR
        S: 500
        S: 421 4.7.0
    """, {"RCPT": Reply(550, "5.1.1", "Mailbox unavailable")})
    last = events[-1]
    assert isinstance(last, BadCommand) and last.fatal and last.reply.code == 421
    assert conn.errors >= 3 and conn.must_close and conn.state is State.CLOSED


def test_error_limit_comes_before_pipelined_input(ehlo: Server, converse: Converse) -> None:
    conn = ehlo(max_errors=2)
    converse(conn, "C: FOO\nC: BAR\nC: RSET\nS: 500\nS: 500\nS: 421")
    assert conn.must_close


# ---- requirements (RFC 3207 section 4, RFC 4954 section 6) -------------------------------
def test_require_tls(ehlo: Server, converse: Converse) -> None:
    conn = ehlo(require_tls=True, tls_available=True)
    converse(conn, """
        C: MAIL FROM:<a@example.org>
        S: 530 5.7.0
        C: VRFY bob
        S: 530
        C: EXPN staff
        S: 530
        C: NOOP
        S: 250
        C: RSET
        S: 250
        C: HELP
        S: 214
        C~ BDAT 9\\r\\nNOOP\\r\\nxyz
        S: 503
        C: STARTTLS
        S: 220
        -- tls
        C: EHLO client.example
        S: 250
        C: MAIL FROM:<a@example.org>
        S: 250
    """)
    assert conn.tls_active


def test_require_tls_is_met_by_implicit_tls(ehlo: Server, converse: Converse) -> None:
    converse(ehlo(require_tls=True, tls_active=True), "C: MAIL FROM:<a@example.org>\nS: 250")


def test_require_auth(ehlo: Server, converse: Converse) -> None:
    conn = ehlo(require_auth=True, auth_mechanisms=("PLAIN",), tls_active=True)
    converse(conn, """
        C: MAIL FROM:<a@example.org>
        S: 530 5.7.0
        C: AUTH PLAIN bad
        S: 535
        C: MAIL FROM:<a@example.org>
        S: 530 5.7.0
        C: AUTH PLAIN good
        S: 235
        C: MAIL FROM:<a@example.org>
        S: 250
    """)
