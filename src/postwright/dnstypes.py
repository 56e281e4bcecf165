"""DNS answers as plain values, shared by the resolver (``net.dns``) and route planning.

Layer 1: no I/O. ``MxAnswer`` is what an MX lookup found; ``DnsTemporaryError`` says a lookup
failed for now (SERVFAIL, timeout), which delivery treats as a 4xx, never as "no such domain".
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import PostwrightError


class DnsTemporaryError(PostwrightError):
    """The lookup failed for now (SERVFAIL, timeout, no nameserver answered): try later."""


@dataclass(frozen=True, slots=True)
class MxAnswer:
    """The MX records of a domain, or why there are none.

    ``hosts`` is ``(preference, host)`` in ascending preference (host names without the
    trailing dot). ``null_mx`` is RFC 7505's "0 ." (any MX set made only of root exchanges);
    root exchanges mixed with real ones are dropped. ``nxdomain``: the domain does not exist.
    ``no_records`` (derived): the domain exists but publishes no MX.
    """

    hosts: tuple[tuple[int, str], ...] = ()
    null_mx: bool = False
    nxdomain: bool = False

    @property
    def no_records(self) -> bool:
        return not (self.hosts or self.null_mx or self.nxdomain)
