"""A private Postfix instance on loopback, for tests and benches.

:class:`PrivatePostfix` builds a Postfix instance that shares nothing with the system one:
under a directory ``root`` it gets its own ``config_directory`` (``root/etc``),
``queue_directory`` (``root/spool``), ``data_directory`` (``root/data``) and log file
(``root/maillog``, written by postlogd). smtpd listens on one loopback address and port given
in master.cf, no service is chrooted, and virtual(8) delivers mail for one domain into
Maildirs under ``root/mail`` as an unprivileged user (``nobody``, else ``postfix``). It is
started with ``postfix -c root/etc start`` and stopped with ``... stop``; processes that
outlive the stop are killed by their process group, which is the master's own.

The settings every user needs are written here; what differs between users (which mailboxes
exist, recipient restrictions, TLS, a relay host, ...) comes in as extra main.cf and master.cf
lines, appended after the common ones. The integration tests use it as a receiving MX for
postwright's outbound delivery, the benchmark as a peer to measure against.

What it does not do: install Postfix, create its ``postfix`` user or ``postdrop`` group, or
run without root (:meth:`PrivatePostfix.unavailable` says why it cannot). Nothing here is used
by the running server. No RFC is implemented here; Postfix speaks RFC 5321.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

POSTFIX = Path(shutil.which("postfix") or "/usr/sbin/postfix")

# chroot off everywhere: the instance lives in a temporary directory, not a chroot jail
_SERVICES = """\
pickup unix n - n 60 1 pickup
cleanup unix n - n - 0 cleanup
qmgr unix n - n 300 1 qmgr
rewrite unix - - n - - trivial-rewrite
bounce unix - - n - 0 bounce
defer unix - - n - 0 bounce
trace unix - - n - 0 bounce
verify unix - - n - 1 verify
flush unix n - n 1000? 0 flush
proxymap unix - - n - - proxymap
smtp unix - - n - - smtp
relay unix - - n - - smtp
showq unix n - n - - showq
error unix - - n - - error
retry unix - - n - - error
discard unix - - n - - discard
local unix - n n - - local
virtual unix - n n - - virtual
anvil unix - - n - 1 anvil
scache unix - - n - 1 scache
postlog unix-dgram n - n - 1 postlogd
"""


class PostfixError(Exception):
    """The instance could not be configured or started; the message says why, in one line."""


def wait_for_greeting(host: str, port: int, timeout: float, exited: Callable[[], str | None],
                      error: type[Exception]) -> str:
    """Connect until the server on ``host:port`` sends its 220 line (then QUIT); return that
    line. Raises ``error`` on timeout, or as soon as ``exited()`` gives a reason (the server
    process is gone)."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        why = exited()
        if why is not None:
            raise error(why)
        try:
            with socket.create_connection((host, port), timeout=2) as s:
                line = s.makefile("rb").readline().decode(errors="replace").strip()
                if line.startswith("220"):
                    s.sendall(b"QUIT\r\n")
                    return line
                last = line or "empty greeting"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.05)
    raise error(f"no 220 greeting on {host}:{port} within {timeout:.0f}s ({last})")


def _mailbox_user() -> tuple[int, int]:
    """An unprivileged uid/gid for virtual(8) deliveries (uid >= virtual_minimum_uid)."""
    for name in ("nobody", "postfix"):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return entry.pw_uid, entry.pw_gid
    raise PostfixError("no unprivileged user (nobody or postfix) for mailbox ownership")


def processes() -> dict[int, tuple[int, int]]:
    """Every live process as pid -> (parent pid, process group), read from /proc."""
    found = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2:].split()  # state, ppid, pgrp, ...
        found[int(entry.name)] = (int(fields[1]), int(fields[2]))
    return found


def _group_members(pgid: int) -> list[int]:
    """The live processes whose process group is ``pgid``."""
    return sorted(pid for pid, (_ppid, group) in processes().items() if group == pgid)


