"""Accounts: local mailboxes and their AUTH credentials, kept in one JSON file under data_dir.

Per account the store keeps an argon2id hash (argon2-cffi ``PasswordHasher`` defaults) for
PLAIN and LOGIN, and SCRAM-SHA-256 credentials (RFC 5802 section 3, RFC 7677: salt,
iteration count, StoredKey, ServerKey) computed when the password is set; never the password.

The file is replaced atomically (temporary file, fsync, rename, fsync of the directory), has
mode 0600, and every change happens under an ``fcntl`` lock on ``<file>.lock`` after a fresh
read, so concurrent ``postwright user ...`` commands do not lose each other's updates. Readers
take no lock: a lookup stats the file once and re-reads it only when (mtime_ns, size, inode)
changed, which is how a running server sees new accounts without a restart.

Addresses are folded as the router folds them: local part lower-cased, domain a lower-case
A-label. It does not decide which domains are local (the caller does) and does not speak any
SASL mechanism; it only holds what the mechanisms need. ``verify`` costs one argon2 hash
(tens of milliseconds of CPU), so async callers should run it in a thread.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import hmac
import json
import logging
import os
import secrets
import stringprep
import tempfile
import threading
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from .errors import PostwrightError
from .protocol.address import AddressError, parse_mailbox

log = logging.getLogger("postwright.accounts")

SCRAM_ITERATIONS = 4096  # RFC 7677 section 4: at least 4096
SCRAM_SALT_SIZE = 16
_FORMAT_VERSION = 1
_Signature = tuple[int, int, int]  # (st_mtime_ns, st_size, st_ino)


class AccountError(PostwrightError):
    """An account operation failed; the message says why, for an operator."""


class InvalidAddressError(AccountError):
    """The text is not an address an account can have."""


class AccountExistsError(AccountError):
    pass


class NoSuchAccountError(AccountError):
    pass


@dataclass(frozen=True, slots=True)
class ScramCredentials:
    """What a SCRAM-SHA-256 server keeps for one user (RFC 5802 section 3)."""

    salt: bytes
    iterations: int
    stored_key: bytes
    server_key: bytes

    def to_json(self) -> dict[str, Any]:
        b64 = base64.b64encode
        return {"salt": b64(self.salt).decode(), "iterations": self.iterations,
                "stored_key": b64(self.stored_key).decode(),
                "server_key": b64(self.server_key).decode()}

    @classmethod
    def from_json(cls, data: Any) -> ScramCredentials:
        if not isinstance(data, dict) or not isinstance(data.get("iterations"), int):
            raise ValueError("bad SCRAM credentials")

        def b64(name: str) -> bytes:
            return base64.b64decode(str(data[name]), validate=True)

        return cls(b64("salt"), data["iterations"], b64("stored_key"), b64("server_key"))


def saslprep(text: str) -> str:
    """RFC 4013 SASLprep for a stored string (query profile: unassigned code points pass).

    Raises ValueError for prohibited characters or a bidi violation (RFC 3454 section 6).
    """
    mapped = "".join(" " if stringprep.in_table_c12(c) else c
                     for c in text if not stringprep.in_table_b1(c))
    prepared = unicodedata.ucd_3_2_0.normalize("NFKC", mapped)
    prohibited = (stringprep.in_table_c12, stringprep.in_table_c21_c22, stringprep.in_table_c3,
                  stringprep.in_table_c4, stringprep.in_table_c5, stringprep.in_table_c6,
                  stringprep.in_table_c7, stringprep.in_table_c8, stringprep.in_table_c9)
    if any(check(c) for c in prepared for check in prohibited):
        raise ValueError("prohibited character")
    if any(stringprep.in_table_d1(c) for c in prepared):
        if any(stringprep.in_table_d2(c) for c in prepared) or not (
                stringprep.in_table_d1(prepared[0]) and stringprep.in_table_d1(prepared[-1])):
            raise ValueError("bidirectional text not allowed here")
    return prepared


def scram_sha256_credentials(password: str, *, salt: bytes | None = None,
                             iterations: int = SCRAM_ITERATIONS) -> ScramCredentials:
    """SaltedPassword = PBKDF2-HMAC-SHA-256(SASLprep(password)); keys per RFC 5802 section 3.

    A password that SASLprep refuses is used as its raw UTF-8 (as PostgreSQL does), so every
    password that can be set also works with SCRAM from a client that does the same.
    """
    if salt is None:
        salt = secrets.token_bytes(SCRAM_SALT_SIZE)
    try:
        normalized = saslprep(password)
    except ValueError:
        normalized = password
    salted = hashlib.pbkdf2_hmac("sha256", normalized.encode("utf-8"), salt, iterations)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    server_key = hmac.digest(salted, b"Server Key", "sha256")
    return ScramCredentials(salt, iterations, hashlib.sha256(client_key).digest(), server_key)


def fold_address(address: str) -> str:
    """``Bob@Bücher.Example`` -> ``bob@xn--bcher-kva.example``; InvalidAddressError if the
    text cannot be an account (not an address, an address literal, a quoted local part or
    one with "/", which no Maildir folder could be named after)."""
    try:
        mailbox = parse_mailbox(address, smtputf8=True)
        if mailbox.domain is None or mailbox.domain.is_literal:
            raise AddressError("an account needs a domain name, not an address literal")
        domain = mailbox.domain.ascii()
    except AddressError as exc:
        raise InvalidAddressError(f"invalid address {address!r}: {exc}") from None
    local = mailbox.local_part.lower()
    if address.startswith('"') or "/" in local:
        raise InvalidAddressError(f"invalid address {address!r}: unusable as a mailbox name")
    return f"{local}@{domain}"


@dataclass(frozen=True, slots=True)
class _Account:
    argon2: str
    scram: ScramCredentials

    def to_json(self) -> dict[str, Any]:
        return {"argon2": self.argon2, "scram-sha-256": self.scram.to_json()}


_UNREAD: _Signature = (-1, -1, -1)


class AccountStore:
    """The accounts in ``path`` (normally ``config.accounts_path``).

    ``hasher`` is the argon2 ``PasswordHasher``; its defaults unless given (tests may pass a
    cheaper one). Safe to share between threads.
    """

    def __init__(self, path: Path, *, hasher: PasswordHasher | None = None) -> None:
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self._hasher = hasher or PasswordHasher()
        self._mutex = threading.Lock()
        self._accounts: dict[str, _Account] = {}
        self._signature: _Signature | None = _UNREAD
        self._dummy_hash: str | None = None

    # -- reading -------------------------------------------------------------------------

    def _current(self) -> dict[str, _Account]:
        """The accounts as on disk now: one stat, and a read only if the file changed."""
        try:
            st = os.stat(self.path)
            signature: _Signature | None = (st.st_mtime_ns, st.st_size, st.st_ino)
        except FileNotFoundError:
            signature = None
        with self._mutex:
            if signature != self._signature:
                self._accounts, self._signature = self._read()
            return self._accounts

    def _read(self) -> tuple[dict[str, _Account], _Signature | None]:
        try:
            with open(self.path, "rb") as f:
                st = os.fstat(f.fileno())
                raw = f.read()
        except FileNotFoundError:
            return {}, None
        except OSError as exc:
            raise AccountError(f"cannot read {self.path}: {exc.strerror}") from None
        try:
            data = json.loads(raw)
            if not isinstance(data, dict) or data.get("version") != _FORMAT_VERSION:
                raise ValueError(f"expected an object with version {_FORMAT_VERSION}")
            entries = data["accounts"]
            if not isinstance(entries, dict):
                raise ValueError("'accounts' is not an object")
            accounts = {}
            for name, entry in entries.items():
                if not isinstance(entry, dict) or not isinstance(entry.get("argon2"), str):
                    raise ValueError(f"bad entry for {name!r}")
                scram = ScramCredentials.from_json(entry.get("scram-sha-256"))
                accounts[name] = _Account(entry["argon2"], scram)
        except (ValueError, KeyError, TypeError) as exc:
            raise AccountError(f"corrupt accounts file {self.path}: {exc}") from None
        return accounts, (st.st_mtime_ns, st.st_size, st.st_ino)

    # -- writing -------------------------------------------------------------------------

    def _update(self, change: Callable[[dict[str, _Account]], None]) -> None:
        """Under the lock: read afresh, apply ``change`` (which may raise), write atomically."""
        directory = self.path.parent
        directory.mkdir(parents=True, exist_ok=True)
        lock_fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            accounts, _ = self._read()
            change(accounts)
            self._write(accounts)
            st = os.stat(self.path)
            with self._mutex:
                self._accounts = accounts
                self._signature = (st.st_mtime_ns, st.st_size, st.st_ino)
        finally:
            os.close(lock_fd)  # releases the flock

    def _write(self, accounts: dict[str, _Account]) -> None:
        data = {"version": _FORMAT_VERSION,
                "accounts": {k: accounts[k].to_json() for k in sorted(accounts)}}
        payload = json.dumps(data, indent=1, ensure_ascii=False).encode("utf-8") + b"\n"
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.",
                                   suffix=".tmp")  # created with mode 0600
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(payload)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        dir_fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def _credentials(self, password: str) -> _Account:
        if not isinstance(password, str) or not password:
            raise AccountError("the password must not be empty")
        if "\0" in password:
            raise AccountError("the password must not contain NUL (SASL PLAIN cannot carry it)")
        return _Account(self._hasher.hash(password), scram_sha256_credentials(password))

    # -- public API ----------------------------------------------------------------------

    def add(self, address: str, password: str) -> str:
        """Create an account; return its folded address. AccountExistsError if it exists."""
        name = fold_address(address)
        if name in self._current():
            raise AccountExistsError(f"account {name} already exists")
        record = self._credentials(password)

        def change(accounts: dict[str, _Account]) -> None:
            if name in accounts:
                raise AccountExistsError(f"account {name} already exists")
            accounts[name] = record

        self._update(change)
        return name

    def delete(self, address: str) -> str:
        """Remove an account; return its folded address. NoSuchAccountError if unknown."""
        name = fold_address(address)

        def change(accounts: dict[str, _Account]) -> None:
            if accounts.pop(name, None) is None:
                raise NoSuchAccountError(f"no account {name}")

        self._update(change)
        return name

    def set_password(self, address: str, password: str) -> str:
        """Replace the password (argon2 hash and SCRAM credentials) of an existing account."""
        name = fold_address(address)
        if name not in self._current():
            raise NoSuchAccountError(f"no account {name}")
        record = self._credentials(password)

        def change(accounts: dict[str, _Account]) -> None:
            if name not in accounts:
                raise NoSuchAccountError(f"no account {name}")
            accounts[name] = record

        self._update(change)
        return name

    def list(self) -> list[str]:
        """Every account's folded address, sorted."""
        return sorted(self._current())

    def _lookup(self, address: str) -> tuple[str | None, _Account | None]:
        accounts = self._current()
        if address in accounts:  # the router asks with the folded form already
            return address, accounts[address]
        try:
            name = fold_address(address)
        except InvalidAddressError:
            return None, None
        return name, accounts.get(name)

    def exists(self, address: str) -> bool:
        return self._lookup(address)[1] is not None

    def scram(self, address: str) -> ScramCredentials | None:
        """The SCRAM-SHA-256 credentials of an account, or None if there is no such account."""
        record = self._lookup(address)[1]
        return None if record is None else record.scram

    def verify(self, address: str, password: str) -> bool:
        """True if ``password`` is the account's. An unknown address costs the same argon2
        work as a wrong password, so timing does not tell one from the other. A hash made
        with older parameters is replaced on success (argon2 ``check_needs_rehash``)."""
        if self._dummy_hash is None:  # made on the first call, whatever its outcome
            self._dummy_hash = self._hasher.hash(secrets.token_urlsafe(16))
        name, record = self._lookup(address)
        if record is None or name is None:
            try:
                self._hasher.verify(self._dummy_hash, password)
            except VerificationError:
                pass
            return False
        try:
            self._hasher.verify(record.argon2, password)
        except (VerificationError, InvalidHashError):
            return False
        if self._hasher.check_needs_rehash(record.argon2):
            self._rehash(name, record.argon2, password)
        return True

    def _rehash(self, name: str, old: str, password: str) -> None:
        new = self._hasher.hash(password)

        def change(accounts: dict[str, _Account]) -> None:
            current = accounts.get(name)
            if current is not None and current.argon2 == old:  # unchanged meanwhile
                accounts[name] = _Account(new, current.scram)

        try:
            self._update(change)
        except (OSError, AccountError) as exc:  # the login still succeeded
            log.warning("password rehash failed", extra={"event": "rehash_failed",
                                                         "account": name, "error": str(exc)})
