"""``postwright queue ...`` against a live queue: over the control socket and offline.

To keep messages in the queue the test blocks one mailbox: a plain file where carol's Maildir
directory would be makes every delivery to her fail with a temporary error, so her
recipients stay ``deferred`` (next attempt minutes away) while other recipients deliver.
Then list (the JSON fields of CONTRACT.md), show, hold, release, delete and flush are run
with the server up (the log shows the control requests) and with the server down (after
SIGTERM and after SIGKILL, which leaves a stale socket behind). Unblocking the mailbox and
flushing must deliver what is left, and only that.
Not here: the queue's own unit tests (tests/queue), the accounts CLI (tests/test_cli.py).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from conftest import Server

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("no_server_errors")]

CAROL = "carol@example.test"
ALICE = "alice@example.test"
RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)")


def when(text: str) -> float:
    assert RFC3339.fullmatch(text), text
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC).timestamp()


def block(server: Server, local: str = "carol") -> Path:
    """Put a plain file where the Maildir directory of ``local`` would be."""
    path = server.data / "mail" / "example.test" / local
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("not a maildir\n")
    return path


def by_id(server: Server) -> dict[str, dict[str, Any]]:
    return {str(m["id"]): m for m in server.queue_list()}


def wait_attempts(server: Server, qid: str, address: str, attempts: int) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while True:
        entry = by_id(server).get(qid)
        assert entry is not None, f"{qid} left the queue"
        [rcpt] = [r for r in entry["recipients"] if r["address"] == address]
        if rcpt["attempts"] >= attempts or time.monotonic() > deadline:
            assert rcpt["attempts"] >= attempts, entry
            return entry
        time.sleep(0.1)


def msg(token: str) -> bytes:
    return f"Subject: {token}\r\nMessage-ID: <{token}@example.org>\r\n\r\nbody {token}\r\n".encode()


def tokens(server: Server, address: str) -> list[str]:
    found = []
    for path in server.messages(address):
        match = re.search(rb"\nSubject: (\w+)\n", path.read_bytes())
        assert match
        found.append(match.group(1).decode())
    return sorted(found)


def test_queue_commands_with_the_server_running(server: Server) -> None:
    server.add_user(CAROL)  # a running server sees new accounts without a restart
    blocker = block(server)
    before = time.time()
    q1 = server.send("s1@example.org", [CAROL], msg("first"))
    q2 = server.send("s2@example.org", [CAROL, ALICE], msg("second"))
    q3 = server.send("", [CAROL], msg("third"))
    for qid in (q1, q2, q3):
        wait_attempts(server, qid, CAROL, 1)
    server.wait_messages(ALICE, 1)

    listing = by_id(server)
    assert list(listing) == [q1, q2, q3]  # arrival order
    first = listing[q1]
    assert set(first) >= {"id", "sender", "size", "arrived", "recipients", "held"}
    assert (first["sender"], first["size"], first["held"]) == ("s1@example.org",
                                                               len(msg("first")), False)
    assert before - 1 <= when(first["arrived"]) <= time.time() + 1
    [carol] = first["recipients"]
    assert set(carol) >= {"address", "status", "attempts", "next_attempt", "last_reply"}
    assert (carol["address"], carol["status"], carol["attempts"]) == (CAROL, "deferred", 1)
    assert when(carol["next_attempt"]) > time.time() + 60  # the retry is minutes away
    assert carol["last_reply"].startswith("4.")
    second = {r["address"]: r for r in listing[q2]["recipients"]}
    assert second[ALICE]["status"] == "delivered" and second[ALICE]["attempts"] == 1
    assert second[CAROL]["status"] == "deferred"
    assert listing[q3]["sender"] == ""

    text = server.cli("queue", "list").stdout.decode()
    assert q1 in text and "deferred" in text and "3 message(s)" in text

    shown = server.cli("queue", "show", q1).stdout.decode()
    assert f'"id": "{q1}"' in shown and "Subject: first" in shown
    missing = server.cli("queue", "show", "NOSUCHID", check=False)
    assert missing.returncode != 0 and b"NOSUCHID" in missing.stderr

    server.cli("queue", "hold", q1)
    assert by_id(server)[q1]["held"] is True
    server.cli("queue", "delete", q3)
    assert list(by_id(server)) == [q1, q2]

    out = server.cli("queue", "flush").stdout.decode()
    assert out.startswith("1 recipient(s) due now")  # q2's carol; q1 is held
    wait_attempts(server, q2, CAROL, 2)
    assert by_id(server)[q1]["recipients"][0]["attempts"] == 1

    blocker.unlink()
    server.cli("queue", "release", q1)
    assert by_id(server)[q1]["held"] is False
    out = server.cli("queue", "flush").stdout.decode()
    assert out.startswith("2 recipient(s) due now")
    server.wait_messages(CAROL, 2)
    deadline = time.monotonic() + 10
    while server.queue_list() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert server.queue_list() == []
    assert tokens(server, CAROL) == ["first", "second"]  # not the deleted one
    assert tokens(server, ALICE) == ["second"]
    requests = {e.get("op") for e in server.events("control") if e.get("ok")}
    assert {"list", "show", "hold", "delete", "flush", "release"} <= requests


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_queue_commands_with_the_server_down(server: Server, how: str) -> None:
    server.add_user(CAROL)
    blocker = block(server)
    q1 = server.send("s1@example.org", [CAROL], msg("kept"))
    q2 = server.send("s2@example.org", [CAROL], msg("dropped"))
    q3 = server.send("s3@example.org", [CAROL], msg("held"))
    for qid in (q1, q2, q3):
        wait_attempts(server, qid, CAROL, 1)
    if how == "sigterm":
        assert server.stop() == 0
    else:
        server.kill()
        assert (server.data / "control.sock").exists()  # stale: nobody listens

    listing = by_id(server)  # offline, read-only
    assert list(listing) == [q1, q2, q3]
    assert all(m["recipients"][0]["status"] == "deferred" for m in listing.values())
    assert "Subject: kept" in server.cli("queue", "show", q1).stdout.decode()

    server.cli("queue", "hold", q1)
    server.cli("queue", "hold", q3)
    assert [m["held"] for m in server.queue_list()] == [True, False, True]
    server.cli("queue", "delete", q2)
    server.cli("queue", "release", q1)
    assert [(m["id"], m["held"]) for m in server.queue_list()] == [(q1, False), (q3, True)]
    out = server.cli("queue", "flush").stdout.decode()
    assert out.startswith("1 recipient(s) due now")  # q1 only: q3 is held
    assert when(server.queue_list()[0]["recipients"][0]["next_attempt"]) <= time.time() + 1

    blocker.unlink()
    server.start()  # q1 is due now: delivered at once, not in minutes
    server.wait_messages(CAROL, 1, timeout=10)
    assert tokens(server, CAROL) == ["kept"]
    assert [(m["id"], m["held"]) for m in server.queue_list()] == [(q3, True)]
    assert {e.get("op") for e in server.events("control")} <= {"list"}  # the rest was offline


def test_control_socket_under_a_deep_data_dir(make_server: Callable[..., Server]) -> None:
    srv = make_server(name="deep/" * 16 + "s")  # the socket path is over 108 octets
    assert len(str(srv.data / "control.sock")) > 108
    srv.add_user(CAROL)
    block(srv)
    srv.start()
    qid = srv.send("s@example.org", [CAROL], msg("deep"))
    wait_attempts(srv, qid, CAROL, 1)
    srv.cli("queue", "hold", qid)
    assert [e.get("op") for e in srv.events("control") if e.get("ok")][-1] == "hold"
    assert srv.queue_list()[0]["held"] is True
    assert (srv.data / "control.sock").stat().st_mode & 0o777 == 0o600
    assert srv.stop() == 0
