"""Tests for the RFC 5321 / RFC 6531 path grammar in postwright.protocol.address."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import postwright
from postwright.protocol.address import (
    AddressError,
    Domain,
    Mailbox,
    Path,
    Utf8RequiredError,
    _parse_path,
    parse_domain,
    parse_mailbox,
    parse_path,
)


def path(text: str, *, smtputf8: bool = False, allow_null: bool = True,
         allow_postmaster: bool = False) -> Path:
    result, rest = parse_path(text, smtputf8=smtputf8, allow_null=allow_null,
                              allow_postmaster=allow_postmaster)
    assert rest == ""
    return result


# --- paths -------------------------------------------------------------------------------

def test_simple_path_and_rest() -> None:
    p, rest = parse_path("<Bob.Smith@Example.TEST> SIZE=100 BODY=8BITMIME",
                         smtputf8=False, allow_null=False)
    assert p.mailbox == Mailbox("Bob.Smith", Domain("Example.TEST", False))
    assert p.source_route == ()
    assert not p.is_null
    assert rest == "SIZE=100 BODY=8BITMIME"
    assert str(p) == "<Bob.Smith@Example.TEST>"


def test_spaces_before_path_and_between_parameters_are_tolerated() -> None:
    p, rest = parse_path("   <a@b.test>    X=1", smtputf8=False, allow_null=False)
    assert str(p) == "<a@b.test>"
    assert rest == "X=1"


def test_trailing_spaces_leave_empty_rest() -> None:
    assert parse_path("<a@b.test>   ", smtputf8=False, allow_null=False)[1] == ""


def test_garbage_right_after_bracket_is_refused() -> None:
    with pytest.raises(AddressError):
        parse_path("<a@b.test>SIZE=1", smtputf8=False, allow_null=False)


@pytest.mark.parametrize("text", ["a@b.test", "", "   ", "<a@b.test", "a@b.test>", "<a@b.test ",
                                  "< a@b.test>", "<a@b.test >", "<a @b.test>"])
def test_missing_or_misplaced_brackets(text: str) -> None:
    with pytest.raises(AddressError):
        parse_path(text, smtputf8=False, allow_null=True)


def test_missing_open_bracket_message() -> None:
    with pytest.raises(AddressError, match="missing <"):
        parse_path("a@b.test", smtputf8=False, allow_null=True)


def test_missing_close_bracket_message() -> None:
    with pytest.raises(AddressError, match="missing >"):
        parse_path("<a@b.test", smtputf8=False, allow_null=True)


def test_null_path() -> None:
    p, rest = parse_path("<> RET=HDRS", smtputf8=False, allow_null=True)
    assert p.is_null and p.mailbox is None
    assert str(p) == "<>"
    assert rest == "RET=HDRS"


def test_null_path_refused_when_not_allowed() -> None:
    with pytest.raises(AddressError, match="null"):
        parse_path("<>", smtputf8=False, allow_null=False)


@pytest.mark.parametrize("text", ["<postmaster>", "<Postmaster>", "<POSTMASTER>", "<PostMaster>"])
def test_bare_postmaster(text: str) -> None:
    p = path(text, allow_postmaster=True)
    assert p.mailbox == Mailbox("postmaster", None)
    assert str(p) == "<postmaster>"


def test_bare_postmaster_refused_unless_allowed() -> None:
    with pytest.raises(AddressError):
        parse_path("<postmaster>", smtputf8=False, allow_null=False)


@pytest.mark.parametrize("text", ["<bob>", '<"postmaster">', "<@a.test:postmaster>"])
def test_other_domainless_forms_are_refused(text: str) -> None:
    with pytest.raises(AddressError):
        parse_path(text, smtputf8=False, allow_null=False, allow_postmaster=True)


def test_postmaster_with_domain_is_an_ordinary_mailbox() -> None:
    p = path("<Postmaster@Example.test>", allow_postmaster=True)
    assert p.mailbox == Mailbox("Postmaster", Domain("Example.test", False))


def test_source_route_is_parsed_and_ignored() -> None:
    p = path("<@a.example,@b.example:user@c.example>")
    assert p.source_route == ("a.example", "b.example")
    assert p.mailbox == Mailbox("user", Domain("c.example", False))
    assert str(p) == "<user@c.example>"


@pytest.mark.parametrize("text", ["<@a.example:>", "<@:u@c.test>", "<@a.example,u@c.test>",
                                  "<@a.example;u@c.test>", "<@a..example:u@c.test>",
                                  "<@a.example,:u@c.test>", "<@[1.2.3.4]:u@c.test>"])
def test_bad_source_routes(text: str) -> None:
    with pytest.raises(AddressError):
        path(text)


def test_path_length_limit_counts_everything_between_brackets() -> None:
    domain = ".".join(["d" * 60] * 3) + ".test"  # 187 octets
    route = "@" + "r" * 60 + ":"  # 62 octets
    ok = f"<{route}{'u' * 6}@{domain}>"  # 62 + 6 + 1 + 187 = 256
    assert len(ok) - 2 == 256
    path(ok)
    with pytest.raises(AddressError, match="path too long"):
        path(f"<{route}{'u' * 7}@{domain}>")


def test_local_and_domain_limits_exceed_path_limit_together() -> None:
    local = "l" * 64
    domain = ".".join(["d" * 63] * 3) + ".ab"  # 195
    with pytest.raises(AddressError, match="path too long"):
        path(f"<{local}@{domain}>")


# --- local parts -------------------------------------------------------------------------

@pytest.mark.parametrize("local", ["a", "a.b.c", "!#$%&'*+-/=?^_`{|}~", "user+tag", "1"])
def test_dot_string_local_parts(local: str) -> None:
    m = parse_mailbox(f"{local}@x.test", smtputf8=False)
    assert m.local_part == local
    assert str(m) == f"{local}@x.test"


@pytest.mark.parametrize("local", [".a", "a.", "a..b", ".", "a b", "a(b)", "a,b", "a[b", "a\\b",
                                   "a:b", "a;b", "a<b", "a>b"])
def test_bad_dot_strings(local: str) -> None:
    with pytest.raises(AddressError):
        parse_mailbox(f"{local}@x.test", smtputf8=False)


def test_empty_local_part() -> None:
    with pytest.raises(AddressError, match="empty local part"):
        parse_mailbox("@x.test", smtputf8=False)


def test_quoted_local_part_is_unquoted_and_requoted_only_when_needed() -> None:
    m = parse_mailbox('"john smith"@x.test', smtputf8=False)
    assert m.local_part == "john smith"
    assert str(m) == '"john smith"@x.test'
    m = parse_mailbox('"plain"@x.test', smtputf8=False)
    assert m.local_part == "plain"
    assert str(m) == "plain@x.test"


def test_quoted_pairs_are_unescaped_and_escaped_again() -> None:
    m = parse_mailbox(r'"a\"b\\c\d"@x.test', smtputf8=False)
    assert m.local_part == 'a"b\\cd'
    assert str(m) == r'"a\"b\\cd"@x.test'
    assert parse_mailbox(str(m), smtputf8=False) == m


def test_quoted_local_part_may_hold_specials_and_be_empty() -> None:
    m = parse_mailbox('"<a@b>, ;:[]"@x.test', smtputf8=False)
    assert m.local_part == "<a@b>, ;:[]"
    m = parse_mailbox('""@x.test', smtputf8=False)
    assert m.local_part == ""
    assert str(m) == '""@x.test'


def test_quoted_local_part_with_angle_bracket_inside_path() -> None:
    p, rest = parse_path('<"a>b"@x.test> X', smtputf8=False, allow_null=False)
    assert p.mailbox is not None and p.mailbox.local_part == "a>b"
    assert rest == "X"


@pytest.mark.parametrize("text", ['"abc@x.test', '"abc\\"@x.test', '"a\tb"@x.test',
                                  '"a\\\tb"@x.test', '"a\x00b"@x.test', '"a\rb"@x.test',
                                  '"a\nb"@x.test', '"a\\', '"a"b@x.test', 'a"b"@x.test'])
def test_bad_quoted_strings(text: str) -> None:
    with pytest.raises(AddressError):
        parse_mailbox(text, smtputf8=False)


def test_local_part_length_counts_octets_as_written() -> None:
    parse_mailbox("a" * 64 + "@x.test", smtputf8=False)
    with pytest.raises(AddressError, match="local part too long"):
        parse_mailbox("a" * 65 + "@x.test", smtputf8=False)
    # 62 characters of content plus two quotes is exactly 64 octets
    parse_mailbox('"' + "a" * 62 + '"@x.test', smtputf8=False)
    with pytest.raises(AddressError, match="local part too long"):
        parse_mailbox('"' + "a" * 63 + '"@x.test', smtputf8=False)
    # 32 two-octet characters fit, 33 do not
    parse_mailbox("é" * 32 + "@x.test", smtputf8=True)
    with pytest.raises(AddressError, match="local part too long"):
        parse_mailbox("é" * 33 + "@x.test", smtputf8=True)


def test_case_is_preserved_in_local_part() -> None:
    assert parse_mailbox("MiXeD@x.test", smtputf8=False).local_part == "MiXeD"


# --- domains -----------------------------------------------------------------------------

@pytest.mark.parametrize("domain", ["x", "a.b", "a-b.c-d.test", "1.2.3.4", "xn--bcher-kva.test",
                                    "A1-b2.TEST"])
def test_good_domains(domain: str) -> None:
    m = parse_mailbox(f"u@{domain}", smtputf8=False)
    assert m.domain == Domain(domain, False)
    assert m.domain.ascii() == domain.lower()


@pytest.mark.parametrize("domain", ["", "a.", ".a", "a..b", "-a.test", "a-.test", "a_b.test",
                                    "a b.test", "a.test.", "a@b.test"])
def test_bad_domains(domain: str) -> None:
    with pytest.raises(AddressError):
        parse_mailbox(f"u@{domain}", smtputf8=False)


def test_label_length_limit() -> None:
    parse_mailbox("u@" + "a" * 63 + ".test", smtputf8=False)
    with pytest.raises(AddressError, match="label too long"):
        parse_mailbox("u@" + "a" * 64 + ".test", smtputf8=False)


def test_domain_length_limit() -> None:
    ok = ".".join(["a" * 63] * 4)[:255]  # 255 octets, last label 60
    assert parse_domain(ok, smtputf8=False).name == ok
    with pytest.raises(AddressError, match="domain too long"):
        parse_domain(ok + "a", smtputf8=False)


def test_missing_domain() -> None:
    with pytest.raises(AddressError):
        parse_mailbox("u@", smtputf8=False)
    with pytest.raises(AddressError):
        parse_mailbox("u", smtputf8=False)


def test_parse_domain_rejects_trailing_text() -> None:
    with pytest.raises(AddressError):
        parse_domain("a.test x", smtputf8=False)
    assert parse_domain("[1.2.3.4]", smtputf8=False).is_literal


# --- address literals --------------------------------------------------------------------

@pytest.mark.parametrize("literal", ["[192.0.2.1]", "[0.0.0.0]", "[255.255.255.255]",
                                     "[IPv6:2001:db8::1]", "[ipv6:::1]", "[IPv6:::ffff:192.0.2.1]",
                                     "[IPv6:2001:DB8:0:0:0:0:0:1]", "[x-tag:any!content~]",
                                     "[tag:a]"])
def test_good_literals(literal: str) -> None:
    m = parse_mailbox(f"u@{literal}", smtputf8=False)
    assert m.domain == Domain(literal, True)
    assert m.domain.ascii() == literal.lower()
    assert str(m) == f"u@{literal}"


@pytest.mark.parametrize("literal", ["[]", "[1.2.3]", "[1.2.3.256]", "[1.2.3.4.5]", "[01.2.3.4]",
                                     "[a.b.c.d]", "[IPv6:2001:db8::g]", "[IPv6:1.2.3.4]",
                                     "[IPv6:fe80::1%eth0]", "[IPv6:]", "[tag:]", "[:x]",
                                     "[tag-:x]", "[ta_g:x]", "[1.2.3.4", "[1.2.3.4 ]",
                                     "[a[b:c]", "[a\\b:c]", "[tag:é]"])
def test_bad_literals(literal: str) -> None:
    with pytest.raises(AddressError):
        parse_mailbox(f"u@{literal}", smtputf8=True)


def test_literal_in_path() -> None:
    p = path("<postmaster@[192.0.2.1]>")
    assert p.mailbox == Mailbox("postmaster", Domain("[192.0.2.1]", True))


def test_literal_too_long() -> None:
    with pytest.raises(AddressError, match="domain too long"):
        parse_mailbox("u@[tag:" + "x" * 300 + "]", smtputf8=False)


# --- internationalization (RFC 6531) -----------------------------------------------------

def test_utf8_local_part_and_domain_with_smtputf8() -> None:
    m = parse_mailbox("Jöran@Bücher.example", smtputf8=True)
    assert m.local_part == "Jöran"
    assert m.domain == Domain("Bücher.example", False)
    assert m.domain.ascii() == "xn--bcher-kva.example"
    assert m.is_utf8
    assert str(m) == "Jöran@Bücher.example"


def test_utf8_in_quoted_string_with_smtputf8() -> None:
    m = parse_mailbox('"日本 語"@x.test', smtputf8=True)
    assert m.local_part == "日本 語"
    assert m.is_utf8


@pytest.mark.parametrize("text", ["Jöran@x.test", "u@bücher.test", '"日本"@x.test'])
def test_utf8_refused_without_smtputf8(text: str) -> None:
    with pytest.raises(Utf8RequiredError, match="SMTPUTF8"):
        parse_mailbox(text, smtputf8=False)
    with pytest.raises(Utf8RequiredError):
        parse_path(f"<{text}>", smtputf8=False, allow_null=False)


def test_utf8_in_source_route_needs_smtputf8() -> None:
    with pytest.raises(Utf8RequiredError):
        path("<@bücher.test:u@x.test>")
    assert path("<@bücher.test:u@x.test>", smtputf8=True).source_route == ("bücher.test",)


def test_ascii_mailbox_is_not_utf8() -> None:
    assert not parse_mailbox("a@b.test", smtputf8=True).is_utf8
    assert not Mailbox("postmaster", None).is_utf8


def test_utf8_domain_is_utf8_even_with_ascii_local_part() -> None:
    assert parse_mailbox("a@bücher.test", smtputf8=True).is_utf8


@pytest.mark.parametrize("char", ["\x85", "\x9f", "\u2028", "\u2029", "\ud800"])
def test_non_ascii_controls_refused_even_with_smtputf8(char: str) -> None:
    for text in (f"a{char}b@x.test", f'"a{char}b"@x.test', f"u@a{char}b.test"):
        with pytest.raises(AddressError, match="control"):
            parse_mailbox(text, smtputf8=True)


def test_u_label_that_idna_cannot_encode_is_refused() -> None:
    with pytest.raises(AddressError, match="IDNA"):
        parse_mailbox("u@a\u3002b.test", smtputf8=True)  # ideographic full stop
    with pytest.raises(AddressError):
        parse_mailbox("u@\ue000x.test", smtputf8=True)  # private use: prohibited by nameprep
    with pytest.raises(AddressError):
        parse_mailbox("u@a\u05d0.test", smtputf8=True)  # mixed direction: bidi rule


def test_u_labels_follow_idna_2008() -> None:
    # IDNA 2008 (RFC 5891, UTS #46 non-transitional): "ß" and final sigma are themselves,
    # not "ss" and sigma as under IDNA 2003; symbols such as a snowman are not valid at all.
    assert Domain("straße.test", False).ascii() == "xn--strae-oqa.test"
    assert Domain("σοφός.test", False).ascii() != Domain("σοφόσ.test", False).ascii()
    with pytest.raises(AddressError, match="IDNA"):
        parse_mailbox("u@\u2603.test", smtputf8=True)


def test_u_label_length_counts_octets() -> None:
    with pytest.raises(AddressError, match="label too long"):
        parse_mailbox("u@" + "ü" * 32 + ".test", smtputf8=True)


def test_domain_ascii_lowercases_and_converts() -> None:
    assert Domain("MX.Example.TEST", False).ascii() == "mx.example.test"
    assert Domain("BÜCHER.test", False).ascii() == "xn--bcher-kva.test"
    assert Domain("[IPv6:2001:DB8::1]", True).ascii() == "[ipv6:2001:db8::1]"


def test_domain_ascii_raises_when_not_encodable() -> None:
    with pytest.raises(AddressError):
        Domain("a\ue000.test", False).ascii()
    with pytest.raises(AddressError):
        Domain("a.." + "ü", False).ascii()
    with pytest.raises(AddressError, match="domain too long"):
        Domain(".".join(["a" * 63] * 5), False).ascii()


# --- forbidden characters ----------------------------------------------------------------

@pytest.mark.parametrize("char", ["\x00", "\r", "\n", "\t", "\x7f", " "])
def test_controls_and_spaces_refused_everywhere(char: str) -> None:
    for text in (f"<a{char}b@x.test>", f"<ab@x{char}y.test>", f"<ab@[1.2.3.4{char}]>",
                 f"<@r{char}.test:ab@x.test>", f"<{char}ab@x.test>", f"<ab@{char}x.test>"):
        with pytest.raises(AddressError):
            parse_path(text, smtputf8=True, allow_null=True)


def test_control_character_has_specific_message() -> None:
    with pytest.raises(AddressError, match="control character"):
        parse_mailbox("a\rb@x.test", smtputf8=False)
    with pytest.raises(AddressError, match="control character"):
        parse_mailbox("ab@x\ny.test", smtputf8=False)


def test_crlf_injection_in_path_is_refused() -> None:
    with pytest.raises(AddressError, match="control character"):
        parse_path("<a@b.test>\r\nRCPT TO:<c@d.test>", smtputf8=False, allow_null=False)


# --- value types -------------------------------------------------------------------------

def test_mailbox_str_quotes_what_a_dot_string_cannot_hold() -> None:
    assert str(Mailbox("a..b", Domain("x.test", False))) == '"a..b"@x.test'
    assert str(Mailbox(".a", Domain("x.test", False))) == '".a"@x.test'
    assert str(Mailbox("é", Domain("x.test", False))) == "é@x.test"
    assert str(Mailbox("postmaster", None)) == "postmaster"


def test_values_are_frozen_and_hashable() -> None:
    m = parse_mailbox("a@b.test", smtputf8=False)
    if postwright.build() == "mypyc":  # Final fields; the pure build leaves them to mypy
        with pytest.raises(AttributeError):
            m.local_part = "c"  # type: ignore[misc]
    assert len({m, parse_mailbox("a@b.test", smtputf8=False)}) == 1


# --- robustness --------------------------------------------------------------------------

_ALPHABET = st.sampled_from(list('aZ09.@<>[]:,"\\ -_+=é日\x00\r\n\t') + ["IPv6:", "postmaster"])


@settings(max_examples=500, deadline=None)
@given(st.text())
def test_arbitrary_text_returns_or_raises_address_error(text: str) -> None:
    for utf8 in (False, True):
        try:
            parse_path(text, smtputf8=utf8, allow_null=True, allow_postmaster=True)
        except AddressError:
            pass
        try:
            parse_mailbox(text, smtputf8=utf8)
        except AddressError:
            pass
        try:
            parse_domain(text, smtputf8=utf8)
        except AddressError:
            pass


@settings(max_examples=500, deadline=None)
@given(st.lists(_ALPHABET, max_size=40).map("".join))
def test_grammar_shaped_text_round_trips(text: str) -> None:
    for candidate in (text, "<" + text + ">"):
        try:
            p, rest = parse_path(candidate, smtputf8=True, allow_null=True,
                                 allow_postmaster=True)
        except AddressError:
            continue
        # What we print, we parse back to the same value.
        again, _ = parse_path(str(p), smtputf8=True, allow_null=True, allow_postmaster=True)
        assert again.mailbox == p.mailbox
        assert "\r" not in str(p) and "\n" not in str(p) and "\x00" not in str(p)


_ATEXT = "abcXYZ019!#$%&'*+-/=?^_`{|}~é日"
_dot_string = st.lists(st.text(alphabet=_ATEXT, min_size=1, max_size=4), min_size=1,
                       max_size=3).map(".".join)  # at most 42 octets
_quoted_content = st.text(alphabet=st.sampled_from(list(' "\\.@<>[]():;,aZ9é')), max_size=12)
_label = st.from_regex(r"[a-zA-Z0-9]([a-zA-Z0-9-]{0,8}[a-zA-Z0-9])?", fullmatch=True)
_domain = st.one_of(
    st.lists(_label, min_size=1, max_size=4).map(".".join),
    st.ip_addresses(v=4).map(lambda ip: f"[{ip}]"),
    st.ip_addresses(v=6).map(lambda ip: f"[IPv6:{ip}]"),
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(_dot_string.map(lambda s: (s, s)),
                 _quoted_content.map(lambda s: (s, '"' + s.replace("\\", "\\\\")
                                                .replace('"', '\\"') + '"'))),
       _domain, st.sampled_from(["", " SIZE=1"]))
def test_generated_valid_paths_parse_to_their_parts(
    local: tuple[str, str], domain: str, params: str
) -> None:
    value, written = local
    p, rest = parse_path(f"<{written}@{domain}>{params}", smtputf8=True, allow_null=False)
    assert p.mailbox is not None
    assert p.mailbox.local_part == value
    assert p.mailbox.domain is not None and p.mailbox.domain.name == domain
    assert p.mailbox.domain.is_literal == domain.startswith("[")
    assert rest == params.strip()
    again, _ = parse_path(str(p), smtputf8=True, allow_null=False)
    assert again == p
    assert p.mailbox.is_utf8 == (not f"{value}{domain}".isascii())
    if not p.mailbox.is_utf8:
        with_ascii_only, _ = parse_path(str(p), smtputf8=False, allow_null=False)
        assert with_ascii_only == p


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=62))
def test_any_printable_ascii_local_part_round_trips_when_quoted(local: str) -> None:
    quoted = '"' + local.replace("\\", "\\\\").replace('"', '\\"') + '"'
    m = parse_mailbox(quoted + "@x.test", smtputf8=False)
    assert m.local_part == local
    assert parse_mailbox(str(m), smtputf8=False) == m


@pytest.mark.parametrize("hostile", [
    "<" + "a." * 50_000,
    "<" + "a" * 100_000 + "@x.test>",
    '<"' + "\\a" * 50_000 + '"@x.test>',
    '<"' + "a" * 100_000,
    "<" + "@a," * 33_000 + ":u@x.test>",
    "<u@" + "a." * 50_000 + "test>",
    "<u@[" + "1" * 100_000 + "]>",
    "<u@[IPv6:" + ":" * 100_000 + "]>",
    " " * 100_000 + "<u@x.test>",
    "<u@x.test>" + " " * 100_000,
    "<u@" + "é" * 100_000 + ">",
])
def test_hostile_100k_input_is_fast(hostile: str) -> None:
    started = time.perf_counter()
    for utf8 in (False, True):
        try:
            parse_path(hostile, smtputf8=utf8, allow_null=True)
        except AddressError:
            pass
        try:
            parse_mailbox(hostile[1:], smtputf8=utf8)
        except AddressError:
            pass
    assert time.perf_counter() - started < 1.0


def _outcome(parse: object, text: str, utf8: bool, null: bool, postmaster: bool) -> object:
    try:
        return parse(text, smtputf8=utf8, allow_null=null,  # type: ignore[operator]
                     allow_postmaster=postmaster)
    except AddressError as exc:
        return type(exc), str(exc)


_near_valid = st.builds(
    lambda pre, local, domain, post: f"{pre}<{local}@{domain}>{post}",
    st.sampled_from(["", " ", "  "]),
    st.one_of(st.lists(st.text(alphabet="ab+!{~-", min_size=0, max_size=40), min_size=1,
                       max_size=3).map(".".join),
              st.text(alphabet="ab.-+!{~\"\\", min_size=0, max_size=70)),
    st.lists(st.text(alphabet="a9-", min_size=0, max_size=66), min_size=1, max_size=5)
    .map(".".join),
    st.sampled_from(["", " ", "  SIZE=1", "x", " BODY=8BITMIME\r", ">"]),
)


@settings(max_examples=500)
@given(st.one_of(_near_valid, st.text(alphabet=" <>@.\"-a0!#{|}~\\:[],é\r", max_size=40)),
       st.booleans(), st.booleans(), st.booleans())
def test_the_fast_path_agrees_with_the_scanner(text: str, utf8: bool, null: bool,
                                               postmaster: bool) -> None:
    assert (_outcome(parse_path, text, utf8, null, postmaster)
            == _outcome(_parse_path, text, utf8, null, postmaster))


def test_the_fast_path_keeps_the_limits() -> None:
    label = "a" * 63
    assert parse_path(f"<{'l' * 64}@{label}.test>", smtputf8=False, allow_null=False)
    for text, reason in ((f"<{'l' * 65}@x.test>", "local part too long"),
                         (f"<a@{'a' * 64}.test>", "domain label too long"),
                         (f"<a@{'.'.join([label] * 4)}.abcd>", "domain too long"),
                         (f"<{'l' * 64}@{'.'.join([label] * 3)}.{'b' * 61}>", "path too long")):
        with pytest.raises(AddressError, match=reason):
            parse_path(text, smtputf8=False, allow_null=False)
