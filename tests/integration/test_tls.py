"""End to end over real TLS: STARTTLS framing, implicit TLS and certificate reload.

A real ``postwright serve`` process and raw sockets wrapped with the ssl module. Covers
RFC 3207 sections 4.2 and 6 (after the handshake the server forgets everything, requires
EHLO again, stops offering STARTTLS; plaintext pipelined after STARTTLS is never executed:
the CVE-2011-0411 class), RFC 8314 section 3.3 (implicit TLS on 465; a plaintext client is
dropped) and SIGHUP certificate reload (new handshakes see the new certificate, open sessions
keep going, a bad pair changes nothing).
Not a test here: the TLS handshake timeout on 465 is a fixed 30 s, too long for this suite.
"""

from __future__ import annotations

import base64
import datetime
import os
import signal
import smtplib
import socket
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

if TYPE_CHECKING:
    from conftest import RawClient, Server

pytestmark = pytest.mark.timeout(60)

ALICE = "alice@example.test"
BOB = "bob@example.test"
PASSWORD = "secret-pass"
AUTH_PLAIN = "AUTH PLAIN " + base64.b64encode(f"\0{ALICE}\0{PASSWORD}".encode()).decode()


def client_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def start_tls(client: RawClient, ctx: ssl.SSLContext | None = None) -> None:
    """Handshake on the raw client's socket; a reply left unread would be a failure."""
    assert client.buffer == b"", client.buffer
    client.sock = (ctx or client_context()).wrap_socket(client.sock)


def keywords(ehlo_text: str) -> list[str]:
    return [line.split()[0].upper() for line in ehlo_text.split("\n")[1:] if line]


def silent(client: RawClient, seconds: float = 0.3) -> bool:
    """True if the server sends nothing for ``seconds``."""
    client.sock.settimeout(seconds)
    try:
        data = client.sock.recv(65536)
    except TimeoutError:
        return True
    finally:
        client.sock.settimeout(10)
    client.buffer += data
    return False


def forgets_everything(client: RawClient) -> None:
    """Just after the handshake: no stray reply, nothing pipelined ran, EHLO is needed."""
    assert silent(client), client.buffer
    assert client.cmd("HELP")[0] == 214  # the first reply on the TLS channel is to HELP
    assert client.cmd(f"MAIL FROM:<{ALICE}>") == (503, "5.5.1 Send HELO or EHLO first")
    assert client.cmd(f"RCPT TO:<{BOB}>")[0] == 503


# ---- STARTTLS ------------------------------------------------------------------------------


def test_after_starttls_the_session_starts_over(server: Server) -> None:
    with server.raw(server.submission_port) as client:
        code, text = client.cmd("EHLO before.example.org")
        assert "STARTTLS" in keywords(text) and "AUTH" not in keywords(text)
        assert client.cmd("STARTTLS") == (220, "2.0.0 Ready to start TLS")
        start_tls(client)
        forgets_everything(client)
        code, text = client.cmd("EHLO after.example.org")
        assert code == 250
        assert "STARTTLS" not in keywords(text) and "AUTH" in keywords(text)
        assert client.cmd("STARTTLS")[0] == 503
        assert client.cmd(AUTH_PLAIN)[0] == 235
        assert client.cmd(f"MAIL FROM:<{ALICE}>")[0] == 250


INJECTIONS = [
    b"STARTTLS\r\nRSET\r\n",
    b"STARTTLS\r\n" + AUTH_PLAIN.encode() + b"\r\n",
    b"STARTTLS\r\nMAIL FROM:<x@example.org>\r\n",
]


@pytest.mark.parametrize("listener", ["smtp", "submission"])
def test_commands_pipelined_after_starttls_never_run(server: Server, listener: str) -> None:
    port = server.smtp_port if listener == "smtp" else server.submission_port
    outcomes = []
    for payload in INJECTIONS:
        with server.raw(port) as client:
            client.send(payload)  # one write: STARTTLS and the injection in one segment
            code, text = client.reply()
            if code == 554:  # refused before TLS: the session ends at once
                assert client.at_eof(), client.buffer
                outcomes.append("554")
                continue
            # Or the injected bytes were dropped: TLS, then nothing of them shows up.
            assert code == 220, (payload, code, text)
            start_tls(client)
            forgets_everything(client)
            outcomes.append("discarded")
    assert len(outcomes) == len(INJECTIONS)
    assert not server.events("auth") and not server.events("queued")
    with server.raw(port):  # still serving
        pass


