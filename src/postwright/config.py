"""The configuration: a TOML file parsed and validated into frozen dataclasses.

Layer 1 (a value type): reads one file, touches no socket, starts nothing. Every key of the
operator contract is accepted, including those whose features come later, and every key not
listed here is an error. Any problem raises :class:`~postwright.errors.ConfigError` with the
dotted path of the key (``limits.max_recipients``, ``listen.smtp[1]``,
``aliases."postmaster@example.test"``). Types are strict: a bool is not an integer, a string
is not a list, an integer is accepted where seconds (a float) are wanted.

Where the file comes from (:func:`load_config`): an explicit path, else ``$POSTWRIGHT_CONFIG``,
else the embedded defaults (what ``make run`` uses). Relative paths in a file (``data_dir``,
``tls.cert``, ``tls.key``) are relative to the file's directory; in the embedded defaults,
to the current directory. :func:`dump_defaults` prints every key with its default, commented;
that text is the reference for the keys and is what the README quotes.

Domains are stored as lower-case A-labels (IDNA through the stdlib codec). Limits follow
RFC 5321 section 4.5.3.1 (command line 512 octets, text line 1000 octets, both with CRLF) and
4.5.3.2 (timeouts); listeners follow RFC 8314 (implicit TLS on submissions).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

from .errors import ConfigError
from .protocol.address import AddressError, Domain, Mailbox, parse_domain, parse_mailbox

ENV_VAR = "POSTWRIGHT_CONFIG"
DEFAULT_HOSTNAME = "localhost.test"
DEFAULT_DATA_DIR = "./postwright-data"
LOG_LEVELS = ("debug", "info", "warning", "error")

HostPort = tuple[str, int]


def _key(default: Any, note: str, low: float | str | None = None,
         high: float | None = None) -> Any:
    """A config key: its default, what it means (for dump_defaults) and, for numbers, the
    allowed range; ``low="gt0"`` means strictly greater than 0."""
    meta = {"note": note, "low": low, "high": high}
    if isinstance(default, dict):
        return field(default_factory=lambda: MappingProxyType({}), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True, slots=True)
class ListenConfig:
    """``[listen]``: each role a tuple of (host, port); an empty tuple disables the role.

    Hosts are IP addresses (IPv6 written "[::1]:25" in the file, stored without brackets),
    "localhost" or a host name. Port 0 lets the system choose (useful in tests).
    """

    smtp: tuple[HostPort, ...] = _key(
        (("127.0.0.1", 2525),), "MX role: no AUTH, accepts mail for local domains only")
    submission: tuple[HostPort, ...] = _key(
        (("127.0.0.1", 2587),), "STARTTLS then AUTH required (RFC 6409); may relay")
    submissions: tuple[HostPort, ...] = _key(
        (("127.0.0.1", 2465),), "implicit TLS (RFC 8314) then AUTH required; may relay")


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """``[tls]``: PEM certificate chain and key, both or neither (neither: a self-signed
    certificate is generated under data_dir on first start). Must be readable files."""

    cert: Path | None = None
    key: Path | None = None
    sni: Mapping[str, tuple[Path, Path]] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True, slots=True)
class DomainsConfig:
    """``[domains]``, as lower-case A-labels."""

    local: tuple[str, ...] = _key(
        (DEFAULT_HOSTNAME,), "domains delivered to Maildir here; default: [hostname]")
    wildcard: tuple[str, ...] = _key(
        (), "local domains where every local part is a mailbox, no account needed "
            "(development; the embedded defaults set it for localhost.test)")
    catchall: Mapping[str, str] = _key(
        {}, "domain = address that gets mail for unknown local parts")


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """``[limits]``: sizes in octets, times in seconds."""

    max_message_size: int = _key(36700160, "octets, advertised with SIZE (RFC 1870)", 1)
    max_recipients: int = _key(1000, "RCPT commands accepted per transaction", 1)
    max_line_length: int = _key(
        2048, "command line incl. CRLF; RFC 5321 4.5.3.1.4 says 512, extensions add more", 512)
    max_errors: int = _key(10, "bad commands before 421 and close", 1)
    max_connections: int = _key(1000, "open sessions per listener role", 1)
    max_connections_per_client: int = _key(50, "open sessions per client address and role", 1)
    command_timeout: float = _key(300.0, "seconds waiting for a command (RFC 5321 4.5.3.2.7)",
                                  "gt0")
    data_timeout: float = _key(180.0, "seconds between body chunks (RFC 5321 4.5.3.2.6)", "gt0")
    greeting_delay: float = _key(0.0, "seconds before the 220 greeting; 0 = none", 0)
    tls_handshake_timeout: float = _key(
        30.0, "seconds a client may take to finish a TLS handshake (465, STARTTLS)", "gt0")


@dataclass(frozen=True, slots=True)
class DnsConfig:
    """``[dns]``: nameservers as (ip, port)."""

    nameservers: tuple[HostPort, ...] = _key(
        (), '"ip" or "ip:port" ("[::1]:53"); [] = the system resolver')
    timeout: float = _key(5.0, "seconds per DNS query", "gt0")


@dataclass(frozen=True, slots=True)
class DeliveryConfig:
    """``[delivery]``: outbound delivery and retries (seconds)."""

    smtp_port: int = _key(25, "port for delivery by MX", 1, 65535)
    relayhost: str = _key("", '"host:port" smarthost for all remote mail; "" = by MX')
    retry_first: float = _key(300.0, "seconds before the first retry after a 4xx", "gt0")
    retry_max: float = _key(3600.0, "seconds: the retry interval doubles up to this", "gt0")
    lifetime: float = _key(432000.0, "seconds in the queue before bouncing", "gt0")
    delay_warning: float = _key(14400.0, "seconds before a 'delayed' DSN; 0 = never", 0)
    concurrency: int = _key(20, "simultaneous outbound SMTP sessions", 1)
    per_destination: int = _key(5, "simultaneous sessions to one destination domain", 1)
    connection_cache_time: float = _key(
        5.0, "seconds an idle outbound connection is kept for the next message; 0 = off", 0)
    require_tls: tuple[str, ...] = _key(
        (), "domains whose mail is never sent without STARTTLS (\"*\" with a relayhost: all)")
    relay_username: str = _key("", "AUTH user name for the relayhost; \"\" = no AUTH")
    relay_password: str = _key("", "AUTH password for the relayhost")
    mta_sts: bool = _key(True, "honour the recipient domain's MTA-STS policy (RFC 8461) "
                               "when delivering by MX")
    mta_sts_ca_file: str = _key(
        "", "extra PEM CA bundle trusted for MTA-STS (policy host and MX certificates), "
            "for private CAs and tests; \"\" = the system's CAs only")
    mta_sts_port: int = _key(443, "HTTPS port of the mta-sts.<domain> policy host (tests)",
                             1, 65535)
    connect_timeout: float = _key(30.0, "seconds to open a connection to a remote server",
                                  "gt0")
    greeting_timeout: float = _key(300.0, "seconds waiting for its 220 (RFC 5321 4.5.3.2.1)",
                                   "gt0")
    command_timeout: float = _key(
        300.0, "seconds waiting for the reply to EHLO, MAIL, RCPT, DATA (RFC 5321 4.5.3.2)",
        "gt0")
    data_block_timeout: float = _key(
        180.0, "seconds for each block of the body to be taken (RFC 5321 4.5.3.2.5)", "gt0")
    data_done_timeout: float = _key(
        600.0, "seconds waiting for the reply to the end of the body (RFC 5321 4.5.3.2.6)",
        "gt0")

    @property
    def relayhost_address(self) -> HostPort | None:
        """The relay host as (host, port), or None to deliver by MX."""
        return _parse_host_port(self.relayhost, "delivery.relayhost") if self.relayhost else None


@dataclass(frozen=True, slots=True)
class QueueConfig:
    """``[queue]``."""

    group_commit_window: float = _key(0.0, "seconds to gather messages into one fsync", 0)
    spill_threshold: int = _key(262144, "bodies over this many octets get their own file", 0)


SENDER_POLICIES = ("own", "any")
SASL_MECHANISMS = ("PLAIN", "LOGIN", "SCRAM-SHA-256")


@dataclass(frozen=True, slots=True)
class SubmissionConfig:
    """``[submission]``: AUTH, sender rules and throttles for the submission listeners."""

    sender_policy: str = _key(
        "own", "own: MAIL FROM must be an address the account owns (its own, plus forms, "
               "aliases reaching it); any: no check")
    trusted_networks: tuple[str, ...] = _key(
        (), "CIDR ranges whose clients may relay without AUTH (devices that cannot log in)")
    auth_mechanisms: tuple[str, ...] = _key(SASL_MECHANISMS, "SASL mechanisms offered")
    auth_without_tls: bool = _key(False, "offer AUTH on connections without TLS (unsafe)")
    auth_fail_window: float = _key(900.0, "seconds over which failed AUTH attempts count", "gt0")
    auth_fail_per_client: int = _key(10, "failures from one address before 421 and close", 1)
    auth_fail_per_account: int = _key(20, "failures for one account before it is blocked", 1)
    auth_fail_delay: float = _key(1.0, "delay before answering the first failure (doubles)", 0)
    auth_fail_delay_max: float = _key(30.0, "cap on that delay", 0)
    connections_per_minute: int = _key(
        0, "new connections one client address may open per minute, all listeners; 0 = no limit",
        0)


AUTH_ACTIONS = ("reject", "quarantine", "mark")


@dataclass(frozen=True, slots=True)
class AuthenticationConfig:
    """``[authentication]``: inbound SPF, DKIM and DMARC on the smtp listener."""

    checks: bool = _key(True, "check SPF, DKIM and DMARC on the smtp listener "
                              "(the embedded defaults turn it off: localhost.test has no DNS)")
    dmarc_reject: str = _key("reject", "what p=reject does: reject (550 5.7.1) | quarantine "
                                       "(.Junk folder) | mark (header only)")
    dmarc_quarantine: str = _key("quarantine", "what p=quarantine does: quarantine | mark")
    max_size: int = _key(10485760, "larger messages get SPF only (no DKIM, no DMARC)", 0)


@dataclass(frozen=True, slots=True)
class LogConfig:
    """``[log]``."""

    level: str = _key("info", " | ".join(LOG_LEVELS))


@dataclass(frozen=True, slots=True)
class Config:
    """The whole configuration; ``source`` is the file it came from (None: embedded).

    ``aliases`` maps a folded address (lower-case local part and A-label domain) to its
    targets (domain an A-label, local part as written).
    """

    hostname: str
    data_dir: Path
    listen: ListenConfig = ListenConfig()
    tls: TlsConfig = TlsConfig()
    domains: DomainsConfig = DomainsConfig()
    aliases: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: MappingProxyType({}))
    limits: LimitsConfig = LimitsConfig()
    dns: DnsConfig = DnsConfig()
    delivery: DeliveryConfig = DeliveryConfig()
    queue: QueueConfig = QueueConfig()
    submission: SubmissionConfig = SubmissionConfig()
    authentication: AuthenticationConfig = AuthenticationConfig()
    log: LogConfig = LogConfig()
    source: Path | None = None

    @property
    def queue_dir(self) -> Path:
        return self.data_dir / "queue"

    @property
    def mail_dir(self) -> Path:
        return self.data_dir / "mail"

    @property
    def accounts_path(self) -> Path:
        return self.data_dir / "accounts.json"


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_MISSING: Any = object()
_T = TypeVar("_T")


def _quote(name: str) -> str:
    return name if _BARE_KEY.fullmatch(name) else json.dumps(name, ensure_ascii=False)


class _Table:
    """One TOML table being read: remembers which keys were used, so the rest are unknown."""

    def __init__(self, data: Mapping[str, Any], path: str) -> None:
        self.data = data
        self.path = path
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{_quote(name)}" if self.path else _quote(name)

    def take(self, name: str) -> Any:
        self.used.add(name)
        return self.data.get(name, _MISSING)

    def table(self, name: str) -> _Table:
        value = self.take(name)
        if value is _MISSING:
            value = {}
        elif not isinstance(value, dict):
            raise ConfigError(self.key(name), "must be a table")
        return _Table(value, self.key(name))

    def string(self, name: str, default: str) -> str:
        value = self.take(name)
        if value is _MISSING:
            return default
        if not isinstance(value, str):
            raise ConfigError(self.key(name), f"must be a string, not {_kind(value)}")
        return value

    def strings(self, name: str, default: list[str]) -> list[str]:
        value = self.take(name)
        if value is _MISSING:
            return list(default)
        if not isinstance(value, list):
            raise ConfigError(self.key(name), f"must be a list of strings, not {_kind(value)}")
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise ConfigError(f"{self.key(name)}[{i}]", f"must be a string, not {_kind(item)}")
        return value

    def numbers(self, cls: type[_T]) -> dict[str, Any]:
        """Read the numeric fields of dataclass ``cls``, checking each against its range;
        a key left out gets the field's default."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            if f.type not in ("int", "float"):  # annotations are strings (__future__)
                continue
            value = self.take(f.name)
            key, low, high = self.key(f.name), f.metadata["low"], f.metadata["high"]
            if value is _MISSING:
                out[f.name] = f.default
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or (
                    f.type == "int" and not isinstance(value, int)):
                wanted = "an integer" if f.type == "int" else "a number"
                raise ConfigError(key, f"must be {wanted}, not {_kind(value)}")
            if value != value:
                raise ConfigError(key, "must be a number, not nan")
            if low == "gt0" and not value > 0:
                raise ConfigError(key, "must be greater than 0")
            if isinstance(low, (int, float)) and value < low:
                raise ConfigError(key, f"must be at least {low}")
            if high is not None and value > high:
                raise ConfigError(key, f"must be at most {high}")
            out[f.name] = float(value) if f.type == "float" else value
        return out

    def finish(self) -> None:
        for name in self.data:
            if name not in self.used:
                raise ConfigError(self.key(name), "unknown key")


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    return {
        str: "a string", int: "an integer", float: "a float", list: "a list", dict: "a table",
    }.get(type(value), f"a {type(value).__name__}")


