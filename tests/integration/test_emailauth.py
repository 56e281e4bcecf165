"""Inbound SPF, DKIM and DMARC on the smtp listener, end to end over loopback DNS."""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from postwright.policy.dkim import sign
from postwright.policy.dkimkeys import keygen, signing_key
from postwright.testing.dnsserver import DnsServer

if TYPE_CHECKING:
    from conftest import Server

MakeServer = Callable[..., "Server"]


@pytest.fixture
def dns() -> Iterator[DnsServer]:
    with DnsServer({}) as server:
        yield server


def make(make_server: MakeServer, dns: DnsServer, extra: str = "") -> Server:
    srv = make_server(f"[dns]\nnameservers = {json.dumps([dns.address])}\ntimeout = 2\n"
                      "[authentication]\nchecks = true\n" + extra,
                      wildcard=("example.test",))
    srv.start()
    return srv


def message(author: str, subject: str, extra_headers: str = "") -> bytes:
    return (f"From: <{author}>\r\nTo: <alice@example.test>\r\nSubject: {subject}\r\n"
            f"Date: Sun, 29 Nov 2026 07:00:00 +0000\r\nMessage-ID: <{subject}@x>\r\n"
            f"{extra_headers}\r\nhello\r\n").encode()


def signed(tmp_path: Path, dns: DnsServer, domain: str, msg: bytes) -> bytes:
    _path, line = keygen(tmp_path / "keys", domain, "s1")
    dns.set(f"s1._domainkey.{domain}", "TXT", ["".join(re.findall(r'"([^"]*)"', line))])
    key = signing_key(tmp_path / "keys", domain)
    assert key is not None
    return sign(msg, domain=domain, selector="s1", key=key.private_key) + msg


def refused(srv: Server, sender: str, msg: bytes) -> tuple[int, bytes]:
    """Send with smtplib; return the reply to the content, which must be a refusal."""
    with srv.smtp() as client:
        assert client.mail(sender)[0] == 250
        assert client.rcpt("alice@example.test")[0] == 250
        code, text = client.data(msg)
    assert code >= 400
    return code, text


def authentication_results(path: Path) -> str:
    text = path.read_text()
    return next(line for line in text.splitlines()
                if line.startswith("Authentication-Results: mx.example.test"))


def test_well_signed_mail_passes_everything(tmp_path: Path, make_server: MakeServer,
                                           dns: DnsServer) -> None:
    dns.set("good.test", "TXT", ["v=spf1 ip4:127.0.0.1 -all"])
    dns.set("_dmarc.good.test", "TXT", ["v=DMARC1; p=reject"])
    srv = make(make_server, dns)
    srv.send("news@good.test", ["alice@example.test"],
             signed(tmp_path, dns, "good.test", message("news@good.test", "good")))
    [path] = srv.wait_messages("alice@example.test", 1)
    results = authentication_results(path)
    assert "spf=pass" in results and "dkim=pass" in results and "dmarc=pass" in results
    assert "header.d=good.test" in results


def test_spoofed_domain_with_p_reject_is_refused(make_server: MakeServer,
                                                 dns: DnsServer) -> None:
    dns.set("bank.test", "TXT", ["v=spf1 ip4:192.0.2.1 -all"])
    dns.set("_dmarc.bank.test", "TXT", ["v=DMARC1; p=reject"])
    srv = make(make_server, dns)
    code, text = refused(srv, "security@bank.test", message("security@bank.test", "spoof"))
    assert code == 550 and b"5.7.1" in text
    assert srv.messages("alice@example.test") == []
    assert any(e.get("dmarc") == "fail" for e in srv.events("reject"))


def test_p_quarantine_lands_in_junk(make_server: MakeServer, dns: DnsServer) -> None:
    dns.set("shady.test", "TXT", ["v=spf1 -all"])
    dns.set("_dmarc.shady.test", "TXT", ["v=DMARC1; p=quarantine"])
    srv = make(make_server, dns)
    srv.send("x@shady.test", ["alice@example.test"], message("x@shady.test", "junk"))
    junk = srv.data / "mail" / "example.test" / "alice" / ".Junk" / "new"
    for _ in range(100):
        if junk.exists() and list(junk.iterdir()):
            break
        time.sleep(0.05)
    [path] = list(junk.iterdir())
    assert "dmarc=fail" in authentication_results(path)
    assert srv.messages("alice@example.test") == []


def test_mark_only_keeps_rejected_mail_with_the_verdict(make_server: MakeServer,
                                                       dns: DnsServer) -> None:
    dns.set("bank.test", "TXT", ["v=spf1 -all"])
    dns.set("_dmarc.bank.test", "TXT", ["v=DMARC1; p=reject"])
    srv = make(make_server, dns, 'dmarc_reject = "mark"\n')
    srv.send("a@bank.test", ["alice@example.test"], message("a@bank.test", "marked"))
    [path] = srv.wait_messages("alice@example.test", 1)
    assert "dmarc=fail" in authentication_results(path)


def test_forged_results_claiming_our_id_are_removed(make_server: MakeServer,
                                                   dns: DnsServer) -> None:
    srv = make(make_server, dns)
    forged = "Authentication-Results: mx.example.test; dmarc=pass header.from=bank.test\r\n"
    theirs = "Authentication-Results: other.example; spf=pass\r\n"
    srv.send("a@nodmarc.test", ["alice@example.test"],
             message("a@nodmarc.test", "forged", forged + theirs))
    [path] = srv.wait_messages("alice@example.test", 1)
    text = path.read_text()
    assert text.count("Authentication-Results: mx.example.test") == 1  # ours only
    assert "dmarc=pass header.from=bank.test" not in text
    assert "Authentication-Results: other.example; spf=pass" in text


def test_dns_failure_is_temporary(make_server: MakeServer, dns: DnsServer) -> None:
    dns.set("flaky.test", "TXT", ["v=spf1 -all"])
    dns.servfail.add("_dmarc.flaky.test")
    srv = make(make_server, dns)
    code, _text = refused(srv, "a@flaky.test", message("a@flaky.test", "flaky"))
    assert code == 451
    assert srv.messages("alice@example.test") == []


def test_start_up_warns_when_checks_are_on_and_dns_does_not_answer(
        make_server: MakeServer, dns: DnsServer) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))  # a UDP port that takes queries and never answers
        dead = f"127.0.0.1:{silent.getsockname()[1]}"
        srv = make_server(f'[dns]\nnameservers = ["{dead}"]\ntimeout = 1\n'
                          "[authentication]\nchecks = true\n", wildcard=("example.test",))
        srv.start()
        [warning] = srv.wait_event("dns_unavailable", timeout=10)
    assert warning["level"] == "warning" and "451" in str(warning["msg"])
    healthy = make(make_server, dns)  # a DNS server that answers: no warning
    healthy.wait_event("ready")
    time.sleep(1.5)
    assert healthy.events("dns_unavailable") == []
