"""End to end over TCP and TLS: the submission listeners (587 STARTTLS, 465 implicit TLS).

A real ``postwright serve`` process, spoken to with smtplib and with raw bytes over real TLS.
Covers RFC 6409 (message submission: AUTH before MAIL, relay once authenticated, the sender
must belong to the account), RFC 8314 (implicit TLS on 465), RFC 3207 (STARTTLS before AUTH on
587), RFC 4954 (AUTH PLAIN/LOGIN replies 235, 535 5.7.8, 530 5.7.0, 538 5.7.11; 421 to end a
guessing session), RFC 5802 with RFC 7677 (SCRAM-SHA-256 through an independent client written
here), RFC 3848 (ESMTPSA in Received) and the ``[submission]`` keys of CONTRACT.md
(sender_policy, trusted_networks, the auth_fail_* throttles).
Not here: other peers (test_submission_peers.py), STARTTLS framing and certificates
(test_tls.py).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import smtplib
import socket
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conftest import RawClient, Server

pytestmark = pytest.mark.timeout(60)

ALICE = "alice@example.test"
BOB = "bob@example.test"
PASSWORD = "secret-pass"
# Fast throttles, so that failures do not cost whole seconds, and one alias reaching alice.
FAST = "[submission]\nauth_fail_delay = 0.01\nauth_fail_delay_max = 0.02\n"
ALIASES = {"sales@example.test": [ALICE], "team@example.test": [ALICE, BOB]}


def no_outbound() -> str:
    """``[delivery]`` sending everything remote to a closed loopback port: remote mail stays
    queued (deferred), whether or not outbound delivery exists, and never leaves the host."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f'[delivery]\nrelayhost = "127.0.0.1:{port}"\n'


def client_context() -> ssl.SSLContext:
    """The self-signed test certificate is not verifiable: encrypt, do not verify."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def start_tls(client: RawClient) -> None:
    """Upgrade a raw client's socket in place; nothing may be left unread before it."""
    assert client.buffer == b"", client.buffer
    client.sock = client_context().wrap_socket(client.sock)


def implicit_tls(server: Server, ehlo: str | None = "client.example.org") -> RawClient:
    """A raw client on the submissions port (465): TLS from the first byte, then 220, EHLO."""
    client = server.raw(server.submissions_port, ehlo=None)
    start_tls(client)
    assert client.reply()[0] == 220
    if ehlo is not None:
        code, text = client.cmd(f"EHLO {ehlo}")
        assert code == 250, text
    return client


def starttls(server: Server) -> RawClient:
    """A raw client on the submission port (587) after STARTTLS and a second EHLO."""
    client = server.raw(server.submission_port)
    assert client.cmd("STARTTLS")[0] == 220
    start_tls(client)
    code, text = client.cmd("EHLO client.example.org")
    assert code == 250, text
    return client


def plain(user: str, password: str) -> str:
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def login(client: RawClient, user: str = ALICE, password: str = PASSWORD) -> None:
    code, text = client.cmd(f"AUTH PLAIN {plain(user, password)}")
    assert (code, text) == (235, "2.7.0 Authentication successful")


def message(subject: str, sender: str = ALICE, to: str = BOB) -> bytes:
    return (f"From: <{sender}>\r\nTo: <{to}>\r\nSubject: {subject}\r\n"
            f"Message-ID: <{secrets.token_hex(8)}@example.test>\r\n\r\n"
            f"body of {subject}\r\n").encode()


def our_received(path: Path) -> str:
    """The Received field postwright added to a delivered file, unfolded."""
    head = path.read_text().split("\n\n", 1)[0]
    fields = re.sub(r"\n[ \t]+", " ", head).split("\n")
    ours = [f for f in fields if f.startswith("Received:") and "(postwright)" in f]
    assert len(ours) == 1, head
    return ours[0]


def keywords(ehlo_text: str) -> list[str]:
    return [line.split()[0].upper() for line in ehlo_text.split("\n")[1:] if line]


@pytest.fixture
def fast(make_server: Callable[..., Server]) -> Server:
    srv = make_server(FAST + no_outbound(), aliases=ALIASES)
    srv.add_user(ALICE)
    srv.add_user(BOB)
    srv.start()
    return srv


# ---- real clients, message delivered -----------------------------------------------------


