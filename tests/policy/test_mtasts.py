"""MTA-STS record and policy parsing, MX pattern matching and the policy cache (RFC 8461)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from postwright.dnstypes import DnsTemporaryError
from postwright.policy.mtasts import MtaSts, Policy, PolicyError, parse_policy, parse_record

POLICY = "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.example.net\r\n" \
         "max_age: 86400\r\n"


# ---- TXT record (section 3.1) -------------------------------------------------------------

@pytest.mark.parametrize(("texts", "expected"), [
    (["v=STSv1; id=20160831085700Z;"], "20160831085700Z"),
    (["v=STSv1;id=abc"], "abc"),
    (["v=STSv1; id=abc; ext=x"], "abc"),
    (["v=spf1 -all", "v=STSv1; id=a1"], "a1"),
    (["v=STSv1; id=a1", "v=STSv1; id=a2"], None),  # two records: none
    (["v=STSv1; id=a-b"], None),  # id is letters and digits only
    (["v=STSv1; id=" + "a" * 33], None),
    (["v=STSv1"], None),
    (["id=abc; v=STSv1"], None),  # v must come first
    (["v=STSv2; id=abc"], None),
    ([], None),
])
def test_record(texts: list[str], expected: str | None) -> None:
    assert parse_record(texts) == expected


# ---- policy file (section 3.2) ------------------------------------------------------------

def test_policy_parses() -> None:
    policy = parse_policy(POLICY)
    assert policy == Policy(mode="enforce", max_age=86400,
                            mx=("mail.example.com", "*.example.net"))


def test_policy_with_lf_unknown_keys_and_spaces() -> None:
    text = "version: STSv1\nmode:testing\nfoo: bar\nmx: MX.Example.COM.  \nmax_age: 0\n"
    assert parse_policy(text) == Policy("testing", 0, ("mx.example.com",))


def test_mode_none_needs_no_mx() -> None:
    assert parse_policy("version: STSv1\nmode: none\nmax_age: 10\n").mx == ()


@pytest.mark.parametrize("text", [
    "mode: enforce\nmx: a.test\nmax_age: 5\n",  # no version
    "version: STSv2\nmode: enforce\nmx: a.test\nmax_age: 5\n",
    "version: STSv1\nmode: strict\nmx: a.test\nmax_age: 5\n",
    "version: STSv1\nmode: enforce\nmax_age: 5\n",  # no mx
    "version: STSv1\nmode: enforce\nmx: a.test\n",  # no max_age
    "version: STSv1\nmode: enforce\nmx: a.test\nmax_age: 31557601\n",
    "version: STSv1\nmode: enforce\nmx: a.test\nmax_age: -1\n",
    "version: STSv1\nmode: enforce\nmode: none\nmx: a.test\nmax_age: 5\n",
    "version: STSv1\nmode: enforce\nmx: a.*.test\nmax_age: 5\n",
    "<html>not a policy</html>\n",
])
def test_bad_policies(text: str) -> None:
    with pytest.raises(PolicyError):
        parse_policy(text)


# ---- MX matching (section 4.1) ------------------------------------------------------------

@pytest.mark.parametrize(("host", "allowed"), [
    ("mail.example.com", True),
    ("MAIL.example.com.", True),
    ("mx1.example.net", True),
    ("example.net", False),  # the wildcard needs one label
    ("a.b.example.net", False),  # and only one
    ("mail.example.com.evil.test", False),
    ("other.example.com", False),
    ("xexample.net", False),
])
def test_mx_matching(host: str, allowed: bool) -> None:
    assert parse_policy(POLICY).allows(host) is allowed


# ---- discovery and cache (sections 5.1, 10) -----------------------------------------------

class World:
    """DNS answers and policy files as plain dicts, a clock the test moves."""

    def __init__(self, path: Path | None = None) -> None:
        self.txt: dict[str, list[str] | Exception] = {}
        self.files: dict[str, str | Exception] = {}
        self.now = 1000.0
        self.sts = MtaSts(txt=self.lookup, fetch=self.fetch, clock=lambda: self.now, path=path)

    async def lookup(self, name: str) -> list[str]:
        answer = self.txt.get(name, [])
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def fetch(self, domain: str) -> str:
        body = self.files[domain]
        if isinstance(body, Exception):
            raise body
        return body

    def policy(self, domain: str = "example.com") -> Policy | None:
        return asyncio.run(self.sts.policy(domain))


def test_no_record_no_policy() -> None:
    world = World()
    assert world.policy() is None and world.sts.fetches == 0


def test_cached_while_the_id_stays() -> None:
    world = World()
    world.txt["_mta-sts.example.com"] = ["v=STSv1; id=1"]
    world.files["example.com"] = POLICY
    first = world.policy("Example.COM")
    assert first is not None and first.mode == "enforce"
    world.files["example.com"] = POLICY.replace("enforce", "testing")
    assert world.policy() == first and world.sts.fetches == 1
    world.txt["_mta-sts.example.com"] = ["v=STSv1; id=2"]  # new id: fetched again
    second = world.policy()
    assert second is not None and second.mode == "testing" and world.sts.fetches == 2


def test_expired_policy_is_fetched_again() -> None:
    world = World()
    world.txt["_mta-sts.example.com"] = ["v=STSv1; id=1"]
    world.files["example.com"] = POLICY
    world.policy()
    world.now += 86400
    world.policy()
    assert world.sts.fetches == 2


def test_failures_fall_back_to_the_unexpired_cache() -> None:
    world = World()
    world.txt["_mta-sts.example.com"] = ["v=STSv1; id=1"]
    world.files["example.com"] = POLICY
    cached = world.policy()
    assert cached is not None
    world.txt["_mta-sts.example.com"] = DnsTemporaryError("SERVFAIL")
    assert world.policy() == cached
    world.txt["_mta-sts.example.com"] = []  # record removed: cache still holds (5.1)
    assert world.policy() == cached
    world.txt["_mta-sts.example.com"] = ["v=STSv1; id=2"]
    world.files["example.com"] = PolicyError("connection refused")
    assert world.policy() == cached
    world.now += 86400  # and once it expired, there is no policy
    assert world.policy() is None


def test_fetch_failure_without_cache_means_no_policy() -> None:
    world = World()
    world.txt["_mta-sts.example.com"] = ["v=STSv1; id=1"]
    world.files["example.com"] = "garbage"
    assert world.policy() is None
    assert world.sts.cache == {}


def test_mode_none_is_cached_but_applies_nothing() -> None:
    world = World()
    world.txt["_mta-sts.example.com"] = ["v=STSv1; id=1"]
    world.files["example.com"] = "version: STSv1\nmode: none\nmax_age: 600\n"
    assert world.policy() is None
    assert world.policy() is None and world.sts.fetches == 1


# ---- the cache file -------------------------------------------------------------------------

def test_a_restart_keeps_the_policy_when_its_fetch_is_blocked(tmp_path: Path) -> None:
    path = tmp_path / "mta-sts.json"
    world = World(path)
    world.txt["_mta-sts.example.com"] = ["v=STSv1; id=1"]
    world.files["example.com"] = POLICY
    assert world.policy() is not None
    # "Restart": a new cache from the file; an attacker now blocks DNS and the HTTPS fetch.
    later = World(path)
    later.now = world.now + 3600
    later.txt["_mta-sts.example.com"] = DnsTemporaryError("SERVFAIL")
    later.files["example.com"] = PolicyError("connection reset")
    kept = later.policy()
    assert kept is not None and kept.mode == "enforce" and kept.allows("mail.example.com")
    assert later.sts.fetches == 0
    later.now = world.now + 86400 * 8  # past max_age (one day): no longer applies
    assert later.policy() is None


def test_expired_entries_are_not_loaded_and_a_bad_file_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "mta-sts.json"
    world = World(path)
    world.txt["_mta-sts.example.com"] = ["v=STSv1; id=1"]
    world.files["example.com"] = POLICY
    world.policy()
    stale = World.__new__(World)  # a world whose clock is past the entry's expiry
    stale.txt, stale.files, stale.now = {}, {}, world.now + 86400 * 30
    stale.sts = MtaSts(txt=stale.lookup, fetch=stale.fetch, clock=lambda: stale.now, path=path)
    assert stale.sts.cache == {}
    path.write_text("{not json")
    assert World(path).sts.cache == {}
    path.write_text('{"example.com": {"id": "1"}}')  # fields missing
    assert World(path).sts.cache == {}
