"""The ``Received:`` trace header we prepend to every message we accept.

Builds one folded header field from values the session already knows. Every value that came
from the peer (HELO name, reverse-DNS name, recipient) passes through a filter first, so no CR,
LF or other control character can ever reach a header. It does not parse Received headers,
count hops or add other trace fields (Return-Path and Delivered-To belong to delivery).

Covers RFC 5321 section 4.4 (trace information, ``Stamp`` grammar), RFC 5322 section 3.6.7
(date-time form), RFC 3848 (ESMTPA, ESMTPS, ESMTPSA) and RFC 6531 section 3.7.3 (UTF8SMTP,
UTF8SMTPA, UTF8SMTPS, UTF8SMTPSA).
"""

from __future__ import annotations

import functools
import ipaddress
import time
import unicodedata
from typing import Final

PROTOCOLS: Final = frozenset({
    "SMTP", "ESMTP", "ESMTPS", "ESMTPA", "ESMTPSA",
    "UTF8SMTP", "UTF8SMTPS", "UTF8SMTPA", "UTF8SMTPSA",
})

# Characters that would change the structure of the field if a peer slipped them into a
# name: comment delimiters, the quoting character, the date separator and white space.
_STRUCTURAL: Final = frozenset("()\\;<> \t")
# Unicode categories never allowed, even in UTF-8 headers: controls (C0 and C1), format
# characters (bidi overrides), surrogates, private use, unassigned, line/paragraph separators
# and non-ASCII spaces.
_BAD_CATEGORIES: Final = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs"})

# For ASCII text (nearly every name), the same filters as the bytes that bytes.translate
# deletes (str.translate with a dict raises and catches a KeyError for every character it
# keeps).
_ASCII_TOKEN_DROP: Final = bytes(c for c in range(128)
                                 if not 0x21 <= c <= 0x7E or chr(c) in _STRUCTURAL)
_ASCII_PATH_DROP: Final = bytes(c for c in range(128) if not 0x21 <= c <= 0x7E and c != 0x20)
_DAYS: Final = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS: Final = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov",
                  "Dec")

_NAME_LIMIT: Final = 255  # octets: a domain name is never longer (RFC 5321 section 4.5.3.1.2)
_PATH_LIMIT: Final = 256  # octets: the longest forward-path (RFC 5321 section 4.5.3.1.3)


def with_protocol(*, esmtp: bool, tls: bool, auth: bool, utf8: bool) -> str:
    """The ``with`` keyword for a session: registered "Mail Transmission Types" only.

    A session that never said EHLO is plain ``SMTP`` whatever else happened (there is no
    registered name for TLS or AUTH without ESMTP, and SMTPUTF8 needs EHLO).
    """
    if not esmtp:
        return "SMTP"
    suffix = ("S" if tls else "") + ("A" if auth else "")
    return ("UTF8SMTP" if utf8 else "ESMTP") + suffix


def received_header(*, helo: str, client_address: str, client_name: str | None, hostname: str,
                    protocol: str, queue_id: str, recipient: str | None, tls: str | None,
                    when: float) -> bytes:
    """One ``Received:`` field, folded over several lines, ending in CRLF.

    ``client_name`` is the verified reverse-DNS name, or None. ``recipient`` is given only
    when the message has exactly one recipient (the ``for`` clause would otherwise leak the
    other recipients). ``tls`` is a short description such as "TLSv1.3 TLS_AES_256_GCM_SHA384".
    """
    first, by_line, utf8 = _from_and_by(helo, client_address, client_name, hostname, protocol)
    lines = [first, by_line]
    qid = _token(queue_id, utf8=False, limit=64)
    if qid:
        lines[-1] += f" id {qid}"
    if tls is not None:
        tls_clean = _comment_text(tls)
        if tls_clean:
            lines.append(f"\t({tls_clean})")
    if recipient is not None:
        rcpt = _path_text(recipient, utf8=utf8)
        if rcpt:
            lines.append(f"\tfor <{rcpt}>")
    lines[-1] += "; " + _date(when)
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")


