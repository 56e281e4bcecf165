"""The envelope of a message: who sent it, to whom, and the ESMTP parameters that travel with it.

Value types only. Fields are data: a CR, LF or NUL in any text field is refused on
construction, so no envelope value can smuggle a header or a command later on.
Covers RFC 5321 section 2.3.1 (envelope), RFC 3461 (DSN parameters), RFC 6531 (SMTPUTF8).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


def _clean(name: str, value: str | None) -> None:
    # Three plain "in" tests: this runs for every field of every envelope.
    if value and ("\r" in value or "\n" in value or "\0" in value):
        raise ValueError(f"envelope field {name} contains CR, LF or NUL")


@dataclass(frozen=True, slots=True)
class Recipient:
    """One envelope recipient, after alias expansion."""

    address: str
    orcpt: str | None = None  # RFC 3461 ORCPT as "addr-type;address", decoded from xtext
    notify: tuple[str, ...] = ()  # RFC 3461 NOTIFY keywords; empty when not given

    def __post_init__(self) -> None:
        _clean("address", self.address)
        _clean("orcpt", self.orcpt)
        for n in self.notify:
            _clean("notify", n)

    def to_dict(self) -> dict[str, Any]:
        return {"address": self.address, "orcpt": self.orcpt, "notify": list(self.notify)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Recipient:
        return cls(str(d["address"]), d.get("orcpt"), tuple(d.get("notify") or ()))


@dataclass(frozen=True, slots=True)
class Envelope:
    sender: str  # "" is the null reverse-path
    recipients: tuple[Recipient, ...]
    body: str = "7BIT"  # BODY= value: 7BIT, 8BITMIME or BINARYMIME
    smtputf8: bool = False
    ret: str | None = None  # RFC 3461 RET: FULL or HDRS
    envid: str | None = None  # RFC 3461 ENVID, decoded from xtext
    helo: str = ""
    client_address: str = ""
    received_at: float = 0.0  # seconds since the epoch
    auth: str | None = None  # authenticated account, if any
    listener: str = "smtp"
    extra: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _clean("sender", self.sender)
        _clean("body", self.body)
        _clean("ret", self.ret)
        _clean("envid", self.envid)
        _clean("helo", self.helo)
        _clean("client_address", self.client_address)
        _clean("auth", self.auth)
        _clean("listener", self.listener)
        for k, v in self.extra.items():
            _clean(k, k)
            _clean(k, v)

    def to_dict(self) -> dict[str, Any]:
        # Spelled out rather than dataclasses.asdict: this runs for every queued message.
        return {
            "sender": self.sender, "recipients": [r.to_dict() for r in self.recipients],
            "body": self.body, "smtputf8": self.smtputf8, "ret": self.ret,
            "envid": self.envid, "helo": self.helo, "client_address": self.client_address,
            "received_at": self.received_at, "auth": self.auth, "listener": self.listener,
            "extra": dict(self.extra),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Envelope:
        return cls(
            sender=str(d["sender"]),
            recipients=tuple(Recipient.from_dict(r) for r in d["recipients"]),
            body=str(d.get("body", "7BIT")),
            smtputf8=bool(d.get("smtputf8", False)),
            ret=d.get("ret"),
            envid=d.get("envid"),
            helo=str(d.get("helo", "")),
            client_address=str(d.get("client_address", "")),
            received_at=float(d.get("received_at", 0.0)),
            auth=d.get("auth"),
            listener=str(d.get("listener", "smtp")),
            extra={str(k): str(v) for k, v in (d.get("extra") or {}).items()},
        )
