"""The client API (``postwright.client``) against real servers on loopback.

Two independent servers: postwright itself (``App`` in a background thread with its own event
loop, listeners on 127.0.0.1 port 0, a wildcard local domain) and Postfix's ``smtp-sink``.
Connections are counted on the server side: postwright's "connect" log events, smtp-sink's
session counter. Covers sending EmailMessage and bytes, Bcc, refused recipients, the pool
(reuse, RSET, 100 concurrent sends over 4 connections, a connection the server closed),
STARTTLS and certificate checks, AUTH on submission, implicit TLS, SMTPUTF8 and 8BITMIME
refusals, SyncClient, the ``send()`` helper and ``postwright send --server``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from email.message import EmailMessage
from pathlib import Path
from typing import Any, TypeVar

import pytest

from postwright.accounts import AccountStore
from postwright.app import App
from postwright.client import Client, SendError, SendResult, SyncClient, send
from postwright.config import load_config

pytestmark = pytest.mark.timeout(60)

_T = TypeVar("_T")
SINK = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
BIN = Path(sys.executable).parent / "postwright"
ALICE = "alice@example.test"
PASSWORD = "secret-pass"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def no_verify() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def message(to: str, subject: str = "hello", **headers: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = ALICE
    msg["To"] = to
    for name, value in headers.items():
        msg[name] = value
    msg["Subject"] = subject
    msg.set_content("Hello there.\n.a line starting with a dot\n")
    return msg


class Events(logging.Handler):
    """postwright's log records, kept to count events ("connect", "auth")."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def count(self, event: str, **where: object) -> int:
        return sum(1 for r in list(self.records) if getattr(r, "event", None) == event
                   and all(getattr(r, k, None) == v for k, v in where.items()))


class Postwright:
    """``postwright.app.App`` on loopback, run in its own thread and event loop."""

    def __init__(self, tmp: Path) -> None:
        self.data = tmp / "data"
        path = tmp / "postwright.toml"
        path.write_text(
            'hostname = "mx.example.test"\n'
            f'data_dir = "{self.data}"\n'
            "[listen]\n"
            'smtp = ["127.0.0.1:0"]\nsubmission = ["127.0.0.1:0"]\n'
            'submissions = ["127.0.0.1:0"]\n'
            "[domains]\n"
            'local = ["example.test"]\nwildcard = ["example.test"]\n'
            "[submission]\nauth_fail_delay = 0\n")
        self.config = load_config(str(path))
        AccountStore(self.config.accounts_path).add(ALICE, PASSWORD)
        self.app = App(self.config)
        # asyncio's own loop on purpose: it hands the first decrypted bytes over before
        # start_tls returns, which the stream must hold until the core knows TLS is up.
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.events = Events()
        self.port: dict[str, int] = {}

    def call(self, coro: Coroutine[Any, Any, _T]) -> _T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def start(self) -> None:
        logger = logging.getLogger("postwright")
        self._level = logger.level
        logger.setLevel(logging.INFO)
        logger.addHandler(self.events)
        self.thread.start()
        self.call(self.app.start())
        self.port = {lst.role: lst.bound[0][1] for lst in self.app.listeners}

    def stop(self) -> None:
        try:
            self.call(self.app.stop(drain_timeout=5.0))
            self.call(self.loop.shutdown_default_executor())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()
            logger = logging.getLogger("postwright")
            logger.removeHandler(self.events)
            logger.setLevel(self._level)

    @property
    def cert(self) -> Path:
        return self.data / "tls" / "selfsigned.crt"

    def messages(self, address: str) -> list[bytes]:
        local, domain = address.lower().split("@")
        folder = self.data / "mail" / domain / local / "new"
        return [p.read_bytes() for p in sorted(folder.iterdir())] if folder.exists() else []

    def wait_messages(self, address: str, count: int) -> list[bytes]:
        wait_until(lambda: len(self.messages(address)) >= count, f"{count} for {address}")
        return self.messages(address)


@pytest.fixture(scope="module")
def pw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Postwright]:
    server = Postwright(tmp_path_factory.mktemp("postwright"))
    server.start()
    yield server
    server.stop()