# Most messages come from a few clients: the "from" and "by" parts are made once for each.
@functools.lru_cache(maxsize=1024)
def _from_and_by(helo: str, client_address: str, client_name: str | None, hostname: str,
                 protocol: str) -> tuple[str, str, bool]:
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol for Received: {protocol!r}")
    utf8 = protocol.startswith("UTF8")
    literal = _address_literal(client_address)
    helo_clean = _token(helo, utf8=utf8, limit=_NAME_LIMIT)
    name_clean = _token(client_name or "", utf8=utf8, limit=_NAME_LIMIT)

    tcp_info = " ".join(part for part in (name_clean, literal) if part)
    from_part = helo_clean or literal or "unknown"
    first = f"Received: from {from_part}"
    if tcp_info and tcp_info != from_part:
        first += f" ({tcp_info})"
    by_host = _token(hostname, utf8=utf8, limit=_NAME_LIMIT) or "localhost"
    return first, f"\tby {by_host} (postwright) with {protocol}", utf8


def _date(when: float) -> str:
    """RFC 5322 date-time in UTC with a numeric "+0000" zone (English names, whatever the
    locale)."""
    return _date_of(int(when // 1))


@functools.lru_cache(maxsize=4)  # messages arrive in the same few seconds
def _date_of(second: int) -> str:
    t = time.gmtime(second)
    return (f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year:04d} "
            f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} +0000")


@functools.lru_cache(maxsize=1024)  # the same few clients send most messages
def _address_literal(address: str) -> str:
    """``[192.0.2.1]`` or ``[IPv6:2001:db8::1]`` (RFC 5321 section 4.1.3); "" if not an IP."""
    try:
        ip = ipaddress.ip_address(address.strip())
    except ValueError:
        return ""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return f"[{ip.ipv4_mapped}]"
        # Drop any "%scope": it is a local interface name, not part of the address.
        return f"[IPv6:{ipaddress.IPv6Address(int(ip)).compressed}]"
    return f"[{ip}]"


def _allowed(ch: str, *, utf8: bool) -> bool:
    if ch.isascii():
        return "\x21" <= ch <= "\x7e"
    return utf8 and unicodedata.category(ch) not in _BAD_CATEGORIES


def _clip(text: str, limit: int) -> str:
    """At most ``limit`` octets of UTF-8, cut on a character boundary."""
    while len(text.encode("utf-8")) > limit:
        text = text[: max(0, min(len(text) - 1, limit))]
    return text


def _token(text: str, *, utf8: bool, limit: int) -> str:
    """A name with everything but visible characters dropped, structure characters too."""
    if text.isascii():
        return text.encode("ascii").translate(None, _ASCII_TOKEN_DROP)[:limit].decode("ascii")
    kept = "".join(ch for ch in text if _allowed(ch, utf8=utf8) and ch not in _STRUCTURAL)
    return _clip(kept, limit)


def _comment_text(text: str) -> str:
    """Free text for a comment: visible ASCII and single spaces, no parentheses or quoting."""
    kept = "".join(
        ch if _allowed(ch, utf8=False) and ch not in "()\\" else " " for ch in text
    )
    return _clip(" ".join(kept.split()), 200)


def _path_text(text: str, *, utf8: bool) -> str:
    """A recipient for the ``for`` clause; a quoted local part may keep its spaces."""
    text = text.strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1]
    if text.isascii():
        ascii_kept = text.encode("ascii").translate(None, _ASCII_PATH_DROP)
        return ascii_kept[:_PATH_LIMIT].decode("ascii")
    kept = "".join(ch for ch in text if ch == " " or _allowed(ch, utf8=utf8))
    return _clip(kept, _PATH_LIMIT)


def stored_header(value: str | None) -> bytes:
    """A header kept unfolded in the envelope (an envelope field holds no CR or LF), as a
    field ready to prepend: CRLF-terminated, or nothing."""
    return (value + "\r\n").encode("utf-8") if value else b""
