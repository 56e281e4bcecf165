"""Tests for ESMTP parameter parsing in postwright.protocol.params."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from postwright.protocol.params import (
    MailParams,
    ParamError,
    RcptParams,
    mail_params,
    parse_params,
    rcpt_params,
    xtext_decode,
    xtext_encode,
)
from postwright.protocol.reply import Reply

ALL = frozenset({"SIZE", "8BITMIME", "SMTPUTF8", "DSN", "CHUNKING", "BINARYMIME", "AUTH"})
NONE: frozenset[str] = frozenset()


def assert_error(exc: pytest.ExceptionInfo[ParamError], code: int) -> None:
    assert exc.value.reply.code == code
    assert exc.value.reply.enhanced == "5.5.4"


def mail(text: str, extensions: frozenset[str] = ALL) -> MailParams:
    return mail_params(parse_params(text), extensions=extensions)


def rcpt(text: str, extensions: frozenset[str] = ALL) -> RcptParams:
    return rcpt_params(parse_params(text), extensions=extensions)


# --- parse_params ------------------------------------------------------------------------

def test_empty_text_gives_no_parameters() -> None:
    assert parse_params("") == {}
    assert parse_params("   ") == {}


def test_keywords_are_upper_cased_and_order_kept() -> None:
    params = parse_params("size=100 Body=8bitmime smtputf8 X-Vendor-1=a+2Bb")
    assert params == {"SIZE": "100", "BODY": "8bitmime", "SMTPUTF8": None, "X-VENDOR-1": "a+2Bb"}
    assert list(params) == ["SIZE", "BODY", "SMTPUTF8", "X-VENDOR-1"]


def test_several_spaces_between_parameters() -> None:
    assert parse_params("A=1    B") == {"A": "1", "B": None}


def test_value_may_hold_any_printable_but_equals_and_utf8() -> None:
    assert parse_params("A=!\"#;<>~") == {"A": "!\"#;<>~"}
    assert parse_params("ORCPT=utf-8;jöran@x.test") == {"ORCPT": "utf-8;jöran@x.test"}


@pytest.mark.parametrize("text", ["=1", "-A=1", "A_B=1", "A=", "A==1", "A=1=2", "A=\t1", "A\t",
                                  "A=\x7f", "A=\x00", "A=\r\n", "Ä=1", "A=\x85", "A=\u2028",
                                  "A=\ud800", "A=x\x1b"])
def test_bad_syntax_is_501(text: str) -> None:
    with pytest.raises(ParamError) as exc:
        parse_params(text)
    assert_error(exc, 501)


def test_duplicate_keyword_is_501_whatever_the_case() -> None:
    with pytest.raises(ParamError) as exc:
        parse_params("SIZE=1 size=2")
    assert_error(exc, 501)
    with pytest.raises(ParamError):
        parse_params("SMTPUTF8 SMTPUTF8")


def test_param_error_carries_a_reply_and_is_a_value_error() -> None:
    err = ParamError(555, "5.5.4", "Unsupported parameter")
    assert isinstance(err, ValueError)
    assert err.reply == Reply(555, "5.5.4", "Unsupported parameter")
    assert err.reply.to_bytes() == b"555 5.5.4 Unsupported parameter\r\n"


def test_error_replies_do_not_echo_peer_input() -> None:
    with pytest.raises(ParamError) as exc:
        mail("X-SECRET-PROBE=abc")
    assert "SECRET" not in exc.value.reply.text.upper()
    assert "abc" not in exc.value.reply.text


# --- xtext -------------------------------------------------------------------------------

@pytest.mark.parametrize(("encoded", "decoded"), [
    ("", ""),
    ("plain", "plain"),
    ("a+2Bb", "a+b"),
    ("a+3Db", "a=b"),
    ("+20", " "),
    ("Bob+2BFoo@example.test", "Bob+Foo@example.test"),
    ("+C3+A9", "é"),
    ("<>", "<>"),
    ("+2B+2B", "++"),
])
def test_xtext_decode(encoded: str, decoded: str) -> None:
    assert xtext_decode(encoded) == decoded


@pytest.mark.parametrize("bad", ["+", "+2", "+2b", "+ZZ", "a=b", "a b", "é", "\x00", "+C3", "+FF",
                                 "a+", "\x7f"])
def test_xtext_decode_refuses(bad: str) -> None:
    with pytest.raises(ValueError):
        xtext_decode(bad)


def test_xtext_encode() -> None:
    assert xtext_encode("a+b=c d") == "a+2Bb+3Dc+20d"
    assert xtext_encode("Bob@example.test") == "Bob@example.test"
    assert xtext_encode("é\r\n") == "+C3+A9+0D+0A"


@given(st.text())
def test_xtext_round_trip(s: str) -> None:
    encoded = xtext_encode(s)
    assert all("!" <= c <= "~" and c != "=" for c in encoded)
    assert xtext_decode(encoded) == s


_PLAIN = st.characters(min_codepoint=33, max_codepoint=126, exclude_characters="+=")


@given(st.text(alphabet=_PLAIN))
def test_xtext_plain_printables_are_their_own_encoding(s: str) -> None:
    assert xtext_encode(s) == s
    assert xtext_decode(s) == s


# --- MAIL parameters ---------------------------------------------------------------------

def test_no_parameters() -> None:
    assert mail("") == MailParams()
    assert mail("", NONE) == MailParams()


def test_all_mail_parameters_together() -> None:
    got = mail("SIZE=12345 BODY=8bitmime SMTPUTF8 RET=hdrs ENVID=QQ+2B314159 AUTH=bob+40x.test")
    assert got == MailParams(size=12345, body="8BITMIME", smtputf8=True, ret="HDRS",
                             envid="QQ+314159", auth="bob@x.test")


@pytest.mark.parametrize(("text", "extension"), [
    ("SIZE=1", "SIZE"), ("BODY=8BITMIME", "8BITMIME"), ("SMTPUTF8", "SMTPUTF8"),
    ("RET=FULL", "DSN"), ("ENVID=x", "DSN"), ("AUTH=<>", "AUTH"),
])
def test_parameter_needs_its_extension(text: str, extension: str) -> None:
    with pytest.raises(ParamError) as exc:
        mail(text, ALL - {extension})
    assert_error(exc, 555)


@pytest.mark.parametrize("text", ["NOTIFY=NEVER", "ORCPT=rfc822;a@b", "X-UNKNOWN=1", "FOO",
                                  "MT-PRIORITY=3", "REQUIRETLS"])
def test_unknown_mail_parameters_are_555(text: str) -> None:
    with pytest.raises(ParamError) as exc:
        mail(text)
    assert_error(exc, 555)


@pytest.mark.parametrize("value", ["0", "1", "36700160", "0001", "9" * 20])
def test_size_values(value: str) -> None:
    assert mail(f"SIZE={value}").size == int(value)


@pytest.mark.parametrize("text", ["SIZE", "SIZE=" + "9" * 21, "SIZE=-1", "SIZE=1k", "SIZE=+1",
                                  "SIZE=1.0", "SIZE=\u0661\u0662", "SIZE=0x10"])
def test_bad_size_is_501(text: str) -> None:
    with pytest.raises(ParamError) as exc:
        mail(text)
    assert_error(exc, 501)


def test_size_from_a_hand_built_dict() -> None:
    with pytest.raises(ParamError):
        mail_params({"SIZE": ""}, extensions=ALL)


@pytest.mark.parametrize(("value", "expected"), [
    ("7BIT", "7BIT"), ("7bit", "7BIT"), ("8BITMIME", "8BITMIME"), ("8BitMime", "8BITMIME"),
    ("BINARYMIME", "BINARYMIME"), ("binarymime", "BINARYMIME"),
])
def test_body_values(value: str, expected: str) -> None:
    assert mail(f"BODY={value}").body == expected


@pytest.mark.parametrize("text", ["BODY", "BODY=8BIT", "BODY=BINARY", "BODY=7BITS"])
def test_bad_body_is_501(text: str) -> None:
    with pytest.raises(ParamError) as exc:
        mail(text)
    assert_error(exc, 501)


@pytest.mark.parametrize("missing", ["BINARYMIME", "CHUNKING"])
def test_binarymime_needs_chunking_and_binarymime(missing: str) -> None:
    with pytest.raises(ParamError) as exc:
        mail("BODY=BINARYMIME", ALL - {missing})
    assert_error(exc, 501)
    assert mail("BODY=8BITMIME", ALL - {missing}).body == "8BITMIME"


def test_smtputf8_takes_no_value() -> None:
    assert mail("SMTPUTF8").smtputf8 is True
    assert mail("").smtputf8 is False
    with pytest.raises(ParamError) as exc:
        mail("SMTPUTF8=yes")
    assert_error(exc, 501)


@pytest.mark.parametrize(("value", "expected"), [("FULL", "FULL"), ("hdrs", "HDRS"),
                                                 ("Full", "FULL")])
def test_ret_values(value: str, expected: str) -> None:
    assert mail(f"RET={value}").ret == expected


@pytest.mark.parametrize("text", ["RET", "RET=NONE", "RET=FULL,HDRS"])
def test_bad_ret_is_501(text: str) -> None:
    with pytest.raises(ParamError) as exc:
        mail(text)
    assert_error(exc, 501)


def test_envid_is_decoded_and_limited_to_100_characters() -> None:
    assert mail("ENVID=QQ314159").envid == "QQ314159"
    assert mail("ENVID=a+20b").envid == "a b"
    assert mail("ENVID=" + "x" * 100).envid == "x" * 100
    with pytest.raises(ParamError) as exc:
        mail("ENVID=" + "x" * 101)
    assert_error(exc, 501)


@pytest.mark.parametrize("text", ["ENVID", "ENVID=a+2b", "ENVID=a+", "ENVID=caf\u00e9",
                                  "ENVID=a+0D+0Ab", "ENVID=+00", "ENVID=+FF", "ENVID=+09"])
def test_bad_envid_is_501(text: str) -> None:
    with pytest.raises(ParamError) as exc:
        mail(text)
    assert_error(exc, 501)


def test_auth_value_is_decoded_and_null_kept() -> None:
    assert mail("AUTH=<>").auth == "<>"
    assert mail("AUTH=e+3Dmc2@example.com").auth == "e=mc2@example.com"


@pytest.mark.parametrize("text", ["AUTH", "AUTH=a+3d", "AUTH=a+0Ab", "AUTH=jöran@x.test"])
def test_bad_auth_is_501(text: str) -> None:
    with pytest.raises(ParamError) as exc:
        mail(text)
    assert_error(exc, 501)


def test_first_bad_parameter_decides() -> None:
    with pytest.raises(ParamError) as exc:
        mail("SIZE=x X-UNKNOWN")
    assert_error(exc, 501)
    with pytest.raises(ParamError) as exc:
        mail("X-UNKNOWN SIZE=x")
    assert_error(exc, 555)


def test_lower_case_keys_in_a_hand_built_dict() -> None:
    assert mail_params({"size": "5"}, extensions=ALL).size == 5
    assert rcpt_params({"notify": "never"}, extensions=ALL).notify == ("NEVER",)


# --- RCPT parameters ---------------------------------------------------------------------

def test_no_rcpt_parameters() -> None:
    assert rcpt("") == RcptParams()
    assert rcpt("", NONE) == RcptParams()


@pytest.mark.parametrize(("value", "expected"), [
    ("NEVER", ("NEVER",)),
    ("never", ("NEVER",)),
    ("SUCCESS", ("SUCCESS",)),
    ("FAILURE,SUCCESS", ("FAILURE", "SUCCESS")),
    ("success,failure,delay", ("SUCCESS", "FAILURE", "DELAY")),
    ("DELAY,Failure", ("DELAY", "FAILURE")),
])
def test_notify_values(value: str, expected: tuple[str, ...]) -> None:
    assert rcpt(f"NOTIFY={value}").notify == expected


@pytest.mark.parametrize("text", ["NOTIFY", "NOTIFY=NEVER,SUCCESS", "NOTIFY=SUCCESS,NEVER",
                                  "NOTIFY=SUCCESS,SUCCESS", "NOTIFY=success,SUCCESS",
                                  "NOTIFY=SUCCESS,", "NOTIFY=,FAILURE", "NOTIFY=SUCCESS,,DELAY",
                                  "NOTIFY=ALWAYS", "NOTIFY=NEVER,NEVER"])
def test_bad_notify_is_501(text: str) -> None:
    with pytest.raises(ParamError) as exc:
        rcpt(text)
    assert_error(exc, 501)


def test_notify_empty_in_a_hand_built_dict() -> None:
    with pytest.raises(ParamError) as exc:
        rcpt_params({"NOTIFY": ""}, extensions=ALL)
    assert_error(exc, 501)


def test_orcpt_is_decoded_and_addr_type_kept_as_given() -> None:
    assert rcpt("ORCPT=rfc822;bob@x.test").orcpt == "rfc822;bob@x.test"
    assert rcpt("ORCPT=RFC822;Bob+2BFoo@x.test").orcpt == "RFC822;Bob+Foo@x.test"
    assert rcpt("ORCPT=x-local;a;b").orcpt == "x-local;a;b"


def test_orcpt_length_limit_is_500() -> None:
    value = "rfc822;" + "a" * 493
    assert len(value) == 500
    assert rcpt(f"ORCPT={value}").orcpt == value
    with pytest.raises(ParamError) as exc:
        rcpt(f"ORCPT={value}a")
    assert_error(exc, 501)


@pytest.mark.parametrize("text", ["ORCPT", "ORCPT=bob@x.test", "ORCPT=;bob@x.test",
                                  "ORCPT=rfc822;", "ORCPT=rfc.822;bob@x.test",
                                  "ORCPT=rfc<822>;bob@x.test", "ORCPT=rfc@822;bob",
                                  "ORCPT=rfc822;bob+2", "ORCPT=rfc822;bob+0D+0A@x.test",
                                  "ORCPT=rfc822;j\u00f6ran@x.test", "ORCPT=rféc;bob@x.test"])
def test_bad_orcpt_is_501(text: str) -> None:
    with pytest.raises(ParamError) as exc:
        rcpt(text)
    assert_error(exc, 501)


@pytest.mark.parametrize("text", ["NOTIFY=NEVER", "ORCPT=rfc822;a@b"])
def test_rcpt_parameters_need_dsn(text: str) -> None:
    with pytest.raises(ParamError) as exc:
        rcpt(text, ALL - {"DSN"})
    assert_error(exc, 555)


@pytest.mark.parametrize("text", ["SIZE=1", "RET=FULL", "ENVID=x", "BODY=7BIT", "SMTPUTF8",
                                  "AUTH=<>", "X-FOO"])
def test_mail_parameters_are_unknown_to_rcpt(text: str) -> None:
    with pytest.raises(ParamError) as exc:
        rcpt(text)
    assert_error(exc, 555)


# --- the examples of RFC 3461 section 6 --------------------------------------------------

def test_rfc3461_example_transaction() -> None:
    dsn = frozenset({"DSN"})
    assert mail("RET=HDRS ENVID=QQ314159", dsn) == MailParams(ret="HDRS", envid="QQ314159")
    assert rcpt("NOTIFY=SUCCESS ORCPT=rfc822;Bob@Big-Box.ORG", dsn) == RcptParams(
        ("SUCCESS",), "rfc822;Bob@Big-Box.ORG")
    assert rcpt("NOTIFY=FAILURE ORCPT=rfc822;Carol@Ivory.EDU", dsn) == RcptParams(
        ("FAILURE",), "rfc822;Carol@Ivory.EDU")
    assert rcpt("NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;Dana@Ivory.EDU", dsn) == RcptParams(
        ("SUCCESS", "FAILURE"), "rfc822;Dana@Ivory.EDU")
    assert rcpt("NOTIFY=FAILURE ORCPT=rfc822;Eric@Bombs.AF.MIL", dsn).notify == ("FAILURE",)
    assert rcpt("NOTIFY=NEVER", dsn) == RcptParams(("NEVER",), None)
    assert rcpt("NOTIFY=DELAY ORCPT=rfc822;George@Tax-ME.GOV", dsn).notify == ("DELAY",)


def test_rfc3461_xtext_of_an_address_with_plus_and_equals() -> None:
    # RFC 3461 section 4: "+" and "=" must always be hex-encoded in xtext.
    assert xtext_encode("joe+rfc3461=x@example.org") == "joe+2Brfc3461+3Dx@example.org"
    assert rcpt("ORCPT=rfc822;joe+2Brfc3461+3Dx@example.org").orcpt == (
        "rfc822;joe+rfc3461=x@example.org")
