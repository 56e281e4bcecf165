"""DATA framing on its own: dot_stuff and DataDecoder (RFC 5321 sections 4.1.1.4, 4.5.2).

The property-based round trip (random bodies, random splits) is in test_server_hypothesis.py.
"""

from __future__ import annotations

import pytest

from postwright.protocol.dotstuff import DataDecoder, dot_stuff


def decode(wire: bytes, step: int = 0) -> tuple[bytes, DataDecoder, bytearray]:
    """Feed ``wire`` whole (step 0) or ``step`` bytes at a time; return content, decoder and
    whatever was left after the terminator."""
    dec = DataDecoder()
    buf = bytearray()
    out = b""
    pieces = [wire] if step == 0 else [wire[i:i + step] for i in range(0, len(wire), step)]
    for piece in pieces:
        buf += piece
        out += dec.feed(buf)
    return out, dec, buf


@pytest.mark.parametrize(("body", "wire"), [
    (b"", b".\r\n"),
    (b"a\r\n", b"a\r\n.\r\n"),
    (b"abc", b"abc\r\n.\r\n"),  # a missing last CRLF is added
    (b".", b"..\r\n.\r\n"),  # leading dot
    (b".x\r\n", b"..x\r\n.\r\n"),
    (b"a\r\n.\r\nb\r\n", b"a\r\n..\r\nb\r\n.\r\n"),
    (b"a\r\n..\r\n", b"a\r\n...\r\n.\r\n"),
    (b"\r\n", b"\r\n.\r\n"),
    (b"\r\n.", b"\r\n..\r\n.\r\n"),
])
def test_dot_stuff(body: bytes, wire: bytes) -> None:
    assert dot_stuff(body) == wire


@pytest.mark.parametrize("body", [b"", b"a\r\n", b".\r\n", b"..\r\n", b"\r\n\r\n",
                                  b".a\r\n.b\r\n..c\r\n", b"x\r\n.\r\n.\r\n", b"a.b\r\n",
                                  # no dotted line, or the first one far into the body
                                  b"x" * 300 + b"\r\nyz\r\n", b"x" * 300 + b"\r\n.y\r\nz\r\n"])
@pytest.mark.parametrize("step", [0, 1, 2, 3, 5])
def test_round_trip(body: bytes, step: int) -> None:
    out, dec, rest = decode(dot_stuff(body) + b"NEXT", step)
    assert out == body and dec.done and dec.clean
    assert rest == b"NEXT"  # what follows the terminator is left for the commands


def test_empty_message() -> None:
    out, dec, rest = decode(b".\r\n")
    assert (out, dec.done, bytes(rest)) == (b"", True, b"")


def test_empty_message_in_pieces() -> None:
    dec = DataDecoder()
    buf = bytearray()
    assert dec.feed(buf) == b"" and not dec.done  # nothing yet: nothing happens
    for piece in (b".", b"\r", b"\n"):
        buf += piece
        assert dec.feed(buf) == b""
    assert dec.done and buf == b""


def test_held_back_terminator_prefix() -> None:
    dec = DataDecoder()
    buf = bytearray(b"abc\r\n.")
    assert dec.feed(buf) == b"abc" and not dec.done  # "\r\n." may begin the end
    buf += b"x\r\n"
    assert dec.feed(buf) == b"\r\nx" and not dec.done  # it did not: the dot is unstuffed
    buf += b".\r\n"
    assert dec.feed(buf) == b"\r\n" and dec.done


def test_feed_after_done_returns_nothing() -> None:
    dec = DataDecoder()
    buf = bytearray(b"a\r\n.\r\nMAIL FROM:<x>\r\n")
    assert dec.feed(buf) == b"a\r\n" and dec.done
    assert dec.feed(buf) == b"" and buf == b"MAIL FROM:<x>\r\n"


@pytest.mark.parametrize(("wire", "flag"), [
    (b"a\nb\r\n.\r\n", "bare_lf"),
    (b"a\rb\r\n.\r\n", "bare_cr"),
    (b"a\x00b\r\n.\r\n", "nul"),
    (b"\n.\n\r\n.\r\n", "bare_lf"),
    (b"a\r\r\n.\r\n", "bare_cr"),
    (b"a\r\n.\r\r\n.\r\n", "bare_cr"),
])
@pytest.mark.parametrize("step", [0, 1, 2])
def test_bad_line_ends_are_flagged(wire: bytes, flag: str, step: int) -> None:
    _, dec, _ = decode(wire, step)
    assert dec.done and not dec.clean
    assert getattr(dec, flag)
    assert [f for f in ("bare_cr", "bare_lf", "nul") if getattr(dec, f)] == [flag]


@pytest.mark.parametrize("wire", [b"a\n.\n", b"a\r.\r\n", b"a\r\n.\n", b"a\n.\r\n",
                                  b"a\r\n.x\r\n", b"a\r\n. \r\n", b"a\r\n\x00.\r\n"])
@pytest.mark.parametrize("step", [0, 1])
def test_only_crlf_dot_crlf_ends(wire: bytes, step: int) -> None:
    _, dec, _ = decode(wire, step)
    assert not dec.done
    _, dec, rest = decode(wire + b"\r\n.\r\nNEXT", step)
    assert dec.done and rest == b"NEXT"
