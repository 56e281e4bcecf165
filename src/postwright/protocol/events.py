"""Events produced by the sans-IO SMTP server core (the h11 vocabulary, for SMTP).

Every event except :class:`MessageData` and :class:`ConnectionClosed` is owed exactly one
reply: the driver passes it to ``ServerConnection.send`` before the core yields another event.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .address import Path
from .params import MailParams, RcptParams
from .reply import Reply


class Sentinel(enum.Enum):
    NEED_DATA = "NEED_DATA"  # the core needs more bytes before it can say anything
    PAUSED = "PAUSED"  # the core waits for the reply to the last event


NEED_DATA = Sentinel.NEED_DATA
PAUSED = Sentinel.PAUSED


class Event:
    """Base of all events."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Command(Event):
    """A well-formed command in a state that allows it; ``verb`` is upper case."""

    verb: str
    arg: str


@dataclass(frozen=True, slots=True)
class Hello(Command):
    domain: str
    esmtp: bool


@dataclass(frozen=True, slots=True)
class Mail(Command):
    path: Path
    params: MailParams


@dataclass(frozen=True, slots=True)
class Rcpt(Command):
    path: Path
    params: RcptParams


@dataclass(frozen=True, slots=True)
class Auth(Command):
    mechanism: str
    initial: str | None  # initial response as sent ("=" means empty), None if absent


@dataclass(frozen=True, slots=True)
class AuthResponse(Event):
    """One line of a SASL exchange (RFC 4954 section 4), as sent ("*" means abort)."""

    data: str


@dataclass(frozen=True, slots=True)
class MessageData(Event):
    """A piece of the message content, unstuffed, with CRLF line ends."""

    data: bytes


@dataclass(frozen=True, slots=True)
class EndOfChunk(Event):
    """A non-final BDAT chunk was received whole (RFC 3030)."""

    size: int
    total: int


@dataclass(frozen=True, slots=True)
class EndOfMessage(Event):
    """The content is complete. ``error`` is set when the core refuses it (size, bare CR/LF);
    the driver must then send that reply and discard what it stored."""

    size: int
    error: Reply | None = None


@dataclass(frozen=True, slots=True)
class BadCommand(Event):
    """Input the core refuses; the driver sends ``reply`` and closes if ``fatal``."""

    reply: Reply
    fatal: bool = False
    detail: str = ""


@dataclass(frozen=True, slots=True)
class ConnectionClosed(Event):
    """The peer closed its side (EOF)."""
