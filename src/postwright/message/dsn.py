"""Delivery status notifications: bounces, delay warnings and success notices as bytes.

Given an envelope, per-recipient outcomes and the original message, :func:`build_dsn` renders
one ``multipart/report`` message (CRLF line ends, no line over 998 octets) that the delivery
manager queues with the null sender. :func:`wants_report` applies the recipient's NOTIFY.
It does not decide when a recipient has failed or expired, queue anything, or read files:
the original comes in as bytes or an open binary stream (read from its current position).

Mode. The notice is pure 7-bit ASCII unless the original envelope was SMTPUTF8; queue it with
the same SMTPUTF8 flag (and BODY=8BITMIME when it is set). In 7-bit mode the original is
returned in full only when it is 7-bit clean, otherwise as headers alone with every 8-bit octet
replaced by "?". In SMTPUTF8 mode UTF-8 is kept and the RFC 6533 types are used where the
content needs them: ``message/global-delivery-status``, ``message/global`` and
``message/global-headers`` (``report-type=global-delivery-status`` then).

What is returned: the full message (``message/rfc822``) only for a notice reporting a failure,
when RET is not HDRS, the original is at most ``max_original`` octets, has no NUL and no line
over 998 octets; otherwise its header section alone (``text/rfc822-headers``), itself capped at
``max_original`` octets on a field boundary. Bare CR or LF in the original become CRLF.

Covers RFC 3464 (delivery-status fields), RFC 3461 sections 4.1-4.4 (NOTIFY, RET, ENVID,
ORCPT), RFC 5321 sections 4.5.5 and 6.1 (null sender: never a notice about a notice),
RFC 6522 (multipart/report), RFC 6533 sections 3 and 6 (utf-8 address type, global types),
RFC 3834 section 5 (Auto-Submitted), RFC 2046 section 5.1.1 (boundaries) and RFC 5322
section 2.1.1 (line length).
"""

from __future__ import annotations

import re
import secrets
import textwrap
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import BinaryIO, Literal

from ..envelope import Envelope, Recipient
from ..errors import PostwrightError
from ..protocol.params import xtext_encode

Action = Literal["failed", "delayed", "delivered", "relayed", "expanded"]
ACTIONS: frozenset[str] = frozenset({"failed", "delayed", "delivered", "relayed", "expanded"})
# RFC 3461 section 4.1: the NOTIFY keyword that asks for each kind of report.
_KEYWORD = {"failed": "FAILURE", "delayed": "DELAY", "delivered": "SUCCESS",
            "relayed": "SUCCESS", "expanded": "SUCCESS"}
_STATUS = re.compile(r"[245]\.(?:0|[1-9][0-9]{0,2})\.(?:0|[1-9][0-9]{0,2})")
_DIAG_TYPE = re.compile(r"(?:smtp|x-[a-z0-9-]+)\s*;\s*", re.IGNORECASE)
_BOUNDARY_TOKEN = re.compile(r"[0-9A-Za-z'()+_,./:=?-]{1,60}")
_HOST_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_[]:")
# Never shown, even in UTF-8: controls, format characters (bidi overrides), surrogates,
# private use, unassigned, and line or paragraph separators. Other spaces become SP.
_HIDDEN = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
_LINE = 998  # RFC 5322 section 2.1.1, octets without the CRLF
_FOLD = 78
_DIAG_LIMIT = 1000  # octets of remote reply kept in Diagnostic-Code
_TEXT_DIAG_LIMIT = 400  # ... and in the human-readable part
_ADDRESS_LIMIT = 512
_BOUNDARY_ATTEMPTS = 16


@dataclass(frozen=True)
class RecipientReport:
    """What happened to one recipient, as it will appear in the notice."""

    recipient: Recipient
    action: Action
    status: str  # RFC 3463 enhanced status code, "5.1.1", "4.4.7"...
    diagnostic: str | None  # the remote reply as text; "smtp; " is prefixed unless typed
    remote_mta: str | None = None
    last_attempt: float | None = None
    will_retry_until: float | None = None  # shown for "delayed" only

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"unknown DSN action: {self.action!r}")
        if not _STATUS.fullmatch(self.status):
            raise ValueError(f"not an enhanced status code: {self.status!r}")


