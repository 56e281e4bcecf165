"""The delivery manager with a real queue and real Maildirs: batches, expiry, bounces."""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
from collections.abc import AsyncIterator
from pathlib import Path

from postwright.delivery.agent import MaildirAgent
from postwright.delivery.manager import DeliveryManager
from postwright.delivery.routing import Router
from postwright.envelope import Envelope, Recipient
from postwright.queue import QueueStore, RetrySchedule


def setup(tmp: Path, lifetime: float = 3600) -> tuple[QueueStore, DeliveryManager]:
    schedule = RetrySchedule(first=60, cap=60, lifetime=lifetime)
    queue = QueueStore(tmp / "queue", schedule=schedule)
    queue.open()
    router = Router(local_domains=["example.test"], aliases={},
                    account_exists=lambda a: a in {"alice@example.test", "bob@example.test"})
    manager = DeliveryManager(queue=queue, router=router,
                              maildir=MaildirAgent(tmp / "mail", hostname="mx.example.test"),
                              hostname="mx.example.test",
                              schedule=schedule)
    return queue, manager


async def put(queue: QueueStore, sender: str, *rcpts: str, body: bytes = b"Subject: t\r\n\r\nx\r\n"
              ) -> str:
    w = queue.new_body()
    w.write(body)
    env = Envelope(sender=sender, recipients=tuple(Recipient(r) for r in rcpts),
                   helo="client.test", client_address="127.0.0.1", received_at=1000.0,
                   extra={"protocol": "ESMTP"})
    return await queue.commit(w, env, now=1000.0)


def inbox(tmp: Path, local: str) -> list[Path]:
    d = tmp / "mail" / "example.test" / local / "new"
    return sorted(d.iterdir()) if d.exists() else []


def test_a_batch_delivers_every_local_recipient_once(tmp_path: Path) -> None:
    async def run() -> None:
        queue, manager = setup(tmp_path)
        ids = [await put(queue, "s@remote.test", "alice@example.test", "bob@example.test")
               for _ in range(30)]
        await manager.deliver_batch(ids)
        assert queue.ids() == []  # every recipient final: removed from the queue
        await manager.stop()
        await queue.aclose()

    asyncio.run(run())
    assert len(inbox(tmp_path, "alice")) == 30 and len(inbox(tmp_path, "bob")) == 30
    first = inbox(tmp_path, "alice")[0].read_bytes()
    assert first.startswith(b"Return-Path: <s@remote.test>\nDelivered-To: alice@example.test\n"
                            b"Received: from client.test")
    assert b"\r" not in first


def test_expired_recipient_bounces_to_the_sender(tmp_path: Path) -> None:
    async def run() -> str:
        queue, manager = setup(tmp_path, lifetime=1)
        manager.clock = lambda: 5000.0  # long past arrival + lifetime
        qid = await put(queue, "alice@example.test", "someone@remote.test")
        await manager.deliver_batch([qid])
        await manager.stop()  # waits for the remote task (no remote agent: deferred)
        assert qid not in queue.ids()  # failed: the original is gone
        bounces = queue.ids()
        assert len(bounces) == 1
        bounce = queue.get(bounces[0])
        assert bounce.envelope.sender == ""
        assert [r.recipient.address for r in bounce.recipients] == ["alice@example.test"]
        await manager.deliver_batch(bounces)
        assert queue.ids() == []
        await manager.stop()
        await queue.aclose()
        return qid

    qid = asyncio.run(run())
    [path] = inbox(tmp_path, "alice")
    raw = path.read_bytes()
    assert raw.startswith(b"Return-Path: <>\n")
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg.get_content_type() == "multipart/report"
    status = [p for p in msg.walk() if p.get_content_type() == "message/delivery-status"]
    assert status, "no delivery-status part"
    text = raw.decode()
    assert "Final-Recipient: rfc822; someone@remote.test" in text
    assert "Action: failed" in text and "Status: 4.4.7" in text
    assert qid in text


def test_a_bounce_is_never_bounced(tmp_path: Path) -> None:
    async def run() -> None:
        queue, manager = setup(tmp_path, lifetime=1)
        manager.clock = lambda: 5000.0
        qid = await put(queue, "", "someone@remote.test")
        await manager.deliver_batch([qid])
        await manager.stop()
        assert queue.ids() == []  # failed and dropped, no notice about a notice
        await queue.aclose()

    asyncio.run(run())


def test_remote_recipient_is_deferred_without_a_remote_agent(tmp_path: Path) -> None:
    async def run() -> None:
        queue, manager = setup(tmp_path)
        manager.clock = lambda: 1001.0
        qid = await put(queue, "alice@example.test", "someone@remote.test",
                        "bob@example.test")
        await manager.deliver_batch([qid])
        await manager.stop()
        msg = queue.get(qid)
        states = {r.recipient.address: r.status for r in msg.recipients}
        assert states == {"someone@remote.test": "deferred", "bob@example.test": "delivered"}
        assert msg.recipients[0].next_attempt == 1001.0 + 60
        await manager.stop()
        await queue.aclose()

    asyncio.run(run())


