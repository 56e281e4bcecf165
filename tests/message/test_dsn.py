"""Tests for delivery status notifications (RFC 3464, RFC 3461, RFC 6522, RFC 6533)."""

from __future__ import annotations

import email
import email.policy
import email.utils
import io
import re
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from postwright.envelope import Envelope, Recipient
from postwright.errors import PostwrightError
from postwright.message.dsn import RecipientReport, build_dsn, choose_boundary, wants_report

ARRIVAL = 1795930000.0  # Sun, 29 Nov 2026 05:26:40 +0000
ATTEMPT = 1795932000.0
NOW = 1795932100.0
RETRY_UNTIL = 1796364000.0
BOB = Recipient("bob@example.test")
ORIGINAL = (b"From: Alice <alice@example.org>\r\nTo: bob@example.test\r\n"
            b"Subject: lunch\r\nMessage-ID: <m1@example.org>\r\n\r\n"
            b"BODY-MARKER see you at noon\r\n")


def env(**overrides: Any) -> Envelope:
    args: dict[str, Any] = dict(sender="alice@example.org", recipients=(BOB,))
    args.update(overrides)
    return Envelope(**args)


def failed(rcpt: Recipient = BOB, **overrides: Any) -> RecipientReport:
    args: dict[str, Any] = dict(recipient=rcpt, action="failed", status="5.1.1",
                                diagnostic="550 5.1.1 user unknown",
                                remote_mta="mx.example.test", last_attempt=ATTEMPT)
    args.update(overrides)
    return RecipientReport(**args)


def delayed(rcpt: Recipient = BOB, **overrides: Any) -> RecipientReport:
    args: dict[str, Any] = dict(recipient=rcpt, action="delayed", status="4.4.1",
                                diagnostic="421 4.4.1 try later", remote_mta="mx.example.test",
                                last_attempt=ATTEMPT, will_retry_until=RETRY_UNTIL)
    args.update(overrides)
    return RecipientReport(**args)


def build(envelope: Envelope | None = None, reports: list[RecipientReport] | None = None,
          original: Any = ORIGINAL, **kw: Any) -> bytes:
    data = build_dsn(envelope=envelope or env(), queue_id="Q1", reports=reports or [failed()],
                     reporting_mta="mx.example.org", original=original, arrival=ARRIVAL,
                     now=NOW, **kw)
    assert data is not None
    assert_wire_clean(data)
    return data


def assert_wire_clean(data: bytes) -> None:
    """CRLF only, every line at most 998 octets, ending in CRLF."""
    assert data.endswith(b"\r\n")
    assert b"\r" not in data.replace(b"\r\n", b"")
    assert b"\n" not in data.replace(b"\r\n", b"")
    assert max(len(line) for line in data.split(b"\r\n")) <= 998


def parse(data: bytes) -> EmailMessage:
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    assert not msg.defects
    return msg


def parts_of(msg: EmailMessage) -> list[EmailMessage]:
    """The sub-parts of a multipart (or the one message inside a message/* part)."""
    payload = msg.get_payload()
    assert isinstance(payload, list)
    assert all(isinstance(p, EmailMessage) for p in payload)
    return [p for p in payload if isinstance(p, EmailMessage)]


def text_of(data: bytes) -> str:
    content = parts_of(parse(data))[0].get_content()
    assert isinstance(content, str)
    return content


def raw_parts(data: bytes) -> list[tuple[bytes, bytes]]:
    """Split the report by hand: (part header, part body) for each part, bodies exact."""
    boundary = parse(data).get_boundary()
    assert boundary
    delim = b"\r\n--" + boundary.encode() + b"\r\n"
    close = b"\r\n--" + boundary.encode() + b"--\r\n"
    assert data.endswith(close)
    chunks = data[: -len(close)].split(delim)[1:]
    out = []
    for chunk in chunks:
        head, _, body = chunk.partition(b"\r\n\r\n")
        out.append((head + b"\r\n", body))
    return out


def blocks(body: bytes) -> list[dict[str, str]]:
    """The field groups of a delivery-status body, unfolded; duplicate fields refused."""
    groups = []
    for group in body.decode("utf-8").rstrip("\r\n").split("\r\n\r\n"):
        fields: dict[str, str] = {}
        for line in re.sub(r"\r\n[ \t]", " ", group).split("\r\n"):
            name, sep, value = line.partition(":")
            assert sep, line
            assert name.lower() not in (k.lower() for k in fields), name
            fields[name] = value.strip()
        groups.append(fields)
    return groups


