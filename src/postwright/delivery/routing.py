"""Recipient routing: is an address ours, and which mailboxes or remote addresses does it reach?

A pure decision over configuration (local domains, aliases, catch-alls) and an injected
account lookup: no sockets, no files, no clock. It does not decide whether a client may
relay (``policy.relay``) and does not look up MX records (the remote delivery agent does).

Rules, from the operator contract: domains compare as lower-case A-labels; a mailbox name is
the local part folded to lower case; ``bob+tag`` reaches ``bob`` (the exact address is tried
first, then the base); aliases are one-to-many and may point at other aliases (loops are cut,
depth is limited, targets are deduplicated); an unknown address in a local domain goes to the
domain's catch-all if there is one. ``postmaster`` is always routed if at all possible
(RFC 5321 section 4.5.1): bare ``postmaster`` means postmaster at the first local domain, and
``postmaster@`` any local domain without its own account, alias or catch-all falls back to
postmaster at the first local domain.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from ..protocol.address import AddressError, Domain, Mailbox, parse_domain, parse_mailbox

DEPTH_LIMIT: Final = 20
POSTMASTER: Final = "postmaster"


# Final fields and an __init__ of its own rather than frozen=True (see protocol.address).
@dataclass(init=False, unsafe_hash=True, slots=True)
class Resolution:
    """Where mail for one recipient goes.

    ``kind`` describes the recipient itself: "local" (a local domain, with at least one
    target), "remote" (not a local domain; needs relay permission) or "unknown" (a local
    domain, but nothing to deliver to: 550 5.1.1). ``targets`` are the final addresses after
    alias expansion: local mailboxes as folded "localpart@a-label" (plus part kept, so it can
    reach Delivered-To), remote addresses as given. A local alias may expand to remote
    targets; tell them apart with :meth:`Router.is_local_domain`.
    """

    kind: Final[Literal["local", "remote", "unknown"]]
    targets: Final[tuple[str, ...]]

    def __init__(self, kind: Literal["local", "remote", "unknown"],
                 targets: tuple[str, ...]) -> None:
        self.kind = kind
        self.targets = targets


def base_local_part(local_part: str, delimiters: str = "+") -> str:
    """``bob+tag`` -> ``bob``: cut at the first delimiter, unless that leaves nothing."""
    cut = -1
    for d in delimiters:  # a plain loop: this runs several times per recipient
        i = local_part.find(d)
        if i > 0 and (cut < 0 or i < cut):
            cut = i
    return local_part[:cut] if cut > 0 else local_part


def mailbox_key(address: str, *, delimiter: str = "+") -> tuple[str, str]:
    """The Maildir folder names for a local address: ("bob", "example.test").

    The local part folded to lower case with its plus part dropped, the domain as a
    lower-case A-label. Raises ValueError for something that is not a mailbox address.
    """
    mailbox = parse_mailbox(address, smtputf8=True)
    if mailbox.domain is None or mailbox.domain.is_literal:
        raise AddressError(f"no mailbox for {address!r}")
    return base_local_part(mailbox.local_part.lower(), delimiter), mailbox.domain.ascii()


@functools.lru_cache(maxsize=4096)  # asked for every message delivered; few distinct names
def _domain_ascii(text: str) -> str:
    """A domain given as text (U-label or A-label, any case) as a lower-case A-label."""
    domain = parse_domain(text.strip(), smtputf8=True)
    if domain.is_literal:
        raise AddressError(f"an address literal is not a domain name: {text!r}")
    return domain.ascii()


def _domain_key(domain: Domain) -> str:
    """The A-label of a parsed domain, or its lower-cased text if it has none."""
    try:
        return domain.ascii()
    except AddressError:
        return domain.name.lower()


class _Collected:
    """The targets found so far for one resolution, deduplicated."""

    def __init__(self) -> None:
        self.local: dict[tuple[str, str], str] = {}
        self.remote: dict[tuple[str, str], str] = {}
        # "local@domain" -> reached anything, once visited: a second visit (an address
        # listed in several aliases) adds no new target, so fan-outs stay linear.
        self.seen: dict[str, bool] = {}

    def targets(self) -> tuple[str, ...]:
        return (*self.local.values(), *self.remote.values())


class Router:
    """Routing over a snapshot of the configuration; accounts are looked up live.

    ``account_exists`` is called with "localpart@domain" folded (lower-case local part,
    lower-case A-label domain). ``recipient_delimiter`` may hold several characters, each one
    a delimiter; "" turns plus-addressing off. Malformed alias or catch-all entries, or
    entries for domains that are not local, raise ValueError here, not at RCPT time.
    """

    def __init__(self, *, local_domains: Iterable[str], aliases: Mapping[str, Sequence[str]],
                 account_exists: Callable[[str], bool], catchall: Mapping[str, str] | None = None,
                 recipient_delimiter: str = "+", wildcard: Iterable[str] = ()) -> None:
        self._delimiters = recipient_delimiter
        self._wildcard = frozenset(_domain_ascii(d) for d in wildcard)
        self._account_exists = account_exists
        ordered: list[str] = []
        for name in local_domains:
            try:
                ascii_name = _domain_ascii(name)
            except AddressError as exc:
                raise ValueError(f"local domain {name!r}: {exc}") from exc
            if ascii_name not in ordered:
                ordered.append(ascii_name)
        self._ordered = tuple(ordered)
        self._local = frozenset(ordered)
        self._primary = ordered[0] if ordered else None

        self._aliases: dict[str, tuple[Mailbox, ...]] = {}
        for key, values in aliases.items():
            source = self._config_mailbox(key, what="alias")
            assert source.domain is not None
            if source.domain.ascii() not in self._local:
                raise ValueError(f"alias {key!r} is not in a local domain")
            name = f"{source.local_part.lower()}@{source.domain.ascii()}"
            targets = tuple(self._config_mailbox(v, what=f"alias {key!r} target") for v in values)
            self._aliases[name] = self._aliases.get(name, ()) + targets

        self._catchall: dict[str, Mailbox] = {}
        for domain, target in (catchall or {}).items():
            try:
                ascii_name = _domain_ascii(domain)
            except AddressError as exc:
                raise ValueError(f"catch-all domain {domain!r}: {exc}") from exc
            if ascii_name not in self._local:
                raise ValueError(f"catch-all domain {domain!r} is not a local domain")
            self._catchall[ascii_name] = self._config_mailbox(target, what="catch-all target")

    @staticmethod
    def _config_mailbox(text: str, *, what: str) -> Mailbox:
        try:
            mailbox = parse_mailbox(text, smtputf8=True)
        except AddressError as exc:
            raise ValueError(f"{what} {text!r}: {exc}") from exc
        if mailbox.domain is None:
            raise ValueError(f"{what} {text!r} needs a domain")
        return mailbox

    @property
    def local_domains(self) -> tuple[str, ...]:
        """The local domains as lower-case A-labels, in configured order (first = primary)."""
        return self._ordered

    def is_local_domain(self, domain: str) -> bool:
        """True if ``domain`` (any case, U-label or A-label) is one of ours. Literals never are."""
        try:
            return _domain_ascii(domain) in self._local
        except AddressError:
            return False

    def is_local(self, domain: Domain | None) -> bool:
        """Like :meth:`is_local_domain` for a parsed domain; None (bare postmaster) is local."""
        if domain is None:
            return self._primary is not None
        return not domain.is_literal and _domain_key(domain) in self._local

    def resolve(self, mailbox: Mailbox) -> Resolution:
        """Expand one recipient to its final targets."""
        if mailbox.domain is not None and not self.is_local(mailbox.domain):
            return Resolution("remote", (str(mailbox),))
        found = _Collected()
        self._visit(mailbox, 0, frozenset(), found)
        targets = found.targets()
        return Resolution("local", targets) if targets else Resolution("unknown", ())

    def _visit(self, mailbox: Mailbox, depth: int, chain: frozenset[str],
               found: _Collected) -> bool:
        """Add the targets ``mailbox`` reaches to ``found``; False if it reaches nothing."""
        if mailbox.domain is None:  # bare "postmaster" (RFC 5321 section 4.5.1)
            if self._primary is None:
                return False
            return self._visit_local(POSTMASTER, self._primary, depth, chain, found)
        if not self.is_local(mailbox.domain):
            key = (mailbox.local_part, _domain_key(mailbox.domain))
            found.remote.setdefault(key, str(mailbox))
            return True
        return self._visit_local(mailbox.local_part.lower(), mailbox.domain.ascii(), depth,
                                 chain, found)

    def _visit_local(self, local: str, domain: str, depth: int, chain: frozenset[str],
                     found: _Collected) -> bool:
        address = f"{local}@{domain}"
        if address in found.seen:
            return found.seen[address]
        reached = self._expand_local(local, domain, depth, chain, found)
        found.seen[address] = reached
        return reached

    def _expand_local(self, local: str, domain: str, depth: int, chain: frozenset[str],
                      found: _Collected) -> bool:
        base = base_local_part(local, self._delimiters)
        for candidate in dict.fromkeys((local, base)):
            name = f"{candidate}@{domain}"
            targets = self._aliases.get(name)
            if targets is not None:
                if name not in chain and depth < DEPTH_LIMIT:
                    inner = chain | {name}
                    reached = [self._visit(t, depth + 1, inner, found) for t in targets]
                    return any(reached)
                # A loop back to an alias being expanded (or a chain too deep): the address
                # stands for itself, as in the "bob: bob, alice" keep-a-copy idiom.
                return self._add_account(name, local, domain, found)
            if self._add_account(name, local, domain, found):
                return True
        catch = self._catchall.get(domain)
        marker = f"@{domain}"
        if catch is not None and marker not in chain and depth < DEPTH_LIMIT:
            if self._visit(catch, depth + 1, chain | {marker}, found):
                return True
        if base == POSTMASTER and self._primary is not None and domain != self._primary:
            return self._visit_local(POSTMASTER, self._primary, depth + 1, chain, found)
        return False

    def _add_account(self, name: str, local: str, domain: str, found: _Collected) -> bool:
        if domain not in self._wildcard and not self._account_exists(name):
            return False
        key = (base_local_part(local, self._delimiters), domain)
        found.local.setdefault(key, str(Mailbox(local, Domain(domain, False))))
        return True
