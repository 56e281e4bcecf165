"""DNS lookups on the wire for mail routing and sender checks: MX, A, AAAA, TXT and PTR.

:class:`Resolver` wraps dnspython's asynchronous stub resolver, pointed at the configured
nameservers (``[dns] nameservers``, each ``(host, port)``) or at the system's resolver, and
turns its answers into small values: :class:`MxAnswer`, lists of address strings, lists of
TXT strings, lists of host names. It tells the outcomes mail routing must keep apart: the
name does not exist (NXDOMAIN, a permanent fact), the name has no records of that type
(NODATA), and the lookup failed (SERVFAIL, timeout, no nameserver answered), which raises
:class:`DnsTemporaryError`.

It does no routing decisions (``delivery.mx`` does), no DNSSEC validation, no search-list
expansion (every name is taken as fully qualified) and no caching of its own (dnspython's
cache can be switched on with ``cache=True``).

Covers RFC 1035 section 3.3.9 (MX) and 3.3.14 (TXT: the strings of one record are joined,
as RFC 7208 section 3.3 and RFC 6376 section 3.6.2.2 read them), RFC 3596 (AAAA),
RFC 7505 (null MX), RFC 2308 (NXDOMAIN versus NODATA), RFC 1035 section 3.5 and RFC 3596
section 2.5 (PTR names in in-addr.arpa and ip6.arpa).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import dns.asyncresolver
import dns.exception
import dns.name
import dns.nameserver
import dns.rdata
import dns.rdatatype
import dns.rdtypes.ANY.MX
import dns.rdtypes.ANY.PTR
import dns.rdtypes.ANY.TXT
import dns.rdtypes.IN.A
import dns.rdtypes.IN.AAAA
import dns.resolver
import dns.reversename

from ..dnstypes import DnsTemporaryError, MxAnswer

__all__ = ["DnsTemporaryError", "MxAnswer", "Resolver"]

DEFAULT_TIMEOUT = 10.0
MAX_ATTEMPT_TIMEOUT = 2.0


def _absolute(name: str) -> dns.name.Name | None:
    """The name as an absolute DNS name, or None if it cannot exist in the DNS at all."""
    try:
        return dns.name.from_text(name.strip(), origin=dns.name.root)
    except (dns.exception.DNSException, UnicodeError, ValueError):
        return None


class Resolver:
    """Asynchronous MX, address and TXT lookups against configured or system nameservers.

    ``nameservers`` are ``(ip, port)`` pairs tried in order; empty means the system's
    resolver configuration (``/etc/resolv.conf``). ``timeout`` bounds one lookup, retries
    included; each attempt waits at most half of it (and no more than two seconds).
    """

    def __init__(self, nameservers: Sequence[tuple[str, int]] = (), *,
                 timeout: float = DEFAULT_TIMEOUT, cache: bool = False) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        if nameservers:
            resolver = dns.asyncresolver.Resolver(configure=False)
            resolver.nameservers = [dns.nameserver.Do53Nameserver(host, port)
                                    for host, port in nameservers]
        else:
            try:
                resolver = dns.asyncresolver.Resolver(configure=True)
            except dns.resolver.NoResolverConfiguration:
                resolver = dns.asyncresolver.Resolver(configure=False)  # every lookup fails
        resolver.lifetime = timeout
        resolver.timeout = min(MAX_ATTEMPT_TIMEOUT, timeout / 2)
        resolver.search = []
        if cache:
            resolver.cache = dns.resolver.Cache()
        self._resolver = resolver
        self.timeout = timeout

    async def _lookup(self, name: str, rdtype: dns.rdatatype.RdataType
                      ) -> list[dns.rdata.Rdata] | None:
        """The records of one type; [] for NODATA, None for NXDOMAIN (or an impossible name)."""
        qname = _absolute(name)
        if qname is None:
            return None
        try:
            async with asyncio.timeout(self.timeout):  # dnspython may overrun by a backoff
                answer = await self._resolver.resolve(qname, rdtype, search=False,
                                                      raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN:
            return None
        except (dns.exception.Timeout, TimeoutError) as exc:
            raise DnsTemporaryError(f"{name}/{rdtype.name}: timed out") from exc
        except dns.resolver.NoNameservers as exc:
            raise DnsTemporaryError(f"{name}/{rdtype.name}: no nameserver answered") from exc
        except dns.exception.DNSException as exc:  # anything else: not known to be final
            raise DnsTemporaryError(f"{name}/{rdtype.name}: {exc}") from exc
        return list(answer.rrset) if answer.rrset is not None else []

    async def mx(self, domain: str) -> MxAnswer:
        records = await self._lookup(domain, dns.rdatatype.MX)
        if records is None:
            return MxAnswer(nxdomain=True)
        pairs: list[tuple[int, str]] = []
        roots = 0
        for rdata in records:
            assert isinstance(rdata, dns.rdtypes.ANY.MX.MX)
            if rdata.exchange == dns.name.root:
                roots += 1
            else:
                pairs.append((rdata.preference, rdata.exchange.to_text(omit_final_dot=True)))
        if roots and not pairs:
            return MxAnswer(null_mx=True)
        pairs.sort(key=lambda pair: pair[0])  # stable: equal preferences keep server order
        return MxAnswer(hosts=tuple(pairs))

    async def addresses(self, host: str) -> list[str]:
        """IPv6 then IPv4 addresses of ``host``; [] if it has none or does not exist.

        The AAAA and A lookups run together. If one of them fails and the other gives
        addresses, those are returned; DnsTemporaryError only when nothing was found and at
        least one lookup failed.
        """
        results = await asyncio.gather(self._lookup(host, dns.rdatatype.AAAA),
                                       self._lookup(host, dns.rdatatype.A),
                                       return_exceptions=True)
        out: list[str] = []
        failure: DnsTemporaryError | None = None
        for result in results:
            if isinstance(result, DnsTemporaryError):
                failure = result
            elif isinstance(result, BaseException):
                raise result
            elif result is not None:
                for rdata in result:
                    assert isinstance(rdata, dns.rdtypes.IN.AAAA.AAAA | dns.rdtypes.IN.A.A)
                    if rdata.address not in out:
                        out.append(rdata.address)
        if not out and failure is not None:
            raise failure
        return out

    async def txt(self, name: str) -> list[str]:
        """Each TXT record as one string (its character-strings joined); [] if none."""
        records = await self._lookup(name, dns.rdatatype.TXT)
        out: list[str] = []
        for rdata in records or ():
            assert isinstance(rdata, dns.rdtypes.ANY.TXT.TXT)
            out.append(b"".join(rdata.strings).decode("utf-8", "replace"))
        return out

    async def a(self, name: str) -> list[str]:
        """The IPv4 addresses of ``name``; [] if it has none or does not exist."""
        return [r.to_text() for r in await self._lookup(name, dns.rdatatype.A) or ()]

    async def aaaa(self, name: str) -> list[str]:
        """The IPv6 addresses of ``name``; [] if it has none or does not exist."""
        return [r.to_text() for r in await self._lookup(name, dns.rdatatype.AAAA) or ()]

    async def ptr(self, address: str) -> list[str]:
        """The host names (no trailing dot) the reverse tree gives for ``address``; []
        if none. ValueError if ``address`` is not an IP address."""
        try:
            name = dns.reversename.from_address(address)
        except (dns.exception.SyntaxError, ValueError) as exc:
            raise ValueError(f"not an IP address: {address!r}") from exc
        out: list[str] = []
        for rdata in await self._lookup(name.to_text(), dns.rdatatype.PTR) or ():
            assert isinstance(rdata, dns.rdtypes.ANY.PTR.PTR)
            out.append(rdata.target.to_text(omit_final_dot=True))
        return out
