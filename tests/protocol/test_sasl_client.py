"""Tests for the SASL client mechanisms: PLAIN, LOGIN and SCRAM-SHA-256.

SCRAM is pinned by the RFC 7677 section 3 test vector and run against our server side
(``protocol.sasl.SaslServer``); a server that cannot prove it knows the password, or that
bends the exchange (foreign nonce, low iteration count, error, junk), is refused.
RFC 4616, draft-murchison-sasl-login, RFC 5802 sections 3, 5 and 7, RFC 7677, RFC 4954.
"""

from __future__ import annotations

import base64
import hmac

import pytest

from postwright.errors import RemoteProtocolError
from postwright.protocol.reply import Reply
from postwright.protocol.sasl import (
    INVALID,
    SUCCESS,
    SaslServer,
    ScramCredentials,
    scram_credentials,
)
from postwright.protocol.sasl_client import (
    LoginClient,
    PlainClient,
    SaslClient,
    ScramSha256Client,
)


def b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def unb64(text: str) -> str:
    return base64.b64decode(text).decode("utf-8")


class Accounts:
    """A stand-in for the account store (another module's job): a dict of passwords."""

    def __init__(self, passwords: dict[str, str], *, salt: bytes | None = None,
                 iterations: int = 4096) -> None:
        self.passwords = passwords
        self.keys = {a: scram_credentials(p, salt=salt, iterations=iterations)
                     for a, p in passwords.items()}

    def verify(self, address: str, password: str) -> bool:
        known = self.passwords.get(address)
        return known is not None and hmac.compare_digest(known.encode(), password.encode())

    def scram(self, address: str) -> ScramCredentials | None:
        return self.keys.get(address)


ACCOUNTS = Accounts({"alice@example.test": "correct horse", "a,b=c": "pässwörd Ⅸ"})


def login(client: SaslClient, server: SaslServer, *, use_initial: bool = True) -> Reply:
    """Run one exchange the way a driver does; return the server's final reply."""
    initial = client.initial() if use_initial else None
    reply = server.start(client.mechanism, initial)
    while reply.code == 334:
        reply = server.step(client.respond(reply.text))
    if reply.code == 235:
        client.check_success()
    return reply


# ---- RFC 7677 section 3 ------------------------------------------------------------------

