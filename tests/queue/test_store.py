"""Tests for QueueStore: commit and read back, group commit, restart, recovery, maintenance."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest

from postwright.envelope import Envelope, Recipient
from postwright.errors import QueueError
from postwright.queue import QueueStore, RecipientResult, RetrySchedule


def envelope(*recipients: str, sender: str = "alice@example.test") -> Envelope:
    rcpts = recipients or ("bob@example.test",)
    return Envelope(sender=sender, recipients=tuple(Recipient(r) for r in rcpts),
                    helo="client.test", client_address="192.0.2.1", received_at=1000.0,
                    extra={"tls": "TLSv1.3"})

Stores = Callable[..., QueueStore]


async def put(store: QueueStore, body: bytes, *rcpts: str, now: float = 1000.0) -> str:
    writer = store.new_body()
    for i in range(0, len(body), 4096):
        writer.write(body[i:i + 4096])
    return await store.commit(writer, envelope(*rcpts), now=now)


def read(store: QueueStore, qid: str) -> bytes:
    with store.open_body(qid) as f:
        return f.read()


def segment_bytes(root: Path) -> int:
    total = 0
    for name in os.listdir(root / "segments"):
        try:
            total += os.path.getsize(root / "segments" / name)
        except FileNotFoundError:
            pass  # deleted by maintenance (in a worker thread) meanwhile
    return total


def test_commit_and_read_back(stores: Stores, tmp_path: Path) -> None:
    store = stores(spill_threshold=1024)
    store.open()

    async def main() -> tuple[str, str]:
        small = await put(store, b"Subject: hi\r\n\r\nsmall\r\n", "bob@example.test",
                          "carol@example.test")
        big = await put(store, b"x" * 5000, now=1001.0)
        return small, big

    small, big = asyncio.run(main())
    assert store.ids() == [small, big]
    assert read(store, small) == b"Subject: hi\r\n\r\nsmall\r\n"
    assert read(store, big) == b"x" * 5000
    assert (tmp_path / "q" / "bodies" / big).exists()
    assert not (tmp_path / "q" / "bodies" / small).exists()
    msg = store.get(small)
    assert msg.envelope == envelope("bob@example.test", "carol@example.test")
    assert [r.status for r in msg.recipients] == ["pending", "pending"]
    assert msg.recipients[0].next_attempt == 1000.0
    assert store.read_body(small) == b"Subject: hi\r\n\r\nsmall\r\n"  # kept in memory
    assert store.due(1000.0) == [small] and store.due(1001.0) == [small, big]
    assert store.next_due_time() == 1000.0
    assert msg.to_json() == {
        "id": small, "sender": "alice@example.test", "size": 22,
        "arrived": "1970-01-01T00:16:40Z", "held": False,
        "recipients": [
            {"address": "bob@example.test", "status": "pending", "attempts": 0,
             "next_attempt": "1970-01-01T00:16:40Z", "last_reply": None},
            {"address": "carol@example.test", "status": "pending", "attempts": 0,
             "next_attempt": "1970-01-01T00:16:40Z", "last_reply": None},
        ],
    }
    with pytest.raises(QueueError):
        store.get("NOSUCHID")
    store.close()


def test_ids_unique_sortable_and_filename_safe(stores: Stores) -> None:
    store = stores()
    store.open()

    async def main() -> list[str]:
        first = [await put(store, b"a", now=5000.0) for _ in range(50)]
        later = await put(store, b"b", now=4000.0)  # clock went back: still sorts after
        return [*first, later]

    ids = asyncio.run(main())
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids) == store.ids()
    assert all(re.fullmatch(r"[0-9A-Z]{16}", q) for q in ids)
    store.close()


def test_concurrent_commits_share_syncs(stores: Stores) -> None:
    store = stores()
    store.open()

    async def main() -> list[str]:
        return await asyncio.gather(*(put(store, f"message {i}\r\n".encode(), now=1000.0 + i)
                                      for i in range(200)))

    ids = asyncio.run(main())
    assert len(set(ids)) == 200
    assert store.stats.records >= 200
    assert store.stats.syncs < 20, store.stats
    for i, qid in enumerate(ids):
        assert read(store, qid) == f"message {i}\r\n".encode()
    store.close()


def test_commit_soon_tells_its_callback_once_the_message_is_durable(stores: Stores) -> None:
    store = stores(spill_threshold=4096)
    store.open()
    told: list[tuple[str, QueueError | None, bool]] = []

    def done(qid: str, error: QueueError | None) -> None:
        told.append((qid, error, qid in store.ids()))

    async def main() -> tuple[list[str], bool]:
        started = []
        for i in range(50):
            writer = store.new_body()
            writer.write(f"message {i}\r\n".encode())
            assert store.commit_soon(writer, envelope(), now=1000.0 + i, done=done)
            started.append(len(told))
        assert started == [0] * 50  # nothing is told before the sync
        big = store.new_body()
        big.write(b"x" * 10_000)  # spilled to a file of its own: commit() is for that one
        spilled = store.commit_soon(big, envelope(), now=2000.0, done=done)
        await store.commit(big, envelope(), now=2000.0)
        while len(told) < 50:
            await asyncio.sleep(0.01)
        return [qid for qid, _error, _known in told], spilled

    ids, spilled = asyncio.run(main())
    assert not spilled
    assert all(error is None and known for _qid, error, known in told)  # applied when told
    assert len(set(ids)) == 50 and ids == sorted(ids)  # in the order committed
    assert store.stats.syncs < 50
    store.close()
    again = stores()
    again.open()
    assert [read(again, qid) for qid in ids] == [f"message {i}\r\n".encode() for i in range(50)]
    assert len(again.ids()) == 51


def test_commit_window_gathers_sequential_arrivals(stores: Stores) -> None:
    store = stores(commit_window=0.05)
    store.open()

    async def staggered(i: int) -> str:
        await asyncio.sleep(i * 0.001)
        return await put(store, b"x")

    async def main() -> None:
        await asyncio.gather(*(staggered(i) for i in range(20)))

    asyncio.run(main())
    assert store.stats.syncs <= 3
    store.close()


def test_restart_recovers_everything(stores: Stores) -> None:
    store = stores(spill_threshold=2000)
    store.open()
    bodies = {}

    async def main() -> None:
        for i in range(40):
            body = (f"{i}:".encode() * (i * 20 + 1))
            bodies[await put(store, body, f"r{i}@example.test", now=1000.0 + i)] = body

    asyncio.run(main())
    store.close()
    again = stores(spill_threshold=2000)
    report = again.open()
    assert report.clean and report.messages == 40
    assert again.ids() == sorted(bodies)
    for qid, body in bodies.items():
        assert read(again, qid) == body
        if again.body_path(qid) is None:  # in the journal, read from its segment
            assert again.read_body(qid) == body
        assert again.get(qid).envelope.recipients[0].address.startswith("r")
    again.close()


def test_recipient_status_survives_restart(stores: Stores, tmp_path: Path) -> None:
    sched = RetrySchedule(first=60, factor=2, cap=600)
    store = stores(schedule=sched)
    store.open()

    async def main() -> str:
        qid = await put(store, b"body", "a@x.test", "b@x.test", "c@x.test")
        await store.record(qid, {0: RecipientResult("delivered", "250 ok"),
                                 1: RecipientResult("deferred", "451 later")}, now=1100.0)
        await store.record(qid, {1: RecipientResult("deferred", "451 again")}, now=1200.0)
        return qid

    qid = asyncio.run(main())
    store.close()
    again = stores(schedule=sched)
    again.open()
    states = again.get(qid).recipients
    assert [(s.status, s.attempts, s.last_reply) for s in states] == [
        ("delivered", 1, "250 ok"), ("deferred", 2, "451 again"), ("pending", 0, None)]
    assert states[1].next_attempt == 1200.0 + 120
    assert again.due(1000.0) == [qid]  # c is still pending

    async def finish() -> None:
        await again.record(qid, {1: RecipientResult("failed", "550 no"),
                                 2: RecipientResult("delivered", "250 ok")}, now=1300.0)

    asyncio.run(finish())
    assert again.ids() == []
    again.close()
    third = stores()
    assert third.open().messages == 0
    third.close()


def test_removal_deletes_body_file(stores: Stores, tmp_path: Path) -> None:
    store = stores(spill_threshold=10)
    store.open()

    async def main() -> str:
        qid = await put(store, b"y" * 100)
        assert (tmp_path / "q" / "bodies" / qid).exists()
        await store.record(qid, {0: RecipientResult("delivered", "ok")}, now=1001.0)
        return qid

    qid = asyncio.run(main())
    assert not (tmp_path / "q" / "bodies" / qid).exists()
    with pytest.raises(QueueError):
        store.open_body(qid)
    store.close()


def test_discard_removes_spilled_file(stores: Stores, tmp_path: Path) -> None:
    store = stores(spill_threshold=10)
    store.open()
    writer = store.new_body()
    writer.write(b"z" * 100)
    assert len(os.listdir(tmp_path / "q" / "incoming")) == 1
    store.discard(writer)
    store.discard(writer)
    assert os.listdir(tmp_path / "q" / "incoming") == []
    with pytest.raises(QueueError):
        asyncio.run(store.commit(writer, envelope(), now=1.0))
    store.close()


def test_large_body_streams_with_little_memory(stores: Stores) -> None:
    store = stores()
    store.open()
    chunk = os.urandom(64 * 1024)
    count = 800  # 50 MiB

    async def main() -> str:
        writer = store.new_body()
        tracemalloc.start()
        try:
            for _ in range(count):
                writer.write(chunk)
            qid = await store.commit(writer, envelope(), now=1000.0)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 3 * 1024 * 1024, peak
        return qid

    qid = asyncio.run(main())
    assert store.get(qid).size == count * len(chunk)
    digest, expected = hashlib.sha256(), hashlib.sha256()
    for _ in range(count):
        expected.update(chunk)
    with store.open_body(qid) as f:
        while block := f.read(1 << 20):
            digest.update(block)
    assert digest.digest() == expected.digest()
    store.close()


def test_hold_release_delete_flush(stores: Stores) -> None:
    store = stores(schedule=RetrySchedule(first=300))
    store.open()

    async def main() -> None:
        a, b, c = await put(store, b"a"), await put(store, b"b"), await put(store, b"c")
        await store.hold(a)
        assert store.get(a).held and store.due(1000.0) == [b, c]
        await store.record(b, {0: RecipientResult("deferred", "451 busy")}, now=1000.0)
        await store.record(c, {0: RecipientResult("deferred", "451 busy")}, now=1000.0)
        assert store.due(1001.0) == [] and store.next_due_time() == 1300.0
        await store.delete(c)
        assert await store.flush(now=1002.0) == 1
        assert store.due(1002.0) == [b]
        assert store.get(b).recipients[0].attempts == 1
        await store.release(a)
        assert store.due(1002.0) == [a, b]
        with pytest.raises(QueueError):
            await store.delete(c)
        with pytest.raises(QueueError):
            await store.hold("UNKNOWN")

    asyncio.run(main())
    store.close()
    again = stores()
    again.open()
    assert len(again.ids()) == 2 and not any(again.get(q).held for q in again.ids())
    again.close()


def test_sync_use_with_asyncio_run(stores: Stores) -> None:
    store = stores()
    store.open()
    qid = asyncio.run(put(store, b"x"))
    asyncio.run(store.hold(qid))
    asyncio.run(store.release(qid))
    asyncio.run(store.delete(qid))
    assert store.ids() == []
    store.close()


def test_readonly_open_while_locked(stores: Stores) -> None:
    owner = stores()
    owner.open()
    qid = asyncio.run(put(owner, b"locked"))
    with pytest.raises(QueueError, match="in use"):
        stores().open()
    reader = stores()
    report = reader.open(readonly=True)
    assert report.messages == 1 and reader.ids() == [qid]
    assert read(reader, qid) == b"locked"
    with pytest.raises(QueueError, match="read-only"):
        asyncio.run(reader.hold(qid))
    reader.close()
    owner.close()
    third = stores()
    third.open()  # the lock is free again
    third.close()


def test_compaction_bounds_disk_use(stores: Stores, tmp_path: Path) -> None:
    size = 16 * 1024
    store = stores(segment_size=size, spill_threshold=2048)
    store.open()
    worst = 0

    async def main() -> tuple[str, str]:
        nonlocal worst
        stuck = await put(store, b"long-lived " * 100, "slow@example.test")
        filed = await put(store, b"F" * 5000, "slow@example.test")
        for i in range(1500):
            qid = await put(store, b"transient %d " % i * 20, now=2000.0 + i)
            await store.record(qid, {0: RecipientResult("delivered", "250 ok")}, now=2000.0)
            if i % 100 == 0:
                await store.record(stuck, {0: RecipientResult("deferred", "451")}, now=2000.0)
            worst = max(worst, segment_bytes(tmp_path / "q"))
        await store.compact()
        return stuck, filed

    stuck, filed = asyncio.run(main())
    assert store.stats.segments_deleted > 20 and store.stats.compacted > 0
    assert worst < 8 * size, worst
    assert segment_bytes(tmp_path / "q") < 4 * size
    assert store.ids() == [stuck, filed]
    store.close()
    again = stores(segment_size=size, spill_threshold=2048)
    report = again.open()
    assert report.clean and again.ids() == [stuck, filed]
    assert read(again, stuck) == b"long-lived " * 100 and read(again, filed) == b"F" * 5000
    assert again.get(stuck).recipients[0].attempts == 15
    again.close()


def test_commit_needs_a_recipient_and_an_open_store(stores: Stores) -> None:
    store = stores()
    with pytest.raises(QueueError):
        asyncio.run(store.commit(store.new_body(), envelope(), now=1.0))
    store.open()
    with pytest.raises(QueueError):
        store.open()
    with pytest.raises(QueueError):
        asyncio.run(store.commit(store.new_body(), Envelope("a@x", ()), now=1.0))
    store.close()


def test_compaction_never_brings_a_removed_message_back(stores: Stores, tmp_path: Path) -> None:
    # segment 1 holds a big live message (too live to compact) and X; X's REMOVE lands in a
    # later segment that otherwise holds nothing live. Deleting that later segment while
    # segment 1 survives would resurrect X at the next start.
    size = 8 * 1024
    store = stores(segment_size=size, spill_threshold=size)

    async def main() -> tuple[str, str]:
        big = await put(store, b"B" * 6000, "slow@example.test")
        x = await put(store, b"X", now=1001.0)
        fillers = [await put(store, b"f" * 500, now=1002.0 + i) for i in range(6)]
        await store.record(x, {0: RecipientResult("delivered", "250 ok")}, now=1100.0)
        for qid in fillers:
            await store.record(qid, {0: RecipientResult("delivered", "250 ok")}, now=1100.0)
        for _ in range(120):  # fill later segments with status records of the big message
            await store.record(big, {0: RecipientResult("deferred", "451")}, now=1100.0)
        await store.compact()
        return big, x

    store.open()
    big, x = asyncio.run(main())
    assert store.ids() == [big]
    assert store.stats.segments_created >= 3
    first = tmp_path / "q" / "segments" / "00000001.log"
    assert first.exists()  # still needed for the big message
    store.close()
    again = stores(segment_size=size, spill_threshold=size)
    again.open()
    assert again.ids() == [big]
    assert again.get(big).recipients[0].attempts == 120
    again.close()


def test_record_many_shares_one_sync_and_reports_unknown_ids(stores: Stores) -> None:
    store = stores()
    store.open()

    async def main() -> list[QueueError | None]:
        ids = [await put(store, f"m{i}\r\n".encode(), "a@example.test", "b@example.test")
               for i in range(40)]
        syncs = store.stats.syncs
        delivered = RecipientResult("delivered", "2.0.0 ok")
        deferred = RecipientResult("deferred", "4.2.0 later")
        batch = [(qid, {0: delivered, 1: delivered}) for qid in ids[:30]]
        batch += [(qid, {0: delivered, 1: deferred}) for qid in ids[30:]]
        batch.append(("NOSUCHMESSAGE000", {0: delivered}))
        errors = await store.record_many(batch, now=1001.0)
        assert store.stats.syncs - syncs <= 2  # one batch, however many messages
        assert store.ids() == sorted(ids[30:])  # the finished ones left the queue
        for qid in ids[30:]:
            states = store.get(qid).recipients
            assert [s.status for s in states] == ["delivered", "deferred"]
            assert states[1].attempts == 1 and states[1].next_attempt > 1001.0
        with pytest.raises(ValueError):
            await store.record_many([(ids[30], {1: delivered}), (ids[30], {1: delivered})],
                                    now=1002.0)
        return errors

    errors = asyncio.run(main())
    assert errors[:40] == [None] * 40 and isinstance(errors[40], QueueError)


def test_a_removed_message_body_is_gone_even_when_just_committed(stores: Stores) -> None:
    store = stores()
    store.open()

    async def main() -> None:
        qid = await put(store, b"Subject: x\r\n\r\nfresh\r\n")
        assert read(store, qid) == b"Subject: x\r\n\r\nfresh\r\n"
        await store.record(qid, {0: RecipientResult("delivered", "2.0.0 ok")}, now=1001.0)
        with pytest.raises(QueueError):
            read(store, qid)
        other = await put(store, b"Subject: y\r\n\r\nkept\r\n")
        await store.delete(other)
        with pytest.raises(QueueError):
            read(store, other)

    asyncio.run(main())


def test_bodies_read_back_right_past_the_in_memory_window(stores: Stores) -> None:
    store = stores(spill_threshold=1 << 20)
    store.open()
    bodies = [bytes([65 + i % 26]) * (600 * 1024) + f"{i}\r\n".encode() for i in range(40)]

    async def main() -> list[str]:
        return [await put(store, body) for body in bodies]  # 24 MB: more than is kept

    ids = asyncio.run(main())
    for qid, body in zip(ids, bodies, strict=True):
        assert read(store, qid) == body


def test_a_cancelled_record_many_leaves_other_holders_locks_alone(stores: Stores) -> None:
    store = stores()
    store.open()

    async def main() -> None:
        qid = await put(store, b"m\r\n")
        release = asyncio.Event()
        holding = asyncio.Event()

        async def other() -> None:  # e.g. a `queue hold` in progress on the same message
            async with store._exclusive(qid):
                holding.set()
                await release.wait()

        holder = asyncio.create_task(other())
        await holding.wait()
        waiting = asyncio.create_task(store.record_many(
            [(qid, {0: RecipientResult("delivered", "2.0.0 ok")})], now=1001.0))
        await asyncio.sleep(0.05)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert qid in store._slots and not store._slots[qid].waiters  # the holder's still
        release.set()
        await holder
        await store.record(qid, {0: RecipientResult("delivered", "2.0.0 ok")}, now=1002.0)
        assert store.ids() == [] and store._slots == {}

    asyncio.run(main())


def test_a_message_lock_goes_to_its_waiters_in_order(stores: Stores) -> None:
    """One holder, three waiters; the second is cancelled while it waits and the third just
    as the lock is handed to it: the others still get it, in order, and it is then free."""
    store = stores()
    store.open()

    async def main() -> list[str]:
        qid = await put(store, b"m\r\n")
        order: list[str] = []
        await store._take(qid)

        async def waiter(name: str) -> None:
            await store._take(qid)
            order.append(name)
            store._give(qid)

        tasks = {name: asyncio.create_task(waiter(name)) for name in "abcd"}
        await asyncio.sleep(0.01)  # all four wait, in order
        tasks["b"].cancel()
        await asyncio.sleep(0)
        store._give(qid)  # to a
        await asyncio.sleep(0)  # a runs and gives it on: b is gone, so to c...
        assert order == ["a"] and not tasks["c"].done()
        tasks["c"].cancel()  # ...which is cancelled before it resumes: it passes it to d
        await asyncio.gather(*tasks.values(), return_exceptions=True)
        assert tasks["b"].cancelled() and tasks["c"].cancelled()
        assert store._slots == {}
        return order

    assert asyncio.run(main()) == ["a", "d"]


def test_due_recipients_looks_at_the_live_entry(stores: Stores) -> None:
    store = stores(schedule=RetrySchedule(first=60))
    store.open()

    async def main() -> None:
        qid = await put(store, b"x", "a@example.test", "b@example.test", "c@example.test")
        assert store.due_recipients(qid, 1000.0) == [0, 1, 2]
        await store.record(qid, {0: RecipientResult("delivered", "250 ok"),
                                 1: RecipientResult("deferred", "451 later")}, now=1000.0)
        assert store.due_recipients(qid, 1001.0) == [2]  # 1 waits for its retry
        assert store.due_recipients(qid, 1000.0 + 61) == [1, 2]
        await store.hold(qid)
        assert store.due_recipients(qid, 2000.0) == []
        assert store.due_recipients("no-such-id", 2000.0) == []

    asyncio.run(main())
