"""Drive a running peer and measure it: smtp-source load, a latency probe, RSS, Maildir counts.

One call of :func:`run_load` is one (scenario, peer, round) measurement:

* accepted rate: messages / wall time of the ``smtp-source`` process;
* end-to-end rate: messages / time from the start of ``smtp-source`` until every message
  (times its recipients, plus the probe's messages) is a file in a ``new/`` directory of the
  peer's Maildir tree, polled every 50 ms once smtp-source has exited; in a relay scenario
  (recipients in ``relay.test``), until the relay destination (smtp-sink) has counted that
  many messages, the *relayed* rate;
* latency: our own SMTP client on one extra connection, timing each message from the
  moment it sends the final ``CRLF.CRLF`` (RFC 5321 section 4.1.1.4) to the 250 line;
* memory: every 100 ms, the sum of VmRSS (and of Pss) over the peer's processes; the peak.

:func:`run_idle` (many idle sessions) and :func:`run_big` (one very large message) are the
postwright-only scenarios. Nothing here starts or stops a peer (see ``peers.py``) or formats
results (see ``report.py``).
"""

from __future__ import annotations

import asyncio
import os
import resource
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .destination import RelayDestination
from .peers import DOMAIN, PROBE_LOCAL, RELAY_DOMAIN, Peer

SMTP_SOURCE = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
SENDER = "sender@source.test"


@dataclass(frozen=True)
class Scenario:
    """One smtp-source workload. ``reuse`` = many messages per connection (smtp-source -d);
    ``relay`` = recipients (the probe's too) in RELAY_DOMAIN, which the peer passes on to a
    relay destination instead of storing."""

    name: str
    messages: int
    size: int
    sessions: int = 20
    recipients: int = 1
    reuse: bool = True
    relay: bool = False

    @property
    def domain(self) -> str:
        """The recipients' domain."""
        return RELAY_DOMAIN if self.relay else DOMAIN

    def smtp_source_argv(self, port: int) -> list[str]:
        argv = [SMTP_SOURCE, "-s", str(self.sessions), "-m", str(self.messages),
                "-l", str(self.size), "-r", str(self.recipients), "-f", SENDER,
                "-t", f"user@{self.domain}", "-M", f"client.{DOMAIN}"]
        if self.reuse:
            argv.append("-d")  # smtp-source's -d: don't disconnect after each message
        return [*argv, f"127.0.0.1:{port}"]

    def describe(self) -> str:
        size = f"{self.size // 1000} kB" if self.size >= 10_000 else f"{self.size} B"
        rcpt = f", {self.recipients} rcpt" if self.recipients > 1 else ""
        conn = "many msg/conn" if self.reuse else "1 msg/conn"
        text = f"{self.messages} × {size}{rcpt}, {self.sessions} sessions, {conn}"
        if self.relay:
            text += (f", to user@{self.domain} relayed to smtp-sink; end-to-end = relayed "
                     "(aiosmtpd peers n/a: they relay nothing)")
        return text


def scenarios(quick: bool) -> dict[str, Scenario]:
    """The comparative scenarios, full size or ``--quick`` size."""
    q = quick
    return {s.name: s for s in (
        Scenario("many-per-conn", 300 if q else 8000, 2000),
        Scenario("one-per-conn", 150 if q else 4000, 2000, reuse=False),
        Scenario("100k", 60 if q else 2000, 100_000),
        Scenario("100-rcpt", 10 if q else 300, 2000, recipients=100),
        Scenario("relay", 150 if q else 4000, 2000, relay=True),
    )}


EXTRA_SCENARIOS = ("idle-10k", "big-50mb")


@dataclass
class RunResult:
    scenario: str
    peer: str
    round: int
    ok: bool = False
    error: str | None = None
    accepted_seconds: float | None = None
    accepted_rate: float | None = None
    e2e_seconds: float | None = None
    e2e_rate: float | None = None
    expected_files: int | None = None  # Maildir files, or (relay) messages at smtp-sink
    delivered_files: int | None = None
    relay_sessions: int | None = None  # relay: connections the peer opened to smtp-sink
    latencies_ms: list[float] = field(default_factory=list)
    probe_errors: int = 0
    peak_rss_kb: int = 0
    peak_pss_kb: int = 0


