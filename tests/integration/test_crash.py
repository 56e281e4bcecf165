"""SIGKILL under load loses nothing that was acknowledged ("250 means durable").

Client threads send messages with smtplib, each with a unique token in its Message-ID, and
record every token whose end of data got a 250. The server is killed with SIGKILL at a random
moment, restarted on the same data directory, and the load goes on; after a few rounds every
acknowledged token must be in the mailbox. Unacknowledged messages may or may not arrive
(the client cannot know); a message may arrive twice if the kill fell between the Maildir
write and the status record (at-least-once), never zero times. Some bodies are large enough
to be spilled to their own file, so both queue paths are crossed.
Covers the durability duty of RFC 5321 section 6.1. Not here: torn-record unit tests
(tests/queue/test_store_crash.py).
"""

from __future__ import annotations

import random
import re
import smtplib
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conftest import Server

pytestmark = pytest.mark.usefixtures("no_server_errors")

ALICE = "alice@example.test"
THREADS = 4
PER_THREAD = 400  # an upper bound; the kill comes long before
_TOKEN = re.compile(rb"\nMessage-ID: <([\w.-]+)@crash\.test>\n")


class Load:
    """Client threads sending until the server goes away; ``acked`` maps token -> queue id."""

    def __init__(self, server: Server, round_no: int, rng: random.Random) -> None:
        self.server = server
        self.round_no = round_no
        self.sizes = [rng.choice((200, 2_000, 20_000, 300_000)) for _ in range(PER_THREAD)]
        self.acked: dict[str, str] = {}
        self.refusals: list[object] = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(n,), daemon=True)
                        for n in range(THREADS)]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def join(self) -> None:
        for thread in self.threads:
            thread.join(15)
            assert not thread.is_alive(), "a client thread hung"

    def _run(self, thread_no: int) -> None:
        try:
            client = smtplib.SMTP("127.0.0.1", self.server.smtp_port, timeout=5,
                                  local_hostname="load.example.org")
            client.ehlo()
        except (OSError, smtplib.SMTPException):
            return
        try:
            for n in range(PER_THREAD):
                token = f"r{self.round_no}-t{thread_no}-n{n}"
                size = self.sizes[(n + thread_no) % PER_THREAD]
                body = (f"Subject: crash {token}\r\nMessage-ID: <{token}@crash.test>\r\n\r\n"
                        .encode() + (b"z" * 70 + b"\r\n") * (size // 72 + 1))
                replies = [client.mail("load@example.org"), client.rcpt(ALICE)]
                replies.append(client.data(body))
                if any(code >= 400 for code, _ in replies):
                    # a refusal, not a crash: the test would prove nothing
                    self.refusals.append(replies)
                    return
                code, text = replies[-1]
                qid = self.server.queue_id(text.decode())
                with self.lock:
                    self.acked[token] = qid
        except (OSError, smtplib.SMTPException):
            return  # the server was killed under us
        finally:
            client.close()


def tokens_in(files: list[Path]) -> list[str]:
    found = []
    for path in files:
        head = path.read_bytes()[:4096]
        match = _TOKEN.search(head)
        assert match, f"no token in {path}: {head[:300]!r}"
        found.append(match.group(1).decode())
    return found


@pytest.mark.timeout(90)
def test_sigkill_under_load_loses_no_acknowledged_message(server: Server) -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    acked: dict[str, str] = {}
    rounds = 3
    for round_no in range(rounds):
        load = Load(server, round_no, rng)
        load.start()
        time.sleep(rng.uniform(0.3, 1.2))
        server.kill()
        load.join()
        assert not load.refusals, (seed, load.refusals)
        assert load.acked, f"seed {seed}: nothing acknowledged in round {round_no}"
        acked.update(load.acked)
        server.start()  # same data directory: recovery, then delivery of what was queued
        [opened] = server.events("queue_open")
        assert opened["quarantined"] == 0, (seed, opened)

    deadline = time.monotonic() + 40
    missing: set[str] = set(acked)
    while missing and time.monotonic() < deadline:
        missing = set(acked) - set(tokens_in(server.messages(ALICE)))
        if missing:
            time.sleep(0.2)
    assert not missing, f"seed {seed}: {len(missing)} acknowledged messages lost: " + ", ".join(
        f"{t} ({acked[t]})" for t in sorted(missing)[:10])

    # every acknowledged queue id shows up in a Received header of the right message
    files = server.messages(ALICE)
    for path in files:
        data = path.read_bytes()[:4096]
        token = _TOKEN.search(data)
        assert token
        qid = acked.get(token.group(1).decode())
        if qid is not None:
            assert f" id {qid}".encode() in data, (seed, path)

    deadline = time.monotonic() + 20
    while server.queue_list() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert server.queue_list() == [], seed  # nothing stuck, nothing half-recorded
    assert server.stop() == 0
