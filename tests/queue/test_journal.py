"""Tests for journal framing, segment scanning with resynchronisation, and batch appends."""

from __future__ import annotations

from pathlib import Path

import pytest

from postwright.queue.journal import (
    HEADER_SIZE,
    MAGIC,
    Damage,
    Frame,
    Journal,
    QueueStats,
    RecordType,
    encode,
    list_segments,
    read_frame,
    scan,
)


def records(*payloads: bytes) -> list[bytes]:
    return [encode(RecordType.STATUS, p) for p in payloads]


def test_encode_scan_round_trip(tmp_path: Path) -> None:
    data = records(b"one", b"", b"three" * 1000)
    seg = tmp_path / "00000001.log"
    seg.write_bytes(b"".join(data))
    found = list(scan(seg))
    assert [f.payload for f in found if isinstance(f, Frame)] == [b"one", b"", b"three" * 1000]
    assert [f.offset for f in found] == [0, len(data[0]), len(data[0]) + len(data[1])]
    assert all(isinstance(f, Frame) and f.rtype == RecordType.STATUS for f in found)
    assert read_frame(seg, len(data[0]) + len(data[1]), len(data[2])).payload == b"three" * 1000


def test_damage_in_the_middle_resyncs_at_the_next_valid_record(tmp_path: Path) -> None:
    a, b, c = records(b"first", b"second " + MAGIC + b" inside", b"third")
    broken = bytearray(b)
    broken[HEADER_SIZE + 2] ^= 1  # payload byte: CRC no longer matches
    seg = tmp_path / "00000001.log"
    seg.write_bytes(a + bytes(broken) + c)
    found = list(scan(seg))
    assert isinstance(found[0], Frame) and found[0].payload == b"first"
    assert found[1] == Damage(len(a), len(b), "CRC mismatch", False)
    assert isinstance(found[2], Frame) and found[2].payload == b"third"
    with pytest.raises(ValueError, match="CRC"):
        read_frame(seg, len(a), len(b))


def test_torn_tail_is_reported_as_tail(tmp_path: Path) -> None:
    a, b = records(b"first", b"second")
    seg = tmp_path / "00000001.log"
    seg.write_bytes(a + b[:-2])
    found = list(scan(seg))
    assert found[1] == Damage(len(a), len(b) - 2, "truncated payload", True)
    seg.write_bytes(a + b[:5])
    assert list(scan(seg))[1] == Damage(len(a), 5, "truncated header", True)


def test_garbage_before_records_and_unknown_types(tmp_path: Path) -> None:
    good = encode(RecordType.REMOVE, b"{}")
    unknown = bytearray(good)
    unknown[4] = 99
    seg = tmp_path / "00000001.log"
    seg.write_bytes(b"\0" * 7 + bytes(unknown) + good)
    found = list(scan(seg))
    assert found[0] == Damage(0, 7 + len(good), "bad magic", False)
    assert isinstance(found[1], Frame) and found[1].rtype == RecordType.REMOVE


def test_journal_appends_batches_and_rotates(tmp_path: Path) -> None:
    stats = QueueStats()
    journal = Journal(tmp_path, segment_size=100, stats=stats)
    journal.start()
    first = records(b"a" * 40, b"b" * 40)
    seg, offset, rotated = journal.append(first)
    assert (seg, offset, rotated) == (1, 0, False)
    assert stats.syncs == 1 and stats.records == 2
    seg, offset, rotated = journal.append(records(b"c"))
    assert (seg, offset, rotated) == (2, 0, True)  # the first passed 100 bytes
    assert list_segments(tmp_path) == [1, 2] and journal.closed() == [1]
    with pytest.raises(ValueError):
        journal.delete(2)
    assert journal.delete(1) and not journal.delete(1)
    assert list_segments(tmp_path) == [2]
    journal.close()
    again = Journal(tmp_path, segment_size=100, stats=stats)
    again.start()  # appends to the last segment
    assert again.append(records(b"d"))[:2] == (2, len(records(b"c")[0]))
    again.close()
    assert [f.payload for f in scan(tmp_path / "00000002.log") if isinstance(f, Frame)] == [
        b"c", b"d"]


def test_write_then_synced_in_two_halves(tmp_path: Path) -> None:
    """What the store's event loop does: write batches, have them synced elsewhere, settle
    them in order. A failed sync cuts off everything in flight and moves to a new segment."""
    stats = QueueStats()
    journal = Journal(tmp_path, segment_size=1000, stats=stats)
    journal.start()
    assert journal.write(records(b"a", b"b")) == (1, 0, False)
    first = journal.sizes[1]
    assert journal.write(records(b"c")) == (1, first, False)  # before the first is synced
    assert journal.in_flight == 2
    journal.synced()
    journal.synced()
    assert (stats.batches, stats.records, stats.syncs, journal.in_flight) == (2, 3, 2, 0)
    size = journal.sizes[1]
    journal.write(records(b"lost"))
    journal.write(records(b"lost too"))
    journal.failed()  # their sync failed: gone from the segment, not counted
    assert (tmp_path / "00000001.log").stat().st_size == size == journal.sizes[1]
    assert journal.must_rotate and journal.in_flight == 0
    assert journal.write(records(b"d")) == (2, 0, True)
    journal.synced()
    with pytest.raises(IndexError):  # nothing in flight
        journal.synced()
    journal.close()
    assert [f.payload for f in scan(tmp_path / "00000001.log") if isinstance(f, Frame)] == [
        b"a", b"b", b"c"]
    assert [f.payload for f in scan(tmp_path / "00000002.log") if isinstance(f, Frame)] == [
        b"d"]


def test_a_new_segment_waits_for_the_batches_in_flight(tmp_path: Path) -> None:
    journal = Journal(tmp_path, segment_size=100, stats=QueueStats())
    journal.start()
    journal.write(records(b"x" * 120))  # fills the segment
    assert journal.must_rotate
    with pytest.raises(RuntimeError):
        journal.write(records(b"y"))
    with pytest.raises(RuntimeError):
        journal.append(records(b"y"))
    journal.synced()
    assert journal.write(records(b"y")) == (2, 0, True)
    journal.synced()
    journal.close()
