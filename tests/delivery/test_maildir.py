"""Tests for the Maildir delivery agent: content, atomicity, folders, streaming, safety."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import textwrap
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest

from postwright.delivery.maildir import DeliveryItem, MaildirDelivery, MaildirNameError

RECEIVED = b"Received: from a (b [127.0.0.1])\r\n\tby mx.example.test; x\r\n"


def agent(tmp_path: Path, hostname: str = "mx.example.test") -> MaildirDelivery:
    return MaildirDelivery(tmp_path / "mail", hostname=hostname)


def files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.is_file()) if directory.exists() else []


def test_content_is_exact(tmp_path: Path) -> None:
    md = agent(tmp_path)
    body = [RECEIVED, b"Subject: hi\r\n\r\nline one\r\nline two\r\n"]
    path = md.deliver("Bob+tag@EXAMPLE.test", body, return_path="alice@remote.test",
                      delivered_to="bob+tag@example.test")
    maildir = tmp_path / "mail" / "example.test" / "bob"
    assert path.parent == maildir / "new"
    assert path.read_bytes() == (
        b"Return-Path: <alice@remote.test>\n"
        b"Delivered-To: bob+tag@example.test\n"
        b"Received: from a (b [127.0.0.1])\n\tby mx.example.test; x\n"
        b"Subject: hi\n\nline one\nline two\n"
    )
    assert files(maildir / "tmp") == [] and files(maildir / "cur") == []
    assert files(maildir / "new") == [path]


def test_null_sender_and_bracketed_sender(tmp_path: Path) -> None:
    md = agent(tmp_path)
    bounce = md.deliver("bob@example.test", [b"x\r\n"], return_path="", delivered_to="b@e")
    assert bounce.read_bytes().startswith(b"Return-Path: <>\nDelivered-To: b@e\n")
    given = md.deliver("bob@example.test", [b"x"], return_path="<a@b.test>", delivered_to="b@e")
    assert given.read_bytes().startswith(b"Return-Path: <a@b.test>\n")


def test_utf8_envelope_and_idn_mailbox(tmp_path: Path) -> None:
    md = agent(tmp_path)
    path = md.deliver("JÖRG@BÜCHER.test", [b"x\r\n"], return_path="ä@b.test",
                      delivered_to="jörg@xn--bcher-kva.test")
    assert path.parent == tmp_path / "mail" / "xn--bcher-kva.test" / "jörg" / "new"
    assert path.read_bytes().startswith("Return-Path: <ä@b.test>\n".encode())


@pytest.mark.parametrize("split", range(1, 12))
def test_crlf_split_at_every_chunk_boundary(tmp_path: Path, split: int) -> None:
    data = b"a\r\nb\r\r\nc\rd\ne\r\n\r"
    expected = b"a\nb\r\nc\rd\ne\n\r"
    path = agent(tmp_path).deliver("bob@example.test", [data[:split], b"", data[split:]],
                                   return_path="", delivered_to="bob@example.test")
    assert path.read_bytes().split(b"\n", 2)[2] == expected


def test_one_byte_chunks(tmp_path: Path) -> None:
    data = b"x\r\n\r\ny\r\r\n\r\n"
    path = agent(tmp_path).deliver("bob@example.test", (data[i:i + 1] for i in range(len(data))),
                                   return_path="", delivered_to="d")
    assert path.read_bytes().split(b"\n", 2)[2] == b"x\n\ny\r\n\n"


def test_unique_name_and_size(tmp_path: Path) -> None:
    md = agent(tmp_path, hostname="mx/odd:host,name")
    paths = [md.deliver("bob@example.test", [b"hello\r\n"], return_path="", delivered_to="d")
             for _ in range(50)]
    assert len(set(paths)) == 50
    for path in paths:
        stem, size = path.name.rsplit(",S=", 1)
        assert int(size) == path.stat().st_size
        secs, rest = stem.split(".", 1)
        assert secs.isdigit()
        assert rest.startswith("M") and f"P{os.getpid()}Q" in rest
        assert rest.endswith(".mx\\057odd\\072host\\054name")
        assert ":" not in path.name and "/" not in path.name


def test_directories_created_mode_0700(tmp_path: Path) -> None:
    md = agent(tmp_path)
    md.deliver("bob@example.test", [b"x"], return_path="", delivered_to="d")
    for d in ["mail", "mail/example.test", "mail/example.test/bob",
              "mail/example.test/bob/tmp", "mail/example.test/bob/new",
              "mail/example.test/bob/cur"]:
        assert stat.S_IMODE((tmp_path / d).stat().st_mode) == 0o700, d
    path = files(tmp_path / "mail/example.test/bob/new")[0]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize("folder", ["Junk", ".Junk"])
def test_junk_folder(tmp_path: Path, folder: str) -> None:
    md = agent(tmp_path)
    path = md.deliver("bob@example.test", [b"spam\r\n"], return_path="s@x.test",
                      delivered_to="bob@example.test", folder=folder)
    box = tmp_path / "mail" / "example.test" / "bob"
    assert path.parent == box / ".Junk" / "new"
    assert (box / ".Junk" / "maildirfolder").is_file()
    for sub in ("tmp", "new", "cur"):  # the account's own Maildir exists too
        assert (box / sub).is_dir() and (box / ".Junk" / sub).is_dir()
    assert files(box / "new") == []


def failing_body() -> Iterator[bytes]:
    yield b"first part\r\n" * 1000
    raise OSError(5, "simulated read error from the queue")


def test_failing_body_leaves_nothing(tmp_path: Path) -> None:
    md = agent(tmp_path)
    with pytest.raises(OSError, match="simulated"):
        md.deliver("bob@example.test", failing_body(), return_path="", delivered_to="d")
    box = tmp_path / "mail" / "example.test" / "bob"
    assert files(box / "new") == [] and files(box / "tmp") == []


def test_failing_write_leaves_nothing(tmp_path: Path) -> None:
    """A real EFBIG from the kernel (RLIMIT_FSIZE) in the middle of the body."""
    script = textwrap.dedent(f"""
        import resource, signal, sys
        from pathlib import Path
        from postwright.delivery.maildir import MaildirDelivery
        md = MaildirDelivery(Path({str(tmp_path / "mail")!r}), hostname="h")
        md.deliver("bob@example.test", [b"warm-up"], return_path="", delivered_to="d")
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
        try:
            md.deliver("bob@example.test", (b"y" * 65536 for _ in range(16)),
                       return_path="", delivered_to="d")
        except OSError as exc:
            print("errno", exc.errno)
            sys.exit(0)
        sys.exit("delivered despite the limit")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert "errno 27" in done.stdout  # EFBIG
    box = tmp_path / "mail" / "example.test" / "bob"
    assert len(files(box / "new")) == 1  # only the warm-up message
    assert files(box / "tmp") == []


