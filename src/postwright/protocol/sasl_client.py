"""The client side of SASL for SMTP AUTH: PLAIN, LOGIN and SCRAM-SHA-256, sans-IO.

A :class:`SaslClient` makes the lines a ``ClientConnection`` sends: ``initial()`` is the
initial response of ``AUTH mechanism [initial]`` (None: send none), ``respond(challenge)``
answers the text of each 334 reply. Both are base64 text as on the wire. When the server says
235 the driver calls ``check_success()``: SCRAM raises unless the server proved it knows the
password (mutual authentication; a 235 alone proves nothing).

Covers RFC 4954 section 4 (the exchange), RFC 4616 (PLAIN), draft-murchison-sasl-login
(LOGIN) and RFC 5802 sections 3, 5 and 7 with RFC 7677 (SCRAM-SHA-256 without channel
binding: the GS2 header is "n,,"). The password is prepared as the server side and the account
store prepare it (``protocol.sasl``): SASLprep, or the text as given when SASLprep refuses it.
The username is sent as given (RFC 5802 says SHOULD SASLprep; our server looks names up as
sent).

It does not pick a mechanism, know about TLS (the driver must not use PLAIN or LOGIN in
clear) or keep credentials past the exchange. Reprs and exceptions never carry secrets.
Anything unexpected from the server raises :class:`RemoteProtocolError` (454 4.7.0); the
driver then aborts the exchange ("*") or drops the connection.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from typing import Protocol

from ..errors import RemoteProtocolError
from .reply import Reply
from .sasl import DEFAULT_ITERATIONS, _b64decode_strict, _prepare_password, _valid_nonce

__all__ = ["LoginClient", "PlainClient", "SaslClient", "ScramSha256Client"]

_FAILED = Reply(454, "4.7.0", "Temporary authentication failure")
MAX_ITERATIONS = 1_000_000  # a hostile server must not make us spin for minutes


class SaslClient(Protocol):
    """One client-side SASL exchange."""

    @property
    def mechanism(self) -> str: ...

    def initial(self) -> str | None:
        """The initial response (base64; "" is an empty one), or None to send none."""
        ...

    def respond(self, challenge_b64: str) -> str:
        """The line answering a 334 challenge (base64, as sent on the wire)."""
        ...

    def check_success(self) -> None:
        """The server said 235: raise RemoteProtocolError if that cannot be true yet."""
        ...


def _b64(data: str | bytes) -> str:
    raw = data.encode("utf-8") if isinstance(data, str) else data
    return base64.b64encode(raw).decode("ascii")


def _fail(detail: str) -> RemoteProtocolError:
    return RemoteProtocolError(_FAILED, detail)


class PlainClient:
    """RFC 4616: ``authzid NUL authcid NUL password`` in one message."""

    mechanism = "PLAIN"

    def __init__(self, user: str, password: str, authzid: str = "") -> None:
        if "\0" in user + password + authzid or not user:
            raise ValueError("PLAIN user, password and authzid must be non-empty and NUL-free")
        self._message = _b64(f"{authzid}\0{user}\0{password}")
        self._answered = False

    def initial(self) -> str | None:
        return self._message

    def respond(self, challenge_b64: str) -> str:
        # Only without an initial response: the server then sends one empty challenge.
        if self._answered or challenge_b64.strip():
            raise _fail("unexpected PLAIN challenge")
        self._answered = True
        return self._message

    def check_success(self) -> None:
        return None


class LoginClient:
    """The LOGIN mechanism: the user name, then the password, each after a challenge."""

    mechanism = "LOGIN"

    def __init__(self, user: str, password: str) -> None:
        if not user or not password or "\0" in user + password:
            raise ValueError("LOGIN user and password must be non-empty and NUL-free")
        self._answers = [_b64(user), _b64(password)]

    def initial(self) -> str | None:
        return None

    def respond(self, challenge_b64: str) -> str:
        # The challenge texts ("Username:", "Password:") vary between servers: order counts.
        if not self._answers:
            raise _fail("unexpected LOGIN challenge")
        return self._answers.pop(0)

    def check_success(self) -> None:
        return None


class ScramSha256Client:
    """RFC 5802 / RFC 7677 SCRAM-SHA-256, verifying the server's signature at the end."""

    mechanism = "SCRAM-SHA-256"
    _GS2 = "n,,"  # no channel binding, none supported

    def __init__(self, user: str, password: str, nonce: str | None = None, *,
                 min_iterations: int = DEFAULT_ITERATIONS,
                 max_iterations: int = MAX_ITERATIONS) -> None:
        if not user or "\0" in user + password:
            raise ValueError("SCRAM user must be non-empty; user and password NUL-free")
        self._nonce = secrets.token_urlsafe(24) if nonce is None else nonce
        if not _valid_nonce(self._nonce):
            raise ValueError("SCRAM nonce must be printable ASCII without commas")
        name = user.replace("=", "=3D").replace(",", "=2C")
        self._first_bare = f"n={name},r={self._nonce}"
        self._password: str | None = password
        self._iterations = (min_iterations, max_iterations)
        self._step = "start"  # start, first-sent, final-sent, done
        self._server_signature = b""
        self.verified = False

    def initial(self) -> str | None:
        return _b64(self._GS2 + self._first_bare)

    def respond(self, challenge_b64: str) -> str:
        try:
            text = _b64decode_strict(challenge_b64.strip()).decode("utf-8")
        except (ValueError, binascii.Error):
            raise _fail("SCRAM challenge is not base64 UTF-8") from None
        if self._step == "start" and not text:  # no initial response was sent
            self._step = "first-sent"
            return _b64(self._GS2 + self._first_bare)
        if self._step in ("start", "first-sent"):
            self._step = "final-sent"
            return _b64(self._client_final(text))
        if self._step == "final-sent":
            self._step = "done"
            self._verify(text)
            return ""
        raise _fail("unexpected SCRAM challenge")

    def check_success(self) -> None:
        if not self.verified:
            raise _fail("235 before the server proved its identity")

    def _client_final(self, server_first: str) -> str:
        parts = server_first.split(",")
        if len(parts) < 3 or not (parts[0].startswith("r=") and parts[1].startswith("s=")
                                  and parts[2].startswith("i=")):
            raise _fail("malformed SCRAM server-first message")
        nonce, salt_b64, count = parts[0][2:], parts[1][2:], parts[2][2:]
        if not (nonce.startswith(self._nonce) and len(nonce) > len(self._nonce)
                and _valid_nonce(nonce)):
            raise _fail("SCRAM server nonce does not extend ours")
        try:
            salt = _b64decode_strict(salt_b64)
        except (ValueError, binascii.Error):
            raise _fail("SCRAM salt is not base64") from None
        low, high = self._iterations
        if not (salt and count.isascii() and count.isdigit() and len(count) <= 10
                and low <= int(count) <= high):
            raise _fail("SCRAM salt or iteration count refused")
        password, self._password = self._password, None
        if password is None:
            raise _fail("SCRAM exchange replayed")
        salted = hashlib.pbkdf2_hmac("sha256", _prepare_password(password), salt, int(count))
        client_key = hmac.digest(salted, b"Client Key", "sha256")
        stored_key = hashlib.sha256(client_key).digest()
        without_proof = f"c={_b64(self._GS2)},r={nonce}"
        message = f"{self._first_bare},{server_first},{without_proof}".encode()
        signature = hmac.digest(stored_key, message, "sha256")
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        server_key = hmac.digest(salted, b"Server Key", "sha256")
        self._server_signature = hmac.digest(server_key, message, "sha256")
        return f"{without_proof},p={_b64(proof)}"

    def _verify(self, server_final: str) -> None:
        first = server_final.split(",", 1)[0]
        expected, self._server_signature = self._server_signature, b""
        if first.startswith("e="):
            raise _fail("SCRAM server reported an error")
        try:
            got = _b64decode_strict(first[2:]) if first.startswith("v=") else b""
        except (ValueError, binascii.Error):
            got = b""
        if not got or not hmac.compare_digest(got, expected):
            raise _fail("SCRAM server signature does not match")
        self.verified = True
