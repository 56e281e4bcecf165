"""The server process over its life: configuration check, shutdown, limits and timeouts.

SIGTERM must drain: idle clients are told 421 and closed at once, a client in the middle of
DATA may finish its message (and gets a real 250), new connections are refused, and the
process logs "stopped" and exits 0. ``check-config`` (and ``serve``) exit 2 naming the bad
key. Listener limits and timeouts are seen from the client side: a connection over the
per-client limit gets 421 4.7.0, a silent client gets 421 4.4.2 (RFC 5321 sections 3.8 and
4.5.3.2; 4.3.2 for shutdown per RFC 3463).
Not here: the config parser's unit tests (tests/test_config.py), SIGKILL (test_crash.py).
"""

from __future__ import annotations

import signal
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conftest import Server

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("no_server_errors")]

ALICE = "alice@example.test"


def sigterm(server: Server) -> None:
    assert server.proc is not None
    server.proc.send_signal(signal.SIGTERM)
    server.wait_event("stopping")


def refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.settimeout(2)
            return sock.recv(100) == b""  # accepted by a dying socket, closed at once
    except (ConnectionRefusedError, ConnectionResetError):
        return True


def test_sigterm_exits_zero_and_logs_stopped(server: Server) -> None:
    assert server.stop() == 0
    names = [e.get("event") for e in server.log_lines]
    assert names.index("ready") < names.index("stopping") < names.index("stopped")
    assert names[-1] == "stopped"
    assert not (server.data / "control.sock").exists()
    assert refused(server.smtp_port)


def test_idle_clients_get_421_at_shutdown(server: Server) -> None:
    greeted = server.raw()  # EHLO done, no transaction
    silent = server.raw(ehlo=None)
    assert silent.reply()[0] == 220
    sigterm(server)
    for client in (greeted, silent):
        code, text = client.reply()
        assert (code, text.split()[0]) == (421, "4.3.2"), text
        assert client.at_eof()
        client.close()
    assert server.proc is not None and server.proc.wait(10) == 0
    assert refused(server.smtp_port)


def test_message_in_data_finishes_during_drain(server: Server) -> None:
    with server.raw() as client:
        assert client.cmd("MAIL FROM:<late@example.org>")[0] == 250
        assert client.cmd(f"RCPT TO:<{ALICE}>")[0] == 250
        assert client.cmd("DATA")[0] == 354
        client.send(b"Subject: in flight\r\nMessage-ID: <drain@example.org>\r\n\r\nfirst half\r\n")
        sigterm(server)
        time.sleep(0.3)
        assert server.proc is not None and server.proc.poll() is None  # still draining
        assert refused(server.smtp_port)  # nobody new gets in meanwhile
        client.send(b"second half\r\n.\r\n")
        code, text = client.reply()
        assert code == 250, text  # a real, durable acceptance
        qid = server.queue_id(text)
        assert client.cmd("QUIT")[0] == 221
    assert server.proc.wait(15) == 0
    assert server.events("stopped")
    if not server.messages(ALICE):  # delivery may not have run before the exit: it resumes
        server.start()
    [path] = server.wait_messages(ALICE, 1, timeout=10)
    data = path.read_bytes()
    assert f" id {qid}".encode() in data and data.endswith(b"\n\nfirst half\nsecond half\n")


def test_check_config_names_the_bad_key(make_server: Callable[..., Server]) -> None:
    good = make_server()
    done = good.cli("check-config")
    assert done.returncode == 0 and b"configuration OK" in done.stdout
    cases = [
        ('[limits]\nmax_recipients = "many"\n', "limits.max_recipients"),
        ("[limits]\nmax_recipients = 0\n", "limits.max_recipients"),
        ("[limits]\nmax_bogus = 1\n", "limits.max_bogus"),
        ("[nonsense]\nx = 1\n", "nonsense"),
        ("surprise = true\n", "surprise"),
    ]
    for extra, key in cases:
        if extra.startswith("surprise"):
            srv = make_server()
            srv.config.write_text(extra + srv.config.read_text())
        else:
            srv = make_server(extra)
        done = srv.cli("check-config", check=False)
        assert done.returncode == 2, (extra, done)
        assert key in done.stderr.decode(), (extra, done.stderr)


def test_serve_refuses_a_bad_config(make_server: Callable[..., Server]) -> None:
    srv = make_server("[limits]\ncommand_timeout = -1\n")
    done = srv.cli("serve", check=False)
    assert done.returncode == 2
    assert b"limits.command_timeout" in done.stderr
    assert not (srv.data / "queue").exists()