@pytest.mark.parametrize("listener", ["submission", "submissions"])
def test_smtplib_logs_in_and_the_message_says_esmtpsa_and_tls(fast: Server,
                                                             listener: str) -> None:
    client: smtplib.SMTP
    if listener == "submission":
        client = smtplib.SMTP("127.0.0.1", fast.submission_port, timeout=10,
                              local_hostname="client.example.org")
        client.ehlo()
        assert not client.has_extn("auth")  # no AUTH before TLS on 587
        client.starttls(context=client_context())
        client.ehlo()
    else:
        client = smtplib.SMTP_SSL("127.0.0.1", fast.submissions_port, timeout=10,
                                  local_hostname="client.example.org",
                                  context=client_context())
        client.ehlo()
    with client:
        assert client.has_extn("auth") and not client.has_extn("starttls")
        assert client.login(ALICE, PASSWORD)[0] == 235
        sock = client.sock
        assert isinstance(sock, ssl.SSLSocket)
        version, cipher = sock.version(), sock.cipher()
        assert version is not None and cipher is not None
        refused = client.sendmail(ALICE, [BOB], message(listener))
        assert refused == {}
    [path] = fast.wait_messages(BOB, 1)
    received = our_received(path)
    assert " with ESMTPSA " in received, received
    assert f"({version} {cipher[0]})" in received, received
    assert path.read_text().startswith(f"Return-Path: <{ALICE}>\n")
    assert fast.wait_event("queued")[0]["sender"] == ALICE


def test_authenticated_relay_to_a_remote_domain_is_queued_not_lost(fast: Server) -> None:
    remote = "someone@remote.test"
    with starttls(fast) as client:
        login(client)
        assert client.cmd(f"MAIL FROM:<{ALICE}>")[0] == 250
        assert client.cmd(f"RCPT TO:<{remote}>") == (250, "2.1.5 Recipient ok")
        assert client.cmd("DATA")[0] == 354
        client.send(message("relay", to=remote) + b".\r\n")
        code, text = client.reply()
        assert code == 250, text
        qid = fast.queue_id(text)
        client.cmd("QUIT")
    # The relayhost is unreachable: the attempt defers, the message stays queued.
    fast.wait_event("deferred", where=lambda e: e.get("id") == qid)
    still_queued(fast, qid, remote)
    assert fast.stop() == 0
    fast.start()
    still_queued(fast, qid, remote)


def still_queued(server: Server, qid: str, recipient: str) -> None:
    [entry] = [m for m in server.queue_list() if m["id"] == qid]
    assert entry["sender"] == ALICE
    recipients = entry["recipients"]
    assert isinstance(recipients, list) and len(recipients) == 1
    assert recipients[0]["address"] == recipient
    assert recipients[0]["status"] in ("pending", "deferred")


# ---- SCRAM-SHA-256 with a client written from RFC 5802 / RFC 7677 -------------------------


class Scram:
    """The client side of SCRAM-SHA-256 without channel binding (gs2 header "n,,")."""

    gs2 = "n,,"

    def __init__(self, username: str, password: str) -> None:
        assert "," not in username and "=" not in username  # no saslname escaping needed
        self.password = password.encode()  # ASCII: SASLprep leaves it as it is
        self.nonce = secrets.token_urlsafe(18)
        self.first_bare = f"n={username},r={self.nonce}"
        self.auth_message = b""
        self.server_key = b""

    def client_first(self) -> str:
        return self.gs2 + self.first_bare

    def client_final(self, server_first: str) -> str:
        attrs = dict(part.split("=", 1) for part in server_first.split(","))
        nonce, salt, iterations = attrs["r"], base64.b64decode(attrs["s"]), int(attrs["i"])
        assert nonce.startswith(self.nonce) and len(nonce) > len(self.nonce)
        assert iterations >= 4096  # RFC 7677 section 4
        salted = hashlib.pbkdf2_hmac("sha256", self.password, salt, iterations)
        client_key = hmac.digest(salted, b"Client Key", "sha256")
        stored_key = hashlib.sha256(client_key).digest()
        without_proof = f"c={b64(self.gs2)},r={nonce}"
        self.auth_message = f"{self.first_bare},{server_first},{without_proof}".encode()
        signature = hmac.digest(stored_key, self.auth_message, "sha256")
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        self.server_key = hmac.digest(salted, b"Server Key", "sha256")
        return f"{without_proof},p={base64.b64encode(proof).decode()}"

    def server_is_genuine(self, server_final: str) -> bool:
        signature = hmac.digest(self.server_key, self.auth_message, "sha256")
        return hmac.compare_digest(server_final.encode(),
                                   b"v=" + base64.b64encode(signature))


def scram_exchange(client: RawClient, user: str, password: str) -> tuple[int, str]:
    """Run SCRAM-SHA-256 up to the client-final message; return the reply to it."""
    scram = Scram(user, password)
    code, text = client.cmd(f"AUTH SCRAM-SHA-256 {b64(scram.client_first())}")
    assert code == 334, text
    server_first = base64.b64decode(text, validate=True).decode()
    code, text = client.cmd(b64(scram.client_final(server_first)))
    if code != 334:
        return code, text
    assert scram.server_is_genuine(base64.b64decode(text, validate=True).decode()), text
    return client.cmd("")  # RFC 4954 section 4: the client answers server-final empty


