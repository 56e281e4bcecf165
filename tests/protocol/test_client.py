"""Tests for the sans-IO SMTP client core, with byte transcripts and no event loop.

Server replies are fed whole, one byte at a time and in random pieces (hypothesis): the events
must not change. Covers reply parsing (multi-line, enhanced codes, garbage), the FIFO of sent
commands, PIPELINING order, argument checks (CR/LF injection, SMTPUTF8, parameters), content
checks (bare CR/LF, 8-bit), dot-stuffing across chunks, BDAT, STARTTLS, AUTH and closing.
RFC 5321 sections 3.1, 4.1, 4.2, 4.5.2; RFC 2920; RFC 3030; RFC 3207; RFC 4954; RFC 6531.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from postwright.errors import LocalProtocolError, RemoteProtocolError
from postwright.protocol.client import (
    END_OF_DATA,
    GREETING,
    ClientConnection,
    ClientState,
    ReplyEvent,
    SentCommand,
)
from postwright.protocol.dotstuff import dot_stuff
from postwright.protocol.events import NEED_DATA, ConnectionClosed
from postwright.protocol.reply import Reply

EHLO_ALL = (b"250-mx.example.test greets you\r\n250-PIPELINING\r\n250-SIZE 1000000\r\n"
            b"250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250-SMTPUTF8\r\n250-CHUNKING\r\n"
            b"250-BINARYMIME\r\n250-DSN\r\n250-STARTTLS\r\n250 AUTH PLAIN LOGIN SCRAM-SHA-256\r\n")
EHLO_BARE = b"250-mx.example.test\r\n250 SIZE 0\r\n"  # no PIPELINING, 8BITMIME, SMTPUTF8...

Item = ReplyEvent | ConnectionClosed | tuple[str, str]


def state(conn: ClientConnection) -> ClientState:
    """The state, read through a call (mypy would otherwise narrow the attribute)."""
    return conn.state


def drain(conn: ClientConnection) -> list[Item]:
    """Every event until the core needs data; a raised error becomes ("error", type)."""
    out: list[Item] = []
    while True:
        try:
            ev = conn.next_event()
        except (RemoteProtocolError, LocalProtocolError) as exc:
            out.append(("error", type(exc).__name__))
            return out
        if ev is NEED_DATA:
            return out
        assert isinstance(ev, (ReplyEvent, ConnectionClosed))
        out.append(ev)
        if isinstance(ev, ConnectionClosed):
            return out


def feed(conn: ClientConnection, data: bytes, cuts: list[int] | None = None) -> list[Item]:
    points = sorted({c for c in (cuts or []) if 0 < c < len(data)})
    events: list[Item] = []
    start = 0
    for end in [*points, len(data)]:
        conn.receive_data(data[start:end])
        events += drain(conn)
        start = end
    return events


def replies(items: list[Item]) -> list[tuple[str, int]]:
    return [(ev.command.verb, ev.reply.code) for ev in items if isinstance(ev, ReplyEvent)]


def connect(ehlo: bytes = EHLO_ALL) -> ClientConnection:
    conn = ClientConnection(local_hostname="client.example")
    assert replies(feed(conn, b"220 mx.example.test ESMTP\r\n")) == [(GREETING, 220)]
    conn.ehlo()
    assert conn.data_to_send() == b"EHLO client.example\r\n"
    assert replies(feed(conn, ehlo)) == [("EHLO", 250)]
    assert state(conn) is ClientState.READY
    return conn


def in_data(ehlo: bytes = EHLO_ALL) -> ClientConnection:
    """A connection that got its 354: the body may be sent."""
    conn = connect(ehlo)
    conn.mail("a@example.org")
    feed(conn, b"250 ok\r\n")
    conn.rcpt("b@example.test")
    feed(conn, b"250 ok\r\n")
    conn.data()
    feed(conn, b"354 go ahead\r\n")
    conn.data_to_send()
    assert state(conn) is ClientState.DATA
    return conn


# ---- greeting and closing ------------------------------------------------------------------

def test_greeting_is_the_first_reply_owed() -> None:
    conn = ClientConnection(local_hostname="client.example")
    assert conn.pending == 1 and conn.state is ClientState.GREETING
    assert conn.next_event() is NEED_DATA
    with pytest.raises(LocalProtocolError):
        conn.ehlo()  # RFC 5321 section 3.1: wait for the greeting
    assert conn.data_to_send() == b""
    [ev] = feed(conn, b"220-mx.example.test ESMTP\r\n220 welcome\r\n")
    assert isinstance(ev, ReplyEvent)
    assert ev.command == SentCommand(GREETING, "")
    assert ev.reply == Reply(220, None, "mx.example.test ESMTP", "welcome")
    assert state(conn) is ClientState.CONNECTED and conn.pending == 0


@pytest.mark.parametrize("greeting", [b"554 5.3.2 go away\r\n", b"421 busy\r\n",
                                      b"450 later\r\n"])
def test_refusing_greeting_closes(greeting: bytes) -> None:
    conn = ClientConnection(local_hostname="client.example")
    [ev] = feed(conn, greeting + b"250 trailing junk\r\n")[:1]
    assert isinstance(ev, ReplyEvent) and ev.command.verb == GREETING
    assert state(conn) is ClientState.CLOSED
    assert isinstance(conn.next_event(), ConnectionClosed)
    with pytest.raises(LocalProtocolError):
        conn.ehlo()


def test_421_anywhere_closes_after_that_event() -> None:
    conn = connect()
    conn.mail("a@example.org")
    conn.rcpt("b@example.test")
    conn.rcpt("c@example.test")
    conn.data_to_send()
    events = feed(conn, b"250 ok\r\n421 4.3.2 shutting down\r\n250 never read\r\n")
    assert replies(events) == [("MAIL", 250), ("RCPT", 421)]
    assert isinstance(events[-1], ConnectionClosed)
    assert state(conn) is ClientState.CLOSED and conn.pending == 1


def test_quit() -> None:
    conn = connect()
    conn.quit()
    assert conn.data_to_send() == b"QUIT\r\n"
    with pytest.raises(LocalProtocolError):
        conn.noop()  # QUIT ends a pipelined group
    assert replies(feed(conn, b"221 2.0.0 bye\r\n")) == [("QUIT", 221)]
    assert state(conn) is ClientState.CLOSED


def test_eof_gives_connection_closed() -> None:
    conn = connect()
    conn.noop()
    feed(conn, b"250 2.0")  # half a reply, then the server goes away
    conn.receive_eof()
    assert isinstance(conn.next_event(), ConnectionClosed)
    assert state(conn) is ClientState.CLOSED and conn.pending == 1


# ---- reply parsing -------------------------------------------------------------------------

def test_multi_line_ehlo_is_parsed() -> None:
    conn = connect(b"250-mx.example.test Hello\r\n250-pipelining\r\n250-SIZE  35882577\r\n"
                   b"250-AUTH PLAIN  LOGIN\r\n250-X-ODD_KEY nope\r\n250-8BITMIME\r\n"
                   b"250 ENHANCEDSTATUSCODES\r\n")
    assert conn.extensions == {"PIPELINING": "", "SIZE": "35882577", "AUTH": "PLAIN LOGIN",
                               "8BITMIME": "", "ENHANCEDSTATUSCODES": ""}
    assert conn.supports("pipelining") and conn.supports("AUTH")
    assert not conn.supports("SMTPUTF8") and not conn.supports("X-ODD_KEY")
    assert conn.max_size == 35882577
    assert connect(EHLO_BARE).max_size is None  # SIZE 0: no fixed limit (RFC 1870)


def test_ehlo_refused_then_helo() -> None:
    conn = ClientConnection(local_hostname="[192.0.2.1]")
    feed(conn, b"220 old.example\r\n")
    conn.ehlo()
    assert replies(feed(conn, b"502 5.5.1 what?\r\n")) == [("EHLO", 502)]
    assert state(conn) is ClientState.CONNECTED
    with pytest.raises(LocalProtocolError):
        conn.mail("a@example.org")
    conn.helo()
    assert conn.data_to_send() == b"EHLO [192.0.2.1]\r\nHELO [192.0.2.1]\r\n"
    feed(conn, b"250 old.example\r\n")
    assert state(conn) is ClientState.READY and conn.extensions == {}


def test_enhanced_status_codes() -> None:
    conn = connect()
    conn.noop()
    cases = [
        (b"250-2.1.0 first\r\n250 2.1.0 second\r\n", Reply(250, "2.1.0", "first", "second")),
        (b"250 2.0.0\r\n", Reply(250, "2.0.0", "")),
        (b"550 5.7.1 no\r\n", Reply(550, "5.7.1", "no")),
        (b"250 5.1.0 class does not match\r\n", Reply(250, None, "5.1.0 class does not match")),
        (b"451 4.7.1234 detail too long\r\n", Reply(451, None, "4.7.1234 detail too long")),
        (b"250\r\n", Reply(250, None, "")),
        (b"250 ok\n", Reply(250, None, "ok")),  # a bare LF ends a reply line too
        (b"250 tab\there \x00 \x1b[0m \xff\r\n", Reply(250, None, "tab\there ? ?[0m \ufffd")),
    ]
    events = feed(conn, cases[0][0])
    for data, _ in cases[1:]:
        conn.noop()
        events += feed(conn, data)
    assert [ev.reply for ev in events if isinstance(ev, ReplyEvent)] == [r for _, r in cases]


@pytest.mark.parametrize("garbage", [
    b"25 ok\r\n", b"abc\r\n", b"250x ok\r\n", b"199 info\r\n", b"600 huh\r\n",
    b"250-first\r\n251 second\r\n",  # mixed codes in one reply
    b"250 " + b"x" * 2100 + b"\r\n", b"250 " + b"x" * 2100,  # over 2,048 octets
    b"250-x\r\n" * 101 + b"250 x\r\n",  # too many lines
    b"\r\n", b"\xef\xbb\xbf250 ok\r\n",
])
def test_garbage_is_a_remote_error_and_closes(garbage: bytes) -> None:
    conn = connect()
    conn.noop()
    assert feed(conn, garbage) == [("error", "RemoteProtocolError")]
    assert state(conn) is ClientState.CLOSED
    assert isinstance(conn.next_event(), ConnectionClosed)


def test_reply_with_nothing_pending() -> None:
    conn = connect()
    assert conn.pending == 0
    conn.receive_data(b"250 surprise\r\n")
    with pytest.raises(RemoteProtocolError) as info:
        conn.next_event()
    assert info.value.reply.code == 451 and conn.state is ClientState.CLOSED


def test_unsolicited_421_carries_the_servers_reply() -> None:
    conn = connect()
    conn.receive_data(b"421 4.4.2 idle timeout\r\n")
    with pytest.raises(RemoteProtocolError) as info:
        conn.next_event()
    assert info.value.reply == Reply(421, "4.4.2", "idle timeout")
    assert state(conn) is ClientState.CLOSED


def test_one_extra_reply_after_the_pipeline_is_caught() -> None:
    conn = connect()
    conn.mail("a@example.org")
    conn.rcpt("b@example.test")
    assert conn.pending == 2
    events = feed(conn, b"250 ok\r\n250 ok\r\n250 injected\r\n")
    assert replies(events) == [("MAIL", 250), ("RCPT", 250)]
    assert events[-1] == ("error", "RemoteProtocolError")


# ---- pipelining and order ------------------------------------------------------------------

def test_pipelined_transaction() -> None:
    conn = connect()
    conn.mail("a@example.org", {"SIZE": "1234", "BODY": "8BITMIME"})
    conn.rcpt("b@example.test", {"NOTIFY": "SUCCESS,FAILURE"})
    conn.rcpt("nobody@example.test")
    conn.data()
    assert conn.pending == 4
    assert conn.data_to_send() == (
        b"MAIL FROM:<a@example.org> SIZE=1234 BODY=8BITMIME\r\n"
        b"RCPT TO:<b@example.test> NOTIFY=SUCCESS,FAILURE\r\n"
        b"RCPT TO:<nobody@example.test>\r\nDATA\r\n")
    with pytest.raises(LocalProtocolError):
        conn.rset()  # DATA ends the group (RFC 2920 section 3.1)
    events = feed(conn, b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n550 5.1.1 unknown\r\n354 go\r\n")
    assert [(ev.command, ev.reply.code) for ev in events if isinstance(ev, ReplyEvent)] == [
        (SentCommand("MAIL", "FROM:<a@example.org> SIZE=1234 BODY=8BITMIME"), 250),
        (SentCommand("RCPT", "TO:<b@example.test> NOTIFY=SUCCESS,FAILURE"), 250),
        (SentCommand("RCPT", "TO:<nobody@example.test>"), 550),
        (SentCommand("DATA", ""), 354)]
    assert state(conn) is ClientState.DATA and conn.pending == 0
    conn.send_body(b"Subject: hi\r\n\r\nhello\r\n")
    conn.end_body()
    conn.mail("")  # may follow the end of data in the same group
    assert conn.data_to_send() == b"Subject: hi\r\n\r\nhello\r\n.\r\nMAIL FROM:<>\r\n"
    assert replies(feed(conn, b"250 queued\r\n250 ok\r\n")) == [(END_OF_DATA, 250),
                                                                 ("MAIL", 250)]


def test_without_pipelining_one_command_at_a_time() -> None:
    conn = connect(EHLO_BARE)
    conn.mail("a@example.org")
    with pytest.raises(LocalProtocolError):
        conn.rcpt("b@example.test")
    assert conn.data_to_send() == b"MAIL FROM:<a@example.org>\r\n"
    feed(conn, b"250 ok\r\n")
    conn.rcpt("b@example.test")
    with pytest.raises(LocalProtocolError):
        conn.data()  # a RCPT reply is still owed
    feed(conn, b"250 ok\r\n")
    conn.data()
    assert conn.data_to_send() == b"RCPT TO:<b@example.test>\r\nDATA\r\n"


def test_body_only_after_354() -> None:
    conn = connect()
    conn.mail("a@example.org")
    conn.rcpt("b@example.test")
    conn.data()
    calls: list[Callable[[], None]] = [lambda: conn.send_body(b"x\r\n"), conn.end_body]
    for call in calls:
        with pytest.raises(LocalProtocolError):
            call()
    conn.data_to_send()
    feed(conn, b"250 ok\r\n250 ok\r\n554 5.5.1 no valid recipients\r\n")
    assert state(conn) is ClientState.FAILED  # the transaction may still be open: RSET
    with pytest.raises(LocalProtocolError):
        conn.send_body(b"x\r\n")
    with pytest.raises(LocalProtocolError):
        conn.mail("a@example.org")
    conn.rset()
    assert state(conn) is ClientState.READY


def test_refused_mail_ends_the_transaction_but_not_a_later_one() -> None:
    conn = connect()
    conn.mail("a@example.org")
    conn.rcpt("b@example.test")
    conn.rset()
    conn.mail("c@example.org")
    assert state(conn) is ClientState.MAIL
    feed(conn, b"451 try later\r\n503 need MAIL\r\n250 reset\r\n")
    assert state(conn) is ClientState.MAIL  # the old refusal does not touch the new MAIL
    feed(conn, b"550 no\r\n")
    assert state(conn) is ClientState.READY
    conn.mail("d@example.org")  # no RSET needed after a refused MAIL


def test_commands_in_the_wrong_state() -> None:
    conn = connect()
    calls: list[Callable[[], None]] = [
        lambda: conn.rcpt("b@example.test"), conn.data, conn.end_body,
        lambda: conn.bdat(b"x", last=True), lambda: conn.auth_response("")]
    for call in calls:
        with pytest.raises(LocalProtocolError) as info:
            call()
        assert info.value.reply.code == 451
    conn.mail("a@example.org")
    with pytest.raises(LocalProtocolError):
        conn.mail("a@example.org")
    with pytest.raises(LocalProtocolError):
        conn.starttls()
    assert conn.data_to_send() == b"MAIL FROM:<a@example.org>\r\n" and conn.pending == 1


# ---- arguments -----------------------------------------------------------------------------

INJECTIONS = ["a@example.org\r\nRCPT TO:<x@evil.example>", "a@example.org\n", "a\r@example.org",
              "a@exam\0ple.org"]


@pytest.mark.parametrize("bad", INJECTIONS)
@pytest.mark.parametrize("where", ["sender", "recipient", "param-value", "param-key",
                                   "auth", "auth-response"])
def test_cr_lf_nul_never_reach_the_wire(bad: str, where: str) -> None:
    conn = connect()
    if where in ("recipient", "param-value", "param-key"):
        conn.mail("a@example.org")
        conn.data_to_send()
    if where == "auth-response":
        conn.auth("PLAIN")
        feed(conn, b"334 \r\n")
        conn.data_to_send()
    before = (conn.pending, conn.state)
    with pytest.raises(LocalProtocolError):
        if where == "sender":
            conn.mail(bad)
        elif where == "recipient":
            conn.rcpt(bad)
        elif where == "param-value":
            conn.rcpt("b@example.test", {"ORCPT": f"rfc822;{bad}"})
        elif where == "param-key":
            conn.rcpt("b@example.test", {bad: None})
        elif where == "auth":
            conn.auth("PLAIN", bad)
        else:
            conn.auth_response(bad)
    assert conn.data_to_send() == b""
    assert (conn.pending, conn.state) == before


def test_hostname_is_checked() -> None:
    for bad in ("client.example\r\nMAIL FROM:<x@y>", "bad host", "", "-x.example"):
        with pytest.raises(LocalProtocolError):
            ClientConnection(local_hostname=bad)


@pytest.mark.parametrize("params", [
    {"SIZE": "12 BODY=8BITMIME"},  # a space smuggles a second parameter
    {"size": "1", "SIZE": "2"}, {"SIZE": "x"}, {"BODY": "9BIT"}, {"SMTPUTF8": "yes"},
    {"X=Y": None}, {"ENVID": ""}, {"ENVID": "a=b"}, {"MT-PRIORITY": "3"},  # not advertised
])
def test_bad_or_unoffered_parameters(params: dict[str, str | None]) -> None:
    conn = connect()
    with pytest.raises(LocalProtocolError) as info:
        conn.mail("a@example.org", params)
    assert info.value.reply.code == 501 and conn.data_to_send() == b""


def test_parameters_need_their_extension() -> None:
    conn = connect(EHLO_BARE)  # SIZE only
    conn.mail("a@example.org", {"SIZE": "10"})
    assert conn.data_to_send() == b"MAIL FROM:<a@example.org> SIZE=10\r\n"
    feed(conn, b"250 ok\r\n")
    for params in ({"NOTIFY": "NEVER"}, {"ORCPT": "rfc822;b@example.test"}):
        with pytest.raises(LocalProtocolError):
            conn.rcpt("b@example.test", params)
    conn.rset()
    feed(conn, b"250 ok\r\n")
    with pytest.raises(LocalProtocolError):
        conn.mail("a@example.org", {"BODY": "8BITMIME"})


def test_addresses_are_validated() -> None:
    conn = connect()
    for bad in ("no-at-sign", "<a@example.org>", "a@example.org>", "a@@example.org",
                "a@example.org SIZE=1", "a b@example.org"):
        with pytest.raises(LocalProtocolError) as info:
            conn.mail(bad)
        assert info.value.reply.enhanced == "5.1.7"
    conn.mail('"odd >quoted"@example.org')
    conn.rcpt("Postmaster")  # RFC 5321 section 4.5.1
    with pytest.raises(LocalProtocolError) as info:
        conn.rcpt("")
    assert info.value.reply.enhanced == "5.1.3"
    assert conn.data_to_send() == (b'MAIL FROM:<"odd >quoted"@example.org>\r\n'
                                   b"RCPT TO:<Postmaster>\r\n")


def test_non_ascii_addresses_need_smtputf8() -> None:
    bare = connect(EHLO_BARE)
    with pytest.raises(LocalProtocolError) as info:
        bare.mail("jöran@example.org", {"SMTPUTF8": None})
    assert info.value.reply.enhanced == "5.6.7"
    conn = connect()
    with pytest.raises(LocalProtocolError) as info:
        conn.mail("jöran@example.org")  # offered, but the caller did not ask for it
    assert info.value.reply.enhanced == "5.6.7"
    conn.mail("a@example.org")
    with pytest.raises(LocalProtocolError) as info:
        conn.rcpt("用户@例子.广告")
    assert info.value.reply.enhanced == "5.6.7"
    conn.rset()
    conn.mail("jöran@example.org", {"SMTPUTF8": None})
    conn.rcpt("用户@例子.广告")
    assert conn.data_to_send().decode("utf-8").endswith(
        "MAIL FROM:<jöran@example.org> SMTPUTF8\r\nRCPT TO:<用户@例子.广告>\r\n")


# ---- content -------------------------------------------------------------------------------

def test_8bit_body_needs_8bitmime() -> None:
    conn = in_data(EHLO_BARE)
    with pytest.raises(LocalProtocolError) as info:
        conn.send_body("Subject: café\r\n".encode())
    assert info.value.reply == Reply(554, "5.6.3",
                                     "8-bit content and the server does not offer 8BITMIME")
    assert conn.data_to_send() == b""
    conn = in_data()
    conn.send_body("Subject: café\r\n".encode())
    assert conn.data_to_send() == "Subject: café\r\n".encode()


@pytest.mark.parametrize("chunks", [
    [b"a\nb\r\n"], [b"a\rb\r\n"], [b"a\r", b"b\r\n"], [b"\n"], [b"a\0b\r\n"], [b"a\r\n\r"],
])
def test_bare_line_ends_are_refused_before_sending(chunks: list[bytes]) -> None:
    conn = in_data()
    sent = b""
    with pytest.raises(LocalProtocolError) as info:
        for chunk in chunks:
            conn.send_body(chunk)
            sent += conn.data_to_send()
        conn.end_body()
    assert info.value.reply.code == 554
    assert b"\r" not in sent.replace(b"\r\n", b"") and conn.data_to_send() == b""


@pytest.mark.parametrize(("chunks", "wire"), [
    ([b"a\r\n", b".b\r\n"], b"a\r\n..b\r\n.\r\n"),
    ([b"a\r", b"\n.b"], b"a\r\n..b\r\n.\r\n"),
    ([b"a\r\n.", b"\r\n"], b"a\r\n..\r\n.\r\n"),
    ([b".", b".", b"\r\n.\r\n"], b"...\r\n..\r\n.\r\n"),
    ([b"", b"x"], b"x\r\n.\r\n"),
    ([b"x\r\n", b""], b"x\r\n.\r\n"),
    ([], b".\r\n"),
    ([b"a.b\r\n"], b"a.b\r\n.\r\n"),
])
def test_dot_stuffing_across_chunks(chunks: list[bytes], wire: bytes) -> None:
    conn = in_data()
    for chunk in chunks:
        conn.send_body(chunk)
    conn.end_body()
    assert conn.data_to_send() == wire
    assert state(conn) is ClientState.READY and conn.pending == 1


clean_lines = st.lists(st.sampled_from([b"", b".", b"..", b".x", b"x.", b"a b", b"\xc3\xa9"]),
                       max_size=10).map(b"\r\n".join)


@given(body=clean_lines, data=st.data())
@settings(max_examples=200)
def test_streamed_stuffing_equals_whole_stuffing(body: bytes, data: st.DataObject) -> None:
    cuts = sorted(data.draw(st.lists(st.integers(0, len(body)), max_size=6)))
    conn = in_data()
    start = 0
    for end in [*cuts, len(body)]:
        conn.send_body(body[start:end])
        start = end
    conn.end_body()
    assert conn.data_to_send() == dot_stuff(body)


# ---- BDAT ----------------------------------------------------------------------------------

def bdat_ready(ehlo: bytes = EHLO_ALL, **mail: str | None) -> ClientConnection:
    conn = connect(ehlo)
    conn.mail("a@example.org", mail)
    conn.rcpt("b@example.test")
    conn.data_to_send()
    feed(conn, b"250 ok\r\n250 ok\r\n")
    return conn


def test_bdat_chunks_are_counted_never_stuffed() -> None:
    conn = bdat_ready()
    conn.bdat(b".a\r\n.\r\n", last=False)
    conn.bdat(b"end\r\n", last=True)
    assert conn.data_to_send() == b"BDAT 7\r\n.a\r\n.\r\nBDAT 5 LAST\r\nend\r\n"
    assert state(conn) is ClientState.READY and conn.pending == 2
    with pytest.raises(LocalProtocolError):
        conn.data()
    events = feed(conn, b"250 2.0.0 chunk\r\n250 2.0.0 queued\r\n")
    assert [ev.command for ev in events if isinstance(ev, ReplyEvent)] == [
        SentCommand("BDAT", "7"), SentCommand("BDAT", "5 LAST")]


def test_bdat_needs_chunking_and_excludes_data() -> None:
    conn = bdat_ready(EHLO_BARE.replace(b"250 SIZE 0", b"250-SIZE 0\r\n250 PIPELINING"))
    with pytest.raises(LocalProtocolError):
        conn.bdat(b"x\r\n", last=True)
    conn = bdat_ready()
    conn.bdat(b"x\r\n", last=False)
    with pytest.raises(LocalProtocolError):
        conn.data()  # RFC 3030 section 2: no DATA after BDAT
    conn = bdat_ready(BODY="BINARYMIME")
    with pytest.raises(LocalProtocolError):
        conn.data()  # BINARYMIME needs BDAT


def test_bdat_content_checks_and_binarymime() -> None:
    conn = bdat_ready(EHLO_BARE.replace(b"250 SIZE 0", b"250-CHUNKING\r\n250 PIPELINING"))
    for bad in (b"a\nb", b"caf\xc3\xa9\r\n", b"\0"):
        with pytest.raises(LocalProtocolError):
            conn.bdat(bad, last=True)
    conn.bdat(b"ab\r", last=False)  # the CR waits for what follows it
    with pytest.raises(LocalProtocolError):
        conn.bdat(b"x", last=True)  # it was a bare CR
    conn.bdat(b"\nz\r\n", last=True)
    assert conn.data_to_send() == b"BDAT 2\r\nabBDAT 5 LAST\r\n\r\nz\r\n"
    binary = bdat_ready(BODY="BINARYMIME")
    binary.bdat(b"\0\r\xff\n", last=False)
    binary.bdat(b"\r", last=True)
    assert binary.data_to_send() == b"BDAT 4\r\n\0\r\xff\nBDAT 1 LAST\r\n\r"


def test_refused_bdat_fails_the_transaction() -> None:
    conn = bdat_ready()
    conn.bdat(b"a\r\n", last=False)
    conn.bdat(b"b\r\n", last=False)
    feed(conn, b"552 5.3.4 too big\r\n")
    assert state(conn) is ClientState.FAILED
    with pytest.raises(LocalProtocolError):
        conn.bdat(b"c\r\n", last=True)  # RFC 3030: no more chunks after a refusal
    feed(conn, b"503 5.5.1 no transaction\r\n")
    conn.rset()
    assert state(conn) is ClientState.READY


# ---- STARTTLS and AUTH ---------------------------------------------------------------------

def test_starttls_discards_injected_bytes() -> None:
    conn = connect()
    conn.starttls()
    assert conn.data_to_send() == b"STARTTLS\r\n"
    injected = b"250-mx.example.test\r\n250 AUTH PLAIN\r\n"
    events = feed(conn, b"220 2.0.0 ready\r\n" + injected)
    assert replies(events) == [("STARTTLS", 220)]
    assert state(conn) is ClientState.TLS_PENDING
    assert conn.discarded_after_starttls == len(injected)
    conn.receive_data(b"250 more plaintext\r\n")
    assert conn.next_event() is NEED_DATA
    assert conn.discarded_after_starttls == len(injected) + 20
    with pytest.raises(LocalProtocolError):
        conn.ehlo()
    conn.tls_established()
    assert state(conn) is ClientState.CONNECTED and conn.extensions == {} and conn.tls_active
    with pytest.raises(LocalProtocolError):
        conn.mail("a@example.org")  # EHLO again first (RFC 3207 section 4.2)
    conn.ehlo()
    feed(conn, b"250-mx.example.test\r\n250 AUTH PLAIN\r\n")
    assert conn.extensions == {"AUTH": "PLAIN"}
    with pytest.raises(LocalProtocolError):
        conn.starttls()


def test_starttls_refused_keeps_the_session() -> None:
    conn = connect()
    conn.starttls()
    feed(conn, b"454 4.7.0 TLS not available\r\n")
    assert state(conn) is ClientState.READY
    with pytest.raises(LocalProtocolError):
        conn.tls_established()
    with pytest.raises(LocalProtocolError):
        connect(EHLO_BARE).starttls()  # not offered


def test_auth_exchange() -> None:
    conn = connect()
    with pytest.raises(LocalProtocolError):
        conn.auth("CRAM-MD5")  # not offered
    with pytest.raises(LocalProtocolError):
        conn.auth("PLAIN", "A" * 600)  # RFC 4954 section 4: too long for the command line
    conn.auth("login")
    assert conn.data_to_send() == b"AUTH LOGIN\r\n"
    events = feed(conn, b"334 VXNlcm5hbWU6\r\n")
    assert [ev.reply for ev in events if isinstance(ev, ReplyEvent)] == [
        Reply(334, None, "VXNlcm5hbWU6")]
    assert state(conn) is ClientState.AUTH
    conn.auth_response("dXNlcg==")
    feed(conn, b"334 UGFzc3dvcmQ6\r\n")
    conn.auth_response("cGFzcw==")
    events = feed(conn, b"235 2.7.0 ok\r\n")
    assert [ev.command for ev in events if isinstance(ev, ReplyEvent)] == [
        SentCommand("AUTH-RESPONSE", "")]  # the secret is not recorded
    assert state(conn) is ClientState.READY and conn.authenticated
    assert conn.data_to_send() == b"dXNlcg==\r\ncGFzcw==\r\n"


def test_auth_initial_response_and_abort() -> None:
    conn = connect()
    conn.auth("PLAIN", "")
    assert conn.data_to_send() == b"AUTH PLAIN =\r\n"
    feed(conn, b"334 \r\n")
    with pytest.raises(LocalProtocolError):
        conn.auth_response("not base64!")
    conn.auth_response("*")
    feed(conn, b"501 5.0.0 aborted\r\n")
    assert state(conn) is ClientState.READY and not conn.authenticated
    conn.auth("PLAIN", "AGFsaWNlAHNlY3JldA==")
    assert conn.data_to_send() == b"*\r\nAUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n"
    feed(conn, b"535 5.7.8 no\r\n")
    assert state(conn) is ClientState.READY and not conn.authenticated


# ---- packet boundaries ---------------------------------------------------------------------

SESSION = [
    b"220-mx.example.test ESMTP\r\n220 hello\r\n",
    EHLO_ALL,
    b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n550-5.1.1 no such\r\n550 5.1.1 user\r\n354 go\r\n",
    b"250 2.0.0 queued as X\r\n",
    b"221 2.0.0 bye\r\n",
]


def run_session(cuts: list[list[int]]) -> list[Item]:
    conn = ClientConnection(local_hostname="client.example")

    def transaction() -> None:
        conn.mail("a@example.org")
        conn.rcpt("b@example.test")
        conn.rcpt("c@example.test")
        conn.data()

    def body() -> None:
        conn.send_body(b".hi\r\n")
        conn.end_body()

    steps: list[Callable[[], None]] = [lambda: None, conn.ehlo, transaction, body, conn.quit]
    events: list[Item] = []
    for step, data, points in zip(steps, SESSION, cuts, strict=True):
        step()
        events += feed(conn, data, points)
    return events


def test_byte_by_byte_gives_the_same_events() -> None:
    whole = run_session([[] for _ in SESSION])
    assert replies(whole) == [(GREETING, 220), ("EHLO", 250), ("MAIL", 250), ("RCPT", 250),
                              ("RCPT", 550), ("DATA", 354), (END_OF_DATA, 250), ("QUIT", 221)]
    assert run_session([list(range(1, len(d))) for d in SESSION]) == whole


@given(st.data())
@settings(max_examples=100)
def test_random_splits_give_the_same_events(data: st.DataObject) -> None:
    cuts = [data.draw(st.lists(st.integers(1, len(d) - 1), max_size=8)) for d in SESSION]
    assert run_session(cuts) == run_session([[] for _ in SESSION])
