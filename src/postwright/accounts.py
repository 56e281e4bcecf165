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
import json
import logging
import os
import secrets
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from .durable import fsync_dir
from .errors import PostwrightError
from .protocol.address import AddressError, parse_mailbox

# One SCRAM implementation: the server side's (stored keys, SASLprep with raw fallback).
from .protocol.sasl import ScramCredentials
from .protocol.sasl import saslprep as saslprep  # re-exported: part of this API
from .protocol.sasl import scram_credentials as scram_sha256_credentials

log = logging.getLogger("postwright.accounts")

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


def _scram_to_json(creds: ScramCredentials) -> dict[str, Any]:
    b64 = base64.b64encode
    return {"salt": b64(creds.salt).decode(), "iterations": creds.iterations,
            "stored_key": b64(creds.stored_key).decode(),
            "server_key": b64(creds.server_key).decode()}


def _scram_from_json(data: Any) -> ScramCredentials:
    if not isinstance(data, dict) or not isinstance(data.get("iterations"), int):
        raise ValueError("bad SCRAM credentials")

    def b64(name: str) -> bytes:
        return base64.b64decode(str(data[name]), validate=True)

    return ScramCredentials(b64("salt"), data["iterations"], b64("stored_key"),
                            b64("server_key"))


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
        return {"argon2": self.argon2, "scram-sha-256": _scram_to_json(self.scram)}


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
                scram = _scram_from_json(entry.get("scram-sha-256"))
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
        fsync_dir(self.path.parent)

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
