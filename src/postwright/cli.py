"""The command line: ``postwright COMMAND [--config FILE] ...``.

Each command group is a ``register_*(subparsers, common)`` function listed in ``COMMANDS``;
it adds its parser (with ``parents=[common]``, which gives it ``--config`` after the command
name) and sets ``func`` to a handler ``(args) -> exit status``. :func:`main` parses, runs the
handler and turns errors into exit statuses:

- 0: done; 1: an operational failure (no such user, a file that cannot be written);
- 2: a usage or configuration error (``error: <key>: <message>`` for a bad config key).

The configuration comes from ``--config FILE``, else ``$POSTWRIGHT_CONFIG``, else the
embedded defaults (:func:`postwright.config.load_config`). This module only wires arguments
to the library; it holds no mail logic.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from . import __version__, build
from .accounts import AccountStore, InvalidAddressError, fold_address
from .config import Config, load_config
from .errors import ConfigError, PostwrightError

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

Subparsers = Any  # argparse's _SubParsersAction, which it does not export
Registrar = Callable[[Subparsers, argparse.ArgumentParser], None]


class CliError(Exception):
    """A failure to report as ``error: <message>`` with exit status ``status``."""

    def __init__(self, message: str, status: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.status = status


def _config(args: argparse.Namespace) -> Config:
    return load_config(getattr(args, "config", None))


def _source(config: Config) -> str:
    return str(config.source) if config.source else "embedded defaults"


# -- check-config ------------------------------------------------------------------------

def register_check_config(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser("check-config", parents=[common],
                            help="validate the configuration and exit")
    parser.set_defaults(func=cmd_check_config)


def cmd_check_config(args: argparse.Namespace) -> int:
    config = _config(args)
    print(f"configuration OK: {_source(config)}")
    return EXIT_OK


# -- user ----------------------------------------------------------------------------------

def register_user(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    group = sub.add_parser("user", parents=[common], help="manage accounts (mailboxes, AUTH)")
    users = group.add_subparsers(dest="user_command", metavar="COMMAND", required=True)

    def with_password(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--password-stdin", action="store_true", required=True,
                            help="read the password from stdin (one trailing newline is "
                                 "stripped)")

    add = users.add_parser("add", parents=[common], help="create an account")
    add.add_argument("address")
    with_password(add)
    add.set_defaults(func=cmd_user_add)

    delete = users.add_parser("delete", parents=[common],
                              help="remove an account (its mailbox files are kept)")
    delete.add_argument("address")
    delete.set_defaults(func=cmd_user_delete)

    passwd = users.add_parser("passwd", parents=[common], help="set an account's password")
    passwd.add_argument("address")
    with_password(passwd)
    passwd.set_defaults(func=cmd_user_passwd)

    listing = users.add_parser("list", parents=[common], help="list accounts")
    listing.add_argument("--json", action="store_true",
                         help='print a JSON array of {"address": ...}')
    listing.set_defaults(func=cmd_user_list)


def read_password_stdin() -> str:
    """The password on stdin, minus exactly one trailing "\\n" or "\\r\\n"."""
    raw = sys.stdin.buffer.read()
    try:
        password = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise CliError("the password on stdin is not UTF-8") from None
    if password.endswith("\r\n"):
        password = password[:-2]
    elif password.endswith("\n"):
        password = password[:-1]
    if not password:
        raise CliError("empty password on stdin")
    if "\0" in password:
        raise CliError("the password must not contain NUL (SASL PLAIN cannot carry it)")
    return password


def _address(text: str) -> str:
    try:
        return fold_address(text)
    except InvalidAddressError as exc:
        raise CliError(str(exc)) from None


def cmd_user_add(args: argparse.Namespace) -> int:
    config = _config(args)
    name = _address(args.address)
    domain = name.rpartition("@")[2]
    if domain not in config.domains.local:
        raise CliError(f"{domain} is not a local domain (domains.local: "
                       f"{', '.join(config.domains.local) or 'none'}; in {_source(config)})")
    password = read_password_stdin()
    AccountStore(config.accounts_path).add(name, password)
    print(f"account added: {name}")
    return EXIT_OK


def cmd_user_delete(args: argparse.Namespace) -> int:
    config = _config(args)
    name = AccountStore(config.accounts_path).delete(_address(args.address))
    print(f"account deleted: {name}")
    return EXIT_OK


def cmd_user_passwd(args: argparse.Namespace) -> int:
    config = _config(args)
    name = _address(args.address)
    store = AccountStore(config.accounts_path)
    if not store.exists(name):  # before reading stdin, so the error comes first
        raise CliError(f"no account {name}", EXIT_FAILURE)
    store.set_password(name, read_password_stdin())
    print(f"password changed: {name}")
    return EXIT_OK


def cmd_user_list(args: argparse.Namespace) -> int:
    config = _config(args)
    names = AccountStore(config.accounts_path).list()
    if args.json:
        print(json.dumps([{"address": n} for n in names], ensure_ascii=False))
    else:
        for name in names:
            print(name)
    return EXIT_OK


# -- wiring --------------------------------------------------------------------------------

# -- serve -------------------------------------------------------------------------------

def register_serve(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser("serve", parents=[common],
                            help="run the mail server in the foreground")
    parser.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    from . import logs
    from .app import serve

    config = _config(args)
    logs.setup(config.log.level)
    return serve(config)


# -- queue -------------------------------------------------------------------------------

def register_queue(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser("queue", help="inspect and manage the mail queue")
    ops = parser.add_subparsers(dest="queue_command", metavar="OPERATION", required=True)
    listing = ops.add_parser("list", parents=[common], help="list queued messages")
    listing.add_argument("--json", action="store_true", help="print a JSON array")
    listing.set_defaults(func=cmd_queue, op="list")
    for op, text in (("show", "show one message"), ("delete", "delete a message"),
                     ("hold", "keep a message from delivery"),
                     ("release", "release a held message")):
        one = ops.add_parser(op, parents=[common], help=text)
        one.add_argument("id", metavar="ID")
        one.set_defaults(func=cmd_queue, op=op)
    flush = ops.add_parser("flush", parents=[common], help="make every deferred message due now")
    flush.set_defaults(func=cmd_queue, op="flush")


def _queue_call(config: Config, op: str, qid: str | None) -> Any:
    """Ask the running server over its control socket; without one, open the queue here."""
    import asyncio

    from .control import queue_op, request
    from .queue import QueueStore

    sock = config.data_dir / "control.sock"
    try:
        return request(sock, op, qid)
    except (FileNotFoundError, ConnectionRefusedError):
        pass
    store = QueueStore(config.queue_dir)
    store.open(readonly=op in ("list", "show"))

    async def run() -> Any:
        try:
            return await queue_op(store, op, qid)
        finally:
            await store.aclose()

    return asyncio.run(run())


def cmd_queue(args: argparse.Namespace) -> int:
    config = _config(args)
    result = _queue_call(config, args.op, getattr(args, "id", None))
    if args.op == "list":
        if args.json:
            print(json.dumps(result, indent=2))
        else:
            _print_queue(result)
    elif args.op == "show":
        print(json.dumps({k: v for k, v in result.items() if k != "headers"}, indent=2))
        print()
        print(result["headers"])
    elif args.op == "flush":
        print(f"{result['flushed']} recipient(s) due now")
    else:
        print(f"{args.op}: {args.id}")
    return EXIT_OK


def _print_queue(messages: list[dict[str, Any]]) -> None:
    if not messages:
        print("queue is empty")
        return
    for m in messages:
        held = " (held)" if m["held"] else ""
        print(f"{m['id']}  {m['size']:>9}  {m['arrived']}  <{m['sender']}>{held}")
        for r in m["recipients"]:
            reply = f"  {r['last_reply']}" if r["last_reply"] else ""
            print(f"    {r['status']:<9} {r['address']}  attempts={r['attempts']}{reply}")
    print(f"{len(messages)} message(s)")


# -- send --------------------------------------------------------------------------------

def register_send(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser("send", parents=[common],
                            help="send a message whose body is read from stdin")
    parser.add_argument("--from", dest="sender", required=True, metavar="ADDRESS")
    parser.add_argument("--to", dest="recipients", required=True, action="append",
                        metavar="ADDRESS", help="repeat for several recipients")
    parser.add_argument("--subject")
    parser.add_argument("--server", metavar="HOST:PORT",
                        help="send over SMTP to this server instead of the local queue")
    parser.set_defaults(func=cmd_send)


def cmd_send(args: argparse.Namespace) -> int:
    import asyncio
    import base64

    from .submit import SubmitError, check_address, compose

    config = _config(args)
    try:
        sender = check_address(args.sender, "--from")
        recipients = [check_address(r, "--to") for r in args.recipients]
        message = compose(sender=sender, recipients=recipients, subject=args.subject,
                          body=sys.stdin.buffer.read(), hostname=config.hostname)
    except SubmitError as exc:
        raise CliError(str(exc)) from None
    if args.server:
        return _send_smtp(args.server, sender, recipients, message)
    from .control import request

    try:
        result = request(config.data_dir / "control.sock", "submit", sender=sender,
                         recipients=recipients, message=base64.b64encode(message).decode())
        print(f"queued as {result['id']}")
        return EXIT_OK
    except (FileNotFoundError, ConnectionRefusedError):
        pass
    from .accounts import AccountStore
    from .delivery.routing import Router
    from .queue import QueueStore
    from .submit import enqueue

    accounts = AccountStore(config.accounts_path)
    router = Router(local_domains=config.domains.local, aliases=config.aliases,
                    account_exists=accounts.exists, catchall=config.domains.catchall,
                    wildcard=config.domains.wildcard)
    store = QueueStore(config.queue_dir)
    store.open()

    async def run() -> str:
        try:
            return await enqueue(store, router, sender=sender, recipients=recipients,
                                 message=message, hostname=config.hostname)
        finally:
            await store.aclose()

    try:
        qid = asyncio.run(run())
    except SubmitError as exc:
        raise CliError(str(exc)) from None
    print(f"queued as {qid}")
    return EXIT_OK


def _send_smtp(server: str, sender: str, recipients: list[str], message: bytes) -> int:
    from .client import SendError, Timeouts, send

    host, _, port = server.rpartition(":")
    if not host or not port.isdigit():
        raise CliError(f"--server: expected HOST:PORT, got {server!r}")
    # Plain SMTP, as before: no STARTTLS, no AUTH; one minute for every wait.
    minute = Timeouts(connect=60, greeting=60, command=60, data_block=60, data_end=60)
    try:
        result = send(message, host=host.strip("[]"), port=int(port), sender=sender,
                      recipients=recipients, starttls=False, timeouts=minute)
    except SendError as exc:
        raise CliError(f"sending failed: {exc}", EXIT_FAILURE) from None
    except ValueError as exc:
        raise CliError(str(exc)) from None
    for rcpt, reply in result.refused.items():
        print(f"refused {rcpt}: {reply}", file=sys.stderr)
    if not result.accepted:
        raise CliError("sending failed: no recipient was accepted", EXIT_FAILURE)
    print("sent" if not result.refused else "sent to some recipients")
    return EXIT_OK if not result.refused else EXIT_FAILURE


COMMANDS: list[Registrar] = [register_check_config, register_user, register_serve,
                             register_queue, register_send]


# -- dkim --------------------------------------------------------------------------------

def register_dkim(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser("dkim", help="manage DKIM signing keys")
    ops = parser.add_subparsers(dest="dkim_command", metavar="OPERATION", required=True)
    keygen = ops.add_parser("keygen", parents=[common],
                            help="make a signing key for a local domain and print its TXT "
                                 "record in zone-file form")
    keygen.add_argument("domain", metavar="DOMAIN")
    keygen.add_argument("--selector", default="s1", help="DNS selector (default: s1)")
    keygen.add_argument("--algorithm", choices=("rsa", "ed25519"), default="rsa",
                        help="rsa (2048 bits, the default) or ed25519")
    keygen.add_argument("--force", action="store_true",
                        help="replace the key of an existing selector")
    keygen.set_defaults(func=cmd_dkim_keygen)


def cmd_dkim_keygen(args: argparse.Namespace) -> int:
    from .policy.dkimkeys import KeyExistsError, check_selector, fold_domain, keygen

    config = _config(args)
    try:
        domain = fold_domain(args.domain)
        selector = check_selector(args.selector)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    if domain not in config.domains.local:
        raise CliError(f"{domain} is not a local domain (domains.local: "
                       f"{', '.join(config.domains.local) or 'none'}; in {_source(config)})")
    try:
        _path, line = keygen(config.data_dir, domain, selector, args.algorithm,
                             force=args.force)
    except KeyExistsError as exc:
        raise CliError(f"{exc} (--force replaces it)", EXIT_FAILURE) from None
    print(line)
    return EXIT_OK


COMMANDS.append(register_dkim)


# -- dns-records -------------------------------------------------------------------------

def register_dns_records(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser("dns-records", parents=[common],
                            help="print the DNS records a local domain should publish, as "
                                 "zone-file lines")
    parser.add_argument("domain", metavar="DOMAIN")
    parser.add_argument("--check", action="store_true",
                        help="look each record up in the DNS and print OK, MISSING or "
                             "DIFFERENT (exit 1 unless all are OK)")
    parser.set_defaults(func=cmd_dns_records)


def cmd_dns_records(args: argparse.Namespace) -> int:
    import asyncio
    from datetime import UTC, datetime

    from .dnsrecords import check_records, plan_records
    from .net.dns import Resolver
    from .policy.dkimkeys import fold_domain, signing_key

    config = _config(args)
    try:
        domain = fold_domain(args.domain)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    if domain not in config.domains.local:
        raise CliError(f"{domain} is not a local domain (domains.local: "
                       f"{', '.join(config.domains.local) or 'none'}; in {_source(config)})")
    plan = plan_records(domain, config.hostname, signing_key(config.data_dir, domain),
                        datetime.now(UTC))
    if not args.check:
        print("\n".join(plan.lines()))
        return EXIT_OK
    resolver = Resolver(config.dns.nameservers, timeout=config.dns.timeout)
    results = asyncio.run(check_records(plan, resolver))
    for result in results:
        print(result.line())
    return EXIT_OK if all(r.ok for r in results) else EXIT_FAILURE


COMMANDS.append(register_dns_records)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: a subcommand's --config is set only when given, so it does not reset a
    # --config given before the subcommand name.
    common.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS,
                        help="configuration file (default: $POSTWRIGHT_CONFIG, else the "
                             "embedded defaults)")
    parser = argparse.ArgumentParser(prog="postwright",
                                     description="postwright: a mail server (SMTP, queue, "
                                                 "Maildir)")
    parser.add_argument("--version", action="version",
                        version=f"postwright {__version__} ({build()})")
    parser.add_argument("--config", metavar="FILE", default=None, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in COMMANDS:
        register(sub, common)
    return parser


def _error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; return its exit status (the console script exits with it)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error already printed
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or EXIT_OK
        return EXIT_USAGE
    handler: Callable[[argparse.Namespace], int] = args.func
    try:
        return handler(args)
    except ConfigError as exc:
        _error(f"{exc.key}: {exc.message}")
        return EXIT_USAGE
    except CliError as exc:
        _error(str(exc))
        return exc.status
    except PostwrightError as exc:
        _error(str(exc))
        return EXIT_FAILURE
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        _error(f"{exc.strerror or exc}{where}")
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130