def status_blocks(data: bytes) -> list[dict[str, str]]:
    return blocks(raw_parts(data)[1][1])


def date(value: str) -> float:
    return email.utils.parsedate_to_datetime(value).timestamp()


# --- structure and fields -----------------------------------------------------------------


def test_structure_and_top_headers() -> None:
    data = build()
    assert data.isascii()
    msg = parse(data)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    assert str(msg["From"]) == "Mail Delivery System <MAILER-DAEMON@mx.example.org>"
    assert str(msg["To"]) == "alice@example.org"
    assert str(msg["Subject"]) == "Undelivered Mail Returned to Sender"
    assert date(str(msg["Date"])) == NOW
    assert re.fullmatch(r"<[0-9a-f]+\.Q1@mx\.example\.org>", str(msg["Message-ID"]))
    assert str(msg["Auto-Submitted"]) == "auto-replied"
    assert str(msg["MIME-Version"]) == "1.0"
    parts = parts_of(msg)
    assert [p.get_content_type() for p in parts] == [
        "text/plain", "message/delivery-status", "message/rfc822"]
    for part in parts:
        assert not part.defects


def test_human_readable_part_names_recipient_and_reason() -> None:
    data = build()
    assert parts_of(parse(data))[0].get_content_charset() == "us-ascii"
    content = text_of(data)
    assert "<bob@example.test>: failed (5.1.1)" in content
    assert "mx.example.test said: 550 5.1.1 user unknown" in content
    assert "could not be delivered" in content
    assert "Queue ID: Q1" in content


def test_per_message_and_per_recipient_fields() -> None:
    rcpt = Recipient("bob@example.test", "rfc822;Bob@Example.test", ("FAILURE",))
    data = build(env(recipients=(rcpt,), envid="QQ314159"), [failed(rcpt)])
    head, per_rcpt = status_blocks(data)
    assert head == {
        "Original-Envelope-Id": "QQ314159",
        "Reporting-MTA": "dns; mx.example.org",
        "X-Postwright-Queue-ID": "Q1",
        "Arrival-Date": head["Arrival-Date"],
    }
    assert date(head["Arrival-Date"]) == ARRIVAL
    assert per_rcpt == {
        "Original-Recipient": "rfc822;Bob@Example.test",
        "Final-Recipient": "rfc822; bob@example.test",
        "Action": "failed",
        "Status": "5.1.1",
        "Remote-MTA": "dns; mx.example.test",
        "Diagnostic-Code": "smtp; 550 5.1.1 user unknown",
        "Last-Attempt-Date": per_rcpt["Last-Attempt-Date"],
    }
    assert date(per_rcpt["Last-Attempt-Date"]) == ATTEMPT
    # field order as in the RFC 3464 grammar
    assert list(per_rcpt)[:4] == ["Original-Recipient", "Final-Recipient", "Action", "Status"]
    assert list(head)[:2] == ["Original-Envelope-Id", "Reporting-MTA"]


def test_python_parser_sees_the_same_status_groups() -> None:
    status = parse(build(reports=[failed(), failed(Recipient("carol@example.test"))]))
    groups = parts_of(parts_of(status)[1])
    assert [str(g["Final-Recipient"]) for g in groups[1:]] == [
        "rfc822; bob@example.test", "rfc822; carol@example.test"]
    assert str(groups[0]["Reporting-MTA"]) == "dns; mx.example.org"


def test_optional_fields_absent_when_unknown() -> None:
    data = build(reports=[failed(diagnostic=None, remote_mta=None, last_attempt=None)])
    head, per_rcpt = status_blocks(data)
    assert "Original-Envelope-Id" not in head
    assert set(per_rcpt) == {"Final-Recipient", "Action", "Status"}


def test_envid_is_xtext_encoded() -> None:
    head = status_blocks(build(env(envid="a b+c=d\u00e9")))[0]
    assert head["Original-Envelope-Id"] == "a+20b+2Bc+3Dd+C3+A9"


