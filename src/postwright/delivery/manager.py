"""The queue manager: takes due messages from the queue and hands them to delivery agents.

Local recipients go to Maildir (in a worker thread, since the file system blocks); recipients
in other domains wait for the remote agent (outbound delivery) and are deferred meanwhile.
Results are recorded per recipient; the queue removes a message once every recipient is final.
Anything unexpected during delivery is temporary (4xx), never a silent loss.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from ..envelope import Envelope
from ..errors import QueueError
from ..message.trace import received_header
from ..protocol.address import AddressError, parse_mailbox
from ..queue import QueuedMessage, QueueStore, RecipientResult, RetrySchedule
from .bounce import bounce
from .maildir import DeliveryItem, MaildirDelivery, MaildirNameError
from .routing import Router

log = logging.getLogger("postwright.delivery")

_CHUNK = 256 * 1024
_INLINE_MAX = 1 << 20  # bodies up to this size are read once and shared by recipients


class DeliveryManager:
    def __init__(self, *, queue: QueueStore, router: Router, maildir: MaildirDelivery,
                 hostname: str, schedule: RetrySchedule, concurrency: int = 20,
                 batch_size: int = 512, clock: Callable[[], float] = time.time) -> None:
        self.queue = queue
        self.router = router
        self.maildir = maildir
        self.hostname = hostname
        self.schedule = schedule
        self.clock = clock
        self.concurrency = concurrency  # for remote delivery (outbound)
        self.batch_size = batch_size
        self._wake = asyncio.Event()
        self._stopping = False

    def wake(self, qid: str | None = None) -> None:
        self._wake.set()

    async def run(self) -> None:
        """Deliver due messages in batches until stopped.

        Batches are sequential: while one is on disk the next gathers, so under load many
        messages share each sync, and an idle server delivers a lone message at once.
        """
        while not self._stopping:
            self._wake.clear()
            now = self.clock()
            due = self.queue.due(now)
            if due:
                try:
                    await self.deliver_batch(due[: self.batch_size])
                except Exception:
                    log.exception("delivery batch crashed", extra={"event": "error"})
                    await asyncio.sleep(1.0)
                continue
            next_due = self.queue.next_due_time()
            delay = 60.0 if next_due is None else max(0.01, min(60.0, next_due - now))
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=delay)
            except TimeoutError:
                pass

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    async def deliver(self, qid: str) -> None:
        await self.deliver_batch([qid])

    async def deliver_batch(self, qids: list[str]) -> None:
        now = self.clock()
        work: list[tuple[QueuedMessage, list[int]]] = []
        for qid in qids:
            try:
                msg = self.queue.get(qid)
            except QueueError:
                continue  # deleted meanwhile
            due = [i for i, r in enumerate(msg.recipients)
                   if r.status in ("pending", "deferred") and r.next_attempt <= now]
            if due and not msg.held:
                work.append((msg, due))
        if not work:
            return
        outcome = await asyncio.to_thread(self._deliver_local, work)
        now = self.clock()
        await asyncio.gather(*(self._record(msg, results, now)
                               for (msg, _due), results in zip(work, outcome, strict=True)))

    async def _record(self, msg: QueuedMessage, results: dict[int, RecipientResult],
                      now: float) -> None:
        if self.schedule.expired(msg.arrived, now):
            for i, result in list(results.items()):
                if result.status == "deferred":
                    results[i] = RecipientResult("failed", "4.4.7 delivery time expired: "
                                                 + result.reply)
        failed = {i: r for i, r in results.items() if r.status == "failed"}
        if failed:
            try:
                await bounce(self.queue, msg, failed, hostname=self.hostname, now=now)
            except Exception:
                # No bounce, no verdict: keep the recipients deferred and try again later.
                log.exception("bounce failed", extra={"event": "error", "id": msg.id})
                for i, result in failed.items():
                    results[i] = RecipientResult("deferred", result.reply)
        try:
            await self.queue.record(msg.id, results, now=now)
        except QueueError:
            return  # deleted while we delivered it
        for i, result in results.items():
            fields = {"event": result.status, "id": msg.id,
                      "recipient": msg.recipients[i].recipient.address, "reply": result.reply}
            if result.status == "delivered":
                log.info("delivered", extra=fields)
            elif result.status == "failed":
                log.warning("delivery failed", extra=fields)
            else:
                log.info("deferred", extra=fields)

    # ---- worker thread -----------------------------------------------------------------
    def _deliver_local(self, work: list[tuple[QueuedMessage, list[int]]]
                       ) -> list[dict[int, RecipientResult]]:
        """Runs in a worker thread: every local recipient of the batch into Maildir."""
        outcome: list[dict[int, RecipientResult]] = []
        items: list[DeliveryItem] = []
        slots: list[tuple[int, int]] = []  # (position in outcome, recipient index) per item
        for pos, (msg, due) in enumerate(work):
            results: dict[int, RecipientResult] = {}
            outcome.append(results)
            body: bytes | None = None
            for i in due:
                address = msg.recipients[i].recipient.address
                if not self._is_local(address):
                    results[i] = RecipientResult(
                        "deferred", "4.4.1 remote delivery is not available yet")
                    continue
                header = self._received(msg.id, msg.envelope, address)
                try:
                    if msg.size > _INLINE_MAX:
                        chunks: Iterable[bytes] = _streamed(header, self.queue, msg.id)
                    else:
                        if body is None:
                            with self.queue.open_body(msg.id) as f:
                                body = f.read()
                        chunks = (header, body)
                except OSError as exc:
                    results[i] = RecipientResult("deferred", f"4.3.0 queue read failed: {exc}")
                    continue
                items.append(DeliveryItem(address, chunks, msg.envelope.sender, address))
                slots.append((pos, i))
        for (pos, i), result in zip(slots, self.maildir.deliver_batch(items), strict=True):
            if isinstance(result, Path):
                outcome[pos][i] = RecipientResult(
                    "delivered", f"2.0.0 delivered to maildir as {result.name}")
            elif isinstance(result, MaildirNameError):
                outcome[pos][i] = RecipientResult("failed", f"5.1.3 {result}")
            else:
                outcome[pos][i] = RecipientResult(
                    "deferred", f"4.2.0 mailbox write failed: {result}")
        return outcome

    def _is_local(self, address: str) -> bool:
        try:
            mailbox = parse_mailbox(address, smtputf8=True)
        except AddressError:
            return False
        return mailbox.domain is not None and self.router.is_local(mailbox.domain)

    def _received(self, qid: str, env: Envelope, address: str) -> bytes:
        return received_header(
            helo=env.helo, client_address=env.client_address, client_name=None,
            hostname=self.hostname, protocol=env.extra.get("protocol", "ESMTP"),
            queue_id=qid, recipient=address, tls=env.extra.get("tls"),
            when=env.received_at,
        )


def _streamed(header: bytes, queue: QueueStore, qid: str) -> Iterator[bytes]:
    """A large body, read from the queue in chunks while it is written out."""
    yield header
    with queue.open_body(qid) as body:
        while True:
            chunk = body.read(_CHUNK)
            if not chunk:
                return
            yield chunk
