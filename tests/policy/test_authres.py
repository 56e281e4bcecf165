"""Tests for the Authentication-Results field: what we write, and what we strip on the way in."""

from __future__ import annotations

import email
import email.policy
from dataclasses import dataclass

from postwright.policy.authres import header, strip_ours
from postwright.policy.dmarc import DmarcResult
from postwright.policy.spf import SpfResult


@dataclass(frozen=True)
class Sig:
    """A DKIM result in the shape policy.dkim gives (domain, selector, result, ...)."""

    domain: str
    selector: str
    result: str
    reason: str = ""
    header_b: str = ""


PASS_SPF = SpfResult("pass", domain="example.com")
PASS_DMARC = DmarcResult("pass", "reject", "none", "example.com", "example.com")


def parsed_value(field: bytes) -> str:
    """The field value as a standards-following reader sees it (unfolded)."""
    message = email.message_from_bytes(field + b"\r\nbody\r\n", policy=email.policy.compat32)
    assert len(message.keys()) == 1 and message.defects == []
    value = message["Authentication-Results"]
    assert isinstance(value, str)
    return " ".join(value.split())


def test_typical_field_exact_bytes() -> None:
    field = header("mx.example.org", spf=PASS_SPF,
                   dkim=[Sig("example.com", "s1", "pass", header_b="AbC/dEf+GhIjK")],
                   dmarc=PASS_DMARC)
    assert field == (
        b"Authentication-Results: mx.example.org;\r\n"
        b" spf=pass smtp.mailfrom=example.com;\r\n"
        b' dkim=pass header.d=example.com header.s=s1 header.b="AbC/dEf+";\r\n'
        b" dmarc=pass (p=reject dis=none) header.from=example.com\r\n")


def test_failures_errors_and_helo() -> None:
    field = header(
        "mx.example.org",
        spf=SpfResult("fail", "Not authorized; see https://example.com/spf (sorry)",
                      "example.com"),
        helo=SpfResult("permerror", domain="helo.example.net", scope="helo",
                       reason="more than 10 DNS-querying terms"),
        dkim=[Sig("example.com", "s1", "fail", reason="body hash mismatch"),
              Sig("Bücher.example", "", "temperror")],
        dmarc=DmarcResult("fail", "quarantine", "none", "example.com", "example.com"))
    value = parsed_value(field)
    assert value == (
        "mx.example.org; "
        r"spf=fail (Not authorized; see https://example.com/spf \(sorry\)) "
        "smtp.mailfrom=example.com; "
        'spf=permerror reason="more than 10 DNS-querying terms" smtp.helo=helo.example.net; '
        'dkim=fail reason="body hash mismatch" header.d=example.com header.s=s1; '
        "dkim=temperror header.d=xn--bcher-kva.example; "
        "dmarc=fail (p=quarantine dis=none) header.from=example.com")
    assert all(len(line) <= 78 for line in field.split(b"\r\n"))
    assert field.endswith(b"\r\n") and b"\n" not in field.replace(b"\r\n", b"")


def test_nothing_and_no_signatures() -> None:
    assert header("mx.example.org", spf=None, dkim=None, dmarc=None) == \
        b"Authentication-Results: mx.example.org;\r\n none\r\n"
    assert parsed_value(header("mx.example.org", spf=None, dkim=[], dmarc=None)) == \
        "mx.example.org; dkim=none"


def test_hostile_values_cannot_break_the_field() -> None:
    evil = "x\r\nX-Injected: yes\r\n\r\nbody"
    field = header("mx.example.org",
                   spf=SpfResult("fail", evil, "example.com\r\nX-Evil: 1"),
                   dkim=[Sig('d"q\\.example', "sel;ector", "fail", reason=evil * 20)],
                   dmarc=DmarcResult("permerror", domain="example.com", reason=evil))
    assert field.count(b"\r\n") == len(field.splitlines())
    for line in field.split(b"\r\n")[1:-1]:
        assert line.startswith(b" ")  # every line after the first continues the one field
    assert b"\r\nX-" not in field
    value = parsed_value(field)
    assert 'header.d="d\\"q\\\\.example"' in value
    assert 'header.s="sel;ector"' in value
    assert "..." in value  # over-long reasons are clipped


def test_long_results_fold_between_words() -> None:
    domain = "a-rather-long-subdomain-name.of-an-even-longer-organisational-domain.example"
    field = header("mx.example.org", spf=SpfResult("pass", domain=domain), dkim=None,
                   dmarc=DmarcResult("fail", "reject", "reject", domain, domain))
    lines = field.split(b"\r\n")
    assert lines[1:5] == [b" spf=pass", b"  smtp.mailfrom=" + domain.encode() + b";",
                          b" dmarc=fail (p=reject dis=reject)",
                          b"  header.from=" + domain.encode()]
    assert parsed_value(field).endswith(f"header.from={domain}")


# -- strip_ours ----------------------------------------------------------------------------

HEAD = (
    b"Received: from a by b; Mon, 1 Jan 2024 00:00:00 +0000\r\n"
    b"Authentication-Results: MX.Example.Org; spf=pass smtp.mailfrom=evil.test\r\n"
    b"authentication-results : (forged) mx.example.org.;\r\n"
    b"\tdkim=pass header.d=bank.test\r\n"
    b'Authentication-Results: "mx.example.org"; dmarc=pass\r\n'
    b"Authentication-Results: mx.example.org.other.test; spf=fail\r\n"
    b"Authentication-Results: relay.example.net; spf=pass\r\n"
    b"Authentication-Results:mx.example.org;none\r\n"
    b"X-Authentication-Results: mx.example.org; spf=pass\r\n"
    b"Subject: hi\r\n"
    b"\r\n"
    b"Authentication-Results: mx.example.org; this is the body\r\n"
)


def test_strip_ours_removes_only_fields_claiming_our_id() -> None:
    assert strip_ours(HEAD, "mx.example.org") == (
        b"Received: from a by b; Mon, 1 Jan 2024 00:00:00 +0000\r\n"
        b"Authentication-Results: mx.example.org.other.test; spf=fail\r\n"
        b"Authentication-Results: relay.example.net; spf=pass\r\n"
        b"X-Authentication-Results: mx.example.org; spf=pass\r\n"
        b"Subject: hi\r\n"
        b"\r\n"
        b"Authentication-Results: mx.example.org; this is the body\r\n")


def test_strip_ours_keeps_everything_else_byte_for_byte() -> None:
    assert strip_ours(HEAD, "elsewhere.test") == HEAD
    assert strip_ours(b"", "mx.example.org") == b""
    head_only = b"Subject: x\r\nAuthentication-Results: mx.example.org;\r\n none\r\n"
    assert strip_ours(head_only, "MX.EXAMPLE.ORG") == b"Subject: x\r\n"


def test_our_own_field_is_recognised_as_ours() -> None:
    ours = header("mx.example.org", spf=PASS_SPF, dkim=[], dmarc=PASS_DMARC)
    message = ours + b"Subject: x\r\n\r\nbody\r\n"
    assert strip_ours(message, "mx.example.org") == b"Subject: x\r\n\r\nbody\r\n"
