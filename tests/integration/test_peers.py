"""Real SMTP clients against a real server: swaks and Postfix's smtp-source.

Peers written by others find what our own clients cannot: their PIPELINING timing, their
dot-stuffing, STARTTLS as a real client does it (RFC 3207), many sessions in parallel, many
messages per session, many recipients per transaction. Each test checks the exit status of
the peer and what lands in Maildir: every message once, none twice, bodies intact.
Not here: raw-byte edge cases (test_receive.py) and load under crashes (test_crash.py).
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conftest import Server

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("no_server_errors")]

ALICE = "alice@example.test"
SWAKS = shutil.which("swaks") or "/usr/bin/swaks"
SMTP_SOURCE = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
_RECEIVED_ID = re.compile(rb"\(postwright\) with \w+ id (\w+)")


def need(program: str) -> None:
    if not Path(program).exists():
        pytest.skip(f"{program} is not installed")


def swaks(server: Server, *args: str) -> subprocess.CompletedProcess[str]:
    need(SWAKS)
    done = subprocess.run(
        [SWAKS, "--server", "127.0.0.1", "--port", str(server.smtp_port),
         "--helo", "swaks.example.org", "--from", "sender@example.org", "--to", ALICE,
         "--timeout", "20", *args],
        capture_output=True, timeout=60, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def smtp_source(server: Server, *args: str) -> subprocess.CompletedProcess[str]:
    need(SMTP_SOURCE)
    done = subprocess.run([SMTP_SOURCE, *args, f"127.0.0.1:{server.smtp_port}"],
                          capture_output=True, timeout=60, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "fatal" not in done.stderr, done.stderr
    return done


def queue_ids(files: list[Path]) -> list[bytes]:
    ids = []
    for path in files:
        found = _RECEIVED_ID.search(path.read_bytes())
        assert found, path
        ids.append(found.group(1))
    return ids


def only_one_copy_each(server: Server, address: str, count: int) -> list[Path]:
    """Exactly ``count`` files, each from a different queued message, all queued once."""
    files = server.wait_messages(address, count)
    server.wait_event("delivered", count, where=lambda e: e.get("recipient") == address)
    files = server.messages(address)
    assert len(files) == count
    ids = queue_ids(files)
    assert len(set(ids)) == count  # no message delivered twice
    queued = {str(e["id"]).encode() for e in server.events("queued")}
    assert set(ids) <= queued
    return files


def test_swaks_plain(server: Server) -> None:
    out = swaks(server, "--body", "plain body from swaks")
    assert "<-  250 2.0.0 Ok: queued as" in out.stdout
    [path] = only_one_copy_each(server, ALICE, 1)
    data = path.read_bytes()
    assert b"Received: from swaks.example.org ([127.0.0.1])" in data
    assert data.rstrip(b"\n").endswith(b"\n\nplain body from swaks")


def test_swaks_pipelining(server: Server) -> None:
    out = swaks(server, "--pipeline", "--body", "pipelined")
    # swaks sent MAIL, RCPT and DATA in one group before reading any reply
    assert re.search(r" -> MAIL FROM:.*\n -> RCPT TO:.*\n -> DATA\n<-  250", out.stdout), out
    [path] = only_one_copy_each(server, ALICE, 1)
    assert b"\n\npipelined\n" in path.read_bytes()


def test_swaks_one_megabyte_body(server: Server, tmp_path: Path) -> None:
    lines = [f"{n:07d} ".encode() + b"abcdefghij" * 7 for n in range(13000)]
    lines[5] = b".a line that swaks must dot-stuff"
    lines[6] = b".."
    body = b"\r\n".join(lines) + b"\r\n"
    assert len(body) > 1_000_000
    (tmp_path / "body.txt").write_bytes(body)
    swaks(server, "--protocol", "ESMTP", "--body", f"@{tmp_path / 'body.txt'}",
          "--suppress-data")
    [path] = only_one_copy_each(server, ALICE, 1)
    data = path.read_bytes()
    delivered = data[data.index(b"\n\n") + 2:]
    expected = body.replace(b"\r\n", b"\n")
    # swaks may add line ends of its own after the body; the body itself is untouched
    assert delivered.rstrip(b"\n") == expected.rstrip(b"\n")
    assert hashlib.sha256(delivered.rstrip(b"\n")).digest() == hashlib.sha256(
        expected.rstrip(b"\n")).digest()


def test_swaks_starttls(server: Server) -> None:
    out = swaks(server, "--tls", "--body", "over tls")
    assert "TLS started" in out.stdout
    [path] = only_one_copy_each(server, ALICE, 1)
    data = path.read_bytes()
    received = data.split(b"\n")[2:6]
    assert b" with ESMTPS id " in b" ".join(received), received
    assert b"(TLSv1." in data


def test_swaks_refused_recipient_fails_the_run(server: Server) -> None:
    need(SWAKS)
    done = subprocess.run([SWAKS, "--server", f"127.0.0.1:{server.smtp_port}",
                           "--from", "s@example.org", "--to", "nobody@example.test"],
                          capture_output=True, timeout=60, text=True)
    assert done.returncode != 0
    assert "<** 550 5.1.1" in done.stdout


def test_smtp_source_500_messages_in_10_sessions(server: Server) -> None:
    out = smtp_source(server, "-c", "-m", "500", "-s", "10", "-l", "2000",
                      "-f", "sender@example.org", "-t", ALICE)
    assert out.stdout.split()[-1] == "500"  # the running counter reached 500
    files = only_one_copy_each(server, ALICE, 500)
    message_ids = set()
    for path in files:
        found = re.search(rb"\nMessage-Id: (\S+)", path.read_bytes())
        assert found, path
        message_ids.add(found.group(1))
    assert len(message_ids) == 500
    sizes = {f.stat().st_size for f in files[:20]}
    assert min(sizes) > 2000
    assert len(server.events("queued")) == 500


def test_smtp_source_many_messages_per_session(server: Server) -> None:
    smtp_source(server, "-d", "-m", "200", "-s", "4", "-l", "500",
                "-f", "sender@example.org", "-t", ALICE)
    only_one_copy_each(server, ALICE, 200)
    sessions = server.events("connect")
    assert len(sessions) == 4  # -d: one connection per session, 50 messages each


def test_smtp_source_several_recipients_per_transaction(
        make_server: Callable[..., Server]) -> None:
    srv = make_server(wildcard=["other.test"])
    srv.start()
    smtp_source(srv, "-d", "-r", "3", "-m", "60", "-s", "3", "-f", "sender@example.org",
                "-t", "rcpt@other.test")
    names = ["2rcpt", "3rcpt", "rcpt"]  # smtp-source numbers all recipients but the first
    for name in names:
        only_one_copy_each(srv, f"{name}@other.test", 60)
    assert sorted(p.name for p in (srv.data / "mail" / "other.test").iterdir()) == names
    assert len(srv.events("queued")) == 60