def _domain(text: str, key: str) -> str:
    """A domain name (U-label or A-label, any case) as a lower-case A-label."""
    try:
        domain = parse_domain(text, smtputf8=True)
        if domain.is_literal:
            raise AddressError("an address literal is not a domain name")
        return domain.ascii()
    except AddressError as exc:
        raise ConfigError(key, f"invalid domain {text!r}: {exc}") from None


def _address(text: str, key: str, *, fold: bool) -> tuple[str, str]:
    """Parse ``local@domain``; return (address text, A-label domain).

    The domain always becomes a lower-case A-label; the local part is folded to lower case
    only when ``fold`` (a local mailbox name), since remote local parts may be case-sensitive
    (RFC 5321 section 2.4). A local part that needs quoting stays quoted, so the text parses.
    """
    try:
        mailbox = parse_mailbox(text, smtputf8=True)
        assert mailbox.domain is not None
        ascii_domain = mailbox.domain.ascii()
    except AddressError as exc:
        raise ConfigError(key, f"invalid address {text!r}: {exc}") from None
    local = mailbox.local_part.lower() if fold else mailbox.local_part
    return str(Mailbox(local, Domain(ascii_domain, mailbox.domain.is_literal))), ascii_domain


def _parse_host_port(text: str, key: str, *, default_port: int | None = None,
                     ip_only: bool = False, min_port: int = 1) -> HostPort:
    """``host:port``, ``[v6]:port``; with ``default_port`` the port may be left out."""
    if text.startswith("["):
        end = text.find("]")
        host, rest = (text[1:end], text[end + 1:]) if end > 0 else ("", "")
        if not _is_ip(host, 6):
            raise ConfigError(key, f"{text!r}: bad bracketed IPv6 address")
        if rest and not rest.startswith(":"):
            raise ConfigError(key, f"{text!r}: expected ':port' after ']'")
        port_text = rest[1:] if rest else None
    elif text.count(":") > 1:
        if default_port is None or not _is_ip(text, 6):
            raise ConfigError(key, f"{text!r}: write an IPv6 address as [address]:port")
        host, port_text = text, None
    else:
        host, colon, after = text.partition(":")
        port_text = after if colon else None
    if port_text is None:
        if default_port is None:
            raise ConfigError(key, f"{text!r}: missing ':port'")
        port = default_port
    else:
        if not port_text.isascii() or not port_text.isdigit():
            raise ConfigError(key, f"{text!r}: port must be a number")
        port = int(port_text)
        if not min_port <= port <= 65535:
            raise ConfigError(key, f"{text!r}: port must be {min_port} to 65535")
    if _is_ip(host):
        return str(ipaddress.ip_address(host)), port
    if ip_only:
        raise ConfigError(key, f"{text!r}: not an IP address")
    if host.lower() == "localhost":
        return "localhost", port
    return _domain(host, key), port


