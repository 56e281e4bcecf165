"""The relay destination of the ``relay`` scenario: Postfix's ``smtp-sink``, counted.

:class:`RelayDestination` starts ``smtp-sink -c [-u nobody] 127.0.0.1:PORT 1000`` on a free
loopback port (``-u`` is required when running as root), reads the counter line it keeps
rewriting on stdout, and so knows how many messages and sessions it has had. smtp-sink
answers 250 to every message and discards it, so what is measured is the sender.

What this module does not do: configure the peers (``peers.py``) or time anything
(``load.py``). smtp-sink speaks enough of RFC 5321 (ESMTP, PIPELINING, no STARTTLS).
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

from .peers import PeerError, free_port, wait_for_greeting

SMTP_SINK = Path(shutil.which("smtp-sink") or "/usr/sbin/smtp-sink")


class RelayDestination:
    """Postfix's ``smtp-sink`` on a free loopback port: accepts every message, keeps nothing.

    With ``-c`` it rewrites one counter line (``\\rsess=N quit=N mesg=N``) on stdout each
    time a session ends, a QUIT arrives or a message's final ``.`` is accepted. A thread
    reads that pipe, so :attr:`received` is the number of messages accepted so far and
    :attr:`sessions` the number of SMTP sessions that have ended (our own greeting check is
    one of them; :attr:`peer_sessions` leaves it out).
    """

    _COUNT = re.compile(rb"mesg=(\d+)")
    _SESSIONS = re.compile(rb"sess=(\d+)")

    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.received = 0
        self.sessions = 0
        self.other_output = b""  # anything that is not a counter line (warnings, fatal)
        self._reader: threading.Thread | None = None

    @staticmethod
    def unavailable() -> str | None:
        if not SMTP_SINK.exists():
            return f"{SMTP_SINK} not found (apt-get install postfix)"
        if os.geteuid() == 0:
            try:
                pwd.getpwnam("nobody")
            except KeyError:
                return "smtp-sink as root needs user nobody for -u"
        return None

    def start(self) -> None:
        argv = [str(SMTP_SINK), "-c"]
        if os.geteuid() == 0:
            argv += ["-u", "nobody"]  # required as root: drop privileges after bind
        argv += [f"127.0.0.1:{self.port}", "1000"]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        try:
            wait_for_greeting(self.port, 10, self.proc)
        except PeerError as exc:
            self.stop()
            raise PeerError(f"smtp-sink: {exc}; output: {self.describe_output()}") from None

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        pending = b""
        while chunk := os.read(fd, 65536):
            *lines, pending = re.split(rb"[\r\n]", pending + chunk)
            # the newest counter line is complete only once the next update starts with \r;
            # read it anyway: a line cut short just shows fewer digits, and max() keeps the
            # count from going back
            for line in [*lines, pending]:
                found = self._COUNT.search(line)
                if found:
                    self.received = max(self.received, int(found.group(1)))
                ended = self._SESSIONS.search(line)
                if ended:
                    self.sessions = max(self.sessions, int(ended.group(1)))
            self._note([line for line in lines if not self._COUNT.search(line)])
        self._note([pending] if not self._COUNT.search(pending) else [])

    def _note(self, lines: list[bytes]) -> None:
        text = b"\n".join(line for line in lines if line.strip())
        if text:
            self.other_output = (self.other_output + b"\n" + text)[-2000:]

    @property
    def peer_sessions(self) -> int:
        """Sessions other than our start-up check: once the peer has stopped, how many
        connections it opened to deliver (how well it reuses them)."""
        return max(0, self.sessions - 1)

    def describe_output(self) -> str:
        text = self.other_output.decode(errors="replace").strip()
        return " | ".join(text.splitlines()[-3:]) or "none"

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            time.sleep(0.2)  # let the counter catch up with sessions that just ended
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self._reader is not None:
            self._reader.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
