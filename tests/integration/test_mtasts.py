"""MTA-STS end to end (RFC 8461): a sending postwright, a policy host, a receiving postwright.

A test CA (made with ``cryptography``) signs the certificates of the policy host
``mta-sts.remote.test`` (Python's ``http.server`` over TLS in a thread on STS_IP) and, in
most cases, of the receiver's MX name ``mx.remote.test``; the sender trusts it through
``[delivery] mta_sts_ca_file``. DNS comes from a loopback :class:`DnsServer`.

Covers: enforce with a valid certificate (delivered), enforce with an MX outside the policy
(4.7.5, nothing sent), enforce with a certificate from another issuer (4.7.5, nothing
sent), testing with a bad certificate (delivered, with a warning), the policy fetched once
while its id stays the same; the fetch itself: no redirects, 64 KB at most, a verified
certificate.
"""

from __future__ import annotations

import asyncio
import datetime
import http.server
import json
import re
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from postwright.net.mtasts_fetch import PolicyFetcher, verifying_context
from postwright.policy.mtasts import PolicyError
from postwright.testing.dnsserver import DnsServer, Records

if TYPE_CHECKING:
    from conftest import Server

pytestmark = [pytest.mark.timeout(30), pytest.mark.usefixtures("no_server_errors")]

MakeServer = Callable[..., "Server"]
ALICE = "alice@example.test"
RECEIVER_IP = "127.0.0.1"
STS_IP = "127.0.0.4"
ENFORCE = "version: STSv1\nmode: enforce\nmx: mx.remote.test\nmax_age: 86400\n"


# ---- a test CA ----------------------------------------------------------------------------

def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