def _is_ip(text: str, version: int | None = None) -> bool:
    if "%" in text:
        return False
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return False
    return version is None or addr.version == version


def _path(text: str, key: str, base: Path) -> Path:
    if not text:
        raise ConfigError(key, "must not be empty")
    if "\0" in text:
        raise ConfigError(key, "must not contain NUL")
    return Path(os.path.abspath(base / Path(text).expanduser()))


def _read_listen(table: _Table) -> ListenConfig:
    defaults = ListenConfig()
    out: dict[str, tuple[HostPort, ...]] = {}
    for role in ("smtp", "submission", "submissions"):
        written = [f"{h}:{p}" for h, p in getattr(defaults, role)]
        items = table.strings(role, written)
        key = table.key(role)
        out[role] = tuple(_parse_host_port(item, f"{key}[{i}]", min_port=0)
                          for i, item in enumerate(items))
    table.finish()
    return ListenConfig(**out)


def _read_tls(table: _Table, base: Path) -> TlsConfig:
    paths: dict[str, Path | None] = {}
    for name in ("cert", "key"):
        text = table.string(name, "")
        paths[name] = _path(text, table.key(name), base) if name in table.data else None
    sni_table = table.table("sni")
    sni: dict[str, tuple[Path, Path]] = {}
    for name in sni_table.data:
        entry = sni_table.table(name)
        host = _domain(name, entry.path)
        pair = []
        for part in ("cert", "key"):
            if part not in entry.data:
                raise ConfigError(entry.key(part), "each SNI name needs a cert and a key")
            file = _path(entry.string(part, ""), entry.key(part), base)
            if not (file.is_file() and os.access(file, os.R_OK)):
                raise ConfigError(entry.key(part), f"cannot read file {str(file)!r}")
            pair.append(file)
        entry.finish()
        sni[host] = (pair[0], pair[1])
    sni_table.finish()
    table.finish()
    if (paths["cert"] is None) != (paths["key"] is None):
        missing = "key" if paths["key"] is None else "cert"
        raise ConfigError(table.key(missing), "tls.cert and tls.key go together: give both")
    for name, path in paths.items():
        if path is not None and not (path.is_file() and os.access(path, os.R_OK)):
            raise ConfigError(table.key(name), f"cannot read file {str(path)!r}")
    return TlsConfig(cert=paths["cert"], key=paths["key"], sni=MappingProxyType(sni))


