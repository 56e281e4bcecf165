"""Tests for relay control: only local domains without relay permission, no routing tricks."""

from __future__ import annotations

import pytest

from postwright.delivery.routing import Router
from postwright.policy.relay import (
    LITERAL_DENIED,
    RELAY_DENIED,
    ROUTING_DENIED,
    has_routing_chars,
    relay_check,
)
from postwright.protocol.address import Mailbox, parse_path
from postwright.protocol.reply import Reply

ROUTER = Router(local_domains=["example.test", "bücher.test", "xn--mnchen-3ya.test"],
                aliases={}, account_exists={"bob@example.test"}.__contains__)


def rcpt(text: str) -> Mailbox:
    """Parse a RCPT TO path as the session does."""
    path, rest = parse_path(text, smtputf8=True, allow_null=False, allow_postmaster=True)
    assert rest == ""
    assert path.mailbox is not None
    return path.mailbox


def check(text: str, may_relay: bool) -> Reply | None:
    return relay_check(rcpt(text), router=ROUTER, may_relay=may_relay)


@pytest.mark.parametrize("path", [
    "<bob@example.test>",
    "<BOB@EXAMPLE.TEST>",
    "<Bob@Example.Test>",
    "<nobody@example.test>",            # existence is routing's question, not relay's
    "<bob+tag@example.test>",
    "<Postmaster>",
    "<postmaster@example.test>",
    "<bob@bücher.test>",
    "<bob@BÜCHER.TEST>",
    "<bob@xn--bcher-kva.test>",
    "<bob@XN--BCHER-KVA.test>",
    "<bob@münchen.test>",                # configured as A-label, given as U-label
    "<bob@xn--mnchen-3ya.test>",
    "<@evil.test,@relay.test:bob@example.test>",  # the route is ignored
    '<"bob"@example.test>',
    '<"b o b"@example.test>',
])
@pytest.mark.parametrize("may_relay", [False, True])
def test_local_destinations_accepted(path: str, may_relay: bool) -> None:
    assert check(path, may_relay) is None


@pytest.mark.parametrize("path", [
    "<bob@remote.test>",
    "<bob@example.test.remote.test>",
    "<bob@sub.example.test>",
    "<bob@example.testx>",
    "<@example.test:bob@remote.test>",   # a route through us to elsewhere
    "<@example.test,@bücher.test:bob@remote.test>",
    "<bob@lİst.test>",
    "<bob@exampİe.test>",                # Turkish dotted capital I
    "<bob@examplе.test>",                # Cyrillic е
    "<bob@exampıe.test>",                # dotless i
    "<bob@bucher.test>",
])
def test_remote_destinations_need_relay_permission(path: str) -> None:
    refused = check(path, may_relay=False)
    assert refused == RELAY_DENIED
    assert check(path, may_relay=True) is None


@pytest.mark.parametrize("path", [
    '<"u@remote.test"@example.test>',     # quoted local part with @
    '<"u@remote.test"@EXAMPLE.TEST>',
    "<u%remote.test@example.test>",       # percent hack
    "<remote.test!u@example.test>",       # bang path
    '<"remote.test!u"@bücher.test>',
    "<u％remote.test@example.test>",      # fullwidth percent sign
    '<"u＠remote.test"@example.test>',    # fullwidth commercial at
    "<remote.test！u@example.test>",      # fullwidth exclamation mark
    "<@remote.test:u%remote.test@example.test>",
])
@pytest.mark.parametrize("may_relay", [False, True])
def test_routing_tricks_in_local_domains_refused(path: str, may_relay: bool) -> None:
    assert check(path, may_relay) == ROUTING_DENIED


@pytest.mark.parametrize("path", [
    "<bob@[127.0.0.1]>",
    "<bob@[IPv6:::1]>",
    "<postmaster@[192.0.2.1]>",
    "<@example.test:bob@[192.0.2.1]>",
])
@pytest.mark.parametrize("may_relay", [False, True])
def test_address_literals_refused(path: str, may_relay: bool) -> None:
    assert check(path, may_relay) == LITERAL_DENIED


def test_tricks_for_remote_domains_are_the_remote_domains_business() -> None:
    assert check("<u%other.test@remote.test>", may_relay=True) is None
    assert check("<u%other.test@remote.test>", may_relay=False) == RELAY_DENIED


def test_refusals_are_permanent_5_7_1() -> None:
    for reply in (RELAY_DENIED, ROUTING_DENIED, LITERAL_DENIED):
        assert reply.is_permanent and reply.code == 550 and reply.enhanced == "5.7.1"
        assert reply.enhanced == "5.7.1"
    assert RELAY_DENIED.to_bytes() == b"550 5.7.1 Relay access denied\r\n"


def test_has_routing_chars() -> None:
    assert not has_routing_chars("bob.smith+tag")
    for text in ("a@b", "a%b", "a!b", "a\uff20b", "a\uff05b", "a\ufe6bb", "a\uff01b"):
        assert has_routing_chars(text), text


def test_decision_agrees_with_routing() -> None:
    """Whatever relay control calls local, routing must not send elsewhere, and vice versa."""
    samples = ["bob@example.test", "BOB@Example.TEST", "bob@bücher.test", "bob@remote.test",
               "bob@münchen.test", "bob@MÜNCHEN.test", "bob@lİst.test", "bob@xn--bcher-kva.test"]
    for text in samples:
        mailbox = rcpt(f"<{text}>")
        accepted = relay_check(mailbox, router=ROUTER, may_relay=False) is None
        assert accepted == (ROUTER.resolve(mailbox).kind != "remote"), text


def test_sharp_s_domain_is_not_its_ss_spelling() -> None:
    router = Router(local_domains=["strasse.test"], aliases={}, account_exists=lambda a: True)
    assert relay_check(rcpt("<bob@straße.test>"), router=router, may_relay=False) == \
        RELAY_DENIED
