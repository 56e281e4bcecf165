"""QueueStore against real failures: SIGKILL at a random moment, and a disk that refuses writes.

Each test runs the store in a child process (a real crash, a real write error from the kernel)
and checks from the parent that every acknowledged message survived and nothing else appeared.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from postwright.queue import QueueStore

CHILD_PRELUDE = """
import asyncio, sys
from pathlib import Path
from postwright.envelope import Envelope, Recipient
from postwright.queue import QueueStore, RecipientResult

def body(i):
    return b"%d." % i * (i % 7 * 700 + 1)

ENV = Envelope("a@example.test", (Recipient("b@example.test"),))

def say(*words):
    sys.stdout.write(" ".join(str(w) for w in words) + "\\n")
    sys.stdout.flush()
"""

CRASH_CHILD = CHILD_PRELUDE + """
store = QueueStore(Path(sys.argv[1]), segment_size=64 * 1024, spill_threshold=4096)
store.open()
start = int(sys.argv[2])

async def worker(w):
    i = start + w
    while True:
        writer = store.new_body()
        writer.write(body(i))
        qid = await store.commit(writer, ENV, now=1000.0 + i)
        say("committed", i, qid)
        if i % 3 == 0:
            await store.record(qid, {0: RecipientResult("delivered", "250 ok")}, now=2000.0)
            say("removed", i, qid)
        elif i % 3 == 1:
            await store.record(qid, {0: RecipientResult("deferred", "451 later")}, now=2000.0)
            say("deferred", i, qid)
        i += 10

async def main():
    say("ready")
    await asyncio.gather(*(worker(w) for w in range(10)))

asyncio.run(main())
"""

FULL_DISK_CHILD = CHILD_PRELUDE + """
import resource, signal
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (150_000, 150_000))
store = QueueStore(Path(sys.argv[1]), segment_size=10_000_000, spill_threshold=1_000_000)
store.open()

async def one(i):
    writer = store.new_body()
    writer.write(body(i))
    if sys.argv[2] == "soon":  # the callback way (what a session uses for small messages)
        told = asyncio.get_running_loop().create_future()
        store.commit_soon(writer, ENV, now=1000.0 + i,
                          done=lambda qid, error: told.set_result((qid, error)))
        qid, error = await told
        if error is not None:
            say("failed", i, type(error).__name__)
        else:
            say("committed", i, qid)
        return
    try:
        qid = await store.commit(writer, ENV, now=1000.0 + i)
    except Exception as exc:
        say("failed", i, type(exc).__name__)
    else:
        say("committed", i, qid)

async def main():
    for i in range(0, 100, 5):
        await asyncio.gather(*(one(j) for j in range(i, i + 5)))
    await store.aclose()

asyncio.run(main())
"""


def body(i: int) -> bytes:
    return b"%d." % i * (i % 7 * 700 + 1)


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[2] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_sigkill_loses_no_acknowledged_message(tmp_path: Path) -> None:
    root = tmp_path / "q"
    rng = random.Random()
    committed: dict[str, int] = {}
    removed: set[str] = set()
    deferred: set[str] = set()
    for round_no in range(3):
        proc = subprocess.Popen([sys.executable, "-c", CRASH_CHILD, str(root),
                                 str(round_no * 1_000_000)],
                                stdout=subprocess.PIPE, env=child_env())
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"ready\n"
        time.sleep(rng.uniform(0.05, 0.6))
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        for line in out.decode().splitlines(keepends=True):
            if not line.endswith("\n"):
                continue  # cut short by the kill
            what, number, qid = line.split()
            if what == "committed":
                committed[qid] = int(number)
            elif what == "removed":
                removed.add(qid)
            else:
                deferred.add(qid)
        assert committed, "the child acknowledged nothing before it was killed"

        store = QueueStore(root, segment_size=64 * 1024, spill_threshold=4096)
        report = store.open()
        assert report.quarantined == 0, report.events
        present = set(store.ids())
        for qid, i in committed.items():
            if qid in removed:
                assert qid not in present
                continue
            if i % 3 == 0 and qid not in present:
                continue  # killed after its removal was durable, before the child said so
            assert qid in present, f"acknowledged message {qid} lost (round {round_no})"
            with store.open_body(qid) as f:
                assert f.read() == body(i)
            if qid in deferred:
                assert store.get(qid).recipients[0].status == "deferred"
        # in flight when killed: durable but never acknowledged, at most one per worker
        unacknowledged = present - set(committed)
        assert len(unacknowledged) <= 10 * (round_no + 1)
        for qid in unacknowledged:
            with store.open_body(qid) as f:
                data = f.read()
            assert data == body(int(data.split(b".")[0]))
        store.close()


@pytest.mark.parametrize("how", ["await", "soon"])
def test_failed_writes_are_reported_and_never_half_kept(tmp_path: Path, how: str) -> None:
    root = tmp_path / "q"
    done = subprocess.run([sys.executable, "-c", FULL_DISK_CHILD, str(root), how],
                          stdout=subprocess.PIPE, env=child_env(), timeout=60, check=True)
    ok: dict[str, int] = {}
    failed = 0
    for line in done.stdout.decode().splitlines():
        what, number, detail = line.split()
        if what == "committed":
            ok[detail] = int(number)
        else:
            assert detail == "QueueError"
            failed += 1
    assert failed > 0 and len(ok) > 20 and failed + len(ok) == 100

    store = QueueStore(root)
    report = store.open()
    assert report.clean, report.events
    assert set(store.ids()) == set(ok)
    for qid, i in ok.items():
        with store.open_body(qid) as f:
            assert f.read() == body(i)

    async def more() -> str:
        writer = store.new_body()
        writer.write(b"after")
        return await store.commit(writer, store.get(next(iter(ok))).envelope, now=5000.0)

    assert asyncio.run(more()) in store.ids()
    store.close()
