"""DKIM private keys under ``data_dir/dkim``: making them, the DNS record to publish, and the
signing key of a domain, re-read when the files change (no restart).

Layout: ``data_dir/dkim/<domain>/<selector>.pem`` (PKCS#8 PEM, mode 0600, directories 0700),
with ``<domain>`` the lower-case A-label, and ``data_dir/dkim/<domain>/active`` naming the
selector to sign with (written by :func:`keygen`; without it, the newest ``.pem`` is used).
The algorithm is the key's own type. Files are written to a temporary name, fsync'd and
renamed, so a reader sees the old key or the new one, never half of one.

:func:`signing_key` is on the hot path: it costs two ``stat`` calls while nothing changes
(the domain directory, whose mtime every rename changes, and the key file) and parses a PEM
only after a change. It does no signing (``dkim``) and no DNS.

Covers RFC 6376 section 3.6.1 (the key record: ``v=DKIM1; k=...; p=...``) and 3.6.2.2 (TXT
strings of at most 255 octets, concatenated), RFC 8301 (2048-bit RSA keys), RFC 8463
section 4 (Ed25519 keys: the raw 32-octet public key in ``p=``).
"""

from __future__ import annotations

import base64
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from ..durable import fsync_dir as _fsync_dir
from ..errors import PostwrightError
from ..protocol.address import AddressError, parse_domain
from .dkim import Algorithm, PrivateKey

__all__ = ["DkimKeyError", "Key", "KeyExistsError", "check_selector", "fold_domain", "keygen",
           "load_key", "signing_key", "txt_record", "zone_line"]

RSA_BITS = 2048
TXT_STRING = 255  # octets in one TXT character-string
ACTIVE = "active"
KeyType = Literal["rsa", "ed25519"]

_SELECTOR = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
                       r"(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*\Z")
_STORED_DOMAIN = re.compile(r"[a-z0-9_-]+(?:\.[a-z0-9_-]+)*\Z")


class DkimKeyError(PostwrightError):
    """A key file that cannot be used (unreadable, not a PEM private key, wrong type)."""


class KeyExistsError(PostwrightError):
    """:func:`keygen` was asked for a selector that already has a key (use ``force``)."""


@dataclass(frozen=True, slots=True)
class Key:
    """A signing key: what :func:`postwright.policy.dkim.sign` needs, and where it lives."""

    domain: str
    selector: str
    algorithm: Algorithm
    private_key: PrivateKey
    path: Path

    def txt(self) -> str:
        """The key record to publish (``v=DKIM1; k=...; p=...``)."""
        return txt_record(self.private_key)

    def zone_line(self) -> str:
        return zone_line(self.domain, self.selector, self.txt())


def txt_record(key: PrivateKey) -> str:
    """``v=DKIM1; k=rsa|ed25519; p=<base64 public key>`` for this private key."""
    public = key.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        der = public.public_bytes(serialization.Encoding.DER,
                                  serialization.PublicFormat.SubjectPublicKeyInfo)
        return f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode('ascii')}"
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return f"v=DKIM1; k=ed25519; p={base64.b64encode(raw).decode('ascii')}"


def zone_line(domain: str, selector: str, txt: str) -> str:
    """One zone-file line: ``<selector>._domainkey.<domain>. IN TXT "..." "..."``, the record
    cut into quoted strings of at most 255 characters (it holds no quote or backslash)."""
    parts = [txt[i:i + TXT_STRING] for i in range(0, len(txt), TXT_STRING)] or [""]
    strings = " ".join(f'"{part}"' for part in parts)
    return f"{selector}._domainkey.{domain.rstrip('.')}. IN TXT {strings}"


def fold_domain(domain: str) -> str:
    """A domain as stored (lower-case A-label); ValueError if it is not a domain name."""
    try:
        parsed = parse_domain(domain.strip().rstrip("."), smtputf8=True)
        if parsed.is_literal:
            raise AddressError("an address literal is not a domain name")
        return parsed.ascii()
    except AddressError as exc:
        raise ValueError(f"invalid domain {domain!r}: {exc}") from None


def check_selector(selector: str) -> str:
    """The selector lower-cased; ValueError unless it is dot-separated LDH labels."""
    folded = selector.lower()
    if not _SELECTOR.match(folded) or len(folded) > 200:
        raise ValueError(f"invalid selector {selector!r} (letters, digits, '-' and '.')")
    return folded


def _domain_dir(data_dir: Path, domain: str) -> Path:
    return Path(data_dir) / "dkim" / domain