def wants_report(recipient: Recipient, action: str) -> bool:
    """Whether the recipient's NOTIFY (RFC 3461 section 4.1) asks for a report of ``action``.

    NEVER: no report. An explicit list: only the kinds named. No NOTIFY: failures, and delay
    warnings too (the RFC leaves those to the MTA; Postfix sends them, so do we).
    """
    if action not in ACTIONS:
        raise ValueError(f"unknown DSN action: {action!r}")
    words = {w.upper() for w in recipient.notify}
    if "NEVER" in words:
        return False
    if words:
        return _KEYWORD[action] in words
    return action in ("failed", "delayed")


def choose_boundary(parts: Iterable[bytes], *,
                    token: Callable[[], str] | None = None) -> str:
    """A MIME boundary that occurs nowhere in ``parts`` (RFC 2046 section 5.1.1).

    Draws from ``token`` (random by default; tests pass their own) until one is absent from
    every part; gives up with :class:`PostwrightError` after a few draws.
    """
    draw = token or _random_token
    bodies = list(parts)
    for _ in range(_BOUNDARY_ATTEMPTS):
        piece = draw()
        if not _BOUNDARY_TOKEN.fullmatch(piece):
            raise ValueError(f"unusable boundary token: {piece!r}")
        boundary = "=_pw_" + piece  # "=_" never occurs in quoted-printable or base64 text
        needle = boundary.encode("ascii")
        if not any(needle in body for body in bodies):
            return boundary
    raise PostwrightError("no MIME boundary found that is absent from the message")


def _random_token() -> str:
    return secrets.token_hex(16)


@dataclass(frozen=True)
class _Part:
    content_type: str
    description: str
    body: bytes  # CRLF lines, ends with CRLF


def build_dsn(*, envelope: Envelope, queue_id: str, reports: Sequence[RecipientReport],
              reporting_mta: str, original: BinaryIO | bytes, arrival: float, now: float,
              max_original: int = 1 << 20,
              boundary_token: Callable[[], str] | None = None) -> bytes | None:
    """The notice to queue from ``<>`` to ``envelope.sender``, or None if none is due.

    None when the envelope sender is null (never bounce a bounce: RFC 5321 section 4.5.5)
    or when no report passes :func:`wants_report`.
    ``boundary_token`` is for tests (see :func:`choose_boundary`).
    """
    if envelope.sender == "":
        return None
    chosen = [r for r in reports if wants_report(r.recipient, r.action)]
    if not chosen:
        return None
    mta = _host(reporting_mta)
    if not mta:
        raise ValueError(f"unusable reporting MTA name: {reporting_mta!r}")
    utf8 = envelope.smtputf8
    qid = "".join(c for c in queue_id if c.isascii() and (c.isalnum() or c in "-_"))[:64]
    failed = any(r.action == "failed" for r in chosen)
    delayed = any(r.action == "delayed" for r in chosen)

    # RFC 3461 section 4.3: RET applies to failure reports; others carry headers only.
    want_full = failed and (envelope.ret or "FULL").upper() != "HDRS"
    returned, note = _returned(original, want_full=want_full, limit=max_original, utf8=utf8)
    status = _status_part(envelope, qid, chosen, mta, arrival, utf8)
    text = _text_part(mta, qid, chosen, arrival, note, utf8)
    parts = [p for p in (text, status, returned) if p is not None]
    boundary = choose_boundary((p.body for p in parts), token=boundary_token)

    report_type = status.content_type.split("/", 1)[1]
    if failed:
        subject = "Undelivered Mail Returned to Sender"
    elif delayed:
        subject = "Delayed Mail (still being retried)"
    else:
        subject = "Successful Mail Delivery Report"
    sender = _safe(envelope.sender, utf8=utf8, limit=_ADDRESS_LIMIT)
    head = [
        f"From: Mail Delivery System <MAILER-DAEMON@{mta}>",
        f"To: <{sender}>",
        f"Subject: {subject}",
        f"Date: {_date(now)}",
        f"Message-ID: <{secrets.token_hex(12)}.{qid or 'dsn'}@{mta}>",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f"Content-Type: multipart/report; report-type={report_type};",
        f'\tboundary="{boundary}"',
    ]
    eight_bit = any(not p.body.isascii() for p in parts) or not sender.isascii()
    if eight_bit:
        head.append("Content-Transfer-Encoding: 8bit")
    out = [_lines(head), b"\r\n", b"This is a MIME-encapsulated message.\r\n"]
    delimiter = f"\r\n--{boundary}\r\n".encode("ascii")
    for part in parts:
        out.append(delimiter)
        fields = [f"Content-Type: {part.content_type}",
                  f"Content-Description: {part.description}"]
        if not part.body.isascii():
            fields.append("Content-Transfer-Encoding: 8bit")
        out += [_lines(fields), b"\r\n", part.body]
    out.append(f"\r\n--{boundary}--\r\n".encode("ascii"))
    return b"".join(out)


