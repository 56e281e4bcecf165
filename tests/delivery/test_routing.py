"""Tests for recipient routing: local domains, accounts, plus-addresses, aliases, catch-alls."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pytest

from postwright.delivery.routing import (
    DEPTH_LIMIT,
    Resolution,
    Router,
    base_local_part,
    mailbox_key,
)
from postwright.protocol.address import AddressError, Mailbox, parse_mailbox, parse_path


class Accounts:
    """A plain set of accounts that remembers what it was asked."""

    def __init__(self, *names: str) -> None:
        self.names = set(names)
        self.asked: list[str] = []

    def __call__(self, address: str) -> bool:
        self.asked.append(address)
        return address in self.names


def router(*accounts: str, aliases: Mapping[str, Sequence[str]] | None = None,
           catchall: Mapping[str, str] | None = None,
           local: Sequence[str] = ("example.test", "other.test"),
           delimiter: str = "+") -> Router:
    return Router(local_domains=local, aliases=aliases or {}, account_exists=Accounts(*accounts),
                  catchall=catchall, recipient_delimiter=delimiter)


def mb(text: str) -> Mailbox:
    return parse_mailbox(text, smtputf8=True)


def resolve(r: Router, text: str) -> Resolution:
    return r.resolve(mb(text))


# --- mailbox_key and the plus part -------------------------------------------------------

@pytest.mark.parametrize(("address", "key"), [
    ("Bob+tag@EXAMPLE.test", ("bob", "example.test")),
    ("bob@example.test", ("bob", "example.test")),
    ("bob+a+b@example.test", ("bob", "example.test")),
    ("+tag@example.test", ("+tag", "example.test")),
    ('"Bob Smith"@example.test', ("bob smith", "example.test")),
    ("JÖRG@BÜCHER.test", ("jörg", "xn--bcher-kva.test")),
    ("jörg@xn--BCHER-kva.test", ("jörg", "xn--bcher-kva.test")),
])
def test_mailbox_key(address: str, key: tuple[str, str]) -> None:
    assert mailbox_key(address) == key


@pytest.mark.parametrize("address", ["bob", "bob@", "bob@[192.0.2.1]", "a\r\nb@example.test"])
def test_mailbox_key_refuses_non_mailboxes(address: str) -> None:
    with pytest.raises(ValueError):
        mailbox_key(address)


def test_base_local_part() -> None:
    assert base_local_part("bob+x") == "bob"
    assert base_local_part("bob-x", "+-") == "bob"
    assert base_local_part("bob-x+y", "+-") == "bob"
    assert base_local_part("bob+x", "") == "bob+x"
    assert base_local_part("+x") == "+x"


# --- domains -----------------------------------------------------------------------------

def test_local_domains_compare_as_lower_case_a_labels() -> None:
    r = router(local=["Example.TEST", "bücher.test", "xn--mnchen-3ya.test", "EXAMPLE.test"])
    assert r.local_domains == ("example.test", "xn--bcher-kva.test", "xn--mnchen-3ya.test")
    for name in ["example.test", "EXAMPLE.TEST", "BÜCHER.test", "xn--bcher-kva.test",
                 "XN--BCHER-KVA.TEST", "münchen.test", "MÜNCHEN.TEST", "xn--mnchen-3ya.test"]:
        assert r.is_local_domain(name), name
    for name in ["bucher.test", "example.test.evil", "evil.example.test", "[127.0.0.1]",
                 "", "exa mple.test", "lİst.test"]:
        assert not r.is_local_domain(name), name


def test_remote_domain_is_remote_with_the_address_as_target() -> None:
    r = router("bob@example.test")
    assert resolve(r, "Bob@Remote.test") == Resolution("remote", ("Bob@Remote.test",))
    assert resolve(r, "bob@[192.0.2.1]").kind == "remote"


def test_homoglyph_and_turkish_i_domains_stay_remote() -> None:
    r = router("bob@list.test", local=["list.test"])
    assert resolve(r, "bob@LIST.TEST").kind == "local"
    for domain in ["lİst.test", "lıst.test", "LİST.TEST", "lіst.test"]:  # last: Cyrillic і
        assert resolve(r, f"bob@{domain}").kind == "remote", domain


def test_bad_local_domain_is_a_config_error() -> None:
    with pytest.raises(ValueError):
        router(local=["[127.0.0.1]"])
    with pytest.raises(ValueError):
        router(local=["bad..domain"])


# --- accounts ----------------------------------------------------------------------------

def test_account_lookup_is_folded_and_plus_reaches_base() -> None:
    accounts = Accounts("bob@example.test", "jörg@xn--bcher-kva.test")
    r = Router(local_domains=["example.test", "bücher.test"], aliases={},
               account_exists=accounts)
    assert resolve(r, "BOB@EXAMPLE.TEST") == Resolution("local", ("bob@example.test",))
    assert resolve(r, "Bob+Lists@example.test") == Resolution("local",
                                                              ("bob+lists@example.test",))
    assert accounts.asked[-2:] == ["bob+lists@example.test", "bob@example.test"]
    assert resolve(r, "JÖRG@BÜCHER.TEST") == Resolution("local", ("jörg@xn--bcher-kva.test",))
    assert resolve(r, "alice@example.test") == Resolution("unknown", ())
    assert resolve(r, "alice+bob@example.test") == Resolution("unknown", ())


def test_targets_round_trip_through_mailbox_key() -> None:
    r = router('bob smith@example.test')
    res = resolve(r, '"Bob Smith+x"@example.test')
    assert res == Resolution("local", ('"bob smith+x"@example.test',))
    assert mailbox_key(res.targets[0]) == ("bob smith", "example.test")


def test_plus_addressing_can_be_turned_off_or_extended() -> None:
    assert resolve(router("bob@example.test", delimiter=""), "bob+x@example.test").kind == \
        "unknown"
    r = router("bob@example.test", delimiter="+-")
    assert resolve(r, "bob-x@example.test").kind == "local"


# --- aliases -----------------------------------------------------------------------------

def test_alias_one_to_many_with_remote_target_and_dedup() -> None:
    r = router("alice@example.test", "bob@example.test", aliases={
        "team@example.test": ["alice@example.test", "BOB@example.test", "bob+team@example.test",
                              "carol@remote.test", "carol@REMOTE.test", "Carol@remote.test",
                              "alice@example.test"],
    })
    res = resolve(r, "Team@Example.Test")
    assert res.kind == "local"
    # Remote local parts keep their case (RFC 5321 2.4): Carol and carol may differ.
    assert res.targets == ("alice@example.test", "bob@example.test", "carol@remote.test",
                           "Carol@remote.test")


def test_alias_recursive() -> None:
    r = router("alice@example.test", "bob@other.test", aliases={
        "all@example.test": ["staff@example.test", "ext@remote.test"],
        "staff@example.test": ["alice@example.test", "ops@other.test"],
        "ops@other.test": ["bob@other.test"],
    })
    assert resolve(r, "all@example.test").targets == (
        "alice@example.test", "bob@other.test", "ext@remote.test")


def test_exact_alias_before_base_and_alias_before_account() -> None:
    r = router("bob@example.test", "lists@example.test", "carol@example.test", aliases={
        "bob+lists@example.test": ["lists@example.test"],
        "carol@example.test": ["bob@example.test"],
    })
    assert resolve(r, "bob+lists@example.test").targets == ("lists@example.test",)
    assert resolve(r, "bob+other@example.test").targets == ("bob+other@example.test",)
    assert resolve(r, "carol@example.test").targets == ("bob@example.test",)
    # The base alias applies to plus forms too.
    assert resolve(r, "carol+x@example.test").targets == ("bob@example.test",)


def test_alias_loop_is_cut() -> None:
    r = router("carol@example.test", aliases={
        "a@example.test": ["b@example.test"],
        "b@example.test": ["a@example.test", "carol@example.test"],
    })
    assert resolve(r, "a@example.test").targets == ("carol@example.test",)
    assert resolve(r, "b@example.test").targets == ("carol@example.test",)
    pure = router(aliases={"a@example.test": ["b@example.test"],
                           "b@example.test": ["a@example.test"]},
                  catchall={"example.test": "c@remote.test"})
    # A pure loop reaches nothing; it must not leak to the catch-all either.
    assert resolve(pure, "a@example.test") == Resolution("unknown", ())


def test_alias_to_itself_keeps_a_copy() -> None:
    r = router("bob@example.test", aliases={
        "bob@example.test": ["bob@example.test", "bob@remote.test"]})
    assert resolve(r, "bob@example.test").targets == ("bob@example.test", "bob@remote.test")


def chain(n: int) -> dict[str, list[str]]:
    table = {f"a{i}@example.test": [f"a{i + 1}@example.test"] for i in range(n)}
    table[f"a{n}@example.test"] = ["end@remote.test"]
    return table


def test_alias_depth_limit() -> None:
    assert resolve(router(aliases=chain(DEPTH_LIMIT - 1)), "a0@example.test").targets == \
        ("end@remote.test",)
    assert resolve(router(aliases=chain(DEPTH_LIMIT + 5)), "a0@example.test") == \
        Resolution("unknown", ())


def test_wide_alias_fan_out_is_fast() -> None:
    members = [f"u{i}@example.test" for i in range(2000)]
    groups = {f"g{j}@example.test": members for j in range(10)}
    groups["all@example.test"] = list(groups)
    accounts = Accounts(*members)
    r = Router(local_domains=["example.test"], aliases=groups, account_exists=accounts)
    assert len(resolve(r, "all@example.test").targets) == 2000
    assert len(accounts.asked) == 2000  # each member looked up once, not once per group


def test_bad_alias_config_is_refused() -> None:
    with pytest.raises(ValueError, match="not in a local domain"):
        router(aliases={"x@remote.test": ["a@example.test"]})
    with pytest.raises(ValueError):
        router(aliases={"x@example.test": ["not an address"]})
    with pytest.raises(ValueError):
        router(aliases={"x@example.test": ["postmaster"]})
    with pytest.raises(ValueError):
        router(catchall={"remote.test": "a@example.test"})
    with pytest.raises(ValueError):
        router(catchall={"example.test": "nobody"})


# --- catch-all ---------------------------------------------------------------------------

def test_catchall_catches_only_unknown_addresses() -> None:
    r = router("bob@example.test", "catch@example.test",
               aliases={"team@example.test": ["bob@example.test"]},
               catchall={"EXAMPLE.test": "catch@example.test"})
    assert resolve(r, "nobody@example.test").targets == ("catch@example.test",)
    assert resolve(r, "bob@example.test").targets == ("bob@example.test",)
    assert resolve(r, "bob+x@example.test").targets == ("bob+x@example.test",)
    assert resolve(r, "team@example.test").targets == ("bob@example.test",)
    assert resolve(r, "nobody@other.test").kind == "unknown"


def test_catchall_to_alias_or_remote_and_catchall_loops() -> None:
    r = router("bob@example.test", aliases={"team@example.test": ["bob@example.test"]},
               catchall={"example.test": "team@example.test", "other.test": "x@remote.test"})
    assert resolve(r, "zz@example.test").targets == ("bob@example.test",)
    assert resolve(r, "zz@other.test") == Resolution("local", ("x@remote.test",))
    looping = router(catchall={"example.test": "x@other.test", "other.test": "y@example.test"})
    assert resolve(looping, "q@example.test") == Resolution("unknown", ())


# --- postmaster (RFC 5321 4.5.1) ---------------------------------------------------------

def bare_postmaster() -> Mailbox:
    path, _ = parse_path("<Postmaster>", smtputf8=False, allow_null=False,
                         allow_postmaster=True)
    assert path.mailbox is not None
    return path.mailbox


def test_bare_postmaster_goes_to_first_local_domain() -> None:
    r = router("alice@example.test",
               aliases={"postmaster@example.test": ["alice@example.test"]})
    assert r.resolve(bare_postmaster()) == Resolution("local", ("alice@example.test",))
    direct = router("postmaster@example.test")
    assert direct.resolve(bare_postmaster()).targets == ("postmaster@example.test",)


def test_postmaster_of_every_local_domain_falls_back_to_the_first() -> None:
    r = router("alice@example.test", aliases={"postmaster@example.test": ["alice@example.test"]})
    assert resolve(r, "POSTMASTER@other.test").targets == ("alice@example.test",)
    assert resolve(r, "postmaster+x@other.test").targets == ("alice@example.test",)
    with_catchall = router("alice@example.test", "c@other.test",
                           aliases={"postmaster@example.test": ["alice@example.test"]},
                           catchall={"other.test": "c@other.test"})
    assert resolve(with_catchall, "postmaster@other.test").targets == ("c@other.test",)


def test_postmaster_without_any_route_is_unknown() -> None:
    r = router()
    assert resolve(r, "postmaster@example.test") == Resolution("unknown", ())
    assert resolve(r, "postmaster@other.test") == Resolution("unknown", ())
    assert r.resolve(bare_postmaster()) == Resolution("unknown", ())
    assert router(local=[]).resolve(bare_postmaster()) == Resolution("unknown", ())


def test_address_error_is_a_value_error() -> None:
    assert issubclass(AddressError, ValueError)
