"""What the queue stores: queued messages, recipient states, and the journal record payloads.

Value types (:class:`QueuedMessage`, :class:`RecipientState`, :class:`RecipientResult`,
:class:`RecoveryReport`) and the codec between an :class:`Op` (one change to the queue) and a
framed journal record. Payloads are JSON, so envelope values stay data: no CR, LF or NUL can
smuggle a field, and a record that does not decode to well-typed values is refused as damaged.
A MESSAGE payload is ``JSON length (4, big endian) | JSON header | body bytes (inline only)``.

No I/O here. Covers the envelope of RFC 5321 section 2.3.1 as stored data; the JSON shape of
:meth:`QueuedMessage.to_json` is the ``queue list --json`` object of CONTRACT.md.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, Final

import orjson

from ..envelope import Envelope, Recipient
from .journal import RecordType
from .journal import encode as frame

FINAL: Final = frozenset({"delivered", "failed"})
STATUSES: Final = frozenset({"pending", "deferred"}) | FINAL
_ID: Final = re.compile(r"[0-9A-Za-z_-]{1,64}")
_LENGTH: Final = struct.Struct(">I")


def rfc3339(when: float) -> str:
    """Seconds since the epoch as an RFC 3339 UTC timestamp (whole seconds)."""
    return datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# The values made for every message and every delivery: Final fields and an __init__ of
# their own rather than frozen=True (see protocol.address), and QueuedMessage's __init__
# written out, so that the compiled build compiles them too.
@dataclass(init=False, unsafe_hash=True, slots=True)
class RecipientResult:
    """The outcome of one delivery attempt for one recipient."""

    status: Final[str]  # delivered | deferred | failed
    reply: Final[str]

    def __init__(self, status: str, reply: str) -> None:
        self.status = status
        self.reply = reply


@dataclass(init=False, unsafe_hash=True, slots=True)
class RecipientState:
    recipient: Final[Recipient]
    status: Final[str]  # pending | deferred | delivered | failed
    attempts: Final[int]
    next_attempt: Final[float]
    last_reply: Final[str | None]

    def __init__(self, recipient: Recipient, status: str, attempts: int, next_attempt: float,
                 last_reply: str | None) -> None:
        self.recipient = recipient
        self.status = status
        self.attempts = attempts
        self.next_attempt = next_attempt
        self.last_reply = last_reply


@dataclass(init=False, slots=True)
class QueuedMessage:
    id: str
    envelope: Envelope
    size: int
    arrived: float
    held: bool
    recipients: list[RecipientState]

    def __init__(self, id: str, envelope: Envelope, size: int, arrived: float, held: bool,
                 recipients: list[RecipientState]) -> None:
        self.id = id
        self.envelope = envelope
        self.size = size
        self.arrived = arrived
        self.held = held
        self.recipients = recipients

    def to_json(self) -> dict[str, Any]:
        """The ``queue list --json`` object of CONTRACT.md."""
        return {
            "id": self.id,
            "sender": self.envelope.sender,
            "size": self.size,
            "arrived": rfc3339(self.arrived),
            "recipients": [
                {"address": r.recipient.address, "status": r.status, "attempts": r.attempts,
                 "next_attempt": None if r.status in FINAL else rfc3339(r.next_attempt),
                 "last_reply": r.last_reply}
                for r in self.recipients
            ],
            "held": self.held,
        }


@dataclass(frozen=True, slots=True)
class RecoveryEvent:
    """One thing :meth:`QueueStore.open` found and dealt with, ready for a log line."""

    kind: str  # truncated | quarantined
    segment: str
    offset: int
    length: int
    reason: str
    qid: str | None = None
    path: str | None = None  # where the quarantined bytes were put


@dataclass
class RecoveryReport:
    segments: int = 0
    records: int = 0  # valid records replayed
    messages: int = 0  # messages in the queue after recovery
    quarantined: int = 0
    truncated_bytes: int = 0
    incoming_removed: int = 0  # unfinished bodies from before the restart
    orphan_bodies: int = 0  # body files no message refers to
    events: list[RecoveryEvent] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.quarantined and not self.truncated_bytes

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def as_log(self) -> dict[str, Any]:
        """Flat fields for a log record's ``extra`` (no clash with LogRecord attributes)."""
        return {
            "messages": self.messages, "records": self.records, "segments": self.segments,
            "quarantined": self.quarantined, "truncated_bytes": self.truncated_bytes,
            "incoming_removed": self.incoming_removed, "orphan_bodies": self.orphan_bodies,
            "problems": [f"{e.kind} {e.segment}@{e.offset}+{e.length}"
                         f"{' ' + e.qid if e.qid else ''}: {e.reason}" for e in self.events],
        }


_NO_UPDATES: Final[Mapping[int, RecipientState]] = MappingProxyType({})


@dataclass(init=False, slots=True)
class Op:
    """One change to the queue, as written in one journal record."""

    rtype: Final[RecordType]
    qid: Final[str]
    message: Final[QueuedMessage | None]  # MESSAGE: the whole message with its state
    body_file: Final[bool]  # MESSAGE: body in bodies/<id> rather than inline
    crc: Final[int | None]  # MESSAGE: CRC32 of a body in its own file (inline: None)
    body_start: Final[int]  # MESSAGE: offset of the inline body in the payload
    updates: Final[Mapping[int, RecipientState]]  # STATUS

    def __init__(self, rtype: RecordType, qid: str, message: QueuedMessage | None = None,
                 body_file: bool = False, crc: int | None = None, body_start: int = 0,
                 updates: Mapping[int, RecipientState] = _NO_UPDATES) -> None:
        self.rtype = rtype
        self.qid = qid
        self.message = message
        self.body_file = body_file
        self.crc = crc
        self.body_start = body_start
        self.updates = updates