def test_delay_warning_is_sent_once(tmp_path: Path) -> None:
    async def run() -> None:
        queue, manager = setup(tmp_path, lifetime=10_000)
        manager.delay_warning = 100
        manager.clock = lambda: 1050.0  # before the warning point: plain deferral
        qid = await put(queue, "alice@example.test", "someone@remote.test")
        await manager.deliver_batch([qid])
        await manager.stop()
        assert queue.ids() == [qid]
        for now in (1200.0, 1300.0, 1400.0):  # the point (1100) is crossed before 1200 only
            manager.clock = lambda now=now: now
            await queue.flush(now=now)
            await manager.deliver_batch([qid])
            await manager.stop()
        notices = [i for i in queue.ids() if i != qid]
        assert len(notices) == 1
        notice = queue.get(notices[0])
        assert notice.envelope.sender == ""
        with queue.open_body(notices[0]) as f:
            text = f.read().decode()
        assert "Action: delayed" in text and "Will-Retry-Until:" in text
        assert queue.get(qid).recipients[0].status == "deferred"
        await manager.stop()
        await queue.aclose()

    asyncio.run(run())


@contextlib.asynccontextmanager
async def _running(queue: QueueStore, manager: DeliveryManager) -> AsyncIterator[None]:
    """The manager's run loop, as the server runs it, for the length of the block; then the
    queue is closed."""
    task = asyncio.create_task(manager.run())
    try:
        yield
    finally:
        await manager.stop()
        await task
        await queue.aclose()


async def _until(condition: object, timeout: float = 10.0) -> None:
    """Wait (bounded) for ``condition()`` to hold while the manager runs."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


def test_the_run_loop_delivers_what_is_queued_while_it_runs(tmp_path: Path) -> None:
    async def run() -> None:
        queue, manager = setup(tmp_path)
        manager.batch_size = 3
        async with _running(queue, manager):
            for _ in range(10):
                manager.wake(await put(queue, "s@remote.test", "alice@example.test"))
            await _until(lambda: not queue.ids())

    asyncio.run(run())
    assert len(inbox(tmp_path, "alice")) == 10


def test_the_run_loop_retries_a_deferred_recipient_when_it_is_due(tmp_path: Path) -> None:
    async def run() -> None:
        queue, manager = setup(tmp_path)
        manager.schedule = queue.schedule = RetrySchedule(first=0.3, cap=0.3, lifetime=3600)
        loop = asyncio.get_running_loop()
        started = loop.time()
        manager.clock = lambda: 1000.0 + loop.time() - started  # real time, from arrival
        async with _running(queue, manager):
            qid = await put(queue, "alice@example.test", "someone@remote.test")
            manager.wake(qid)
            await _until(lambda: queue.get(qid).recipients[0].attempts == 1)
            first = queue.get(qid).recipients[0].next_attempt
            # Nobody wakes the manager: its schedule alone brings the retry, once it is due.
            await _until(lambda: queue.get(qid).recipients[0].attempts == 2)
            assert manager.clock() >= first

    asyncio.run(run())


def test_a_wake_without_an_id_finds_a_released_message(tmp_path: Path) -> None:
    async def run() -> None:
        queue, manager = setup(tmp_path)
        async with _running(queue, manager):
            qid = await put(queue, "s@remote.test", "alice@example.test")
            await queue.hold(qid)
            manager.wake(qid)  # held: off the schedule, not delivered
            await asyncio.sleep(0.2)
            assert queue.ids() == [qid] and inbox(tmp_path, "alice") == []
            await queue.release(qid)
            manager.wake()  # what the control socket does after a release
            await _until(lambda: not queue.ids())

    asyncio.run(run())
    assert len(inbox(tmp_path, "alice")) == 1


def test_the_run_loop_delivers_the_bounce_it_queues(tmp_path: Path) -> None:
    async def run() -> None:
        queue, manager = setup(tmp_path, lifetime=1)
        manager.clock = lambda: 5000.0  # past the lifetime: the remote recipient fails
        async with _running(queue, manager):
            manager.wake(await put(queue, "alice@example.test", "someone@remote.test"))
            await _until(lambda: len(inbox(tmp_path, "alice")) == 1 and not queue.ids())

    asyncio.run(run())
    assert b"someone@remote.test" in inbox(tmp_path, "alice")[0].read_bytes()


def test_messages_past_a_full_batch_wait_for_the_next_one(tmp_path: Path) -> None:
    # A batch stops growing at 8 MB of bodies: of four 3 MB messages due at once, the last
    # goes back on the schedule and is taken by the next pass.
    big = b"Subject: big\r\n\r\n" + (b"x" * 998 + b"\r\n") * 3000

    async def run() -> None:
        queue, manager = setup(tmp_path)
        for _ in range(4):
            await put(queue, "s@remote.test", "alice@example.test", body=big)
        async with _running(queue, manager):  # its first look at the queue finds all four
            await _until(lambda: not queue.ids())

    asyncio.run(run())
    assert len(inbox(tmp_path, "alice")) == 4
