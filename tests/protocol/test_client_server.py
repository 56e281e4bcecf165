"""Our client core talking to our server core, bytes passed between them in memory.

The server core is answered by a trivial accept-all policy (and our ``SaslServer`` for AUTH).
Whole sessions run here: EHLO, STARTTLS (the handshake simulated by both drivers), AUTH
SCRAM-SHA-256, pipelined DATA and BDAT transactions, RSET, QUIT. Messages whose lines start
with dots, or which contain the end-of-data sequence, must arrive intact whatever the chunking.
RFC 5321, RFC 2920, RFC 3030, RFC 3207, RFC 4954.
"""

from __future__ import annotations

import hmac

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from postwright.protocol.client import (
    END_OF_DATA,
    GREETING,
    ClientConnection,
    ClientState,
    ReplyEvent,
)
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
    Mail,
    MessageData,
    Rcpt,
)
from postwright.protocol.reply import Reply
from postwright.protocol.sasl import SaslServer, ScramCredentials, scram_credentials
from postwright.protocol.sasl_client import ScramSha256Client
from postwright.protocol.server import ServerConnection, ServerSettings, State

PASSWORD = "correct horse"
KEYS = scram_credentials(PASSWORD)


class Accounts:
    def verify(self, address: str, password: str) -> bool:
        return address == "alice@example.test" and hmac.compare_digest(password, PASSWORD)

    def scram(self, address: str) -> ScramCredentials | None:
        return KEYS if address == "alice@example.test" else None


class AcceptAll:
    """A server driver with the simplest policy: every sender, recipient and message is ok."""

    def __init__(self, refuse: frozenset[str] | set[str] = frozenset(),
                 **settings: object) -> None:
        self.refuse = refuse
        self.conn = ServerConnection(ServerSettings("mx.example.test", **settings))  # type: ignore[arg-type]
        self.conn.send(Reply(220, None, "mx.example.test ESMTP"))
        self.messages: list[tuple[str, list[str], bytes]] = []
        self._sender = ""
        self._rcpts: list[str] = []
        self._body = b""
        self._sasl: SaslServer | None = None

    def receive(self, data: bytes) -> None:
        self.conn.receive_data(data)
        while True:
            ev = self.conn.next_event()
            if ev is NEED_DATA or ev is PAUSED:
                return
            assert isinstance(ev, Event)
            if isinstance(ev, ConnectionClosed):
                return
            if isinstance(ev, MessageData):
                self._body += ev.data
                continue
            self.conn.send(self.answer(ev))

    def answer(self, ev: Event) -> Reply:
        if isinstance(ev, Hello):
            return self.conn.hello_reply()
        if isinstance(ev, Mail):
            self._sender, self._rcpts, self._body = str(ev.path), [], b""
            return Reply(250, "2.1.0", "Sender ok")
        if isinstance(ev, Rcpt):
            if str(ev.path).strip("<>") in self.refuse:
                return Reply(550, "5.1.1", "Mailbox unavailable")
            self._rcpts.append(str(ev.path))
            return Reply(250, "2.1.5", "Recipient ok")
        if isinstance(ev, EndOfChunk):
            return Reply(250, "2.0.0", f"{ev.size} octets received")
        if isinstance(ev, EndOfMessage):
            if ev.error is not None:
                return ev.error
            self.messages.append((self._sender, self._rcpts, self._body))
            return Reply(250, "2.0.0", "Ok: queued")
        if isinstance(ev, Auth):
            self._sasl = SaslServer(Accounts())
            return self._sasl.start(ev.mechanism, ev.initial)
        if isinstance(ev, AuthResponse):
            assert self._sasl is not None
            return self._sasl.step(ev.data)
        if isinstance(ev, BadCommand):
            return ev.reply
        assert isinstance(ev, Command)
        return {"DATA": Reply(354, None, "End data with <CR><LF>.<CR><LF>"),
                "QUIT": Reply(221, "2.0.0", "Bye"),
                "STARTTLS": Reply(220, "2.0.0", "Ready to start TLS")}.get(
                    ev.verb, Reply(250, "2.0.0", "Ok"))


