"""Tests for the Received: trace header (RFC 5321 4.4, RFC 3848, RFC 6531 3.7.3)."""

from __future__ import annotations

import email
import email.policy
import email.utils

import pytest

from postwright.message.trace import PROTOCOLS, received_header, with_protocol

WHEN = 1795932000.0  # Sun, 29 Nov 2026 06:00:00 +0000


def build(**overrides: object) -> bytes:
    args: dict[str, object] = dict(
        helo="helo.example", client_address="127.0.0.1", client_name="client.example",
        hostname="mx.example.test", protocol="ESMTPS", queue_id="ABC",
        recipient="bob@example.test", tls="TLSv1.3 TLS_AES_256_GCM_SHA384", when=WHEN,
    )
    args.update(overrides)
    return received_header(**args)  # type: ignore[arg-type]


def test_example_from_the_brief_exactly() -> None:
    assert build() == (
        b"Received: from helo.example (client.example [127.0.0.1])\r\n"
        b"\tby mx.example.test (postwright) with ESMTPS id ABC\r\n"
        b"\t(TLSv1.3 TLS_AES_256_GCM_SHA384)\r\n"
        b"\tfor <bob@example.test>; Sun, 29 Nov 2026 06:00:00 +0000\r\n"
    )


def test_minimal_header_without_tls_recipient_or_name() -> None:
    got = build(client_name=None, recipient=None, tls=None, protocol="SMTP")
    assert got == (
        b"Received: from helo.example ([127.0.0.1])\r\n"
        b"\tby mx.example.test (postwright) with SMTP id ABC;"
        b" Sun, 29 Nov 2026 06:00:00 +0000\r\n"
    )


def test_ipv6_literal_and_mapped_ipv4() -> None:
    assert b"(client.example [IPv6:2001:db8::1])" in build(client_address="2001:DB8:0::1")
    assert b"[IPv6:fe80::1]" in build(client_address="fe80::1%eth0")
    assert b"(client.example [192.0.2.7])" in build(client_address="::ffff:192.0.2.7")


def test_helo_equal_to_literal_is_not_repeated() -> None:
    got = build(helo="[127.0.0.1]", client_name=None)
    assert got.startswith(b"Received: from [127.0.0.1]\r\n")


def test_not_an_ip_address_leaves_only_the_name() -> None:
    assert build(client_address="", client_name=None).startswith(b"Received: from helo.example\r\n")


@pytest.mark.parametrize("evil", [
    "evil\r\nX-Injected: yes",
    "evil\nX-Injected: yes",
    "evil\rX-Injected: yes",
    "evil\x00\x07\x1b[31m",
    "evil\x85X-Injected: yes",       # NEL, a C1 control
    "evil\u2028X-Injected: yes",     # LINE SEPARATOR
    "evil) (spoofed [10.0.0.1]",     # comment structure
])
@pytest.mark.parametrize("protocol", ["ESMTP", "UTF8SMTPS"])
def test_peer_values_cannot_break_the_header(evil: str, protocol: str) -> None:
    got = build(helo=evil, client_name=evil, recipient=evil, tls=evil, protocol=protocol,
                queue_id=evil)
    text = got.decode("utf-8")
    lines = text.split("\r\n")
    assert lines[-1] == ""
    body = lines[:-1]
    assert body[0].startswith("Received: ")
    assert all(line.startswith("\t") for line in body[1:])
    for line in body:
        assert all(ch == "\t" or ch.isprintable() for ch in line), line
        assert "\r" not in line and "\n" not in line
        assert "\u2028" not in line and "\x85" not in line
    assert text.count("(") == text.count(")")
    # A mail parser sees exactly one header field and the empty body.
    msg = email.message_from_bytes(got + b"\r\nbody\r\n", policy=email.policy.default)
    assert list(msg.keys()) == ["Received"]


def test_utf8_names_kept_only_for_utf8_protocols() -> None:
    kwargs = dict(helo="bücher.example", client_name="bücher.example",
                  recipient="jörg@bücher.example")
    ascii_only = build(protocol="ESMTPS", **kwargs)
    assert ascii_only.isascii()
    assert b"from bcher.example (bcher.example [127.0.0.1])" in ascii_only
    utf8 = build(protocol="UTF8SMTPS", **kwargs)
    assert "from bücher.example (bücher.example [127.0.0.1])".encode() in utf8
    assert "for <jörg@bücher.example>".encode() in utf8


def test_bidi_override_dropped_even_in_utf8() -> None:
    got = build(protocol="UTF8SMTP", helo="a\u202eb.example")
    assert got.startswith(b"Received: from ab.example ")


def test_recipient_in_angle_brackets_and_quoted_local_part() -> None:
    assert b"for <bob@example.test>;" in build(recipient="<bob@example.test>")
    assert b'for <"a b"@example.test>;' in build(recipient='"a b"@example.test')


def test_long_values_are_clipped_and_lines_stay_short() -> None:
    got = build(helo="a" * 5000, client_name="b" * 5000, recipient="c" * 5000 + "@x",
                tls="d" * 5000, protocol="UTF8SMTPS")
    assert all(len(line) <= 998 for line in got.split(b"\r\n"))
    wide = build(helo="\U0001f600" * 300, protocol="UTF8SMTP")
    assert len(wide.split(b"\r\n")[0]) <= 998
    assert "\U0001f600".encode() in wide


def test_date_is_rfc5322_utc() -> None:
    got = build(when=0.0, recipient=None, tls=None)
    assert got.endswith(b"; Thu, 01 Jan 1970 00:00:00 +0000\r\n")
    date = got.decode().rsplit("; ", 1)[1].strip()
    assert email.utils.parsedate_to_datetime(date).timestamp() == 0.0


def test_unknown_protocol_refused() -> None:
    with pytest.raises(ValueError):
        build(protocol="HTTP")
    with pytest.raises(ValueError):
        build(protocol="esmtp")


@pytest.mark.parametrize(("esmtp", "tls", "auth", "utf8", "expected"), [
    (False, False, False, False, "SMTP"),
    (False, True, False, False, "SMTP"),
    (True, False, False, False, "ESMTP"),
    (True, True, False, False, "ESMTPS"),
    (True, False, True, False, "ESMTPA"),
    (True, True, True, False, "ESMTPSA"),
    (True, False, False, True, "UTF8SMTP"),
    (True, True, False, True, "UTF8SMTPS"),
    (True, False, True, True, "UTF8SMTPA"),
    (True, True, True, True, "UTF8SMTPSA"),
])
def test_with_protocol(esmtp: bool, tls: bool, auth: bool, utf8: bool, expected: str) -> None:
    got = with_protocol(esmtp=esmtp, tls=tls, auth=auth, utf8=utf8)
    assert got == expected
    assert got in PROTOCOLS
