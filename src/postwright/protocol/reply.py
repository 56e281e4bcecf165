"""SMTP replies as typed values (RFC 5321 section 4.2, RFC 3463 enhanced status codes).

A :class:`Reply` is a code, an optional enhanced status code and one or more text lines. It
renders itself to wire bytes; nothing else in postwright builds reply strings by hand.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final


# Final fields and an __init__ of its own rather than frozen=True (see protocol.address).
@dataclass(init=False, unsafe_hash=True, slots=True)
class Reply:
    code: Final[int]
    enhanced: Final[str | None]
    lines: Final[tuple[str, ...]]
    # The rendering with the enhanced code, kept once made: constant replies (module-level
    # values such as "250 2.1.5 Recipient ok") are then rendered once per process.
    _wire: bytes | None = field(default=None, init=False, repr=False, compare=False)

    def __init__(self, code: int, enhanced: str | None, *lines: str) -> None:
        if not 200 <= code <= 599:
            raise ValueError(f"reply code out of range: {code}")
        if enhanced is not None and enhanced[0] != str(code)[0]:
            raise ValueError(f"enhanced code {enhanced} does not match {code}")
        for line in lines:
            if "\r" in line or "\n" in line:
                raise ValueError("reply text must not contain CR or LF")
        self.code = code
        self.enhanced = enhanced
        self.lines = tuple(lines) or ("",)
        self._wire = None

    @property
    def text(self) -> str:
        return " ".join(self.lines)

    @property
    def is_positive(self) -> bool:
        return self.code < 400

    @property
    def is_transient(self) -> bool:
        return 400 <= self.code < 500

    @property
    def is_permanent(self) -> bool:
        return self.code >= 500

    def to_bytes(self, enhanced: bool = True) -> bytes:
        """Render as wire bytes; ``enhanced=False`` omits the enhanced status code."""
        if enhanced:
            wire = self._wire
            if wire is None:
                wire = self._render(True)
                self._wire = wire
            return wire
        return self._render(False)

    def _render(self, enhanced: bool) -> bytes:
        prefix = f"{self.enhanced} " if enhanced and self.enhanced else ""
        out = []
        last = len(self.lines) - 1
        for i, line in enumerate(self.lines):
            sep = " " if i == last else "-"
            text = f"{prefix}{line}" if line or prefix else ""
            line_out = f"{self.code}{sep}{text}"
            if text == "" and not (self.code == 334 and sep == " "):
                # RFC 4954 continue-req is "334" SP [base64]; elsewhere no trailing space
                line_out = line_out.rstrip(" ")
            out.append(line_out + "\r\n")
        return "".join(out).encode("utf-8")

    def __str__(self) -> str:
        head = f"{self.code} {self.enhanced} " if self.enhanced else f"{self.code} "
        return head + self.text

    @classmethod
    def parse_line(cls, line: str) -> Reply:
        """Parse one rendered reply line (as kept in queue records) back into a Reply."""
        parts = line.split(" ", 2)
        code = int(parts[0][:3])
        rest = line[4:]
        first = rest.split(" ", 1)
        if first and _looks_enhanced(first[0], code):
            return cls(code, first[0], first[1] if len(first) > 1 else "")
        return cls(code, None, rest)


def _looks_enhanced(token: str, code: int) -> bool:
    parts = token.split(".")
    return (
        len(parts) == 3
        and all(p.isdigit() for p in parts)
        and parts[0] == str(code)[0]
    )