def test_connections_over_the_per_client_limit_get_421(
        make_server: Callable[..., Server]) -> None:
    srv = make_server("[limits]\nmax_connections_per_client = 2\n")
    srv.start()
    first, second = srv.raw(), srv.raw()
    third = srv.raw(ehlo=None)
    code, text = third.reply()
    assert (code, text.split()[0]) == (421, "4.7.0"), text
    assert third.at_eof()
    third.close()
    assert srv.wait_event("reject", where=lambda e: "too many" in str(e.get("reason")))
    # other listeners count separately, and a freed slot can be used again
    with srv.raw(srv.submission_port, ehlo=None) as other:
        assert other.reply()[0] == 220
    first.cmd("QUIT")
    first.close()
    srv.wait_event("disconnect", 2)  # the submission one and the first (refused: no session)
    with srv.raw() as again:
        assert again.cmd("NOOP")[0] == 250
    second.close()


def test_silent_client_times_out_with_421(make_server: Callable[..., Server]) -> None:
    srv = make_server("[limits]\ncommand_timeout = 1\ndata_timeout = 1\n")
    srv.add_user(ALICE)
    srv.start()
    with srv.raw() as client:
        started = time.monotonic()
        code, text = client.reply()
        elapsed = time.monotonic() - started
        assert (code, text.split()[0]) == (421, "4.4.2"), text
        assert 0.5 < elapsed < 5
        assert client.at_eof()
    with srv.raw() as client:  # silent in the middle of DATA
        assert client.cmd("MAIL FROM:<slow@example.org>")[0] == 250
        assert client.cmd(f"RCPT TO:<{ALICE}>")[0] == 250
        assert client.cmd("DATA")[0] == 354
        client.send(b"Subject: never finished\r\n\r\nhalf")
        code, text = client.reply()
        assert (code, text.split()[0]) == (421, "4.4.2"), text
        assert client.at_eof()
    assert srv.events("queued") == []
    assert srv.stop() == 0


def test_the_timeout_runs_from_each_command_and_data_has_its_own(
        make_server: Callable[..., Server]) -> None:
    # Commands are answered as they arrive, without waking the session; each one still
    # restarts the clock, and after DATA the client has data_timeout, not command_timeout.
    srv = make_server("[limits]\ncommand_timeout = 1\ndata_timeout = 3\n")
    srv.add_user(ALICE)
    srv.start()
    with srv.raw() as client:  # greeted
        started = time.monotonic()
        for line, code in (("EHLO slow.example.org", 250), ("MAIL FROM:<slow@example.org>", 250),
                           (f"RCPT TO:<{ALICE}>", 250), ("DATA", 354)):
            time.sleep(0.6)
            assert client.cmd(line)[0] == code, line
        time.sleep(1.8)  # past command_timeout, within data_timeout
        client.send(b"Subject: slow but steady\r\n\r\nok\r\n.\r\n")
        assert client.reply()[0] == 250
        assert time.monotonic() - started > 3  # longer than command_timeout, all told
        time.sleep(0.6)
        assert client.cmd("NOOP")[0] == 250
        code, text = client.reply()  # then silence: command_timeout again
        assert (code, text.split()[0]) == (421, "4.4.2"), text
    assert len(srv.events("queued")) == 1
    assert srv.stop() == 0


def test_serve_without_listeners_still_starts_and_stops(
        make_server: Callable[..., Server]) -> None:
    srv = make_server()
    text = srv.config.read_text()
    for role, port in (("smtp", srv.smtp_port), ("submission", srv.submission_port),
                       ("submissions", srv.submissions_port)):
        text = text.replace(f'{role} = ["127.0.0.1:{port}"]', f"{role} = []")
    srv.config.write_text(text)
    srv.start()
    assert srv.events("listen") == []
    assert refused(srv.smtp_port)
    assert srv.stop() == 0


def test_two_servers_cannot_share_a_data_dir(server: Server) -> None:
    assert server.proc is not None
    second = server.cli("serve", check=False)
    assert second.returncode != 0, second
    assert server.proc.poll() is None  # the first one is unharmed
    qid = server.send("s@example.org", [ALICE], b"Subject: still here\r\n\r\nok\r\n")
    server.wait_event("delivered", where=lambda e: e.get("id") == qid)
