"""Line-end hygiene for counted content (BDAT chunks, RFC 3030).

A :class:`LineEndChecker` is fed consecutive pieces of a body and notices any CR not followed
by LF, any LF not preceded by CR, and any NUL, across piece boundaries. RFC 5321 section 2.3.8
allows CR and LF only together; mail that breaks this is the raw material of SMTP smuggling.
"""

from __future__ import annotations


class LineEndChecker:
    __slots__ = ("bare_cr", "bare_lf", "nul", "_pending_cr")

    def __init__(self) -> None:
        self.bare_cr = False
        self.bare_lf = False
        self.nul = False
        self._pending_cr = False

    def feed(self, data: bytes) -> None:
        if not data:
            return
        lead_lf = 0
        if self._pending_cr:
            if data[:1] == b"\n":
                lead_lf = 1
            else:
                self.bare_cr = True
        crlf = data.count(b"\r\n")
        trail_cr = 1 if data[-1:] == b"\r" else 0
        if data.count(b"\n") - crlf - lead_lf > 0:
            self.bare_lf = True
        if data.count(b"\r") - crlf - trail_cr > 0:
            self.bare_cr = True
        if data.find(b"\0") >= 0:  # not "in": see dotstuff._scan
            self.nul = True
        self._pending_cr = bool(trail_cr)

    def finish(self) -> bool:
        """End of content; True when every line end was a CRLF and no NUL was seen."""
        if self._pending_cr:
            self.bare_cr = True
            self._pending_cr = False
        return not (self.bare_cr or self.bare_lf or self.nul)
