"""A disk that refuses the queue's writes: the sessions get 451 4.3.0, nothing is half kept.

The server runs with a file size limit (RLIMIT_FSIZE, SIGXFSZ ignored), so a journal segment
that reaches it makes the kernel refuse the write with EFBIG: the batch in it fails, its
sessions are told ``451 4.3.0`` (RFC 5321 section 4.2.5: the client must try again later),
the journal moves on to a new segment and later messages are accepted again. Every message
that got its 250 is delivered; none that got 451 is. Not here: SIGKILL (test_crash.py),
torn records (tests/queue/test_store_crash.py).
"""

from __future__ import annotations

import re
import resource
import signal
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conftest import Server

pytestmark = pytest.mark.timeout(120)

ALICE = "alice@example.test"
SENDER = "sender@example.org"
LIMIT = 150_000  # bytes a file may reach: about sixty messages per journal segment
_TOKEN = re.compile(rb"\nMessage-ID: <(\d+)@full\.test>\n")


def limit_file_size() -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG)
    resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, LIMIT))


def message(n: int) -> bytes:
    return (f"From: <{SENDER}>\r\nTo: <{ALICE}>\r\nSubject: {n}\r\n"
            f"Message-ID: <{n}@full.test>\r\n\r\n").encode() + b"filler line\r\n" * 150


def test_a_refused_journal_write_is_451_and_nothing_half_kept(
        make_server: Callable[..., Server]) -> None:
    server = make_server()
    server.add_user(ALICE)
    server.preexec = limit_file_size
    server.start()
    acked: set[int] = set()
    refused: set[int] = set()
    with server.smtp() as client:
        for n in range(160):
            client.mail(SENDER)
            client.rcpt(ALICE)
            code, text = client.data(message(n))  # the reply to the end of data
            if code == 250:
                acked.add(n)
            else:
                assert (code, text[:5]) == (451, b"4.3.0"), (code, text)
                refused.add(n)
    assert refused and len(acked) > 100, (len(acked), refused)

    deadline = time.monotonic() + 60
    delivered: list[int] = []
    while time.monotonic() < deadline:
        delivered = [int(_TOKEN.findall(path.read_bytes())[0])
                     for path in server.messages(ALICE)]
        if len(set(delivered)) >= len(acked):
            break
        time.sleep(0.1)
    assert set(delivered) == acked  # every 250 delivered, no 451 ever
    failures = [e for e in server.errors() if e.get("event") == "error"]
    assert failures and all("queue" in str(e.get("msg")) for e in failures), failures
