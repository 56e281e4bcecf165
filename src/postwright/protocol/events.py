"""Events produced by the sans-IO SMTP server core (the h11 vocabulary, for SMTP).

Every event except :class:`MessageData` and :class:`ConnectionClosed` is owed exactly one
reply: the driver passes it to ``ServerConnection.send`` before the core yields another event.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

from .address import Path
from .params import MailParams, RcptParams
from .reply import Reply


class Sentinel(enum.Enum):
    NEED_DATA = "NEED_DATA"  # the core needs more bytes before it can say anything
    PAUSED = "PAUSED"  # the core waits for the reply to the last event


NEED_DATA: Final = Sentinel.NEED_DATA
PAUSED: Final = Sentinel.PAUSED


class Event:
    """Base of all events."""

    __slots__ = ()


# One event a command or a piece of content: Final fields and an __init__ of their own
# rather than frozen=True (see protocol.address). Subclasses call Command.__init__ by name:
# slots=True makes a new class, which a bare super() inside it does not know.
@dataclass(init=False, unsafe_hash=True, slots=True)
class Command(Event):
    """A well-formed command in a state that allows it; ``verb`` is upper case."""

    verb: Final[str]
    arg: Final[str]

    def __init__(self, verb: str, arg: str) -> None:
        self.verb = verb
        self.arg = arg


@dataclass(init=False, unsafe_hash=True, slots=True)
class Hello(Command):
    domain: Final[str]
    esmtp: Final[bool]

    def __init__(self, verb: str, arg: str, domain: str, esmtp: bool) -> None:
        Command.__init__(self, verb, arg)
        self.domain = domain
        self.esmtp = esmtp


@dataclass(init=False, unsafe_hash=True, slots=True)
class Mail(Command):
    path: Final[Path]
    params: Final[MailParams]

    def __init__(self, verb: str, arg: str, path: Path, params: MailParams) -> None:
        Command.__init__(self, verb, arg)
        self.path = path
        self.params = params


@dataclass(init=False, unsafe_hash=True, slots=True)
class Rcpt(Command):
    path: Final[Path]
    params: Final[RcptParams]

    def __init__(self, verb: str, arg: str, path: Path, params: RcptParams) -> None:
        Command.__init__(self, verb, arg)
        self.path = path
        self.params = params


@dataclass(init=False, unsafe_hash=True, slots=True)
class Auth(Command):
    mechanism: Final[str]
    initial: Final[str | None]  # initial response as sent ("=" means empty), None if absent

    def __init__(self, verb: str, arg: str, mechanism: str, initial: str | None) -> None:
        Command.__init__(self, verb, arg)
        self.mechanism = mechanism
        self.initial = initial


@dataclass(init=False, unsafe_hash=True, slots=True)
class AuthResponse(Event):
    """One line of a SASL exchange (RFC 4954 section 4), as sent ("*" means abort)."""

    data: Final[str]

    def __init__(self, data: str) -> None:
        self.data = data


@dataclass(init=False, unsafe_hash=True, slots=True)
class MessageData(Event):
    """A piece of the message content, unstuffed, with CRLF line ends."""

    data: Final[bytes]

    def __init__(self, data: bytes) -> None:
        self.data = data


@dataclass(init=False, unsafe_hash=True, slots=True)
class EndOfChunk(Event):
    """A non-final BDAT chunk was received whole (RFC 3030)."""

    size: Final[int]
    total: Final[int]

    def __init__(self, size: int, total: int) -> None:
        self.size = size
        self.total = total


@dataclass(init=False, unsafe_hash=True, slots=True)
class EndOfMessage(Event):
    """The content is complete. ``error`` is set when the core refuses it (size, bare CR/LF);
    the driver must then send that reply and discard what it stored."""

    size: Final[int]
    error: Final[Reply | None]

    def __init__(self, size: int, error: Reply | None = None) -> None:
        self.size = size
        self.error = error


@dataclass(init=False, unsafe_hash=True, slots=True)
class BadCommand(Event):
    """Input the core refuses; the driver sends ``reply`` and closes if ``fatal``."""

    reply: Final[Reply]
    fatal: Final[bool]
    detail: Final[str]

    def __init__(self, reply: Reply, fatal: bool = False, detail: str = "") -> None:
        self.reply = reply
        self.fatal = fatal
        self.detail = detail


@dataclass(frozen=True, slots=True)
class ConnectionClosed(Event):
    """The peer closed its side (EOF)."""
