"""Submission sender rules: which envelope senders an authenticated account may use.

An account owns its own address, every plus form of it (``bob+tag@``), and every local
alias whose expansion reaches it. The null sender is not owned by anyone: bounces come from
the server, not from users. Comparison uses the Maildir mailbox key (folded local part,
plus part dropped, A-label domain), so letter case and IDN spelling do not matter.
"""

from __future__ import annotations

from ..delivery.routing import Router, mailbox_key
from ..protocol.address import AddressError, Mailbox


def owns(account: str, sender: Mailbox | None, router: Router) -> bool:
    if sender is None or sender.domain is None or sender.domain.is_literal:
        return False
    try:
        mine = mailbox_key(account)
        if mailbox_key(str(sender)) == mine:
            return True
    except AddressError:
        return False
    if not router.is_local(sender.domain):
        return False
    resolution = router.resolve(sender)
    for target in resolution.targets:
        try:
            if router.is_local_domain(target.rpartition("@")[2]) and mailbox_key(target) == mine:
                return True
        except AddressError:
            continue
    return False
