"""TLS set-up: server contexts (TLS 1.2 minimum) and a self-signed certificate on first start.

RFC 8314 and RFC 3207 want TLS on submission; with no certificate configured postwright makes
a self-signed one under data_dir so that STARTTLS and port 465 work out of the box. Operators
point ``[tls] cert`` and ``key`` at real ones (ACME or otherwise) and reload them on SIGHUP
through :class:`ReloadableContext`.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from collections.abc import Mapping
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def ensure_self_signed(directory: Path, hostname: str) -> tuple[Path, Path]:
    """Return (cert, key) paths under ``directory``, creating them if absent."""
    cert_path = directory / "selfsigned.crt"
    key_path = directory / "selfsigned.key"
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.UTC)
    alt: list[x509.GeneralName] = [x509.DNSName(hostname), x509.DNSName("localhost"),
                                   x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_bytes = key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption())
    tmp_key = key_path.with_suffix(".tmp")
    fd = os.open(tmp_key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key_bytes)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp_key, key_path)
    tmp_cert = cert_path.with_suffix(".tmp")
    tmp_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    os.replace(tmp_cert, cert_path)
    return cert_path, key_path


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server-side context: TLS 1.2 or newer, the ssl module's modern cipher defaults."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.load_cert_chain(str(cert), str(key))
    return ctx


class ReloadableContext:
    """A server context whose certificate can be replaced while listeners keep using it.

    ``context`` is given to the listeners and to STARTTLS once. Every handshake it starts
    switches, from the SNI hook (which OpenSSL calls for each ClientHello, with or without a
    server name), to the context built by the latest successful :meth:`reload`. A reload builds
    a whole new context: a certificate and key that do not match change nothing, and a
    certificate of another key type does not linger beside the new one (loading into the
    shared context in place would do both). Connections already up keep their own context.
    """

    def __init__(self, cert: Path, key: Path,
                 sni: Mapping[str, tuple[Path, Path]] | None = None) -> None:
        self.cert = cert
        self.key = key
        self.sni = {name.lower().rstrip("."): pair for name, pair in (sni or {}).items()}
        self._current = server_context(cert, key)
        self._by_name = self._load_sni()
        self.context = server_context(cert, key)
        self.context.sni_callback = self._select

    def _load_sni(self) -> dict[str, ssl.SSLContext]:
        return {name: server_context(c, k) for name, (c, k) in self.sni.items()}

    def _select(self, tls: ssl.SSLObject, server_name: str | None,
                context: ssl.SSLContext) -> None:
        # SNI (RFC 6066): a certificate per host name; anything else gets the default one.
        chosen = self._by_name.get(server_name.lower().rstrip(".")) if server_name else None
        tls.context = chosen or self._current

    def reload(self) -> None:
        """Load the files again; on ``OSError`` or ``ssl.SSLError`` the old pairs stay."""
        current = server_context(self.cert, self.key)
        by_name = self._load_sni()
        self._current, self._by_name = current, by_name