def _write_private(path: Path, data: bytes, *, replace: bool) -> None:
    """Write ``data`` to ``path`` (mode 0600) atomically; without ``replace``, refuse an
    existing ``path`` with FileExistsError."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # fails if path exists, even when another process races us
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass


def keygen(data_dir: Path | str, domain: str, selector: str = "s1",
           algorithm: KeyType = "rsa", *, force: bool = False) -> tuple[Path, str]:
    """Make a key for ``domain`` under ``selector`` and make it the domain's signing key.

    Returns the key file and the zone-file line to publish. Raises KeyExistsError if the
    selector has a key already and ``force`` is false; ValueError for a bad domain, selector
    or algorithm.
    """
    domain = fold_domain(domain)
    selector = check_selector(selector)
    if algorithm not in ("rsa", "ed25519"):
        raise ValueError(f"unknown algorithm {algorithm!r} (rsa or ed25519)")
    folder = _domain_dir(Path(data_dir), domain)
    path = folder / f"{selector}.pem"
    if path.exists() and not force:
        raise KeyExistsError(f"selector {selector} of {domain} already has a key: {path}")
    key: PrivateKey
    if algorithm == "rsa":
        key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
    else:
        key = ed25519.Ed25519PrivateKey.generate()
    folder.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    folder.mkdir(mode=0o700, exist_ok=True)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    try:
        _write_private(path, pem, replace=force)
    except FileExistsError:
        raise KeyExistsError(f"selector {selector} of {domain} already has a key: "
                             f"{path}") from None
    _write_private(folder / ACTIVE, f"{selector}\n".encode("ascii"), replace=True)
    _fsync_dir(folder)
    return path, zone_line(domain, selector, txt_record(key))


def load_key(path: Path, domain: str, selector: str) -> Key:
    """Read one PEM private key; DkimKeyError if it is unreadable or of an unusable type."""
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise DkimKeyError(f"cannot load DKIM key {path}: {exc}") from None
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < 1024:
            raise DkimKeyError(f"DKIM key {path}: RSA keys need 1024 bits at least (RFC 8301)")
        return Key(domain, selector, "rsa-sha256", key, Path(path))
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return Key(domain, selector, "ed25519-sha256", key, Path(path))
    raise DkimKeyError(f"DKIM key {path}: {type(key).__name__} is neither RSA nor Ed25519")


def _active_selector(folder: Path) -> str | None:
    try:
        name = (folder / ACTIVE).read_text("ascii").strip()
        return check_selector(name)
    except (OSError, UnicodeDecodeError, ValueError):
        pass
    newest: tuple[int, str] | None = None
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.name.endswith(".pem") and not entry.name.startswith("."):
                    stamp = entry.stat().st_mtime_ns
                    if newest is None or stamp > newest[0]:
                        newest = (stamp, entry.name[:-4])
    except OSError:
        return None
    return newest[1] if newest else None


_Stamp = tuple[int, int, int]
_cache: dict[tuple[str, str], tuple[_Stamp, _Stamp, Key]] = {}
_cache_lock = threading.Lock()


def _stamp(st: os.stat_result) -> _Stamp:
    return (st.st_mtime_ns, st.st_ino, st.st_size)


def signing_key(data_dir: Path | str, domain: str) -> Key | None:
    """The key to sign ``domain``'s mail with, or None if it has none.

    ``domain`` is compared as a lower-case A-label. A key made, replaced or removed on disk
    is seen by the next call. Raises DkimKeyError if the active key file is unusable.
    """
    domain = domain.lower().rstrip(".")
    if not _STORED_DOMAIN.match(domain):
        return None
    folder = _domain_dir(Path(data_dir), domain)
    try:
        folder_stamp = _stamp(os.stat(folder))
    except OSError:
        return None
    cache_key = (str(data_dir), domain)
    cached = _cache.get(cache_key)
    if cached is not None and cached[0] == folder_stamp:
        try:
            if _stamp(os.stat(cached[2].path)) == cached[1]:
                return cached[2]
        except OSError:
            pass
    selector = _active_selector(folder)
    if selector is None:
        return None
    path = folder / f"{selector}.pem"
    try:
        file_stamp = _stamp(os.stat(path))
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise DkimKeyError(f"cannot read DKIM key {path}: {exc}") from None
    key = load_key(path, domain, selector)
    with _cache_lock:
        _cache[cache_key] = (folder_stamp, file_stamp, key)
    return key
