"""Tests for the SASL server: PLAIN, LOGIN, SCRAM-SHA-256 (RFC 7677 vector), SASLprep.

The SCRAM client below is written from RFC 5802 section 3 with hashlib and hmac only; it does
not call the module under test, and the RFC 7677 section 3 test vector pins both sides.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from postwright.errors import LocalProtocolError
from postwright.protocol.events import Auth, AuthResponse, Hello
from postwright.protocol.reply import Reply
from postwright.protocol.sasl import (
    ABORTED,
    BAD_BASE64,
    INVALID,
    SUCCESS,
    UNKNOWN_MECHANISM,
    SaslServer,
    ScramCredentials,
    saslprep,
    scram_credentials,
)
from postwright.protocol.server import ServerConnection, ServerSettings


def b64(data: bytes | str) -> str:
    raw = data.encode("utf-8") if isinstance(data, str) else data
    return base64.b64encode(raw).decode("ascii")


def unb64(reply: Reply) -> str:
    assert reply.code == 334
    return base64.b64decode(reply.text).decode("utf-8")


class Accounts:
    """A stand-in for the account store (another module's job): a dict of passwords."""

    def __init__(self, passwords: dict[str, str], *, salt: bytes | None = None) -> None:
        self.passwords = passwords
        self.scram_keys = {a: scram_credentials(p, salt=salt) for a, p in passwords.items()}
        self.verified: list[str] = []

    def verify(self, address: str, password: str) -> bool:
        self.verified.append(address)
        known = self.passwords.get(address)
        return known is not None and hmac.compare_digest(known.encode(), password.encode())

    def scram(self, address: str) -> ScramCredentials | None:
        return self.scram_keys.get(address)


ACCOUNTS = Accounts({"alice@example.test": "correct horse", "user": "pencil"})


def server(**kw: object) -> SaslServer:
    return SaslServer(ACCOUNTS, **kw)  # type: ignore[arg-type]


# ---- an independent SCRAM-SHA-256 client (RFC 5802 section 3) ----------------------------

class ScramClient:
    def __init__(self, username: str, password: str, nonce: str, gs2: str = "n,,",
                 binding: str | None = None) -> None:
        self.password = password
        self.gs2 = gs2
        self.binding = gs2 if binding is None else binding  # what c= carries
        name = username.replace("=", "=3D").replace(",", "=2C")
        self.first_bare = f"n={name},r={nonce}"
        self.nonce = nonce
        self.server_signature = b""

    def first(self) -> str:
        return self.gs2 + self.first_bare

    def final(self, server_first: str) -> str:
        attrs = dict(part.split("=", 1) for part in server_first.split(","))
        assert attrs["r"].startswith(self.nonce) and len(attrs["r"]) > len(self.nonce)
        salted = hashlib.pbkdf2_hmac("sha256", self.password.encode(), base64.b64decode(
            attrs["s"]), int(attrs["i"]))
        client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
        stored_key = hashlib.sha256(client_key).digest()
        without_proof = f"c={b64(self.binding)},r={attrs['r']}"
        auth_message = f"{self.first_bare},{server_first},{without_proof}".encode()
        signature = hmac.new(stored_key, auth_message, hashlib.sha256).digest()
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
        self.server_signature = hmac.new(server_key, auth_message, hashlib.sha256).digest()
        return f"{without_proof},p={b64(proof)}"

    def check(self, server_final: str) -> bool:
        return server_final == "v=" + b64(self.server_signature)


def scram_login(srv: SaslServer, client: ScramClient, *, initial: bool = True) -> Reply:
    if initial:
        reply = srv.start("SCRAM-SHA-256", b64(client.first()))
    else:
        assert srv.start("SCRAM-SHA-256", None) == Reply(334, None, "")
        reply = srv.step(b64(client.first()))
    if reply.code != 334:
        return reply
    reply = srv.step(b64(client.final(unb64(reply))))
    if reply.code != 334:
        return reply
    assert client.check(unb64(reply))
    return srv.step("")


# ---- RFC 7677 section 3 ------------------------------------------------------------------

RFC_SALT = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
RFC_CLIENT_FIRST = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
RFC_SERVER_FIRST = ("r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                    "s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")
RFC_CLIENT_FINAL = ("c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                    "p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
RFC_SERVER_FINAL = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="


def test_rfc7677_vector() -> None:
    store = Accounts({"user": "pencil"}, salt=RFC_SALT)
    srv = SaslServer(store, nonce=lambda: "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0")
    reply = srv.start("SCRAM-SHA-256", b64(RFC_CLIENT_FIRST))
    assert unb64(reply) == RFC_SERVER_FIRST
    reply = srv.step(b64(RFC_CLIENT_FINAL))
    assert unb64(reply) == RFC_SERVER_FINAL
    assert srv.identity is None  # not before the client has accepted the server's proof
    assert srv.step("") == SUCCESS
    assert srv.identity == "user"
    assert srv.failed_identity is None


def test_independent_client_reproduces_rfc7677_vector() -> None:
    client = ScramClient("user", "pencil", "rOprNGfwEbeRWgbNEkqO")
    assert client.first() == RFC_CLIENT_FIRST
    assert client.final(RFC_SERVER_FIRST) == RFC_CLIENT_FINAL
    assert client.check(RFC_SERVER_FINAL)


def test_rfc7677_vector_with_wrong_proof_fails() -> None:
    store = Accounts({"user": "pencil"}, salt=RFC_SALT)
    srv = SaslServer(store, nonce=lambda: "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0")
    srv.start("SCRAM-SHA-256", b64(RFC_CLIENT_FIRST))
    tampered = RFC_CLIENT_FINAL.replace("p=dHzb", "p=dHzc")
    assert srv.step(b64(tampered)) == INVALID
    assert srv.failed_identity == "user" and srv.identity is None


# ---- SCRAM-SHA-256 -----------------------------------------------------------------------

@pytest.mark.parametrize("initial", [True, False])
def test_scram_success(initial: bool) -> None:
    srv = server()
    reply = scram_login(srv, ScramClient("alice@example.test", "correct horse", "abc"),
                        initial=initial)
    assert reply == SUCCESS and srv.identity == "alice@example.test"


def test_scram_wrong_password_fails_at_proof() -> None:
    srv = server()
    assert scram_login(srv, ScramClient("alice@example.test", "wrong", "abc")) == INVALID
    assert srv.identity is None and srv.failed_identity == "alice@example.test"


def test_scram_unknown_user_gets_stable_fake_salt_and_fails_at_proof() -> None:
    def server_first(name: str) -> dict[str, str]:
        srv = server(nonce=lambda: "N")
        reply = srv.start("SCRAM-SHA-256", b64(f"n,,n={name},r=abc"))
        return dict(p.split("=", 1) for p in unb64(reply).split(","))

    first = server_first("nobody@example.test")
    real = server_first("alice@example.test")
    assert first.keys() == real.keys() and first["i"] == real["i"] == "4096"
    assert len(base64.b64decode(first["s"])) == len(base64.b64decode(real["s"]))
    assert server_first("nobody@example.test")["s"] == first["s"]  # no tell on retry
    assert server_first("other@example.test")["s"] != first["s"]
    srv = server()
    assert scram_login(srv, ScramClient("nobody@example.test", "anything", "x")) == INVALID
    assert srv.failed_identity == "nobody@example.test"


def test_scram_username_escapes_and_authzid() -> None:
    store = Accounts({"a,b=c": "pw"})
    srv = SaslServer(store)
    assert scram_login(srv, ScramClient("a,b=c", "pw", "n1")) == SUCCESS
    assert srv.identity == "a,b=c"
    srv = SaslServer(store)
    assert scram_login(srv, ScramClient("a,b=c", "pw", "n1", gs2="n,a=a=2Cb=3Dc,")) == SUCCESS
    srv = SaslServer(store)
    assert scram_login(srv, ScramClient("a,b=c", "pw", "n1", gs2="n,a=admin,")) == INVALID


@pytest.mark.parametrize("gs2, binding", [("n,,", "y,,"), ("y,,", "n,,"), ("n,,", "n,,x"),
                                           ("n,a=user,", "n,,")])
def test_scram_channel_binding_must_repeat_gs2_header(gs2: str, binding: str) -> None:
    srv = SaslServer(Accounts({"user": "pencil"}))
    assert scram_login(srv, ScramClient("user", "pencil", "n", gs2, binding)) == INVALID


def test_scram_y_flag_accepted() -> None:
    srv = server()
    client = ScramClient("alice@example.test", "correct horse", "n", gs2="y,,")
    assert scram_login(srv, client) == SUCCESS


@pytest.mark.parametrize("first", [
    "p=tls-unique,,n=user,r=abc",  # channel binding requested: not offered
    "n,,m=ext,n=user,r=abc",  # unknown mandatory extension
    "n,,n=us=er,r=abc",  # bad saslname escape
    "n,,n=,r=abc",
    "n,,n=user,r=",
    "n,,n=user,r=a\x7fb",
    "n,,r=abc,n=user",
    "n,,n=user",
    "x,,n=user,r=abc",
    "",
])
def test_scram_bad_client_first(first: str) -> None:
    srv = server()
    assert srv.start("SCRAM-SHA-256", b64(first) if first else "=") == INVALID
    assert srv.done


def test_scram_extensions_in_client_first_are_ignored() -> None:
    srv = server()
    client = ScramClient("alice@example.test", "correct horse", "abc")
    client.first_bare += ",x=future"
    assert scram_login(srv, client) == SUCCESS


@pytest.mark.parametrize("mangle", [
    lambda s: s.replace("c=biws", "c=eSws"),  # channel binding data does not match the header
    lambda s: s.replace(",r=abc", ",r=abd"),  # nonce changed
    lambda s: s.split(",p=")[0],  # no proof
    lambda s: s.split(",p=")[0] + ",p=AAAA",  # proof too short
    lambda s: s.split(",p=")[0] + ",p=!!",
    lambda s: "r=" + s.split(",r=", 1)[1],  # no channel binding attribute
])
def test_scram_bad_client_final(mangle: object) -> None:
    srv = server(nonce=lambda: "SRV")
    client = ScramClient("alice@example.test", "correct horse", "abc")
    reply = srv.start("SCRAM-SHA-256", b64(client.first()))
    final = client.final(unb64(reply))
    assert srv.step(b64(mangle(final))) == INVALID  # type: ignore[operator]
    assert srv.done and srv.identity is None


def test_scram_nonempty_answer_to_server_final_fails() -> None:
    srv = server()
    client = ScramClient("alice@example.test", "correct horse", "abc")
    reply = srv.start("SCRAM-SHA-256", b64(client.first()))
    reply = srv.step(b64(client.final(unb64(reply))))
    assert reply.code == 334
    assert srv.step(b64("extra")) == INVALID
    assert srv.identity is None


def test_scram_abort_after_server_final() -> None:
    srv = server()
    client = ScramClient("alice@example.test", "correct horse", "abc")
    reply = srv.start("SCRAM-SHA-256", b64(client.first()))
    srv.step(b64(client.final(unb64(reply))))
    assert srv.step("*") == ABORTED
    assert srv.identity is None


@settings(max_examples=25, deadline=None)
@given(password=st.text(min_size=1, max_size=20).filter(lambda p: saslprep_ok(p)),
       nonce=st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E,
                                            blacklist_characters=","), min_size=1, max_size=30))
def test_scram_roundtrip_any_password(password: str, nonce: str) -> None:
    store = Accounts({"u@example.test": password})
    client = ScramClient("u@example.test", saslprep(password), nonce)
    assert scram_login(SaslServer(store), client) == SUCCESS


def saslprep_ok(text: str) -> bool:
    try:
        return saslprep(text) != ""
    except ValueError:
        return False


def test_scram_password_failing_saslprep_falls_back_to_raw() -> None:
    store = Accounts({"u": "bell\x07"})
    assert scram_login(SaslServer(store), ScramClient("u", "bell\x07", "n")) == SUCCESS


def test_bad_server_nonce_is_our_bug() -> None:
    srv = server(nonce=lambda: "has,comma")
    with pytest.raises(LocalProtocolError):
        srv.start("SCRAM-SHA-256", b64("n,,n=user,r=abc"))


# ---- PLAIN -------------------------------------------------------------------------------

def test_plain_initial_response_success() -> None:
    srv = server()
    assert srv.start("PLAIN", b64("\0alice@example.test\0correct horse")) == SUCCESS
    assert srv.identity == "alice@example.test" and srv.failed_identity is None


def test_plain_without_initial_response() -> None:
    srv = server()
    assert srv.start("plain", None) == Reply(334, None, "")
    assert srv.step(b64("\0alice@example.test\0correct horse")) == SUCCESS


@pytest.mark.parametrize("authzid, expected", [
    ("alice@example.test", SUCCESS), ("bob@example.test", INVALID)])
def test_plain_authzid(authzid: str, expected: Reply) -> None:
    srv = server()
    reply = srv.start("PLAIN", b64(f"{authzid}\0alice@example.test\0correct horse"))
    assert reply == expected


def test_plain_wrong_password_and_unknown_user() -> None:
    srv = server()
    assert srv.start("PLAIN", b64("\0alice@example.test\0nope")) == INVALID
    assert srv.failed_identity == "alice@example.test" and srv.identity is None
    srv = server()
    assert srv.start("PLAIN", b64("\0ghost@example.test\0nope")) == INVALID
    assert srv.failed_identity == "ghost@example.test"


@pytest.mark.parametrize("message", ["=", b64("alice"), b64("\0\0pw"), b64("\0alice\0"),
                                     b64("a\0b\0c\0d")])
def test_plain_malformed(message: str) -> None:
    assert server().start("PLAIN", message) == INVALID


@pytest.mark.parametrize("line", ["not base64!", "AB==", "QQ", "=", " QUJD", "QUJD\t"])
def test_bad_base64(line: str) -> None:
    srv = server()
    srv.start("PLAIN", None)
    assert srv.step(line) == BAD_BASE64
    assert srv.done


def test_bad_base64_in_initial_response() -> None:
    assert server().start("PLAIN", "%%%") == BAD_BASE64


def test_invalid_utf8_cannot_be_decoded() -> None:
    assert server().start("PLAIN", b64(b"\0al\xffice\0pw")) == BAD_BASE64


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN", "SCRAM-SHA-256"])
def test_abort_at_first_step(mechanism: str) -> None:
    srv = server()
    assert srv.start(mechanism, None).code == 334
    assert srv.step("*") == ABORTED
    assert srv.done and srv.identity is None


def test_abort_as_initial_response() -> None:
    assert server().start("PLAIN", "*") == ABORTED


# ---- LOGIN -------------------------------------------------------------------------------

def test_login_success() -> None:
    srv = server()
    assert srv.start("LOGIN", None) == Reply(334, None, "VXNlcm5hbWU6")
    assert srv.step(b64("alice@example.test")) == Reply(334, None, "UGFzc3dvcmQ6")
    assert srv.step(b64("correct horse")) == SUCCESS
    assert srv.identity == "alice@example.test"


def test_login_with_initial_username() -> None:
    srv = server()
    assert srv.start("LOGIN", b64("alice@example.test")) == Reply(334, None, "UGFzc3dvcmQ6")
    assert srv.step(b64("correct horse")) == SUCCESS


def test_login_failure_and_abort() -> None:
    srv = server()
    srv.start("LOGIN", None)
    srv.step(b64("alice@example.test"))
    assert srv.step(b64("wrong")) == INVALID
    assert srv.failed_identity == "alice@example.test"
    srv = server()
    srv.start("LOGIN", None)
    srv.step(b64("alice@example.test"))
    assert srv.step("*") == ABORTED
    srv = server()
    srv.start("LOGIN", None)
    srv.step(b64("alice@example.test"))
    assert srv.step("!bad!") == BAD_BASE64


def test_login_empty_username_or_password() -> None:
    srv = server()
    srv.start("LOGIN", "=")
    assert srv.step(b64("correct horse")) == INVALID
    assert srv.failed_identity is None
    srv = server()
    srv.start("LOGIN", b64("alice@example.test"))
    assert srv.step("") == INVALID


# ---- lifecycle and hygiene ----------------------------------------------------------------

def test_unknown_or_disabled_mechanism() -> None:
    assert server().start("CRAM-MD5", None) == UNKNOWN_MECHANISM
    assert server(mechanisms=("SCRAM-SHA-256",)).start("PLAIN", "=") == UNKNOWN_MECHANISM
    with pytest.raises(ValueError):
        server(mechanisms=("GSSAPI",))


def test_no_reuse_after_failure_or_success() -> None:
    srv = server()
    assert srv.start("PLAIN", b64("\0alice@example.test\0nope")) == INVALID
    with pytest.raises(LocalProtocolError):
        srv.step(b64("\0alice@example.test\0correct horse"))
    with pytest.raises(LocalProtocolError):
        srv.start("PLAIN", b64("\0alice@example.test\0correct horse"))
    srv = server()
    assert srv.start("PLAIN", b64("\0alice@example.test\0correct horse")) == SUCCESS
    with pytest.raises(LocalProtocolError):
        srv.start("PLAIN", None)


def test_step_before_start_is_our_bug() -> None:
    with pytest.raises(LocalProtocolError):
        server().step("")


@pytest.mark.parametrize("outcome", ["success", "failure", "midway"])
def test_no_secret_left_in_attributes_or_repr(outcome: str) -> None:
    password = "correct horse"
    creds = ACCOUNTS.scram_keys["alice@example.test"]
    srv = server()
    client = ScramClient("alice@example.test", password if outcome != "failure" else "bad",
                         "abc")
    if outcome == "midway":
        reply = srv.start("SCRAM-SHA-256", b64(client.first()))
        srv.step(b64(client.final(unb64(reply))))
    else:
        scram_login(srv, client)
    dump = repr(srv) + repr(vars(srv))
    assert password not in dump
    assert b64(creds.stored_key) not in dump and b64(creds.server_key) not in dump
    if outcome != "midway":
        assert "_ScramState" not in dump and "ScramCredentials" not in dump


# ---- credentials and SASLprep ---------------------------------------------------------------

def test_credentials_string_roundtrip() -> None:
    creds = scram_credentials("pencil", salt=RFC_SALT)
    text = creds.to_string()
    assert text.startswith("SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$")
    assert ScramCredentials.from_string(text) == creds
    assert b64(creds.stored_key) not in repr(creds)


@pytest.mark.parametrize("text", ["", "SCRAM-SHA-1$4096:AA==$AA==:AA==", "SCRAM-SHA-256$x:AA==$",
                                  "SCRAM-SHA-256$4096:AA==$AA==:AA==", "a$b$c$d"])
def test_credentials_string_malformed(text: str) -> None:
    with pytest.raises(ValueError) as info:
        ScramCredentials.from_string(text)
    assert "AA==" not in str(info.value)


def test_scram_credentials_random_salt_and_arguments() -> None:
    a, b = scram_credentials("pw"), scram_credentials("pw")
    assert a.salt != b.salt and len(a.salt) == 16 and a.iterations == 4096
    with pytest.raises(ValueError):
        scram_credentials("pw", iterations=0)
    with pytest.raises(ValueError):
        scram_credentials("pw", salt=b"")


def test_scram_credentials_apply_saslprep() -> None:
    salt = secrets.token_bytes(16)
    # RFC 4013 section 3: soft hyphen maps to nothing, U+2168 is "IX" after NFKC
    assert scram_credentials("I\u00adX", salt=salt) == scram_credentials("IX", salt=salt)
    assert scram_credentials("\u2168", salt=salt) == scram_credentials("IX", salt=salt)
    assert scram_credentials("a\u00a0b", salt=salt) == scram_credentials("a b", salt=salt)


@pytest.mark.parametrize("given_, expected", [
    ("I\u00adX", "IX"), ("user", "user"), ("USER", "USER"), ("\u00aa", "a"),
    ("\u2168", "IX"), ("a\u2003b", "a b"), ("\u0627\u0628", "\u0627\u0628")])
def test_saslprep_rfc4013_examples(given_: str, expected: str) -> None:
    assert saslprep(given_) == expected


@pytest.mark.parametrize("bad", ["\u0007", "\u0627\u0031", "a\ufffdb", "\u0627a\u0628"])
def test_saslprep_refuses(bad: str) -> None:
    with pytest.raises(ValueError) as info:
        saslprep(bad)
    assert bad not in str(info.value)


# ---- through the protocol core --------------------------------------------------------------

def test_scram_through_server_connection() -> None:
    conn = ServerConnection(ServerSettings("mx.example.test", auth_without_tls=True,
                                           auth_mechanisms=("PLAIN", "SCRAM-SHA-256")))
    conn.send(Reply(220, None, "mx.example.test ESMTP"))
    conn.receive_data(b"EHLO client.test\r\n")
    ev = conn.next_event()
    assert isinstance(ev, Hello)
    conn.send(conn.hello_reply())
    conn.data_to_send()
    client = ScramClient("alice@example.test", "correct horse", "cnonce")
    srv = server()
    conn.receive_data(f"AUTH SCRAM-SHA-256 {b64(client.first())}\r\n".encode())
    ev = conn.next_event()
    assert isinstance(ev, Auth)
    reply = srv.start(ev.mechanism, ev.initial)
    conn.send(reply)
    for line in (client.final(unb64(reply)), None):
        assert conn.data_to_send() == f"334 {reply.text}\r\n".encode()
        conn.receive_data((b64(line) if line else "").encode() + b"\r\n")
        ev = conn.next_event()
        assert isinstance(ev, AuthResponse)
        reply = srv.step(ev.data)
        conn.send(reply)
        if line:
            assert client.check(unb64(reply))
    assert conn.data_to_send() == b"235 2.7.0 Authentication successful\r\n"
    assert conn.authenticated and srv.identity == "alice@example.test"
