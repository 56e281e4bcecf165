"""The Authentication-Results header field: writing ours, removing forged ones (RFC 8601).

:func:`header` turns the SPF, DKIM and DMARC results of one message into one folded
``Authentication-Results:`` field (CRLF line ends), ready to prepend. Every value that came
from outside (domains, selectors, reasons, explanations) is filtered to printable ASCII and
quoted where RFC 8601's grammar needs it, so nothing a peer or a DNS record says can add a
line or a field. :func:`strip_ours` removes from an incoming header section every
Authentication-Results field that claims our authserv-id, so a sender cannot forge our
verdicts (section 5).

It does not parse the results inside fields, sign them (ARC) or decide anything.

Covers RFC 8601 sections 2.2 (syntax), 2.3 (authserv-id), 2.5 (version), 2.7.1 (DKIM
results and ``header.d``/``header.s``/``header.b``), 2.7.2 (SPF, ``smtp.mailfrom`` and
``smtp.helo``), 2.7.7 (DMARC results), 5 (removing fields that claim our authserv-id) and
RFC 6008 (``header.b``); RFC 5322 section 2.2.3 (folding).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Sequence
from typing import Protocol

from ..protocol.address import AddressError, idna_to_ascii
from .dmarc import DmarcResult
from .spf import SpfResult

__all__ = ["DkimVerdict", "FIELD_NAME", "header", "strip_ours"]

FIELD_NAME = "Authentication-Results"
LINE_LIMIT = 78  # RFC 5322 section 2.1.1, CRLF not counted
REASON_LIMIT = 120
HEADER_B_LENGTH = 8  # enough of b= to tell signatures of one domain apart (RFC 6008)
_TOKEN = re.compile(r"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+\Z")  # RFC 2045 token
_SAFE = re.compile(r"[^\x20-\x7e]")


class DkimVerdict(Protocol):
    """One verified DKIM signature, as ``policy.dkim.DkimResult`` gives it."""

    @property
    def domain(self) -> str: ...
    @property
    def selector(self) -> str: ...
    @property
    def result(self) -> str: ...


def _clean(text: str, limit: int = REASON_LIMIT) -> str:
    """Printable ASCII only, at most ``limit`` characters."""
    text = _SAFE.sub("?", text).strip()
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _value(text: str) -> str:
    """A token as it is, anything else as a quoted-string (RFC 2045 value)."""
    text = _clean(text)
    if _TOKEN.match(text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _comment(text: str) -> str:
    return "(" + re.sub(r"([()\\])", r"\\\1", _clean(text)) + ")"


def _domain(name: str) -> str:
    """A domain as an A-label when it can be one, for a plain-ASCII property value."""
    name = name.rstrip(".")
    if not name.isascii():
        with contextlib.suppress(AddressError):
            name = idna_to_ascii(name)
    return _value(name.lower())


def _spf(result: SpfResult, prop: str) -> list[str]:
    words = [f"spf={result.result}"]
    if result.result in ("temperror", "permerror") and result.reason:
        words.append(f"reason={_value(result.reason)}")
    elif result.result == "fail" and result.explanation:
        words.append(_comment(result.explanation))
    words.append(f"{prop}={_domain(result.domain)}")
    return words


def _dkim(signature: DkimVerdict) -> list[str]:
    words = [f"dkim={_value(signature.result)}"]
    reason = str(getattr(signature, "reason", "") or "")
    if reason and signature.result != "pass":
        words.append(f"reason={_value(reason)}")
    words.append(f"header.d={_domain(signature.domain)}")
    if signature.selector:
        words.append(f"header.s={_value(signature.selector)}")
    header_b = str(getattr(signature, "header_b", "") or "")[:HEADER_B_LENGTH]
    if header_b:
        words.append(f"header.b={_value(header_b)}")
    return words


def _dmarc(result: DmarcResult) -> list[str]:
    words = [f"dmarc={result.result}"]
    if result.result in ("pass", "fail"):
        words.append(_comment(f"p={result.policy} dis={result.applied}"))
    elif result.reason:
        words.append(f"reason={_value(result.reason)}")
    if result.domain:
        words.append(f"header.from={_domain(result.domain)}")
    return words


def _fold(first: str, groups: list[list[str]]) -> bytes:
    """One resinfo per line; a resinfo too long for a line wraps between its words."""
    lines = [first]
    for words in groups:
        lines[-1] += ";"
        line = " " + words[0]
        for word in words[1:]:
            if len(line) + 1 + len(word) > LINE_LIMIT:
                lines.append(line)
                line = "  " + word
            else:
                line += " " + word
        lines.append(line)
    return ("\r\n".join(lines) + "\r\n").encode("ascii")


def header(authserv_id: str, *, spf: SpfResult | None,
           dkim: Sequence[DkimVerdict] | None, dmarc: DmarcResult | None,
           helo: SpfResult | None = None) -> bytes:
    """One ``Authentication-Results:`` field, folded, ending in CRLF.

    ``spf`` is the MAIL FROM result (``smtp.mailfrom``), ``helo`` the HELO result
    (``smtp.helo``). ``dkim`` lists the verified signatures; an empty list says "dkim=none",
    None leaves DKIM out (not checked). With nothing at all the field says "none".
    """
    groups: list[list[str]] = []
    if spf is not None:
        groups.append(_spf(spf, "smtp.mailfrom"))
    if helo is not None:
        groups.append(_spf(helo, "smtp.helo"))
    if dkim is not None:
        groups.extend(_dkim(s) for s in dkim)
        if not dkim:
            groups.append(["dkim=none"])
    if dmarc is not None:
        groups.append(_dmarc(dmarc))
    return _fold(f"{FIELD_NAME}: {_value(authserv_id)}", groups or [["none"]])


# -- removing forged fields (section 5) ---------------------------------------------------

def _skip_cfws(text: str, i: int) -> int:
    """The index after any white space and (nested) comments starting at ``i``."""
    depth = 0
    while i < len(text):
        c = text[i]
        if depth and c == "\\":
            i += 2
            continue
        if c == "(":
            depth += 1
        elif c == ")" and depth:
            depth -= 1
        elif not depth and c not in " \t\r\n":
            break
        i += 1
    return i


def _authserv_id(value: str) -> str:
    """The authserv-id at the start of a field value, lower case, no trailing dot."""
    i = _skip_cfws(value, 0)
    if value[i:i + 1] == '"':
        out: list[str] = []
        i += 1
        while i < len(value) and value[i] != '"':
            if value[i] == "\\":
                i += 1
            out.append(value[i:i + 1])
            i += 1
        ident = "".join(out)
    else:
        found = re.match(r"[^\s;()]*", value[i:])
        ident = found.group(0) if found else ""
    return ident.strip().rstrip(".").lower()


def strip_ours(message_head: bytes, authserv_id: str) -> bytes:
    """``message_head`` without the Authentication-Results fields that claim our
    authserv-id (compared without regard to case). Folded fields go whole; every other byte,
    the body after the header section included, is kept as it was."""
    ours = authserv_id.strip().rstrip(".").lower()
    lines = [line for line in re.split(b"(?<=\n)", message_head) if line]
    out: list[bytes] = []
    field: list[bytes] = []

    def flush() -> None:
        if field:
            name, _, value = b"".join(field).partition(b":")
            if not (name.rstrip(b" \t").lower() == FIELD_NAME.lower().encode()
                    and _authserv_id(value.decode("utf-8", "replace")) == ours):
                out.extend(field)
            field.clear()

    for index, line in enumerate(lines):
        if line in (b"\r\n", b"\n"):  # the end of the header section
            flush()
            out.extend(lines[index:])
            return b"".join(out)
        if line[:1] in (b" ", b"\t") and field:
            field.append(line)
            continue
        flush()
        field.append(line)
    flush()
    return b"".join(out)
