"""The envelope of a message: who sent it, to whom, and the ESMTP parameters that travel with it.

Value types only. Fields are data: a CR, LF or NUL in any text field is refused on
construction, so no envelope value can smuggle a header or a command later on.
Covers RFC 5321 section 2.3.1 (envelope), RFC 3461 (DSN parameters), RFC 6531 (SMTPUTF8).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final


def _clean(name: str, value: str | None) -> None:
    # Three plain "in" tests: this runs for every field of every envelope.
    if value and ("\r" in value or "\n" in value or "\0" in value):
        raise ValueError(f"envelope field {name} contains CR, LF or NUL")


# Made for every message: Final fields and an __init__ of their own rather than frozen=True,
# whose generated __init__ sets each field through object.__setattr__ (see protocol.address).
@dataclass(init=False, unsafe_hash=True, slots=True)
class Recipient:
    """One envelope recipient, after alias expansion."""

    address: Final[str]
    orcpt: Final[str | None]  # RFC 3461 ORCPT as "addr-type;address", decoded from xtext
    notify: Final[tuple[str, ...]]  # RFC 3461 NOTIFY keywords; empty when not given

    def __init__(self, address: str, orcpt: str | None = None,
                 notify: tuple[str, ...] = ()) -> None:
        _clean("address", address)
        _clean("orcpt", orcpt)
        for n in notify:
            _clean("notify", n)
        self.address = address
        self.orcpt = orcpt
        self.notify = notify

    def to_dict(self) -> dict[str, Any]:
        return {"address": self.address, "orcpt": self.orcpt, "notify": list(self.notify)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Recipient:
        return cls(str(d["address"]), d.get("orcpt"), tuple(d.get("notify") or ()))


@dataclass(init=False, slots=True)
class Envelope:
    sender: Final[str]  # "" is the null reverse-path
    recipients: Final[tuple[Recipient, ...]]
    body: Final[str]  # BODY= value: 7BIT, 8BITMIME or BINARYMIME
    smtputf8: Final[bool]
    ret: Final[str | None]  # RFC 3461 RET: FULL or HDRS
    envid: Final[str | None]  # RFC 3461 ENVID, decoded from xtext
    helo: Final[str]
    client_address: Final[str]
    received_at: Final[float]  # seconds since the epoch
    auth: Final[str | None]  # authenticated account, if any
    listener: Final[str]
    extra: Final[dict[str, str]]

    def __init__(self, sender: str, recipients: tuple[Recipient, ...], body: str = "7BIT",
                 smtputf8: bool = False, ret: str | None = None, envid: str | None = None,
                 helo: str = "", client_address: str = "", received_at: float = 0.0,
                 auth: str | None = None, listener: str = "smtp",
                 extra: dict[str, str] | None = None) -> None:
        extra = {} if extra is None else extra
        _clean("sender", sender)
        _clean("body", body)
        _clean("ret", ret)
        _clean("envid", envid)
        _clean("helo", helo)
        _clean("client_address", client_address)
        _clean("auth", auth)
        _clean("listener", listener)
        for k, v in extra.items():
            _clean(k, k)
            _clean(k, v)
        self.sender = sender
        self.recipients = recipients
        self.body = body
        self.smtputf8 = smtputf8
        self.ret = ret
        self.envid = envid
        self.helo = helo
        self.client_address = client_address
        self.received_at = received_at
        self.auth = auth
        self.listener = listener
        self.extra = extra

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
