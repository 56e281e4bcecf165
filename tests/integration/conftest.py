"""Run a real `postwright serve` process on loopback ports for end-to-end tests.

:class:`Server` writes a config with free ports, runs ``postwright serve`` as a subprocess
and collects its JSON log lines; :class:`RawClient` speaks SMTP in exact bytes over a plain
socket (for what smtplib will not send: bare LF, smuggling, BDAT, pipelined groups). The
``no_server_errors`` fixture fails a test whose servers logged an error or a traceback.
Every wait here is bounded. Nothing of postwright is imported: the server is a black box.
"""

from __future__ import annotations

import json
import os
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent / "postwright"
ALIASES = {
    "postmaster@example.test": ["alice@example.test"],
    "team@example.test": ["alice@example.test", "bob@example.test"],
}
# accounts.json as left by a sequence of add_user calls on a fresh data directory
_ACCOUNT_FILES: dict[tuple[tuple[str, str], ...], bytes | None] = {(): None}
_STARTED: list[Server] = []  # servers started during the current test


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RawClient:
    """A bare SMTP client: exact bytes out, replies parsed, every read under a timeout."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buffer = b""

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes | str) -> None:
        self.sock.sendall(data.encode() if isinstance(data, str) else data)

    def _line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"connection closed; unread: {self.buffer!r}")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line

    def reply(self) -> tuple[int, str]:
        """One reply: its code and its text lines joined by newlines."""
        texts = []
        for _ in range(100):
            line = self._line().decode("utf-8", "replace")
            texts.append(line[4:])
            if len(line) < 4 or line[3] != "-":
                return int(line[:3]), "\n".join(texts)
        raise AssertionError("reply with more than 100 lines")

    def cmd(self, line: str | bytes) -> tuple[int, str]:
        """Send one command line (CRLF added) and read its reply."""
        raw = line.encode() if isinstance(line, str) else line
        self.send(raw + b"\r\n")
        return self.reply()

    def at_eof(self, timeout: float = 5.0) -> bool:
        """True once the server has closed the connection (unread replies are kept)."""
        self.sock.settimeout(timeout)
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                self.buffer += chunk
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True


class Server:
    """A postwright process with its own data directory and ports.

    ``domains``, ``wildcard`` and ``aliases`` fill the ``[domains]`` and ``[aliases]``
    tables (``extra`` is appended after them and must not repeat them).
    """

    def __init__(self, tmp: Path, extra: str = "", *,
                 domains: Sequence[str] = ("example.test", "other.test"),
                 wildcard: Sequence[str] = (),
                 aliases: Mapping[str, Sequence[str]] | None = None) -> None:
        self.tmp = tmp
        tmp.mkdir(parents=True, exist_ok=True)
        self.data = tmp / "data"
        self.smtp_port = free_port()
        self.submission_port = free_port()
        self.submissions_port = free_port()
        self.config = tmp / "postwright.toml"
        self.config.write_text(
            f'hostname = "mx.example.test"\n'
            f'data_dir = "{self.data}"\n'
            f"[listen]\n"
            f'smtp = ["127.0.0.1:{self.smtp_port}"]\n'
            f'submission = ["127.0.0.1:{self.submission_port}"]\n'
            f'submissions = ["127.0.0.1:{self.submissions_port}"]\n'
            f"[domains]\n"
            f"local = {json.dumps(list(domains), ensure_ascii=False)}\n"
            f"wildcard = {json.dumps(list(wildcard), ensure_ascii=False)}\n"
            f"[aliases]\n"
            + "".join(f"{json.dumps(k, ensure_ascii=False)} = "
                      f"{json.dumps(list(v), ensure_ascii=False)}\n"
                      for k, v in (aliases if aliases is not None else ALIASES).items())
            # Inbound SPF/DKIM/DMARC need DNS; tests that want them say [authentication]
            # and bring a DnsServer (test_emailauth.py). Everyone else has no DNS to ask.
            + ("" if "[authentication]" in extra else "[authentication]\nchecks = false\n")
            + extra
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.preexec: Callable[[], None] | None = None  # run in the server's process first
        self._users: tuple[tuple[str, str], ...] = ()
        self.log_lines: list[dict[str, object]] = []
        self._reader: threading.Thread | None = None

    def cli(self, *args: str, input: bytes | None = None,
            check: bool = True) -> subprocess.CompletedProcess[bytes]:
        cmd = [str(BIN), *args[:2], "--config", str(self.config), *args[2:]] \
            if args and args[0] in ("user", "queue", "dkim") \
            else [str(BIN), *args, "--config", str(self.config)]
        res = subprocess.run(cmd, input=input, capture_output=True, timeout=60)
        if check and res.returncode != 0:
            raise AssertionError(f"{cmd} failed: {res.stderr.decode()}")
        return res

    def add_user(self, address: str, password: str = "secret-pass") -> None:
        """``postwright user add``; a sequence of additions already made once in this test
        run is replayed by copying the accounts file it produced (argon2 is slow)."""
        accounts = self.data / "accounts.json"
        before = accounts.read_bytes() if accounts.exists() else None
        key = (*self._users, (address, password))
        known = key[:-1] in _ACCOUNT_FILES and _ACCOUNT_FILES[key[:-1]] == before
        cached = _ACCOUNT_FILES.get(key)
        if known and cached is not None:
            self.data.mkdir(parents=True, exist_ok=True)
            tmp = accounts.with_name("accounts.json.copy")
            tmp.write_bytes(cached)
            tmp.chmod(0o600)
            os.replace(tmp, accounts)
        else:
            self.cli("user", "add", address, "--password-stdin",
                     input=password.encode() + b"\n")
            if known:
                _ACCOUNT_FILES[key] = accounts.read_bytes()
        self._users = key

    def start(self) -> None:
        if self.proc is not None:
            self.kill()  # reap an earlier run on this data directory
        self.log_lines = []
        _STARTED.append(self)
        self.proc = subprocess.Popen(
            [str(BIN), "serve", "--config", str(self.config)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=self.preexec,
        )
        ready = threading.Event()

        def read() -> None:
            assert self.proc is not None and self.proc.stderr is not None
            for raw in self.proc.stderr:
                try:
                    entry = json.loads(raw)
                except ValueError:
                    entry = {"raw": raw.decode(errors="replace")}
                self.log_lines.append(entry)
                if entry.get("event") == "ready":
                    ready.set()

        self._reader = threading.Thread(target=read, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + 20
        while not ready.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"server did not start: {self.log_lines}")

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(30)
        self._reap()
        return code

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self._reap()

    def _reap(self) -> None:
        """After the process ended: finish reading its log and close the pipe."""
        if self._reader:
            self._reader.join(5)
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()

    def maildir(self, address: str, folder: str = "new") -> Path:
        local, domain = address.split("@")
        return self.data / "mail" / domain / local / folder

    def messages(self, address: str) -> list[Path]:
        d = self.maildir(address)
        return sorted(d.iterdir()) if d.exists() else []

    def wait_messages(self, address: str, count: int, timeout: float = 30.0) -> list[Path]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.messages(address)
            if len(found) >= count:
                return found
            time.sleep(0.05)
        raise AssertionError(f"{address}: {len(self.messages(address))} of {count} messages")

    def events(self, name: str) -> list[dict[str, object]]:
        return [e for e in list(self.log_lines) if e.get("event") == name]

    def wait_event(self, name: str, count: int = 1, timeout: float = 10.0,
                   where: Callable[[dict[str, object]], bool] = lambda e: True,
                   ) -> list[dict[str, object]]:
        """Wait until ``count`` log lines of event ``name`` (matching ``where``) were seen."""
        deadline = time.monotonic() + timeout
        while True:
            found = [e for e in self.events(name) if where(e)]
            if len(found) >= count or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        if len(found) < count:
            raise AssertionError(f"{len(found)} of {count} {name!r} events: {self.log_lines}")
        return found

    def errors(self) -> list[dict[str, object]]:
        """Log lines at level error or above, with a traceback, or not JSON at all."""
        return [e for e in list(self.log_lines)
                if e.get("level") in ("error", "critical") or "exception" in e or "raw" in e]

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def raw(self, port: int | None = None, *, ehlo: str | None = "client.example.org",
            timeout: float = 10.0) -> RawClient:
        """A raw connection; with ``ehlo`` the greeting and EHLO are done and checked."""
        client = RawClient(port or self.smtp_port, timeout)
        if ehlo is not None:
            code, text = client.reply()
            assert code == 220, text
            code, text = client.cmd(f"EHLO {ehlo}")
            assert code == 250, text
        return client

    def smtp(self, port: int | None = None, timeout: float = 10.0) -> smtplib.SMTP:
        """An smtplib client connected to the smtp listener (EHLO done)."""
        client = smtplib.SMTP("127.0.0.1", port or self.smtp_port, timeout=timeout,
                              local_hostname="client.example.org")
        client.ehlo()
        return client

    def send(self, sender: str, recipients: Sequence[str], message: bytes,
             mail_options: Sequence[str] = ()) -> str:
        """Send one message with smtplib; return the queue id from "250 ... queued as ID"."""
        with self.smtp() as client:
            return send_on(client, sender, recipients, message, mail_options)

    @staticmethod
    def queue_id(reply_text: str) -> str:
        return queue_id(reply_text)

    def queue_list(self) -> list[dict[str, Any]]:
        """``postwright queue list --json``, parsed."""
        out = json.loads(self.cli("queue", "list", "--json").stdout)
        assert isinstance(out, list)
        return out


def send_on(client: smtplib.SMTP, sender: str, recipients: Sequence[str], message: bytes,
            mail_options: Sequence[str] = ()) -> str:
    """One transaction on an open smtplib connection; returns the queue id."""
    code, text = client.mail(sender, list(mail_options))
    assert code == 250, (code, text)
    for rcpt in recipients:
        code, text = client.rcpt(rcpt)
        assert code == 250, (rcpt, code, text)
    code, text = client.data(message)
    assert code == 250, (code, text)
    return queue_id(text.decode())


def queue_id(reply_text: str) -> str:
    """The id in a "2.0.0 Ok: queued as ID" reply text."""
    marker = "queued as "
    assert marker in reply_text, reply_text
    return reply_text.split(marker, 1)[1].split()[0]


@pytest.fixture
def no_server_errors() -> Iterator[None]:
    """Fail the test if any server it started logged an error (a crash caught in a task)."""
    _STARTED.clear()
    yield
    for srv in _STARTED:
        errors = srv.errors()
        assert errors == [], (f"server in {srv.tmp} logged errors: "
                              + "".join(str(e.get("raw", e)) for e in errors))
    _STARTED.clear()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    srv = Server(tmp_path)
    srv.add_user("alice@example.test")
    srv.add_user("bob@example.test")
    srv.start()
    yield srv
    srv.kill()


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """A factory of Servers (not started); every one made is killed at the end."""
    made: list[Server] = []

    def factory(extra: str = "", name: str = "s", **options: object) -> Server:
        srv = Server(tmp_path / f"{name}{len(made)}", extra, **options)  # type: ignore[arg-type]
        made.append(srv)
        return srv

    yield factory
    for srv in made:
        srv.kill()


os.environ.setdefault("PYTHONUNBUFFERED", "1")
