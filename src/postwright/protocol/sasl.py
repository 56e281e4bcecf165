"""The server side of SASL for SMTP AUTH: PLAIN, LOGIN and SCRAM-SHA-256, sans-IO.

A :class:`SaslServer` runs one exchange. The session calls ``start(mechanism, initial)``, then
``step(line)`` while the reply is 334; a 235 leaves the account name in ``identity``. Every
other final reply leaves the name that was tried (if any) in ``failed_identity`` so the caller
can throttle per account. Replies are typed :class:`Reply` values; the session sends them.

Covers RFC 4954 sections 4 and 6 (the AUTH exchange: base64 lines, "=" as an empty initial
response, "*" to abort, 334/235/501/535 replies), RFC 4616 (PLAIN), the LOGIN mechanism of
draft-murchison-sasl-login, RFC 5802 sections 3, 5 and 7 with RFC 7677 (SCRAM-SHA-256 without
channel binding: "n" and "y" are accepted, "p=" is refused) and RFC 4013 (SASLprep, through the
standard library's RFC 3454 tables).

It does not store or hash passwords (the account store does, through :class:`CredentialSource`
and :func:`scram_credentials`), count failures (``policy.throttle``) or know about TLS: the
protocol core refuses AUTH on a clear channel before this runs.

Secrets are never kept past an exchange: on success and on failure all state is dropped, the
object refuses reuse, and neither reprs nor exceptions carry passwords or keys.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import stringprep
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from ..errors import LocalProtocolError
from .reply import Reply

__all__ = [
    "ABORTED",
    "BAD_BASE64",
    "DEFAULT_ITERATIONS",
    "INVALID",
    "SUCCESS",
    "SUPPORTED_MECHANISMS",
    "UNKNOWN_MECHANISM",
    "CredentialSource",
    "SaslServer",
    "ScramCredentials",
    "ScramKeys",
    "saslprep",
    "scram_credentials",
]

SUPPORTED_MECHANISMS = ("PLAIN", "LOGIN", "SCRAM-SHA-256")
DEFAULT_ITERATIONS = 4096  # RFC 7677 section 4: at least 4096

SUCCESS = Reply(235, "2.7.0", "Authentication successful")
INVALID = Reply(535, "5.7.8", "Authentication credentials invalid")
ABORTED = Reply(501, "5.0.0", "Authentication aborted")
BAD_BASE64 = Reply(501, "5.5.2", "Cannot decode response")
UNKNOWN_MECHANISM = Reply(504, "5.5.4", "Unrecognized authentication type")
_REUSED = Reply(503, "5.5.1", "Bad sequence of commands")

_LOGIN_USERNAME = b"Username:"  # draft-murchison-sasl-login section 2.1 (informational text)
_LOGIN_PASSWORD = b"Password:"

# Fake SCRAM credentials for unknown accounts derive from this, so that repeated attempts for
# the same unknown name see the same salt (RFC 5802 section 9: no early tell).
_FAKE_SECRET = secrets.token_bytes(32)


class _Failure(Exception):
    """Internal: the exchange ends with ``reply``. Never carries client data."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.text)
        self.reply = reply


# ---- credentials -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ScramCredentials:
    """What the server keeps for SCRAM-SHA-256 (RFC 5802 section 3): never the password."""

    salt: bytes
    iterations: int
    stored_key: bytes = field(repr=False)
    server_key: bytes = field(repr=False)

    def to_string(self) -> str:
        """Render in the RFC 5803 form: ``SCRAM-SHA-256$<i>:<salt>$<StoredKey>:<ServerKey>``."""
        b64 = _b64encode
        return (f"SCRAM-SHA-256${self.iterations}:{b64(self.salt)}"
                f"${b64(self.stored_key)}:{b64(self.server_key)}")

    @classmethod
    def from_string(cls, text: str) -> ScramCredentials:
        """Parse :meth:`to_string` output; ``ValueError`` (without the input) when malformed."""
        try:
            scheme, params, keys = text.split("$")
            count, salt = params.split(":")
            stored, server = keys.split(":")
            creds = cls(_b64decode_strict(salt), int(count), _b64decode_strict(stored),
                        _b64decode_strict(server))
        except (ValueError, binascii.Error):
            raise ValueError("malformed SCRAM credentials") from None
        if (scheme != "SCRAM-SHA-256" or creds.iterations < 1 or not creds.salt
                or len(creds.stored_key) != 32 or len(creds.server_key) != 32):
            raise ValueError("malformed SCRAM credentials")
        return creds


