"""Tests for queue record payloads and the queued-message JSON shape."""

from __future__ import annotations

import json

import pytest

from postwright.envelope import Envelope, Recipient
from postwright.queue import QueuedMessage, RecipientState
from postwright.queue.journal import HEADER_SIZE, RecordType
from postwright.queue.records import Op, decode, encode, rfc3339

ENV = Envelope("a@example.test", (Recipient("b@example.test", "rfc822;b@example.test",
                                            ("FAILURE",)), Recipient("c@example.test")),
               body="8BITMIME", smtputf8=True, envid="xyz", extra={"tls": "TLSv1.3"})


def message(held: bool = False) -> QueuedMessage:
    return QueuedMessage("0000ABCDEFGH0123", ENV, 4, 1700000000.5, held,
                         [RecipientState(r, "pending", 0, 1700000000.5, None)
                          for r in ENV.recipients])


def test_message_round_trip_with_inline_body() -> None:
    data, op = encode(Op(RecordType.MESSAGE, "0000ABCDEFGH0123", message(True), crc=7), b"body")
    payload = data[HEADER_SIZE:]
    assert payload[op.body_start:] == b"body"
    back = decode(RecordType.MESSAGE, payload)
    assert back.message == message(True) and back.body_start == op.body_start
    assert not back.body_file and back.crc == 7


def test_status_round_trip() -> None:
    state = RecipientState(Recipient("-"), "deferred", 2, 1800.0, "451 4.4.1 later")
    data, _ = encode(Op(RecordType.STATUS, "ID1", updates={1: state}))
    back = decode(RecordType.STATUS, data[HEADER_SIZE:])
    assert back.qid == "ID1" and back.updates == {1: state}


@pytest.mark.parametrize("payload", [
    b'{"id": "../x"}', b'{"id": 5}', b"[]", b"\xff", b'{"id":"A","updates":[{"index":0}]}',
    b'{"id":"A","updates":[{"index":0,"status":"lost","attempts":0,"next_attempt":1}]}',
])
def test_bad_payloads_are_refused(payload: bytes) -> None:
    with pytest.raises(ValueError):
        decode(RecordType.STATUS, payload)


def test_envelope_values_cannot_smuggle_lines() -> None:
    data, _ = encode(Op(RecordType.MESSAGE, "ID", message(), body_file=True))
    payload = data[HEADER_SIZE:]
    length = int.from_bytes(payload[:4], "big")
    doc = json.loads(payload[4:4 + length])
    doc["envelope"]["recipients"][0]["address"] = "b@x\r\nDATA"
    header = json.dumps(doc).encode()
    with pytest.raises(ValueError):
        decode(RecordType.MESSAGE, len(header).to_bytes(4, "big") + header)


def test_to_json_and_timestamps() -> None:
    msg = message()
    msg.recipients[1] = RecipientState(ENV.recipients[1], "delivered", 1, 1.0, "250 ok")
    out = msg.to_json()
    assert out["arrived"] == "2023-11-14T22:13:20Z" == rfc3339(1700000000.5)
    assert out["recipients"][0]["next_attempt"] == "2023-11-14T22:13:20Z"
    assert out["recipients"][1] == {"address": "c@example.test", "status": "delivered",
                                    "attempts": 1, "next_attempt": None,
                                    "last_reply": "250 ok"}
    json.dumps(out)
