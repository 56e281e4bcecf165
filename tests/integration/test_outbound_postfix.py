"""Outbound delivery to a real Postfix: a private instance receiving for pf.test.

The fixture runs a :class:`PrivatePostfix` as root (its own config, queue, data and mail
directories in a temporary directory) with smtpd on 127.0.0.4:PORT offering STARTTLS (a
self-signed certificate), virtual(8) delivering every pf.test recipient to one shared Maildir,
and its log in a file (``maillog_file``) so that the test can count ``connect from`` lines.
A sending postwright finds the instance by MX through a :class:`DnsServer` and ``[delivery]
smtp_port``.

Covers: delivery by MX to another implementation (RFC 5321 section 5.1), opportunistic
STARTTLS (RFC 3207, RFC 7435), connection reuse across messages, a 550 at RCPT bouncing one
recipient with an RFC 3464 report while the other is delivered (RFC 5321 section 4.2.1).
Not here: anything the postwright-to-postwright and smtp-sink tests already pin down
(``test_outbound.py``). Skips when Postfix is missing, we are not root, or it won't start.
"""

from __future__ import annotations

import datetime
import email
import email.message
import email.policy
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from postwright.testing.dnsserver import DnsServer, Records
from postwright.testing.postfix import PostfixError, PrivatePostfix

if TYPE_CHECKING:
    from conftest import Server

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("no_server_errors")]

ALICE = "alice@example.test"  # the local sender; bounces come back to her Maildir
POSTWRIGHT = Path(sys.executable).parent / "postwright"
PF_IP = "127.0.0.4"
DOMAIN = "pf.test"

MakeServer = Callable[..., "Server"]


