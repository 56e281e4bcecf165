"""Fetch an MTA-STS policy file over HTTPS (RFC 8461 section 3.3).

:class:`PolicyFetcher` resolves ``mta-sts.<domain>`` through the injected resolver, opens
TLS to it with certificate and host name verification, sends one HTTP/1.0 GET for
``/.well-known/mta-sts.txt`` and returns the body text. Anything but a ``200`` with
``text/plain`` is a failure: redirects are not followed (section 3.3), bodies over 64 KB are
refused, and the whole fetch runs under one timeout. Every failure raises
:class:`postwright.policy.mtasts.PolicyError`.

HTTP/1.0 keeps the client small: the server closes the connection after the body and sends
no chunked encoding. Not done: HTTP proxies, IPv6 scoped addresses, caching (the caller's).
The port is configurable for tests only; real policy hosts listen on 443.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Protocol

from ..dnstypes import DnsTemporaryError
from ..policy.mtasts import PolicyError

MAX_POLICY_SIZE = 64 * 1024
WELL_KNOWN = "/.well-known/mta-sts.txt"


class AddressLookup(Protocol):
    async def addresses(self, host: str) -> list[str]: ...


def verifying_context(ca_file: str = "") -> ssl.SSLContext:
    """The system's trust store, plus ``ca_file`` when given; host names checked."""
    ctx = ssl.create_default_context()
    if ca_file:
        ctx.load_verify_locations(cafile=ca_file)
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


class PolicyFetcher:
    def __init__(self, resolver: AddressLookup, context: ssl.SSLContext, *, port: int = 443,
                 timeout: float = 30.0) -> None:
        self.resolver = resolver
        self.context = context
        self.port = port
        self.timeout = timeout

    async def __call__(self, domain: str) -> str:
        host = f"mta-sts.{domain.lower().rstrip('.')}"
        try:
            return await asyncio.wait_for(self._fetch(host), self.timeout)
        except TimeoutError:
            raise PolicyError(f"fetching https://{host}{WELL_KNOWN} timed out") from None
        except DnsTemporaryError as exc:
            raise PolicyError(f"DNS lookup of {host} failed: {exc}") from None
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError,
                asyncio.LimitOverrunError) as exc:
            raise PolicyError(f"fetching https://{host}{WELL_KNOWN} failed: "
                              f"{str(exc) or type(exc).__name__}") from None

    async def _fetch(self, host: str) -> str:
        addresses = await self.resolver.addresses(host)
        if not addresses:
            raise PolicyError(f"{host} has no address")
        last: Exception | None = None
        for address in addresses:
            try:
                return await self._get(host, address)
            except (OSError, ssl.SSLError) as exc:
                if isinstance(exc, ssl.SSLCertVerificationError):
                    raise
                last = exc
        assert last is not None
        raise last

    async def _get(self, host: str, address: str) -> str:
        reader, writer = await asyncio.open_connection(
            address, self.port, ssl=self.context, server_hostname=host,
            limit=MAX_POLICY_SIZE + 16384)
        try:
            writer.write(f"GET {WELL_KNOWN} HTTP/1.0\r\nHost: {host}\r\n"
                         f"User-Agent: postwright\r\nAccept: text/plain\r\n\r\n".encode("ascii"))
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            status, headers = _parse_head(head)
            if status != 200:
                raise PolicyError(f"https://{host}{WELL_KNOWN} answered {status} "
                                  f"(redirects are not followed)")
            ctype = headers.get("content-type", "").split(";")[0].strip().lower()
            if ctype != "text/plain":
                raise PolicyError(f"policy served as {ctype or 'no type'!r}, not text/plain")
            length = headers.get("content-length")
            if length is not None and (not length.isdigit() or int(length) > MAX_POLICY_SIZE):
                raise PolicyError(f"policy of {length} octets is too large")
            body = await reader.read(MAX_POLICY_SIZE + 1)
            while len(body) <= MAX_POLICY_SIZE and (chunk := await reader.read(
                    MAX_POLICY_SIZE + 1 - len(body))):
                body += chunk
            if len(body) > MAX_POLICY_SIZE:
                raise PolicyError("policy is larger than 64 KB")
            if length is not None and len(body) != int(length):
                raise PolicyError("policy body was cut short")
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except (OSError, ssl.SSLError):
                pass
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError:
            raise PolicyError("policy is not UTF-8") from None


def _parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise PolicyError(f"not an HTTP response: {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if colon:
            headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers
