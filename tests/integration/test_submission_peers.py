"""Real submission clients against a real server: swaks and msmtp over STARTTLS and 465.

Clients written by others check what our own cannot: their TLS stacks (Perl's IO::Socket::SSL,
GnuTLS), their SASL code (msmtp's SCRAM-SHA-256 comes from GNU SASL), and their reading of our
EHLO, 334 challenges and 235/535 replies. Each test checks the peer's exit status and what
lands in Maildir: one message, with ESMTPSA and the TLS version and cipher in our Received.
Covers RFC 6409 and RFC 4954 (AUTH PLAIN, LOGIN, SCRAM-SHA-256 per RFC 7677), RFC 3207
(STARTTLS on 587) and RFC 8314 (implicit TLS on 465).
Not here: raw-byte and policy cases (test_submission.py, test_tls.py).
"""

from __future__ import annotations

import re
import secrets
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conftest import Server

pytestmark = pytest.mark.timeout(60)

ALICE = "alice@example.test"
BOB = "bob@example.test"
PASSWORD = "secret-pass"
SWAKS = shutil.which("swaks") or "/usr/bin/swaks"
MSMTP = shutil.which("msmtp") or "/usr/bin/msmtp"
_TLS = re.compile(r"\(TLSv1\.[23] [A-Z0-9_-]+\)")


def need(program: str) -> None:
    if not Path(program).exists():
        pytest.skip(f"{program} is not installed")


@pytest.fixture
def sub(make_server: Callable[..., Server]) -> Server:
    """Alice and bob, and failure delays short enough for a test."""
    srv = make_server("[submission]\nauth_fail_delay = 0.01\nauth_fail_delay_max = 0.02\n")
    srv.add_user(ALICE)
    srv.add_user(BOB)
    srv.start()
    return srv


def delivered_once(server: Server, token: str) -> str:
    """The one file in bob's mailbox holding ``token``: checked trace, returned text."""
    [path] = server.wait_messages(BOB, 1)
    text = path.read_text()
    assert token in text
    assert text.startswith(f"Return-Path: <{ALICE}>\n")
    head = re.sub(r"\n[ \t]+", " ", text.split("\n\n", 1)[0])
    [received] = [f for f in head.split("\n") if f.startswith("Received:")
                  and "(postwright)" in f]
    assert " with ESMTPSA " in received, received
    assert _TLS.search(received), received
    return text


def swaks(server: Server, port: int, *args: str,
          password: str = PASSWORD) -> subprocess.CompletedProcess[str]:
    need(SWAKS)
    return subprocess.run(
        [SWAKS, "--server", f"127.0.0.1:{port}", "--helo", "swaks.example.org",
         "--from", ALICE, "--to", BOB, "--auth-user", ALICE, "--auth-password", password,
         "--timeout", "20", *args],
        capture_output=True, timeout=60, text=True)


@pytest.mark.parametrize("tls,mechanism", [("--tls", "PLAIN"), ("--tls", "LOGIN"),
                                           ("--tlsc", "PLAIN")])
def test_swaks(sub: Server, tls: str, mechanism: str) -> None:
    token = secrets.token_hex(8)
    port = sub.submission_port if tls == "--tls" else sub.submissions_port
    done = swaks(sub, port, tls, "--auth", mechanism, "--header", f"Subject: swaks {token}")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "235 2.7.0" in done.stdout
    delivered_once(sub, token)
    assert sub.wait_event("auth")[0]["account"] == ALICE


def test_swaks_wrong_password_is_refused_and_nothing_is_sent(sub: Server) -> None:
    done = swaks(sub, sub.submission_port, "--tls", "--auth", "PLAIN", password="wrong-pass")
    assert done.returncode != 0
    assert "535 5.7.8" in done.stdout, done.stdout
    sub.wait_event("auth_failed")
    assert not sub.events("queued") and sub.messages(BOB) == []


def msmtp(server: Server, tmp: Path, *, implicit: bool, auth: str,
          password: str = PASSWORD) -> tuple[subprocess.CompletedProcess[str], str]:
    """Send one message with msmtp; the run and the message's token."""
    need(MSMTP)
    port = server.submissions_port if implicit else server.submission_port
    rc = tmp / "msmtprc"
    rc.write_text(
        "defaults\n"
        "tls on\n"
        f"tls_starttls {'off' if implicit else 'on'}\n"
        "tls_certcheck off\n"
        "timeout 20\n"
        "account default\n"
        "host 127.0.0.1\n"
        f"port {port}\n"
        "domain msmtp.example.org\n"
        f"from {ALICE}\n"
        f"auth {auth}\n"
        f"user {ALICE}\n"
        f"password {password}\n")
    rc.chmod(0o600)  # msmtp refuses a password in a file others can read
    token = secrets.token_hex(8)
    body = (f"From: <{ALICE}>\nTo: <{BOB}>\nSubject: msmtp {token}\n\n"
            f"sent by msmtp {token}\n")
    done = subprocess.run([MSMTP, "-C", str(rc), "-a", "default", BOB], input=body,
                          capture_output=True, timeout=60, text=True)
    return done, token


@pytest.mark.parametrize("implicit,auth", [(False, "plain"), (True, "login"),
                                           (False, "scram-sha-256"), (True, "scram-sha-256")])
def test_msmtp(sub: Server, tmp_path: Path, implicit: bool, auth: str) -> None:
    done, token = msmtp(sub, tmp_path, implicit=implicit, auth=auth)
    if done.returncode != 0 and "not supported" in done.stderr:
        pytest.skip(f"this msmtp build cannot do {auth}: {done.stderr}")
    assert done.returncode == 0, done.stdout + done.stderr
    delivered_once(sub, token)
    assert sub.wait_event("auth")[0]["account"] == ALICE


def test_msmtp_scram_wrong_password_fails(sub: Server, tmp_path: Path) -> None:
    done, _token = msmtp(sub, tmp_path, implicit=True, auth="scram-sha-256",
                         password="wrong-pass")
    assert done.returncode != 0
    assert "535" in done.stderr, done.stderr
    sub.wait_event("auth_failed")
    assert not sub.events("queued") and sub.messages(BOB) == []