def _read_domains(table: _Table, hostname: str) -> DomainsConfig:
    key = table.key("local")
    local: list[str] = []
    for i, name in enumerate(table.strings("local", [hostname])):
        ascii_name = _domain(name, f"{key}[{i}]")
        if ascii_name not in local:
            local.append(ascii_name)
    catch_table = table.table("catchall")
    catchall: dict[str, str] = {}
    for domain in catch_table.data:
        entry = catch_table.key(domain)
        ascii_name = _domain(domain, entry)
        if ascii_name not in local:
            raise ConfigError(entry, f"{domain!r} is not a local domain")
        catchall[ascii_name] = _address(catch_table.string(domain, ""), entry, fold=False)[0]
    wildcard: list[str] = []
    wkey = table.key("wildcard")
    for i, name in enumerate(table.strings("wildcard", [])):
        ascii_name = _domain(name, f"{wkey}[{i}]")
        if ascii_name not in local:
            raise ConfigError(f"{wkey}[{i}]", f"{name!r} is not a local domain")
        wildcard.append(ascii_name)
    table.finish()
    return DomainsConfig(local=tuple(local), catchall=MappingProxyType(catchall),
                         wildcard=tuple(wildcard))


def _read_aliases(table: _Table, local: tuple[str, ...]) -> Mapping[str, tuple[str, ...]]:
    aliases: dict[str, tuple[str, ...]] = {}
    for name, value in table.data.items():
        key = table.key(name)
        source, domain = _address(name, key, fold=True)
        if domain not in local:
            raise ConfigError(key, f"{domain!r} is not a local domain")
        if not isinstance(value, (str, list)):
            raise ConfigError(key, f"must be an address or a list of them, not {_kind(value)}")
        targets = [value] if isinstance(value, str) else table.strings(name, [])
        if not targets:
            raise ConfigError(key, "needs at least one target address")
        many = not isinstance(value, str)
        folded = tuple(_address(t, f"{key}[{i}]" if many else key, fold=False)[0]
                       for i, t in enumerate(targets))
        aliases[source] = aliases.get(source, ()) + folded
    return MappingProxyType(aliases)


