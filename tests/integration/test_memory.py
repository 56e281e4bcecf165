"""A 50 MB message goes through in bounded memory and arrives intact.

The test streams the body over a raw socket, generating it line by line and hashing it as it
goes (the test process never holds it whole either), and reads the server's peak resident
size from /proc/PID/status (VmHWM) against its idle size after a warm-up message. Then it
reads the delivered file back in pieces and compares length and SHA-256 of the body.
Covers the streaming duty of RFC 5321 section 4.5.3.1.7 (message size) with RFC 1870 SIZE.
Not here: the queue's own large-body tests (tests/queue).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conftest import Server

pytestmark = pytest.mark.usefixtures("no_server_errors")

ALICE = "alice@example.test"
TOTAL = 50 * 1024 * 1024
LINE = 1000  # octets with CRLF, the longest text line RFC 5321 allows
LIMIT_GROWTH = 20 * 1024 * 1024


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def body_lines(total: int) -> Iterator[bytes]:
    """``total`` octets of CRLF lines, each different, some starting with a dot."""
    filler = bytes(range(0x21, 0x7f)) * 11  # 1034 printable octets
    n = 0
    sent = 0
    while sent < total:
        head = b"." if n % 97 == 0 else b""  # dot-stuffing must be undone exactly
        text = head + f"{n:09d} ".encode()
        text += filler[n % 94: n % 94 + LINE - 2 - len(text)]
        line = text + b"\r\n"
        yield line
        sent += len(line)
        n += 1


@pytest.mark.timeout(120)
def test_fifty_megabytes_in_bounded_memory(make_server: Callable[..., Server]) -> None:
    srv = make_server("[limits]\nmax_message_size = 60000000\n")
    srv.add_user(ALICE)
    srv.start()
    srv.send("warm@example.org", [ALICE], b"Subject: warm-up\r\n\r\n" + b"w" * 300_000 + b"\r\n")
    srv.wait_messages(ALICE, 1)
    srv.wait_event("delivered")
    idle = status_kib(srv.pid, "VmRSS") * 1024

    samples: list[int] = []
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.05):
            try:
                samples.append(status_kib(srv.pid, "VmRSS") * 1024)
            except (OSError, AssertionError):
                return

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()

    header = b"Subject: big\r\nMessage-ID: <big@example.org>\r\n\r\n"
    digest = hashlib.sha256()
    body_size = 0
    with srv.raw(timeout=60) as client:
        assert client.cmd(f"MAIL FROM:<big@example.org> SIZE={TOTAL + len(header)}")[0] == 250
        assert client.cmd(f"RCPT TO:<{ALICE}>")[0] == 250
        assert client.cmd("DATA")[0] == 354
        client.send(header)
        batch: list[bytes] = []
        for line in body_lines(TOTAL):
            stuffed = b"." + line if line.startswith(b".") else line
            batch.append(stuffed)
            unix = line[:-2] + b"\n"
            digest.update(unix)
            body_size += len(unix)
            if len(batch) >= 1024:
                client.send(b"".join(batch))
                batch.clear()
        client.send(b"".join(batch) + b".\r\n")
        code, text = client.reply()
        assert code == 250, text
        qid = srv.queue_id(text)
        assert client.cmd("QUIT")[0] == 221
    srv.wait_event("delivered", where=lambda e: e.get("id") == qid, timeout=60)
    done.set()
    sampler.join(5)

    peak = status_kib(srv.pid, "VmHWM") * 1024
    growth = max(peak, *samples) - idle
    assert growth < LIMIT_GROWTH, f"server grew by {growth / 2**20:.1f} MiB over {idle / 2**20:.1f}"

    [path] = [p for p in srv.messages(ALICE) if b"big@example.org" in p.read_bytes()[:2048]]
    got = hashlib.sha256()
    got_size = 0
    with path.open("rb") as f:
        head = f.read(4096)
        start = head.index(b"\n\n") + 2  # the header block we sent ends here
        assert head[:start].endswith(b"Subject: big\nMessage-ID: <big@example.org>\n\n")
        f.seek(start)
        while chunk := f.read(1 << 20):
            got.update(chunk)
            got_size += len(chunk)
    assert got_size == body_size
    assert got.hexdigest() == digest.hexdigest()
