"""Tests for the command line, run as a real process (the installed console script)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from postwright.accounts import AccountStore

BIN = Path(sys.executable).parent / "postwright"
COMMAND = [str(BIN)] if BIN.exists() else [sys.executable, "-m", "postwright"]

CONFIG = """
hostname = "mx.example.test"
data_dir = "data"
[domains]
local = ["example.test", "Bücher.example"]
"""


def run(cwd: Path, *args: str, stdin: bytes = b"",
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "POSTWRIGHT_CONFIG"}
    environ.update(env or {})
    done = subprocess.run([*COMMAND, *args], input=stdin, cwd=cwd, env=environ,
                          capture_output=True, timeout=60)
    return subprocess.CompletedProcess(done.args, done.returncode, done.stdout.decode(),
                                       done.stderr.decode())


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    path = tmp_path / "postwright.toml"
    path.write_text(CONFIG)
    return path


def accounts(conf: Path) -> AccountStore:
    return AccountStore(conf.parent / "data" / "accounts.json")


def test_check_config(tmp_path: Path, conf: Path) -> None:
    done = run(tmp_path, "check-config", "--config", str(conf))
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"configuration OK: {conf}\n"
    done = run(tmp_path, "--config", str(conf), "check-config")
    assert done.returncode == 0 and str(conf) in done.stdout
    done = run(tmp_path, "check-config")
    assert (done.returncode, done.stdout) == (0, "configuration OK: embedded defaults\n")
    assert not (tmp_path / "postwright-data").exists()  # checking creates nothing


def test_check_config_reports_the_bad_key(tmp_path: Path, conf: Path) -> None:
    conf.write_text(CONFIG + "[limits]\nmax_recipients = true\n")
    done = run(tmp_path, "check-config", "--config", str(conf))
    assert done.returncode == 2
    assert done.stderr == "error: limits.max_recipients: must be an integer, not a boolean\n"
    done = run(tmp_path, "check-config", env={"POSTWRIGHT_CONFIG": str(conf)})
    assert done.returncode == 2 and "limits.max_recipients" in done.stderr
    done = run(tmp_path, "check-config", "--config", str(tmp_path / "missing.toml"))
    assert done.returncode == 2 and "missing.toml" in done.stderr


def test_config_errors_in_user_commands(tmp_path: Path, conf: Path) -> None:
    conf.write_text(CONFIG + "[listen]\nsmtp = [\"127.0.0.1:99999\"]\n")
    done = run(tmp_path, "user", "list", "--config", str(conf))
    assert done.returncode == 2 and done.stderr.startswith("error: listen.smtp[0]: ")
    done = run(tmp_path, "user", "add", "--config", str(conf), "a@example.test",
               "--password-stdin", stdin=b"pw\n")
    assert done.returncode == 2 and "listen.smtp[0]" in done.stderr


def test_user_lifecycle(tmp_path: Path, conf: Path) -> None:
    c = str(conf)
    done = run(tmp_path, "user", "add", "--config", c, "Alice@Example.TEST", "--password-stdin",
               stdin=b"first secret\n")
    assert done.returncode == 0, done.stderr
    assert "alice@example.test" in done.stdout
    done = run(tmp_path, "user", "add", "bob@bücher.example", "--password-stdin", "--config", c,
               stdin=b"pw")
    assert done.returncode == 0, done.stderr
    done = run(tmp_path, "user", "list", "--config", c)
    assert done.stdout == "alice@example.test\nbob@xn--bcher-kva.example\n"
    done = run(tmp_path, "user", "list", "--json", "--config", c)
    assert json.loads(done.stdout) == [{"address": "alice@example.test"},
                                       {"address": "bob@xn--bcher-kva.example"}]
    store = accounts(conf)
    assert store.verify("alice@example.test", "first secret")
    done = run(tmp_path, "user", "passwd", "alice@example.test", "--password-stdin",
               "--config", c, stdin=b"second secret\r\n")
    assert done.returncode == 0, done.stderr
    assert store.verify("alice@example.test", "second secret")
    assert not store.verify("alice@example.test", "first secret")
    done = run(tmp_path, "user", "delete", "ALICE@example.test", "--config", c)
    assert done.returncode == 0, done.stderr
    assert store.list() == ["bob@xn--bcher-kva.example"]
    done = run(tmp_path, "user", "list", "--json", "--config", c)
    assert json.loads(done.stdout) == [{"address": "bob@xn--bcher-kva.example"}]


@pytest.mark.parametrize(("stdin", "password"), [
    (b"pw\n", "pw"), (b"pw\r\n", "pw"), (b"pw", "pw"), (b"pw\n\n", "pw\n"),
    (b" spaced pw \n", " spaced pw "), ("pässwörd\n".encode(), "pässwörd"),
])
def test_exactly_one_trailing_newline_is_stripped(tmp_path: Path, conf: Path, stdin: bytes,
                                                  password: str) -> None:
    done = run(tmp_path, "user", "add", "--config", str(conf), "a@example.test",
               "--password-stdin", stdin=stdin)
    assert done.returncode == 0, done.stderr
    store = accounts(conf)
    assert store.verify("a@example.test", password)
    if password != password.rstrip("\n"):
        assert not store.verify("a@example.test", password.rstrip("\n"))


@pytest.mark.parametrize(("args", "stdin", "fragment"), [
    (("nobody@elsewhere.test", "--password-stdin"), b"pw\n", "not a local domain"),
    (("not-an-address", "--password-stdin"), b"pw\n", "invalid address"),
    (("a@example.test", "--password-stdin"), b"\n", "empty password"),
    (("a@example.test", "--password-stdin"), b"", "empty password"),
    (("a@example.test", "--password-stdin"), b"a\0b\n", "NUL"),
    (("a@example.test", "--password-stdin"), b"\xff\n", "UTF-8"),
    (("a@example.test",), b"pw\n", "--password-stdin"),
])
def test_user_add_refusals(tmp_path: Path, conf: Path, args: tuple[str, ...], stdin: bytes,
                           fragment: str) -> None:
    done = run(tmp_path, "user", "add", "--config", str(conf), *args, stdin=stdin)
    assert done.returncode == 2
    assert fragment in done.stderr
    assert not (tmp_path / "data" / "accounts.json").exists()


def test_operational_failures_exit_1(tmp_path: Path, conf: Path) -> None:
    c = str(conf)
    add = ("user", "add", "--config", c, "a@example.test", "--password-stdin")
    assert run(tmp_path, *add, stdin=b"pw\n").returncode == 0
    done = run(tmp_path, *add, stdin=b"pw\n")
    assert done.returncode == 1 and "already exists" in done.stderr
    done = run(tmp_path, "user", "delete", "--config", c, "b@example.test")
    assert done.returncode == 1 and "no account b@example.test" in done.stderr
    done = run(tmp_path, "user", "passwd", "--config", c, "b@example.test", "--password-stdin",
               stdin=b"pw\n")
    assert done.returncode == 1 and "no account" in done.stderr


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    assert run(tmp_path).returncode == 2
    assert run(tmp_path, "user").returncode == 2
    assert run(tmp_path, "no-such-command").returncode == 2
    done = run(tmp_path, "--help")
    assert done.returncode == 0 and "check-config" in done.stdout


def test_concurrent_cli_adds_lose_nothing(tmp_path: Path, conf: Path) -> None:
    environ = {k: v for k, v in os.environ.items() if k != "POSTWRIGHT_CONFIG"}
    procs = [subprocess.Popen([*COMMAND, "user", "add", "--config", str(conf),
                               f"user{i}@example.test", "--password-stdin"],
                              stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, cwd=tmp_path, env=environ)
             for i in range(8)]
    for proc in procs:
        _, err = proc.communicate(b"pw\n", timeout=60)
        assert proc.returncode == 0, err
    assert accounts(conf).list() == sorted(f"user{i}@example.test" for i in range(8))


def test_python_dash_m(tmp_path: Path, conf: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "postwright", "check-config", "--config",
                           str(conf)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "configuration OK" in done.stdout
