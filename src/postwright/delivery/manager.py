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
from collections.abc import Callable, Iterator
from typing import BinaryIO

from ..envelope import Envelope
from ..message.trace import received_header
from ..protocol.address import AddressError, parse_mailbox
from ..queue import QueuedMessage, QueueStore, RecipientResult, RetrySchedule
from .maildir import MaildirDelivery
from .routing import Router

log = logging.getLogger("postwright.delivery")

_CHUNK = 256 * 1024


class DeliveryManager:
    def __init__(self, *, queue: QueueStore, router: Router, maildir: MaildirDelivery,
                 hostname: str, schedule: RetrySchedule, concurrency: int = 20,
                 clock: Callable[[], float] = time.time) -> None:
        self.queue = queue
        self.router = router
        self.maildir = maildir
        self.hostname = hostname
        self.schedule = schedule
        self.clock = clock
        self._slots = asyncio.Semaphore(concurrency)
        self._wake = asyncio.Event()
        self._busy: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False

    def wake(self, qid: str | None = None) -> None:
        self._wake.set()

    async def run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            now = self.clock()
            for qid in self.queue.due(now):
                if qid in self._busy:
                    continue
                self._busy.add(qid)
                task = asyncio.get_running_loop().create_task(self._deliver(qid))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            next_due = self.queue.next_due_time()
            delay = 60.0 if next_due is None else max(0.0, min(60.0, next_due - now))
            if delay == 0.0 and self._busy:
                delay = 1.0  # everything due is in flight; wait for it or for news
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=delay)
            except TimeoutError:
                pass

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=30)

    async def _deliver(self, qid: str) -> None:
        try:
            async with self._slots:
                await self.deliver(qid)
        except Exception:
            log.exception("delivery crashed", extra={"event": "error", "id": qid})
        finally:
            self._busy.discard(qid)
            self._wake.set()

    async def deliver(self, qid: str) -> None:
        try:
            msg = self.queue.get(qid)
        except Exception:
            return  # deleted meanwhile
        if msg.held:
            return
        now = self.clock()
        due = [i for i, r in enumerate(msg.recipients)
               if r.status in ("pending", "deferred") and r.next_attempt <= now]
        if not due:
            return
        results = await asyncio.to_thread(self._deliver_local_batch, msg, due)
        now = self.clock()
        expired = self.schedule.expired(msg.arrived, now)
        for i, result in list(results.items()):
            if result.status == "deferred" and expired:
                results[i] = RecipientResult("failed", "4.4.7 delivery time expired: "
                                             + result.reply)
        await self.queue.record(qid, results, now=now)
        for i, result in results.items():
            rcpt = msg.recipients[i].recipient.address
            fields = {"event": result.status, "id": qid, "recipient": rcpt,
                      "reply": result.reply}
            if result.status == "delivered":
                log.info("delivered", extra=fields)
            elif result.status == "failed":
                log.warning("delivery failed", extra=fields)
            else:
                log.info("deferred", extra=fields)

    def _deliver_local_batch(self, msg: QueuedMessage, due: list[int]
                             ) -> dict[int, RecipientResult]:
        results: dict[int, RecipientResult] = {}
        for i in due:
            address = msg.recipients[i].recipient.address
            results[i] = self._deliver_one(msg, address)
        return results

    def _deliver_one(self, msg: QueuedMessage, address: str) -> RecipientResult:
        try:
            mailbox = parse_mailbox(address, smtputf8=True)
        except AddressError:
            return RecipientResult("failed", "5.1.3 bad recipient address")
        if mailbox.domain is None or not self.router.is_local_domain(mailbox.domain.name):
            return RecipientResult("deferred", "4.4.1 remote delivery is not available yet")
        env = msg.envelope
        header = self._received(msg.id, env, address)
        try:
            with self.queue.open_body(msg.id) as body:
                path = self.maildir.deliver(address, _chunks(header, body),
                                            return_path=env.sender, delivered_to=address)
        except OSError as exc:
            return RecipientResult("deferred", f"4.2.0 mailbox write failed: {exc.strerror}")
        return RecipientResult("delivered", f"2.0.0 delivered to maildir as {path.name}")

    def _received(self, qid: str, env: Envelope, address: str) -> bytes:
        return received_header(
            helo=env.helo, client_address=env.client_address, client_name=None,
            hostname=self.hostname, protocol=env.extra.get("protocol", "ESMTP"),
            queue_id=qid, recipient=address, tls=env.extra.get("tls"),
            when=env.received_at,
        )


def _chunks(header: bytes, body: BinaryIO) -> Iterator[bytes]:
    yield header
    while True:
        chunk = body.read(_CHUNK)
        if not chunk:
            return
        yield chunk
