"""The queue manager: takes due messages from the queue and hands them to delivery agents.

Local recipients go to Maildir through the agent process (``agent.py``), in batches;
recipients in other domains go to the remote agent, one task per destination domain.
Results are recorded per recipient; the queue removes a message once every recipient is final.
Anything unexpected during delivery is temporary (4xx), never a silent loss.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import os
import time
from collections.abc import Callable
from typing import Final

from ..envelope import Envelope
from ..errors import QueueError
from ..message.trace import received_header, stored_header
from ..protocol.address import AddressError, parse_mailbox
from ..queue import QueuedMessage, QueueStore, RecipientResult, RetrySchedule
from .agent import AgentItem, MaildirAgent
from .bounce import bounce
from .maildir import MaildirNameError
from .remote import Job, RemoteDelivery
from .routing import Router

log: Final = logging.getLogger("postwright.delivery")

# A batch stops growing here (bytes to write), so it never weighs much more.
_BATCH_BYTES: Final = 8 << 20


class DeliveryManager:
    def __init__(self, *, queue: QueueStore, router: Router, maildir: MaildirAgent,
                 hostname: str, schedule: RetrySchedule, concurrency: int = 20,
                 batch_size: int = 512, remote: RemoteDelivery | None = None,
                 per_destination: int = 5, delay_warning: float = 14400.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.queue = queue
        self.router = router
        self.maildir = maildir
        self.hostname = hostname
        self.schedule = schedule
        self.clock = clock
        self.remote = remote
        self.per_destination = per_destination
        self.delay_warning = delay_warning
        self.batch_size = batch_size
        self._slots = asyncio.Semaphore(concurrency)  # remote sessions at once
        self._destinations: dict[str, asyncio.Semaphore] = {}
        self._inflight: dict[str, set[int]] = {}  # per message, its recipients in delivery
        # When each message not being delivered is due next, as a heap with lazy deletion:
        # an entry counts only while it matches _scheduled. A pass takes what is due from
        # its top instead of scanning the queue, so its cost follows the work there is, not
        # the size of the queue (a backlog of thousands waiting for a slow destination).
        self._heap: list[tuple[float, str]] = []
        self._scheduled: dict[str, float] = {}
        self._rescan = True  # look through the whole queue at the next pass
        self._remote_tasks: set[asyncio.Task[None]] = set()
        self._local_slots = asyncio.Semaphore(2)  # local batches at once
        self._local_tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._stopping = False

    def wake(self, qid: str | None = None) -> None:
        """``qid`` was queued and is due now; without one, anything in the queue may have
        changed (the control socket held, released or flushed messages)."""
        if qid is None:
            self._rescan = True
        else:
            self._schedule(qid, 0.0)
        self._wake.set()

    # ---- the schedule ----------------------------------------------------------------
    def _schedule(self, qid: str, when: float) -> None:
        current = self._scheduled.get(qid)
        if current is None or when < current:
            self._scheduled[qid] = when
            heapq.heappush(self._heap, (when, qid))

    def _reschedule(self, qid: str) -> None:
        """Put ``qid`` back in the schedule at its next attempt, as the queue has it now;
        one with recipients still being delivered comes back when they are done."""
        if qid not in self._inflight:
            when = self.queue.next_attempt(qid)
            if when is not None:
                self._schedule(qid, when)

    def _scan(self) -> None:
        """Rebuild the schedule from the whole queue (at start, and after a wake without
        a message id)."""
        self._scheduled = {qid: when for qid, when in self.queue.next_attempts()
                           if qid not in self._inflight}
        self._heap = [(when, qid) for qid, when in self._scheduled.items()]
        heapq.heapify(self._heap)

    def _take_due(self, now: float, limit: int) -> list[str]:
        heap = self._heap
        out: list[str] = []
        while heap and len(out) < limit and heap[0][0] <= now:
            when, qid = heapq.heappop(heap)
            if self._scheduled.get(qid) == when:  # else a stale entry
                del self._scheduled[qid]
                out.append(qid)
        return out

    def _claim(self, qid: str, indices: list[int]) -> None:
        self._inflight.setdefault(qid, set()).update(indices)

    def _release(self, qid: str, indices: list[int]) -> None:
        left = self._inflight.get(qid, set())
        left.difference_update(indices)
        if not left:
            self._inflight.pop(qid, None)
            self._reschedule(qid)

    async def run(self) -> None:
        """Deliver due messages in batches until stopped.

        Local batches run as tasks, at most two at once: while the agent writes one, the
        results of the other are recorded and the next gathers, so under load many messages
        share each sync and the agent is never left waiting for the queue; an idle server
        delivers a lone message at once. Remote deliveries run as tasks of their own, one
        per destination domain at a time.
        """
        while not self._stopping:
            self._wake.clear()
            now = self.clock()
            if self._rescan:
                self._rescan = False
                self._scan()
            qids = self._take_due(now, self.batch_size)
            try:
                await self.deliver_batch(qids, wait=False)
            except Exception:
                log.exception("delivery batch crashed", extra={"event": "error"})
                self._rescan = True  # what it took is found again
                await asyncio.sleep(1.0)
            if qids:
                continue  # more may be due
            next_due = self._heap[0][0] if self._heap else None
            delay = 60.0 if next_due is None else max(0.05, min(60.0, next_due - now))
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=delay)
            except TimeoutError:
                pass

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._local_tasks:
            await asyncio.wait(set(self._local_tasks), timeout=30)
        if self._remote_tasks:
            _done, pending = await asyncio.wait(set(self._remote_tasks), timeout=10)
            for task in pending:
                task.cancel()
        if self.remote is not None:
            await self.remote.close()
        await self.maildir.close()

    async def deliver(self, qid: str) -> None:
        await self.deliver_batch([qid])

    async def deliver_batch(self, qids: list[str], *, wait: bool = True) -> int:
        """Start delivery of what is due among ``qids``; returns how many messages it took.

        Local recipients are delivered (and recorded) before this returns, or with
        ``wait=False`` by a task of their own; remote ones are handed to a task per
        destination domain.
        """
        now = self.clock()
        local: list[tuple[QueuedMessage, list[int]]] = []
        remote: dict[str, list[Job]] = {}
        taken = 0
        size = 0
        for pos, qid in enumerate(qids):
            if taken >= self.batch_size or size >= _BATCH_BYTES:
                for rest in qids[pos:]:  # still due: the next batch takes them
                    self._schedule(rest, now)
                break
            busy = self._inflight.get(qid, ())
            due = [i for i in self.queue.due_recipients(qid, now) if i not in busy]
            if not due:
                self._reschedule(qid)  # not due yet after all
                continue
            msg = self.queue.get(qid)
            taken += 1
            mine = [i for i in due if self._is_local(msg.recipients[i].recipient.address)]
            size += msg.size * max(1, len(mine))  # each local recipient gets its own copy
            if mine:
                local.append((msg, mine))
            for i in due:
                if i in mine:
                    continue
                domain = _domain_of(msg.recipients[i].recipient.address)
                jobs = remote.setdefault(domain, [])
                if jobs and jobs[-1].msg.id == qid:
                    jobs[-1].indices.append(i)
                else:
                    jobs.append(Job(msg, [i]))
        for domain, jobs in remote.items():
            self._start_remote(domain, jobs)
        if local:
            await self._local_slots.acquire()
            for msg, mine in local:
                self._claim(msg.id, mine)
            batch = self._local_batch(local)
            if wait:
                await batch
            else:
                task = asyncio.get_running_loop().create_task(batch)
                self._local_tasks.add(task)
                task.add_done_callback(self._local_tasks.discard)
        return taken

    async def _local_batch(self, local: list[tuple[QueuedMessage, list[int]]]) -> None:
        try:
            outcome = await self._deliver_local(local)
            await self._record_many([(msg, results)
                                     for (msg, _due), results in zip(local, outcome, strict=True)],
                                    self.clock())
        except Exception:
            # Nothing recorded: the recipients stay due and are taken again.
            log.exception("local delivery batch crashed", extra={"event": "error"})
            await asyncio.sleep(1.0)
        finally:
            for msg, mine in local:
                self._release(msg.id, mine)
            self._local_slots.release()
            self._wake.set()

    def _start_remote(self, domain: str, jobs: list[Job]) -> None:
        for job in jobs:
            self._claim(job.msg.id, job.indices)
        task = asyncio.get_running_loop().create_task(self._remote_domain(domain, jobs))
        self._remote_tasks.add(task)
        task.add_done_callback(self._remote_tasks.discard)

    async def _remote_domain(self, domain: str, jobs: list[Job]) -> None:
        try:
            if self.remote is None:
                for job in jobs:
                    for i in job.indices:
                        job.results[i] = RecipientResult(
                            "deferred", "4.4.1 remote delivery is not configured")
            else:
                lock = self._destinations.setdefault(domain, asyncio.Semaphore(
                    self.per_destination))
                # The destination first: a task waiting for a busy domain must not hold
                # one of the global session slots meanwhile.
                async with lock, self._slots:
                    await self.remote.deliver_domain(domain, jobs, self.queue.open_body)
        except Exception as exc:
            log.exception("remote delivery crashed", extra={"event": "error", "domain": domain})
            for job in jobs:
                for i in job.indices:
                    job.results.setdefault(i, RecipientResult(
                        "deferred", f"4.3.0 internal error: {type(exc).__name__}"))
        finally:
            now = self.clock()
            try:
                await self._record_many([(job.msg, job.results) for job in jobs if job.results],
                                        now)
            finally:
                for job in jobs:
                    self._release(job.msg.id, job.indices)
                self._wake.set()

    async def _record_many(self, batch: list[tuple[QueuedMessage, dict[int, RecipientResult]]],
                           now: float) -> None:
        """Settle each message's results (expiry, bounces), then record them all at once."""
        for msg, results in batch:
            await self._settle(msg, results, now)  # waits only when a report must be queued
        try:
            errors = await self.queue.record_many([(msg.id, results) for msg, results in batch],
                                                  now=now)
        except QueueError:
            # The queue could not write: nothing is recorded, so all of it is tried again.
            log.exception("recording delivery results failed", extra={"event": "error"})
            return
        for (msg, results), error in zip(batch, errors, strict=True):
            if error is None:  # else deleted while we delivered it
                self._log_results(msg, results)

    async def _settle(self, msg: QueuedMessage, results: dict[int, RecipientResult],
                      now: float) -> None:
        """Turn expired deferrals into failures, queue delay warnings and bounces; a failure
        whose bounce cannot be queued stays deferred."""
        if self.schedule.expired(msg.arrived, now):
            for i, result in list(results.items()):
                if result.status == "deferred":
                    results[i] = RecipientResult("failed", "4.4.7 delivery time expired: "
                                                 + result.reply)
        delayed = self._crossed_delay_warning(msg, results, now)
        if delayed:
            try:
                notice = await bounce(self.queue, msg, delayed, hostname=self.hostname,
                                      now=now, action="delayed",
                                      retry_until=msg.arrived + self.schedule.lifetime)
                if notice is not None:
                    self._schedule(notice, 0.0)
            except Exception:
                log.exception("delay warning failed", extra={"event": "error", "id": msg.id})
        failed = {i: r for i, r in results.items() if r.status == "failed"}
        if failed:
            try:
                notice = await bounce(self.queue, msg, failed, hostname=self.hostname, now=now)
                if notice is not None:
                    self._schedule(notice, 0.0)
            except Exception:
                # No bounce, no verdict: keep the recipients deferred and try again later.
                log.exception("bounce failed", extra={"event": "error", "id": msg.id})
                for i, result in failed.items():
                    results[i] = RecipientResult("deferred", result.reply)

    @staticmethod
    def _log_results(msg: QueuedMessage, results: dict[int, RecipientResult]) -> None:
        info = log.isEnabledFor(logging.INFO)  # spares building the fields for every message
        for i, result in results.items():
            if result.status != "failed" and not info:
                continue
            fields = {"event": result.status, "id": msg.id,
                      "recipient": msg.recipients[i].recipient.address, "reply": result.reply}
            if result.status == "delivered":
                log.info("delivered", extra=fields)
            elif result.status == "failed":
                log.warning("delivery failed", extra=fields)
            else:
                log.info("deferred", extra=fields)

    def _crossed_delay_warning(self, msg: QueuedMessage, results: dict[int, RecipientResult],
                               now: float) -> dict[int, RecipientResult]:
        """Deferred recipients whose ``delay_warning`` point falls in (last attempt, now].

        The previous attempt time is not stored; it is the scheduled next attempt minus the
        delay the schedule gave. So each recipient is warned once, at the first attempt after
        the point (a ``queue flush`` in between can shift that by one attempt).
        """
        if self.delay_warning <= 0:
            return {}
        point = msg.arrived + self.delay_warning
        if now < point:
            return {}
        out = {}
        for i, result in results.items():
            if result.status != "deferred":
                continue
            state = msg.recipients[i]
            previous = (state.next_attempt - self.schedule.next_delay(state.attempts)
                        if state.attempts else float("-inf"))
            if previous < point:
                out[i] = result
        return out

    async def _deliver_local(self, work: list[tuple[QueuedMessage, list[int]]]
                             ) -> list[dict[int, RecipientResult]]:
        """Every local recipient of the batch into Maildir, through the agent process."""
        outcome: list[dict[int, RecipientResult]] = []
        items: list[AgentItem] = []
        slots: list[tuple[int, int]] = []  # (position in outcome, recipient index) per item
        for pos, (msg, due) in enumerate(work):
            results: dict[int, RecipientResult] = {}
            outcome.append(results)
            # A body in a file of its own is read by the agent; a small one is sent along.
            body_path = self.queue.body_path(msg.id)
            body: bytes | None = None
            if body_path is None:
                try:
                    body = self.queue.read_body(msg.id)
                except (OSError, QueueError) as exc:
                    for i in due:
                        results[i] = RecipientResult("deferred",
                                                     f"4.3.0 queue read failed: {exc}")
                    continue
            authres = stored_header(msg.envelope.extra.get("authres"))
            for i in due:
                address = msg.recipients[i].recipient.address
                # Our trace header, then the verdict of the inbound checks (RFC 8601), if any.
                head = self._received(msg.id, msg.envelope, address) + authres
                items.append(AgentItem(address, msg.envelope.sender, address, head, body,
                                       body_path, msg.envelope.extra.get("folder") or None))
                slots.append((pos, i))
        delivered = await self.maildir.deliver_batch(items)
        for (pos, i), result in zip(slots, delivered, strict=True):
            if isinstance(result, str):
                outcome[pos][i] = RecipientResult(
                    "delivered", f"2.0.0 delivered to maildir as {os.path.basename(result)}")
            elif isinstance(result, MaildirNameError):
                outcome[pos][i] = RecipientResult("failed", f"5.1.3 {result}")
            else:
                outcome[pos][i] = RecipientResult(
                    "deferred", f"4.2.0 mailbox write failed: {result}")
        return outcome

    def _is_local(self, address: str) -> bool:
        # The domain follows the last "@" (a quoted local part may hold one, a domain never).
        return self.router.is_local_domain(address.rpartition("@")[2])

    def _received(self, qid: str, env: Envelope, address: str) -> bytes:
        return received_header(
            helo=env.helo, client_address=env.client_address, client_name=None,
            hostname=self.hostname, protocol=env.extra.get("protocol", "ESMTP"),
            queue_id=qid, recipient=address, tls=env.extra.get("tls"),
            when=env.received_at,
        )


def _domain_of(address: str) -> str:
    """The lower-case A-label domain of an address (its destination)."""
    try:
        mailbox = parse_mailbox(address, smtputf8=True)
    except AddressError:
        return address.rpartition("@")[2].lower()
    if mailbox.domain is None:
        return ""
    try:
        return mailbox.domain.ascii()
    except AddressError:
        return mailbox.domain.name.lower()
