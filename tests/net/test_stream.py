"""The session's stream over a real loopback socket: input reaches the sink, timeouts fire.

The stream keeps one timer per connection across waits; these tests pin down that a wait
still times out after its own timeout, whatever the waits before it asked for.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from postwright.net.stream import Stream


async def _connected(body: Callable[[Stream, asyncio.StreamWriter], Awaitable[None]]) -> None:
    loop = asyncio.get_running_loop()
    made: asyncio.Future[Stream] = loop.create_future()

    def factory() -> Stream:
        stream = Stream()
        made.set_result(stream)
        return stream

    server = await loop.create_server(factory, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    _reader, writer = await asyncio.open_connection("127.0.0.1", port)
    stream = await made
    try:
        await body(stream, writer)
    finally:
        writer.close()
        await writer.wait_closed()
        stream.close()
        await stream.wait_closed()
        server.close()
        await server.wait_closed()


def test_input_reaches_the_sink_and_wakes_the_waiter() -> None:
    got: list[bytes] = []

    async def body(stream: Stream, client: asyncio.StreamWriter) -> None:
        stream.attach(got.append)
        client.write(b"NOOP\r\n")
        assert await stream.wait_data(5) is True
        assert b"".join(got) == b"NOOP\r\n"

    asyncio.run(_connected(body))


def test_a_wait_times_out_after_its_own_timeout_when_an_earlier_one_got_data() -> None:
    async def body(stream: Stream, client: asyncio.StreamWriter) -> None:
        stream.attach(lambda data: None)
        asyncio.get_running_loop().call_later(0.2, client.write, b"x")
        assert await stream.wait_data(0.4) is True  # woken by data after 0.2 s
        started = time.monotonic()
        # The timer set for the first wait fires 0.2 s into this one, finds a later
        # deadline and sets itself again: the wait still lasts its full 0.4 s.
        assert await stream.wait_data(0.4) is False
        assert time.monotonic() - started >= 0.35

    asyncio.run(_connected(body))


def test_a_shorter_wait_after_a_long_one_is_not_held_up() -> None:
    async def body(stream: Stream, client: asyncio.StreamWriter) -> None:
        stream.attach(lambda data: None)
        client.write(b"x")
        assert await stream.wait_data(60) is True
        started = time.monotonic()
        assert await stream.wait_data(0.2) is False
        assert time.monotonic() - started < 5

    asyncio.run(_connected(body))


def test_eof_ends_a_wait() -> None:
    async def body(stream: Stream, client: asyncio.StreamWriter) -> None:
        stream.attach(lambda data: None)
        client.write_eof()
        assert await stream.wait_data(60) is True
        assert stream.at_eof

    asyncio.run(_connected(body))


def test_an_answer_callback_can_take_input_and_wait_on() -> None:
    got: list[bytes] = []

    async def body(stream: Stream, client: asyncio.StreamWriter) -> None:
        stream.attach(got.append)
        calls: list[int] = []

        def answer() -> bool:  # the first input is handled here, the second ends the wait
            calls.append(len(got))
            if len(calls) == 1:
                stream.extend(0.6)
                return False
            return True

        loop = asyncio.get_running_loop()
        loop.call_later(0.1, client.write, b"one")
        loop.call_later(0.5, client.write, b"two")  # past the first timeout, not the new
        started = time.monotonic()
        assert await stream.wait_data(0.3, answer) is True
        assert time.monotonic() - started >= 0.45
        assert calls == [1, 2] and got == [b"one", b"two"]
        # After the wait the callback is not called again.
        client.write(b"three")
        assert await stream.wait_data(5) is True
        assert calls == [1, 2]

    asyncio.run(_connected(body))


def test_a_wait_extended_by_its_callback_still_times_out() -> None:
    async def body(stream: Stream, client: asyncio.StreamWriter) -> None:
        stream.attach(lambda data: None)

        def answer() -> bool:
            stream.extend(0.3)
            return False

        asyncio.get_running_loop().call_later(0.1, client.write, b"x")
        started = time.monotonic()
        assert await stream.wait_data(0.2, answer) is False
        assert time.monotonic() - started >= 0.35  # 0.1 s, then the extended 0.3 s

    asyncio.run(_connected(body))
