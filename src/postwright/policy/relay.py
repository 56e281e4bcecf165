"""Relay control: may this session hand mail for this recipient to us at all?

The decision rests on the recipient's final mailbox (a source route is ignored, RFC 5321
section 3.6.1 and appendix C) and on whether the session may relay (submission after AUTH);
never on the sender. Without relay permission only local domains are accepted. Whatever the
permission, local parts that try to route onward from one of our domains ("u@ext"@local,
the percent hack, bang paths, RFC 5321 sections 3.6.1 and 3.6.2) and address literals are
refused. Refusals are always permanent (5xx, 5.7.1): a 4xx would only invite retries.

It does not check whether a local mailbox exists (``delivery.routing`` answers 550 5.1.1 for
that) nor apply rate limits, SPF or DNS blocklists.
"""

from __future__ import annotations

import unicodedata
from typing import Final

from ..delivery.routing import Router
from ..protocol.address import Mailbox
from ..protocol.reply import Reply

RELAY_DENIED: Final = Reply(550, "5.7.1", "Relay access denied")
ROUTING_DENIED: Final = Reply(550, "5.7.1", "Routing in the local part is not accepted")
LITERAL_DENIED: Final = Reply(550, "5.7.1", "Address literals are not accepted")

# Characters that make some MTA treat a local part as a further route: "@" (from a quoted
# local part), "%" (the percent hack) and "!" (UUCP bang paths).
_ROUTING_CHARS: Final = frozenset("@%!")


def has_routing_chars(local_part: str) -> bool:
    """True if the local part holds a routing character, also after NFKC (fullwidth forms)."""
    folded = unicodedata.normalize("NFKC", local_part)
    return any(ch in _ROUTING_CHARS for ch in local_part + folded)


def relay_check(mailbox: Mailbox, *, router: Router, may_relay: bool) -> Reply | None:
    """None to accept the recipient for routing, or the 5xx Reply to refuse it with at RCPT."""
    domain = mailbox.domain
    if domain is None:  # bare "postmaster": always accepted (RFC 5321 section 4.5.1)
        return None
    if domain.is_literal:
        return LITERAL_DENIED
    if not router.is_local(domain):
        return None if may_relay else RELAY_DENIED
    if has_routing_chars(mailbox.local_part):
        return ROUTING_DENIED
    return None