def _read_dns(table: _Table) -> DnsConfig:
    key = table.key("nameservers")
    servers = tuple(_parse_host_port(item, f"{key}[{i}]", default_port=53, ip_only=True)
                    for i, item in enumerate(table.strings("nameservers", [])))
    numbers = table.numbers(DnsConfig)
    table.finish()
    return DnsConfig(nameservers=servers, **numbers)


def _read_delivery(table: _Table, base_dir: Path) -> DeliveryConfig:
    relayhost = table.string("relayhost", "")
    if relayhost:
        _parse_host_port(relayhost, table.key("relayhost"))
    tls_key = table.key("require_tls")
    require_tls = tuple(
        name if name == "*" else _domain(name, f"{tls_key}[{i}]")
        for i, name in enumerate(table.strings("require_tls", [])))
    user = table.string("relay_username", "")
    password = table.string("relay_password", "")
    if bool(user) != bool(password):
        raise ConfigError(table.key("relay_password" if user else "relay_username"),
                          "relay_username and relay_password go together")
    mta_sts = table.take("mta_sts")
    if mta_sts is _MISSING:
        mta_sts = True
    elif not isinstance(mta_sts, bool):
        raise ConfigError(table.key("mta_sts"), f"must be true or false, not {_kind(mta_sts)}")
    ca_file = table.string("mta_sts_ca_file", "")
    if ca_file:  # relative to the config file, like every path
        ca_file = str(_path(ca_file, table.key("mta_sts_ca_file"), base_dir))
        if not Path(ca_file).is_file():
            raise ConfigError(table.key("mta_sts_ca_file"), f"no such file: {ca_file}")
    numbers = table.numbers(DeliveryConfig)
    table.finish()
    if numbers["retry_max"] < numbers["retry_first"]:
        raise ConfigError(table.key("retry_max"), "must be at least delivery.retry_first")
    return DeliveryConfig(relayhost=relayhost, require_tls=require_tls, relay_username=user,
                          relay_password=password, mta_sts=mta_sts,
                          mta_sts_ca_file=ca_file, **numbers)


