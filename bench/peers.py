"""The three servers the benchmark compares, each started and stopped by the script.

Every peer gets its own temporary directory and its own free loopback port:

* :class:`PostwrightPeer` runs ``python -m postwright serve`` from this repository's venv
  with a generated TOML config (wildcard domain ``bench.test``, log level ``warning``).
* :class:`PostfixPeer` runs a private Postfix instance (``postwright.testing.postfix``:
  its own ``config_directory``, ``queue_directory`` and ``data_directory``, started with
  ``postfix -c DIR start`` / ``stop``); this module adds ``virtual(8)`` mailboxes for the
  bench's addresses and the relay host. It needs root and the Debian package.
* :class:`SinkPeer` runs an aiosmtpd ``Controller`` in a child process (``python -m
  bench.peers sink PORT [asyncio|uvloop]``) whose handler answers ``250 OK`` and stores
  nothing. Peer ``aiosmtpd`` is aiosmtpd as shipped, on asyncio's default event loop (the
  uvloop policy is never installed in that process); the optional peer ``aiosmtpd-uvloop``
  is the same sink on uvloop.

For the ``relay`` scenario postwright and Postfix are given a relay host (``relayhost``,
loopback clients trusted to relay); what listens there is in ``destination.py``.

What this module does not do: drive load or measure anything except which processes belong
to a peer (:meth:`Peer.pids`). No RFC is implemented here; the servers speak RFC 5321.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from postwright.testing.postfix import PostfixError, PrivatePostfix, processes
from postwright.testing.postfix import wait_for_greeting as _wait_for_greeting

REPO = Path(__file__).resolve().parents[1]
DOMAIN = "bench.test"
PROBE_LOCAL = "probe"
POSTCONF = Path("/usr/sbin/postconf")
# the aiosmtpd sinks, by peer name: the event loop each runs on
SINK_LOOPS = {"aiosmtpd": "asyncio", "aiosmtpd-uvloop": "uvloop"}
PEER_NAMES = ("postwright", "postfix", *SINK_LOOPS)  # every peer --peers accepts
DEFAULT_PEERS = ("postwright", "postfix", "aiosmtpd")  # aiosmtpd-uvloop only on request
RELAY_PEERS = ("postwright", "postfix")  # the peers that can pass mail on
RELAY_DOMAIN = "relay.test"  # neither peer's own domain: its mail goes to the relay host


class PeerError(Exception):
    """A peer could not be set up or started; the message says why, in one line."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_greeting(port: int, timeout: float, proc: subprocess.Popen[bytes]) -> str:
    """The 220 line of a server this bench started on loopback ``port``; PeerError on
    timeout or if the process exits first."""
    return _wait_for_greeting(
        "127.0.0.1", port, timeout,
        lambda: None if proc.poll() is None else
        f"exited with status {proc.returncode} during start-up", PeerError)


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants that are alive now (from /proc)."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _group) in processes().items():
        children.setdefault(ppid, []).append(pid)
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        if pid == root and not os.path.exists(f"/proc/{pid}"):
            continue
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


class Peer:
    """One server under test. ``mail_root`` is the Maildir tree (``<root>/<domain>/<local>/
    new``), or None for a peer that stores nothing."""

    name = "peer"
    single_process = True

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.mail_root: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "server.log"

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def pids(self) -> list[int]:
        if self.proc is None or self.proc.poll() is not None:
            return []
        return process_tree(self.proc.pid)

    def log_tail(self, lines: int = 5) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(text[-lines:])

    def _spawn(self, argv: list[str]) -> None:
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=log, cwd=REPO)
        try:
            wait_for_greeting(self.port, 20, self.proc)
        except PeerError as exc:
            self.stop()
            raise PeerError(f"{exc}; log: {self.log_tail()}") from None


