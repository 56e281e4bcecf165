"""Inbound email authentication for one message: SPF, DKIM, DMARC, and what to do about it.

Runs the three checks (``spf``, ``dkim``, ``dmarc``), writes the one Authentication-Results
field (RFC 8601) under our authserv-id, removes incoming fields that claim that id, and turns
the DMARC verdict into an action the operator chose: ``reject`` (550 5.7.1 at end-of-data),
``quarantine`` (into the mailbox's ``.Junk`` folder) or ``mark`` (the header only). A DNS
failure that leaves DMARC undecided is a temporary refusal (451 4.7.0), never a silent pass.
Decisions only: the session reads the message and sends the reply.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

from ..dnstypes import MxAnswer
from ..protocol.reply import Reply
from . import authres, dkim, dmarc, spf

Action = Literal["accept", "reject", "quarantine", "tempfail"]
ACTIONS = ("reject", "quarantine", "mark")


class Lookups(Protocol):
    """What the checks ask of DNS; ``postwright.net.dns.Resolver`` fits."""

    async def txt(self, name: str) -> list[str]: ...
    async def a(self, name: str) -> list[str]: ...
    async def aaaa(self, name: str) -> list[str]: ...
    async def mx(self, domain: str) -> MxAnswer: ...
    async def ptr(self, address: str) -> list[str]: ...


@dataclass(frozen=True)
class Outcome:
    action: Action
    header: str  # the Authentication-Results field unfolded, without CRLF
    reply: Reply | None = None  # for reject and tempfail
    stripped: bytes | None = None  # the message without forged fields, when it had some
    summary: dict[str, str] = field(default_factory=dict)


async def check_message(message: bytes | None, *, client_ip: str, helo: str, mail_from: str,
                        authserv_id: str, dns: Lookups, on_reject: str = "reject",
                        on_quarantine: str = "quarantine", timeout: float = 30.0,
                        rand: Callable[[], float] = random.random) -> Outcome:
    """``message`` None means too large to read: SPF only, no DKIM or DMARC verdict."""
    try:
        return await asyncio.wait_for(
            _check(message, client_ip, helo, mail_from, authserv_id, dns, on_reject,
                   on_quarantine, rand), timeout)
    except TimeoutError:
        return Outcome("tempfail", _unfold(authres.header(authserv_id, spf=None, dkim=None,
                                                          dmarc=None)),
                       Reply(451, "4.7.0", "Authentication checks timed out, try again later"),
                       summary={"dmarc": "temperror", "reason": "timeout"})


async def _check(message: bytes | None, client_ip: str, helo: str, mail_from: str,
                 authserv_id: str, dns: Lookups, on_reject: str, on_quarantine: str,
                 rand: Callable[[], float]) -> Outcome:
    spf_task = spf.check(client_ip, mail_from, helo, dns, receiver=authserv_id)
    if message is None:
        spf_check = await spf_task
        only_spf = authres.header(authserv_id, spf=spf_check.mfrom, helo=spf_check.helo,
                                  dkim=None, dmarc=None)
        return Outcome("accept", _unfold(only_spf),
                       summary={"spf": spf_check.mfrom.result, "dkim": "unchecked",
                                "dmarc": "unchecked"})
    spf_check, signatures = await asyncio.gather(spf_task, dkim.verify_async(message, dns))
    verdict = await dmarc.evaluate_message(
        _head(message), spf_check.mfrom, [(s.domain, s.result) for s in signatures], dns,
        rand=rand)
    header = _unfold(authres.header(authserv_id, spf=spf_check.mfrom, helo=spf_check.helo,
                                    dkim=signatures, dmarc=verdict))
    stripped = authres.strip_ours(message, authserv_id)
    summary = {"spf": spf_check.mfrom.result,
               "dkim": ",".join(f"{s.domain}:{s.result}" for s in signatures) or "none",
               "dmarc": verdict.result, "policy": verdict.applied, "domain": verdict.domain}
    kept = stripped if stripped != message else None
    if verdict.result == "temperror":
        return Outcome("tempfail", header, Reply(451, "4.7.0", "DNS failure during "
                                                 "authentication checks, try again later"),
                       kept, summary)
    if verdict.result == "fail" and verdict.applied in ("reject", "quarantine"):
        chosen = on_reject if verdict.applied == "reject" else on_quarantine
        if chosen == "reject":
            return Outcome("reject", header, Reply(
                550, "5.7.1", f"Message refused by the DMARC policy of {verdict.domain}"),
                kept, summary)
        if chosen == "quarantine":
            return Outcome("quarantine", header, None, kept, summary)
    return Outcome("accept", header, None, kept, summary)


def _head(message: bytes) -> bytes:
    end = message.find(b"\r\n\r\n")
    return message if end < 0 else message[: end + 4]


def _unfold(field_bytes: bytes) -> str:
    text = field_bytes.decode("utf-8", "replace").rstrip("\r\n")
    return text.replace("\r\n\t", " ").replace("\r\n ", " ")