@pytest.mark.parametrize("injected", [b"RSET\r\n", AUTH_PLAIN.encode() + b"\r\n",
                                      b"MAIL FROM:<x@example.org>\r\n"])
def test_plaintext_between_the_220_and_the_handshake_never_runs(server: Server,
                                                               injected: bytes) -> None:
    with server.raw(server.submission_port) as client:
        assert client.cmd("STARTTLS")[0] == 220
        client.send(injected)
        try:
            start_tls(client)
        except (ssl.SSLError, OSError):
            pass  # the server took the bytes for a broken handshake and hung up
        else:
            forgets_everything(client)
    server.wait_event("disconnect")
    assert not server.events("auth") and not server.events("queued")
    with server.raw(server.submission_port) as client:  # still serving
        assert client.cmd("STARTTLS")[0] == 220
        start_tls(client)
        assert client.cmd("EHLO client.example.org")[0] == 250


# ---- implicit TLS (465) ----------------------------------------------------------------------


def test_plaintext_client_on_465_is_dropped(server: Server) -> None:
    with socket.create_connection(("127.0.0.1", server.submissions_port), timeout=10) as sock:
        sock.sendall(b"EHLO client.example.org\r\n")
        received = b""
        while chunk := sock.recv(65536):  # a TLS alert at most, then EOF
            received += chunk
        assert b"220" not in received and b"250" not in received
    with smtplib.SMTP_SSL("127.0.0.1", server.submissions_port, timeout=10,
                          context=client_context()) as client:  # still serving
        assert client.ehlo()[0] == 250
        assert client.login(ALICE, PASSWORD)[0] == 235
    assert server.proc is not None and server.proc.poll() is None
    assert not server.events("queued")
    assert not [e for e in server.log_lines if e.get("level") in ("error", "critical")]


# ---- certificate reload (SIGHUP) ---------------------------------------------------------------


