"""Outbound delivery end to end: a sending postwright, a loopback DNS server, real receivers.

The sender's ``[dns]`` points at a :class:`DnsServer` whose MX records name hosts on
127.0.0.x; every candidate listens on one shared port (``[delivery] smtp_port``), so the
receivers differ by address: a second postwright (receiving for remote.test and other.test,
on 127.0.0.1) and Postfix's smtp-sink (127.0.0.2, 127.0.0.3), whose ``-v`` log tells what it
was sent. Mail enters the sender with ``postwright send`` (the control socket), retries are
driven with ``postwright queue flush``, bounces are read from the local sender's Maildir and
parsed with :mod:`email`.

Covers: MX failover (RFC 5321 section 5.1), null MX (RFC 7505), 4xx retry and 5xx bounce
(RFC 5321 section 4.2.1, RFC 3464 reports), expiry (4.4.7), partial recipient success,
connection reuse, the per-destination session limit, CRLF and dot-stuffing on the way out
(RFC 5321 sections 2.3.8 and 4.5.2), required and opportunistic TLS (RFC 3207, RFC 7435),
never a bounce for a bounce (RFC 5321 section 6.1).
Not here: the relay host and its AUTH, DSN parameters on the wire (NOTIFY, RET, ENVID), and
servers that stay silent (the client's timeouts are minutes long).
"""

from __future__ import annotations

import email
import email.message
import email.policy
import json
import os
import re
import shutil
import smtplib
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from postwright.testing.dnsserver import DnsServer, Records

if TYPE_CHECKING:
    from conftest import Server

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("no_server_errors")]

ALICE = "alice@example.test"  # the local sender; bounces come back to her Maildir
POSTWRIGHT = Path(sys.executable).parent / "postwright"
SINK = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
RECEIVER_IP = "127.0.0.1"  # the receiving postwright
SINK_IP = "127.0.0.2"
OTHER_IP = "127.0.0.3"  # behind a Recorder on SINK_IP, no DNS name
RECORDS: Records = {
    "remote.test": {"MX": ["10 mx.remote.test."]},
    "other.test": {"MX": ["10 mx.remote.test."]},
    "mx.remote.test": {"A": RECEIVER_IP},
    "sink.remote.test": {"A": SINK_IP},
    "nullmx.test": {"MX": ["0 ."]},
}
# Relaying from the test's own address without AUTH, for bulk and raw-byte submissions.
TRUSTED = '[submission]\ntrusted_networks = ["127.0.0.1/32"]\nsender_policy = "any"\n'
_SINK_LINE = re.compile(r"\S*smtp-sink: (.*)")
_BARE = re.compile(rb"\r(?!\n)|(?<!\r)\n")

MakeServer = Callable[..., "Server"]


# ---- the world: DNS, one shared port, receivers, the sender --------------------------------

def _free_everywhere(port: int) -> bool:
    for ip in (RECEIVER_IP, SINK_IP, OTHER_IP):
        with socket.socket() as s:
            try:
                s.bind((ip, port))
            except OSError:
                return False
    return True