class PostwrightPeer(Peer):
    """postwright from this checkout, run by the interpreter that runs the bench."""

    name = "postwright"

    def __init__(self, workdir: Path, limits: dict[str, int] | None = None,
                 relayhost: int | None = None) -> None:
        super().__init__(workdir)
        self.data = workdir / "data"
        self.mail_root = self.data / "mail"
        self.config = workdir / "postwright.toml"
        wanted = {"max_connections_per_client": 1000, **(limits or {})}
        limit_lines = "".join(f"{k} = {v}\n" for k, v in sorted(wanted.items()))
        relay_lines = "" if relayhost is None else (
            # all remote mail to the smarthost; loopback clients may relay without AUTH
            f'[delivery]\nrelayhost = "127.0.0.1:{relayhost}"\n')
        trusted = "" if relayhost is None else 'trusted_networks = ["127.0.0.0/8"]\n'
        self.config.write_text(
            f'hostname = "pw.{DOMAIN}"\n'
            f'data_dir = "{self.data}"\n'
            "[listen]\n"
            f'smtp = ["127.0.0.1:{self.port}"]\n'
            "submission = []\n"
            "submissions = []\n"
            "[domains]\n"
            f'local = ["{DOMAIN}"]\n'
            f'wildcard = ["{DOMAIN}"]\n'
            "[limits]\n"
            + limit_lines
            + relay_lines
            + "[submission]\n"
            # no per-client connection rate limit, as in the Postfix peer
            "connections_per_minute = 0\n"
            + trusted
            # The Postfix peer checks no SPF/DKIM/DMARC either; loopback has no DNS to ask.
            + "[authentication]\nchecks = false\n"
            + "[log]\n"
            'level = "warning"\n'
        )

    def start(self) -> None:
        self._spawn([sys.executable, "-m", "postwright", "serve", "--config", str(self.config)])


