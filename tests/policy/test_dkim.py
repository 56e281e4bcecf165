"""Tests for DKIM signing, verification (policy.dkim), the key store (policy.dkimkeys) and
``postwright dkim keygen``.

Our canonicalization is checked against the RFC examples, against dkimpy's own functions
(hypothesis) and, end to end, by dkimpy verifying what we sign. Verification runs against
dict lookups and against the loopback DNS server. Perl Mail::DKIM is in test_dkim_interop.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import re
import stat
import time
from pathlib import Path

import dkim as dkimpy  # type: ignore[import-untyped]
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from dkim.canonicalization import Relaxed  # type: ignore[import-untyped]
from hypothesis import given, settings
from hypothesis import strategies as st

from postwright import cli
from postwright.dnstypes import DnsTemporaryError
from postwright.net.dns import Resolver
from postwright.policy import dkim, dkimkeys
from postwright.testing.dnsserver import DnsServer

DOMAIN = "example.test"

# RFC 8463 appendix A: a message signed by football.example.com with Ed25519 (brisbane) and
# RSA (test), and the key records of A.2.
RFC8463_MESSAGE = (
    b"DKIM-Signature: v=1; a=ed25519-sha256; c=relaxed/relaxed;\r\n"
    b" d=football.example.com; i=@football.example.com;\r\n"
    b" q=dns/txt; s=brisbane; t=1528637909; h=from : to :\r\n"
    b" subject : date : message-id : from : subject : date;\r\n"
    b" bh=2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8=;\r\n"
    b" b=/gCrinpcQOoIfuHNQIbq4pgh9kyIK3AQUdt9OdqQehSwhEIug4D11Bus\r\n"
    b" Fa3bT3FY5OsU7ZbnKELq+eXdp1Q1Dw==\r\n"
    b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed;\r\n"
    b" d=football.example.com; i=@football.example.com;\r\n"
    b" q=dns/txt; s=test; t=1528637909; h=from : to : subject :\r\n"
    b" date : message-id : from : subject : date;\r\n"
    b" bh=2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8=;\r\n"
    b" b=F45dVWDfMbQDGHJFlXUNB2HKfbCeLRyhDXgFpEL8GwpsRe0IeIixNTe3\r\n"
    b" DhCVlUrSjV4BwcVcOF6+FF3Zo9Rpo1tFOeS9mPYQTnGdaSGsgeefOsk2Jz\r\n"
    b" dA+L10TeYt9BgDfQNZtKdN1WO//KgIqXP7OdEFE4LjFYNcUxZQ4FADY+8=\r\n"
    b"From: Joe SixPack <joe@football.example.com>\r\n"
    b"To: Suzie Q <suzie@shopping.example.net>\r\n"
    b"Subject: Is dinner ready?\r\n"
    b"Date: Fri, 11 Jul 2003 21:00:37 -0700 (PDT)\r\n"
    b"Message-ID: <20030712040037.46341.5F8J@football.example.com>\r\n"
    b"\r\n"
    b"Hi.\r\n"
    b"\r\n"
    b"We lost the game.  Are you hungry yet?\r\n"
    b"\r\n"
    b"Joe.\r\n"
)
RFC8463_KEYS = {
    "brisbane._domainkey.football.example.com":
        "v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=",
    "test._domainkey.football.example.com":
        "v=DKIM1; k=rsa; p=MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQDkHlOQoBTzWRiGs5V6NpP3id"
        "Y6Wk08a5qhdR6wy5bdOKb2jLQiY/J16JYi0Qvx/byYzCNb3W91y3FutACDfzwQ/BC/e/8uBsCR+yz1Lx"
        "j+PL6lHvqMKrM3rG4hstT5QjvHO9PzoxZyVYLzBfO2EeC3Ip3G+2kryOTIKT+l/K4w3QIDAQAB",
}

MESSAGE = (
    b"Received: from x by y; Mon, 1 Jan 2024 00:00:00 +0000\r\n"
    b"From: Alice <alice@example.test>\r\n"
    b"To: bob@example.net,\r\n\t carol@example.org\r\n"
    b"Subject:   Lunch \t plans  \r\n"
    b"Date: Mon, 1 Jan 2024 00:00:00 +0000\r\n"
    b"Message-ID: <1@example.test>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"X-Mailer: test\r\n"
    b"\r\n"
    b"Hello  Bob, \r\n"
    b"\tsee you at noon.\r\n"
    b"\r\n"
    b" \r\n"
)

# A 768-bit RSA key (cryptography refuses to make one), below RFC 8301's 1024-bit floor.
WEAK_KEY = b"""-----BEGIN PRIVATE KEY-----
MIIB5AIBADANBgkqhkiG9w0BAQEFAASCAc4wggHKAgEAAmEAxlG/RcieVzrzOf4l
3OKOj8zJrpavqIEiIIgy8+uoDCK0zhowctKMq8/XHO1ieZDDqzJIadnsZSC3CcyZ
0oZJCnJ2FWpQSLXxmEoGSzS/Y7cEgHwLOCOsczff05BPn+LZAgMBAAECYC+devYP
R+0bq0A2Q/L3tlDSU24GoeAsOPxklw83el6Hiq+dXBqFcN7jhPteB3G2jscg78kd
7dnBZ2QV4DwzdW+3wFaX+ELkUQ/g0h1OTf6ECFCaKFFQy5ozQytpxFJirQIxAP+m
fB2mATPK8UtSBCI0mIYUSHY8GKSheUbgPNgEDf1SSLwrn1/NHtQzGP+Ord4+/wIx
AMaXMCR6ODetDkPu0ydNe0v5kSLxILxcYbubHbUbdNkTlYogefm8yraL56H2aQW2
JwIxALrQ2zQDQi+p5qgG2BRy4N5h5g3Ynp13jhs3895bICn0vkgbjIxCZXvllyfx
CKc22wIwXIumTsl6G1AVXskUM7Oi6sPxw/PUypLOpMvjqzuRV3wN6yG5Vg2J9kn6
dvrK9HNvAjBG0d0wrYzWSAkhrc3fJRYjN+OvdNG5Nx7QW4o9usTnAd693Rd7nSEr
nLLKvtc3lZY=
-----END PRIVATE KEY-----
"""


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ed_key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


def records(**keys: dkim.PrivateKey) -> dict[str, str]:
    return {f"{sel}._domainkey.{DOMAIN}": dkimkeys.txt_record(k) for sel, k in keys.items()}


def results(found: list[dkim.DkimResult]) -> list[tuple[str, str, str]]:
    return [(r.domain, r.selector, r.result) for r in found]


# -- canonicalization ----------------------------------------------------------------------

def test_rfc6376_canonicalization_example() -> None:
    """RFC 6376 section 3.4.6, relaxed on both sides."""
    fields, body = dkim.split_message(b"A: X\r\nB : Y\t\r\n\tZ  \r\n\r\n C \r\nD \t E\r\n\r\n\r\n")
    assert fields == [(b"A", b" X"), (b"B ", b" Y\t\r\n\tZ  ")]
    assert b"".join(dkim.relaxed_header(n, v) for n, v in fields) == b"a:X\r\nb:Y Z\r\n"
    assert dkim.relaxed_body(body) == b" C\r\nD E\r\n"


@pytest.mark.parametrize(("body", "canonical"), [
    (b"", b""),
    (b"\r\n", b""),
    (b"\r\n \r\n\t\r\n", b""),
    (b"abc", b"abc\r\n"),
    (b"abc\r\n\r\n", b"abc\r\n"),
    (b"a\r\n\r\nb\r\n", b"a\r\n\r\nb\r\n"),  # inner empty lines stay
    (b"a \t b\t\r\n", b"a b\r\n"),
    # An unterminated last line loses its trailing whitespace too (Mail::DKIM reads RFC 6376
    # section 3.4.4 so; dkimpy keeps it, see test_body_matches_dkimpy).
    (b"abc \t", b"abc\r\n"),
    (b"abc\r\n ", b"abc\r\n"),
])
def test_relaxed_body_edges(body: bytes, canonical: bytes) -> None:
    assert dkim.relaxed_body(body) == canonical


def test_split_message_edges() -> None:
    assert dkim.split_message(b"\r\nbody\r\n") == ([], b"body\r\n")
    assert dkim.split_message(b"A: 1\r\n") == ([(b"A", b" 1")], b"")
    assert dkim.split_message(b"A: 1\r\n\r\n") == ([(b"A", b" 1")], b"")
    # a line that is no field keeps its continuation lines away from the field above it
    assert dkim.split_message(b"A: 1\r\nnonsense\r\n more\r\nB:2\r\n\r\nx") == (
        [(b"A", b" 1"), (b"", b"nonsense\r\n more"), (b"B", b"2")], b"x")


_NAME = st.text(st.sampled_from("abcXYZ-_09!#$%&'*+./^`{|}~"), min_size=1, max_size=12)
_TEXT = st.binary(max_size=20).map(
    lambda b: bytes(c for c in b if c not in b"\r\n\x0b\x0c"))  # any byte but line breaks
_WSP = st.text(st.sampled_from(" \t"), min_size=1, max_size=3).map(str.encode)


@st.composite
def header_values(draw: st.DrawFn) -> bytes:
    parts = [draw(st.sampled_from([b"", b" ", b"\t", b"  "])), draw(_TEXT)]
    for _ in range(draw(st.integers(0, 3))):
        parts += [b"\r\n", draw(_WSP), draw(_TEXT)]
    parts.append(draw(st.sampled_from([b"", b" ", b"\t "])))
    return b"".join(parts)


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    lines = draw(st.lists(st.one_of(_TEXT, _WSP, st.just(b"")), max_size=8))
    tail = draw(st.lists(st.sampled_from([b"", b" ", b"\t"]), max_size=3))
    return b"".join(line + b"\r\n" for line in lines + tail)


@settings(max_examples=300, deadline=None)
@given(name=_NAME, trailing=st.sampled_from(["", " ", "\t "]), value=header_values())
def test_header_matches_dkimpy(name: str, trailing: str, value: bytes) -> None:
    raw_name = (name + trailing).encode()
    [(their_name, their_value)] = Relaxed.canonicalize_headers([(raw_name, value + b"\r\n")])
    assert dkim.relaxed_header(raw_name, value) == their_name + b":" + their_value


@settings(max_examples=300, deadline=None)
@given(body=bodies(), unterminated=_TEXT)
def test_body_matches_dkimpy(body: bytes, unterminated: bytes) -> None:
    assert dkim.relaxed_body(body) == Relaxed.canonicalize_body(body)
    # without a final CRLF: the same, as long as the last line does not end in whitespace
    last = unterminated.rstrip(b" \t")
    assert dkim.relaxed_body(body + last) == Relaxed.canonicalize_body(body + last)


@settings(max_examples=200, deadline=None)
@given(fields=st.lists(st.tuples(_NAME, header_values()), min_size=1, max_size=6),
       body=bodies())
def test_split_matches_dkimpy(fields: list[tuple[str, bytes]], body: bytes) -> None:
    message = b"".join(n.encode() + b":" + v + b"\r\n" for n, v in fields) + b"\r\n" + body
    theirs, their_body = dkimpy.rfc822_parse(message)
    ours, our_body = dkim.split_message(message)
    assert [(n, v + b"\r\n") for n, v in ours] == [(n, v) for n, v in theirs]
    assert our_body == their_body


# -- signing -------------------------------------------------------------------------------

def signature_tags(header: bytes) -> dict[str, str]:
    value = header.split(b":", 1)[1].replace(b"\r\n", b"").decode()
    return {k.strip(): re.sub(r"\s+", "", v) for k, v in
            (part.split("=", 1) for part in value.split(";") if part.strip())}


def test_sign_layout(rsa_key: rsa.RSAPrivateKey) -> None:
    header = dkim.sign(MESSAGE, domain="Example.TEST", selector="s1", key=rsa_key,
                       now=1700000000.7)
    assert header.startswith(b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed;")
    assert header.endswith(b"\r\n") and not header.endswith(b"\r\n\r\n")
    lines = header[:-2].split(b"\r\n")
    assert all(len(line) <= 78 for line in lines), lines
    assert all(line[:1] == b" " for line in lines[1:])
    assert lines[-1] != b" " and any(line.startswith(b" b=") for line in lines)
    tags = signature_tags(header)
    assert tags["d"] == "example.test" and tags["s"] == "s1" and tags["t"] == "1700000000"
    assert tags["h"] == "from:to:subject:date:message-id:mime-version:content-type:from"
    canonical = dkim.relaxed_body(MESSAGE.split(b"\r\n\r\n", 1)[1])
    assert canonical == b"Hello Bob,\r\n see you at noon.\r\n"
    assert tags["bh"] == base64.b64encode(hashlib.sha256(canonical).digest()).decode()
    assert len(base64.b64decode(tags["b"])) == 256
    assert dkim.sign(MESSAGE, domain=DOMAIN, selector="s1", key=rsa_key,
                     now=1700000000) == header  # RSA PKCS#1 v1.5 is deterministic


def test_signed_fields() -> None:
    fields, _ = dkim.split_message(
        b"From: a@x.test\r\nTo: 1@y\r\nTo: 2@y\r\nResent-From: r@x.test\r\nResent-Bcc: z@y\r\n"
        b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\nList-Id: <l.x.test>\r\n"
        b"X-Spam: no\r\nReceived: by x\r\nSender: s@x.test\r\n"
        b"List-x;d=evil.test: 1\r\nList-\xff: 2\r\n\r\n")  # never into h=
    assert dkim.signed_field_names(fields) == [
        b"from", b"to", b"to", b"resent-from", b"list-unsubscribe-post", b"list-id", b"from"]
    with pytest.raises(dkim.DkimError, match="From"):
        dkim.signed_field_names(dkim.split_message(b"To: a@b\r\n\r\nx\r\n")[0])


def test_long_field_list_folds(ed_key: ed25519.Ed25519PrivateKey) -> None:
    many = b"".join(b"List-Archive-Number-%d: <x>\r\n" % i for i in range(12))
    header = dkim.sign(b"From: a@example.test\r\n" + many + b"\r\nhi\r\n", domain=DOMAIN,
                       selector="a-rather-long-selector-name.2024", key=ed_key)
    assert all(len(line) <= 78 for line in header[:-2].split(b"\r\n"))
    assert signature_tags(header)["h"].count(":") == 13
    assert results(dkim.verify(header + b"From: a@example.test\r\n" + many + b"\r\nhi\r\n",
                               lambda name: dkimkeys.txt_record(ed_key)))[0][2] == "pass"


def test_sign_refuses(rsa_key: rsa.RSAPrivateKey, ed_key: ed25519.Ed25519PrivateKey) -> None:
    with pytest.raises(dkim.DkimError, match="bare CR or LF"):
        dkim.sign(b"From: a@x\nTo: b@y\n\nhi\n", domain=DOMAIN, selector="s1", key=rsa_key)
    with pytest.raises(dkim.DkimError, match="bare CR or LF"):
        dkim.sign(MESSAGE + b"x\ry\r\n", domain=DOMAIN, selector="s1", key=rsa_key)
    with pytest.raises(dkim.DkimError, match="cannot sign with"):
        dkim.sign(MESSAGE, domain=DOMAIN, selector="s1", key=ed_key, algorithm="rsa-sha256")
    for domain, selector in (("exa mple.test", "s1"), (DOMAIN, "s1;x=1"), (DOMAIN, "")):
        with pytest.raises(dkim.DkimError, match="invalid"):
            dkim.sign(MESSAGE, domain=domain, selector=selector, key=ed_key)


def test_rfc8463_vectors_pin_body_hash_and_signed_data() -> None:
    """The RFC's Ed25519 signature verifies over our signing input: this pins relaxed header
    canonicalization, bottom-up field selection and the hash handling of RFC 8463."""
    fields, body = dkim.split_message(RFC8463_MESSAGE)
    assert base64.b64encode(hashlib.sha256(dkim.relaxed_body(body)).digest()) == \
        b"2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8="
    names = [b"from", b"to", b"subject", b"date", b"message-id", b"from", b"subject", b"date"]
    value = fields[0][1]
    unsigned = re.sub(rb"(;\s*b=)[^;]*$", rb"\1", value)
    data = dkim.signing_input(fields, names, unsigned)
    assert data.endswith(b"\r\ndkim-signature:v=1; a=ed25519-sha256; c=relaxed/relaxed; "
                         b"d=football.example.com; i=@football.example.com; q=dns/txt; "
                         b"s=brisbane; t=1528637909; h=from : to : subject : date : "
                         b"message-id : from : subject : date; "
                         b"bh=2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8=; b=")
    assert data.startswith(b"from:Joe SixPack <joe@football.example.com>\r\n"
                           b"to:Suzie Q <suzie@shopping.example.net>\r\n"
                           b"subject:Is dinner ready?\r\n")
    public = ed25519.Ed25519PublicKey.from_public_bytes(
        base64.b64decode("11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="))
    signature = base64.b64decode(re.sub(rb"\s+", b"", value.rsplit(b"b=", 1)[1]))
    public.verify(signature, hashlib.sha256(data).digest())  # raises InvalidSignature if not
    with pytest.raises(InvalidSignature):
        public.verify(signature, hashlib.sha256(data.replace(b"dinner", b"lunch")).digest())


@st.composite
def messages(draw: st.DrawFn) -> bytes:
    names = st.sampled_from(["To", "cc", "SUBJECT", "Date", "Reply-To", "List-Id",
                             "Resent-To", "X-Other", "Received", "Message-ID"])
    fields = draw(st.lists(st.tuples(names, header_values()), max_size=6))
    fields.insert(draw(st.integers(0, len(fields))), ("From", b" a@example.test"))
    head = b"".join(n.encode() + b":" + v.replace(b"\r\n", b"\r\n ") + b"\r\n"
                    for n, v in fields)
    return head + b"\r\n" + draw(bodies())


@settings(max_examples=60, deadline=None)
@given(message=messages())
def test_dkimpy_verifies_what_we_sign(ed_key: ed25519.Ed25519PrivateKey,
                                      message: bytes) -> None:
    header = dkim.sign(message, domain=DOMAIN, selector="ed", key=ed_key)
    assert results(dkim.verify(header + message, records(ed=ed_key).get)) == [
        (DOMAIN, "ed", "pass")]


def test_author_domain() -> None:
    def from_(value: str) -> bytes:
        return f"To: x@y.test\r\nFrom: {value}\r\n\r\nbody\r\n".encode()

    assert dkim.author_domain(from_("Alice <alice@Example.TEST>")) == "example.test"
    assert dkim.author_domain(from_("alice@example.test (Alice @ home)")) == "example.test"
    assert dkim.author_domain(from_('"a@evil.test" <a@good.test>')) == "good.test"
    assert dkim.author_domain(from_('"x,y" <a@b\u00fccher.example>')) == "xn--bcher-kva.example"
    assert dkim.author_domain(from_("a@one.test, b@two.test")) is None
    assert dkim.author_domain(from_("undisclosed:;")) is None
    assert dkim.author_domain(from_("a@[192.0.2.1]")) is None
    assert dkim.author_domain(b"From: a@x.test\r\nFrom: b@y.test\r\n\r\n") is None
    assert dkim.author_domain(b"To: a@x.test\r\n\r\n") is None


# -- verification --------------------------------------------------------------------------

def test_verify_rfc8463_example() -> None:
    assert results(dkim.verify(RFC8463_MESSAGE, RFC8463_KEYS.get)) == [
        ("football.example.com", "brisbane", "pass"), ("football.example.com", "test", "pass")]
    # LF line ends are read as dkimpy reads them
    lf = RFC8463_MESSAGE.replace(b"\r\n", b"\n")
    assert {r.result for r in dkim.verify(lf, RFC8463_KEYS.get)} == {"pass"}


def test_verify_outcomes(rsa_key: rsa.RSAPrivateKey,
                         ed_key: ed25519.Ed25519PrivateKey) -> None:
    signed = dkim.sign(MESSAGE, domain=DOMAIN, selector="ed", key=ed_key)
    signed += dkim.sign(MESSAGE, domain=DOMAIN, selector="rsa", key=rsa_key)
    keys = records(ed=ed_key, rsa=rsa_key)
    good = signed + MESSAGE
    assert [r.result for r in dkim.verify(good, keys.get)] == ["pass", "pass"]
    assert dkim.verify(MESSAGE, keys.get) == []

    def outcome(message: bytes, lookup: dkim.TxtLookup = keys.get) -> list[tuple[str, str]]:
        return [(r.result, r.reason) for r in dkim.verify(message, lookup)]

    assert outcome(good.replace(b"noon", b"one")) == [("fail", "body hash mismatch")] * 2
    assert outcome(good.replace(b"Lunch", b"Brunch")) == [
        ("fail", "signature did not verify")] * 2
    # a From added above the signed one breaks the signatures (From is signed twice) ...
    assert {r for r, _ in outcome(good.replace(b"From: Alice", b"From: Eve <e@evil.test>\r\n"
                                                                b"From: Alice"))} == {"fail"}
    # ... while an unsigned field may be added anywhere
    assert {r for r, _ in outcome(good.replace(b"X-Mailer", b"X-Spam: no\r\nX-Mailer"))} == {
        "pass"}

    def down(name: str) -> str | None:
        raise DnsTemporaryError(f"{name}: timed out")

    assert [r for r, _ in outcome(good, down)] == ["temperror", "temperror"]
    assert outcome(good, dict[str, str]().get) == [("permerror", "no key record")] * 2
    revoked = {n: "v=DKIM1; k=rsa; p=" for n in keys}
    assert [r for r, _ in outcome(good, revoked.get)] == ["permerror"] * 2
    swapped = dict(zip(keys, reversed(keys.values()), strict=True))
    assert [r for r, _ in outcome(good, swapped.get)] == ["permerror"] * 2
    garbage = {n: "v=DKIM1; p=bm90IGEga2V5" for n in keys}
    assert [r for r, _ in outcome(good, garbage.get)] == ["permerror", "permerror"]
    sha1_only = {n: v + "; h=sha1" for n, v in keys.items()}
    assert [r for r, _ in outcome(good, sha1_only.get)] == ["permerror"] * 2


def test_verify_unterminated_body(ed_key: ed25519.Ed25519PrivateKey) -> None:
    """A body without a final CRLF (possible with BDAT) is read with the CRLF both
    canonicalizations add; dkimpy alone would keep the last line's trailing blanks."""
    message = b"From: a@example.test\r\n\r\nlast line \t"
    signed = dkim.sign(message, domain=DOMAIN, selector="ed", key=ed_key) + message
    assert [r.result for r in dkim.verify(signed, records(ed=ed_key).get)] == ["pass"]