def _read_submission(table: _Table) -> SubmissionConfig:
    defaults = SubmissionConfig()
    policy = table.string("sender_policy", defaults.sender_policy)
    if policy not in SENDER_POLICIES:
        raise ConfigError(table.key("sender_policy"),
                          f"must be one of {', '.join(SENDER_POLICIES)}")
    nets_key = table.key("trusted_networks")
    networks = []
    for i, text in enumerate(table.strings("trusted_networks", [])):
        try:
            networks.append(str(ipaddress.ip_network(text, strict=False)))
        except ValueError:
            raise ConfigError(f"{nets_key}[{i}]", f"not a CIDR network: {text!r}") from None
    mech_key = table.key("auth_mechanisms")
    mechanisms = []
    for i, text in enumerate(table.strings("auth_mechanisms", list(defaults.auth_mechanisms))):
        if text.upper() not in SASL_MECHANISMS:
            raise ConfigError(f"{mech_key}[{i}]",
                              f"must be one of {', '.join(SASL_MECHANISMS)}")
        mechanisms.append(text.upper())
    plain = table.take("auth_without_tls")
    if plain is _MISSING:
        plain = defaults.auth_without_tls
    elif not isinstance(plain, bool):
        raise ConfigError(table.key("auth_without_tls"),
                          f"must be true or false, not {_kind(plain)}")
    numbers = table.numbers(SubmissionConfig)
    table.finish()
    return SubmissionConfig(sender_policy=policy, trusted_networks=tuple(networks),
                            auth_mechanisms=tuple(mechanisms), auth_without_tls=plain,
                            **numbers)