class SinkPeer(Peer):
    """aiosmtpd answering 250 to everything, in its own process (so it has its own core).
    ``loop`` is ``asyncio`` (stock aiosmtpd, peer ``aiosmtpd``) or ``uvloop`` (peer
    ``aiosmtpd-uvloop``)."""

    def __init__(self, workdir: Path, loop: str = "asyncio") -> None:
        super().__init__(workdir)
        if loop not in SINK_LOOPS.values():
            raise ValueError(f"unknown event loop {loop!r}")
        self.loop = loop
        self.name = next(n for n, kind in SINK_LOOPS.items() if kind == loop)

    def start(self) -> None:
        self._spawn([sys.executable, "-m", "bench.peers", "sink", str(self.port), self.loop])

    def loop_class(self) -> str:
        """The class of the event loop the running sink reported (from its log)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            text = ""
        for line in text.splitlines():
            if line.startswith(_LOOP_LINE):
                return line[len(_LOOP_LINE):].strip()
        return "unknown"


class PostfixPeer(Peer):
    """A private Postfix instance (:class:`PrivatePostfix`): every directory under
    ``workdir``, smtpd on our port, virtual(8) delivering bench.test into Maildirs."""

    name = "postfix"
    single_process = False

    def __init__(self, workdir: Path, relayhost: int | None = None) -> None:
        super().__init__(workdir)
        etc = workdir / "etc"
        # [brackets]: no MX lookup, the address itself; concurrency limits stay at the defaults
        relay = "" if relayhost is None else f"relayhost = [127.0.0.1]:{relayhost}\n"
        self.instance = PrivatePostfix(
            workdir, self.port, domain=DOMAIN, hostname=f"pfx.{DOMAIN}",
            main_cf_extra=(
                "myorigin = $myhostname\n"
                "local_recipient_maps =\n"
                "smtpd_recipient_restrictions = permit_mynetworks, reject_unauth_destination\n"
                f"virtual_mailbox_maps = texthash:{etc}/vmailbox, static:{DOMAIN}/_other/\n"
                + relay))
        self.etc = etc
        self.mail_root = self.instance.mail
        self.log_path = self.instance.log

    @staticmethod
    def unavailable() -> str | None:
        return PrivatePostfix.unavailable()

    def start(self) -> None:
        try:
            self.instance.configure()
            # smtp-source's addresses: user, 2user .. 100user (-r 100) and our probe; anything
            # else still gets a Maildir, the shared "_other" one
            names = ["user", PROBE_LOCAL] + [f"{i}user" for i in range(2, 101)]
            (self.etc / "vmailbox").write_text(
                "".join(f"{n}@{DOMAIN} {DOMAIN}/{n}/\n" for n in names))
            self.instance.start()
        except (OSError, PostfixError) as exc:
            raise PeerError(str(exc)) from None

    def stop(self) -> None:
        self.instance.stop()

    def pids(self) -> list[int]:
        return self.instance.pids()

    def version(self) -> str:
        res = subprocess.run([str(POSTCONF), "-c", str(self.etc), "-dh", "mail_version"],
                             capture_output=True, text=True, timeout=30)
        return res.stdout.strip() or "unknown"


def unavailable(name: str) -> str | None:
    """Why peer ``name`` cannot run on this machine, or None."""
    if name == "postfix":
        return PostfixPeer.unavailable()
    if name in SINK_LOOPS:
        try:
            import aiosmtpd  # noqa: F401
        except ImportError:
            return "aiosmtpd is not installed in this venv (pip install -e '.[bench]')"
    if name == "postwright":
        try:
            import postwright  # noqa: F401
        except ImportError:
            return "postwright is not installed in this venv (make install)"
    return None


def make_peer(name: str, base: Path | None, limits: dict[str, int] | None = None,
              relayhost: int | None = None) -> Peer:
    """A new, not yet started peer with a fresh temporary directory under ``base``; with
    ``relayhost`` (a loopback port) it passes all remote mail there (RELAY_PEERS only)."""
    if relayhost is not None and name not in RELAY_PEERS:
        raise ValueError(f"peer {name!r} cannot relay")
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-{name}-", dir=base))
    if name == "postwright":
        return PostwrightPeer(workdir, limits, relayhost)
    if name == "postfix":
        return PostfixPeer(workdir, relayhost)
    if name in SINK_LOOPS:
        return SinkPeer(workdir, SINK_LOOPS[name])
    raise ValueError(f"unknown peer {name!r}")


def discard(peer: Peer) -> None:
    """Stop ``peer`` (if running). Its directory stays until the whole bench ends (see
    ``bench.__main__``): deleting thousands of files just before the next peer starts makes
    that peer pay for it (ext4 scans past recently freed inodes when it allocates new ones)."""
    peer.stop()


_LOOP_LINE = "sink event loop:"  # the sink's first stderr line, read by SinkPeer.loop_class


def _sink_main(port: int, kind: str) -> None:
    """The aiosmtpd sink process: 250 OK to every message, nothing kept. ``kind`` is
    ``asyncio`` (aiosmtpd as shipped: its Controller makes its own loop under asyncio's
    default policy) or ``uvloop``."""
    import asyncio

    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import SMTP, Envelope, Session

    class Sink:
        async def handle_DATA(self, server: SMTP, session: Session,
                              envelope: Envelope) -> str:
            return "250 OK"

    loop: asyncio.AbstractEventLoop | None = None
    if kind == "uvloop":
        import uvloop
        loop = uvloop.new_event_loop()
    else:
        asyncio.set_event_loop_policy(None)  # asyncio's default policy, whatever ran before
    stop = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop)  # the server thread inherits the mask
    controller = Controller(Sink(), hostname="127.0.0.1", port=port, loop=loop,
                            server_hostname=f"sink.{DOMAIN}", ready_timeout=20)
    cls = type(controller.loop)
    name = f"{cls.__module__}.{cls.__qualname__}"
    if not name.startswith(f"{kind}."):
        sys.exit(f"sink: wanted a {kind} event loop, got {name}")
    print(f"{_LOOP_LINE} {name}", file=sys.stderr, flush=True)  # before the 220 can be read
    controller.start()
    signal.sigwait(stop)
    controller.stop()


if __name__ == "__main__":
    if len(sys.argv) in (3, 4) and sys.argv[1] == "sink" and sys.argv[3:] in (
            [], ["asyncio"], ["uvloop"]):
        _sink_main(int(sys.argv[2]), sys.argv[3] if len(sys.argv) == 4 else "asyncio")
    else:
        sys.exit("usage: python -m bench.peers sink PORT [asyncio|uvloop]")