# --- the returned original -------------------------------------------------------------


def _returned(original: BinaryIO | bytes, *, want_full: bool, limit: int,
              utf8: bool) -> tuple[_Part | None, str]:
    """The third part and a sentence for the human-readable part about what it holds."""
    data, complete = _read(original, limit)
    data = re.sub(rb"\r\n|\r|\n", b"\r\n", data)
    if not data.strip():
        return None, "The original message was empty."
    if data.startswith(b"\r\n"):
        head = b""
    else:
        end = data.find(b"\r\n\r\n")
        if end >= 0:
            head = data[: end + 2]
        elif complete:
            head = data if data.endswith(b"\r\n") or not data else data + b"\r\n"
        else:
            head = _whole_fields(data)
    if want_full and complete and _fits(data, utf8):
        body = data if data.endswith(b"\r\n") else data + b"\r\n"
        kind = "message/global" if not head.isascii() else "message/rfc822"
        return _Part(kind, "Undelivered Message", body), "Your message is attached."
    if want_full and not complete:
        note = (f"Your message was larger than {limit} octets; only its header is "
                "attached.")
    elif want_full:
        note = ("Your message could not be returned as it was sent (8-bit data, NUL or "
                "over-long lines); only its header is attached.")
    else:
        note = "The header of your message is attached."
    head = _clean_header(head, utf8=utf8)
    if not head:
        return None, "The original message had no header to return."
    kind = "text/rfc822-headers" if head.isascii() else "message/global-headers"
    return _Part(kind, "Undelivered Message Headers", head), note


def _read(original: BinaryIO | bytes, limit: int) -> tuple[bytes, bool]:
    """At most ``limit`` octets of the original, and whether that was all of it."""
    if isinstance(original, bytes | bytearray | memoryview):
        data = bytes(original[: limit + 1])
    else:
        chunks: list[bytes] = []
        need = limit + 1
        while need > 0:
            chunk = original.read(min(need, 1 << 16))
            if not chunk:
                break
            chunks.append(chunk)
            need -= len(chunk)
        data = b"".join(chunks)
    if len(data) > limit:
        return data[:limit], False
    return data, True


def _whole_fields(data: bytes) -> bytes:
    """A cut header section, shortened to end before the field it cut through."""
    cut = data.rfind(b"\r\n")
    while cut >= 0:
        nxt = data[cut + 2 : cut + 3]
        if nxt and nxt not in (b" ", b"\t"):
            return data[: cut + 2]  # the line after this CRLF starts a new field
        cut = data.rfind(b"\r\n", 0, cut)
    return b""


def _fits(data: bytes, utf8: bool) -> bool:
    """Whether the full original can go into the notice unchanged."""
    if b"\0" in data or (not utf8 and not data.isascii()):
        return False
    return all(len(line) <= _LINE for line in data.split(b"\r\n"))


