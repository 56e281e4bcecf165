"""DKIM signatures: signing outbound mail, verifying inbound mail.

Signing (:func:`sign`) is ours: relaxed/relaxed canonicalization written for speed (a few
C-level passes over the body, only the signed header fields touched), SHA-256, and the
private-key operation done by ``cryptography`` with rsa-sha256 or ed25519-sha256. It returns
the DKIM-Signature header field to prepend; it never changes the message. The message must
already be CRLF-normalized (as the queue holds it): a bare CR or LF raises :class:`DkimError`,
since a signature over bytes the transport later rewrites would fail at every receiver.
:func:`author_domain` reads the RFC 5322 From domain, the usual signing domain.

Verification (:func:`verify`, :func:`verify_async`) is dkimpy's, given key records we looked up
ourselves, and maps every outcome to an RFC 8601 result: a DNS failure is ``temperror``,
never a pass. ``verify_async`` fetches the key records on the event loop first and then runs
dkimpy against them (in a thread for large messages). Not here: key storage (``dkimkeys``),
DMARC alignment, Authentication-Results fields, ARC, simple canonicalization when signing,
``l=`` and ``x=`` when signing.

Covers RFC 6376 sections 3.2 (tag lists), 3.4.2 and 3.4.4 (relaxed canonicalization, with the
trailing whitespace of an unterminated last body line ignored, as Mail::DKIM does), 3.5
(signature fields), 3.7 (hash computation), 5.4 and 5.4.2 (signed fields, oversigning From),
6.1 (verifier results); RFC 8301 (rsa-sha1 refused, keys under 1024 bits refused);
RFC 8463 (ed25519-sha256); RFC 8601 section 2.7.1 (result names).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa

from ..dnstypes import DnsTemporaryError
from ..errors import PostwrightError
from ..protocol.address import AddressError, parse_domain

__all__ = [
    "Algorithm", "DkimError", "DkimResult", "PrivateKey", "ResultName", "TxtResolver",
    "author_domain", "relaxed_body", "relaxed_header", "sign", "signed_field_names",
    "signing_input", "split_message", "verify", "verify_async",
]

Algorithm = Literal["rsa-sha256", "ed25519-sha256"]
ResultName = Literal["pass", "fail", "neutral", "temperror", "permerror"]
PrivateKey = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
TxtLookup = Callable[[str], "str | None"]

MAX_LINE = 78  # folded signature lines, CRLF not counted
MAX_SIGNATURES = 10  # verified per message; the rest are "neutral" (a cheap DoS otherwise)
THREAD_THRESHOLD = 256 * 1024  # verify_async moves dkimpy off the loop above this size

# RFC 6376 section 5.4.1, plus the MIME fields; every Resent-* and List-* field too.
SIGNED_FIELDS = frozenset({
    b"from", b"reply-to", b"subject", b"date", b"to", b"cc", b"in-reply-to", b"references",
    b"message-id", b"mime-version", b"content-type", b"content-transfer-encoding",
})
SIGNED_PREFIXES = (b"resent-", b"list-")
NEVER_SIGNED = frozenset({b"resent-bcc"})

_NAME_OK = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*\Z")
_PLAIN_NAME = re.compile(rb"[a-z0-9_.-]+\Z")


class DkimError(PostwrightError):
    """The message cannot be signed as it is (bare CR or LF, no From field, bad arguments)."""


# -- message parsing and canonicalization (RFC 6376 section 3.4) ----------------------------

def split_message(message: bytes) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """The header fields as (name as written, value) and the body.

    A value is everything after the colon, continuation lines included with their CRLFs, the
    final CRLF excluded. A line that is neither a field nor a continuation becomes a field
    with an empty name (it is never signed). The body starts after the first empty line.
    """
    if message.startswith(b"\r\n"):
        return [], message[2:]
    end = message.find(b"\r\n\r\n")
    if end < 0:
        header, body = message, b""
    else:
        header, body = message[:end], message[end + 4:]
    fields: list[tuple[bytes, bytes]] = []
    group: list[bytes] = []
    for line in header.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and group:
            group.append(line)
            continue
        if group:
            fields.append(_field(group))
        group = [line]
    if group and group != [b""]:
        fields.append(_field(group))
    return fields, body


def _field(lines: list[bytes]) -> tuple[bytes, bytes]:
    raw = lines[0] if len(lines) == 1 else b"\r\n".join(lines)
    colon = raw.find(b":")
    if colon <= 0:
        return b"", raw
    return raw[:colon], raw[colon + 1:]


def relaxed_header(name: bytes, value: bytes) -> bytes:
    """One field in relaxed form (section 3.4.2): ``name:value`` plus CRLF.

    The name is lower-cased with the whitespace before the colon removed; the value is
    unfolded, each run of SP/HTAB becomes one SP, and whitespace at both ends goes.
    """
    if b"\r\n" in value:
        value = value.replace(b"\r\n", b"")
    return name.rstrip(b" \t").lower() + b":" + _one_space(value).strip(b" ") + b"\r\n"


def _one_space(data: bytes) -> bytes:
    """Each run of SP/HTAB as one SP. Whole-buffer replaces run in C; a run of n blanks
    needs log2(n) passes, and text without tabs or double spaces is not copied at all."""
    if b"\t" in data:
        data = data.replace(b"\t", b" ")
    while b"  " in data:
        data = data.replace(b"  ", b" ")
    return data


def relaxed_body(body: bytes) -> bytes:
    """The body in relaxed form (section 3.4.4), for a CRLF-normalized body.

    Runs of SP/HTAB become one SP, whitespace before each line end goes, trailing empty lines
    go, and a non-empty result ends with exactly one CRLF; an empty body stays empty.
    """
    body = _one_space(body)
    if b" \r\n" in body:
        body = body.replace(b" \r\n", b"\r\n")
    body = body.rstrip(b" \r\n")  # spaces of the last line and empty lines at the end
    return body + b"\r\n" if body else b""


def _has_bare_cr_or_lf(message: bytes) -> bool:
    pairs = message.count(b"\r\n")
    return message.count(b"\r") != pairs or message.count(b"\n") != pairs


# -- signing ---------------------------------------------------------------------------------

def signed_field_names(fields: Iterable[tuple[bytes, bytes]]) -> list[bytes]:
    """The ``h=`` list for these fields: each recommended field present, once per instance,
    in message order, then ``from`` once more so no From can be added (section 5.4.2)."""
    names: list[bytes] = []
    for name, _ in fields:
        lower = name.rstrip(b" \t").lower()
        if lower in SIGNED_FIELDS or (lower.startswith(SIGNED_PREFIXES)
                                      and lower not in NEVER_SIGNED
                                      and _PLAIN_NAME.match(lower)):  # nothing odd in h=
            names.append(lower)
    if b"from" not in names:
        raise DkimError("the message has no From field, which a signature must cover")
    names.append(b"from")
    return names


def signing_input(fields: list[tuple[bytes, bytes]], names: list[bytes],
                  signature: bytes) -> bytes:
    """What the signature signs (section 3.7): the relaxed fields ``names`` picks, then the
    DKIM-Signature field whose value (after the colon) is ``signature``, with ``b=`` already
    empty, in relaxed form without its final CRLF."""
    return _selected(fields, names) + relaxed_header(b"dkim-signature", signature)[:-2]


def _selected(fields: list[tuple[bytes, bytes]], names: list[bytes]) -> bytes:
    """The canonical header fields ``names`` picks, each name taking the next instance from
    the bottom up; a name with no instance left adds nothing (section 5.4.2)."""
    positions: dict[bytes, list[int]] = {}
    for i, (name, _) in enumerate(fields):
        positions.setdefault(name.rstrip(b" \t").lower(), []).append(i)
    out: list[bytes] = []
    for name in names:
        stack = positions.get(name)
        if stack:
            field_name, value = fields[stack.pop()]
            out.append(relaxed_header(field_name, value))
    return b"".join(out)


def _fold(first: str, items: list[tuple[str, str]]) -> list[str]:
    """Greedy folding: each item is (separator, text); a line break (CRLF SP) replaces the
    separator when the text would pass MAX_LINE. Texts are never split."""
    lines: list[str] = []
    line = first
    for sep, text in items:
        if len(line) + len(sep) + len(text) > MAX_LINE and line.strip():
            lines.append(line)
            line = " " + text
        else:
            line += sep + text
    lines.append(line)
    return lines


def _check_name(kind: str, value: str) -> str:
    if not _NAME_OK.match(value) or len(value) > 253:
        raise DkimError(f"invalid {kind} {value!r}")
    return value


def sign(message: bytes, *, domain: str, selector: str, key: PrivateKey,
         algorithm: Algorithm | None = None, now: float | None = None) -> bytes:
    """The DKIM-Signature field (folded, ending in CRLF) to prepend to ``message``.

    ``algorithm`` defaults to the key's (rsa-sha256 for RSA, ed25519-sha256 for Ed25519);
    ``now`` (seconds since the epoch) gives ``t=``. ``domain`` must be an A-label.
    Raises :class:`DkimError` for a message with a bare CR or LF or without From.
    """
    if isinstance(key, rsa.RSAPrivateKey):
        expected: Algorithm = "rsa-sha256"
    elif isinstance(key, ed25519.Ed25519PrivateKey):
        expected = "ed25519-sha256"
    else:
        raise DkimError(f"unsupported key type {type(key).__name__}")
    if algorithm is not None and algorithm != expected:
        raise DkimError(f"a {expected} key cannot sign with {algorithm}")
    domain = _check_name("domain", domain.lower().rstrip("."))
    selector = _check_name("selector", selector)
    if _has_bare_cr_or_lf(message):
        raise DkimError("the message has a bare CR or LF; normalize line ends to CRLF first")

    fields, body = split_message(message)
    names = signed_field_names(fields)
    body_hash = base64.b64encode(hashlib.sha256(relaxed_body(body)).digest()).decode()
    stamp = int(time.time() if now is None else now)

    items = [(" ", "v=1;"), (" ", f"a={expected};"), (" ", "c=relaxed/relaxed;"),
             (" ", f"d={domain};"), (" ", f"s={selector};"), (" ", f"t={stamp};")]
    h_values = [n.decode("ascii", "replace") for n in names]
    items.append((" ", f"h={h_values[0]}" + (":" if len(h_values) > 1 else ";")))
    for i, name in enumerate(h_values[1:], start=2):
        items.append(("", name + (":" if i < len(h_values) else ";")))
    items.append((" ", f"bh={body_hash};"))
    lines = _fold("DKIM-Signature:", items)
    lines.append(" b=")
    unsigned = "\r\n".join(lines).encode("ascii")

    data = signing_input(fields, names, unsigned[len(b"DKIM-Signature:"):])
    if isinstance(key, rsa.RSAPrivateKey):
        signature = key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    else:  # RFC 8463 section 3: Ed25519 signs the SHA-256 hash of the data
        signature = key.sign(hashlib.sha256(data).digest())
    b64 = base64.b64encode(signature).decode("ascii")
    first = MAX_LINE - len(" b=")
    chunks = [b64[:first]] + [b64[i:i + MAX_LINE - 1] for i in range(first, len(b64),
                                                                        MAX_LINE - 1)]
    return unsigned + "\r\n ".join(chunks).encode("ascii") + b"\r\n"


def _strip_comments(text: str) -> str:
    """``text`` with RFC 5322 comments removed and quoted strings replaced by ``q``."""
    out: list[str] = []
    depth = 0
    quoted = False
    escaped = False
    for c in text:
        if escaped:
            escaped = False
            continue
        if c == "\\" and (quoted or depth):
            escaped = True
        elif quoted:
            if c == '"':
                quoted = False
                out.append("q")
        elif c == "(":
            depth += 1
        elif c == ")" and depth:
            depth -= 1
        elif depth:
            continue
        elif c == '"':
            quoted = True
        else:
            out.append(c)
    return "".join(out)


def author_domain(message: bytes) -> str | None:
    """The domain of the one mailbox in the one From field, as a lower-case A-label; None when
    there is no From, several From fields or mailboxes, or no usable domain."""
    fields, _ = split_message(message)
    values = [v for n, v in fields if n.rstrip(b" \t").lower() == b"from"]
    if len(values) != 1:
        return None
    text = _strip_comments(values[0].replace(b"\r\n", b"").decode("utf-8", "replace"))
    if "," in text or ";" in text:
        return None
    if "<" in text:
        start = text.rfind("<")
        end = text.find(">", start)
        if end < 0:
            return None
        text = text[start + 1:end]
    local, at, domain = text.strip().rpartition("@")
    if not at or not local.strip():
        return None
    try:
        parsed = parse_domain(domain.strip().rstrip("."), smtputf8=True)
        return None if parsed.is_literal else parsed.ascii()
    except AddressError:
        return None


# -- verification ----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class DkimResult:
    """The outcome of one DKIM-Signature field, top to bottom.

    ``domain`` is ``d=`` lower-cased and ``selector`` is ``s=`` ("" when unreadable);
    ``reason`` is a short human text (empty on pass); ``header_b`` is the start of ``b=``
    (RFC 6008), to tell two signatures of one domain apart.
    """

    domain: str
    selector: str
    result: ResultName
    reason: str = ""
    header_b: str = ""


class TxtResolver(Protocol):
    """What :func:`verify_async` needs: ``postwright.net.dns.Resolver`` fits."""

    async def txt(self, name: str) -> list[str]: ...


# dkimpy logs what it finds at ERROR level; our results carry the reasons instead. A logger
# outside the logging tree, above CRITICAL, keeps its records out of our log.
_QUIET = logging.Logger("postwright.dkimpy", logging.CRITICAL + 10)


def _dkim() -> Any:
    import dkim  # type: ignore[import-untyped]  # dkimpy: imported when first needed

    return dkim


@dataclass(frozen=True, slots=True)
class _Sig:
    domain: str
    selector: str
    algorithm: str
    header_b: str
    problem: str  # why the field cannot be checked at all; "" when it can


def _read_signature(value: bytes) -> _Sig:
    util = _dkim().util
    try:
        tags: dict[bytes, bytes] = util.parse_tag_value(value)
    except util.InvalidTagValueList:
        return _Sig("", "", "", "", "malformed tag list")
    domain = tags.get(b"d", b"").decode("ascii", "replace").lower()
    selector = tags.get(b"s", b"").decode("ascii", "replace")
    algorithm = tags.get(b"a", b"").decode("ascii", "replace").lower()
    header_b = re.sub(rb"\s+", b"", tags.get(b"b", b""))[:8].decode("ascii", "replace")
    problem = ""
    if not (_NAME_OK.match(domain) and _NAME_OK.match(selector)):
        problem = "missing or invalid d= or s="
    elif algorithm == "rsa-sha1":
        problem = "rsa-sha1 is not accepted (RFC 8301)"
    elif algorithm not in ("rsa-sha256", "ed25519-sha256"):
        problem = f"unsupported algorithm {algorithm!r}"
    return _Sig(domain, selector, algorithm, header_b, problem)


def _crlf(message: bytes) -> bytes:
    """Line ends as dkimpy reads them (LF or CRLF ends a line, a lone CR does not), and a
    final CRLF added if missing: both canonicalizations add it anyway (sections 3.4.3 and
    3.4.4), and dkimpy would otherwise keep the trailing whitespace of the last line."""
    if _has_bare_cr_or_lf(message):
        message = re.sub(rb"\r?\n", b"\r\n", message)
    return message if message.endswith(b"\r\n") else message + b"\r\n"


def _key_name(sig: _Sig) -> str:
    return f"{sig.selector}._domainkey.{sig.domain}"


def _signature_values(message: bytes) -> list[bytes]:
    fields, _ = split_message(message)
    return [v for n, v in fields if n.rstrip(b" \t").lower() == b"dkim-signature"]


def _key_problem(record: str, algorithm: str) -> tuple[ResultName, str] | None:
    """What is wrong with a key record for this algorithm, if anything."""
    dkim = _dkim()
    try:
        tags = dkim.util.parse_tag_value(record.encode("utf-8", "replace"))
    except dkim.util.InvalidTagValueList:
        return "permerror", "malformed key record"
    if not tags.get(b"p"):
        return "permerror", "key revoked or missing (empty p=)"
    kind = tags.get(b"k", b"rsa").decode("ascii", "replace").lower()
    if not algorithm.startswith(kind + "-"):
        return "permerror", f"key type {kind!r} does not match a={algorithm}"
    if b"h" in tags and b"sha256" not in re.split(rb"\s*:\s*", tags[b"h"].lower()):
        return "permerror", "the key record does not allow sha256"
    try:
        dkim.evaluate_pk("key", record)
    except dkim.NaClNotFoundError:
        return "neutral", "ed25519 verification unavailable (PyNaCl missing)"
    except Exception as exc:
        return "permerror", f"unusable key record: {exc}"
    return None


def _check(checker: Any, index: int, sig: _Sig, dns_txt: TxtLookup) -> DkimResult:
    def result(name: ResultName, reason: str = "") -> DkimResult:
        return DkimResult(sig.domain, sig.selector, name, reason, sig.header_b)

    if sig.problem:
        return result("permerror", sig.problem)
    if checker is None:
        return result("permerror", "malformed message header")
    try:
        record = dns_txt(_key_name(sig))
    except Exception as exc:  # DnsTemporaryError or anything the lookup raised: try later
        return result("temperror", f"key lookup failed: {exc}")
    if not record:
        return result("permerror", "no key record")
    problem = _key_problem(record, sig.algorithm)
    if problem is not None:
        return result(*problem)
    dkim = _dkim()
    try:
        ok = checker.verify(idx=index, dnsfunc=lambda _name, timeout=0: record)
    except dkim.ValidationError as exc:
        if "body hash mismatch" in str(exc):
            return result("fail", "body hash mismatch")
        return result("permerror", str(exc))
    except dkim.NaClNotFoundError:
        return result("neutral", "ed25519 verification unavailable (PyNaCl missing)")
    except Exception as exc:  # hostile input must never escape as a crash, nor pass
        return result("permerror", f"cannot verify: {exc}")
    return result("pass") if ok else result("fail", "signature did not verify")


def verify(message: bytes, dns_txt: TxtLookup) -> list[DkimResult]:
    """One result per DKIM-Signature field, top first.

    ``dns_txt(name)`` returns the key record at ``name`` (no trailing dot) or None; it raises
    (DnsTemporaryError, or anything) when the lookup failed, which gives ``temperror``.
    Only the first MAX_SIGNATURES fields are checked; the others are ``neutral``.
    """
    message = _crlf(message)
    values = _signature_values(message)
    if not values:
        return []
    dkim = _dkim()
    try:
        checker = dkim.DKIM(message, logger=_QUIET, minkey=1024)
    except Exception:  # dkimpy refuses the header block: no signature can be checked
        checker = None
    results: list[DkimResult] = []
    for index, value in enumerate(values):
        sig = _read_signature(value)
        if index >= MAX_SIGNATURES:
            results.append(DkimResult(sig.domain, sig.selector, "neutral",
                                      "not checked: too many signatures", sig.header_b))
        else:
            results.append(_check(checker, index, sig, dns_txt))
    return results


async def verify_async(message: bytes, resolver: TxtResolver) -> list[DkimResult]:
    """:func:`verify` with the key records fetched first, concurrently, through ``resolver``
    (its ``txt`` gives each record as one string). Of several TXT records at a name the first
    that has ``p=`` is used."""
    message = _crlf(message)
    names = []
    for value in _signature_values(message)[:MAX_SIGNATURES]:
        sig = _read_signature(value)
        if not sig.problem and _key_name(sig) not in names:
            names.append(_key_name(sig))
    answers = await asyncio.gather(*(resolver.txt(name) for name in names),
                                   return_exceptions=True)
    fetched = dict(zip(names, answers, strict=True))

    def lookup(name: str) -> str | None:
        answer = fetched.get(name)
        if answer is None:
            raise DnsTemporaryError(f"{name}: not fetched")
        if isinstance(answer, BaseException):
            raise DnsTemporaryError(str(answer) or type(answer).__name__)
        keys = [record for record in answer if "p=" in record]
        return keys[0] if keys else None

    if len(message) > THREAD_THRESHOLD:
        return await asyncio.to_thread(verify, message, lookup)
    return verify(message, lookup)