@pytest.mark.parametrize(("orcpt", "shown"), [
    ("rfc822;a+b@example.test", "rfc822;a+b@example.test"),  # decoded, as stored
    ("x-local;some thing", "x-local;some thing"),
    ("RFC822;Bob@Example.test", "RFC822;Bob@Example.test"),
])
def test_original_recipient_keeps_its_type(orcpt: str, shown: str) -> None:
    rcpt = Recipient("bob@example.test", orcpt)
    per_rcpt = status_blocks(build(env(recipients=(rcpt,)), [failed(rcpt)]))[1]
    assert per_rcpt["Original-Recipient"] == shown


def test_delay_warning_fields_and_subject() -> None:
    data = build(reports=[delayed()])
    msg = parse(data)
    assert str(msg["Subject"]) == "Delayed Mail (still being retried)"
    per_rcpt = status_blocks(data)[1]
    assert per_rcpt["Action"] == "delayed"
    assert per_rcpt["Status"] == "4.4.1"
    assert date(per_rcpt["Will-Retry-Until"]) == RETRY_UNTIL
    assert "will keep trying" in text_of(data)


def test_will_retry_until_only_for_delayed() -> None:
    per_rcpt = status_blocks(build(reports=[failed(will_retry_until=RETRY_UNTIL)]))[1]
    assert "Will-Retry-Until" not in per_rcpt


def test_success_notice_when_asked_for() -> None:
    rcpt = Recipient("bob@example.test", notify=("SUCCESS",))
    report = RecipientReport(rcpt, "delivered", "2.0.0", "250 2.0.0 ok", "mx.example.test")
    data = build(env(recipients=(rcpt,)), [report])
    msg = parse(data)
    assert str(msg["Subject"]) == "Successful Mail Delivery Report"
    assert status_blocks(data)[1]["Action"] == "delivered"
    # RFC 3461 section 4.3: a notice without failures returns headers only
    assert parts_of(msg)[2].get_content_type() == "text/rfc822-headers"
    assert b"BODY-MARKER" not in data


def test_mixed_outcomes_keep_only_wanted_reports() -> None:
    quiet = Recipient("quiet@example.test", notify=("NEVER",))
    late = Recipient("late@example.test")
    data = build(env(recipients=(BOB, quiet, late)),
                 [failed(), failed(quiet), delayed(late)])
    groups = status_blocks(data)
    assert [g["Final-Recipient"] for g in groups[1:]] == [
        "rfc822; bob@example.test", "rfc822; late@example.test"]
    assert b"quiet@example.test" not in data
    assert str(parse(data)["Subject"]) == "Undelivered Mail Returned to Sender"


def test_typed_diagnostic_is_kept() -> None:
    data = build(reports=[failed(diagnostic="X-Postwright; mailbox quota exceeded")])
    assert status_blocks(data)[1]["Diagnostic-Code"] == "X-Postwright; mailbox quota exceeded"


# --- NOTIFY (RFC 3461 section 4.1) and the null sender ---------------------------------


@pytest.mark.parametrize(("notify", "action", "wanted"), [
    ((), "failed", True),
    ((), "delayed", True),
    ((), "delivered", False),
    ((), "relayed", False),
    (("NEVER",), "failed", False),
    (("NEVER",), "delayed", False),
    (("SUCCESS",), "failed", False),
    (("SUCCESS",), "delivered", True),
    (("SUCCESS",), "relayed", True),
    (("SUCCESS",), "expanded", True),
    (("FAILURE",), "failed", True),
    (("FAILURE",), "delayed", False),
    (("FAILURE", "DELAY"), "delayed", True),
    (("DELAY",), "failed", False),
    (("SUCCESS", "FAILURE"), "failed", True),
    (("success", "failure"), "delivered", True),
])
def test_wants_report(notify: tuple[str, ...], action: str, wanted: bool) -> None:
    assert wants_report(Recipient("bob@example.test", notify=notify), action) is wanted


def test_wants_report_refuses_unknown_action() -> None:
    with pytest.raises(ValueError):
        wants_report(BOB, "bounced")


def none_for(envelope: Envelope, reports: list[RecipientReport]) -> bytes | None:
    return build_dsn(envelope=envelope, queue_id="Q1", reports=reports,
                     reporting_mta="mx.example.org", original=ORIGINAL, arrival=ARRIVAL,
                     now=NOW)