def _clean_header(head: bytes, *, utf8: bool) -> bytes:
    """Header lines made safe to embed: no NUL, 7-bit unless UTF-8, none over 998 octets."""
    out: list[bytes] = []
    for line in head.split(b"\r\n")[:-1]:
        line = line.replace(b"\0", b"?")
        if not utf8 and not line.isascii():
            line = bytes(b if b < 0x80 else 0x3F for b in line)
        while len(line) > _LINE:
            cut = _LINE
            while cut > 1 and 0x80 <= line[cut] < 0xC0:  # not inside a UTF-8 sequence
                cut -= 1
            out.append(line[:cut])
            line = b" " + line[cut:]  # the rest becomes a continuation line
        out.append(line)
    return b"".join(line + b"\r\n" for line in out)


# --- the machine-readable part (RFC 3464 section 2) -------------------------------------


def _status_part(envelope: Envelope, qid: str, reports: Sequence[RecipientReport],
                 mta: str, arrival: float, utf8: bool) -> _Part:
    per_message: list[str] = []
    if envelope.envid:
        per_message += _fold("Original-Envelope-Id", xtext_encode(envelope.envid))
    per_message.append(f"Reporting-MTA: dns; {mta}")
    if qid:
        per_message.append(f"X-Postwright-Queue-ID: {qid}")
    per_message.append(f"Arrival-Date: {_date(arrival)}")
    blocks = [per_message]
    for r in reports:
        block: list[str] = []
        if r.recipient.orcpt:
            block += _fold("Original-Recipient", _orcpt(r.recipient.orcpt, utf8))
        block += _fold("Final-Recipient", _typed_address(r.recipient.address, utf8))
        block += [f"Action: {r.action}", f"Status: {r.status}"]
        remote = _host(r.remote_mta or "")
        if remote:
            block.append(f"Remote-MTA: dns; {remote}")
        if r.diagnostic:
            block += _fold("Diagnostic-Code", _diagnostic(r.diagnostic, utf8))
        if r.last_attempt is not None:
            block.append(f"Last-Attempt-Date: {_date(r.last_attempt)}")
        if r.action == "delayed" and r.will_retry_until is not None:
            block.append(f"Will-Retry-Until: {_date(r.will_retry_until)}")
        blocks.append(block)
    body = b"\r\n".join(_lines(b) for b in blocks)
    kind = "message/delivery-status" if body.isascii() else "message/global-delivery-status"
    return _Part(kind, "Delivery report", body)


def _typed_address(address: str, utf8: bool) -> str:
    """``rfc822; addr`` for ASCII, else the RFC 6533 ``utf-8`` type (xtext form if 7-bit)."""
    if address.isascii():
        return "rfc822; " + _safe(address, utf8=False, limit=_ADDRESS_LIMIT)
    return "utf-8; " + _utf8_address(address, utf8)


def _utf8_address(address: str, utf8: bool) -> str:
    """RFC 6533 utf-8-address in UTF-8 mode, utf-8-addr-xtext otherwise."""
    if utf8:
        return _safe(address, utf8=True, limit=_ADDRESS_LIMIT)
    return "".join(
        ch if "!" <= ch <= "~" and ch not in "\\+=" else f"\\x{{{ord(ch):X}}}"
        for ch in address[:_ADDRESS_LIMIT]
    )


def _orcpt(orcpt: str, utf8: bool) -> str:
    """The decoded ORCPT, kept in its ``addr-type;address`` form."""
    addr_type, _, address = orcpt.partition(";")
    addr_type = "".join(c for c in addr_type if "!" <= c <= "~" and c != ";")[:32] or "unknown"
    if address.isascii() or utf8:
        return f"{addr_type};{_safe(address, utf8=utf8, limit=_ADDRESS_LIMIT)}"
    return f"{addr_type};{_utf8_address(address, utf8=False)}"


def _diagnostic(text: str, utf8: bool) -> str:
    clean = _safe(text, utf8=utf8, limit=_DIAG_LIMIT)
    match = _DIAG_TYPE.match(clean)
    if match:
        kind = match.group(0).split(";")[0].strip()
        return f"{kind}; {clean[match.end():]}"
    return f"smtp; {clean}"


# --- the human-readable part (RFC 6522 section 3) ---------------------------------------


