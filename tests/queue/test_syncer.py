"""Tests for the queue's sync process: a real child, real descriptors passed over a socket."""

from __future__ import annotations

import asyncio
import errno
import os
import select
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from postwright.envelope import Envelope, Recipient
from postwright.errors import QueueError
from postwright.queue import QueueStore
from postwright.queue.sync import Syncer, SyncerGone


def answers(syncer: Syncer) -> tuple[int | None, OSError | None]:
    """Wait until the child has answered, then read what it said."""
    ready, _, _ = select.select([syncer.fileno()], [], [], 10)
    assert ready, "no answer from the sync process"
    return syncer.answers()


def sync(syncer: Syncer, *fds: int) -> None:
    syncer.start()
    token = syncer.send(fds)
    synced, error = answers(syncer)
    if error is not None:
        raise error
    assert synced == token


def dead(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie until its parent reaps it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def wait_dead(pid: int) -> None:
    deadline = time.monotonic() + 10
    while not dead(pid):
        assert time.monotonic() < deadline, f"process {pid} still alive"
        time.sleep(0.01)


@pytest.fixture
def syncer() -> Iterator[Syncer]:
    made = Syncer()
    yield made
    made.stop()


@pytest.fixture
def fd(tmp_path: Path) -> Iterator[int]:
    """A file to sync, open for writing."""
    opened = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT)
    yield opened
    os.close(opened)


@pytest.fixture
def dfd(tmp_path: Path) -> Iterator[int]:
    """Its directory."""
    opened = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    yield opened
    os.close(opened)


def test_syncs_a_file_and_its_directory(syncer: Syncer, fd: int, dfd: int,
                                        tmp_path: Path) -> None:
    os.write(fd, b"data")
    sync(syncer, dfd, fd)  # no exception: synced
    sync(syncer, fd)
    # The child closed its copies; ours still work.
    os.write(fd, b"more")
    assert (tmp_path / "f").read_bytes() == b"datamore"


def test_requests_sent_during_a_sync_share_the_next_one(syncer: Syncer, fd: int,
                                                        dfd: int) -> None:
    sync(syncer, fd)
    pid = syncer.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)  # as if busy in a long sync
    tokens = [syncer.send([fd]), syncer.send([dfd, fd]), syncer.send([fd])]
    os.kill(pid, signal.SIGCONT)
    assert answers(syncer) == (tokens[-1], None)  # one answer for all three
    assert syncer.answers() == (None, None)  # and no other


def test_a_failed_sync_comes_back_as_its_errno(syncer: Syncer) -> None:
    r, w = os.pipe()  # fdatasync on a pipe: EINVAL
    try:
        with pytest.raises(OSError) as caught:
            sync(syncer, w)
        assert not isinstance(caught.value, SyncerGone)
        assert caught.value.errno == errno.EINVAL
    finally:
        os.close(r)
        os.close(w)


def test_a_dead_child_is_reported_then_replaced(syncer: Syncer, fd: int) -> None:
    sync(syncer, fd)
    first = syncer.pid
    assert first is not None
    # Dies between requests: its socket says so, and the owner starts a new one.
    os.kill(first, signal.SIGKILL)
    wait_dead(first)
    with pytest.raises(SyncerGone):
        answers(syncer)
    syncer.stop()
    sync(syncer, fd)
    second = syncer.pid
    assert second is not None and second != first
    # Dies with a request in flight: reading its answer says so.
    os.kill(second, signal.SIGSTOP)
    syncer.send([fd])
    os.kill(second, signal.SIGKILL)
    with pytest.raises(SyncerGone):
        answers(syncer)
    syncer.stop()  # the owner's call, as the store makes it
    assert syncer.pid is None and not syncer.running
    sync(syncer, fd)


def test_ctrl_c_does_not_stop_it_closing_the_socket_does(syncer: Syncer, fd: int) -> None:
    sync(syncer, fd)
    pid = syncer.pid
    assert pid is not None
    os.kill(pid, signal.SIGINT)
    sync(syncer, fd)
    assert syncer.pid == pid
    sock = syncer._sock
    assert sock is not None
    sock.close()  # what the parent's death does too
    wait_dead(pid)
    syncer._sock = None


def test_requests_need_one_to_eight_descriptors(syncer: Syncer) -> None:
    with pytest.raises(ValueError):
        syncer.send([])
    with pytest.raises(ValueError):
        syncer.send(list(range(9)))
    with pytest.raises(SyncerGone):  # not started
        syncer.send([0])


def sync_process() -> int:
    """The pid of this process's queue sync child (there is one store open in the test).
    Looked for again for a moment: a child just started may not show its new command line
    yet (the exec is finishing)."""
    deadline = time.monotonic() + 10
    while True:
        found = []
        for task in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{task}/children") as f:
                children = f.read().split()
            for pid in children:
                with open(f"/proc/{pid}/cmdline", "rb") as c:
                    if b"syncer.py" in c.read():
                        found.append(int(pid))
        if len(found) == 1 or time.monotonic() > deadline:
            assert len(found) == 1, found
            return found[0]
        time.sleep(0.01)


def test_the_sync_process_dying_fails_only_the_batch_it_held(tmp_path: Path) -> None:
    store = QueueStore(tmp_path / "q")
    store.open()

    async def main() -> tuple[str, str, str]:
        async def put(body: bytes) -> str:
            writer = store.new_body()
            writer.write(body)
            return await store.commit(
                writer, Envelope("a@example.test", (Recipient("b@example.test"),)), now=1000.0)

        a = await put(b"one\r\n")
        first = sync_process()
        os.kill(first, signal.SIGKILL)  # between batches: the next one gets a new child
        wait_dead(first)
        b = await put(b"two\r\n")
        second = sync_process()
        assert second != first
        os.kill(second, signal.SIGSTOP)  # holds the next batch; then dies with it
        asyncio.get_running_loop().call_later(0.2, os.kill, second, signal.SIGKILL)
        with pytest.raises(QueueError, match="sync process"):
            await put(b"three\r\n")
        d = await put(b"four\r\n")
        return a, b, d

    a, b, d = asyncio.run(main())
    store.close()
    again = QueueStore(tmp_path / "q")
    again.open()
    # Nothing acknowledged is lost; the failed batch was cut off, never half-kept.
    assert sorted(again.ids()) == sorted([a, b, d])
    bodies = []
    for q in (a, b, d):
        with again.open_body(q) as f:
            bodies.append(f.read())
    again.close()
    assert bodies == [b"one\r\n", b"two\r\n", b"four\r\n"]


def test_a_server_starts_the_sync_process_up_front_and_close_ends_it(tmp_path: Path) -> None:
    store = QueueStore(tmp_path / "q")
    store.open()

    async def main() -> int:
        store.start_sync_process()
        return sync_process()  # there before any write

    pid = asyncio.run(main())
    store.close()
    assert dead(pid)  # closed and reaped: nothing left behind
