"""ESMTP parameters of MAIL and RCPT: syntax, xtext, and the meaning of the known keywords.

:func:`parse_params` splits ``KEY=VALUE`` words (RFC 5321 section 4.1.2 esmtp-param, with
RFC 6531 section 3.3 UTF-8 values); :func:`mail_params` and :func:`rcpt_params` check each
keyword against the extensions advertised in the session and return typed values. Failures
raise :class:`ParamError` carrying the reply to send (501 for a bad value, 555 for a parameter
that is unknown or whose extension was not advertised). Reply texts never echo peer input.
It does not decide policy (a SIZE over the limit, who may use AUTH=): the session does.

Covers RFC 1870 (SIZE), RFC 6152 (BODY=8BITMIME), RFC 3030 (BODY=BINARYMIME), RFC 6531
(SMTPUTF8), RFC 3461 sections 4.1-4.4 (NOTIFY, ORCPT, RET, ENVID, xtext) and RFC 4954
section 5 (AUTH=).
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Final

from .reply import Reply

_ALNUM: Final = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
_DIGITS: Final = frozenset("0123456789")
_UPPER_HEX: Final = frozenset("0123456789ABCDEF")
# RFC 822 specials; an addr-type atom is printable ASCII without these.
_SPECIALS: Final = frozenset('()<>@,;:\\".[]')
_NOTIFY_WORDS: Final = ("SUCCESS", "FAILURE", "DELAY")
_BODY_TYPES: Final = ("7BIT", "8BITMIME", "BINARYMIME")
MAX_ENVID: Final = 100
MAX_ORCPT: Final = 500


class ParamError(ValueError):
    """A parameter the server must refuse; ``reply`` is what to send."""

    def __init__(self, code: int, enhanced: str, message: str) -> None:
        super().__init__(message)
        self.reply = Reply(code, enhanced, message)


def _syntax(message: str = "Syntax error in parameters") -> ParamError:
    return ParamError(501, "5.5.4", message)


def _unsupported() -> ParamError:
    return ParamError(555, "5.5.4", "Unsupported parameter")


def parse_params(text: str) -> dict[str, str | None]:
    """Split ``KEY=VALUE KEY2 ...`` into a dict with upper-cased keys, in the given order."""
    params: dict[str, str | None] = {}
    if not text:
        return params
    for word in text.split(" "):
        if not word:
            continue
        key, eq, value = word.partition("=")
        if not _is_keyword(key) or (eq and not _is_value(value)):
            raise _syntax()
        key = key.upper()
        if key in params:
            raise _syntax("Duplicate parameter")
        params[key] = value if eq else None
    return params


def _is_keyword(key: str) -> bool:
    return bool(key) and key[0] in _ALNUM and all(c in _ALNUM or c == "-" for c in key)


def _is_value(value: str) -> bool:
    # esmtp-value: %d33-60 / %d62-126, plus UTF8-non-ascii (RFC 6531); "=" is excluded.
    return bool(value) and all(
        ("!" <= c <= "~" and c != "=") or (c > "\x7f" and _usable_non_ascii(c)) for c in value
    )


def _usable_non_ascii(c: str) -> bool:
    return unicodedata.category(c) not in ("Cc", "Cs", "Zl", "Zp")


def xtext_decode(s: str) -> str:
    """Decode RFC 3461 xtext (``+XX`` with upper-case hex); the octets must be UTF-8."""
    out = bytearray()
    i = 0
    while i < len(s):
        c = s[i]
        if c == "+":
            hexpair = s[i + 1 : i + 3]
            if len(hexpair) != 2 or not all(h in _UPPER_HEX for h in hexpair):
                raise ValueError("bad xtext hex escape")
            out.append(int(hexpair, 16))
            i += 3
        elif "!" <= c <= "~" and c != "=":
            out.append(ord(c))
            i += 1
        else:
            raise ValueError("bad xtext character")
    try:
        return out.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError("xtext is not UTF-8") from exc


def xtext_encode(s: str) -> str:
    """Encode text as RFC 3461 xtext (UTF-8 octets; ``+XX`` for all but plain printables)."""
    return "".join(
        chr(b) if 33 <= b <= 126 and b not in (0x2B, 0x3D) else f"+{b:02X}"
        for b in s.encode("utf-8")
    )


# Final fields and an __init__ of their own rather than frozen=True: see protocol.address.
@dataclass(init=False, unsafe_hash=True, slots=True)
class MailParams:
    size: Final[int | None]
    body: Final[str | None]  # "7BIT" | "8BITMIME" | "BINARYMIME"
    smtputf8: Final[bool]
    ret: Final[str | None]  # "FULL" | "HDRS"
    envid: Final[str | None]  # decoded
    auth: Final[str | None]  # decoded AUTH= value ("<>" kept as "<>")

    def __init__(self, size: int | None = None, body: str | None = None,
                 smtputf8: bool = False, ret: str | None = None, envid: str | None = None,
                 auth: str | None = None) -> None:
        self.size = size
        self.body = body
        self.smtputf8 = smtputf8
        self.ret = ret
        self.envid = envid
        self.auth = auth


@dataclass(init=False, unsafe_hash=True, slots=True)
class RcptParams:
    notify: Final[tuple[str, ...]]  # ("NEVER",) or SUCCESS/FAILURE/DELAY in the order given
    orcpt: Final[str | None]  # "addr-type;decoded-address"

    def __init__(self, notify: tuple[str, ...] = (), orcpt: str | None = None) -> None:
        self.notify = notify
        self.orcpt = orcpt


_NO_MAIL_PARAMS: Final = MailParams()  # what nearly every MAIL and RCPT comes with
_NO_RCPT_PARAMS: Final = RcptParams()


def mail_params(params: dict[str, str | None], *, extensions: frozenset[str]) -> MailParams:
    """Check and interpret the parameters of MAIL FROM; raise ParamError on the first bad one."""
    if not params:
        return _NO_MAIL_PARAMS
    size: int | None = None
    body: str | None = None
    smtputf8 = False
    ret: str | None = None
    envid: str | None = None
    auth: str | None = None
    for raw_key, value in params.items():
        key = raw_key.upper()
        if key == "SIZE" and "SIZE" in extensions:
            size = _size(value)
        elif key == "BODY" and "8BITMIME" in extensions:
            body = _body(value, extensions)
        elif key == "SMTPUTF8" and "SMTPUTF8" in extensions:
            if value is not None:
                raise _syntax("SMTPUTF8 takes no value")
            smtputf8 = True
        elif key == "RET" and "DSN" in extensions:
            ret = _choice(value, ("FULL", "HDRS"), "Invalid RET value")
        elif key == "ENVID" and "DSN" in extensions:
            if value is None or len(value) > MAX_ENVID:
                raise _syntax("Invalid ENVID value")
            envid = _decoded(value, "Invalid ENVID value")
        elif key == "AUTH" and "AUTH" in extensions:
            if value is None:
                raise _syntax("Invalid AUTH value")
            auth = _decoded(value, "Invalid AUTH value")
        else:
            raise _unsupported()
    return MailParams(size, body, smtputf8, ret, envid, auth)


def rcpt_params(params: dict[str, str | None], *, extensions: frozenset[str]) -> RcptParams:
    """Check and interpret the parameters of RCPT TO; raise ParamError on the first bad one."""
    if not params:
        return _NO_RCPT_PARAMS
    notify: tuple[str, ...] = ()
    orcpt: str | None = None
    for raw_key, value in params.items():
        key = raw_key.upper()
        if key == "NOTIFY" and "DSN" in extensions:
            notify = _notify(value)
        elif key == "ORCPT" and "DSN" in extensions:
            orcpt = _orcpt(value)
        else:
            raise _unsupported()
    return RcptParams(notify, orcpt)


def _size(value: str | None) -> int:
    if value is None or not 1 <= len(value) <= 20 or not all(c in _DIGITS for c in value):
        raise _syntax("Invalid SIZE value")
    return int(value)


def _body(value: str | None, extensions: frozenset[str]) -> str:
    body = _choice(value, _BODY_TYPES, "Invalid BODY value")
    if body == "BINARYMIME" and not {"BINARYMIME", "CHUNKING"} <= extensions:
        raise _syntax("Invalid BODY value")
    return body


def _choice(value: str | None, allowed: tuple[str, ...], message: str) -> str:
    if value is None or value.upper() not in allowed:
        raise _syntax(message)
    return value.upper()


def _decoded(value: str, message: str) -> str:
    """xtext-decode a value that will be stored: no controls may come out of the escapes."""
    try:
        decoded = xtext_decode(value)
    except ValueError as exc:
        raise _syntax(message) from exc
    if any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in decoded):
        raise _syntax(message)
    return decoded


def _notify(value: str | None) -> tuple[str, ...]:
    if not value:
        raise _syntax("Invalid NOTIFY value")
    words = tuple(w.upper() for w in value.split(","))
    if words == ("NEVER",):
        return words
    if len(set(words)) != len(words) or not all(w in _NOTIFY_WORDS for w in words):
        raise _syntax("Invalid NOTIFY value")
    return words


def _orcpt(value: str | None) -> str:
    if value is None or len(value) > MAX_ORCPT:
        raise _syntax("Invalid ORCPT value")
    addr_type, semicolon, encoded = value.partition(";")
    if (
        not semicolon
        or not addr_type
        or not all("!" <= c <= "~" and c not in _SPECIALS for c in addr_type)
    ):
        raise _syntax("Invalid ORCPT value")
    address = _decoded(encoded, "Invalid ORCPT value")
    if not address:
        raise _syntax("Invalid ORCPT value")
    return f"{addr_type};{address}"