def pump(client: ClientConnection, server: AcceptAll, *, bytewise: bool = False,
         ) -> list[ReplyEvent]:
    """Move bytes both ways until both sides are quiet; return the client's events."""
    events: list[ReplyEvent] = []
    while True:
        out = client.data_to_send()
        for piece in ([out[i:i + 1] for i in range(len(out))] if bytewise else [out]):
            server.receive(piece)
        back = server.conn.data_to_send()
        for piece in ([back[i:i + 1] for i in range(len(back))] if bytewise else [back]):
            client.receive_data(piece)
            while True:
                ev = client.next_event()
                if ev is NEED_DATA or isinstance(ev, ConnectionClosed):
                    break
                assert isinstance(ev, ReplyEvent)
                events.append(ev)
        if not out and not back:
            return events


def client_state(client: ClientConnection) -> ClientState:
    return client.state  # read through a call: mypy would narrow the attribute


def codes(events: list[ReplyEvent]) -> list[tuple[str, int]]:
    return [(ev.command.verb, ev.reply.code) for ev in events]


def greeted(server: AcceptAll, *, bytewise: bool = False) -> ClientConnection:
    client = ClientConnection(local_hostname="client.example")
    assert codes(pump(client, server, bytewise=bytewise)) == [(GREETING, 220)]
    client.ehlo()
    assert codes(pump(client, server, bytewise=bytewise)) == [("EHLO", 250)]
    return client


DOTTY = (b"From: a@example.org\r\nSubject: dots\r\n\r\n.\r\n..\r\n.leading dot\r\n"
         b"middle\r\n.\r\nQUIT\r\n\r\n.\r\nlast line without CRLF.")


@pytest.mark.parametrize("bytewise", [False, True])
def test_full_session(bytewise: bool) -> None:
    server = AcceptAll(tls_available=True, auth_mechanisms=("PLAIN", "SCRAM-SHA-256"))
    client = greeted(server, bytewise=bytewise)
    assert client.supports("STARTTLS") and not client.supports("AUTH")
    client.starttls()
    assert codes(pump(client, server, bytewise=bytewise)) == [("STARTTLS", 220)]
    assert client.state is ClientState.TLS_PENDING and server.conn.state is State.TLS_PENDING
    client.tls_established()  # the drivers would run the handshake here
    server.conn.tls_established()
    client.ehlo()
    pump(client, server, bytewise=bytewise)
    assert client.supports("AUTH") and not client.supports("STARTTLS")

    sasl = ScramSha256Client("alice@example.test", PASSWORD)
    client.auth(sasl.mechanism, sasl.initial())
    while True:
        [ev] = pump(client, server, bytewise=bytewise)
        if ev.reply.code != 334:
            break
        client.auth_response(sasl.respond(ev.reply.text))
    assert ev.reply.code == 235 and client.authenticated and server.conn.authenticated
    sasl.check_success()

    client.mail("a@example.org", {"BODY": "8BITMIME", "SIZE": str(len(DOTTY))})
    client.rcpt("b@example.test")
    client.rcpt("c@example.test", {"NOTIFY": "FAILURE"})
    client.data()
    assert codes(pump(client, server, bytewise=bytewise)) == [
        ("MAIL", 250), ("RCPT", 250), ("RCPT", 250), ("DATA", 354)]
    for i in range(0, len(DOTTY), 7):  # awkward chunks: dots land at every position
        client.send_body(DOTTY[i:i + 7])
    client.end_body()
    client.mail("")  # pipelined after the end of data
    client.rcpt("d@example.test")
    assert codes(pump(client, server, bytewise=bytewise)) == [
        (END_OF_DATA, 250), ("MAIL", 250), ("RCPT", 250)]
    client.bdat(b".not stuffed\r\n", last=False)
    client.bdat("café\r\n".encode(), last=True)
    client.quit()
    assert codes(pump(client, server, bytewise=bytewise)) == [
        ("BDAT", 250), ("BDAT", 250), ("QUIT", 221)]
    assert client_state(client) is ClientState.CLOSED and server.conn.must_close

    assert server.messages == [
        ("<a@example.org>", ["<b@example.test>", "<c@example.test>"], DOTTY + b"\r\n"),
        ("<>", ["<d@example.test>"], ".not stuffed\r\ncafé\r\n".encode()),
    ]