class PrivatePostfix:
    """A Postfix instance living under ``root``, smtpd on ``host:port``, receiving ``domain``.

    ``main_cf_extra`` and ``master_cf_extra`` are appended to the generated files; paths in
    them can use the layout above (``root / "etc"`` and so on). :meth:`configure` writes the
    files (call it first to add files of your own to :attr:`etc`), :meth:`start` starts the
    instance and :meth:`stop` ends it.
    """

    def __init__(self, root: Path, port: int, *, domain: str, hostname: str,
                 host: str = "127.0.0.1", main_cf_extra: str = "",
                 master_cf_extra: str = "") -> None:
        self.root = root
        self.port = port
        self.host = host
        self.domain = domain
        self.hostname = hostname
        self.main_cf_extra = main_cf_extra
        self.master_cf_extra = master_cf_extra
        self.etc = root / "etc"
        self.spool = root / "spool"
        self.data = root / "data"
        self.mail = root / "mail"  # Maildirs: mail/<path from virtual_mailbox_maps>
        self.log = root / "maillog"
        self.master_pid: int | None = None

    @staticmethod
    def unavailable() -> str | None:
        """Why no private instance can run on this machine, or None."""
        if not POSTFIX.exists():
            return f"{POSTFIX} not found (apt-get install postfix)"
        if os.geteuid() != 0:
            return "starting a private Postfix instance needs root"
        for what, look in (("user postfix", lambda: pwd.getpwnam("postfix")),
                           ("group postdrop", lambda: grp.getgrnam("postdrop"))):
            try:
                look()
            except KeyError:
                return f"{what} does not exist"
        return None

    def main_cf(self, uid: int, gid: int) -> str:
        """main.cf: the common settings, virtual(8) as ``uid``/``gid``, then the extra lines."""
        return f"""\
compatibility_level = 3.6
config_directory = {self.etc}
queue_directory = {self.spool}
data_directory = {self.data}
mail_owner = postfix
setgid_group = postdrop
myhostname = {self.hostname}
mydomain = {self.domain}
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
virtual_mailbox_domains = {self.domain}
virtual_mailbox_base = {self.mail}
virtual_uid_maps = static:{uid}
virtual_gid_maps = static:{gid}
maillog_file = {self.log}
maillog_file_prefixes = {self.root}
alias_maps =
alias_database =
append_dot_mydomain = no
biff = no
""" + self.main_cf_extra

    def master_cf(self) -> str:
        """master.cf: smtpd on our address, the stock services without chroot, the extras."""
        return (f"{self.host}:{self.port} inet n - n - - smtpd\n" + _SERVICES
                + self.master_cf_extra)

    def configure(self) -> None:
        """Create the directories (owned as Postfix needs them) and write the two files."""
        uid, gid = _mailbox_user()
        owner = pwd.getpwnam("postfix")
        self.root.mkdir(parents=True, exist_ok=True)
        for sub in (self.etc, self.spool, self.data, self.mail):
            sub.mkdir(exist_ok=True)
        self.root.chmod(0o755)  # daemons running as postfix or nobody must traverse it
        os.chown(self.data, owner.pw_uid, owner.pw_gid)
        os.chown(self.mail, uid, gid)
        (self.etc / "main.cf").write_text(self.main_cf(uid, gid))
        (self.etc / "master.cf").write_text(self.master_cf())

    def _postfix(self, command: str, timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(POSTFIX), "-c", str(self.etc), command],
                              capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)

    def _log_tail(self, lines: int = 5) -> str:
        tail = self.log_text().strip().splitlines()[-lines:]
        return f"; log: {' | '.join(tail)}" if tail else ""

    def _read_master_pid(self) -> None:
        try:
            self.master_pid = int((self.spool / "pid/master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            self.master_pid = None

    def start(self, timeout: float = 20.0) -> str:
        """Start (configuring first if :meth:`configure` was not called) and wait up to
        ``timeout`` seconds for smtpd's greeting; return that 220 line. On failure the
        instance is stopped and :class:`PostfixError` raised."""
        if not (self.etc / "main.cf").exists():
            self.configure()
        res = self._postfix("start", timeout=60)
        self._read_master_pid()
        if res.returncode != 0:
            why = (res.stderr or res.stdout).strip().replace("\n", " | ")
            self.stop()  # in case a master came up after all
            raise PostfixError(f"postfix start failed ({why or f'exit status {res.returncode}'})"
                               + self._log_tail())
        if self.master_pid is None:
            self.stop()
            raise PostfixError(f"postfix left no master.pid in {self.spool}/pid"
                               + self._log_tail())
        try:
            return wait_for_greeting(self.host, self.port, timeout, self._master_gone,
                                     PostfixError)
        except PostfixError as exc:
            self.stop()
            raise PostfixError(f"{exc}{self._log_tail()}") from None

    def _master_gone(self) -> str | None:
        if self.master_pid is not None and not os.path.exists(f"/proc/{self.master_pid}"):
            return "the Postfix master exited during start-up"
        return None

    def stop(self) -> None:
        """``postfix stop``, wait up to 10 s for its processes to end, kill what is left of
        the master's process group. Does nothing if the instance is not running."""
        if self.master_pid is None:
            return
        if not self.pids():  # the master is gone already (a failed start): nothing to stop
            self.master_pid = None
            return
        try:
            self._postfix("stop", timeout=30)
        except subprocess.TimeoutExpired:
            pass
        deadline = time.monotonic() + 10
        while self.pids() and time.monotonic() < deadline:
            time.sleep(0.1)
        if self.pids():
            try:
                os.killpg(self.master_pid, signal.SIGKILL)  # the group our master leads
            except ProcessLookupError:
                pass
        self.master_pid = None

    def pids(self) -> list[int]:
        """The instance's live processes: the master and every daemon in its process group."""
        return _group_members(self.master_pid) if self.master_pid is not None else []

    def log_text(self) -> str:
        """Everything Postfix logged so far (``root/maillog``), or "" before it exists."""
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""
