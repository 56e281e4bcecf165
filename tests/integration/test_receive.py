"""End to end over TCP: what the smtp listener accepts, refuses and writes into Maildir.

A real ``postwright serve`` process, spoken to with smtplib and with raw bytes on a socket.
Checks the user-facing points of CONTRACT.md ("What a user can rely on"): the delivered file
(Return-Path, Delivered-To, Received, LF line ends), mailbox naming (lower case, plus
addresses, A-label domain folders), aliases, unknown users (550 5.1.1) and relay refusals
(always 5xx). Also SIZE (RFC 1870), bare LF and SMTP smuggling (RFC 5321 section 4.1.1.4),
BDAT (RFC 3030), PIPELINING (RFC 2920), 8BITMIME (RFC 6152) and SMTPUTF8 (RFC 6531).
Not here: peers other than smtplib (test_peers.py), crashes, memory, the CLI, shutdown.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conftest import Server

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("no_server_errors")]

ALICE = "alice@example.test"
BOB = "bob@example.test"
SENDER = "sender@example.org"


def message(token: str, subject: str = "hello", body: bytes = b"") -> bytes:
    return (f"From: <{SENDER}>\r\nTo: <{ALICE}>\r\nSubject: {subject}\r\n"
            f"Message-ID: <{token}@example.org>\r\n\r\n").encode() + (
        body or f"body of {token}\r\n.one dot\r\n..two dots\r\nlast line\r\n".encode())


def dot_stuff(data: bytes) -> bytes:
    """What a client does to a message before DATA (RFC 5321 section 4.5.2)."""
    stuffed = data.replace(b"\r\n.", b"\r\n..")
    return b"." + stuffed if stuffed.startswith(b".") else stuffed


def split_delivered(data: bytes) -> tuple[bytes, bytes, bytes, bytes]:
    """Return-Path line, Delivered-To line, the Received field unfolded, and the rest."""
    lines = data.split(b"\n")
    end = 3
    while end < len(lines) and lines[end].startswith((b"\t", b" ")):
        end += 1
    received = b" ".join(line.strip() for line in lines[2:end])
    return lines[0], lines[1], received, b"\n".join(lines[end:])


def delivered_one(server: Server, address: str, qid: str) -> bytes:
    """Wait for the delivery of ``qid`` to ``address``; the mailbox must hold one file."""
    server.wait_event("delivered", where=lambda e: e.get("id") == qid)
    files = server.messages(address)
    assert len(files) == 1, files
    return files[0].read_bytes()


def barrier(server: Server, address: str = BOB) -> None:
    """Send one good message and wait for it: what came before it has been dealt with."""
    qid = server.send(SENDER, [address], message("barrier", "barrier"))
    server.wait_event("delivered", where=lambda e: e.get("id") == qid)


def test_delivered_file_has_trace_lines_then_the_message_with_lf(server: Server) -> None:
    sent = message("t1")
    started = time.monotonic()
    qid = server.send(SENDER, [ALICE], sent)
    data = delivered_one(server, ALICE, qid)
    assert time.monotonic() - started < 3  # first attempt at once, not at the next scan
    return_path, delivered_to, received, rest = split_delivered(data)
    assert return_path == f"Return-Path: <{SENDER}>".encode()
    assert delivered_to == f"Delivered-To: {ALICE}".encode()
    assert received.startswith(b"Received: from client.example.org ([127.0.0.1])")
    assert b"by mx.example.test (postwright) with ESMTP id " + qid.encode() in received
    assert f"for <{ALICE}>;".encode() in received
    assert rest == sent.replace(b"\r\n", b"\n")  # dot-stuffing undone, nothing else changed
    assert b"\r" not in data
    path = server.messages(ALICE)[0]
    assert path.parent.parent == server.data / "mail" / "example.test" / "alice"
    assert server.messages(BOB) == []


def test_plus_address_reaches_the_base_mailbox(server: Server) -> None:
    qid = server.send(SENDER, ["bob+tag@example.test"], message("plus"))
    data = delivered_one(server, BOB, qid)
    assert b"Message-ID: <plus@example.org>" in data
    assert not (server.data / "mail" / "example.test" / "bob+tag").exists()


def test_bare_postmaster_reaches_the_primary_domains_postmaster(server: Server) -> None:
    # RFC 5321 section 4.5.1: <postmaster> without a domain; postmaster@ is aliased to alice.
    qid = server.send(SENDER, ["postmaster"], message("bare-postmaster"))
    assert b"Message-ID: <bare-postmaster@example.org>" in delivered_one(server, ALICE, qid)


def test_alias_reaches_every_target(server: Server) -> None:
    server.send(SENDER, ["team@example.test"], message("team"))
    for address in (ALICE, BOB):
        [path] = server.wait_messages(address, 1)
        data = path.read_bytes()
        assert data.startswith(f"Return-Path: <{SENDER}>\nDelivered-To: {address}\n".encode())
        assert b"Message-ID: <team@example.org>" in data
        received = split_delivered(data)[2]
        assert received.count(b" for <") == 1  # each copy names its own recipient, no other
        assert f" for <{address}>;".encode() in received
    assert not (server.data / "mail" / "example.test" / "team").exists()


def test_mixed_case_recipient_lands_in_the_lower_case_mailbox(server: Server) -> None:
    qid = server.send(SENDER, ["ALICE@EXAMPLE.TEST"], message("upper"))
    assert b"<upper@example.org>" in delivered_one(server, ALICE, qid)
    assert sorted(p.name for p in (server.data / "mail").iterdir()) == ["example.test"]
    assert sorted(p.name for p in (server.data / "mail" / "example.test").iterdir()) == [
        "alice"]


def test_unknown_local_user_is_550_511_at_rcpt(server: Server) -> None:
    with server.smtp() as client:
        assert client.mail(SENDER)[0] == 250
        code, text = client.rcpt("nobody@example.test")
        assert (code, text.split()[0]) == (550, b"5.1.1")
        assert client.rcpt(ALICE)[0] == 250  # the transaction goes on
    rejects = server.wait_event("reject", where=lambda e: e.get("reason") == "unknown recipient")
    assert rejects[0]["recipient"] == "nobody@example.test"


RELAY_TRICKS = [
    "u@ext.test",
    '"u@ext.test"@example.test',
    "u%ext.test@example.test",
    "ext.test!u@example.test",
    "@example.test:u@ext.test",
    "u@[127.0.0.1]",
    "u@example.test.",
    "U@EXT.TEST",
]


def test_relay_is_refused_permanently_whatever_the_trick(server: Server) -> None:
    for address in RELAY_TRICKS:
        with server.raw() as client:
            assert client.cmd(f"MAIL FROM:<{SENDER}>")[0] == 250
            code, text = client.cmd(f"RCPT TO:<{address}>")
            assert 500 <= code < 600, (address, code, text)
            if address.lower().endswith("@ext.test"):  # plain relay, source route too
                assert (code, text.split()[0]) == (550, "5.7.1"), (address, text)
            else:  # routing tricks and literals: refused by policy, never a 4xx
                assert text.split()[0] in ("5.7.1", "5.1.1", "5.1.3", "5.5.2"), (
                    address, code, text)
            assert client.cmd("DATA")[0] >= 500  # no recipient was accepted
            assert client.cmd("QUIT")[0] == 221
    barrier(server)
    assert sorted(p.name for p in (server.data / "mail").iterdir()) == ["example.test"]
    assert server.messages(ALICE) == []
    assert server.queue_list() == []


def test_null_sender_is_accepted_and_recorded(server: Server) -> None:
    qid = server.send("", [ALICE], message("bounce"))
    data = delivered_one(server, ALICE, qid)
    assert data.startswith(b"Return-Path: <>\nDelivered-To: alice@example.test\n")


def test_declared_size_over_the_limit_is_552(server: Server) -> None:
    with server.smtp() as client:
        limit = int(client.esmtp_features["size"])
        assert limit == 36700160
        code, text = client.mail(SENDER, [f"SIZE={limit + 1}"])
        assert (code, text.split()[0]) == (552, b"5.3.4")
        assert client.mail(SENDER, [f"SIZE={limit}"])[0] == 250


def test_body_over_the_limit_is_552_and_not_delivered(
        make_server: Callable[..., Server]) -> None:
    srv = make_server("[limits]\nmax_message_size = 10000\n")
    srv.add_user(ALICE)
    srv.start()
    big = message("big", body=b"x" * 70 + b"\r\n") * 200  # about 20 kB
    with srv.smtp() as client:
        assert client.esmtp_features["size"] == "10000"
        assert client.mail(SENDER, ["SIZE=20000"])[0] == 552
        assert client.mail(SENDER)[0] == 250  # no SIZE given: found out while reading
        assert client.rcpt(ALICE)[0] == 250
        code, text = client.data(big)
        assert (code, text.split()[0]) == (552, b"5.3.4")
        # the session is still usable and the limit is exact, not approximate
        fits = message("fits", body=b"y" * (10000 - len(message("fits", body=b"!\r\n")))
                       + b"!\r\n")  # smtplib adds no CRLF to a message ending in one
        assert len(fits) == 10000
        assert client.mail(SENDER, ["SIZE=10000"])[0] == 250
        assert client.rcpt(ALICE)[0] == 250
        code, text = client.data(fits)
        assert code == 250, text
    data = delivered_one(srv, ALICE, srv.queue_id(text.decode()))
    assert b"<fits@example.org>" in data and b"<big@example.org>" not in data
    assert srv.queue_list() == []


def test_bare_lf_in_content_is_refused(server: Server) -> None:
    with server.raw() as client:
        assert client.cmd(f"MAIL FROM:<{SENDER}>")[0] == 250
        assert client.cmd(f"RCPT TO:<{ALICE}>")[0] == 250
        assert client.cmd("DATA")[0] == 354
        client.send(b"Subject: x\n\nbody\n.\n")
        client.send(b"\r\n.\r\n")
        code, text = client.reply()
        assert code == 550, text
        assert client.cmd("QUIT")[0] == 221
    barrier(server, ALICE)
    [path] = server.messages(ALICE)
    assert b"Subject: barrier" in path.read_bytes()


@pytest.mark.parametrize("fake_end", [b"\n.\r\n", b"\r\n.\n", b"\r.\r\n", b"\n.\n"],
                         ids=["LF.CRLF", "CRLF.LF", "CR.CRLF", "LF.LF"])
def test_smuggled_second_message_is_never_seen(server: Server, fake_end: bytes) -> None:
    with server.raw() as client:
        assert client.cmd(f"MAIL FROM:<{SENDER}>")[0] == 250
        assert client.cmd(f"RCPT TO:<{ALICE}>")[0] == 250
        assert client.cmd("DATA")[0] == 354
        client.send(b"Subject: outer\r\n\r\nouter body" + fake_end
                    + b"MAIL FROM:<evil@example.org>\r\nRCPT TO:<bob@example.test>\r\n"
                    b"DATA\r\nSubject: smuggled\r\n\r\nsmuggled\r\n.\r\n")
        code, text = client.reply()
        assert code == 550, text  # one reply for the whole thing, and a refusal
        assert client.cmd("QUIT")[0] == 221  # no reply to a smuggled MAIL, RCPT or DATA
    barrier(server, BOB)
    [path] = server.messages(BOB)
    assert b"smuggled" not in path.read_bytes()
    assert server.messages(ALICE) == []
    assert len(server.events("queued")) == 1


def test_bdat_chunks_are_counted_not_unstuffed(server: Server) -> None:
    first = b"Subject: chunked\r\nMessage-ID: <bdat@example.org>\r\n\r\n"
    second = b".leading dot stays\r\n..two stay two\r\nend\r\n"
    with server.raw() as client:
        assert client.cmd(f"MAIL FROM:<{SENDER}> BODY=BINARYMIME")[0] == 250
        assert client.cmd(f"RCPT TO:<{ALICE}>")[0] == 250
        client.send(b"BDAT %d\r\n" % len(first) + first)
        assert client.reply()[0] == 250
        client.send(b"BDAT %d LAST\r\n" % len(second) + second)
        code, text = client.reply()
        assert code == 250, text
        qid = server.queue_id(text)
        assert client.cmd("QUIT")[0] == 221
    data = delivered_one(server, ALICE, qid)
    assert split_delivered(data)[3] == (first + second).replace(b"\r\n", b"\n")


def test_bdat_single_last_chunk(server: Server) -> None:
    body = message("bdat1")
    with server.raw() as client:
        assert client.cmd(f"MAIL FROM:<{SENDER}>")[0] == 250
        assert client.cmd(f"RCPT TO:<{BOB}>")[0] == 250
        client.send(b"BDAT %d LAST\r\n" % len(body) + body)
        code, text = client.reply()
        assert code == 250, text
    data = delivered_one(server, BOB, server.queue_id(text))
    assert split_delivered(data)[3] == body.replace(b"\r\n", b"\n")


def test_pipelined_group_gets_replies_in_order(server: Server) -> None:
    with server.raw() as client:
        client.send(f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<{ALICE}>\r\n"
                    f"RCPT TO:<nobody@example.test>\r\nRCPT TO:<{BOB}>\r\nDATA\r\n")
        codes = [client.reply()[0] for _ in range(5)]
        assert codes == [250, 250, 550, 250, 354]
        client.send(dot_stuff(message("piped")) + f".\r\nMAIL FROM:<{SENDER}>\r\n".encode())
        code, text = client.reply()
        assert code == 250, text
        assert client.reply()[0] == 250  # the MAIL sent right behind the end of data
        client.send(f"RSET\r\nMAIL FROM:<{SENDER}>\r\nRCPT TO:<{ALICE}>\r\nDATA\r\n")
        assert [client.reply()[0] for _ in range(4)] == [250, 250, 250, 354]
        client.send(dot_stuff(message("second")) + b".\r\nQUIT\r\n")  # as Postfix does
        assert client.reply()[0] == 250
        assert client.reply()[0] == 221
        assert client.at_eof()
    [path] = server.wait_messages(BOB, 1)
    assert b"<piped@example.org>" in path.read_bytes()
    files = server.wait_messages(ALICE, 2)
    assert sorted(b"<piped@example.org>" in f.read_bytes() for f in files) == [False, True]


@pytest.mark.parametrize("then", [b"QUIT\r\n", b""])
def test_end_of_input_right_behind_the_end_of_data_still_gets_the_replies(
        server: Server, then: bytes) -> None:
    """The client half-closes with the end of data (and a QUIT) still on their way: the
    message is committed, and its 250 (then the 221) goes out before the server closes."""
    with server.raw() as client:
        client.send(f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<{ALICE}>\r\nDATA\r\n")
        assert [client.reply()[0] for _ in range(3)] == [250, 250, 354]
        client.send(dot_stuff(message("half-closed")) + b".\r\n" + then)
        client.sock.shutdown(socket.SHUT_WR)
        code, text = client.reply()
        assert code == 250, text
        if then:
            assert client.reply()[0] == 221
        assert client.at_eof()
    [path] = server.wait_messages(ALICE, 1)
    assert b"<half-closed@example.org>" in path.read_bytes()


def test_session_sent_one_byte_at_a_time(server: Server) -> None:
    groups = [  # a pipelined group ends with a command that must be last (RFC 2920)
        (b"EHLO bytes.example.org\r\n", [250]),
        (f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<{ALICE}>\r\nDATA\r\n".encode(), [250, 250, 354]),
        (dot_stuff(message("bytes")) + b".\r\nQUIT\r\n", [250, 221]),
    ]
    with server.raw(ehlo=None) as client:
        assert client.reply()[0] == 220  # talking before the greeting is not allowed
        client.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for group, expected in groups:
            for n in range(len(group)):
                client.send(group[n:n + 1])
                if n % 8 == 0:
                    time.sleep(0.0005)  # let some segments go out alone
            assert [client.reply()[0] for _ in expected] == expected
    [path] = server.wait_messages(ALICE, 1)
    assert split_delivered(path.read_bytes())[3] == message("bytes").replace(b"\r\n", b"\n")


def test_command_after_a_must_be_last_command_is_a_synchronization_error(
        server: Server) -> None:
    with server.raw(ehlo=None) as client:
        assert client.reply()[0] == 220
        client.send(f"EHLO x.example.org\r\nMAIL FROM:<{SENDER}>\r\n")  # EHLO ends a group
        assert client.at_eof(5)  # the server hangs up on a client out of step
        codes: list[int] = []
        while client.buffer and len(codes) < 5:
            codes.append(client.reply()[0])
        assert codes[-1] == 554 and len(codes) <= 2, codes  # nothing that answers the MAIL
    assert server.events("queued") == []


def test_client_talking_before_the_greeting_is_refused(
        make_server: Callable[..., Server]) -> None:
    srv = make_server("[limits]\ngreeting_delay = 0.5\n")
    srv.add_user(ALICE)
    srv.start()
    with srv.raw(ehlo=None) as client:
        client.send(f"EHLO early.example.org\r\nMAIL FROM:<{SENDER}>\r\n"
                    f"RCPT TO:<{ALICE}>\r\nDATA\r\n")
        code, text = client.reply()
        if code == 220:  # the greeting may come first; then the refusal
            code, text = client.reply()
        assert (code, text.split()[0]) == (554, "5.5.0"), text
        assert client.at_eof()
    assert srv.events("queued") == []


def test_8bitmime_content_is_delivered_byte_for_byte(server: Server) -> None:
    body = "café, naïve, 1 € — 日本語\r\n".encode() + bytes(range(0x80, 0x100)) + b"\r\n"
    sent = message("eight", body=body)
    with server.smtp() as client:
        assert "8bitmime" in client.esmtp_features
    qid = server.send(SENDER, [ALICE], sent, ["BODY=8BITMIME"])
    data = delivered_one(server, ALICE, qid)
    assert split_delivered(data)[3] == sent.replace(b"\r\n", b"\n")


def test_smtputf8_sender_and_headers(server: Server) -> None:
    sender = "jösé@example.org"
    sent = (f"From: José <{sender}>\r\nTo: <{ALICE}>\r\nSubject: ¡hola!\r\n\r\n"
            "añadido\r\n").encode()
    with server.smtp() as client:
        assert "smtputf8" in client.esmtp_features
    qid = server.send(sender, [ALICE], sent, ["SMTPUTF8", "BODY=8BITMIME"])
    data = delivered_one(server, ALICE, qid)
    return_path, delivered_to, received, rest = split_delivered(data)
    assert return_path == f"Return-Path: <{sender}>".encode()
    assert delivered_to == f"Delivered-To: {ALICE}".encode()
    assert b" with UTF8SMTP id " + qid.encode() in received
    assert rest == sent.replace(b"\r\n", b"\n")


def test_utf8_address_without_smtputf8_is_refused(server: Server) -> None:
    with server.raw() as client:
        code, text = client.cmd("MAIL FROM:<jösé@example.org>".encode())
        assert (code, text.split()[0]) == (553, "5.6.7")


def test_idn_domain_folder_is_the_a_label(make_server: Callable[..., Server]) -> None:
    srv = make_server(domains=["example.test", "bücher.example"])
    srv.add_user("alice@bücher.example")
    srv.start()
    srv.send(SENDER, ["alice@xn--bcher-kva.example"], message("alabel"))
    srv.send(SENDER, ["Alice@Bücher.example"], message("ulabel"), ["SMTPUTF8"])
    files = srv.wait_messages("alice@xn--bcher-kva.example", 2)
    tokens = sorted(b"alabel" in f.read_bytes() for f in files)
    assert tokens == [False, True]
    assert sorted(p.name for p in (srv.data / "mail").iterdir()) == ["xn--bcher-kva.example"]


def test_message_ids_are_unique_per_message(server: Server) -> None:
    with server.smtp() as client:
        ids = []
        for n in range(5):
            assert client.mail(SENDER)[0] == 250 and client.rcpt(ALICE)[0] == 250
            code, text = client.data(message(f"m{n}"))
            assert code == 250, text
            ids.append(server.queue_id(text.decode()))
    assert len(set(ids)) == 5
    files = server.wait_messages(ALICE, 5)
    assert len(files) == 5
    seen = {split_delivered(f.read_bytes())[2].split(b" id ")[1].split()[0].decode()
            for f in files}
    assert seen == set(ids)


@pytest.mark.parametrize("reset", [False, True], ids=["close", "reset"])
def test_client_vanishing_in_data_leaves_nothing_behind(server: Server, reset: bool) -> None:
    incoming = server.data / "queue" / "incoming"  # where unfinished bodies are spooled
    with server.raw() as client:
        assert client.cmd(f"MAIL FROM:<{SENDER}>")[0] == 250
        assert client.cmd(f"RCPT TO:<{ALICE}>")[0] == 250
        assert client.cmd("DATA")[0] == 354
        client.send(b"Subject: gone\r\n\r\n" + (b"y" * 78 + b"\r\n") * 13000)  # 1 MB: spilled
        deadline = time.monotonic() + 5
        while not any(incoming.iterdir()) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert any(incoming.iterdir())
        if reset:
            client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                   struct.pack("ii", 1, 0))
    server.wait_event("disconnect")
    deadline = time.monotonic() + 5
    while any(incoming.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert list(incoming.iterdir()) == []
    assert server.events("queued") == []
    barrier(server, ALICE)
    assert len(server.messages(ALICE)) == 1
