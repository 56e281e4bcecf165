"""Tests for the in-memory queue index and the rule that decides when a segment may go."""

from __future__ import annotations

from postwright.envelope import Envelope, Recipient
from postwright.queue import QueuedMessage, RecipientState
from postwright.queue.index import QueueIndex
from postwright.queue.journal import RecordType
from postwright.queue.records import Op


def message_op(qid: str) -> Op:
    env = Envelope("a@x.test", (Recipient("b@x.test"),))
    msg = QueuedMessage(qid, env, 1, 10.0, False,
                        [RecipientState(env.recipients[0], "pending", 0, 10.0, None)])
    return Op(RecordType.MESSAGE, qid, msg)


def test_remove_in_a_later_segment_pins_it_while_the_message_segment_exists() -> None:
    index = QueueIndex()
    index.apply(message_op("X"), 1, 0, 100)
    index.apply(message_op("Y"), 1, 100, 100)
    index.active = 3
    index.apply(Op(RecordType.REMOVE, "X"), 2, 0, 30)
    assert index.live(1) == ["Y"] and index.live(2) == []
    assert index.blocked(2, {1, 2, 3})  # deleting 2 would bring X back
    assert not index.dirty
    index.apply(Op(RecordType.REMOVE, "Y"), 3, 0, 30)
    assert index.dirty  # segment 1 has nothing live any more
    assert not index.blocked(1, {1, 2, 3})
    index.forget(1)
    assert not index.blocked(2, {2, 3})


def test_status_hold_and_recommit() -> None:
    index = QueueIndex()
    index.apply(message_op("X"), 1, 0, 100)
    state = RecipientState(Recipient("-"), "deferred", 1, 99.0, "451")
    index.apply(Op(RecordType.STATUS, "X", updates={0: state, 5: state}), 1, 100, 40)
    index.apply(Op(RecordType.HOLD, "X"), 1, 140, 20)
    msg = index.entries["X"].msg
    assert msg.held and msg.recipients[0].status == "deferred"
    assert msg.recipients[0].recipient.address == "b@x.test"  # the envelope's, not the record's
    index.apply(message_op("X"), 2, 0, 120)  # re-committed by compaction
    assert index.live(1) == [] and index.live(2) == ["X"] and index.live_bytes(2) == 120
    assert index.blocked(2, {1, 2})
    index.apply(Op(RecordType.STATUS, "GONE", updates={0: state}), 2, 120, 40)  # ignored
    assert "GONE" not in index.entries