def test_twenty_megabytes_streamed_in_little_memory(tmp_path: Path) -> None:
    line = b"x" * 998 + b"\r\n"
    chunk = line * 64  # 64000 bytes
    count = 20 * 1024 * 1024 // len(chunk) + 1

    def body() -> Iterator[bytes]:
        for _ in range(count):
            yield chunk

    md = agent(tmp_path)
    tracemalloc.start()
    try:
        path = md.deliver("bob@example.test", body(), return_path="", delivered_to="d")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 * 1024 * 1024, peak
    head = len(b"Return-Path: <>\nDelivered-To: d\n")
    assert path.stat().st_size == head + count * len(chunk) - count * 64
    assert path.stat().st_size > 20_000_000


@pytest.mark.parametrize("address", [
    '"../../etc"@example.test',
    '"a/b"@example.test',
    '".hidden"@example.test',
    '".."@example.test',
    '"."@example.test',
    "bob@[127.0.0.1]",
    "postmaster",
    "",
    "bob@example.test/../x",
    "bob\x00@example.test",
])
def test_unsafe_addresses_refused(tmp_path: Path, address: str) -> None:
    md = agent(tmp_path)
    with pytest.raises(MaildirNameError):
        md.deliver(address, [b"x"], return_path="", delivered_to="d")
    assert not (tmp_path / "mail").exists() or all(
        not p.is_file() for p in (tmp_path / "mail").rglob("*"))
    assert {p.name for p in tmp_path.iterdir()} <= {"mail"}


@pytest.mark.parametrize("folder", ["", ".", "..", "../x", "a/b", "Junk..x", "Junk.", "\x00",
                                    "..Junk", "a\nb"])
def test_unsafe_folders_refused(tmp_path: Path, folder: str) -> None:
    with pytest.raises(MaildirNameError):
        agent(tmp_path).deliver("bob@example.test", [b"x"], return_path="", delivered_to="d",
                                folder=folder)


@pytest.mark.parametrize("field", ["return_path", "delivered_to"])
def test_header_injection_refused(tmp_path: Path, field: str) -> None:
    kwargs = {"return_path": "", "delivered_to": "d", field: "a@b\nX-Evil: 1"}
    with pytest.raises(MaildirNameError):
        agent(tmp_path).deliver("bob@example.test", [b"x"], **kwargs)
    assert files(tmp_path / "mail" / "example.test" / "bob" / "new") == []