def count_delivered(root: Path) -> int:
    """Files in ``root/<domain>/<mailbox>/new``."""
    total = 0
    try:
        domains = list(os.scandir(root))
    except FileNotFoundError:
        return 0
    for domain in domains:
        try:
            boxes = list(os.scandir(domain.path))
        except (NotADirectoryError, FileNotFoundError):
            continue
        for box in boxes:
            try:
                with os.scandir(os.path.join(box.path, "new")) as it:
                    total += sum(1 for _ in it)
            except (NotADirectoryError, FileNotFoundError):
                continue
    return total


def _proc_kb(path: str, key: bytes) -> int:
    try:
        with open(path, "rb") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def rss_kb(pid: int) -> int:
    return _proc_kb(f"/proc/{pid}/status", b"VmRSS:")


def tree_rss_kb(peer: Peer) -> int:
    """RSS summed over the peer's processes (postwright's delivery agent, Postfix's daemons)."""
    return sum(rss_kb(p) for p in peer.pids())


def hwm_kb(pid: int) -> int:
    return _proc_kb(f"/proc/{pid}/status", b"VmHWM:")


class MemorySampler(threading.Thread):
    """Every ``interval`` seconds, sums VmRSS and Pss over ``peer.pids()``; keeps the peaks.

    For a single-process peer the kernel's own high-water mark (VmHWM) is folded in when
    :meth:`finish` is called, so a short spike between samples is not missed.
    """

    def __init__(self, peer: Peer, interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.peer = peer
        self.interval = interval
        self.peak_rss_kb = 0
        self.peak_pss_kb = 0
        self._halt = threading.Event()

    def sample(self) -> None:
        pids = self.peer.pids()
        rss = sum(rss_kb(p) for p in pids)
        pss = sum(_proc_kb(f"/proc/{p}/smaps_rollup", b"Pss:") for p in pids)
        self.peak_rss_kb = max(self.peak_rss_kb, rss)
        self.peak_pss_kb = max(self.peak_pss_kb, pss)

    def run(self) -> None:
        while not self._halt.wait(self.interval):
            self.sample()

    def finish(self) -> None:
        self._halt.set()
        self.join()
        self.sample()
        pids = self.peer.pids()
        if self.peer.single_process and len(pids) == 1:
            self.peak_rss_kb = max(self.peak_rss_kb, hwm_kb(pids[0]))


def probe_body(size: int) -> bytes:
    """A message of about ``size`` octets, CRLF lines, no trailing CRLF (the terminator
    ``CRLF.CRLF`` supplies it)."""
    head = (f"From: <{SENDER}>\r\nTo: <{PROBE_LOCAL}@{DOMAIN}>\r\n"
            "Subject: latency probe\r\n\r\n").encode()
    line = b"x" * 78 + b"\r\n"
    return head + line * max(1, (size - len(head)) // len(line)) + b"end"


class SmtpClient:
    """A minimal blocking SMTP client (RFC 5321): enough for the probe and the big message."""

    def __init__(self, port: int, timeout: float = 60) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        # without this, Nagle holds the small CRLF.CRLF write until the body is ACKed and
        # the server's delayed ACK adds ~40 ms to every sample
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = self.sock.makefile("rb")
        self.expect(220)
        self.command(f"EHLO probe.{DOMAIN}", 250)

    def reply(self) -> tuple[int, str]:
        lines = []
        while True:
            line = self.reader.readline(2048)
            if not line:
                raise ConnectionError("connection closed by server")
            lines.append(line.decode(errors="replace").rstrip())
            if line[3:4] != b"-":
                return int(line[:3]), " ".join(lines)

    def expect(self, code: int) -> None:
        got, text = self.reply()
        if got != code:
            raise ConnectionError(f"expected {code}, got {text!r}")

    def command(self, line: str, code: int) -> None:
        self.sock.sendall(line.encode() + b"\r\n")
        self.expect(code)

    def send_message(self, recipient: str, body: bytes) -> tuple[float, float]:
        """Send one message; return (seconds sending the body, seconds end-of-data → 250)."""
        self.command(f"MAIL FROM:<{SENDER}>", 250)
        self.command(f"RCPT TO:<{recipient}>", 250)
        self.command("DATA", 354)
        t0 = time.perf_counter()
        self.sock.sendall(body)
        t1 = time.perf_counter()
        self.sock.sendall(b"\r\n.\r\n")
        self.expect(250)
        return t1 - t0, time.perf_counter() - t1

    def close(self) -> None:
        try:
            self.sock.sendall(b"QUIT\r\n")
        except OSError:
            pass
        self.reader.close()
        self.sock.close()


class LatencyProbe(threading.Thread):
    """One extra connection during the load: a message, a pause of ``interval``, again."""

    def __init__(self, port: int, size: int, interval: float = 0.01, limit: int = 2000,
                 domain: str = DOMAIN) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.recipient = f"{PROBE_LOCAL}@{domain}"
        self.body = probe_body(size)
        self.interval = interval
        self.limit = limit
        self.samples_ms: list[float] = []
        self.delivered = 0
        self.errors = 0
        self.last_error = ""
        self._halt = threading.Event()

    def run(self) -> None:
        client: SmtpClient | None = None
        while not self._halt.is_set() and len(self.samples_ms) < self.limit:
            try:
                if client is None:
                    client = SmtpClient(self.port, timeout=30)
                _, latency = client.send_message(self.recipient, self.body)
                self.samples_ms.append(latency * 1000)
                self.delivered += 1
            except (OSError, ConnectionError, ValueError) as exc:
                self.errors += 1
                self.last_error = str(exc)
                if client is not None:
                    client.close()
                client = None
                if self.errors > 20:
                    return
            self._halt.wait(self.interval)
        if client is not None:
            client.close()

    def finish(self) -> None:
        self._halt.set()
        self.join(60)


def run_load(peer: Peer, scenario: Scenario, round_no: int, *,
             destination: RelayDestination | None = None,
             e2e_timeout: float = 300.0, source_timeout: float = 900.0) -> RunResult:
    """One measurement against a freshly started ``peer``; for a relay scenario,
    ``destination`` is the running relay host the peer was configured with."""
    if scenario.relay and destination is None:
        raise ValueError(f"scenario {scenario.name!r} needs a relay destination")
    result = RunResult(scenario.name, peer.name, round_no)
    sampler = MemorySampler(peer)
    probe = LatencyProbe(peer.port, scenario.size, domain=scenario.domain)
    sampler.start()
    probe.start()
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(scenario.smtp_source_argv(peer.port), capture_output=True,
                              text=True, timeout=source_timeout, stdin=subprocess.DEVNULL)
        failure = ""
        if proc.returncode != 0:
            why = (proc.stderr or proc.stdout).strip().splitlines()
            failure = f"smtp-source exit {proc.returncode}: {why[-1] if why else ''}"
    except subprocess.TimeoutExpired:
        failure = f"smtp-source still running after {source_timeout:.0f} s"
    t_accepted = time.perf_counter() - t0
    probe.finish()
    result.latencies_ms = probe.samples_ms
    result.probe_errors = probe.errors
    if failure:
        sampler.finish()
        result.peak_rss_kb, result.peak_pss_kb = sampler.peak_rss_kb, sampler.peak_pss_kb
        result.error = failure
        return result
    result.accepted_seconds = t_accepted
    result.accepted_rate = scenario.messages / t_accepted
    counter: Callable[[], int] | None = None
    if scenario.relay and destination is not None:
        counter, what = (lambda: destination.received), "messages relayed"
    elif peer.mail_root is not None:
        root = peer.mail_root
        counter, what = (lambda: count_delivered(root)), "files delivered"
    if counter is not None:
        # the probe's messages go the same way as smtp-source's; a Maildir gets a file per
        # recipient, smtp-sink counts transactions (all recipients are in one domain)
        per_message = 1 if scenario.relay else scenario.recipients
        expected = scenario.messages * per_message + probe.delivered
        result.expected_files = expected
        deadline = time.perf_counter() + max(30.0, min(e2e_timeout, 20 * t_accepted))
        count = counter()
        while count < expected and time.perf_counter() < deadline:
            time.sleep(0.05)
            count = counter()
        result.delivered_files = count
        if count >= expected:
            result.e2e_seconds = time.perf_counter() - t0
            result.e2e_rate = scenario.messages / result.e2e_seconds
        else:
            result.error = f"only {count} of {expected} {what} in time"
    sampler.finish()
    result.peak_rss_kb, result.peak_pss_kb = sampler.peak_rss_kb, sampler.peak_pss_kb
    if probe.errors:
        result.error = (result.error or "") + f" probe errors: {probe.errors} " \
                                              f"({probe.last_error})"
    result.ok = result.error is None
    return result


def raise_nofile(wanted: int) -> int:
    """Raise this process's RLIMIT_NOFILE (children inherit it); return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return soft
    if hard != resource.RLIM_INFINITY and hard < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))  # needs root
            return wanted
        except (ValueError, OSError):
            wanted = hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    return wanted


async def _open_idle(port: int, count: int, parallel: int = 200
                     ) -> tuple[list[asyncio.StreamWriter], int, str]:
    writers: list[asyncio.StreamWriter] = []
    failures = 0
    last = ""
    gate = asyncio.Semaphore(parallel)

    async def one() -> None:
        nonlocal failures, last
        async with gate:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                line = await asyncio.wait_for(reader.readline(), 60)
            except (TimeoutError, OSError) as exc:
                failures += 1
                last = str(exc) or type(exc).__name__
                return
            if line.startswith(b"220"):
                writers.append(writer)
            else:
                failures += 1
                last = line.decode(errors="replace").strip()
                writer.close()

    await asyncio.gather(*(one() for _ in range(count)))
    return writers, failures, last


def run_idle(peer: Peer, count: int) -> dict[str, object]:
    """Open ``count`` sessions, read each greeting, leave them idle; measure server RSS."""
    pid = peer.pids()[0]
    before = tree_rss_kb(peer)
    out: dict[str, object] = {"scenario": "idle-10k", "peer": peer.name, "sessions": count,
                              "rss_before_kb": before}

    async def main() -> None:
        t0 = time.perf_counter()
        writers, failures, last = await _open_idle(peer.port, count)
        out["open_seconds"] = round(time.perf_counter() - t0, 3)
        await asyncio.sleep(1.0)
        samples = []
        for _ in range(5):
            samples.append(tree_rss_kb(peer))
            await asyncio.sleep(0.2)
        out.update(greeted=len(writers), failures=failures, last_failure=last,
                   rss_idle_kb=max(samples), hwm_kb=hwm_kb(pid))
        for writer in writers:
            writer.close()
        await asyncio.gather(*(w.wait_closed() for w in writers), return_exceptions=True)

    asyncio.run(main())
    greeted = int(str(out["greeted"]))
    grown = int(str(out["rss_idle_kb"])) - before
    out["kb_per_session"] = round(grown / greeted, 2) if greeted else None
    out["ok"] = greeted == count
    return out


def run_big(peer: Peer, size: int) -> dict[str, object]:
    """One message of ``size`` body octets: time to 250, time to the Maildir, RSS growth."""
    assert peer.mail_root is not None
    before = tree_rss_kb(peer)  # the same processes the sampler sums
    sampler = MemorySampler(peer, interval=0.05)
    sampler.start()
    out: dict[str, object] = {"scenario": "big-50mb", "peer": peer.name, "size": size,
                              "rss_before_kb": before}
    t0 = time.perf_counter()
    try:
        client = SmtpClient(peer.port, timeout=300)
        sending, to_250 = client.send_message(f"big@{DOMAIN}", probe_body(size))
        client.close()
    except (OSError, ConnectionError) as exc:
        sampler.finish()
        out.update(ok=False, error=str(exc), peak_rss_kb=sampler.peak_rss_kb)
        return out
    out.update(body_to_250_seconds=round(sending + to_250, 3),
               eod_to_250_seconds=round(to_250, 3))
    box = peer.mail_root / DOMAIN / "big" / "new"
    deadline = time.perf_counter() + 300
    delivered = None
    while time.perf_counter() < deadline:
        files = list(box.iterdir()) if box.exists() else []
        if files:  # Maildir: a file appears in new/ only once complete (rename from tmp/)
            delivered = time.perf_counter() - t0
            out["delivered_file_size"] = files[0].stat().st_size
            break
        time.sleep(0.05)
    sampler.finish()
    out.update(delivered_seconds=round(delivered, 3) if delivered is not None else None,
               peak_rss_kb=sampler.peak_rss_kb, growth_kb=sampler.peak_rss_kb - before,
               ok=delivered is not None)
    if delivered is None:
        out["error"] = "not delivered within 300 s"
    return out