@pytest.fixture
def port() -> int:
    """A port free on every 127.0.0.x the receivers use."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind((RECEIVER_IP, 0))
            candidate = int(s.getsockname()[1])
        if _free_everywhere(candidate):
            return candidate
    raise AssertionError("no port free on all receiver addresses")


@pytest.fixture
def dns() -> Iterator[DnsServer]:
    with DnsServer(RECORDS) as server:
        yield server
    assert server.errors == []


def toml(value: object) -> str:
    return json.dumps(value)  # ints, floats, strings and lists of strings read the same


def make_sender(make_server: MakeServer, dns: DnsServer, port: int, extra: str = "",
                **delivery: object) -> Server:
    """A postwright whose remote mail goes by MX through ``dns`` to ``port``."""
    settings: dict[str, object] = {"smtp_port": port, "retry_first": 1, "retry_max": 2}
    settings.update(delivery)
    srv = make_server(
        f"[dns]\nnameservers = {toml([dns.address])}\ntimeout = 2\n[delivery]\n"
        + "".join(f"{k} = {toml(v)}\n" for k, v in settings.items()) + extra,
        name="sender", domains=("example.test",), aliases={})
    srv.start()
    return srv


def make_receiver(make_server: MakeServer, port: int, extra: str = "", *,
                  users: tuple[str, ...] = ()) -> Server:
    """A postwright for remote.test and other.test on RECEIVER_IP:port.

    Without ``users`` every local part is accepted (wildcard domains); with them, only
    those accounts exist and anyone else gets 550 5.1.1 at RCPT.
    """
    domains = ("remote.test", "other.test")
    srv = make_server(extra, name="receiver", domains=domains,
                      wildcard=() if users else domains, aliases={})
    text = srv.config.read_text()
    listen = f'smtp = ["127.0.0.1:{srv.smtp_port}"]'
    assert listen in text and 'hostname = "mx.example.test"' in text
    srv.config.write_text(text.replace(listen, f'smtp = ["{RECEIVER_IP}:{port}"]')
                          .replace('hostname = "mx.example.test"', 'hostname = "mx.remote.test"'))
    srv.smtp_port = port
    for user in users:
        srv.add_user(user)
    srv.start()
    return srv


def _listening(ip: str, port: int) -> bool:
    address = int.from_bytes(socket.inet_aton(ip), "little")
    want = f"{address:08X}:{port:04X}"
    with open("/proc/net/tcp") as table:
        return any(line.split()[1] == want and line.split()[3] == "0A"
                   for line in table.readlines()[1:])


class Sink:
    """Postfix's smtp-sink on ip:port; its ``-v`` log shows each command it was sent."""

    def __init__(self, tmp: Path, ip: str, port: int, *options: str) -> None:
        if not Path(SINK).exists():
            pytest.skip(f"{SINK} is not installed")
        self.log_path = tmp / f"sink-{ip}-{time.monotonic_ns()}.log"
        user = ["-u", "nobody"] if os.geteuid() == 0 else []  # required when run as root
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen([SINK, *user, "-v", *options, f"{ip}:{port}", "64"],
                                         stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + 10
        while not _listening(ip, port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"smtp-sink did not start: {self.log_path.read_text()}")
            time.sleep(0.02)

    def lines(self) -> list[str]:
        return [m.group(1) for line in self.log_path.read_text().splitlines()
                if (m := _SINK_LINE.match(line))]

    def count(self, command: str) -> int:
        """How many lines of the conversation log start with ``command`` (lower case)."""
        return sum(1 for line in self.lines() if line.split(" ", 1)[0].lower() == command)

    def wait(self, command: str, count: int = 1, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while self.count(command) < count:
            assert time.monotonic() < deadline, "\n".join(self.lines())
            time.sleep(0.02)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@pytest.fixture
def sinks(tmp_path: Path) -> Iterator[Callable[..., Sink]]:
    made: list[Sink] = []

    def factory(ip: str, port: int, *options: str) -> Sink:
        made.append(Sink(tmp_path, ip, port, *options))
        return made[-1]

    yield factory
    for sink in made:
        sink.stop()


class Recorder:
    """A TCP relay from ``listen`` to ``target`` that keeps every byte the client sent."""

    def __init__(self, listen: tuple[str, int], target: tuple[str, int]) -> None:
        self.target = target
        self.sent = bytearray()
        self.server = socket.create_server(listen)
        self.server.settimeout(0.1)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self.server.accept()
            except TimeoutError:
                continue
            thread = threading.Thread(target=self._relay, args=(client,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _relay(self, client: socket.socket) -> None:
        with client, socket.create_connection(self.target, timeout=10) as upstream:
            back = threading.Thread(target=self._pump, args=(upstream, client, False))
            back.start()
            self._pump(client, upstream, True)
            back.join(10)

    def _pump(self, src: socket.socket, dst: socket.socket, keep: bool) -> None:
        try:
            while chunk := src.recv(65536):
                if keep:
                    self.sent += chunk
                dst.sendall(chunk)
        except OSError:
            pass
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(5)
        self.server.close()


# ---- helpers ------------------------------------------------------------------------------

def send(srv: Server, *recipients: str, subject: str = "outbound", body: bytes = b"hello\n",
         sender: str = ALICE) -> str:
    """``postwright send``; returns the queue id."""
    args = ["send", "--from", sender, "--subject", subject]
    for rcpt in recipients:
        args += ["--to", rcpt]
    out = srv.cli(*args, input=body).stdout.decode()
    found = re.search(r"queued as (\S+)", out)
    assert found, out
    return found.group(1)


def start_send(srv: Server, rcpt: str) -> subprocess.Popen[bytes]:
    """``postwright send`` to ``rcpt`` in the background; :func:`finish_send` reaps it."""
    return subprocess.Popen([str(POSTWRIGHT), "send", "--from", ALICE, "--to", rcpt,
                             "--subject", f"for {rcpt}", "--config", str(srv.config)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def finish_send(proc: subprocess.Popen[bytes]) -> str:
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    found = re.search(rb"queued as (\S+)", out)
    assert found, out
    return found.group(1).decode()


def queue_many(srv: Server, recipients: list[str]) -> list[str]:
    """One ``postwright send`` per recipient, all at once; returns the queue ids."""
    return [finish_send(proc) for proc in [start_send(srv, rcpt) for rcpt in recipients]]


def submission(srv: Server) -> smtplib.SMTP:
    """An smtplib client on the submission port, after STARTTLS (needs TRUSTED)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    client = smtplib.SMTP("127.0.0.1", srv.submission_port, timeout=10,
                          local_hostname="client.example.org")
    client.starttls(context=ctx)
    client.ehlo()
    return client


def for_rcpt(address: str) -> Callable[[dict[str, object]], bool]:
    return lambda e: e.get("recipient") == address


def wait_empty(srv: Server, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while (left := srv.queue_list()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert left == [], left


def parse(path: Path) -> email.message.Message:
    return email.message_from_bytes(path.read_bytes(), policy=email.policy.compat32)


def subparts(msg: email.message.Message) -> list[email.message.Message]:
    """The parts of a multipart, or the field blocks of a message/delivery-status."""
    payload = msg.get_payload()
    assert isinstance(payload, list), payload
    parts = [part for part in payload if isinstance(part, email.message.Message)]
    assert len(parts) == len(payload), payload
    return parts


def report(path: Path) -> tuple[email.message.Message, email.message.Message,
                                list[email.message.Message]]:
    """An RFC 3464 bounce in a Maildir file: (message, per-message fields, per-recipient)."""
    raw = path.read_bytes()
    assert raw.startswith(b"Return-Path: <>\n"), raw[:200]  # from the null sender
    msg = parse(path)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    assert msg["Auto-Submitted"] == "auto-replied"
    parts = subparts(msg)
    assert len(parts) == 3
    assert parts[0].get_content_type() == "text/plain"
    assert parts[1].get_content_type() == "message/delivery-status"
    blocks = subparts(parts[1])
    assert len(blocks) >= 2
    per_message = blocks[0]
    assert per_message["Reporting-MTA"] == "dns; mx.example.test"
    return msg, per_message, blocks[1:]


def received_by(path: Path) -> str:
    """The receiving server's own (first) Received header, unfolded."""
    received = parse(path).get_all("Received") or []
    assert received, path.read_text()
    return " ".join(str(received[0]).split())


# ---- routing ------------------------------------------------------------------------------

FIRST_MX = {"nothing listening": None, "421 greeting": "CONNECT", "421 to RCPT": "RCPT"}


@pytest.mark.parametrize("first", list(FIRST_MX))
def test_failover_to_the_next_mx(make_server: MakeServer, dns: DnsServer, port: int,
                                 sinks: Callable[..., Sink], first: str) -> None:
    dns.set("remote.test", "MX", ["10 sink.remote.test.", "20 mx.remote.test."])
    closing = FIRST_MX[first]  # smtp-sink -Q: "421" and hang up after this command
    sink = sinks(SINK_IP, port, "-Q", closing) if closing else None
    receiver = make_receiver(make_server, port)
    sender = make_sender(make_server, dns, port)
    send(sender, "bob@remote.test", subject="failover")
    [path] = receiver.wait_messages("bob@remote.test", 1)
    assert b"Subject: failover" in path.read_bytes()
    [done] = sender.wait_event("delivered", where=for_rcpt("bob@remote.test"))
    assert "mx.remote.test[127.0.0.1]" in str(done["reply"])
    assert sender.events("deferred") == []  # on the first attempt, not a retry
    if sink is not None:
        assert sink.count("connect") == 1 and sink.count("data") == 0, sink.lines()
        assert sink.count("rcpt") == (closing == "RCPT")
    wait_empty(sender)


def test_null_mx_bounces_at_once(make_server: MakeServer, dns: DnsServer, port: int) -> None:
    sender = make_sender(make_server, dns, port)
    qid = send(sender, "nobody@nullmx.test", subject="to a null MX")
    [path] = sender.wait_messages(ALICE, 1, timeout=10)
    msg, per_message, [rcpt] = report(path)
    assert per_message["X-Postwright-Queue-ID"] == qid
    assert per_message["Arrival-Date"] is not None
    assert rcpt["Final-Recipient"] == "rfc822; nobody@nullmx.test"
    assert rcpt["Action"] == "failed"
    assert rcpt["Status"] == "5.1.10"
    assert "null MX" in str(rcpt["Diagnostic-Code"])
    assert "Subject: to a null MX" in str(subparts(msg)[2])  # the original comes back
    assert sender.events("deferred") == []
    assert dns.queries[("nullmx.test", "MX")] == 1  # one look-up, no retries
    wait_empty(sender)


def test_4xx_at_rcpt_then_delivered_on_retry(make_server: MakeServer, dns: DnsServer,
                                              port: int, sinks: Callable[..., Sink]) -> None:
    dns.set("remote.test", "MX", "10 sink.remote.test.")
    busy = sinks(SINK_IP, port, "-r", "RCPT")  # 450 4.3.0 to every RCPT
    sender = make_sender(make_server, dns, port, retry_first=30, retry_max=30)
    qid = send(sender, "bob@remote.test", subject="retry me")
    [deferred] = sender.wait_event("deferred", where=for_rcpt("bob@remote.test"))
    assert "450 4.3.0" in str(deferred["reply"]) and "RCPT" in str(deferred["reply"])
    [entry] = sender.queue_list()
    assert entry["id"] == qid and entry["recipients"][0]["status"] == "deferred"
    assert busy.count("data") == 0  # no accepted recipient: no content sent
    busy.stop()
    fine = sinks(SINK_IP, port)
    sender.cli("queue", "flush")
    sender.wait_event("delivered", where=for_rcpt("bob@remote.test"))
    assert fine.count("mail") == 1 and fine.count(".") == 1
    wait_empty(sender)
    assert sender.messages(ALICE) == []  # no bounce, no delay notice


def test_5xx_bounces_with_a_well_formed_report(make_server: MakeServer, dns: DnsServer,
                                               port: int, sinks: Callable[..., Sink]) -> None:
    dns.set("remote.test", "MX", "10 sink.remote.test.")
    sinks(SINK_IP, port, "-f", "RCPT", "-B", "550 5.7.1 carol is not wanted here")
    sender = make_sender(make_server, dns, port)
    send(sender, "carol@remote.test", subject="refused", body=b"the original text\n")
    [path] = sender.wait_messages(ALICE, 1)
    msg, _per_message, [rcpt] = report(path)
    assert msg["To"] is not None and ALICE in msg["To"]
    assert rcpt["Final-Recipient"] == "rfc822; carol@remote.test"
    assert rcpt["Action"] == "failed"
    assert rcpt["Status"] == "5.7.1"
    assert rcpt["Remote-MTA"] == "dns; sink.remote.test"
    diagnostic = " ".join(str(rcpt["Diagnostic-Code"]).split())
    assert diagnostic.startswith("smtp;")
    assert "550 5.7.1 carol is not wanted here" in diagnostic
    original = subparts(msg)[2]
    assert original.get_content_type() in ("message/rfc822", "text/rfc822-headers")
    assert "Subject: refused" in str(original)
    assert sender.events("deferred") == []
    wait_empty(sender)


def test_expired_message_bounces_with_4_4_7(make_server: MakeServer, dns: DnsServer,
                                            port: int) -> None:
    dns.set("remote.test", "MX", "10 sink.remote.test.")  # nothing listens there
    sender = make_sender(make_server, dns, port, lifetime=1)
    send(sender, "dave@remote.test", subject="too late")
    first = sender.wait_event("deferred", where=for_rcpt("dave@remote.test"))[0]
    assert "4.4.1" in str(first["reply"])
    time.sleep(1.1)  # past the lifetime
    sender.cli("queue", "flush")
    [path] = sender.wait_messages(ALICE, 1)
    _msg, _per_message, [rcpt] = report(path)
    assert rcpt["Final-Recipient"] == "rfc822; dave@remote.test"
    assert rcpt["Action"] == "failed"
    assert rcpt["Status"] == "4.4.7"
    assert "expired" in str(rcpt["Diagnostic-Code"])
    wait_empty(sender)


def test_one_recipient_delivered_one_bounced(make_server: MakeServer, dns: DnsServer,
                                             port: int) -> None:
    receiver = make_receiver(make_server, port, users=("bob@remote.test",))
    sender = make_sender(make_server, dns, port)
    send(sender, "bob@remote.test", "nosuch@remote.test", subject="half")
    [path] = receiver.wait_messages("bob@remote.test", 1)
    assert b"Subject: half" in path.read_bytes()
    [bounce] = sender.wait_messages(ALICE, 1)
    _msg, _per_message, [rcpt] = report(bounce)  # one recipient reported, not both
    assert rcpt["Final-Recipient"] == "rfc822; nosuch@remote.test"
    assert rcpt["Status"] == "5.1.1"
    assert "550 5.1.1" in str(rcpt["Diagnostic-Code"])
    wait_empty(sender)
    assert len(receiver.events("queued")) == 1
    assert receiver.messages("nosuch@remote.test") == []


# ---- sessions -----------------------------------------------------------------------------

def test_twenty_messages_share_a_connection(make_server: MakeServer, dns: DnsServer,
                                            port: int) -> None:
    sender = make_sender(make_server, dns, port, retry_first=60, retry_max=60)
    # Queued while the receiver is down, so that they are all due together after a flush.
    ids = queue_many(sender, [f"m{i}@remote.test" for i in range(20)])
    sender.wait_event("deferred", 20, timeout=20)
    receiver = make_receiver(make_server, port)
    sender.cli("queue", "flush")
    for i in range(20):
        receiver.wait_messages(f"m{i}@remote.test", 1)
    sessions = receiver.events("connect")
    assert 1 <= len(sessions) <= 2, sessions
    assert len(receiver.events("queued")) == 20
    wait_empty(sender)
    assert len(set(ids)) == 20


def test_a_refused_message_leaves_the_session_in_step(make_server: MakeServer,
                                                      dns: DnsServer, port: int) -> None:
    """Refused and accepted messages alternate on one pipelined connection."""
    sender = make_sender(make_server, dns, port, extra=TRUSTED, retry_first=60,
                         retry_max=60)
    with submission(sender) as client:
        for i in range(6):
            rcpt = "bob@remote.test" if i % 2 else f"nosuch{i}@remote.test"
            client.sendmail(ALICE, [rcpt], f"Subject: s{i}\r\n\r\nhi\r\n")
    sender.wait_event("deferred", 6, timeout=20)  # the receiver is not up yet
    receiver = make_receiver(make_server, port, users=("bob@remote.test",))
    sender.cli("queue", "flush")
    delivered = receiver.wait_messages("bob@remote.test", 3)
    assert sorted(parse(p)["Subject"] for p in delivered) == ["s1", "s3", "s5"]
    bounces = sender.wait_messages(ALICE, 3)
    failed = sorted(str(report(p)[2][0]["Final-Recipient"]) for p in bounces)
    assert failed == [f"rfc822; nosuch{i}@remote.test" for i in (0, 2, 4)]
    assert len(receiver.events("connect")) == 1
    wait_empty(sender)


def test_more_messages_than_one_connection_carries(make_server: MakeServer, dns: DnsServer,
                                                   port: int, sinks: Callable[..., Sink]
                                                   ) -> None:
    """A session carries at most 100 messages; the rest go on a new one, not to the retry."""
    dns.set("remote.test", "MX", "10 sink.remote.test.")
    sender = make_sender(make_server, dns, port, extra=TRUSTED, retry_first=60,
                         retry_max=60)
    count = 130
    with submission(sender) as client:
        for i in range(count):
            client.sendmail(ALICE, [f"n{i}@remote.test"], f"Subject: n{i}\r\n\r\nhi\r\n")
    sender.wait_event("deferred", count, timeout=20)  # nothing listens yet
    sink = sinks(SINK_IP, port)
    sender.cli("queue", "flush")
    sender.wait_event("delivered", count, timeout=20)
    assert sink.count(".") == count
    assert sink.count("connect") == 2
    assert len(sender.events("deferred")) == count  # only the first, refused, attempts
    wait_empty(sender)


def sessions_at_once(receiver: Server) -> int:
    """The most SMTP sessions the receiver had open at one time, from its log order."""
    open_now = most = 0
    for entry in list(receiver.log_lines):
        if entry.get("event") == "connect":
            open_now += 1
            most = max(most, open_now)
        elif entry.get("event") == "disconnect":
            open_now -= 1
    return most


def test_one_session_per_destination(make_server: MakeServer, dns: DnsServer,
                                     port: int) -> None:
    # Each session lasts a second (the greeting waits), so later messages queue up behind it.
    receiver = make_receiver(make_server, port, "[limits]\ngreeting_delay = 1.0\n")
    # No connection cache, so each batch needs a session of its own.
    sender = make_sender(make_server, dns, port, per_destination=1, connection_cache_time=0)
    procs = []
    for i in range(4):
        procs.append(start_send(sender, f"p{i}@remote.test"))
        time.sleep(0.3)
    for proc in procs:
        finish_send(proc)
    for i in range(4):
        receiver.wait_messages(f"p{i}@remote.test", 1)
    assert len(receiver.events("connect")) >= 2  # the limit had something to hold back
    assert sessions_at_once(receiver) == 1
    wait_empty(sender)


def test_a_busy_destination_leaves_slots_for_others(make_server: MakeServer, dns: DnsServer,
                                                    port: int, sinks: Callable[..., Sink]
                                                    ) -> None:
    """Sessions waiting for a busy domain must not hold the global session slots."""
    dns.set("other.test", "MX", "10 sink.remote.test.")
    sinks(SINK_IP, port)
    make_receiver(make_server, port, "[limits]\ngreeting_delay = 2.0\n")
    sender = make_sender(make_server, dns, port, per_destination=1, concurrency=2,
                         connection_cache_time=0)
    procs = []
    for rcpt in ("a1@remote.test", "a2@remote.test", "a3@remote.test", "b@other.test"):
        procs.append(start_send(sender, rcpt))
        time.sleep(0.3)
    for proc in procs:
        finish_send(proc)
    sender.wait_event("delivered", 4, timeout=20)
    order = [str(e["recipient"]) for e in sender.events("delivered")]
    # remote.test takes one 2 s session at a time; other.test's mail must not wait for
    # the second of them to end.
    remote_done = [i for i, r in enumerate(order) if r.endswith("@remote.test")]
    assert order.index("b@other.test") < remote_done[1], order
    wait_empty(sender)


# ---- content ------------------------------------------------------------------------------

def test_bare_lf_never_leaves(make_server: MakeServer, dns: DnsServer, port: int,
                              sinks: Callable[..., Sink]) -> None:
    dns.set("remote.test", "MX", "10 sink.remote.test.")
    sink = sinks(OTHER_IP, port)
    recorder = Recorder((SINK_IP, port), (OTHER_IP, port))
    try:
        sender = make_sender(make_server, dns, port, extra=TRUSTED)
        # Submitted for relay with a bare LF (and a smuggling attempt): refused, not queued.
        with submission(sender) as client:
            code, text = client.mail(ALICE)
            assert code == 250, text
            assert client.rcpt("bob@remote.test")[0] == 250
            client.putcmd("data")
            assert client.getreply()[0] == 354
            client.send(b"Subject: bare\r\n\r\nline\n.\nMAIL FROM:<evil@evil.test>\r\n"
                        b"RCPT TO:<victim@remote.test>\r\nDATA\r\nsmuggled\r\n.\r\n")
            code, text = client.getreply()
            assert code >= 500, text
        assert sender.queue_list() == []
        # `postwright send` normalizes every line end; lines that are a lone "." go stuffed.
        send(sender, "bob@remote.test", subject="normalized",
             body=b"one\ntwo\rthree\r\n.\nMAIL FROM:<evil@evil.test>\nRCPT TO:"
                  b"<victim@remote.test>\nDATA\nsmuggled\n.\n..dots\n")
        sender.wait_event("delivered", where=for_rcpt("bob@remote.test"))
    finally:
        recorder.close()
    wire = bytes(recorder.sent)
    assert _BARE.search(wire) is None, wire
    assert (b"one\r\ntwo\r\nthree\r\n..\r\nMAIL FROM:<evil@evil.test>\r\n"
            b"RCPT TO:<victim@remote.test>\r\nDATA\r\nsmuggled\r\n..\r\n...dots\r\n.\r\n"
            ) in wire
    assert sink.count("mail") == 1 and sink.count("rcpt") == 1 and sink.count(".") == 1
    assert not any("evil" in line or "victim" in line for line in sink.lines())


# ---- TLS ----------------------------------------------------------------------------------

def test_required_tls_is_never_skipped(make_server: MakeServer, dns: DnsServer, port: int,
                                       sinks: Callable[..., Sink]) -> None:
    dns.set("remote.test", "MX", "10 sink.remote.test.")
    sink = sinks(SINK_IP, port)  # offers no STARTTLS
    sender = make_sender(make_server, dns, port, require_tls=["Remote.TEST"], retry_first=30,
                         retry_max=30)
    qid = send(sender, "bob@remote.test", subject="secret")
    [deferred] = sender.wait_event("deferred", where=for_rcpt("bob@remote.test"))
    assert "4.7.10" in str(deferred["reply"]) and "TLS" in str(deferred["reply"])
    sink.wait("quit")
    sender.cli("queue", "flush")
    sender.wait_event("deferred", 2, where=for_rcpt("bob@remote.test"))
    sink.wait("quit", 2)
    assert sink.count("connect") == 2 and sink.count("ehlo") == 2
    assert sink.count("mail") == 0 and sink.count("rcpt") == 0 and sink.count("data") == 0
    [entry] = sender.queue_list()
    assert entry["id"] == qid and entry["recipients"][0]["status"] == "deferred"
    assert sender.messages(ALICE) == []


@pytest.mark.parametrize("required", [False, True], ids=["opportunistic", "required"])
def test_tls_to_postwright(make_server: MakeServer, dns: DnsServer, port: int,
                           required: bool) -> None:
    receiver = make_receiver(make_server, port)
    sender = make_sender(make_server, dns, port,
                         require_tls=["remote.test"] if required else [])
    send(sender, "bob@remote.test", subject="over tls")
    [path] = receiver.wait_messages("bob@remote.test", 1)
    header = received_by(path)
    assert "by mx.remote.test (postwright) with ESMTPS" in header, header
    assert "from mx.example.test" in header, header
    wait_empty(sender)


# ---- bounces ------------------------------------------------------------------------------

def test_a_bounce_is_never_bounced(make_server: MakeServer, dns: DnsServer,
                                   port: int) -> None:
    sender = make_sender(make_server, dns, port)
    qid = send(sender, "nobody@nullmx.test", sender="ghost@nowhere.test", subject="lost")
    [bounced] = sender.wait_event("bounced")
    assert bounced["id"] == qid
    notice = str(bounced["bounce_id"])
    # The notice goes from <> to a domain that does not exist: it fails, and that is all.
    [failed] = sender.wait_event("failed", where=for_rcpt("ghost@nowhere.test"))
    assert failed["id"] == notice and "5.1.2" in str(failed["reply"])
    wait_empty(sender)
    time.sleep(0.5)
    assert len(sender.events("bounced")) == 1
    assert [e["id"] for e in sender.events("failed")] == [qid, notice]
    assert dns.queries[("nowhere.test", "MX")] == 1
    assert sender.messages(ALICE) == []


def test_cached_connection_carries_later_batches(make_server: MakeServer, dns: DnsServer,
                                                 port: int) -> None:
    """Messages queued one after another, each its own batch, share one cached session."""
    receiver = make_receiver(make_server, port)
    sender = make_sender(make_server, dns, port, connection_cache_time=30)
    for i in range(5):
        finish_send(start_send(sender, f"c{i}@remote.test"))
        receiver.wait_messages(f"c{i}@remote.test", 1)
    assert len(receiver.events("connect")) == 1
    wait_empty(sender)


def test_binarymime_is_relayed_with_bdat(make_server: MakeServer, dns: DnsServer,
                                         port: int) -> None:
    """BODY=BINARYMIME content (bare LF allowed) leaves with BDAT, never with DATA."""
    receiver = make_receiver(make_server, port)
    sender = make_sender(make_server, dns, port, TRUSTED)
    content = b"Subject: binary\r\n\r\nline with bare LF\nand a lone . line\n.\nend\r\n"
    with sender.raw() as client:  # the smtp listener; 127.0.0.1 is trusted: may relay
        assert client.cmd(f"MAIL FROM:<{ALICE}> BODY=BINARYMIME")[0] == 250
        assert client.cmd("RCPT TO:<bin@remote.test>")[0] == 250
        client.send(b"BDAT %d LAST\r\n" % len(content) + content)
        assert client.reply()[0] == 250
    [path] = receiver.wait_messages("bin@remote.test", 1)
    assert path.read_bytes().endswith(b"line with bare LF\nand a lone . line\n.\nend\n")
    wait_empty(sender)


class _ScriptedPeer:
    """A small SMTP server on loopback that offers STARTTLS and then refuses it (454)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(5)
        self.port = int(self.sock.getsockname()[1])
        self.commands: list[str] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(20)
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        with conn, conn.makefile("rb") as rfile:
            conn.sendall(b"220 peer.test ESMTP\r\n")
            while line := rfile.readline():
                text = line.decode().rstrip("\r\n")
                self.commands.append(text)
                verb = text.split(" ", 1)[0].upper()
                if verb == "EHLO":
                    conn.sendall(b"250-peer.test\r\n250-STARTTLS\r\n250 PIPELINING\r\n")
                elif verb == "STARTTLS":
                    conn.sendall(b"454 4.7.0 TLS not available due to local problem\r\n")
                elif verb == "DATA":
                    conn.sendall(b"354 go ahead\r\n")
                    while rfile.readline() not in (b".\r\n", b""):
                        pass
                    self.commands.append(".")
                    conn.sendall(b"250 2.0.0 accepted\r\n")
                elif verb == "QUIT":
                    conn.sendall(b"221 bye\r\n")
                    return
                else:
                    conn.sendall(b"250 ok\r\n")

    def close(self) -> None:
        self.sock.close()


def test_refused_starttls_goes_on_in_clear(make_server: MakeServer, dns: DnsServer,
                                           port: int) -> None:
    peer = _ScriptedPeer()
    try:
        sender = make_sender(make_server, dns, port, relayhost=f"127.0.0.1:{peer.port}")
        finish_send(start_send(sender, "someone@remote.test"))
        sender.wait_event("delivered", 1, timeout=15)
        assert "STARTTLS" in peer.commands and "." in peer.commands
        assert peer.commands.index("STARTTLS") < peer.commands.index(".")
        wait_empty(sender)
    finally:
        peer.close()


def test_disconnect_mid_transaction_defers_then_delivers(make_server: MakeServer,
                                                         dns: DnsServer, port: int,
                                                         sinks: Callable[..., Sink]) -> None:
    """smtp-sink -q: the server hangs up after DATA; nothing is lost, the retry delivers."""
    dns.set("remote.test", "MX", "10 sink.remote.test.")
    rude = sinks(SINK_IP, port, "-q", "DATA")
    sender = make_sender(make_server, dns, port, retry_first=30, retry_max=30)
    qid = send(sender, "bob@remote.test", subject="hang up")
    [deferred] = sender.wait_event("deferred", where=for_rcpt("bob@remote.test"))
    assert str(deferred["reply"]).startswith("4.")
    [entry] = sender.queue_list()
    assert entry["id"] == qid and entry["recipients"][0]["status"] == "deferred"
    rude.stop()
    fine = sinks(SINK_IP, port)
    sender.cli("queue", "flush")
    sender.wait_event("delivered", where=for_rcpt("bob@remote.test"))
    assert fine.count(".") == 1
    wait_empty(sender)
    assert sender.messages(ALICE) == []


def test_a_server_that_never_greets_is_given_up_after_greeting_timeout(
        make_server: MakeServer, dns: DnsServer, port: int) -> None:
    dns.set("remote.test", "MX", "10 sink.remote.test.")
    with socket.socket() as mute:  # accepts connections (backlog) and never says 220
        mute.bind((SINK_IP, port))
        mute.listen(8)
        sender = make_sender(make_server, dns, port, greeting_timeout=1, retry_first=60,
                             retry_max=60)
        started = time.monotonic()
        qid = send(sender, "bob@remote.test", subject="anyone there?")
        [deferred] = sender.wait_event("deferred", where=for_rcpt("bob@remote.test"),
                                       timeout=15)
        assert time.monotonic() - started < 10  # the default would wait 300 s
    assert "4.4.1" in str(deferred["reply"]) and "Timeout" in str(deferred["reply"])
    [entry] = sender.queue_list()
    assert entry["id"] == qid and entry["recipients"][0]["status"] == "deferred"
