"""The exception tree of postwright.

One root, :class:`PostwrightError`. Protocol errors carry the :class:`Reply` that should be
sent to the peer: the text in that reply is generic, details belong in the log.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .protocol.reply import Reply


class PostwrightError(Exception):
    """Root of every exception postwright raises on purpose."""


class ProtocolError(PostwrightError):
    """A violation of the SMTP protocol; ``reply`` is what the peer should be told."""

    def __init__(self, reply: Reply, detail: str = "") -> None:
        super().__init__(detail or reply.text)
        self.reply = reply
        self.detail = detail


class LocalProtocolError(ProtocolError):
    """We tried to do something the protocol does not allow (our bug)."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol does not allow."""


class ConfigError(PostwrightError):
    """The configuration is invalid; ``key`` names the offending key (dotted path)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


class QueueError(PostwrightError):
    """The queue could not do what was asked (unknown id, storage failure)."""


class AgentError(OSError):
    """The Maildir agent process failed or broke its wire format (a temporary delivery
    failure). Here rather than in ``delivery.agent``: the compiled build cannot compile a
    subclass of OSError, and that module is compiled."""


class SyncerGone(OSError):
    """The queue's sync process is not running any more; what it was asked is not known to
    be done. (An OSError: the store handles it as a failed write. Here rather than in
    ``queue.sync``, which is compiled, and the compiled build cannot subclass OSError.)"""