RFC_CLIENT_FIRST = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
RFC_SERVER_FIRST = ("r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                    "s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")
RFC_CLIENT_FINAL = ("c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                    "p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
RFC_SERVER_FINAL = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="


def rfc_client() -> ScramSha256Client:
    return ScramSha256Client("user", "pencil", nonce="rOprNGfwEbeRWgbNEkqO")


def test_rfc7677_vector() -> None:
    client = rfc_client()
    assert client.initial() == b64(RFC_CLIENT_FIRST)
    assert unb64(client.respond(b64(RFC_SERVER_FIRST))) == RFC_CLIENT_FINAL
    with pytest.raises(RemoteProtocolError):
        client.check_success()  # a 235 now would be a server skipping its proof
    assert client.respond(b64(RFC_SERVER_FINAL)) == ""
    assert client.verified
    client.check_success()


@pytest.mark.parametrize("server_final", [
    "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G5=",  # one bit off
    "v=" + base64.b64encode(b"\0" * 32).decode(),
    "e=invalid-proof", "v=", "x=1", "", "v=not base64",
])
def test_wrong_server_signature_is_refused(server_final: str) -> None:
    client = rfc_client()
    client.respond(b64(RFC_SERVER_FIRST))
    with pytest.raises(RemoteProtocolError):
        client.respond(b64(server_final))
    assert not client.verified
    with pytest.raises(RemoteProtocolError):
        client.check_success()


@pytest.mark.parametrize("server_first", [
    "r=someoneelse123,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",  # does not extend our nonce
    "r=rOprNGfwEbeRWgbNEkqO,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",  # adds nothing
    "r=rOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=1",  # downgrade
    "r=rOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=99999999999",
    "r=rOprNGfwEbeRWgbNEkqOxyz,s=,i=4096", "r=rOprNGfwEbeRWgbNEkqOxyz,s=???,i=4096",
    "m=ext,r=rOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
    "r=rOprNGfwEbeRWgbNEkqOxyz,i=4096", "e=other-error",
])
def test_bad_server_first_is_refused(server_first: str) -> None:
    with pytest.raises(RemoteProtocolError):
        rfc_client().respond(b64(server_first))


def test_challenge_that_is_not_base64() -> None:
    with pytest.raises(RemoteProtocolError) as info:
        rfc_client().respond("r=abc,s=xyz")
    assert info.value.reply.code == 454


def test_exchange_cannot_run_past_the_end() -> None:
    client = rfc_client()
    client.respond(b64(RFC_SERVER_FIRST))
    client.respond(b64(RFC_SERVER_FINAL))
    with pytest.raises(RemoteProtocolError):
        client.respond("")


def test_secrets_stay_out_of_reprs_and_errors() -> None:
    client = ScramSha256Client("user", "hunter2-secret")
    with pytest.raises(RemoteProtocolError) as info:
        client.respond(b64("r=x,s=y,i=1"))
    for text in (repr(client), str(info.value), repr(PlainClient("u", "hunter2-secret")),
                 repr(LoginClient("u", "hunter2-secret"))):
        assert "hunter2" not in text


# ---- against our server ------------------------------------------------------------------

@pytest.mark.parametrize("use_initial", [True, False])
def test_scram_against_our_server(use_initial: bool) -> None:
    client = ScramSha256Client("alice@example.test", "correct horse")
    server = SaslServer(ACCOUNTS)
    assert login(client, server, use_initial=use_initial) == SUCCESS
    assert server.identity == "alice@example.test" and client.verified


def test_scram_escapes_the_name_and_prepares_the_password() -> None:
    server = SaslServer(ACCOUNTS)
    # SASLprep maps the Roman numeral "Ⅸ" to "IX" on both sides (NFKC).
    assert login(ScramSha256Client("a,b=c", "pässwörd IX"), server) == SUCCESS
    assert server.identity == "a,b=c"


def test_scram_wrong_password_is_refused_by_our_server() -> None:
    server = SaslServer(ACCOUNTS)
    assert login(ScramSha256Client("alice@example.test", "wrong"), server) == INVALID
    assert server.identity is None


def test_scram_with_our_server_using_a_low_iteration_count() -> None:
    accounts = Accounts({"bob@example.test": "pw"}, iterations=100)
    client = ScramSha256Client("bob@example.test", "pw")
    with pytest.raises(RemoteProtocolError):
        login(client, SaslServer(accounts))  # below RFC 7677's 4096: refused
    relaxed = ScramSha256Client("bob@example.test", "pw", min_iterations=100)
    assert login(relaxed, SaslServer(accounts)) == SUCCESS


@pytest.mark.parametrize("use_initial", [True, False])
def test_plain_against_our_server(use_initial: bool) -> None:
    client = PlainClient("alice@example.test", "correct horse")
    assert client.initial() == b64("\0alice@example.test\0correct horse")
    server = SaslServer(ACCOUNTS)
    assert login(client, server, use_initial=use_initial) == SUCCESS
    assert login(PlainClient("alice@example.test", "nope"), SaslServer(ACCOUNTS)) == INVALID


def test_plain_answers_one_empty_challenge_only() -> None:
    client = PlainClient("u", "p", authzid="admin")
    assert unb64(client.respond("")) == "admin\0u\0p"
    with pytest.raises(RemoteProtocolError):
        client.respond("")
    with pytest.raises(RemoteProtocolError):
        PlainClient("u", "p").respond(b64("something"))


def test_login_against_our_server() -> None:
    client = LoginClient("alice@example.test", "correct horse")
    assert client.initial() is None
    server = SaslServer(ACCOUNTS)
    assert login(client, server) == SUCCESS and server.identity == "alice@example.test"
    with pytest.raises(RemoteProtocolError):
        client.respond(b64("Again:"))


@pytest.mark.parametrize("make", [
    lambda: PlainClient("", "p"), lambda: PlainClient("u\0x", "p"),
    lambda: LoginClient("u", ""), lambda: ScramSha256Client("", "p"),
    lambda: ScramSha256Client("u", "p", nonce="has,comma"),
    lambda: ScramSha256Client("u", "p", nonce=""),
])
def test_bad_construction(make: object) -> None:
    assert callable(make)
    with pytest.raises(ValueError):
        make()


def test_default_nonces_differ() -> None:
    one, two = ScramSha256Client("u", "p").initial(), ScramSha256Client("u", "p").initial()
    assert one is not None and two is not None and one != two
