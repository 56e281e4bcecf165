"""Local submission: put a message straight into the queue, as ``sendmail`` does.

Used by ``postwright send`` without ``--server``: through the control socket when the server
runs, or on the queue directly when it does not. Addresses are checked with the RFC 5321
grammar (a CR or LF can never get in), recipients are resolved like RCPT on the smtp
listener (aliases, plus-addresses), and content line ends are normalized to CRLF, so nothing
with a bare CR or LF is ever queued.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from email.utils import format_datetime, make_msgid

from .delivery.routing import Router
from .envelope import Envelope, Recipient
from .errors import PostwrightError
from .protocol.address import AddressError, parse_mailbox
from .queue import QueueStore

_LINE_END = re.compile(rb"\r\n|\r|\n")


class SubmitError(PostwrightError):
    """Bad input for a local submission; nothing was queued."""


def check_address(text: str, what: str) -> str:
    if any(c in text for c in "\r\n\0"):
        raise SubmitError(f"{what}: CR, LF or NUL in address")
    try:
        mailbox = parse_mailbox(text.strip(), smtputf8=True)
    except AddressError as exc:
        raise SubmitError(f"{what}: malformed address {text!r}: {exc}") from None
    if mailbox.domain is None:
        raise SubmitError(f"{what}: address needs a domain: {text!r}")
    return str(mailbox)


def canonical(content: bytes) -> bytes:
    """Every line end as CRLF, and a final CRLF."""
    out = _LINE_END.sub(b"\r\n", content)
    if out and not out.endswith(b"\r\n"):
        out += b"\r\n"
    return out


def compose(*, sender: str, recipients: list[str], subject: str | None, body: bytes,
            hostname: str, now: float | None = None) -> bytes:
    """A message with From, To, Subject, Date and Message-ID around ``body``."""
    when = datetime.fromtimestamp(time.time() if now is None else now, UTC)
    headers = [f"From: <{sender}>", f"To: {', '.join(f'<{r}>' for r in recipients)}"]
    if subject is not None:
        if any(c in subject for c in "\r\n\0"):
            raise SubmitError("subject: CR, LF or NUL")
        headers.append(f"Subject: {subject}")
    headers += [f"Date: {format_datetime(when)}", f"Message-ID: {make_msgid(domain=hostname)}"]
    text = body.decode("utf-8", "surrogateescape")
    if not (text.isascii() and (subject or "").isascii()):
        headers += ["MIME-Version: 1.0", "Content-Type: text/plain; charset=utf-8",
                    "Content-Transfer-Encoding: 8bit"]
    head = "\r\n".join(headers).encode("utf-8") + b"\r\n\r\n"
    return head + canonical(body)


def resolve(router: Router, addresses: list[str]) -> tuple[Recipient, ...]:
    out: list[Recipient] = []
    seen: set[str] = set()
    for address in addresses:
        mailbox = parse_mailbox(address, smtputf8=True)
        res = router.resolve(mailbox)
        if res.kind == "unknown":
            raise SubmitError(f"unknown local recipient: {address}")
        orcpt = None if res.targets == (address,) else f"rfc822;{address}"
        for target in res.targets:
            if target.lower() not in seen:
                seen.add(target.lower())
                out.append(Recipient(target, orcpt))
    return tuple(out)


async def enqueue(queue: QueueStore, router: Router, *, sender: str, recipients: list[str],
                  message: bytes, hostname: str) -> str:
    """Resolve, then commit durably; returns the queue id."""
    sender = check_address(sender, "from") if sender else ""
    checked = [check_address(r, "to") for r in recipients]
    if not checked:
        raise SubmitError("no recipients")
    now = time.time()
    envelope = Envelope(sender=sender, recipients=resolve(router, checked),
                        body="8BITMIME" if not message.isascii() else "7BIT",
                        smtputf8=not all(a.isascii() for a in [sender, *checked]),
                        helo="localhost", client_address="127.0.0.1", received_at=now,
                        listener="local", extra={"protocol": "ESMTP"})
    body = queue.new_body()
    body.write(canonical(message))
    try:
        return await queue.commit(body, envelope, now=now)
    except BaseException:
        queue.discard(body)
        raise
