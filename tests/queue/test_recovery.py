"""Tests for start-up recovery: torn tails, quarantined records, missing bodies, leftovers."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

from postwright.envelope import Envelope, Recipient
from postwright.queue import QueueStore
from postwright.queue.journal import RecordType, encode, list_segments, segment_name

Stores = Callable[..., QueueStore]


async def put(store: QueueStore, body: bytes, now: float = 1000.0) -> str:
    writer = store.new_body()
    writer.write(body)
    envelope = Envelope("alice@example.test", (Recipient("bob@example.test"),))
    return await store.commit(writer, envelope, now=now)


def read(store: QueueStore, qid: str) -> bytes:
    with store.open_body(qid) as f:
        return f.read()


def last_segment(root: Path) -> Path:
    return root / "segments" / segment_name(list_segments(root / "segments")[-1])


def test_torn_tail_is_truncated(stores: Stores, tmp_path: Path) -> None:
    store = stores()
    store.open()

    async def main() -> list[str]:
        return list(await asyncio.gather(put(store, b"one"), put(store, b"two")))

    ids = asyncio.run(main())
    store.close()
    seg = tmp_path / "q" / "segments" / segment_name(list_segments(tmp_path / "q" /
                                                                   "segments")[-1])
    good = seg.stat().st_size
    torn = encode(RecordType.REMOVE, b'{"id":"%s"}' % ids[0].encode())[:-3]
    with open(seg, "ab") as f:
        f.write(torn)
    again = stores()
    report = again.open()
    assert report.truncated_bytes == len(torn) and report.quarantined == 0
    assert report.events[0].kind == "truncated"
    assert seg.stat().st_size == good
    assert again.ids() == sorted(ids)  # the torn REMOVE was never acknowledged
    asyncio.run(put(again, b"three"))
    again.close()
    third = stores()
    report = third.open()
    assert report.clean and report.messages == 3
    third.close()


def test_corrupt_middle_record_is_quarantined(stores: Stores, tmp_path: Path) -> None:
    store = stores()
    store.open()

    async def main() -> list[str]:
        return [await put(store, b"first body"), await put(store, b"second body"),
                await put(store, b"third body")]

    ids = asyncio.run(main())
    store.close()
    root = tmp_path / "q"
    seg = root / "segments" / segment_name(list_segments(root / "segments")[-1])
    data = bytearray(seg.read_bytes())
    at = data.index(b"second body")
    data[at] ^= 0xFF
    seg.write_bytes(bytes(data))
    again = stores()
    report = again.open()
    assert report.quarantined == 1 and report.truncated_bytes == 0
    assert report.events[0].reason == "CRC mismatch"
    assert report.as_log()["problems"] == [
        f"quarantined {seg.name}@{report.events[0].offset}+{report.events[0].length}: "
        "CRC mismatch"]
    assert again.ids() == [ids[0], ids[2]]
    assert read(again, ids[2]) == b"third body"
    quarantined = list((root / "quarantine").iterdir())
    assert len(quarantined) == 1 and b"econd body" in quarantined[0].read_bytes()
    again.close()


def test_valid_frame_with_bad_json_is_quarantined(stores: Stores, tmp_path: Path) -> None:
    store = stores()
    store.open()
    qid = asyncio.run(put(store, b"body"))
    store.close()
    root = tmp_path / "q"
    seg = root / "segments" / segment_name(list_segments(root / "segments")[-1])
    header = (b'{"v":1,"id":"EVIL","envelope":{"sender":"a\\r\\nRCPT TO:<x>","recipients":'
              b'[{"address":"b@x"}]},"arrived":1,"size":0,"body":"inline","crc":0,'
              b'"held":false,"recipients":[{"status":"pending","attempts":0,'
              b'"next_attempt":1,"last_reply":null}]}')
    bad = [encode(RecordType.STATUS, b"{not json"),
           encode(RecordType.MESSAGE, len(header).to_bytes(4, "big") + header),
           encode(RecordType.HOLD, b'{"id":"../../etc/passwd"}')]
    with open(seg, "ab") as f:
        f.write(b"".join(bad))
    again = stores()
    report = again.open()
    assert report.quarantined == 3 and report.truncated_bytes == 0
    assert all(e.reason.startswith("bad record") for e in report.events)
    assert again.ids() == [qid] and not again.get(qid).held
    again.close()


def test_missing_body_file_is_quarantined(stores: Stores, tmp_path: Path) -> None:
    store = stores(spill_threshold=10)
    store.open()

    async def main() -> list[str]:
        return [await put(store, b"a" * 100), await put(store, b"b" * 100)]

    lost, kept = asyncio.run(main())
    store.close()
    os.unlink(tmp_path / "q" / "bodies" / lost)
    again = stores(spill_threshold=10)
    report = again.open()
    assert report.quarantined == 1 and report.events[0].qid == lost
    assert report.events[0].reason == "body file missing"
    assert again.ids() == [kept] and read(again, kept) == b"b" * 100
    assert (tmp_path / "q" / "quarantine" / f"{lost}.record").exists()
    again.close()
    third = stores(spill_threshold=10)
    report = third.open()
    assert report.clean and third.ids() == [kept]
    third.close()


def test_leftovers_are_cleaned_at_open(stores: Stores, tmp_path: Path) -> None:
    store = stores(spill_threshold=10)
    store.open()
    writer = store.new_body()
    writer.write(b"z" * 100)  # spilled, never committed
    (tmp_path / "q" / "bodies" / "ORPHAN").write_bytes(b"old")
    store.close()
    again = stores()
    report = again.open()
    assert report.incoming_removed == 1 and report.orphan_bodies == 1
    assert os.listdir(tmp_path / "q" / "incoming") == []
    assert os.listdir(tmp_path / "q" / "bodies") == []
    again.close()


def test_damage_already_quarantined_is_reported_as_known(stores: Stores, tmp_path: Path) -> None:
    store = stores()
    store.open()
    qid = asyncio.run(put(store, b"keep me"))
    store.close()
    with open(last_segment(tmp_path / "q"), "ab") as f:
        f.write(b"\0" * 40 + encode(RecordType.HOLD, b'{"id":"%s"}' % qid.encode()))
    first = stores()
    assert first.open().quarantined == 1
    assert first.get(qid).held  # the record after the damage still counts
    first.close()
    second = stores()
    report = second.open()
    assert report.quarantined == 0 and [e.kind for e in report.events] == ["known"]
    assert len(os.listdir(tmp_path / "q" / "quarantine")) == 1
    second.close()


def test_damaged_tail_of_a_closed_segment_is_quarantined_and_cut(stores: Stores,
                                                                 tmp_path: Path) -> None:
    store = stores(segment_size=1000)
    store.open()

    async def main() -> list[str]:
        return [await put(store, b"m" * 600, now=1000.0 + i) for i in range(4)]

    ids = asyncio.run(main())
    store.close()
    segments = list_segments(tmp_path / "q" / "segments")
    assert len(segments) >= 3
    first = tmp_path / "q" / "segments" / segment_name(segments[0])
    size = first.stat().st_size
    with open(first, "ab") as f:
        f.write(b"garbage that was never a record")
    again = stores(segment_size=1000)
    report = again.open()
    assert report.quarantined == 1 and report.truncated_bytes == 0
    assert first.stat().st_size == size and again.ids() == ids
    again.close()


def test_readonly_recovery_changes_nothing(stores: Stores, tmp_path: Path) -> None:
    store = stores(spill_threshold=10)
    store.open()
    qid = asyncio.run(put(store, b"x" * 50))
    store.close()
    seg = last_segment(tmp_path / "q")
    with open(seg, "ab") as f:
        f.write(b"\x8fPWJ torn")
    os.unlink(tmp_path / "q" / "bodies" / qid)
    size = seg.stat().st_size
    reader = stores()
    report = reader.open(readonly=True)
    assert report.truncated_bytes == 9 and report.quarantined == 1
    assert reader.ids() == []
    assert seg.stat().st_size == size
    assert os.listdir(tmp_path / "q" / "quarantine") == []
    reader.close()


def test_readonly_open_of_a_missing_queue_is_empty(tmp_path: Path) -> None:
    reader = QueueStore(tmp_path / "nothing")
    report = reader.open(readonly=True)
    assert report.messages == 0 and reader.ids() == []
    assert not (tmp_path / "nothing").exists()
    reader.close()