def _self_signed(cert: Path, key: Path) -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"mx.{DOMAIN}")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                   .public_key(private.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.SubjectAlternativeName([x509.DNSName(f"mx.{DOMAIN}")]),
                                  critical=False)
                   .sign(private, hashes.SHA256()))
    key.write_bytes(private.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    key.chmod(0o600)
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((PF_IP, 0))
        return int(s.getsockname()[1])


class Postfix(PrivatePostfix):
    """A private Postfix instance under ``root`` receiving for pf.test on PF_IP:port, with
    STARTTLS and one rejected recipient (``bad@pf.test``)."""

    def __init__(self, root: Path, port: int) -> None:
        etc = root / "etc"
        super().__init__(root, port, domain=DOMAIN, hostname=f"mx.{DOMAIN}", host=PF_IP,
                         main_cf_extra=f"""\
smtpd_peername_lookup = no
smtpd_recipient_restrictions = check_recipient_access texthash:{etc}/access,
    permit_mynetworks, reject_unauth_destination
virtual_mailbox_maps = static:{DOMAIN}/inbox/
smtpd_tls_cert_file = {etc}/cert.pem
smtpd_tls_key_file = {etc}/key.pem
smtpd_tls_security_level = may
smtpd_tls_received_header = yes
notify_classes =
""", master_cf_extra="tlsmgr unix - - n 1000? 1 tlsmgr\n")
        self.maildir = self.mail / DOMAIN / "inbox" / "new"

    def configure(self) -> None:
        super().configure()
        _self_signed(self.etc / "cert.pem", self.etc / "key.pem")
        (self.etc / "access").write_text(f"bad@{DOMAIN} 550 5.1.1 no such user here\n")

    def connections(self) -> int:
        return len(re.findall(r"postfix/smtpd\[\d+\]: connect from ", self.log_text()))

    def messages(self) -> list[Path]:
        return sorted(self.maildir.iterdir()) if self.maildir.exists() else []

    def wait_messages(self, count: int, timeout: float = 20.0) -> list[Path]:
        deadline = time.monotonic() + timeout
        while len(found := self.messages()) < count:
            assert time.monotonic() < deadline, \
                f"{len(found)} of {count} messages; log:\n{self.log_text()}"
            time.sleep(0.05)
        return found


@pytest.fixture
def postfix() -> Iterator[Postfix]:
    if why := PrivatePostfix.unavailable():
        pytest.skip(why)
    # Not pytest's tmp_path: its parent is mode 0700, closed to Postfix's daemons.
    root = Path(tempfile.mkdtemp(prefix="pw-postfix-"))
    instance = Postfix(root, _free_port())
    try:
        try:
            instance.start()
        except PostfixError as exc:
            pytest.skip(str(exc))
        yield instance
    finally:
        instance.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def dns() -> Iterator[DnsServer]:
    records: Records = {DOMAIN: {"MX": [f"10 mx.{DOMAIN}."]}, f"mx.{DOMAIN}": {"A": PF_IP}}
    with DnsServer(records) as server:
        yield server
    assert server.errors == []


def make_sender(make_server: MakeServer, dns: DnsServer, port: int) -> Server:
    srv = make_server(
        f'[dns]\nnameservers = ["{dns.address}"]\ntimeout = 2\n'
        f"[delivery]\nsmtp_port = {port}\nretry_first = 1\nretry_max = 2\n"
        "per_destination = 1\nconnection_cache_time = 10\n",
        name="sender", domains=("example.test",), aliases={})
    srv.start()
    return srv


def start_send(srv: Server, recipients: list[str], subject: str,
               body: bytes) -> subprocess.Popen[bytes]:
    args = [str(POSTWRIGHT), "send", "--from", ALICE, "--subject", subject]
    for rcpt in recipients:
        args += ["--to", rcpt]
    proc = subprocess.Popen([*args, "--config", str(srv.config)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdin is not None
    proc.stdin.write(body)
    proc.stdin.close()
    return proc


def finish_send(proc: subprocess.Popen[bytes]) -> str:
    proc.wait(timeout=30)
    assert proc.stdout is not None and proc.stderr is not None
    out, err = proc.stdout.read(), proc.stderr.read()
    proc.stdout.close()
    proc.stderr.close()
    assert proc.returncode == 0, err
    found = re.search(rb"queued as (\S+)", out)
    assert found, out
    return found.group(1).decode()


def parse(path: Path) -> email.message.Message:
    return email.message_from_bytes(path.read_bytes(), policy=email.policy.compat32)


def unfolded(msg: email.message.Message) -> list[str]:
    return [" ".join(str(h).split()) for h in msg.get_all("Received") or []]


def subparts(msg: email.message.Message) -> list[email.message.Message]:
    """The parts of a multipart, or the field blocks of a message/delivery-status."""
    payload = msg.get_payload()
    assert isinstance(payload, list), payload
    parts = [part for part in payload if isinstance(part, email.message.Message)]
    assert len(parts) == len(payload), payload
    return parts


def wait_empty(srv: Server, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while (left := srv.queue_list()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert left == [], left


def test_five_messages_to_postfix(make_server: MakeServer, dns: DnsServer,
                                  postfix: Postfix) -> None:
    sender = make_sender(make_server, dns, postfix.port)
    bodies = {f"m{i}@{DOMAIN}": f"line one of {i}\n.leading dot\n\nlast {i}\n".encode()
              for i in range(5)}
    procs = [start_send(sender, [rcpt], f"to postfix {rcpt}", body)
             for rcpt, body in bodies.items()]
    ids = [finish_send(proc) for proc in procs]
    paths = postfix.wait_messages(5)
    assert len(paths) == 5
    seen = set()
    for path in paths:
        msg = parse(path)
        rcpt = str(msg["Delivered-To"])
        seen.add(rcpt)
        assert msg["Subject"] == f"to postfix {rcpt}"
        payload = msg.get_payload(decode=True)
        assert isinstance(payload, bytes)
        assert payload.replace(b"\r\n", b"\n") == bodies[rcpt]
        received = unfolded(msg)
        theirs, ours = received[0], received[1:]
        assert f"by mx.{DOMAIN} (Postfix) with ESMTPS" in theirs, theirs
        assert "using TLS" in theirs, theirs
        assert "from mx.example.test" in theirs, theirs
        assert any("by mx.example.test (postwright)" in h for h in ours), received
    assert seen == set(bodies)
    assert len(set(ids)) == 5
    wait_empty(sender)
    connections = postfix.connections()
    assert 1 <= connections < 5, postfix.log_text()
    assert len(sender.events("delivered")) == 5
    assert sender.messages(ALICE) == []  # no bounce


def test_rejected_recipient_bounces_the_other_is_delivered(
        make_server: MakeServer, dns: DnsServer, postfix: Postfix) -> None:
    sender = make_sender(make_server, dns, postfix.port)
    qid = finish_send(start_send(sender, [f"good@{DOMAIN}", f"bad@{DOMAIN}"], "half",
                                 b"for both\n"))
    [path] = postfix.wait_messages(1)
    delivered = parse(path)
    assert delivered["Delivered-To"] == f"good@{DOMAIN}" and delivered["Subject"] == "half"
    [bounce] = sender.wait_messages(ALICE, 1)
    raw = bounce.read_bytes()
    assert raw.startswith(b"Return-Path: <>\n"), raw[:200]
    msg = parse(bounce)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    assert msg["Auto-Submitted"] == "auto-replied"
    parts = subparts(msg)
    assert [p.get_content_type() for p in parts] == [
        "text/plain", "message/delivery-status", "message/rfc822"]
    per_message, rcpt = subparts(parts[1])  # one recipient reported, not both
    assert per_message["Reporting-MTA"] == "dns; mx.example.test"
    assert per_message["X-Postwright-Queue-ID"] == qid
    assert rcpt["Final-Recipient"] == f"rfc822; bad@{DOMAIN}"
    assert rcpt["Action"] == "failed"
    assert rcpt["Status"] == "5.1.1"
    assert rcpt["Remote-MTA"] == f"dns; mx.{DOMAIN}"
    diagnostic = " ".join(str(rcpt["Diagnostic-Code"]).split())
    assert diagnostic.startswith("smtp; 550 5.1.1"), diagnostic
    assert "no such user here" in diagnostic, diagnostic
    assert "Subject: half" in str(parts[2])
    wait_empty(sender)
    assert len(postfix.messages()) == 1