def test_refusals_keep_both_sides_in_step() -> None:
    server = AcceptAll(chunking=False, max_recipients=1)
    client = greeted(server)
    assert not client.supports("CHUNKING")
    client.mail("a@example.org")
    client.rcpt("b@example.test")
    client.rcpt("c@example.test")  # over the limit: 452
    client.data()
    assert codes(pump(client, server)) == [("MAIL", 250), ("RCPT", 250), ("RCPT", 452),
                                           ("DATA", 354)]
    client.send_body(b"hello\r\n")
    client.end_body()
    assert codes(pump(client, server)) == [(END_OF_DATA, 250)]
    assert server.messages == [("<a@example.org>", ["<b@example.test>"], b"hello\r\n")]


def test_refused_data_then_rset() -> None:
    server = AcceptAll(refuse={"nobody@example.test"})
    client = greeted(server)
    client.mail("a@example.org")
    client.rcpt("nobody@example.test")
    client.data()
    assert codes(pump(client, server)) == [("MAIL", 250), ("RCPT", 550), ("DATA", 554)]
    # RFC 5321 leaves the transaction open after a refused DATA: the client must RSET.
    assert client.state is ClientState.FAILED and server.conn.state is State.MAIL
    client.rset()
    client.mail("a@example.org")
    client.rcpt("b@example.test")
    client.data()
    assert codes(pump(client, server)) == [("RSET", 250), ("MAIL", 250), ("RCPT", 250),
                                           ("DATA", 354)]


def test_refused_bdat_chunk_then_rset() -> None:
    server = AcceptAll(max_message_size=10)
    client = greeted(server)
    client.mail("a@example.org")
    client.rcpt("b@example.test")
    client.bdat(b"0123456789abc\r\n", last=False)  # over the limit
    client.bdat(b"more\r\n", last=False)  # already in the pipeline
    assert codes(pump(client, server)) == [("MAIL", 250), ("RCPT", 250), ("BDAT", 552),
                                           ("BDAT", 503)]
    assert client.state is ClientState.FAILED and server.conn.state is State.READY
    client.rset()
    client.mail("a@example.org")
    client.rcpt("b@example.test")
    client.bdat(b"short\r\n", last=True)
    assert codes(pump(client, server))[-1] == ("BDAT", 250)
    assert server.messages == [("<a@example.org>", ["<b@example.test>"], b"short\r\n")]


def test_smuggled_end_of_data_stays_content() -> None:
    server = AcceptAll()
    client = greeted(server)
    body = b"Subject: x\r\n\r\nbefore\r\n.\r\nMAIL FROM:<evil@example.org>\r\n"
    client.mail("a@example.org")
    client.rcpt("b@example.test")
    client.data()
    pump(client, server)
    client.send_body(body)
    client.end_body()
    assert codes(pump(client, server)) == [(END_OF_DATA, 250)]
    assert server.messages == [("<a@example.org>", ["<b@example.test>"], body)]


@given(lines=st.lists(st.sampled_from([b"", b".", b"..", b".x", b"x", b"\xc3\xa9", b". .",
                                       b"QUIT", b"MAIL FROM:<e@vil>"]), max_size=12),
       sizes=st.lists(st.integers(1, 9), min_size=1, max_size=5), use_bdat=st.booleans())
@settings(max_examples=60, deadline=None)
def test_any_clean_message_arrives_intact(lines: list[bytes], sizes: list[int],
                                          use_bdat: bool) -> None:
    body = b"\r\n".join(lines)
    server = AcceptAll()
    client = greeted(server)
    client.mail("a@example.org", {"BODY": "8BITMIME"})
    client.rcpt("b@example.test")
    pieces: list[bytes] = []
    i = 0
    while i < len(body):
        size = sizes[len(pieces) % len(sizes)]
        pieces.append(body[i:i + size])
        i += size
    if use_bdat:
        for piece in pieces:
            client.bdat(piece, last=False)
        client.bdat(b"", last=True)
    else:
        client.data()
        assert codes(pump(client, server))[-1] == ("DATA", 354)
        for piece in pieces:
            client.send_body(piece)
        client.end_body()
    events = pump(client, server)
    assert events[-1].reply.code == 250
    expected = body if use_bdat or not body or body.endswith(b"\r\n") else body + b"\r\n"
    assert server.messages == [("<a@example.org>", ["<b@example.test>"], expected)]
