"""Tests for the private Postfix instance: real Postfix, real sockets on 127.0.0.1.

Skipped with the reason :meth:`PrivatePostfix.unavailable` gives when Postfix is missing or we
are not root.
"""

from __future__ import annotations

import os
import shutil
import smtplib
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from postwright.testing.postfix import POSTFIX, PostfixError, PrivatePostfix

pytestmark = pytest.mark.timeout(60)

DOMAIN = "pp.test"
EXTRA = f"virtual_mailbox_maps = static:{DOMAIN}/box/\nsmtpd_peername_lookup = no\n"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def instance() -> Iterator[PrivatePostfix]:
    if why := PrivatePostfix.unavailable():
        pytest.skip(why)
    # Not pytest's tmp_path: its parent is mode 0700, closed to Postfix's daemons.
    root = Path(tempfile.mkdtemp(prefix="pw-private-postfix-"))
    pf = PrivatePostfix(root, _free_port(), domain=DOMAIN, hostname=f"mx.{DOMAIN}",
                        main_cf_extra=EXTRA)
    try:
        yield pf
    finally:
        pf.stop()
        shutil.rmtree(root, ignore_errors=True)


def _alive(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}")


def test_configure_writes_common_and_extra_settings(instance: PrivatePostfix) -> None:
    instance.configure()
    assert (instance.etc / "main.cf").read_text().endswith(EXTRA)
    assert (instance.etc / "master.cf").read_text().startswith(
        f"127.0.0.1:{instance.port} inet n - n - - smtpd\n")
    postconf = POSTFIX.with_name("postconf")
    values = subprocess.run(
        [str(postconf), "-c", str(instance.etc), "-h", "queue_directory", "myhostname",
         "virtual_mailbox_maps"], capture_output=True, text=True, check=True).stdout
    assert values.split() == [str(instance.spool), f"mx.{DOMAIN}", f"static:{DOMAIN}/box/"]
    assert instance.data.stat().st_uid != 0 and instance.mail.stat().st_uid != 0


def test_start_greets_delivers_and_stops(instance: PrivatePostfix) -> None:
    greeting = instance.start()
    assert greeting.startswith(f"220 mx.{DOMAIN} "), greeting
    master = instance.master_pid
    assert master is not None and master in instance.pids() and len(instance.pids()) > 1
    with smtplib.SMTP("127.0.0.1", instance.port, timeout=10) as client:
        client.sendmail("someone@example.test", [f"anyone@{DOMAIN}"],
                        b"Subject: private instance\r\n\r\nhello postfix\r\n")
    inbox = instance.mail / DOMAIN / "box" / "new"
    deadline = time.monotonic() + 20
    while not (inbox.exists() and any(inbox.iterdir())):
        assert time.monotonic() < deadline, instance.log_text()
        time.sleep(0.05)
    [message] = inbox.iterdir()
    assert b"Subject: private instance" in message.read_bytes()
    assert "postfix/smtpd" in instance.log_text() and "connect from" in instance.log_text()
    instance.stop()
    assert instance.master_pid is None and instance.pids() == []
    assert not _alive(master)


def test_start_failure_raises_and_leaves_nothing_running(instance: PrivatePostfix) -> None:
    with socket.socket() as taken:  # smtpd's port is already in use: the master cannot bind
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", instance.port))
        taken.listen()
        with pytest.raises(PostfixError) as failure:
            instance.start(timeout=5)
    assert "\n" not in str(failure.value)
    assert instance.master_pid is None and instance.pids() == []
    pid_file = instance.spool / "pid" / "master.pid"
    if pid_file.exists():  # written by the master that failed; it must be gone
        assert not _alive(int(pid_file.read_text().split()[0]))