def test_verify_refuses_weak_and_malformed(rsa_key: rsa.RSAPrivateKey) -> None:
    signed = dkim.sign(MESSAGE, domain=DOMAIN, selector="rsa", key=rsa_key) + MESSAGE
    keys = records(rsa=rsa_key)
    [sha1] = dkim.verify(signed.replace(b"a=rsa-sha256", b"a=rsa-sha1"), keys.get)
    assert (sha1.result, sha1.domain, sha1.selector) == ("permerror", DOMAIN, "rsa")
    assert "8301" in sha1.reason
    [future] = dkim.verify(re.sub(rb"t=\d+", b"t=%d" % (time.time() + 10**6), signed), keys.get)
    assert future.result == "permerror"
    [broken] = dkim.verify(b"DKIM-Signature: v=1; d\r\n" + MESSAGE, keys.get)
    assert (broken.result, broken.domain) == ("permerror", "")
    [nameless] = dkim.verify(signed.replace(b"s=rsa;", b"s=../x;"), keys.get)
    assert nameless.result == "permerror"
    small = serialization.load_pem_private_key(WEAK_KEY, password=None)
    assert isinstance(small, rsa.RSAPrivateKey) and small.key_size == 768
    weak = dkim.sign(MESSAGE, domain=DOMAIN, selector="rsa", key=small) + MESSAGE
    assert [r.result for r in dkim.verify(weak, records(rsa=small).get)] == ["permerror"]