def test_batch_mixed_results_and_fewer_syncs(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    md = agent(tmp_path)
    for address in ("alice@example.test", "bob@example.test", "carol@other.test"):
        md.deliver(address, [b"warm"], return_path="", delivered_to="d")  # dirs exist now
    real_fsync = os.fsync
    synced: list[int] = []

    def counting_fsync(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    import postwright.delivery.maildir as maildir_module
    fs_syncs: list[Path] = []
    real_syncfs = maildir_module._syncfs

    def counting_syncfs(path: Path) -> None:
        fs_syncs.append(path)
        real_syncfs(path)

    monkeypatch.setattr(maildir_module, "_syncfs", counting_syncfs)
    items = [DeliveryItem(f"{name}@example.test", [b"m\r\n"], "s@x.test", f"{name}@example.test")
             for name in ("alice", "bob", "alice", "bob")]
    items.insert(2, DeliveryItem('"../x"@example.test', [b"m"], "", "d"))
    items.insert(3, DeliveryItem("alice@example.test", failing_body(), "", "d"))
    items.append(DeliveryItem("carol@other.test", [b"m"], "", "d", folder="Junk"))
    results = md.deliver_batch(items)
    assert isinstance(results[2], MaildirNameError)
    assert isinstance(results[3], OSError)
    good = [r for i, r in enumerate(results) if i not in (2, 3)]
    assert all(isinstance(r, Path) and r.is_file() for r in good)
    assert len({str(r) for r in good}) == 5
    # One fsync per file, one per touched new/ directory (alice, bob, carol's .Junk) and the
    # directories created on the way for the new .Junk folder.
    created_dirs = 5  # carol's .Junk, its tmp/new/cur, and the maildirfolder marker
    if maildir_module._SYNCFS is not None:
        # Linux: two syncfs calls for the whole batch (files, then links), no per-file fsync.
        assert len(fs_syncs) == 2
        assert len(synced) == created_dirs
    else:
        assert len(synced) == 5 + 3 + created_dirs
    box = tmp_path / "mail" / "example.test"
    assert len(files(box / "alice" / "new")) == 3 and files(box / "alice" / "tmp") == []
    assert len(files(box / "bob" / "new")) == 3
    assert len(files(tmp_path / "mail" / "other.test" / "carol" / ".Junk" / "new")) == 1


def test_batch_of_nothing(tmp_path: Path) -> None:
    assert agent(tmp_path).deliver_batch([]) == []


def test_first_delivery_clears_stale_tmp_files_and_keeps_fresh_ones(tmp_path: Path) -> None:
    md = agent(tmp_path)
    md.deliver("alice@example.test", [b"first\r\n"], return_path="s@x.test",
               delivered_to="alice@example.test")
    tmp = tmp_path / "mail" / "example.test" / "alice" / "tmp"
    stale, fresh = tmp / "1.M1P1Q1.crashed", tmp / "2.M2P2Q2.writing"
    stale.write_bytes(b"half a message")
    fresh.write_bytes(b"being written right now")
    old = time.time() - 40 * 3600
    os.utime(stale, (old, old))
    md.deliver("alice@example.test", [b"second\r\n"], return_path="s@x.test",
               delivered_to="alice@example.test")
    assert stale.exists()  # this process swept the Maildir once already, before they existed
    again = agent(tmp_path)  # a new agent process sweeps on its first delivery there
    again.deliver("alice@example.test", [b"third\r\n"], return_path="s@x.test",
                  delivered_to="alice@example.test")
    assert not stale.exists() and fresh.exists()
    assert len(list((tmp.parent / "new").iterdir())) == 3


def test_remembered_places_follow_address_and_folder(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Maildir paths are remembered per (address, folder); a full memory starts afresh, and
    a Maildir removed after it was remembered is made again."""
    import postwright.delivery.maildir as maildir_module
    monkeypatch.setattr(maildir_module, "_PLACES_MEMORY", 2)
    md = agent(tmp_path)
    box = tmp_path / "mail" / "example.test"
    plan = [("alice@example.test", None), ("alice@example.test", "Junk"),
            ("Bob+tag@example.test", None)] * 2
    for address, folder in plan:
        md.deliver(address, [b"m\r\n"], return_path="", delivered_to=address, folder=folder)
    assert len(files(box / "alice" / "new")) == 2
    assert len(files(box / "alice" / ".Junk" / "new")) == 2
    assert len(files(box / "bob" / "new")) == 2
    assert len(md._places) <= 2
    shutil.rmtree(box / "bob")
    md.deliver("bob@example.test", [b"m\r\n"], return_path="", delivered_to="bob")
    assert len(files(box / "bob" / "new")) == 1