class Sink:
    """Postfix's smtp-sink: takes every message, dumps each to a file, counts sessions."""

    def __init__(self, *options: str) -> None:
        if not os.path.exists(SINK):
            pytest.skip("smtp-sink (Debian package postfix) is not installed")
        self.port = free_port()
        self.dump = Path(tempfile.mkdtemp(prefix="postwright-sink-"))
        self.dump.chmod(0o777)  # smtp-sink drops to nobody when started as root
        user = ["-u", "nobody"] if os.geteuid() == 0 else []
        self.proc = subprocess.Popen(
            [SINK, *user, "-c", "-d", f"{self.dump}/%H%M%S.", *options,
             f"127.0.0.1:{self.port}", "100"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.counters: dict[str, int] = {}
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        # Ready once a connection is taken; that first session is not counted later.
        wait_until(self._connectable, "smtp-sink to listen")
        wait_until(lambda: self.counters.get("sess") == 1, "smtp-sink counters")

    def _connectable(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.recv(100)
            return True
        except OSError:
            return False

    def _read(self) -> None:
        assert self.proc.stdout is not None
        buf = b""
        while chunk := os.read(self.proc.stdout.fileno(), 4096):
            buf += chunk
            *lines, buf = buf.split(b"\r")
            for line in lines[-1:]:
                pairs = (w.split(b"=", 1) for w in line.split())
                self.counters = {k.decode(): int(v) for k, v in pairs}

    def sessions(self) -> int:
        return self.counters.get("sess", 1) - 1

    def dumps(self) -> list[str]:
        return [p.read_text(errors="replace") for p in sorted(self.dump.iterdir())]

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(10)
        self._reader.join(5)
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        shutil.rmtree(self.dump, ignore_errors=True)


@pytest.fixture
def make_sink() -> Iterator[Callable[..., Sink]]:
    made: list[Sink] = []

    def factory(*options: str) -> Sink:
        made.append(Sink(*options))
        return made[-1]

    yield factory
    for sink in made:
        sink.close()


# ---- input checks (no server) -------------------------------------------------------------

def test_bad_input_is_refused_before_any_connection() -> None:
    async def main() -> None:
        async with Client("127.0.0.1", free_port()) as client:
            with pytest.raises(ValueError, match="required"):
                await client.send(b"x\r\n", sender=ALICE)
            with pytest.raises(ValueError, match="malformed"):
                await client.send(b"x\r\n", sender=ALICE, recipients=["not an address"])
            with pytest.raises(ValueError, match="CR, LF"):
                await client.send(b"x\r\n", sender=ALICE, recipients=["a@b.test\r\nRSET"])
            with pytest.raises(ValueError, match="NUL"):
                await client.send(b"a\0b\r\n", sender=ALICE, recipients=["a@b.test"])
            with pytest.raises(ValueError, match="From"):
                await client.send(EmailMessage())
            assert client.connections_opened == 0

    asyncio.run(main())
    with pytest.raises(ValueError):
        Client("127.0.0.1", local_hostname="bad name")
    with pytest.raises(ValueError):
        Client("127.0.0.1", username="only-user")


def test_connection_refused_is_a_send_error() -> None:
    with pytest.raises(SendError) as info:
        send(b"x\r\n", host="127.0.0.1", port=free_port(), sender=ALICE,
             recipients=["b@example.test"])
    assert info.value.reply.code == 421 and "connect" in str(info.value)


# ---- postwright ---------------------------------------------------------------------------

def test_email_message_bytes_and_bcc(pw: Postwright) -> None:
    msg = message("to1@example.test", "bcc test", Cc="cc1@example.test",
                  Bcc="hidden1@example.test")

    async def main() -> tuple[SendResult, SendResult]:
        async with Client("127.0.0.1", pw.port["smtp"], starttls=False) as client:
            first = await client.send(msg)
            second = await client.send(b"Subject: raw\nX-Lines: bare LF\n\nline\n.dot\n",
                                       sender="", recipients=["raw1@example.test"])
            return first, second

    first, second = asyncio.run(main())
    assert sorted(first.accepted) == ["cc1@example.test", "hidden1@example.test",
                                      "to1@example.test"]
    assert first.refused == {} and first.data is not None and first.data.code == 250
    assert second.accepted and second.data is not None and second.data.code == 250
    assert "Bcc" in msg  # the caller's message is left alone
    for rcpt in ("to1@example.test", "cc1@example.test", "hidden1@example.test"):
        [body] = pw.wait_messages(rcpt, 1)
        assert b"Subject: bcc test" in body and b"Bcc:" not in body
        assert rcpt.startswith("hidden1") or b"hidden1" not in body
        assert b"\n.a line starting with a dot\n" in body  # dot-stuffing undone
    [raw] = pw.wait_messages("raw1@example.test", 1)
    assert raw.startswith(b"Return-Path: <>\n") and raw.endswith(b"\nline\n.dot\n")


def test_refused_recipients_are_reported(pw: Postwright) -> None:
    async def main() -> tuple[SendResult, SendResult]:
        async with Client("127.0.0.1", pw.port["smtp"], starttls=False) as client:
            mixed = await client.send(message("mixed1@example.test"), recipients=[
                "mixed1@example.test", "someone@elsewhere.test"])
            none = await client.send(message("x@elsewhere.test"))
            return mixed, none

    mixed, none = asyncio.run(main())
    assert list(mixed.accepted) == ["mixed1@example.test"]
    assert mixed.refused["someone@elsewhere.test"].code >= 550
    assert mixed.refused["someone@elsewhere.test"].enhanced == "5.7.1"
    assert none.accepted == {} and none.data is None
    assert none.refused["x@elsewhere.test"].code >= 550


def test_pool_reuses_connections_with_rset_when_needed(pw: Postwright) -> None:
    before = pw.events.count("connect", role="smtp")

    async def main() -> list[SendResult]:
        async with Client("127.0.0.1", pw.port["smtp"], starttls=False,
                          pool_size=3) as client:
            results = [await client.send(message("reuse@example.test")),
                       await client.send(message("nobody@elsewhere.test")),  # DATA refused
                       await client.send(message("reuse@example.test")),
                       await client.send(message("reuse@example.test"))]
            assert client.connections_opened == 1
            return results

    results = asyncio.run(main())
    assert [bool(r.accepted) for r in results] == [True, False, True, True]
    assert pw.events.count("connect", role="smtp") - before == 1
    assert len(pw.wait_messages("reuse@example.test", 3)) == 3


def test_hundred_concurrent_sends_share_four_connections(pw: Postwright) -> None:
    before = pw.events.count("connect", role="smtp")

    async def main() -> list[SendResult]:
        async with Client("127.0.0.1", pw.port["smtp"], starttls=False,
                          pool_size=4) as client:
            results = await asyncio.gather(*(
                client.send(message("crowd@example.test", f"n{i}")) for i in range(100)))
            assert client.connections_opened <= 4
            return list(results)

    results = asyncio.run(main())
    assert all(list(r.accepted) == ["crowd@example.test"] for r in results)
    assert 1 <= pw.events.count("connect", role="smtp") - before <= 4
    assert len(pw.wait_messages("crowd@example.test", 100)) == 100


def test_starttls_verifies_certificates(pw: Postwright) -> None:
    port = pw.port["smtp"]
    trust_nothing = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    with pytest.raises(SendError) as info:
        send(message("tls1@example.test"), host="127.0.0.1", port=port,
             ssl_context=trust_nothing)
    assert info.value.reply.code == 421 and "certificate" in str(info.value)
    with pytest.raises(SendError):  # the default context verifies: self-signed fails
        send(message("tls1@example.test"), host="127.0.0.1", port=port)
    # No verification, and verification against the server's own certificate: both work.
    trust_it = ssl.create_default_context(cafile=str(pw.cert))
    for ctx in (no_verify(), trust_it):
        result = send(message("tls1@example.test"), host="127.0.0.1", port=port,
                      starttls=True, ssl_context=ctx)
        assert list(result.accepted) == ["tls1@example.test"]
    bodies = pw.wait_messages("tls1@example.test", 2)
    assert all(b"with ESMTPS" in b for b in bodies)
    assert pw.messages("tls1@example.test") == bodies  # nothing went in clear


def test_auth_on_submission_with_starttls(pw: Postwright) -> None:
    port = pw.port["submission"]

    async def main() -> None:
        for mechanism in ("PLAIN", None):  # None: the best offered, SCRAM-SHA-256
            async with Client("127.0.0.1", port, ssl_context=no_verify(), starttls=True,
                              username=ALICE, password=PASSWORD,
                              auth_mechanism=mechanism) as client:
                result = await client.send(message("sub1@example.test"))
                assert list(result.accepted) == ["sub1@example.test"]
        async with Client("127.0.0.1", port, ssl_context=no_verify(), username=ALICE,
                          password="wrong") as client:
            with pytest.raises(SendError) as info:
                await client.send(message("sub1@example.test"))
            assert info.value.reply.code == 535
        async with Client("127.0.0.1", port, starttls=False, username=ALICE,
                          password=PASSWORD, auth_mechanism="PLAIN") as client:
            with pytest.raises(SendError) as info:  # never a password in clear
                await client.send(message("sub1@example.test"))
            assert info.value.reply.code in (530, 538)

    before = pw.events.count("auth", account=ALICE)
    asyncio.run(main())
    assert pw.events.count("auth", account=ALICE) - before == 2
    bodies = pw.wait_messages("sub1@example.test", 2)
    assert all(b"with ESMTPSA" in b for b in bodies)


def test_implicit_tls_on_submissions(pw: Postwright) -> None:
    with SyncClient("127.0.0.1", pw.port["submissions"], tls=True, ssl_context=no_verify(),
                    username=ALICE, password=PASSWORD) as client:
        result = client.send(message("implicit1@example.test"))
        assert list(result.accepted) == ["implicit1@example.test"]
        assert client.client.connections_opened == 1
    [body] = pw.wait_messages("implicit1@example.test", 1)
    assert b"with ESMTPSA" in body


def test_sync_client_threads_share_the_pool(pw: Postwright) -> None:
    before = pw.events.count("connect", role="smtp")
    with SyncClient("127.0.0.1", pw.port["smtp"], starttls=False, pool_size=2) as client:
        with ThreadPoolExecutor(8) as threads:
            results = list(threads.map(
                lambda i: client.send(message("sync1@example.test", f"t{i}")), range(20)))
        assert all(r.accepted for r in results)
    with pytest.raises(RuntimeError):
        client.send(message("sync1@example.test"))
    assert 1 <= pw.events.count("connect", role="smtp") - before <= 2
    result = send(message("sync1@example.test"), host="127.0.0.1", port=pw.port["smtp"],
                  starttls=False)
    assert list(result.accepted) == ["sync1@example.test"]
    assert len(pw.wait_messages("sync1@example.test", 21)) == 21


def test_smtputf8_when_an_address_needs_it(pw: Postwright) -> None:
    result = send(b"Subject: utf8\r\n\r\nol\xc3\xa9\r\n", host="127.0.0.1",
                  port=pw.port["smtp"], starttls=False, sender="jos\u00e9@example.test",
                  recipients=["b\u00fccher@example.test"])
    assert list(result.accepted) == ["b\u00fccher@example.test"]


def test_cli_send_server_uses_the_client(pw: Postwright, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "POSTWRIGHT_CONFIG"}

    def cli(*to: str) -> subprocess.CompletedProcess[str]:
        args = [a for rcpt in to for a in ("--to", rcpt)]
        done = subprocess.run(
            [str(BIN), "send", "--from", ALICE, *args, "--subject", "cli",
             "--server", f"127.0.0.1:{pw.port['smtp']}"],
            input=b"from the command line\n", env=env, cwd=tmp_path, capture_output=True,
            timeout=30)
        return subprocess.CompletedProcess(done.args, done.returncode, done.stdout.decode(),
                                           done.stderr.decode())

    ok = cli("cli1@example.test")
    assert (ok.returncode, ok.stdout) == (0, "sent\n"), ok.stderr
    some = cli("cli1@example.test", "far@elsewhere.test")
    assert (some.returncode, some.stdout) == (1, "sent to some recipients\n")
    assert "refused far@elsewhere.test: 55" in some.stderr
    none = cli("far@elsewhere.test")
    assert none.returncode == 1 and "sending failed" in none.stderr
    [first, second] = pw.wait_messages("cli1@example.test", 2)
    assert b"Subject: cli" in first and first.endswith(b"from the command line\n")


# ---- smtp-sink ----------------------------------------------------------------------------

def test_smtp_sink_message_bytes_and_bcc(make_sink: Callable[..., Sink]) -> None:
    sink = make_sink()
    msg = message("to@sink.test", "to the sink", Bcc="secret@sink.test")
    with SyncClient("127.0.0.1", sink.port) as client:
        result = client.send(msg)
        assert sorted(result.accepted) == ["secret@sink.test", "to@sink.test"]
        raw = client.send(b"Subject: raw\n\nbody\n", sender="a@sink.test",
                          recipients=["b@sink.test"])
        assert list(raw.accepted) == ["b@sink.test"]
    wait_until(lambda: len(sink.dumps()) == 2, "two dumps")
    dumps = sink.dumps()
    with_bcc = next(d for d in dumps if "to the sink" in d)
    assert "X-Rcpt-Args: <to@sink.test>" in with_bcc
    assert "X-Rcpt-Args: <secret@sink.test>" in with_bcc
    assert "Bcc" not in with_bcc and "secret@sink.test>\n" not in with_bcc.split("\n\n")[1]
    assert any("X-Mail-Args: <a@sink.test>" in d and "\nbody\n" in d for d in dumps)
    wait_until(lambda: sink.sessions() == 1, "one session")


def test_smtp_sink_hundred_concurrent_sends_four_sessions(
        make_sink: Callable[..., Sink]) -> None:
    sink = make_sink()

    async def main() -> list[SendResult]:
        async with Client("127.0.0.1", sink.port, pool_size=4) as client:
            results = await asyncio.gather(*(
                client.send(f"Subject: n{i}\r\n\r\nbody\r\n".encode(), sender="a@sink.test",
                            recipients=["b@sink.test", "c@sink.test"]) for i in range(100)))
            return list(results)

    results = asyncio.run(main())
    assert all(len(r.accepted) == 2 for r in results)
    wait_until(lambda: sink.counters.get("mesg") == 100 and sink.sessions() >= 4,
               "100 messages")
    time.sleep(0.1)
    assert sink.sessions() == 4 and sink.counters["quit"] == 4


def test_connection_closed_by_server_is_replaced(make_sink: Callable[..., Sink]) -> None:
    sink = make_sink("-t", "1")  # smtp-sink drops a connection idle for a second

    async def main() -> int:
        async with Client("127.0.0.1", sink.port, pool_size=1) as client:
            first = await client.send(b"x\r\n", sender="a@sink.test", recipients=["b@s.test"])
            await asyncio.sleep(1.5)
            second = await client.send(b"y\r\n", sender="a@sink.test",
                                       recipients=["b@s.test"])
            assert first.accepted and second.accepted
            return client.connections_opened

    assert asyncio.run(main()) == 2
    wait_until(lambda: sink.counters.get("mesg") == 2, "two messages")


def test_required_starttls_and_missing_extensions(make_sink: Callable[..., Sink]) -> None:
    sink = make_sink("-8")  # no 8BITMIME; smtp-sink never offers STARTTLS or SMTPUTF8
    with pytest.raises(SendError) as info:
        send(b"x\r\n", host="127.0.0.1", port=sink.port, starttls=True, sender="a@sink.test",
             recipients=["b@sink.test"])
    assert (info.value.reply.code, info.value.reply.enhanced) == (530, "5.7.10")
    with SyncClient("127.0.0.1", sink.port) as client:
        eight = client.send(b"caf\xc3\xa9\r\n", sender="a@sink.test",
                            recipients=["b@sink.test"])
        assert eight.accepted == {} and eight.refused["b@sink.test"].enhanced == "5.6.3"
        utf8 = client.send(b"x\r\n", sender="a@sink.test", recipients=["\u00fc@sink.test"])
        assert utf8.accepted == {} and utf8.refused["\u00fc@sink.test"].enhanced == "5.6.7"
        ok = client.send(b"plain\r\n", sender="a@sink.test", recipients=["b@sink.test"])
        assert list(ok.accepted) == ["b@sink.test"]
    wait_until(lambda: sink.counters.get("mesg") == 1, "one message")
    time.sleep(0.1)
    assert sink.counters["mesg"] == 1  # the refused ones never reached the wire