def _read_authentication(table: _Table, default_checks: bool) -> AuthenticationConfig:
    checks = table.take("checks")
    if checks is _MISSING:
        checks = default_checks
    elif not isinstance(checks, bool):
        raise ConfigError(table.key("checks"), f"must be true or false, not {_kind(checks)}")
    reject = table.string("dmarc_reject", "reject")
    if reject not in AUTH_ACTIONS:
        raise ConfigError(table.key("dmarc_reject"), f"must be one of {', '.join(AUTH_ACTIONS)}")
    quarantine = table.string("dmarc_quarantine", "quarantine")
    if quarantine not in ("quarantine", "mark"):
        raise ConfigError(table.key("dmarc_quarantine"), "must be quarantine or mark")
    numbers = table.numbers(AuthenticationConfig)
    table.finish()
    return AuthenticationConfig(checks=checks, dmarc_reject=reject,
                                dmarc_quarantine=quarantine, **numbers)


def _read_log(table: _Table) -> LogConfig:
    level = table.string("level", LogConfig().level)
    if level not in LOG_LEVELS:
        raise ConfigError(table.key("level"), f"must be one of {', '.join(LOG_LEVELS)}")
    table.finish()
    return LogConfig(level=level)


def _flat(table: _Table, cls: type[_T]) -> _T:
    values = table.numbers(cls)
    table.finish()
    return cls(**values)


def parse_config(data: Mapping[str, Any], *, base_dir: Path,
                 source: Path | None = None) -> Config:
    """Validate parsed TOML; relative paths are taken relative to ``base_dir``."""
    top = _Table(data, "")
    hostname = _domain(top.string("hostname", DEFAULT_HOSTNAME), "hostname")
    data_dir = _path(top.string("data_dir", DEFAULT_DATA_DIR), "data_dir", base_dir)
    listen = _read_listen(top.table("listen"))
    tls = _read_tls(top.table("tls"), base_dir)
    domains = _read_domains(top.table("domains"), hostname)
    aliases = _read_aliases(top.table("aliases"), domains.local)
    limits = _flat(top.table("limits"), LimitsConfig)
    dns = _read_dns(top.table("dns"))
    delivery = _read_delivery(top.table("delivery"), base_dir)
    queue = _flat(top.table("queue"), QueueConfig)
    submission = _read_submission(top.table("submission"))
    authentication = _read_authentication(top.table("authentication"), default_checks=True)
    log = _read_log(top.table("log"))
    top.finish()
    return Config(hostname=hostname, data_dir=data_dir, listen=listen, tls=tls,
                  domains=domains, aliases=aliases, limits=limits, dns=dns,
                  delivery=delivery, queue=queue, submission=submission,
                  authentication=authentication, log=log,
                  source=source)


