"""Tests for BodyWriter: in memory while small, streamed to a file past the threshold."""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import pytest

from postwright.errors import QueueError
from postwright.queue.body import BodyWriter


def test_small_body_stays_in_memory(tmp_path: Path) -> None:
    body = BodyWriter(tmp_path, 10)
    body.write(b"hello")
    body.write(b"world")
    assert not body.spilled and body.size == 10 and os.listdir(tmp_path) == []
    assert body.crc == zlib.crc32(b"helloworld")
    assert body.take_inline() == b"helloworld"
    with pytest.raises(QueueError):
        body.write(b"more")
    body.discard()  # a no-op once committed


def test_large_body_spills_and_moves(tmp_path: Path) -> None:
    body = BodyWriter(tmp_path, 10)
    body.write(b"0123456789")
    body.write(b"!")
    assert body.spilled and body.path is not None
    body.write(b"tail")
    assert body.crc == zlib.crc32(b"0123456789!tail")  # what was buffered, then the rest
    assert body.take_inline() is None
    target = tmp_path / "final"
    body.finish(target)
    assert target.read_bytes() == b"0123456789!tail"
    assert os.listdir(tmp_path) == ["final"]


def test_discard_removes_the_spill_file(tmp_path: Path) -> None:
    body = BodyWriter(tmp_path, 1)
    body.write(b"abc")
    body.discard()
    assert os.listdir(tmp_path) == []


def test_write_errors_surface_at_commit(tmp_path: Path) -> None:
    body = BodyWriter(tmp_path / "missing", 1)
    body.write(b"abc")  # the spill fails; no exception mid-DATA
    body.write(b"def")
    assert body.size == 6
    with pytest.raises(QueueError, match="writing the body failed"):
        body.take_inline()


def test_read_all_gives_the_content_inline_and_spilled(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    small = BodyWriter(tmp_path / "in", 1024)
    small.write(b"abc")
    assert small.read_all(10) == b"abc" and small.read_all(2) is None
    big = BodyWriter(tmp_path / "in", 16)
    for i in range(10):
        big.write(b"%02d-456789" % i)
    assert big.spilled
    assert big.read_all(1000) == b"".join(b"%02d-456789" % i for i in range(10))
    big.discard()
    small.discard()
