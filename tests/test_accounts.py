"""Tests for postwright.accounts: the JSON account store, its credentials and its locking."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import stat
import threading
import time
from pathlib import Path

import pytest
from argon2 import PasswordHasher

from postwright.accounts import (
    AccountError,
    AccountExistsError,
    AccountStore,
    InvalidAddressError,
    NoSuchAccountError,
    fold_address,
    saslprep,
    scram_sha256_credentials,
)
from postwright.errors import PostwrightError

# Cheap parameters where the cost of argon2 is not what a test is about.
FAST = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "accounts.json"


@pytest.fixture
def store(path: Path) -> AccountStore:
    return AccountStore(path, hasher=FAST)


@pytest.mark.parametrize(("text", "folded"), [
    ("alice@example.test", "alice@example.test"),
    ("Alice.Smith@EXAMPLE.Test", "alice.smith@example.test"),
    ("bob+tag@example.test", "bob+tag@example.test"),
    ("Bob@Bücher.Example", "bob@xn--bcher-kva.example"),
    ("Jörg@example.test", "jörg@example.test"),
])
def test_fold_address(text: str, folded: str) -> None:
    assert fold_address(text) == folded


@pytest.mark.parametrize("text", [
    "alice", "alice@", "@example.test", "alice@[127.0.0.1]", '"a b"@example.test',
    "a/b@example.test", "alice@example..test", "alice@example.test\n", "",
])
def test_fold_address_refuses(text: str) -> None:
    with pytest.raises(InvalidAddressError):
        fold_address(text)


def test_lifecycle(store: AccountStore, path: Path) -> None:
    assert store.list() == [] and not path.exists()
    assert store.add("Alice@Example.TEST", "correct horse") == "alice@example.test"
    store.add("bob@example.test", "battery staple")
    assert store.list() == ["alice@example.test", "bob@example.test"]
    assert store.exists("alice@example.test") and store.exists("ALICE@example.test")
    assert not store.exists("carol@example.test") and not store.exists("not an address")
    assert store.verify("alice@EXAMPLE.test", "correct horse")
    assert not store.verify("alice@example.test", "correct horsE")
    assert not store.verify("bob@example.test", "correct horse")
    assert not store.verify("carol@example.test", "correct horse")
    assert not store.verify("not an address", "correct horse")
    store.delete("BOB@example.test")
    assert store.list() == ["alice@example.test"]
    assert not store.verify("bob@example.test", "battery staple")


def test_file_is_private_and_holds_no_password(store: AccountStore, path: Path) -> None:
    store.add("alice@example.test", "Sekrit-Passw0rd")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    raw = path.read_bytes()
    assert b"Sekrit-Passw0rd" not in raw
    entry = json.loads(raw)["accounts"]["alice@example.test"]
    assert entry["argon2"].startswith("$argon2id$")
    assert entry["scram-sha-256"]["iterations"] == 4096
    assert len(base64.b64decode(entry["scram-sha-256"]["salt"])) == 16
    # atomic replacement leaves no temporary files behind
    assert sorted(p.name for p in path.parent.iterdir()) == ["accounts.json",
                                                             "accounts.json.lock"]


def test_errors(store: AccountStore) -> None:
    store.add("alice@example.test", "pw")
    with pytest.raises(AccountExistsError):
        store.add("ALICE@example.test", "other")
    with pytest.raises(NoSuchAccountError):
        store.delete("bob@example.test")
    with pytest.raises(NoSuchAccountError):
        store.set_password("bob@example.test", "pw")
    with pytest.raises(AccountError, match="empty"):
        store.add("bob@example.test", "")
    with pytest.raises(AccountError, match="NUL"):
        store.add("bob@example.test", "a\0b")
    with pytest.raises(InvalidAddressError):
        store.add("bob", "pw")
    assert issubclass(AccountError, PostwrightError)
    assert store.list() == ["alice@example.test"]


def test_set_password_replaces_both_credentials(store: AccountStore) -> None:
    store.add("alice@example.test", "old")
    before = store.scram("alice@example.test")
    store.set_password("alice@example.test", "new")
    after = store.scram("alice@example.test")
    assert before is not None and after is not None
    assert before.stored_key != after.stored_key and before.salt != after.salt
    assert store.verify("alice@example.test", "new")
    assert not store.verify("alice@example.test", "old")
    assert store.scram("nobody@example.test") is None


def test_another_instance_sees_changes_without_restart(path: Path) -> None:
    server = AccountStore(path, hasher=FAST)
    cli = AccountStore(path, hasher=FAST)
    assert not server.exists("alice@example.test")
    cli.add("alice@example.test", "pw")
    assert server.exists("alice@example.test")
    assert server.verify("alice@example.test", "pw")
    cli.set_password("alice@example.test", "pw2")
    assert server.verify("alice@example.test", "pw2")
    cli.delete("alice@example.test")
    assert not server.exists("alice@example.test")


def test_file_is_reread_only_when_its_signature_changes(store: AccountStore, path: Path) -> None:
    store.add("alice@example.test", "pw")
    assert store.exists("alice@example.test")
    # Rewrite in place with the same size, inode and mtime: the cached copy is still used.
    st = path.stat()
    text = path.read_bytes().replace(b"alice@", b"alicf@")
    with open(path, "r+b") as f:
        f.write(text)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert store.exists("alice@example.test") and not store.exists("alicf@example.test")
    # A new mtime makes the next lookup read the file again.
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert store.exists("alicf@example.test") and not store.exists("alice@example.test")


def test_concurrent_writers_lose_nothing(path: Path) -> None:
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            own = AccountStore(path, hasher=FAST)  # one store per "process"
            for i in range(5):
                own.add(f"user{n}-{i}@example.test", "pw")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(AccountStore(path).list()) == 40


def test_rehash_when_parameters_are_outdated(path: Path) -> None:
    AccountStore(path, hasher=FAST).add("alice@example.test", "pw")
    strong = PasswordHasher(time_cost=2, memory_cost=2048, parallelism=1)
    old_hash = json.loads(path.read_text())["accounts"]["alice@example.test"]["argon2"]
    assert strong.check_needs_rehash(old_hash)
    assert AccountStore(path, hasher=strong).verify("alice@example.test", "pw")
    new_hash = json.loads(path.read_text())["accounts"]["alice@example.test"]["argon2"]
    assert new_hash != old_hash and not strong.check_needs_rehash(new_hash)
    assert AccountStore(path, hasher=strong).verify("alice@example.test", "pw")


def test_unknown_user_costs_as_much_as_a_wrong_password(path: Path) -> None:
    store = AccountStore(path)  # the real argon2 parameters
    store.add("alice@example.test", "pw")

    def cost(address: str) -> float:
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            assert not store.verify(address, "wrong")
            best = min(best, time.perf_counter() - start)
        return best

    wrong, unknown = cost("alice@example.test"), cost("nobody@example.test")
    assert unknown > wrong * 0.5


def test_corrupt_file_is_reported(path: Path) -> None:
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    with pytest.raises(AccountError, match="corrupt"):
        AccountStore(path).list()
    path.write_text('{"version": 1, "accounts": {"a@b.test": {"argon2": 1}}}')
    with pytest.raises(AccountError, match="corrupt"):
        AccountStore(path).exists("a@b.test")


def test_scram_rfc7677_example() -> None:
    """RFC 7677 section 3: user "user", password "pencil"; check the client proof and the
    server signature of the example exchange against credentials we derive."""
    creds = scram_sha256_credentials(
        "pencil", salt=base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ=="), iterations=4096)
    nonce = "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
    auth_message = (f"n=user,r=rOprNGfwEbeRWgbNEkqO,r={nonce},s=W22ZaJ0SNY7soEsUEjb6gQ==,"
                    f"i=4096,c=biws,r={nonce}").encode()
    proof = base64.b64decode("dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
    signature = hmac.digest(creds.stored_key, auth_message, "sha256")
    client_key = bytes(a ^ b for a, b in zip(proof, signature, strict=True))
    assert hashlib.sha256(client_key).digest() == creds.stored_key
    server_signature = hmac.digest(creds.server_key, auth_message, "sha256")
    assert base64.b64encode(server_signature) == b"6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="


def test_stored_scram_matches_the_password(store: AccountStore) -> None:
    store.add("alice@example.test", "pencil")
    creds = store.scram("alice@example.test")
    assert creds is not None
    assert creds == scram_sha256_credentials("pencil", salt=creds.salt)


@pytest.mark.parametrize(("text", "prepared"), [  # RFC 4013 section 3 examples
    ("I\u00adX", "IX"), ("user", "user"), ("USER", "USER"), ("\u00aa", "a"), ("\u2168", "IX"),
    ("a\u00a0b", "a b"),
])
def test_saslprep(text: str, prepared: str) -> None:
    assert saslprep(text) == prepared


@pytest.mark.parametrize("text", ["\u0007", "\u0627\u0031", "a\ufffdb"])
def test_saslprep_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        saslprep(text)


def test_password_saslprep_refuses_still_works(store: AccountStore) -> None:
    store.add("alice@example.test", "bell\u0007")
    assert store.verify("alice@example.test", "bell\u0007")
    creds = store.scram("alice@example.test")
    assert creds is not None
    salted = hashlib.pbkdf2_hmac("sha256", "bell\u0007".encode(), creds.salt, 4096)
    assert creds.server_key == hmac.digest(salted, b"Server Key", "sha256")