def loads_config(text: str, *, base_dir: Path, source: Path | None = None) -> Config:
    """Parse TOML text; a syntax error is reported against ``source`` (or "config")."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(source) if source else "config", f"not valid TOML: {exc}") from None
    return parse_config(data, base_dir=base_dir, source=source)


def load_config(path: str | None = None) -> Config:
    """Load ``path``, else ``$POSTWRIGHT_CONFIG``, else the embedded defaults."""
    chosen = path or os.environ.get(ENV_VAR) or None
    if chosen is None:
        # Developer friendliness: with no file, any address at localhost.test is a mailbox.
        # ... and no DNS checks of incoming mail, which would have nothing to ask.
        return parse_config({"domains": {"wildcard": [DEFAULT_HOSTNAME]},
                             "authentication": {"checks": False}}, base_dir=Path.cwd())
    file = Path(os.path.abspath(Path(chosen).expanduser()))
    try:
        text = file.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError(str(file), f"cannot read configuration file: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(str(file), "configuration file is not UTF-8") from None
    return loads_config(text, base_dir=file.parent, source=file)


def _toml(value: Any) -> str:
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(value)


_TOP_NOTES = {
    "hostname": "our name: greeting, Received:, DSNs; a domain name",
    "data_dir": "queue, mail, accounts.json, keys; relative to this file's directory",
    "listen": 'each a list of "host:port" ("[::1]:25" for IPv6); [] disables it',
    "tls": "PEM files, both or neither; neither: a self-signed certificate under data_dir",
    "aliases": 'address = ["target", ...] or "target"; keys must be in local domains',
}


def dump_defaults() -> str:
    """An example configuration with every key at its default, each with a comment saying
    what it means. Parsing this text gives the embedded defaults."""
    host = DEFAULT_HOSTNAME
    out = [
        "# postwright configuration: every key with its default value.",
        f"hostname = {_toml(host)}  # {_TOP_NOTES['hostname']}",
        f"data_dir = {_toml(DEFAULT_DATA_DIR)}  # {_TOP_NOTES['data_dir']}",
    ]
    sections: list[tuple[str, Any]] = [
        ("listen", ListenConfig()), ("tls", None),
        ("domains", DomainsConfig(wildcard=(host,))),
        ("aliases", None), ("limits", LimitsConfig()), ("dns", DnsConfig()),
        ("delivery", DeliveryConfig()), ("queue", QueueConfig()),
        ("submission", SubmissionConfig()),
        ("authentication", AuthenticationConfig(checks=False)), ("log", LogConfig())]
    for section, defaults in sections:
        note = f"  # {_TOP_NOTES[section]}" if section in _TOP_NOTES else ""
        out += ["", f"[{section}]{note}"]
        if section == "tls":
            out += ['# cert = "/etc/postwright/cert.pem"', '# key = "/etc/postwright/key.pem"',
                    '# [tls.sni."mail.other.test"]  # a certificate per host name (SNI)',
                    '# cert = "/etc/postwright/other.pem"',
                    '# key = "/etc/postwright/other.key"']
        elif section == "aliases":
            out.append(f'# "postmaster@{host}" = ["alice@{host}"]')
        for f in dataclasses.fields(defaults) if defaults is not None else ():
            value = getattr(defaults, f.name)
            if f.name == "catchall":
                out += ["", f"[domains.catchall]  # {f.metadata['note']}",
                        f'# "{host}" = "postmaster@{host}"']
                continue
            if f.type == "tuple[HostPort, ...]":
                value = tuple(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in value)
            out.append(f"{f.name} = {_toml(value)}  # {f.metadata['note']}")
    return "\n".join(out) + "\n"