def test_scram_sha_256_over_implicit_tls(fast: Server) -> None:
    with implicit_tls(fast) as client:
        assert "SCRAM-SHA-256" in client.cmd("EHLO again.example.org")[1]
        assert scram_exchange(client, ALICE, PASSWORD) == (235,
                                                           "2.7.0 Authentication successful")
        assert client.cmd(f"MAIL FROM:<{ALICE}>")[0] == 250
    assert fast.wait_event("auth")[0]["account"] == ALICE


@pytest.mark.parametrize("user,password", [(ALICE, "wrong-pass"), ("nobody@example.test",
                                                                   PASSWORD)])
def test_scram_sha_256_wrong_password_or_unknown_user_is_535(fast: Server, user: str,
                                                              password: str) -> None:
    with starttls(fast) as client:
        assert scram_exchange(client, user, password) == (
            535, "5.7.8 Authentication credentials invalid")
        assert client.cmd(f"MAIL FROM:<{ALICE}>")[0] == 530
        login(client)  # the session goes on: a right password still works
    assert fast.wait_event("auth_failed")[0]["account"] == user


# ---- what is refused -----------------------------------------------------------------------


def test_auth_before_starttls_on_587_is_refused_and_reveals_nothing(fast: Server) -> None:
    with fast.raw(fast.submission_port) as client:
        code, text = client.cmd("EHLO client.example.org")
        assert "AUTH" not in keywords(text) and "STARTTLS" in keywords(text)
        # AUTH before TLS: 538 5.7.11 (RFC 4954); no credential is looked at.
        for command in (f"AUTH PLAIN {plain(ALICE, PASSWORD)}", "AUTH LOGIN",
                        "AUTH SCRAM-SHA-256"):
            code, text = client.cmd(command)
            assert (code, text.split()[0]) == (538, "5.7.11"), text
        assert client.cmd(f"MAIL FROM:<{ALICE}>")[0] == 530
        assert client.cmd("STARTTLS")[0] == 220
        start_tls(client)
        assert client.cmd("EHLO client.example.org")[0] == 250
        assert client.cmd(f"MAIL FROM:<{ALICE}>")[0] == 530  # the clear-text AUTH did not count
        login(client)
    fast.wait_event("auth")
    assert len(fast.events("auth")) == 1 and not fast.events("auth_failed")


@pytest.mark.parametrize("listener", ["submission", "submissions"])
def test_mail_before_auth_is_530(fast: Server, listener: str) -> None:
    client = starttls(fast) if listener == "submission" else implicit_tls(fast)
    with client:
        assert client.cmd(f"MAIL FROM:<{ALICE}>") == (530, "5.7.0 Authentication required")
        assert client.cmd(f"RCPT TO:<{BOB}>")[0] == 503
        login(client)
        assert client.cmd(f"MAIL FROM:<{ALICE}>")[0] == 250


def test_auth_is_not_offered_on_the_smtp_listener(fast: Server) -> None:
    with fast.raw(fast.smtp_port, ehlo=None) as client:
        assert client.reply()[0] == 220
        assert "AUTH" not in keywords(client.cmd("EHLO client.example.org")[1])
        assert client.cmd(f"AUTH PLAIN {plain(ALICE, PASSWORD)}")[0] == 503
        assert client.cmd("STARTTLS")[0] == 220
        start_tls(client)
        code, text = client.cmd("EHLO client.example.org")
        assert code == 250 and "AUTH" not in keywords(text)
        assert client.cmd(f"AUTH PLAIN {plain(ALICE, PASSWORD)}")[0] == 503
    assert not fast.events("auth")


def test_unknown_user_and_wrong_password_get_the_same_reply(fast: Server) -> None:
    with implicit_tls(fast) as client:
        replies = [client.cmd(f"AUTH PLAIN {plain(user, pw)}")
                   for user, pw in ((ALICE, "wrong-pass"), ("nobody@example.test", PASSWORD))]
        for user, pw in ((ALICE, "wrong-pass"), ("nobody@example.test", PASSWORD)):
            assert client.cmd("AUTH LOGIN") == (334, b64("Username:"))
            assert client.cmd(b64(user)) == (334, b64("Password:"))
            replies.append(client.cmd(b64(pw)))
    assert replies == [(535, "5.7.8 Authentication credentials invalid")] * 4
    assert len(fast.wait_event("auth_failed", 4)) == 4


