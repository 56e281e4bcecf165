"""Local submission: address checks, CRLF normalization, alias resolution, durable enqueue."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from postwright.delivery.routing import Router
from postwright.queue import QueueStore
from postwright.submit import SubmitError, canonical, check_address, compose, enqueue


def router() -> Router:
    return Router(local_domains=["example.test"],
                  aliases={"team@example.test": ["alice@example.test", "bob@example.test"]},
                  account_exists=lambda a: a in {"alice@example.test", "bob@example.test"})


@pytest.mark.parametrize("bad", ["a@b.test\r\nRCPT TO:<x@y>", "a\n@b.test", "a@b\0.test",
                                 "no-domain", "a@@b.test", "<a@b.test>x"])
def test_bad_addresses_are_refused(bad: str) -> None:
    with pytest.raises(SubmitError):
        check_address(bad, "to")


def test_line_ends_become_crlf() -> None:
    assert canonical(b"a\nb\rc\r\nd") == b"a\r\nb\r\nc\r\nd\r\n"
    assert canonical(b"") == b""


def test_compose_has_headers_and_refuses_header_injection() -> None:
    msg = compose(sender="a@example.test", recipients=["b@example.test"], subject="hi",
                  body=b"x\n", hostname="mx.example.test", now=0)
    head, _, body = msg.partition(b"\r\n\r\n")
    assert b"Subject: hi" in head and b"Message-ID: <" in head and body == b"x\r\n"
    assert b"\n" not in msg.replace(b"\r\n", b"")
    with pytest.raises(SubmitError):
        compose(sender="a@example.test", recipients=["b@example.test"],
                subject="x\r\nBcc: evil@x.test", body=b"", hostname="h.test")


def test_enqueue_resolves_aliases_and_is_durable(tmp_path: Path) -> None:
    async def run() -> str:
        store = QueueStore(tmp_path / "q")
        store.open()
        try:
            return await enqueue(store, router(), sender="alice@example.test",
                                 recipients=["team@example.test"], message=b"a\nb",
                                 hostname="mx.example.test")
        finally:
            await store.aclose()

    qid = asyncio.run(run())
    store = QueueStore(tmp_path / "q")
    store.open(readonly=True)
    msg = store.get(qid)
    assert [r.recipient.address for r in msg.recipients] == ["alice@example.test",
                                                             "bob@example.test"]
    assert msg.recipients[0].recipient.orcpt == "rfc822;team@example.test"
    with store.open_body(qid) as body:
        assert body.read() == b"a\r\nb\r\n"
    store.close()


def test_unknown_local_recipient_queues_nothing(tmp_path: Path) -> None:
    async def run() -> None:
        store = QueueStore(tmp_path / "q")
        store.open()
        try:
            with pytest.raises(SubmitError):
                await enqueue(store, router(), sender="alice@example.test",
                              recipients=["nobody@example.test"], message=b"x",
                              hostname="h.test")
            assert store.ids() == []
        finally:
            await store.aclose()

    asyncio.run(run())