class ScramKeys(Protocol):
    """Anything shaped like :class:`ScramCredentials` (an account store may keep its own)."""

    @property
    def salt(self) -> bytes: ...
    @property
    def iterations(self) -> int: ...
    @property
    def stored_key(self) -> bytes: ...
    @property
    def server_key(self) -> bytes: ...


class CredentialSource(Protocol):
    """The account store as the SASL layer sees it."""

    def verify(self, address: str, password: str) -> bool:
        """True when ``password`` (as the client sent it) is right; similar time when unknown."""
        ...

    def scram(self, address: str) -> ScramKeys | None:
        """The account's SCRAM-SHA-256 keys, or None (unknown account, or no keys stored)."""
        ...


def saslprep(text: str) -> str:
    """RFC 4013 SASLprep of a query string (unassigned code points allowed).

    Raises ``ValueError`` for a prohibited character or a bidi violation; the message never
    includes the input.
    """
    ucd = unicodedata.ucd_3_2_0
    mapped = "".join(" " if stringprep.in_table_c12(c) else c  # section 2.1: spaces
                     for c in text if not stringprep.in_table_b1(c))  # mapped to nothing
    out = ucd.normalize("NFKC", mapped)
    prohibited = (stringprep.in_table_c12, stringprep.in_table_c21, stringprep.in_table_c22,
                  stringprep.in_table_c3, stringprep.in_table_c4, stringprep.in_table_c5,
                  stringprep.in_table_c6, stringprep.in_table_c7, stringprep.in_table_c8,
                  stringprep.in_table_c9)
    for c in out:
        if any(check(c) for check in prohibited):
            raise ValueError("SASLprep: prohibited character")
    if any(stringprep.in_table_d1(c) for c in out):  # RFC 3454 section 6
        if any(stringprep.in_table_d2(c) for c in out):
            raise ValueError("SASLprep: mixed bidirectional text")
        if not (stringprep.in_table_d1(out[0]) and stringprep.in_table_d1(out[-1])):
            raise ValueError("SASLprep: bidirectional text not enclosed in RandALCat")
    return out


def _prepare_password(password: str) -> bytes:
    """SASLprep-lite: SASLprep when it succeeds, the password as given when it does not.

    The fallback (as PostgreSQL does) keeps every password usable; a client that prepares the
    password strictly will refuse such a password itself.
    """
    try:
        prepared = saslprep(password)
    except ValueError:
        prepared = password
    return (prepared or password).encode("utf-8")


def _derive(salted: bytes, salt: bytes, iterations: int) -> ScramCredentials:
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    server_key = hmac.digest(salted, b"Server Key", "sha256")
    return ScramCredentials(salt, iterations, hashlib.sha256(client_key).digest(), server_key)


def scram_credentials(password: str, *, salt: bytes | None = None,
                      iterations: int = DEFAULT_ITERATIONS) -> ScramCredentials:
    """Compute the stored SCRAM-SHA-256 keys for ``password`` (RFC 5802 section 3).

    ``salt`` defaults to 16 random bytes. ``iterations`` must be positive; RFC 7677 asks for at
    least 4096, which clients may insist on.
    """
    if iterations < 1:
        raise ValueError("iterations must be positive")
    if salt is None:
        salt = secrets.token_bytes(16)
    elif not salt:
        raise ValueError("salt must not be empty")
    salted = hashlib.pbkdf2_hmac("sha256", _prepare_password(password), salt, iterations)
    return _derive(salted, salt, iterations)


def _fake_credentials(username: str) -> ScramCredentials:
    """Stable per process and per name, unrelated to any password: the proof cannot match."""
    seed = hmac.digest(_FAKE_SECRET, username.encode("utf-8"), "sha256")
    salt = hmac.digest(seed, b"salt", "sha256")[:16]
    return _derive(hmac.digest(seed, b"keys", "sha256"), salt, DEFAULT_ITERATIONS)


# ---- encoding ---------------------------------------------------------------------------


def _b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _b64decode_strict(text: str) -> bytes:
    """Canonical base64 only: alphabet, padding and unused bits all checked."""
    raw = text.encode("ascii")  # UnicodeEncodeError is a ValueError
    data = base64.b64decode(raw, validate=True)
    if base64.b64encode(data) != raw:
        raise ValueError("non-canonical base64")
    return data


