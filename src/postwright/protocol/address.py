"""SMTP envelope addresses: the RFC 5321 path grammar, with RFC 6531 internationalization.

Parses the argument of ``MAIL FROM:`` and ``RCPT TO:`` into typed values (:class:`Path`,
:class:`Mailbox`, :class:`Domain`) with a small hand-written scanner that runs in linear time
on any input. It does not parse RFC 5322 header addresses (no comments, no display names, no
groups), does not fold mailbox names (that is the router's job) and does no DNS.

Covers RFC 5321 sections 4.1.2 (Path, Mailbox, Local-part, Domain, address literals),
4.1.3 (IPv4, IPv6 and general address literals), 4.5.1 (bare ``<Postmaster>``) and 4.5.3.1
(size limits), RFC 6531 section 3.3 (UTF-8 in local parts and U-label domains).
Size limits are counted in octets of the UTF-8 encoding of the text as written.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from dataclasses import dataclass
from typing import Final, NoReturn

import idna

MAX_LOCAL_PART: Final = 64
MAX_DOMAIN: Final = 255
MAX_LABEL: Final = 63
MAX_PATH: Final = 256  # octets between "<" and ">"

_ALNUM: Final = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
_ATEXT: Final = _ALNUM | frozenset("!#$%&'*+-/=?^_`{|}~")
_LDH: Final = _ALNUM | frozenset("-")
# Non-ASCII characters refused even with SMTPUTF8: controls, surrogates, line separators.
_BAD_CATEGORIES: Final = frozenset({"Cc", "Cs", "Zl", "Zp"})
# Runs of the ASCII characters the scanner accepts, matched in bulk rather than one at a
# time: a local part (atext and dots), a domain (letters, digits, hyphens and dots), and a
# whole ASCII Dot-string. Built from the sets above so the two cannot drift apart.
_LOCAL_RUN: Final = re.compile("[" + re.escape("".join(sorted(_ATEXT | {"."}))) + "]*")
_DOMAIN_RUN: Final = re.compile("[" + re.escape("".join(sorted(_LDH | {"."}))) + "]*")
_ATOM: Final = "[" + re.escape("".join(sorted(_ATEXT))) + "]+"
_DOT_STRING: Final = re.compile(f"{_ATOM}(?:\\.{_ATOM})*")
# The path nearly every client sends: "<dot-string@ascii.domain>", then nothing or a space
# and parameters. One regular expression decides it (labels of 1-63 letters, digits and
# inner hyphens); lengths are checked after. Anything else goes through the scanner.
_LABEL: Final = "[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_SIMPLE_PATH: Final = re.compile(
    f" *<({_ATOM}(?:\\.{_ATOM})*)@({_LABEL}(?:\\.{_LABEL})*)>(?: (.*))?", re.DOTALL)


class AddressError(ValueError):
    """An address that does not follow the grammar; the message is a short human reason."""


class Utf8RequiredError(AddressError):
    """The address is well formed but non-ASCII, and SMTPUTF8 is not in effect."""


# The values here are made for every MAIL and RCPT: Final fields and an __init__ of their
# own, not frozen=True, whose generated __init__ sets each field through object.__setattr__
# (several times slower, and never compiled). mypy refuses assignments to Final fields; the
# compiled build refuses them at run time too.
@dataclass(init=False, unsafe_hash=True, slots=True)
class Domain:
    name: Final[str]  # as written, case preserved; for literals the full "[...]" text
    is_literal: Final[bool]

    def __init__(self, name: str, is_literal: bool) -> None:
        self.name = name
        self.is_literal = is_literal

    def ascii(self) -> str:
        """The lower-case A-label form (address literals: the lower-cased literal)."""
        name = self.name
        if self.is_literal:
            return name.lower()
        if name.isascii():
            # The usual case, asked several times per recipient: every label is its own
            # A-label, so only empty labels need looking for.
            if not name or name[0] == "." or name[-1] == "." or ".." in name:
                raise AddressError("empty label in domain")
            result = name.lower()
        else:
            result = ".".join([_label_to_ascii(label) for label in name.split(".")])
        if len(result) > MAX_DOMAIN:
            raise AddressError("domain too long")
        return result

    def __str__(self) -> str:
        return self.name


@dataclass(init=False, unsafe_hash=True, slots=True)
class Mailbox:
    local_part: Final[str]  # semantic value: a quoted local part is unquoted and unescaped
    domain: Final[Domain | None]  # None only for the bare "postmaster" of RFC 5321 4.5.1

    def __init__(self, local_part: str, domain: Domain | None) -> None:
        self.local_part = local_part
        self.domain = domain

    def __str__(self) -> str:
        local = self.local_part
        if not _is_dot_string(local):
            local = '"' + local.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if self.domain is None:
            return local
        return f"{local}@{self.domain.name}"

    @property
    def is_utf8(self) -> bool:
        domain = self.domain.name if self.domain is not None else ""
        return not (self.local_part.isascii() and domain.isascii())


@dataclass(init=False, unsafe_hash=True, slots=True)
class Path:
    mailbox: Final[Mailbox | None]  # None is the null path "<>"
    source_route: Final[tuple[str, ...]]  # the hops of an "@a,@b:" route, ignored

    def __init__(self, mailbox: Mailbox | None, source_route: tuple[str, ...] = ()) -> None:
        self.mailbox = mailbox
        self.source_route = source_route

    @property
    def is_null(self) -> bool:
        return self.mailbox is None

    def __str__(self) -> str:
        return "<>" if self.mailbox is None else f"<{self.mailbox}>"


def parse_path(
    text: str, *, smtputf8: bool, allow_null: bool, allow_postmaster: bool = False
) -> tuple[Path, str]:
    """Parse the ``<...>`` path at the start of ``text``; return it and the rest (parameters).

    Spaces before ``<`` are tolerated. The rest has its leading spaces stripped; anything but
    a space or the end right after ``>`` is an error.
    """
    simple = _SIMPLE_PATH.fullmatch(text)
    if simple is not None:
        local, domain, rest = simple.groups()
        if len(local) <= MAX_LOCAL_PART and len(domain) <= MAX_DOMAIN and (
                len(local) + len(domain) < MAX_PATH):
            return Path(Mailbox(local, Domain(domain, False))), (rest or "").lstrip(" ")
    return _parse_path(text, smtputf8=smtputf8, allow_null=allow_null,
                       allow_postmaster=allow_postmaster)


def _parse_path(
    text: str, *, smtputf8: bool, allow_null: bool, allow_postmaster: bool
) -> tuple[Path, str]:
    """:func:`parse_path` by the scanner, for every path."""
    scan = _Scanner(text, smtputf8)
    while scan.peek() == " ":
        scan.pos += 1
    scan.expect("<", "missing <")
    start = scan.pos
    if scan.peek() == ">":
        if not allow_null:
            raise AddressError("null path not allowed")
        scan.pos += 1
        return Path(None), _rest(scan)
    route: tuple[str, ...] = ()
    if scan.peek() == "@":
        route = scan.source_route()
    local, quoted = scan.local_part()
    if (
        scan.peek() == ">"
        and not route
        and not quoted
        and local.lower() == "postmaster"
        and allow_postmaster
    ):
        scan.pos += 1
        return Path(Mailbox("postmaster", None)), _rest(scan)
    scan.expect("@", "missing @ or domain")
    domain = scan.domain_or_literal()
    if scan.peek() != ">":
        if scan.at_end():
            raise AddressError("missing >")
        scan.fail("unexpected character in address")
    if _octets(text[start : scan.pos]) > MAX_PATH:
        raise AddressError("path too long")
    scan.pos += 1
    return Path(Mailbox(local, domain), route), _rest(scan)


def parse_mailbox(text: str, *, smtputf8: bool) -> Mailbox:
    """Parse a bare ``local@domain`` (no angle brackets) that must fill the whole string."""
    scan = _Scanner(text, smtputf8)
    local, _quoted = scan.local_part()
    scan.expect("@", "missing @ or domain")
    domain = scan.domain_or_literal()
    if not scan.at_end():
        scan.fail("unexpected character in address")
    return Mailbox(local, domain)


def parse_domain(text: str, *, smtputf8: bool) -> Domain:
    """Parse a domain name or address literal that must fill the whole string."""
    scan = _Scanner(text, smtputf8)
    domain = scan.domain_or_literal()
    if not scan.at_end():
        scan.fail("unexpected character in domain")
    return domain


def _rest(scan: _Scanner) -> str:
    rest = scan.text[scan.pos :]
    if rest and rest[0] != " ":
        scan.fail("unexpected character after >")
    return rest.lstrip(" ")


def _octets(s: str) -> int:
    return len(s.encode("utf-8"))


def _is_dot_string(s: str) -> bool:
    if s.isascii():
        return _DOT_STRING.fullmatch(s) is not None
    if not s or s.startswith(".") or s.endswith(".") or ".." in s:
        return False
    return all(c in _ATEXT or c == "." or _usable_non_ascii(c) for c in s)


def _usable_non_ascii(c: str) -> bool:
    return c > "\x7f" and unicodedata.category(c) not in _BAD_CATEGORIES


def idna_to_ascii(name: str) -> str:
    """A domain name (or one label) in A-labels: IDNA 2008 (RFC 5891) with the UTS #46
    mapping, non-transitional, so "ß" stays itself (xn--strae-oqa) where Python's own IDNA
    2003 codec would turn it into "ss". AddressError if it cannot be converted."""
    try:
        return idna.encode(name, uts46=True).decode("ascii")
    except (UnicodeError, idna.IDNAError) as exc:
        raise AddressError("domain not convertible to IDNA") from exc


def _label_to_ascii(label: str) -> str:
    if not label:
        raise AddressError("empty label in domain")
    if label.isascii():
        return label.lower()
    encoded = idna_to_ascii(label).lower()
    # The codec may map characters (e.g. full stops) into something that is not one label.
    if not _is_ldh_label(encoded):
        raise AddressError("domain not convertible to IDNA")
    return encoded


def _is_ldh_label(label: str) -> bool:
    return (
        0 < len(label) <= MAX_LABEL
        and label[0] in _ALNUM
        and label[-1] in _ALNUM
        and all(c in _LDH for c in label)
    )


class _Scanner:
    """A cursor over the text; every method consumes what it recognizes or raises."""

    def __init__(self, text: str, smtputf8: bool) -> None:
        self.text = text
        self.pos = 0
        self.smtputf8 = smtputf8

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def at_end(self) -> bool:
        return self.pos >= len(self.text)

    def expect(self, char: str, reason: str) -> None:
        if self.peek() != char:
            self.fail(reason)
        self.pos += 1

    def fail(self, reason: str) -> NoReturn:
        """Raise ``reason``, or the more specific error the character at the cursor earns."""
        if not self.at_end():
            self.check_char(self.peek())
        raise AddressError(reason)

    def check_char(self, c: str) -> None:
        """Raise the specific error for a character no grammar rule accepts at all."""
        if c < " " or c == "\x7f":
            raise AddressError("control character in address")
        if c > "\x7f":
            if not _usable_non_ascii(c):
                raise AddressError("control character in address")
            if not self.smtputf8:
                raise Utf8RequiredError("non-ASCII address requires SMTPUTF8")

    def non_ascii(self, c: str) -> bool:
        """True if ``c`` is an acceptable UTF8-non-ascii character here; raise if refused."""
        if c <= "\x7f":
            return False
        self.check_char(c)
        return True

    def source_route(self) -> tuple[str, ...]:
        hops = []
        while True:
            self.expect("@", "bad source route")
            hops.append(self.domain().name)
            if self.peek() == ",":
                self.pos += 1
            elif self.peek() == ":":
                self.pos += 1
                return tuple(hops)
            else:
                raise AddressError("bad source route")

    def local_part(self) -> tuple[str, bool]:
        """Return (semantic local part, was it quoted)."""
        start = self.pos
        if self.peek() == '"':
            value = self.quoted_string()
            quoted = True
        else:
            value = self.dot_string()
            quoted = False
        if _octets(self.text[start : self.pos]) > MAX_LOCAL_PART:
            raise AddressError("local part too long")
        return value, quoted

    def dot_string(self) -> str:
        text, start = self.text, self.pos
        i = start
        while True:
            run = _LOCAL_RUN.match(text, i)
            assert run is not None  # the pattern matches the empty string too
            i = run.end()
            if i < len(text) and self.non_ascii(text[i]):
                i += 1
            else:
                break
        value = text[start:i]
        self.pos = i
        if not value:
            self.fail("empty local part")
        if value[0] == "." or value[-1] == ".":
            raise AddressError("local part starts or ends with a dot")
        if ".." in value:
            raise AddressError("consecutive dots in local part")
        return value

    def quoted_string(self) -> str:
        text = self.text
        i = self.pos + 1  # past the opening quote
        out: list[str] = []
        while i < len(text):
            c = text[i]
            if c == '"':
                self.pos = i + 1
                return "".join(out)
            if c == "\\":
                if i + 1 >= len(text):
                    break
                nxt = text[i + 1]
                if not " " <= nxt <= "~":
                    raise AddressError("bad quoted pair in local part")
                out.append(nxt)
                i += 2
                continue
            if " " <= c <= "~" or self.non_ascii(c):
                out.append(c)
                i += 1
                continue
            raise AddressError("control character in address")
        raise AddressError("unterminated quoted local part")

    def domain_or_literal(self) -> Domain:
        if self.peek() == "[":
            return self.address_literal()
        return self.domain()

    def domain(self) -> Domain:
        text, start = self.text, self.pos
        i = start
        while True:
            run = _DOMAIN_RUN.match(text, i)
            assert run is not None  # the pattern matches the empty string too
            i = run.end()
            if i < len(text) and self.non_ascii(text[i]):
                i += 1
            else:
                break
        name = text[start:i]
        self.pos = i
        if not name:
            self.fail("missing domain")
        if _octets(name) > MAX_DOMAIN:
            raise AddressError("domain too long")
        for label in name.split("."):
            _check_label(label)
        return Domain(name, False)

    def address_literal(self) -> Domain:
        text, start = self.text, self.pos
        i = start + 1
        # dcontent is %d33-90 / %d94-126: printable ASCII except "[", "\" and "]".
        while i < len(text) and "!" <= text[i] <= "~" and text[i] not in "[\\]":
            i += 1
        if i >= len(text) or text[i] != "]":
            self.pos = i
            self.fail("bad address literal")
        self.pos = i + 1
        name = text[start : self.pos]
        if len(name) > MAX_DOMAIN:
            raise AddressError("domain too long")
        _check_literal(name[1:-1])
        return Domain(name, True)


def _check_label(label: str) -> None:
    if not label:
        raise AddressError("empty label in domain")
    if _octets(label) > MAX_LABEL:
        raise AddressError("domain label too long")
    if label[0] == "-" or label[-1] == "-":
        raise AddressError("domain label starts or ends with a hyphen")
    if not label.isascii():
        _label_to_ascii(label)  # a U-label must have an A-label form


def _check_literal(body: str) -> None:
    tag, colon, value = body.partition(":")
    if not colon:
        try:
            ipaddress.IPv4Address(body)
        except ValueError as exc:
            raise AddressError("bad IPv4 address literal") from exc
        return
    if tag.lower() == "ipv6":
        try:
            if "%" in value:  # scope ids are not part of RFC 5321 IPv6-addr
                raise ValueError(value)
            ipaddress.IPv6Address(value)
        except ValueError as exc:
            raise AddressError("bad IPv6 address literal") from exc
        return
    # General-address-literal: Standardized-tag ":" 1*dcontent; the tag is an Ldh-str.
    if not tag or tag[-1] not in _ALNUM or not all(c in _LDH for c in tag) or not value:
        raise AddressError("bad general address literal")
