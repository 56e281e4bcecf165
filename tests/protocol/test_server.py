"""Transcript tests of the sans-IO server core: every command, every error path.

Each dialog runs against ``ServerConnection`` with the fixed reply policy of conftest.py.
RFC 5321 (commands, order, replies), RFC 1870/6152/2034/6531/3030/3461 (EHLO keywords),
RFC 2920 (pipelining), RFC 3207 (STARTTLS), RFC 4954 (AUTH). Limits are in test_limits.py,
DATA smuggling in test_smuggling.py, BDAT in test_bdat.py.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from postwright.errors import LocalProtocolError
from postwright.protocol.events import (
    PAUSED,
    Auth,
    AuthResponse,
    Command,
    Event,
    Hello,
    Mail,
    Rcpt,
)
from postwright.protocol.params import MailParams
from postwright.protocol.reply import Reply
from postwright.protocol.server import ServerConnection, State

Server = Callable[..., ServerConnection]
Converse = Callable[..., list[Event]]
Feeder = Callable[..., tuple[list[Event], bytes]]

TRANSACTION = """
    C: MAIL FROM:<alice@example.org>
    S: 250 2.1.0
    C: RCPT TO:<bob@example.test>
    S: 250 2.1.5
"""


def keywords(reply: bytes) -> list[str]:
    """The EHLO keywords of a 250 reply (every line but the first)."""
    return [line[4:].decode() for line in reply.split(b"\r\n") if line][1:]


def ehlo_reply(conn: ServerConnection, feeder: Feeder, verb: str = "EHLO") -> bytes:
    events, out = feeder(conn, f"{verb} client.example\r\n".encode())
    assert isinstance(events[-1], Hello)
    return out


# ---- greeting and EHLO (RFC 5321 sections 3.1, 4.1.1.1) ----------------------------------
def test_greeting_opens_the_session(server: Server) -> None:
    conn = server(greet=False)
    assert conn.state.value == "greeting"
    assert conn.next_event() is PAUSED  # nothing is read before the 220
    conn.send(Reply(220, None, "mx.example.test ESMTP"))
    assert conn.data_to_send() == b"220 mx.example.test ESMTP\r\n"
    assert conn.state is State.CONNECTED


def test_ehlo_advertises_the_extensions(server: Server, feeder: Feeder) -> None:
    out = ehlo_reply(server(max_message_size=12345), feeder)
    assert out.startswith(b"250-mx.example.test greets you\r\n")
    assert keywords(out) == ["PIPELINING", "SIZE 12345", "8BITMIME", "ENHANCEDSTATUSCODES",
                             "SMTPUTF8", "CHUNKING", "BINARYMIME", "DSN"]


def test_ehlo_keywords_follow_the_settings(server: Server, feeder: Feeder) -> None:
    out = ehlo_reply(server(chunking=False, smtputf8=False, dsn=False), feeder)
    words = keywords(out)
    for absent in ("CHUNKING", "BINARYMIME", "SMTPUTF8", "DSN"):
        assert absent not in words


@pytest.mark.parametrize(("available", "active", "offered"), [
    (False, False, False), (True, False, True), (True, True, False), (False, True, False)])
def test_starttls_offered_only_when_possible(server: Server, feeder: Feeder, available: bool,
                                            active: bool, offered: bool) -> None:
    # RFC 3207 section 4.2: never offered once TLS is active.
    out = ehlo_reply(server(tls_available=available, tls_active=active), feeder)
    assert ("STARTTLS" in keywords(out)) is offered


@pytest.mark.parametrize(("mechs", "active", "without_tls", "offered"), [
    ((), True, True, False),
    (("PLAIN", "LOGIN"), False, False, False),
    (("PLAIN", "LOGIN"), True, False, True),
    (("PLAIN", "LOGIN"), False, True, True),
])
def test_auth_offered_only_with_mechanisms_and_tls(server: Server, feeder: Feeder,
                                                   mechs: tuple[str, ...], active: bool,
                                                   without_tls: bool, offered: bool) -> None:
    # RFC 4954 section 3; plaintext mechanisms only under TLS unless configured otherwise.
    conn = server(auth_mechanisms=mechs, tls_active=active, auth_without_tls=without_tls)
    words = keywords(ehlo_reply(conn, feeder))
    assert [w for w in words if w.startswith("AUTH")] == (["AUTH PLAIN LOGIN"] if offered
                                                          else [])


def test_helo_gives_no_keywords_and_esmtp_params_get_555(server: Server, feeder: Feeder,
                                                         converse: Converse) -> None:
    # RFC 5321 section 4.1.1.1: HELO is plain SMTP; RFC 1870/6152 parameters are unknown.
    conn = server()
    out = ehlo_reply(conn, feeder, "HELO")
    assert out == b"250 mx.example.test greets you\r\n"
    assert not conn.esmtp and conn.helo == "client.example"
    converse(conn, """
        C: MAIL FROM:<a@example.org> SIZE=100
        S: 555 5.5.4
        C: MAIL FROM:<a@example.org> BODY=8BITMIME
        S: 555
        C: MAIL FROM:<a@example.org>
        S: 250 2.1.0
        C: RCPT TO:<b@example.test> NOTIFY=NEVER
        S: 555
        C: AUTH PLAIN
        S: 503
    """)


def test_hello_syntax(server: Server, converse: Converse) -> None:
    converse(server(), """
        C: EHLO
        S: 501 5.5.4
        C: HELO
        S: 501
        C: EHLO two words
        S: 501
        C: EHLO bad\\tdomain
        S: 501
        C: ehlo client.example
        S: 250-mx.example.test
    """)


def test_hello_again_resets_the_transaction(server: Server, converse: Converse) -> None:
    # RFC 5321 section 4.1.4: EHLO in a transaction clears it, like RSET.
    conn = server()
    converse(conn, "C: EHLO client.example\nS: 250" + TRANSACTION + """
        C: EHLO other.example
        S: 250-mx.example.test
        C: RCPT TO:<carol@example.test>
        S: 503 5.5.1
        C: DATA
        S: 503
    """)
    assert conn.state is State.READY and conn.helo == "other.example"
    assert conn.mail_params is None


def test_refused_hello_changes_nothing(server: Server, converse: Converse) -> None:
    conn = server()
    converse(conn, """
        C: EHLO client.example
        S: 550 5.7.1
        C: MAIL FROM:<a@example.org>
        S: 503 5.5.1
    """, {"EHLO": Reply(550, "5.7.1", "Go away")})
    assert conn.state is State.CONNECTED


# ---- the transaction: MAIL, RCPT, DATA, RSET (RFC 5321 sections 3.3, 4.1.1) --------------
def test_whole_transaction(ehlo: Server, converse: Converse) -> None:
    conn = ehlo()
    events = converse(conn, TRANSACTION + """
        C: DATA
        S: 354
        C~ Subject: hi\\r\\n\\r\\nbody\\r\\n.\\r\\n
        S: 250 2.0.0
    """)
    mail = next(ev for ev in events if isinstance(ev, Mail))
    rcpt = next(ev for ev in events if isinstance(ev, Rcpt))
    assert str(mail.path) == "<alice@example.org>"
    assert str(rcpt.path) == "<bob@example.test>"
    assert conn.state is State.READY and conn.mail_params is None


def test_mail_keeps_its_parameters(ehlo: Server, converse: Converse) -> None:
    conn = ehlo()
    events = converse(conn, """
        C: MAIL FROM:<> SIZE=1000 BODY=8BITMIME RET=HDRS ENVID=x+2By
        S: 250 2.1.0
    """)
    mail = events[0]
    assert isinstance(mail, Mail) and str(mail.path) == "<>"
    assert conn.mail_params == MailParams(size=1000, body="8BITMIME", ret="HDRS", envid="x+y")


@pytest.mark.parametrize(("line", "prefix"), [
    ("MAIL TO:<a@example.org>", "501 5.5.4"),  # RFC 5321 section 4.1.1.2 syntax
    ("MAIL", "501 5.5.4"),
    ("MAIL FROM:a@example.org", "501 5.1.7"),  # angle brackets are required
    ("MAIL FROM:<a@@example.org>", "501 5.1.7"),
    ("MAIL FROM:<a@example.org> FOO=BAR", "555 5.5.4"),  # unknown parameter
    ("MAIL FROM:<a@example.org> SIZE=big", "501 5.5.4"),  # RFC 1870 size-value
    ("MAIL FROM:<a@example.org> BODY=9BIT", "501"),
])
def test_mail_errors(ehlo: Server, converse: Converse, line: str, prefix: str) -> None:
    conn = ehlo()
    converse(conn, f"C: {line}\nS: {prefix}")
    assert conn.state is State.READY


@pytest.mark.parametrize(("line", "prefix"), [
    ("RCPT FROM:<b@example.test>", "501 5.5.4"),
    ("RCPT TO:<>", "501 5.1.3"),  # no null forward-path
    ("RCPT TO:<b@>", "501 5.1.3"),
    ("RCPT TO:<b@example.test> FOO", "555 5.5.4"),
    ("RCPT TO:<b@example.test> NOTIFY=SOMETIMES", "501 5.5.4"),  # RFC 3461 section 4.1
])
def test_rcpt_errors(ehlo: Server, converse: Converse, line: str, prefix: str) -> None:
    conn = ehlo()
    converse(conn, f"C: MAIL FROM:<a@example.org>\nS: 250\nC: {line}\nS: {prefix}")
    assert conn.state is State.MAIL


def test_rcpt_postmaster_and_dsn_params(ehlo: Server, converse: Converse) -> None:
    # RFC 5321 section 4.5.1: <postmaster> without a domain; RFC 3461 NOTIFY and ORCPT.
    events = converse(ehlo(), """
        C: MAIL FROM:<a@example.org>
        S: 250
        C: RCPT TO:<Postmaster>
        S: 250 2.1.5
        C: RCPT TO:<b@example.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b+40example.test
        S: 250 2.1.5
    """)
    assert isinstance(events[-1], Rcpt)


def test_rcpt_answered_251_is_accepted(ehlo: Server, converse: Converse) -> None:
    # RFC 5321 section 4.3.2: 251 (user not local, will forward) accepts the recipient.
    conn = ehlo()
    converse(conn, """
        C: MAIL FROM:<a@example.org>
        S: 250
        C: RCPT TO:<b@example.test>
        S: 251 2.1.5
        C: DATA
        S: 354
    """, {"RCPT": Reply(251, "2.1.5", "User not local; will forward")})
    assert conn.state is State.DATA


@pytest.mark.parametrize(("dialog", "prefix"), [
    ("C: MAIL FROM:<a@example.org>", "503 5.5.1"),  # before EHLO
    ("C: EHLO c.example\nS: 250\nC: RCPT TO:<b@example.test>", "503 5.5.1"),
    ("C: EHLO c.example\nS: 250\nC: DATA", "503 5.5.1"),
    ("C: EHLO c.example\nS: 250\nC: MAIL FROM:<a@example.org>\nS: 250\n"
     "C: MAIL FROM:<a@example.org>", "503 5.5.1"),  # nested MAIL
    ("C: RCPT TO:<b@example.test>", "503"),
    ("C: DATA", "503"),
])
def test_commands_out_of_order_get_503(server: Server, converse: Converse, dialog: str,
                                       prefix: str) -> None:
    # RFC 5321 sections 3.3 and 4.1.4: the order MAIL, RCPT..., DATA.
    converse(server(), f"{dialog}\nS: {prefix}")


def test_data_without_accepted_recipients_gets_554(ehlo: Server, converse: Converse) -> None:
    # RFC 5321 section 3.3: no valid recipients -> 554 (or 503).
    conn = ehlo()
    converse(conn, """
        C: MAIL FROM:<a@example.org>
        S: 250
        C: RCPT TO:<nobody@example.test>
        S: 550 5.1.1
        C: DATA
        S: 554
    """, {"RCPT": Reply(550, "5.1.1", "Mailbox unavailable")})
    assert conn.state is State.MAIL


def test_data_takes_no_argument(ehlo: Server, converse: Converse) -> None:
    converse(ehlo(), TRANSACTION + "C: DATA now\nS: 501 5.5.4\nC: DATA\nS: 354")


def test_rset_resets_the_transaction(ehlo: Server, converse: Converse) -> None:
    conn = ehlo()
    converse(conn, TRANSACTION + """
        C: RSET
        S: 250
        C: RCPT TO:<b@example.test>
        S: 503
        C: MAIL FROM:<a@example.org>
        S: 250
        C: RSET now
        S: 501 5.5.4
    """)
    assert conn.state is State.MAIL  # the refused RSET changed nothing


def test_rset_before_hello_keeps_hello_required(server: Server, converse: Converse) -> None:
    conn = server()
    converse(conn, "C: RSET\nS: 250\nC: MAIL FROM:<a@example.org>\nS: 503")
    assert conn.state is State.CONNECTED


# ---- the other commands (RFC 5321 sections 4.1.1.5 - 4.1.1.10) ----------------------------
def test_noop_help_vrfy_expn_quit(ehlo: Server, converse: Converse) -> None:
    conn = ehlo()
    events = converse(conn, TRANSACTION + """
        C: NOOP
        S: 250
        C: NOOP with a string
        S: 250
        C: HELP
        S: 214
        C: HELP MAIL
        S: 214
        C: VRFY bob
        S: 252 2.5.0
        C: EXPN staff
        S: 502
        C: VRFY
        S: 501 5.5.4
        C: EXPN
        S: 501 5.5.4
        C: DATA
        S: 354
    """)
    # none of them disturbed the transaction
    verbs = [ev.verb for ev in events if isinstance(ev, Command)]
    assert verbs == ["MAIL", "RCPT", "NOOP", "NOOP", "HELP", "HELP", "VRFY", "EXPN", "DATA"]
    assert [ev.arg for ev in events if isinstance(ev, Command) and ev.verb == "VRFY"] == ["bob"]


def test_quit_closes(server: Server, converse: Converse) -> None:
    conn = server()
    converse(conn, "C: QUIT now\nS: 501\nC: QUIT\nS: 221 2.0.0")
    assert conn.state is State.CLOSED and conn.must_close
    conn.receive_data(b"NOOP\r\n")
    assert conn.next_event() is PAUSED and conn.data_to_send() == b""
    with pytest.raises(LocalProtocolError):
        conn.send(Reply(250, None, "late"))


def test_eof_ends_the_session(ehlo: Server, converse: Converse) -> None:
    events = converse(ehlo(), "C~ MAIL FROM:<a@exa\n-- eof")
    assert [type(ev).__name__ for ev in events] == ["ConnectionClosed"]


@pytest.mark.parametrize("line", ["FOO", "", "MAILFROM:<a@example.org>", "EHLOx",
                                  "ma\u0131l FROM:<a@example.org>", "r\u017fet"])
def test_unknown_verbs_get_500(ehlo: Server, converse: Converse, line: str) -> None:
    # RFC 5321 section 4.2.4; non-ASCII look-alikes of verbs are not verbs.
    conn = ehlo()
    converse(conn, f"C: {line}\nS: 500 5.5.1\nC: NOOP\nS: 250")
    assert conn.state is State.READY


# ---- SMTPUTF8 (RFC 6531 section 3.4) -----------------------------------------------------
def test_utf8_address_needs_smtputf8(ehlo: Server, converse: Converse) -> None:
    conn = ehlo()
    converse(conn, """
        C: MAIL FROM:<j\u00f6rg@b\u00fccher.example>
        S: 553 5.6.7
        C: MAIL FROM:<j\u00f6rg@b\u00fccher.example> SMTPUTF8
        S: 250 2.1.0
        C: RCPT TO:<\u7528\u6237@\u4f8b\u5b50.example>
        S: 250 2.1.5
    """)
    assert conn.mail_params is not None and conn.mail_params.smtputf8


def test_utf8_recipient_without_smtputf8_transaction(ehlo: Server, converse: Converse) -> None:
    converse(ehlo(), """
        C: MAIL FROM:<a@example.org>
        S: 250
        C: RCPT TO:<j\u00f6rg@example.test>
        S: 553 5.6.7
    """)


def test_smtputf8_param_when_not_offered(ehlo: Server, converse: Converse) -> None:
    converse(ehlo(smtputf8=False), "C: MAIL FROM:<a@example.org> SMTPUTF8\nS: 555")


# ---- STARTTLS (RFC 3207) -----------------------------------------------------------------
def test_starttls_then_hello_again(ehlo: Server, converse: Converse, feeder: Feeder) -> None:
    conn = ehlo(tls_available=True)
    converse(conn, """
        C: STARTTLS
        S: 220 2.0.0
    """)
    assert conn.state is State.TLS_PENDING
    # RFC 3207 section 4.2 / CVE-2011-0411: plaintext before the handshake is dropped
    converse(conn, "C: MAIL FROM:<a@example.org>\nC: RCPT TO:<b@example.test>")
    assert conn.discarded_after_starttls == len(
        b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.test>\r\n")
    assert conn.next_event() is PAUSED
    converse(conn, """
        -- tls
        C: MAIL FROM:<a@example.org>
        S: 503 5.5.1
        C: STARTTLS
        S: 503
    """)
    assert conn.tls_active and conn.helo == "" and not conn.esmtp
    out = ehlo_reply(conn, feeder)
    assert b"STARTTLS" not in out
    converse(conn, "C: STARTTLS\nS: 503 5.5.1\nC: MAIL FROM:<a@example.org>\nS: 250")


def test_starttls_refusals(server: Server, ehlo: Server, converse: Converse) -> None:
    converse(ehlo(), "C: STARTTLS\nS: 454 4.7.0")  # not configured
    converse(ehlo(tls_available=True), "C: STARTTLS now\nS: 501 5.5.4")
    converse(server(tls_available=True), "C: STARTTLS\nS: 503 5.5.1")  # before EHLO
    converse(ehlo(tls_available=True), TRANSACTION + "C: STARTTLS\nS: 503")
    conn = ehlo(tls_available=True)
    converse(conn, "C: STARTTLS\nS: 454 4.7.0",
             {"STARTTLS": Reply(454, "4.7.0", "TLS not available due to temporary reason")})
    assert conn.state is State.READY and not conn.tls_active


# ---- AUTH (RFC 4954) ---------------------------------------------------------------------
AUTH_TLS = {"auth_mechanisms": ("PLAIN", "LOGIN"), "tls_active": True}


def test_auth_exchange(ehlo: Server, converse: Converse) -> None:
    conn = ehlo(**AUTH_TLS)
    events = converse(conn, """
        C: AUTH LOGIN
        S: 334
        C: c29tZW9uZQ==
        S: 535 5.7.8
        C: AUTH login
        S: 334
        C: *
        S: 501
        C: AUTH PLAIN
        S: 334
        C: good
        S: 235 2.7.0
        C: AUTH PLAIN
        S: 503 5.5.1
        C: MAIL FROM:<a@example.org>
        S: 250
    """)
    assert conn.authenticated
    auths = [ev for ev in events if isinstance(ev, Auth)]
    assert [a.mechanism for a in auths] == ["LOGIN", "LOGIN", "PLAIN"]
    responses = [ev.data for ev in events if isinstance(ev, AuthResponse)]
    assert responses == ["c29tZW9uZQ==", "*", "good"]


def test_auth_with_initial_response(ehlo: Server, converse: Converse) -> None:
    conn = ehlo(**AUTH_TLS)
    events = converse(conn, "C: AUTH PLAIN good\nS: 235")
    assert isinstance(events[0], Auth) and events[0].initial == "good"
    assert conn.authenticated and conn.state is State.READY


def test_auth_refusals(server: Server, ehlo: Server, converse: Converse,
                       feeder: Feeder) -> None:
    mechs = {"auth_mechanisms": ("PLAIN",)}
    converse(ehlo(**mechs), "C: AUTH PLAIN\nS: 538 5.7.11")  # RFC 4954 section 6
    converse(ehlo(**AUTH_TLS), "C: AUTH CRAM-MD5\nS: 504 5.5.4")
    converse(ehlo(**AUTH_TLS), "C: AUTH\nS: 501 5.5.4\nC: AUTH PLAIN a b\nS: 501")
    converse(ehlo(tls_active=True), "C: AUTH PLAIN\nS: 503")  # no mechanisms
    converse(server(**AUTH_TLS), "C: AUTH PLAIN\nS: 503")  # before EHLO
    conn = server(**AUTH_TLS)
    ehlo_reply(conn, feeder, "HELO")
    converse(conn, "C: AUTH PLAIN\nS: 503")  # AUTH is an ESMTP extension
    converse(ehlo(**AUTH_TLS), TRANSACTION + "C: AUTH PLAIN\nS: 503 5.5.1")  # in a transaction


def test_auth_not_offered_again_after_success(ehlo: Server, converse: Converse,
                                              feeder: Feeder) -> None:
    conn = ehlo(**AUTH_TLS)
    converse(conn, "C: AUTH PLAIN good\nS: 235")
    assert not any(w.startswith("AUTH") for w in keywords(ehlo_reply(conn, feeder)))
    assert conn.authenticated


def test_bad_line_inside_auth_ends_the_exchange(ehlo: Server, converse: Converse) -> None:
    # The client reads the 500 as the end of AUTH; its next line must be a command again.
    conn = ehlo(**AUTH_TLS)
    events = converse(conn, """
        C: AUTH PLAIN
        S: 334
        C~ abc\\ndef\\r\\n
        S: 500 5.5.2
        S: 500
        C: MAIL FROM:<a@example.org>
        S: 250
    """)
    assert not conn.authenticated
    assert not any(isinstance(ev, AuthResponse) for ev in events)


# ---- pipelining (RFC 2920) ---------------------------------------------------------------
def test_pipelined_group_gets_replies_in_order(ehlo: Server, converse: Converse) -> None:
    def rcpt(ev: Event) -> Reply:
        assert isinstance(ev, Rcpt)
        if "nobody" in str(ev.path):
            return Reply(550, "5.1.1", "Mailbox unavailable")
        return Reply(250, "2.1.5", "Recipient ok")

    events = converse(ehlo(), """
        C: MAIL FROM:<a@example.org>
        C: RCPT TO:<nobody@example.test>
        C: RCPT TO:<bob@example.test>
        C: DATA
        S: 250 2.1.0
        S: 550 5.1.1
        S: 250 2.1.5
        S: 354
        C~ text\\r\\n.\\r\\nRSET\\r\\nNOOP\\r\\n
        S: 250 2.0.0
        S: 250
        S: 250
    """, {"RCPT": rcpt})
    verbs = [ev.verb for ev in events if isinstance(ev, Command)]
    assert verbs == ["MAIL", "RCPT", "RCPT", "DATA", "RSET", "NOOP"]


def test_commands_that_may_be_pipelined(ehlo: Server, converse: Converse) -> None:
    converse(ehlo(), """
        C: RSET
        C: MAIL FROM:<a@example.org>
        C: RCPT TO:<b@example.test>
        C: HELP
        C: RSET
        S: 250
        S: 250 2.1.0
        S: 250 2.1.5
        S: 214
        S: 250
    """)


def test_driver_mistakes_are_local_protocol_errors(ehlo: Server) -> None:
    conn = ehlo(tls_available=True)
    with pytest.raises(LocalProtocolError):
        conn.send(Reply(250, None, "nobody asked"))  # a reply with no event owed
    with pytest.raises(LocalProtocolError):
        conn.hello_reply()  # no HELO/EHLO being answered
    with pytest.raises(LocalProtocolError):
        conn.tls_established()  # no STARTTLS accepted


def test_unsolicited_421_closes(ehlo: Server) -> None:
    # RFC 5321 section 3.8: the server may close with 421 at any time (e.g. a timeout).
    conn = ehlo()
    conn.send(Reply(421, "4.4.2", "Timeout"))
    assert conn.must_close and conn.state is State.CLOSED
    assert conn.data_to_send() == b"421 4.4.2 Timeout\r\n"