def _decode_line(text: str) -> bytes:
    try:
        return _b64decode_strict(text)
    except (ValueError, binascii.Error):
        raise _Failure(BAD_BASE64) from None


def _utf8(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise _Failure(BAD_BASE64) from None


def _challenge(data: bytes) -> Reply:
    return Reply(334, None, _b64encode(data))


# ---- SCRAM message syntax (RFC 5802 section 7) -------------------------------------------


def _saslname(value: str) -> str:
    """Decode a saslname: "=2C" is ",", "=3D" is "=", any other "=" is malformed."""
    if not value or "\0" in value:
        raise _Failure(INVALID)
    if value.replace("=2C", "").replace("=3D", "").count("=") != 0:
        raise _Failure(INVALID)
    return value.replace("=2C", ",").replace("=3D", "=")


def _valid_nonce(nonce: str) -> bool:
    return bool(nonce) and all(0x21 <= ord(c) <= 0x7E and c != "," for c in nonce)


def _attr(part: str, name: str) -> str:
    if not part.startswith(name + "="):
        raise _Failure(INVALID)
    return part[len(name) + 1:]


@dataclass(slots=True, repr=False)
class _ScramState:
    """One SCRAM exchange in progress; dropped as soon as it ends."""

    username: str
    gs2_header: str
    client_first_bare: str
    server_first: str
    nonce: str
    credentials: ScramKeys


# ---- the server -------------------------------------------------------------------------


class SaslServer:
    """One SASL exchange on the server side; implements the session's ``Authenticator``."""

    def __init__(self, credentials: CredentialSource, *,
                 mechanisms: tuple[str, ...] = SUPPORTED_MECHANISMS,
                 nonce: Callable[[], str] | None = None) -> None:
        wanted = tuple(m.upper() for m in mechanisms)
        unknown = [m for m in wanted if m not in SUPPORTED_MECHANISMS]
        if unknown:
            raise ValueError(f"unsupported SASL mechanisms: {', '.join(unknown)}")
        self.mechanisms = wanted
        self.identity: str | None = None
        self.failed_identity: str | None = None
        self.mechanism: str | None = None
        self._credentials = credentials
        self._nonce = nonce or (lambda: secrets.token_urlsafe(24))
        self._started = False
        self._next: Callable[[bytes], Reply] | None = None
        self._login_user: str | None = None
        self._scram: _ScramState | None = None

    def __repr__(self) -> str:
        state = ("authenticated" if self.identity is not None
                 else "in progress" if self._next is not None
                 else "finished" if self._started else "new")
        return f"<SaslServer mechanism={self.mechanism} {state}>"

    @property
    def done(self) -> bool:
        """True once the exchange has ended (successfully or not)."""
        return self._started and self._next is None

    def start(self, mechanism: str, initial: str | None) -> Reply:
        """Begin the exchange: ``initial`` is the initial response as sent ("=" is empty)."""
        if self._started:
            raise LocalProtocolError(_REUSED, "SaslServer reused")
        self._started = True
        mech = mechanism.upper()
        if mech not in self.mechanisms:
            return self._end(UNKNOWN_MECHANISM)
        self.mechanism = mech
        first: Callable[[bytes], Reply] = {
            "PLAIN": self._plain, "LOGIN": self._login_username,
            "SCRAM-SHA-256": self._scram_client_first,
        }[mech]
        if initial is None:
            self._next = first
            return _challenge(_LOGIN_USERNAME if mech == "LOGIN" else b"")
        return self._run(first, "" if initial == "=" else initial)

    def step(self, data: str) -> Reply:
        """Answer one client line of the exchange ("*" aborts)."""
        handler = self._next
        if handler is None:
            raise LocalProtocolError(_REUSED, "SASL step outside an exchange")
        return self._run(handler, data)

    # ---- plumbing ------------------------------------------------------------------------
    def _run(self, handler: Callable[[bytes], Reply], line: str) -> Reply:
        self._next = None
        if line == "*":
            return self._end(ABORTED)
        try:
            return handler(_decode_line(line))
        except _Failure as failure:
            return self._end(failure.reply)

    def _continue(self, handler: Callable[[bytes], Reply], data: bytes) -> Reply:
        self._next = handler
        return _challenge(data)

    def _end(self, reply: Reply, identity: str | None = None) -> Reply:
        self._next = None
        self._login_user = None
        self._scram = None
        if reply.code == 235:
            self.identity = identity
            self.failed_identity = None
        return reply

    def _check(self, username: str, ok: bool) -> Reply:
        if ok:
            return self._end(SUCCESS, username)
        self.failed_identity = username or None
        return self._end(INVALID)

    # ---- PLAIN (RFC 4616 section 2) ------------------------------------------------------
    def _plain(self, data: bytes) -> Reply:
        parts = _utf8(data).split("\0")
        if len(parts) != 3:
            return self._end(INVALID)
        authzid, authcid, password = parts
        if not authcid:
            return self._end(INVALID)
        self.failed_identity = authcid
        if not password or (authzid and authzid != authcid):
            return self._end(INVALID)
        return self._check(authcid, self._credentials.verify(authcid, password))

    # ---- LOGIN (draft-murchison-sasl-login section 2) ------------------------------------
    def _login_username(self, data: bytes) -> Reply:
        username = _utf8(data)
        if "\0" in username:
            return self._end(INVALID)
        self._login_user = username
        self.failed_identity = username or None
        return self._continue(self._login_password, _LOGIN_PASSWORD)

    def _login_password(self, data: bytes) -> Reply:
        password = _utf8(data)
        username = self._login_user or ""
        if not username or not password or "\0" in password:
            return self._end(INVALID)
        return self._check(username, self._credentials.verify(username, password))

    # ---- SCRAM-SHA-256 (RFC 5802 section 5, RFC 7677) ------------------------------------
    def _scram_client_first(self, data: bytes) -> Reply:
        text = _utf8(data)
        parts = text.split(",")
        if len(parts) < 4:
            return self._end(INVALID)
        flag, authzid_part, *bare_parts = parts
        if flag not in ("n", "y"):  # "p=..." asks for channel binding, which we do not offer
            return self._end(INVALID)
        if bare_parts[0].startswith("m="):  # mandatory extension we cannot know: must fail
            return self._end(INVALID)
        username = _saslname(_attr(bare_parts[0], "n"))
        self.failed_identity = username
        client_nonce = _attr(bare_parts[1], "r")
        if not _valid_nonce(client_nonce):
            return self._end(INVALID)
        if authzid_part and _saslname(_attr(authzid_part, "a")) != username:
            return self._end(INVALID)
        ours = self._nonce()
        if not _valid_nonce(ours):
            raise LocalProtocolError(Reply(454, "4.7.0", "Temporary authentication failure"),
                                     "server nonce has characters outside RFC 5802 'printable'")
        creds = self._credentials.scram(username) or _fake_credentials(username)
        nonce = client_nonce + ours
        server_first = f"r={nonce},s={_b64encode(creds.salt)},i={creds.iterations}"
        self._scram = _ScramState(username, f"{flag},{authzid_part},", ",".join(bare_parts),
                                  server_first, nonce, creds)
        return self._continue(self._scram_client_final, server_first.encode("ascii"))

    def _scram_client_final(self, data: bytes) -> Reply:
        state = self._scram
        assert state is not None
        text = _utf8(data)
        without_proof, sep, proof_b64 = text.rpartition(",p=")
        if not sep:
            return self._end(INVALID)
        parts = without_proof.split(",")
        if len(parts) < 2:
            return self._end(INVALID)
        try:
            binding = _b64decode_strict(_attr(parts[0], "c"))
            proof = _b64decode_strict(proof_b64)
        except (ValueError, binascii.Error):
            return self._end(INVALID)
        nonce_ok = hmac.compare_digest(_attr(parts[1], "r").encode("utf-8"),
                                       state.nonce.encode("ascii"))
        if binding != state.gs2_header.encode("utf-8") or not nonce_ok or len(proof) != 32:
            return self._end(INVALID)
        message = ",".join((state.client_first_bare, state.server_first, without_proof))
        message_bytes = message.encode("utf-8")
        creds = state.credentials
        signature = hmac.digest(creds.stored_key, message_bytes, "sha256")
        client_key = bytes(a ^ b for a, b in zip(proof, signature, strict=True))
        if not hmac.compare_digest(hashlib.sha256(client_key).digest(), creds.stored_key):
            return self._end(INVALID)
        server_signature = hmac.digest(creds.server_key, message_bytes, "sha256")
        verifier = b"v=" + base64.b64encode(server_signature)
        return self._continue(self._scram_done, verifier)

    def _scram_done(self, data: bytes) -> Reply:
        state = self._scram
        assert state is not None
        if data:  # RFC 4954 section 4: the client answers the server-final message empty
            return self._check(state.username, False)
        return self._end(SUCCESS, state.username)