def _text_part(mta: str, qid: str, reports: Sequence[RecipientReport], arrival: float,
               note: str, utf8: bool) -> _Part:
    lines = [f"This is the mail delivery system at {mta}.", ""]
    intro = {
        "failed": "Your message could not be delivered to the recipients below. This is a "
                  "permanent error: the mail system has given up on them.",
        "delayed": "Your message has not yet been delivered to the recipients below. The "
                   "mail system will keep trying; you do not need to send it again.",
        "done": "Your message was delivered, or passed on to a system that does not send "
                "delivery reports, for the recipients below.",
    }
    groups: dict[str, list[RecipientReport]] = {"failed": [], "delayed": [], "done": []}
    for r in reports:
        groups[r.action if r.action in ("failed", "delayed") else "done"].append(r)
    for name, members in groups.items():
        if not members:
            continue
        lines += textwrap.wrap(intro[name], 72) + [""]
        for r in members:
            address = _safe(r.recipient.address, utf8=utf8, limit=_ADDRESS_LIMIT)
            lines.append(f"<{address}>: {r.action} ({r.status})")
            said = _safe(r.diagnostic or "", utf8=utf8, limit=_TEXT_DIAG_LIMIT)
            remote = _host(r.remote_mta or "")
            if said:
                who = f"{remote} said" if remote else "Reason"
                lines += textwrap.wrap(f"{who}: {said}", 72, initial_indent="    ",
                                       subsequent_indent="    ", break_on_hyphens=False)
            if r.action == "delayed" and r.will_retry_until is not None:
                lines.append(f"    Next attempts until {_date(r.will_retry_until)}")
            lines.append("")
    lines += [f"Queue ID: {qid or '(none)'}", f"Arrived: {_date(arrival)}", ""]
    lines += textwrap.wrap(note, 72)
    body = _lines(lines)
    charset = "us-ascii" if body.isascii() else "utf-8"
    return _Part(f"text/plain; charset={charset}", "Notification", body)


# --- text helpers -------------------------------------------------------------------------


def _safe(text: str, *, utf8: bool, limit: int) -> str:
    """Untrusted text for one line: controls dropped, spaces collapsed, at most ``limit``
    octets; non-ASCII kept only in UTF-8 mode (else "?")."""
    chars: list[str] = []
    for ch in text:
        if ch.isascii():
            chars.append(ch if " " <= ch <= "~" else " ")
        elif not utf8:
            chars.append("?")
        else:
            hidden = unicodedata.category(ch) in _HIDDEN or unicodedata.category(ch) == "Zs"
            chars.append(" " if hidden else ch)
    clean = re.sub(" {2,}", " ", "".join(chars)).strip()
    if len(clean.encode("utf-8")) <= limit:
        return clean
    while len(clean.encode("utf-8")) > limit - 3:
        clean = clean[: max(0, min(len(clean) - 1, limit - 3))]
    return clean + "..."


def _host(name: str) -> str:
    """A host name or address literal with anything else dropped, at most 255 octets."""
    return "".join(c for c in name.strip() if c in _HOST_CHARS)[:255]


def _fold(name: str, value: str) -> list[str]:
    """``name: value`` folded at spaces into lines of about 78 octets (never over 998)."""
    lines: list[str] = []
    current = f"{name}:"
    for word in value.split(" "):
        piece = f" {word}"
        if len(current.encode("utf-8")) + len(piece.encode("utf-8")) > _FOLD and \
                current.strip() != f"{name}:":
            lines.append(current)
            current = ""
        current += piece
        while len(current.encode("utf-8")) > _LINE:  # a single word too long for a line
            cut = _LINE
            while len(current[:cut].encode("utf-8")) > _LINE:
                cut -= 1
            lines.append(current[:cut])
            current = " " + current[cut:]
    lines.append(current)
    return lines


def _date(when: float) -> str:
    """RFC 5322 date-time in UTC."""
    return format_datetime(datetime.fromtimestamp(when, UTC))


def _lines(lines: Iterable[str]) -> bytes:
    return "".join(f"{line}\r\n" for line in lines).encode("utf-8")