def test_verify_checks_a_bounded_number(ed_key: ed25519.Ed25519PrivateKey) -> None:
    one = dkim.sign(MESSAGE, domain=DOMAIN, selector="ed", key=ed_key)
    found = dkim.verify(one * 12 + MESSAGE, records(ed=ed_key).get)
    assert [r.result for r in found] == ["pass"] * 10 + ["neutral"] * 2


def test_verify_async_over_dns(rsa_key: rsa.RSAPrivateKey,
                               ed_key: ed25519.Ed25519PrivateKey) -> None:
    big = MESSAGE + (b"x" * 80 + b"\r\n") * (dkim.THREAD_THRESHOLD // 82 + 1)
    assert len(big) > dkim.THREAD_THRESHOLD  # verified in a thread
    signed = {
        "small": dkim.sign(MESSAGE, domain=DOMAIN, selector="ed", key=ed_key)
        + dkim.sign(MESSAGE, domain=DOMAIN, selector="rsa", key=rsa_key) + MESSAGE,
        "big": dkim.sign(big, domain=DOMAIN, selector="rsa", key=rsa_key) + big,
        "nokey": dkim.sign(MESSAGE, domain=DOMAIN, selector="gone", key=ed_key) + MESSAGE,
        "servfail": dkim.sign(MESSAGE, domain=DOMAIN, selector="sf", key=ed_key) + MESSAGE,
    }
    zone: dict[str, dict[str, list[str | bytes | tuple[str | bytes, ...]]]] = {
        f"ed._domainkey.{DOMAIN}": {"TXT": ["v=spf1 -all", dkimkeys.txt_record(ed_key)]},
        f"rsa._domainkey.{DOMAIN}": {"TXT": [dkimkeys.txt_record(rsa_key)]},  # 2 strings
        f"sf._domainkey.{DOMAIN}": {"TXT": [dkimkeys.txt_record(ed_key)]},
    }
    with DnsServer(zone, servfail={f"sf._domainkey.{DOMAIN}"}) as server:
        resolver = Resolver([("127.0.0.1", server.port)], timeout=2.0)

        async def run() -> dict[str, list[tuple[str, str, str]]]:
            return {k: results(await dkim.verify_async(m, resolver)) for k, m in signed.items()}

        found = asyncio.run(run())
    assert found == {
        "small": [(DOMAIN, "ed", "pass"), (DOMAIN, "rsa", "pass")],
        "big": [(DOMAIN, "rsa", "pass")],
        "nokey": [(DOMAIN, "gone", "permerror")],
        "servfail": [(DOMAIN, "sf", "temperror")],
    }


# -- key store -----------------------------------------------------------------------------

def zone_txt(line: str) -> str:
    match = re.fullmatch(r'(\S+)\. IN TXT ((?:"[^"]{0,255}" ?)+)', line)
    assert match, line
    return "".join(re.findall(r'"([^"]*)"', match.group(2)))


def test_keygen_files_and_record(tmp_path: Path) -> None:
    path, line = dkimkeys.keygen(tmp_path, "Example.TEST", algorithm="rsa")
    assert path == tmp_path / "dkim" / DOMAIN / "s1.pem"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert line.startswith(f's1._domainkey.{DOMAIN}. IN TXT "v=DKIM1; k=rsa; p=')
    assert line.count('"') == 4 and "\n" not in line  # 2048-bit: two strings
    key = dkimkeys.signing_key(tmp_path, DOMAIN)
    assert key is not None and key.selector == "s1" and key.algorithm == "rsa-sha256"
    assert isinstance(key.private_key, rsa.RSAPrivateKey) and key.private_key.key_size == 2048
    assert zone_txt(line) == key.txt() and key.zone_line() == line
    message = dkim.sign(MESSAGE, domain=key.domain, selector=key.selector,
                        key=key.private_key) + MESSAGE
    with DnsServer(line + "\n") as server:  # the printed line is zone-file text as it is
        resolver = Resolver([("127.0.0.1", server.port)], timeout=2.0)
        assert [r.result for r in asyncio.run(dkim.verify_async(message, resolver))] == [
            "pass"]
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp files


def test_keygen_refuses_overwrite_and_switches_keys(tmp_path: Path) -> None:
    _, first = dkimkeys.keygen(tmp_path, DOMAIN, "s1", "ed25519")
    assert first.endswith('"') and first.count('"') == 2 and "k=ed25519" in first
    key1 = dkimkeys.signing_key(tmp_path, DOMAIN)
    assert key1 is not None and key1.algorithm == "ed25519-sha256"
    assert dkimkeys.signing_key(tmp_path, DOMAIN) is key1  # cached while nothing changes
    with pytest.raises(dkimkeys.KeyExistsError):
        dkimkeys.keygen(tmp_path, DOMAIN, "S1", "ed25519")
    assert dkimkeys.signing_key(tmp_path, DOMAIN) is key1
    _, second = dkimkeys.keygen(tmp_path, DOMAIN, "s1", "ed25519", force=True)
    key2 = dkimkeys.signing_key(tmp_path, DOMAIN)
    assert key2 is not None and key2.txt() == zone_txt(second) != zone_txt(first)
    dkimkeys.keygen(tmp_path, DOMAIN, "s2", "ed25519")  # a new selector becomes the active one
    key3 = dkimkeys.signing_key(tmp_path, DOMAIN)
    assert key3 is not None and key3.selector == "s2"
    (tmp_path / "dkim" / DOMAIN / "s2.pem").unlink()
    assert dkimkeys.signing_key(tmp_path, DOMAIN) is None  # the active key is gone
    (tmp_path / "dkim" / DOMAIN / "active").unlink()  # without a pointer: the newest key
    key4 = dkimkeys.signing_key(tmp_path, DOMAIN)
    assert key4 is not None and key4.selector == "s1"


def test_signing_key_edges(tmp_path: Path) -> None:
    assert dkimkeys.signing_key(tmp_path, DOMAIN) is None
    for bad in ("../etc", "a/b", "", ".", "x\0y"):
        assert dkimkeys.signing_key(tmp_path, bad) is None
    dkimkeys.keygen(tmp_path, DOMAIN, "s1", "ed25519")
    pem = tmp_path / "dkim" / DOMAIN / "s1.pem"
    assert dkimkeys.signing_key(tmp_path, DOMAIN.upper() + ".") is not None
    pem.write_bytes(b"not a key")  # replaced in place: mtime/size change is noticed
    with pytest.raises(dkimkeys.DkimKeyError):
        dkimkeys.signing_key(tmp_path, DOMAIN)
    for bad_domain, bad_selector in (("not a domain", "s1"), (DOMAIN, "s/1"), (DOMAIN, "-x")):
        with pytest.raises(ValueError):
            dkimkeys.keygen(tmp_path, bad_domain, bad_selector, "ed25519")


# -- command line --------------------------------------------------------------------------

def test_cli_keygen(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = tmp_path / "postwright.toml"
    conf.write_text('hostname = "mx.example.test"\ndata_dir = "data"\n'
                    '[domains]\nlocal = ["example.test"]\n')

    def run(*args: str) -> tuple[int, str, str]:
        status = cli.main(["dkim", "keygen", "--config", str(conf), *args])
        out, err = capsys.readouterr()
        return status, out, err

    status, out, _ = run("EXAMPLE.test")
    assert status == 0 and out.count("\n") == 1
    assert re.fullmatch(r's1\._domainkey\.example\.test\. IN TXT "v=DKIM1; k=rsa; p=[^"]+"'
                        r'( "[^"]+")+\n', out), out
    assert all(len(s) <= 255 for s in re.findall(r'"([^"]*)"', out))
    assert (tmp_path / "data" / "dkim" / DOMAIN / "s1.pem").exists()
    status, out, err = run(DOMAIN)
    assert (status, out) == (1, "") and "already has a key" in err
    status, out, _ = run(DOMAIN, "--force", "--algorithm", "ed25519")
    assert status == 0 and re.fullmatch(r's1\._domainkey\.example\.test\. IN TXT '
                                        r'"v=DKIM1; k=ed25519; p=[A-Za-z0-9+/]{43}="\n', out)
    status, out, _ = run(DOMAIN, "--selector", "mail2024", "--algorithm", "ed25519")
    assert status == 0 and out.startswith("mail2024._domainkey.example.test. IN TXT")
    key = dkimkeys.signing_key(tmp_path / "data", DOMAIN)
    assert key is not None and key.selector == "mail2024"
    status, out, err = run("other.test")
    assert (status, out) == (2, "") and "not a local domain" in err
    status, out, err = run(DOMAIN, "--selector", "bad selector")
    assert (status, out) == (2, "") and "invalid selector" in err
    assert os.listdir(tmp_path / "data" / "dkim") == [DOMAIN]
