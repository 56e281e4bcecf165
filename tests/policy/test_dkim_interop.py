"""DKIM interoperability with an independent implementation, Perl's Mail::DKIM (Debian
``libmail-dkim-perl``): it verifies what we sign, and we verify what it signs, with the keys
served by the loopback DNS server. Skipped when Mail::DKIM is not installed.

Debian's Mail::DKIM 1.20230212 has no Ed25519; our Ed25519 signatures are checked against
dkimpy (test_dkim) and the RFC 8463 vectors instead, and here only if Mail::DKIM has it.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from postwright.net.dns import Resolver
from postwright.policy import dkim, dkimkeys
from postwright.testing.dnsserver import DnsServer

DOMAIN = "example.test"


def _perl_has(module: str) -> bool:
    if shutil.which("perl") is None:
        return False
    return subprocess.run(["perl", f"-M{module}", "-e", "1"], capture_output=True,
                          timeout=30).returncode == 0


pytestmark = pytest.mark.skipif(not _perl_has("Mail::DKIM::Verifier"),
                                reason="Perl Mail::DKIM (libmail-dkim-perl) not installed")

VERIFY_PL = r"""
use strict;
use warnings;
use Mail::DKIM::Verifier;
use Mail::DKIM::DNS;
use Net::DNS::Resolver;

my $port = shift @ARGV;
Mail::DKIM::DNS::resolver(Net::DNS::Resolver->new(
    nameservers => ['127.0.0.1'], port => $port, recurse => 1, retry => 1,
    udp_timeout => 3, tcp_timeout => 3));
for my $file (@ARGV) {
    open(my $fh, '<:raw', $file) or die "$file: $!";
    my $message = do { local $/; <$fh> };
    close $fh;
    my $verifier = Mail::DKIM::Verifier->new();
    $verifier->PRINT($message);
    $verifier->CLOSE;
    print join(' ', map { $_->result } $verifier->signatures) || 'none', "\n";
}
"""

SIGN_PL = r"""
use strict;
use warnings;
use Mail::DKIM::Signer;

my ($keyfile, $method, $algorithm) = @ARGV;
my $signer = Mail::DKIM::Signer->new(Algorithm => $algorithm, Method => $method,
    Domain => 'example.test', Selector => 'perl', KeyFile => $keyfile);