class Ca:
    def __init__(self, directory: Path, cn: str = "postwright test CA") -> None:
        self.dir = directory
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn))
            .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                         False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()),
                           critical=False)
            .sign(self.key, hashes.SHA256()))
        self.file = directory / "ca.pem"
        self.file.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, host: str) -> tuple[Path, Path]:
        """A server certificate for ``host``: (cert file, key file)."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder().subject_name(_name(host))
            .issuer_name(self.cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256()))
        cert_file, key_file = self.dir / f"{host}.pem", self.dir / f"{host}.key"
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        return cert_file, key_file


# ---- the policy host ----------------------------------------------------------------------

class PolicyHost:
    """HTTPS on STS_IP serving ``policy`` at /.well-known/mta-sts.txt; counts requests."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.policy = ENFORCE
        self.status = 200
        self.requests: list[str] = []
        host = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                host.requests.append(self.path)
                body = host.policy.encode()
                if self.path != "/.well-known/mta-sts.txt":
                    self.send_error(404)
                    return
                self.send_response(host.status)
                if host.status != 200:
                    self.send_header("Location", "https://elsewhere.test/")
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer((STS_IP, 0), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.port = int(self.httpd.server_address[1])
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


# ---- fixtures -----------------------------------------------------------------------------

@pytest.fixture
def ca(tmp_path: Path) -> Ca:
    directory = tmp_path / "ca"
    directory.mkdir()
    return Ca(directory)


@pytest.fixture
def policy_host(ca: Ca) -> Iterator[PolicyHost]:
    host = PolicyHost(*ca.issue("mta-sts.remote.test"))
    yield host
    host.close()


@pytest.fixture
def dns() -> Iterator[DnsServer]:
    records: Records = {
        "remote.test": {"MX": ["10 mx.remote.test."]},
        "mx.remote.test": {"A": RECEIVER_IP},
        "_mta-sts.remote.test": {"TXT": "v=STSv1; id=20261129T1;"},
        "mta-sts.remote.test": {"A": STS_IP},
    }
    with DnsServer(records) as server:
        yield server
    assert server.errors == []


@pytest.fixture
def port() -> int:
    with socket.socket() as s:
        s.bind((RECEIVER_IP, 0))
        return int(s.getsockname()[1])


def make_sender(make_server: MakeServer, dns: DnsServer, port: int, ca: Ca,
                policy_host: PolicyHost) -> Server:
    settings = {"smtp_port": port, "retry_first": 30, "retry_max": 30,
                "mta_sts_ca_file": str(ca.file), "mta_sts_port": policy_host.port}
    srv = make_server(
        f"[dns]\nnameservers = {json.dumps([dns.address])}\ntimeout = 2\n[delivery]\n"
        + "".join(f"{k} = {json.dumps(v)}\n" for k, v in settings.items()),
        name="sender", domains=("example.test",), aliases={})
    srv.start()
    return srv


def make_receiver(make_server: MakeServer, port: int, cert: tuple[Path, Path] | None
                  ) -> Server:
    """A postwright for remote.test on RECEIVER_IP:port; without ``cert`` it makes its own
    self-signed one (an issuer the sender does not trust)."""
    extra = f'[tls]\ncert = "{cert[0]}"\nkey = "{cert[1]}"\n' if cert else ""
    srv = make_server(extra, name="receiver", domains=("remote.test",),
                      wildcard=("remote.test",), aliases={})
    text = srv.config.read_text()
    listen = f'smtp = ["127.0.0.1:{srv.smtp_port}"]'
    srv.config.write_text(text.replace(listen, f'smtp = ["{RECEIVER_IP}:{port}"]')
                          .replace('hostname = "mx.example.test"', 'hostname = "mx.remote.test"'))
    srv.smtp_port = port
    srv.start()
    return srv


def send(srv: Server, rcpt: str, subject: str = "sts") -> str:
    out = srv.cli("send", "--from", ALICE, "--to", rcpt, "--subject", subject,
                  input=b"hello\n").stdout.decode()
    found = re.search(r"queued as (\S+)", out)
    assert found, out
    return found.group(1)


def for_rcpt(address: str) -> Callable[[dict[str, object]], bool]:
    return lambda e: e.get("recipient") == address


# ---- cases --------------------------------------------------------------------------------

def test_enforce_with_a_valid_certificate_delivers(
        make_server: MakeServer, dns: DnsServer, port: int, ca: Ca,
        policy_host: PolicyHost) -> None:
    receiver = make_receiver(make_server, port, ca.issue("mx.remote.test"))
    sender = make_sender(make_server, dns, port, ca, policy_host)
    send(sender, "bob@remote.test")
    [path] = receiver.wait_messages("bob@remote.test", 1)
    assert "with ESMTPS" in " ".join(path.read_text().split())
    sender.wait_event("delivered", where=for_rcpt("bob@remote.test"))
    send(sender, "carol@remote.test")  # same policy id: no second fetch
    receiver.wait_messages("carol@remote.test", 1)
    assert policy_host.requests == ["/.well-known/mta-sts.txt"]
    assert sender.events("mta_sts") == []


def test_enforce_refuses_an_mx_outside_the_policy(
        make_server: MakeServer, dns: DnsServer, port: int, ca: Ca,
        policy_host: PolicyHost) -> None:
    policy_host.policy = ENFORCE.replace("mx: mx.remote.test", "mx: *.elsewhere.test")
    receiver = make_receiver(make_server, port, ca.issue("mx.remote.test"))
    sender = make_sender(make_server, dns, port, ca, policy_host)
    send(sender, "bob@remote.test")
    [deferred] = sender.wait_event("deferred", where=for_rcpt("bob@remote.test"))
    assert str(deferred["reply"]).startswith("4.7.5 MTA-STS policy of remote.test")
    assert receiver.events("connect") == []
    assert receiver.messages("bob@remote.test") == []


def test_enforce_refuses_a_certificate_of_another_issuer(
        make_server: MakeServer, dns: DnsServer, port: int, ca: Ca,
        policy_host: PolicyHost) -> None:
    receiver = make_receiver(make_server, port, None)  # self-signed
    sender = make_sender(make_server, dns, port, ca, policy_host)
    send(sender, "bob@remote.test")
    [deferred] = sender.wait_event("deferred", where=for_rcpt("bob@remote.test"))
    reply = str(deferred["reply"])
    assert reply.startswith("4.7.5 MTA-STS policy of remote.test") and "certificate" in reply
    assert receiver.messages("bob@remote.test") == []
    assert not [e for e in receiver.log_lines if str(e.get("event", "")).startswith("queued")]
    [entry] = sender.queue_list()
    assert entry["recipients"][0]["status"] == "deferred"


def test_testing_mode_delivers_and_warns(
        make_server: MakeServer, dns: DnsServer, port: int, ca: Ca,
        policy_host: PolicyHost) -> None:
    policy_host.policy = ENFORCE.replace("enforce", "testing")
    receiver = make_receiver(make_server, port, None)  # self-signed
    sender = make_sender(make_server, dns, port, ca, policy_host)
    send(sender, "bob@remote.test")
    receiver.wait_messages("bob@remote.test", 1)
    sender.wait_event("delivered", where=for_rcpt("bob@remote.test"))
    [warning] = sender.wait_event("mta_sts")
    assert warning["domain"] == "remote.test" and warning["mode"] == "testing"
    assert "certificate" in str(warning["reason"])


# ---- the fetch itself (RFC 8461 section 3.3) ----------------------------------------------

class _Addresses:
    def __init__(self, address: str) -> None:
        self.address = address

    async def addresses(self, host: str) -> list[str]:
        return [self.address]


@pytest.mark.parametrize("case", ["ok", "redirect", "too large", "untrusted"])
def test_fetch(ca: Ca, policy_host: PolicyHost, tmp_path: Path, case: str) -> None:
    trusted = ca.file
    if case == "redirect":
        policy_host.status = 301
    elif case == "too large":
        policy_host.policy = ENFORCE + "x: " + "y" * 70000 + "\n"
    elif case == "untrusted":
        other = tmp_path / "other"
        other.mkdir()
        trusted = Ca(other, "another CA").file
    fetch = PolicyFetcher(_Addresses(STS_IP), verifying_context(str(trusted)),
                          port=policy_host.port, timeout=5)
    if case == "ok":
        assert asyncio.run(fetch("Remote.Test")) == ENFORCE
    else:
        with pytest.raises(PolicyError):
            asyncio.run(fetch("remote.test"))
