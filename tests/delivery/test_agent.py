"""The Maildir agent: its wire format, and a real child process delivering, dying, restarting."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

from postwright.delivery.agent import (
    AgentError,
    AgentItem,
    MaildirAgent,
    decode_reply,
    decode_request,
    encode_reply,
    encode_request,
    request_parts,
)
from postwright.delivery.maildir import MaildirNameError

BODY = b"Subject: hi\r\n\r\nline one\r\nline two\r\n"


def item(address: str = "alice@example.test", **kw: object) -> AgentItem:
    fields: dict[str, object] = {"return_path": "s@remote.test", "delivered_to": address,
                                 "head": b"Received: by mx.example.test\r\n", "body": BODY}
    fields.update(kw)
    return AgentItem(address, **fields)  # type: ignore[arg-type]


def test_request_round_trip_keeps_every_field() -> None:
    items = [item(), item("ü@exämple.test", folder="Junk", body=None,
                          body_path=Path("/q/bodies/ABC")), item(body=b"")]
    frame = encode_request(items)
    assert int.from_bytes(frame[:4], "big") == len(frame) - 4
    assert decode_request(frame[4:]) == items


def test_bodies_travel_after_the_description_as_they_are() -> None:
    first, second = b"a" * 70_000, b"b\r\n" * 10
    parts = request_parts([item(body=first), item("bob@example.test", body=second),
                           item("carol@example.test", body=first)])
    assert parts[2] is first and parts[3] is second and len(parts) == 4  # not copied
    frame = b"".join(parts)
    assert int.from_bytes(frame[:4], "big") == len(frame) - 4
    decoded = decode_request(frame[4:])
    assert [d.body for d in decoded] == [first, second, first]
    with pytest.raises(AgentError):
        decode_request(frame[4:] + b"x")  # more bytes than its bodies


def test_a_body_shared_by_many_recipients_crosses_the_pipe_once() -> None:
    body = b"x" * 100_000
    one = encode_request([item(body=body)])
    hundred = encode_request([item(f"u{i}@example.test", body=body) for i in range(100)])
    assert len(hundred) < len(one) + 100 * 200
    decoded = decode_request(hundred[4:])
    assert len(decoded) == 100 and all(d.body == body for d in decoded)
    assert decoded[99].address == "u99@example.test"


def test_reply_round_trip_maps_error_kinds() -> None:
    results: list[str | Exception] = ["/m/new/1,S=3", MaildirNameError("bad ../x"),
                                       OSError(28, "No space left on device")]
    out = decode_reply(encode_reply(results)[4:], 3)
    assert out[0] == "/m/new/1,S=3"
    assert isinstance(out[1], MaildirNameError) and "bad ../x" in str(out[1])
    assert isinstance(out[2], AgentError) and "No space left" in str(out[2])


@pytest.mark.parametrize("cut", [1, 5, 9, -10, -1])
def test_truncated_frames_are_errors(cut: int) -> None:
    payload = encode_request([item()])[4:]
    with pytest.raises(AgentError):
        decode_request(payload[:cut])
    with pytest.raises(AgentError):
        decode_reply(encode_reply([Path("/x")])[4:], 2)  # wrong count


def new_files(root: Path, local: str, folder: str = "") -> list[Path]:
    d = root / "example.test" / local / folder / "new"
    return sorted(d.iterdir()) if d.exists() else []


def test_child_delivers_a_batch_with_small_and_file_bodies(tmp_path: Path) -> None:
    big = tmp_path / "body"
    big.write_bytes(b"Subject: big\r\n\r\n" + b"x" * 70 + b"\r\n" * 1 + b"y\r\n" * 200_000)

    async def run() -> list[str | Exception]:
        agent = MaildirAgent(tmp_path / "mail", hostname="mx.example.test")
        try:
            return await agent.deliver_batch([
                item(), item("bob@example.test", body=None, body_path=big),
                item("carol@example.test", folder="Junk"), item("../evil@example.test")])
        finally:
            await agent.close()

    results = asyncio.run(run())
    root = tmp_path / "mail"
    [alice] = new_files(root, "alice")
    assert results[0] == str(alice)
    text = alice.read_bytes()
    assert text.startswith(b"Return-Path: <s@remote.test>\nDelivered-To: alice@example.test\n"
                           b"Received: by mx.example.test\n")
    assert text.endswith(b"line one\nline two\n") and b"\r" not in text
    [bob] = new_files(root, "bob")
    assert bob.read_bytes().count(b"y\n") == 200_000
    assert new_files(root, "carol", ".Junk") == [Path(str(results[2]))]
    assert isinstance(results[3], MaildirNameError)


def test_a_child_that_dies_mid_batch_fails_that_batch_and_is_restarted(tmp_path: Path) -> None:
    fifo = tmp_path / "stuck"
    os.mkfifo(fifo)  # nobody writes: the child blocks opening this body until it is killed

    async def run() -> None:
        agent = MaildirAgent(tmp_path / "mail", hostname="mx.example.test")
        try:
            first = await agent.deliver_batch([item()])
            assert isinstance(first[0], str)
            pid = agent.pid
            assert pid is not None
            stuck = asyncio.create_task(agent.deliver_batch(
                [item("bob@example.test"), item(body=None, body_path=fifo)]))
            await asyncio.sleep(0.3)
            assert not stuck.done()
            os.kill(pid, signal.SIGKILL)
            failed = await stuck
            assert len(failed) == 2 and all(isinstance(r, AgentError) for r in failed)
            again = await agent.deliver_batch([item("carol@example.test")])
            assert isinstance(again[0], str)
            assert agent.started == 2 and agent.pid != pid
            os.kill(agent.pid or 0, signal.SIGKILL)  # dead between batches: restarted quietly
            await asyncio.sleep(0.2)
            assert isinstance((await agent.deliver_batch([item("dave@example.test")]))[0], str)
            assert agent.started == 3
        finally:
            await agent.close()
        assert agent.pid is None

    asyncio.run(run())
    root = tmp_path / "mail"
    assert len(new_files(root, "alice")) == 1
    assert len(new_files(root, "carol")) == 1 and len(new_files(root, "dave")) == 1


def test_close_ends_the_child_and_sigint_does_not(tmp_path: Path) -> None:
    async def run() -> None:
        agent = MaildirAgent(tmp_path / "mail", hostname="mx.example.test")
        await agent.deliver_batch([item()])
        pid = agent.pid
        assert pid is not None
        os.kill(pid, signal.SIGINT)  # a Ctrl-C for the server's terminal
        await asyncio.sleep(0.2)
        assert isinstance((await agent.deliver_batch([item()]))[0], str)
        assert agent.started == 1
        await agent.close()
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)

    asyncio.run(run())
