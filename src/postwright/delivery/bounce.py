"""Bounces: turn permanent failures into an RFC 3464 report queued from the null sender.

The report is committed to the queue *before* the failures are recorded, so a crash in
between can at worst send a bounce twice, never lose it. A message from the null sender is
never bounced (``build_dsn`` returns None), and a recipient's NOTIFY is honoured.
"""

from __future__ import annotations

import logging
import re

from ..envelope import Envelope, Recipient
from ..message.dsn import RecipientReport, build_dsn
from ..queue import QueuedMessage, QueueStore, RecipientResult

log = logging.getLogger("postwright.delivery")

_STATUS = re.compile(r"\b([245]\.\d{1,3}\.\d{1,3})\b")
_REMOTE = re.compile(r"\bfrom ([A-Za-z0-9.-]+\.?)\b")


def status_of(reply: str, default: str = "5.0.0") -> str:
    match = _STATUS.search(reply)
    return match.group(1) if match else default


async def bounce(queue: QueueStore, msg: QueuedMessage, failed: dict[int, RecipientResult],
                 *, hostname: str, now: float, action: str = "failed",
                 retry_until: float | None = None) -> str | None:
    """Queue a notice about ``failed`` recipients of ``msg``; returns its queue id or None."""
    reports = []
    for i, result in failed.items():
        remote = _REMOTE.search(result.reply)
        reports.append(RecipientReport(
            recipient=msg.recipients[i].recipient, action=action,  # type: ignore[arg-type]
            status=status_of(result.reply, "5.0.0" if action == "failed" else "4.0.0"),
            diagnostic=result.reply, remote_mta=remote.group(1) if remote else None,
            last_attempt=now, will_retry_until=retry_until if action == "delayed" else None,
        ))
    with queue.open_body(msg.id) as original:
        report = build_dsn(envelope=msg.envelope, queue_id=msg.id, reports=reports,
                           reporting_mta=hostname, original=original,
                           arrival=msg.arrived, now=now)
    if report is None:
        return None
    env = msg.envelope
    envelope = Envelope(sender="", recipients=(Recipient(env.sender),),
                        body="8BITMIME" if not report.isascii() else "7BIT",
                        smtputf8=env.smtputf8, helo="localhost", client_address="127.0.0.1",
                        received_at=now, listener="bounce", extra={"protocol": "ESMTP"})
    body = queue.new_body()
    body.write(report)
    try:
        qid = await queue.commit(body, envelope, now=now)
    except BaseException:
        queue.discard(body)
        raise
    log.info("notice queued", extra={"event": "bounced" if action == "failed" else action,
                                     "action": action, "id": msg.id, "bounce_id": qid,
                                     "to": env.sender,
                                     "recipients": [r.recipient.address for r in reports]})
    return qid