binmode STDIN;
my $message = do { local $/; <STDIN> };
$signer->PRINT($message);
$signer->CLOSE;
binmode STDOUT;
print $signer->signature->as_string, "\r\n";
"""

MESSAGES = [
    b"From: Alice <alice@example.test>\r\nTo: bob@example.net\r\nSubject: hi\r\n"
    b"Date: Mon, 1 Jan 2024 00:00:00 +0000\r\nMessage-ID: <1@example.test>\r\n\r\n"
    b"Hello.\r\n",
    # folded fields, whitespace everywhere, fields signed twice, trailing empty lines
    b"Received: from a by b; Mon, 1 Jan 2024 00:00:00 +0000\r\n"
    b"From:   Alice\t <alice@example.test>  \r\n"
    b"To: bob@example.net,\r\n\tcarol@example.org,\r\n    dave@example.com\r\n"
    b"To: eve@example.net\r\n"
    b"Subject: =?utf-8?q?caf=C3=A9?=   \t au\r\n lait\r\n"
    b"List-Unsubscribe: <mailto:u@example.test>\r\n"
    b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
    b"MIME-Version: 1.0\r\nContent-Type: text/plain;\r\n charset=utf-8\r\n"
    b"X-Unsigned: yes\r\n\r\n"
    b"  indented \t line  \r\n\r\ntabs\t\there\t\r\n \r\n\r\n\t\r\n",
    # an empty body, and a body whose last line has no CRLF but trailing blanks
    b"From: alice@example.test\r\nSubject: empty\r\n\r\n",
    b"From: alice@example.test\r\nSubject: unterminated\r\n\r\nlast line \t",
    # 8-bit content in a header and the body
    "From: Zoë <zoe@example.test>\r\nSubject: Grüße\r\n\r\nÇa va ?\r\n".encode(),
]


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ed_key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def dns(rsa_key: rsa.RSAPrivateKey, ed_key: ed25519.Ed25519PrivateKey) -> Iterator[DnsServer]:
    zone = {f"{selector}._domainkey.{DOMAIN}": {"TXT": [dkimkeys.txt_record(key)]}
            for selector, key in (("s1", rsa_key), ("perl", rsa_key), ("ed", ed_key))}
    with DnsServer(zone) as server:
        yield server


def perl_verify(dns: DnsServer, tmp_path: Path, messages: list[bytes]) -> list[str]:
    script = tmp_path / "verify.pl"
    script.write_text(VERIFY_PL)
    files = []
    for i, message in enumerate(messages):
        path = tmp_path / f"m{i}.eml"
        path.write_bytes(message)
        files.append(str(path))
    done = subprocess.run(["perl", str(script), str(dns.port), *files], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_mail_dkim_verifies_our_rsa_signatures(rsa_key: rsa.RSAPrivateKey, dns: DnsServer,
                                               tmp_path: Path) -> None:
    signed = [dkim.sign(m, domain=DOMAIN, selector="s1", key=rsa_key) + m for m in MESSAGES]
    tampered = [
        signed[0].replace(b"Hello.", b"Hello!"),  # body
        signed[1].replace(b"au\r\n lait", b"au\r\n the"),  # a signed field
        signed[0].replace(b"From: Alice", b"From: Eve <eve@evil.test>\r\nFrom: Alice"),
        signed[1].replace(b"X-Unsigned: yes", b"X-Unsigned: no"),  # unsigned: still passes
    ]
    assert perl_verify(dns, tmp_path, signed + tampered) == (
        ["pass"] * len(MESSAGES) + ["fail", "fail", "fail", "pass"])


@pytest.mark.skipif(not _perl_has("Mail::DKIM::Algorithm::ed25519_sha256"),
                    reason="this Mail::DKIM has no Ed25519 (RFC 8463)")
def test_mail_dkim_verifies_our_ed25519_signatures(ed_key: ed25519.Ed25519PrivateKey,
                                                   dns: DnsServer, tmp_path: Path) -> None:
    signed = [dkim.sign(m, domain=DOMAIN, selector="ed", key=ed_key) + m for m in MESSAGES]
    assert perl_verify(dns, tmp_path, signed) == ["pass"] * len(MESSAGES)


@pytest.mark.parametrize("method", ["relaxed/relaxed", "simple/simple", "relaxed/simple"])
def test_we_verify_mail_dkim_signatures(rsa_key: rsa.RSAPrivateKey, dns: DnsServer,
                                        tmp_path: Path, method: str) -> None:
    keyfile = tmp_path / "key.pem"
    keyfile.write_bytes(rsa_key.private_bytes(serialization.Encoding.PEM,
                                              serialization.PrivateFormat.TraditionalOpenSSL,
                                              serialization.NoEncryption()))
    script = tmp_path / "sign.pl"
    script.write_text(SIGN_PL)
    resolver = Resolver([("127.0.0.1", dns.port)], timeout=2.0)
    for message in MESSAGES:
        if method.endswith("/simple") and not message.endswith(b"\r\n"):
            continue  # Mail::DKIM's simple body adds no final CRLF (RFC 6376 3.4.3 wants one)
        done = subprocess.run(["perl", str(script), str(keyfile), method, "rsa-sha256"],
                              input=message, capture_output=True, timeout=60)
        assert done.returncode == 0, done.stderr
        signed = done.stdout + message
        found = asyncio.run(dkim.verify_async(signed, resolver))
        assert [(r.domain, r.selector, r.result) for r in found] == [
            (DOMAIN, "perl", "pass")], (method, message)
        tampered = signed.replace(b"From:", b"From: x@evil.test\r\nFrom:", 1)
        assert [r.result for r in asyncio.run(dkim.verify_async(tampered, resolver))] == [
            "fail"]