def test_repeated_failures_are_slowed_then_cut_off(make_server: Callable[..., Server]) -> None:
    srv = make_server("[submission]\nauth_fail_per_client = 3\nauth_fail_delay = 0.1\n"
                      "auth_fail_delay_max = 0.2\n")
    srv.add_user(ALICE)
    srv.start()
    bad = f"AUTH PLAIN {plain(ALICE, 'wrong-pass')}"
    with implicit_tls(srv) as client:
        login(client)  # warm up: the first password check in a process is slower
    with implicit_tls(srv) as client:
        took = []
        for _ in range(2):
            began = time.monotonic()
            assert client.cmd(bad) == (535, "5.7.8 Authentication credentials invalid")
            took.append(time.monotonic() - began)
        code, text = client.cmd(bad)
        assert code == 421 and text.startswith("4.7.0"), text
        assert client.at_eof()
    # The configured delays are lower bounds (0.1 s, then doubled to 0.2 s); a later failure
    # is not answered faster than the first (slack for the password hash's own jitter).
    assert took[0] >= 0.09 and took[1] >= 0.19, took
    assert took[1] + 0.1 >= took[0], took
    failed = srv.wait_event("auth_failed", 3)
    assert [e["account"] for e in failed] == [ALICE] * 3
    srv.wait_event("reject", where=lambda e: e.get("reason") == "too many AUTH failures")
    # The client stays blocked for the window, even with the right password.
    with implicit_tls(srv) as client:
        code, text = client.cmd(f"AUTH PLAIN {plain(ALICE, PASSWORD)}")
        assert code == 421, text
        assert client.at_eof()
    assert len(srv.events("auth")) == 1  # the warm-up


# ---- sender ownership and relay without AUTH ------------------------------------------------


def try_senders(server: Server, senders: list[str]) -> list[int]:
    """MAIL FROM each sender in turn as alice (on 465); the reply codes."""
    codes = []
    with implicit_tls(server) as client:
        login(client)
        for sender in senders:
            code, text = client.cmd(f"MAIL FROM:<{sender}>")
            if code == 553:
                assert text == "5.7.1 Sender address not owned by authenticated user"
            codes.append(code)
            assert client.cmd("RSET")[0] == 250
    return codes


def test_sender_must_belong_to_the_account(fast: Server) -> None:
    owned = [ALICE, "Alice@Example.TEST", "alice+tag@example.test", "sales@example.test"]
    foreign = [BOB, "bob+alice@example.test", "someone@remote.test", "alice@remote.test",
               "alice@[127.0.0.1]", ""]
    assert try_senders(fast, owned + foreign) == [250] * len(owned) + [553] * len(foreign)
    refused = fast.wait_event("reject", len(foreign))
    assert {e["sender"] for e in refused if e.get("reason") == "sender not owned"} == {
        f"<{s}>" for s in foreign}
    # An alias sender goes all the way through.
    with implicit_tls(fast) as client:
        login(client)
        assert client.cmd("MAIL FROM:<sales@example.test>")[0] == 250
        assert client.cmd(f"RCPT TO:<{BOB}>")[0] == 250
        assert client.cmd("DATA")[0] == 354
        client.send(message("alias sender", sender="sales@example.test") + b".\r\n")
        assert client.reply()[0] == 250
    [path] = fast.wait_messages(BOB, 1)
    assert path.read_text().startswith("Return-Path: <sales@example.test>\n")


def test_sender_policy_any_allows_other_senders(make_server: Callable[..., Server]) -> None:
    srv = make_server('[submission]\nsender_policy = "any"\n')
    srv.add_user(ALICE)
    srv.add_user(BOB)
    srv.start()
    assert try_senders(srv, [ALICE, BOB, "someone@remote.test"]) == [250, 250, 250]


def relay_on_smtp(server: Server) -> tuple[int, str]:
    """MAIL and RCPT for a remote domain on the smtp listener, without AUTH."""
    with server.raw() as client:
        assert client.cmd("MAIL FROM:<device@example.test>")[0] == 250
        return client.cmd("RCPT TO:<someone@remote.test>")


def test_trusted_networks_relay_without_auth(make_server: Callable[..., Server]) -> None:
    srv = make_server('[submission]\ntrusted_networks = ["127.0.0.0/8"]\n' + no_outbound())
    srv.start()
    assert relay_on_smtp(srv) == (250, "2.1.5 Recipient ok")
    with srv.smtp() as client:
        assert client.sendmail("device@example.test", ["someone@remote.test"],
                               message("from a device", "device@example.test")) == {}
    assert any(m["sender"] == "device@example.test" for m in srv.queue_list())
    # On 587 a trusted client still needs TLS, but not AUTH.
    with starttls(srv) as client:
        assert client.cmd("MAIL FROM:<device@example.test>")[0] == 250
        assert client.cmd("RCPT TO:<someone@remote.test>")[0] == 250


def test_untrusted_client_may_not_relay_on_smtp(fast: Server) -> None:
    code, text = relay_on_smtp(fast)
    assert code in (550, 554) and text.startswith("5.7.1"), (code, text)