def _state(s: RecipientState) -> dict[str, Any]:
    return {"status": s.status, "attempts": s.attempts, "next_attempt": s.next_attempt,
            "last_reply": s.last_reply}


def _json(value: Any) -> bytes:
    # orjson: compact UTF-8 like json.dumps(separators=(",", ":"), ensure_ascii=False), about
    # fifteen times faster on a message record (a few µs of every message's commit).
    return orjson.dumps(value)


def encode(op: Op, body: bytes = b"") -> tuple[bytes, Op]:
    """Frame ``op`` as a journal record; returns it and the op with ``body_start`` set."""
    if op.rtype != RecordType.MESSAGE:
        doc: dict[str, Any] = {"id": op.qid}
        if op.rtype == RecordType.STATUS:
            doc["updates"] = [{"index": i, **_state(s)} for i, s in sorted(op.updates.items())]
        return frame(op.rtype, _json(doc)), op
    msg = op.message
    assert msg is not None
    header = _json({
        "v": 1, "id": msg.id, "envelope": msg.envelope.to_dict(), "arrived": msg.arrived,
        "size": msg.size, "body": "file" if op.body_file else "inline", "crc": op.crc,
        "held": msg.held, "recipients": [_state(s) for s in msg.recipients],
    })
    if not op.body_file and len(body) != msg.size:
        raise ValueError("inline body size does not match the message size")
    start = _LENGTH.size + len(header)
    data = frame(op.rtype, _LENGTH.pack(len(header)) + header + body)
    return data, Op(op.rtype, op.qid, msg, op.body_file, op.crc, start)


def _get(doc: Mapping[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    value = doc.get(key)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ValueError(f"field {key!r} missing or of the wrong type")
    return value


def _decode_state(doc: Any, recipient: Recipient) -> RecipientState:
    if not isinstance(doc, dict):
        raise ValueError("recipient state is not an object")
    status = _get(doc, "status", str)
    if status not in STATUSES:
        raise ValueError(f"unknown recipient status {status!r}")
    attempts = _get(doc, "attempts", int)
    if attempts < 0:
        raise ValueError("negative attempt count")
    reply = doc.get("last_reply")
    if reply is not None and not isinstance(reply, str):
        raise ValueError("last_reply is not a string")
    return RecipientState(recipient, status, attempts,
                          float(_get(doc, "next_attempt", (int, float))), reply)


def _qid(doc: Mapping[str, Any]) -> str:
    qid = _get(doc, "id", str)
    if not _ID.fullmatch(qid):
        raise ValueError("queue id is not filename-safe")
    return str(qid)


def decode(rtype: RecordType, payload: bytes) -> Op:
    """The Op a valid record stands for; ValueError if the payload does not make sense."""
    try:
        if rtype == RecordType.MESSAGE:
            return _decode_message(payload)
        doc = orjson.loads(payload)
        if not isinstance(doc, dict):
            raise ValueError("record is not a JSON object")
        qid = _qid(doc)
        if rtype != RecordType.STATUS:
            return Op(rtype, qid)
        updates: dict[int, RecipientState] = {}
        placeholder = Recipient("-")
        for item in _get(doc, "updates", list):
            if not isinstance(item, dict):
                raise ValueError("status update is not an object")
            updates[_get(item, "index", int)] = _decode_state(item, placeholder)
        return Op(rtype, qid, updates=updates)
    except (AttributeError, KeyError, TypeError, RecursionError) as exc:
        raise ValueError(f"{type(exc).__name__}: {exc}") from exc


def _decode_message(payload: bytes) -> Op:
    if len(payload) < _LENGTH.size:
        raise ValueError("message record too short")
    (length,) = _LENGTH.unpack_from(payload)
    start = _LENGTH.size + length
    if start > len(payload):
        raise ValueError("message header length out of range")
    doc = orjson.loads(payload[_LENGTH.size:start])
    if not isinstance(doc, dict) or doc.get("v") != 1:
        raise ValueError("unknown message record version")
    qid = _qid(doc)
    envelope = Envelope.from_dict(_get(doc, "envelope", dict))
    size = _get(doc, "size", int)
    body = _get(doc, "body", str)
    if body not in ("inline", "file") or size < 0:
        raise ValueError("bad body location or size")
    if body == "inline" and len(payload) - start != size:
        raise ValueError("inline body length does not match its size")
    states = _get(doc, "recipients", list)
    if len(states) != len(envelope.recipients) or not states:
        raise ValueError("recipient states do not match the envelope")
    crc = doc.get("crc")
    if crc is not None and not isinstance(crc, int):
        raise ValueError("crc is not an integer")
    msg = QueuedMessage(qid, envelope, size, float(_get(doc, "arrived", (int, float))),
                        bool(_get(doc, "held", bool)),
                        [_decode_state(s, r) for s, r in zip(states, envelope.recipients,
                                                             strict=True)])
    return Op(RecordType.MESSAGE, qid, msg, body == "file", crc, start)