def test_never_bounce_a_bounce() -> None:
    assert none_for(env(sender=""), [failed()]) is None


def test_notify_never_gives_nothing() -> None:
    rcpt = Recipient("bob@example.test", notify=("NEVER",))
    assert none_for(env(recipients=(rcpt,)), [failed(rcpt), delayed(rcpt)]) is None


def test_notify_success_only_with_a_failure_gives_nothing() -> None:
    rcpt = Recipient("bob@example.test", notify=("SUCCESS",))
    assert none_for(env(recipients=(rcpt,)), [failed(rcpt)]) is None


def test_no_reports_gives_nothing() -> None:
    assert none_for(env(), []) is None


@pytest.mark.parametrize("bad", [
    dict(action="bounced"), dict(status="5.1"), dict(status="3.1.1"), dict(status="5.01.1"),
    dict(status="5.1.1\r\nX: y"), dict(status="5.1000.1"),
])
def test_report_values_are_checked(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        failed(**bad)


# --- the returned original (RET, size, cleanliness) ----------------------------------


def test_ret_full_returns_the_whole_message() -> None:
    data = build(env(ret="FULL"))
    inner = parts_of(parse(data))[2]
    assert inner.get_content_type() == "message/rfc822"
    assert raw_parts(data)[2][1] == ORIGINAL
    embedded = parts_of(inner)[0]
    assert str(embedded["Message-ID"]) == "<m1@example.org>"


def test_no_ret_returns_the_whole_message() -> None:
    assert raw_parts(build(env(ret=None)))[2][1] == ORIGINAL


def test_ret_hdrs_returns_headers_only() -> None:
    data = build(env(ret="HDRS"))
    part = parts_of(parse(data))[2]
    assert part.get_content_type() == "text/rfc822-headers"
    assert b"BODY-MARKER" not in data
    head, body = raw_parts(data)[2]
    assert body == ORIGINAL.split(b"\r\n\r\n")[0] + b"\r\n"
    assert b"Content-Description: Undelivered Message Headers" in head


def test_delay_warning_never_carries_the_body() -> None:
    data = build(env(ret="FULL"), [delayed()])
    assert b"BODY-MARKER" not in data
    assert parts_of(parse(data))[2].get_content_type() == "text/rfc822-headers"


def test_truncated_to_headers_over_max_original() -> None:
    original = ORIGINAL + b"filler line\r\n" * 100
    small = build(original=original, max_original=len(original) - 1)
    assert b"BODY-MARKER" not in small
    assert parts_of(parse(small))[2].get_content_type() == "text/rfc822-headers"
    assert "larger than" in text_of(small)
    exact = build(original=original, max_original=len(original))
    assert raw_parts(exact)[2][1] == original


def test_stream_is_read_no_further_than_needed() -> None:
    stream = io.BytesIO(ORIGINAL + b"x" * 10_000 + b"\r\n")
    data = build(original=stream, max_original=500)
    assert b"BODY-MARKER" not in data
    assert stream.tell() <= 501


def test_original_from_a_real_file(tmp_path: Path) -> None:
    path = tmp_path / "body"
    path.write_bytes(b"ignored prefix" + ORIGINAL)
    with path.open("rb") as f:
        f.seek(len(b"ignored prefix"))
        data = build(original=f)
    assert raw_parts(data)[2][1] == ORIGINAL


def test_header_section_itself_too_big_is_cut_on_a_field_boundary() -> None:
    original = (b"Subject: one\r\nX-Long: " + b"a" * 300 + b"\r\n\tmore " + b"b" * 300
                + b"\r\nX-After: z\r\n\r\nbody\r\n")
    data = build(env(ret="HDRS"), original=original, max_original=500)
    assert raw_parts(data)[2][1] == b"Subject: one\r\n"


def test_bare_line_ends_in_the_original_become_crlf() -> None:
    original = b"Subject: x\nX-A: y\r\rX-B: z\r\n\nbody\rmore\n"
    data = build(original=original)
    assert raw_parts(data)[2][1] == (
        b"Subject: x\r\nX-A: y\r\n\r\nX-B: z\r\n\r\nbody\r\nmore\r\n")


def test_original_without_final_crlf_gets_one() -> None:
    data = build(original=b"Subject: x\r\n\r\nbody")
    assert raw_parts(data)[2][1] == b"Subject: x\r\n\r\nbody\r\n"


def test_eight_bit_body_returns_headers_only_in_7bit_mode() -> None:
    original = b"Subject: caf\xc3\xa9\r\n\r\nna\xc3\xafve BODY-MARKER\r\n"
    data = build(original=original)
    assert data.isascii()
    assert b"BODY-MARKER" not in data
    assert raw_parts(data)[2][1] == b"Subject: caf??\r\n"


def test_long_or_nul_lines_return_headers_only() -> None:
    for body in (b"x" * 999 + b"\r\n", b"a\0b\r\n"):
        data = build(original=b"Subject: x\r\n\r\n" + body)
        assert raw_parts(data)[2][1] == b"Subject: x\r\n"


def test_over_long_header_line_is_split_into_a_continuation() -> None:
    original = b"X-Big: " + b"v" * 2000 + b"\r\nSubject: s\r\n\r\nbody\r\n"
    data = build(original=original)
    body = raw_parts(data)[2][1]
    assert body.replace(b"\r\n ", b"") == b"X-Big: " + b"v" * 2000 + b"\r\nSubject: s\r\n"


def test_empty_original_gives_two_parts() -> None:
    data = build(original=b"")
    assert len(raw_parts(data)) == 2
    assert "empty" in text_of(data)


# --- boundaries ---------------------------------------------------------------------------


def tokens(*values: str) -> Iterator[str]:
    yield from values


def test_boundary_generator_retries_on_collision() -> None:
    draws = tokens("abc", "abc", "xyz")
    boundary = choose_boundary([b"foo\r\n--=_pw_abc\r\n"], token=lambda: next(draws))
    assert boundary == "=_pw_xyz"


def test_boundary_generator_gives_up() -> None:
    with pytest.raises(PostwrightError):
        choose_boundary([b"=_pw_same"], token=lambda: "same")


def test_boundary_generator_refuses_unusable_tokens() -> None:
    with pytest.raises(ValueError):
        choose_boundary([b""], token=lambda: "bad token\r\n")


def test_build_skips_a_boundary_found_in_the_original() -> None:
    original = b"Subject: x\r\n\r\n--=_pw_taken\r\nfake part\r\n--=_pw_taken--\r\n"
    draws = tokens("taken", "free")
    data = build(original=original, boundary_token=lambda: next(draws))
    msg = parse(data)
    assert msg.get_boundary() == "=_pw_free"
    assert raw_parts(data)[2][1] == original
    assert len(parts_of(msg)) == 3


def test_random_boundaries_differ() -> None:
    assert parse(build()).get_boundary() != parse(build()).get_boundary()


# --- hostile input ----------------------------------------------------------------------


def test_hostile_diagnostic_is_sanitized() -> None:
    hostile = ("550 no\r\nInjected: yes\r\n\r\n--fake\x1b[31m\x00\x7f" + "A" * 20_000)
    data = build(reports=[failed(diagnostic=hostile, remote_mta="evil\r\nX: y")])
    assert b"\x1b" not in data and b"\x00" not in data and b"\x7f" not in data
    groups = status_blocks(data)
    assert len(groups) == 2
    assert "Injected" not in groups[1]
    diag = groups[1]["Diagnostic-Code"]
    assert diag.startswith("smtp; 550 no Injected: yes --fake [31m A")
    assert len(diag) <= 1100
    assert groups[1]["Remote-MTA"] == "dns; evilX:y"
    text = text_of(data)
    assert "A" * 500 not in text
    assert not any(line.startswith("Injected") for line in text.splitlines())


def test_non_ascii_diagnostic_in_7bit_mode() -> None:
    data = build(reports=[failed(diagnostic="550 utilisateur inconnu \u00e9\u202e")])
    assert data.isascii()
    assert status_blocks(data)[1]["Diagnostic-Code"] == "smtp; 550 utilisateur inconnu ??"


def test_sender_with_quoted_local_part() -> None:
    data = build(env(sender='"john doe"@example.org'))
    assert parse(data)["To"].addresses[0].addr_spec == '"john doe"@example.org'


def test_unusable_reporting_mta_is_refused() -> None:
    with pytest.raises(ValueError):
        build_dsn(envelope=env(), queue_id="Q1", reports=[failed()], reporting_mta="\r\n",
                  original=ORIGINAL, arrival=ARRIVAL, now=NOW)


# --- SMTPUTF8 (RFC 6533) ------------------------------------------------------------------


UTF8_ORIGINAL = ("From: J\u00fcrgen <j\u00fcrgen@example.org>\r\nSubject: Gr\u00fc\u00dfe\r\n"
                 "\r\nBODY-MARKER \u00e7a va\r\n").encode()


def test_smtputf8_uses_global_types() -> None:
    rcpt = Recipient("\u7528\u6237@example.test", "utf-8;\u7528\u6237@example.test")
    envelope = env(sender="j\u00fcrgen@example.org", recipients=(rcpt,), smtputf8=True)
    data = build(envelope, [failed(rcpt, diagnostic="550 5.1.1 \u7528\u6237 unknown")],
                 original=UTF8_ORIGINAL)
    msg = parse(data)
    assert msg.get_param("report-type") == "global-delivery-status"
    assert [p.get_content_type() for p in parts_of(msg)] == [
        "text/plain", "message/global-delivery-status", "message/global"]
    assert str(msg["To"]) == "j\u00fcrgen@example.org"
    assert parts_of(msg)[0].get_content_charset() == "utf-8"
    assert "\u7528\u6237@example.test" in text_of(data)
    per_rcpt = status_blocks(data)[1]
    assert per_rcpt["Final-Recipient"] == "utf-8; \u7528\u6237@example.test"
    assert per_rcpt["Original-Recipient"] == "utf-8;\u7528\u6237@example.test"
    assert per_rcpt["Diagnostic-Code"] == "smtp; 550 5.1.1 \u7528\u6237 unknown"
    assert raw_parts(data)[2][1] == UTF8_ORIGINAL
    assert b"Content-Transfer-Encoding: 8bit" in data


def test_smtputf8_headers_only() -> None:
    data = build(env(smtputf8=True, ret="HDRS"), original=UTF8_ORIGINAL)
    assert parts_of(parse(data))[2].get_content_type() == "message/global-headers"
    assert b"BODY-MARKER" not in data
    assert raw_parts(data)[2][1] == UTF8_ORIGINAL.split(b"\r\n\r\n")[0] + b"\r\n"


def test_smtputf8_with_ascii_content_keeps_ascii_types() -> None:
    data = build(env(smtputf8=True))
    assert data.isascii()
    assert [p.get_content_type() for p in parts_of(parse(data))] == [
        "text/plain", "message/delivery-status", "message/rfc822"]


def test_non_ascii_address_in_7bit_mode_uses_utf8_xtext() -> None:
    rcpt = Recipient("d\u00e9+x y@example.test")
    data = build(reports=[failed(rcpt)])
    assert data.isascii()
    assert status_blocks(data)[1]["Final-Recipient"] == (
        "utf-8; d\\x{E9}\\x{2B}x\\x{20}y@example.test")


# --- properties ---------------------------------------------------------------------------

_line_soup = st.lists(
    st.sampled_from([b"\r\n", b"\n", b"\r", b"Subject: x", b"a" * 700, b"\xc3\xa9", b"\0",
                     b" ", b"--=_pw_", b"\x1b"]), max_size=40).map(b"".join)


@settings(max_examples=150, deadline=None)
@given(original=_line_soup, diagnostic=st.text(max_size=300), utf8=st.booleans(),
       ret=st.sampled_from([None, "FULL", "HDRS"]), limit=st.integers(0, 4000))
def test_output_is_always_wire_clean(original: bytes, diagnostic: str, utf8: bool,
                                     ret: str | None, limit: int) -> None:
    data = build(env(smtputf8=utf8, ret=ret), [failed(diagnostic=diagnostic), delayed()],
                 original=original, max_original=limit)
    if not utf8:
        assert data.isascii()
    msg = parse(data)
    assert len(parts_of(msg)) in (2, 3)
    groups = status_blocks(data)
    assert [g["Action"] for g in groups[1:]] == ["failed", "delayed"]