def certificate(name: str, kind: str = "ec") -> tuple[bytes, bytes]:
    """A self-signed certificate for ``name`` and its key, both PEM."""
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey = (
        ec.generate_private_key(ec.SECP256R1()) if kind == "ec"
        else rsa.generate_private_key(public_exponent=65537, key_size=2048))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .sign(key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


def install(path: Path, data: bytes) -> None:
    """Replace a file atomically, as a careful renewal tool does."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def peer_name(sock: socket.socket) -> str:
    assert isinstance(sock, ssl.SSLSocket)
    der = sock.getpeercert(binary_form=True)
    assert der is not None
    [attr] = x509.load_der_x509_certificate(der).subject.get_attributes_for_oid(
        NameOID.COMMON_NAME)
    return str(attr.value)


def served_name(server: Server, port: int, ctx: ssl.SSLContext | None = None) -> str:
    """The certificate a new connection sees, on 465 or through STARTTLS on 587."""
    with server.raw(port, ehlo=None) as client:
        if port == server.submission_port:
            assert client.reply()[0] == 220
            assert client.cmd("EHLO client.example.org")[0] == 250
            assert client.cmd("STARTTLS")[0] == 220
        start_tls(client, ctx)
        return peer_name(client.sock)


@pytest.fixture
def own_cert(tmp_path: Path, make_server: Callable[..., Server],
             ) -> Callable[[str], tuple[Server, Path, Path]]:
    """A server started with ``[tls]`` pointing at a certificate for a.test of ``kind``."""

    def start(kind: str) -> tuple[Server, Path, Path]:
        cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
        cert, key = certificate("a.test", kind)
        install(cert_path, cert)
        install(key_path, key)
        srv = make_server(f'[tls]\ncert = "{cert_path}"\nkey = "{key_path}"\n')
        srv.add_user(ALICE)
        srv.start()
        assert served_name(srv, srv.submissions_port) == "a.test"
        return srv, cert_path, key_path

    return start


def reload(server: Server, count: int) -> dict[str, object]:
    assert server.proc is not None
    server.proc.send_signal(signal.SIGHUP)
    return server.wait_event("tls_reload", count)[-1]


def test_sighup_reloads_the_certificate_and_open_sessions_go_on(
        own_cert: Callable[[str], tuple[Server, Path, Path]]) -> None:
    srv, cert_path, key_path = own_cert("ec")
    with srv.raw(srv.submissions_port, ehlo=None) as old:
        start_tls(old)
        assert old.reply()[0] == 220 and old.cmd("EHLO old.example.org")[0] == 250
        cert, key = certificate("b.test")
        install(key_path, key)
        install(cert_path, cert)
        assert reload(srv, 1)["ok"] is True
        assert served_name(srv, srv.submissions_port) == "b.test"
        assert served_name(srv, srv.submission_port) == "b.test"
        # The session opened before the reload still works, on its old certificate.
        assert peer_name(old.sock) == "a.test"
        assert old.cmd(AUTH_PLAIN)[0] == 235
        assert old.cmd(f"MAIL FROM:<{ALICE}>")[0] == 250
        assert old.cmd(f"RCPT TO:<{ALICE}>")[0] == 250
        assert old.cmd("DATA")[0] == 354
        old.send(b"Subject: across a reload\r\n\r\nstill here\r\n.\r\n")
        assert old.reply()[0] == 250
    [path] = srv.wait_messages(ALICE, 1)
    assert "still here" in path.read_text()


def test_a_bad_pair_on_reload_keeps_the_old_certificate(
        own_cert: Callable[[str], tuple[Server, Path, Path]]) -> None:
    srv, cert_path, key_path = own_cert("ec")
    # A renewal caught half-way: the new certificate is in place, its key not yet.
    cert, _key = certificate("b.test")
    install(cert_path, cert)
    event = reload(srv, 1)
    assert event["ok"] is False and event["level"] == "error"
    assert served_name(srv, srv.submissions_port) == "a.test"
    assert served_name(srv, srv.submission_port) == "a.test"
    install(cert_path, b"not a certificate\n")
    assert reload(srv, 2)["ok"] is False
    assert served_name(srv, srv.submissions_port) == "a.test"


def test_reload_to_another_key_type_retires_the_old_certificate(
        own_cert: Callable[[str], tuple[Server, Path, Path]]) -> None:
    srv, cert_path, key_path = own_cert("rsa")
    cert, key = certificate("b.test", "ec")
    install(key_path, key)
    install(cert_path, cert)
    assert reload(srv, 1)["ok"] is True
    assert served_name(srv, srv.submissions_port) == "b.test"
    # A client that can only take an RSA certificate must not be shown the retired one.
    rsa_only = client_context()
    rsa_only.maximum_version = ssl.TLSVersion.TLSv1_2
    rsa_only.set_ciphers("ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES256-GCM-SHA384")
    for port in (srv.submissions_port, srv.submission_port):
        try:
            name = served_name(srv, port, rsa_only)
        except (ssl.SSLError, ConnectionError):
            continue  # no certificate it can use: refusing is right
        assert name == "b.test"


def test_sni_picks_the_certificate_for_the_name_asked(
        tmp_path: Path, make_server: Callable[..., Server]) -> None:
    paths = {}
    for name in ("a.test", "b.test"):
        cert, key = certificate(name)
        paths[name] = (tmp_path / f"{name}.crt", tmp_path / f"{name}.key")
        install(paths[name][0], cert)
        install(paths[name][1], key)
    srv = make_server(f'[tls]\ncert = "{paths["a.test"][0]}"\nkey = "{paths["a.test"][1]}"\n'
                      f'[tls.sni."B.test"]\ncert = "{paths["b.test"][0]}"\n'
                      f'key = "{paths["b.test"][1]}"\n')
    srv.start()

    def seen(server_hostname: str | None) -> str:
        ctx = client_context()
        with srv.raw(srv.submissions_port, ehlo=None) as client:
            client.sock = ctx.wrap_socket(client.sock, server_hostname=server_hostname)
            return peer_name(client.sock)

    assert seen("b.test") == "b.test"
    assert seen("a.test") == "a.test"
    assert seen("other.test") == "a.test"  # unknown names get the default certificate
    assert seen(None) == "a.test"


def test_a_client_that_never_starts_the_handshake_is_dropped_after_the_timeout(
        make_server: Callable[..., Server]) -> None:
    srv = make_server("[limits]\ntls_handshake_timeout = 1\n")
    srv.start()
    with socket.create_connection(("127.0.0.1", srv.submissions_port), timeout=10) as sock:
        started = time.monotonic()
        assert sock.recv(65536) == b""  # silence, then the server hangs up (no TimeoutError)
        waited = time.monotonic() - started
    assert 0.5 < waited < 8, waited  # the default would hold it for 30 s
    assert srv.proc is not None and srv.proc.poll() is None
