"""Tests for postwright.config: loading, defaults, normalization and every kind of bad key."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from postwright.config import (
    ENV_VAR,
    Config,
    dump_defaults,
    load_config,
    loads_config,
)
from postwright.delivery.routing import Router
from postwright.errors import ConfigError

CONTRACT_EXAMPLE = """
hostname = "mx.example.test"
data_dir = "/var/lib/postwright"

[listen]
smtp = ["127.0.0.1:2525"]
submission = ["127.0.0.1:2587"]
submissions = ["127.0.0.1:2465"]

[tls]
cert = "cert.pem"
key = "key.pem"

[domains]
local = ["example.test"]

[aliases]
"postmaster@example.test" = ["alice@example.test"]

[limits]
max_message_size = 36700160
max_recipients = 1000

[dns]
nameservers = ["127.0.0.1:5353"]

[delivery]
smtp_port = 25
relayhost = ""
"""


def parse(text: str, base: Path = Path("/base")) -> Config:
    return loads_config(text, base_dir=base)


def error_of(text: str, base: Path = Path("/base")) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse(text, base)
    return info.value


@pytest.fixture
def no_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_embedded_defaults(no_env: Path) -> None:
    config = load_config(None)
    assert config.source is None
    assert config.hostname == "localhost.test"
    assert config.data_dir == no_env / "postwright-data"
    assert config.queue_dir == no_env / "postwright-data" / "queue"
    assert config.mail_dir == no_env / "postwright-data" / "mail"
    assert config.accounts_path == no_env / "postwright-data" / "accounts.json"
    assert list(config.listen.smtp) == [("127.0.0.1", 2525)]
    assert list(config.listen.submission) == [("127.0.0.1", 2587)]
    assert list(config.listen.submissions) == [("127.0.0.1", 2465)]
    assert config.domains.local == ("localhost.test",)
    assert config.tls.cert is None and config.tls.key is None
    assert config.limits.max_line_length == 2048
    assert config.limits.max_line_length == 2048
    assert config.delivery.smtp_port == 25
    assert config.delivery.relayhost_address is None


def test_env_variable_then_explicit_path(no_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from_env = no_env / "env.toml"
    from_env.write_text('hostname = "env.example.test"\n')
    explicit = no_env / "explicit.toml"
    explicit.write_text('hostname = "explicit.example.test"\n')
    monkeypatch.setenv(ENV_VAR, str(from_env))
    assert load_config(None).hostname == "env.example.test"
    assert load_config(None).source == from_env
    assert load_config(str(explicit)).hostname == "explicit.example.test"


def test_relative_paths_follow_the_config_file(no_env: Path) -> None:
    conf_dir = no_env / "etc"
    conf_dir.mkdir()
    (conf_dir / "cert.pem").write_text("x")
    (conf_dir / "key.pem").write_text("x")
    file = conf_dir / "postwright.toml"
    file.write_text('data_dir = "spool/../data"\n[tls]\ncert = "cert.pem"\nkey = "key.pem"\n')
    config = load_config(str(file))
    assert config.data_dir == conf_dir / "data"
    assert config.tls.cert == conf_dir / "cert.pem"
    assert config.tls.key == conf_dir / "key.pem"
    # data_dir left out: ./postwright-data next to the file, not in the current directory
    file.write_text("")
    assert load_config(str(file)).data_dir == conf_dir / "postwright-data"


def test_contract_example_is_accepted(tmp_path: Path) -> None:
    (tmp_path / "cert.pem").write_text("x")
    (tmp_path / "key.pem").write_text("x")
    config = parse(CONTRACT_EXAMPLE, tmp_path)
    assert config.hostname == "mx.example.test"
    assert config.data_dir == Path("/var/lib/postwright")
    assert config.aliases == {"postmaster@example.test": ("alice@example.test",)}
    assert config.dns.nameservers == (("127.0.0.1", 5353),)
    assert config.domains.local == ("example.test",)


def test_dump_defaults_has_every_key_and_parses_to_the_defaults(no_env: Path) -> None:
    text = dump_defaults()
    assert parse(text, no_env) == load_config(None)
    data = tomllib.loads(text)
    config = load_config(None)
    for section in ("listen", "limits", "dns", "delivery", "queue", "log"):
        names = {f.name for f in dataclasses.fields(getattr(config, section))}
        assert set(data[section]) == names, section
    assert set(data["domains"]) == {"local", "wildcard", "catchall"}
    assert "# cert = " in text and "# key = " in text
    assert "aliases" in data


def test_values_are_normalized() -> None:
    config = parse("""
hostname = "MX.Example.TEST"
[listen]
smtp = ["[::1]:25", "localhost:0", "Mail.Example.test:2525", "0.0.0.0:25"]
submission = []
[domains]
local = ["Example.TEST", "Bücher.example", "example.test"]
[domains.catchall]
"BÜCHER.example" = "Catch@Bücher.Example"
[aliases]
"Info@Bücher.example" = "Bob@Remote.Example"
"Team@example.test" = ["a@example.test", "B@EXAMPLE.test"]
[dns]
nameservers = ["::1", "[::1]:5353", "127.0.0.1"]
[delivery]
relayhost = "[2001:db8::1]:587"
[limits]
data_timeout = 60
""")
    assert config.hostname == "mx.example.test"
    assert config.listen.smtp == (("::1", 25), ("localhost", 0), ("mail.example.test", 2525),
                                  ("0.0.0.0", 25))
    assert config.listen.submission == ()
    assert config.domains.local == ("example.test", "xn--bcher-kva.example")
    assert config.domains.catchall == {"xn--bcher-kva.example": "Catch@xn--bcher-kva.example"}
    # keys fold fully; targets keep their local part (remote ones may be case-sensitive)
    assert config.aliases == {
        "info@xn--bcher-kva.example": ("Bob@remote.example",),
        "team@example.test": ("a@example.test", "B@example.test"),
    }
    assert config.dns.nameservers == (("::1", 53), ("::1", 5353), ("127.0.0.1", 53))
    assert config.delivery.relayhost_address == ("2001:db8::1", 587)
    assert config.limits.data_timeout == 60.0 and isinstance(config.limits.data_timeout, float)


def test_domains_local_defaults_to_hostname() -> None:
    assert parse('hostname = "mx.example.test"').domains.local == ("mx.example.test",)


def test_config_is_frozen() -> None:
    config = parse("")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.hostname = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.aliases["a@b.test"] = ("c@d.test",)  # type: ignore[index]


def test_the_router_accepts_what_config_produces() -> None:
    config = parse("""
[domains]
local = ["Example.test"]
[domains.catchall]
"example.test" = "Alice@example.test"
[aliases]
"PostMaster@Example.TEST" = ["alice@example.test", "ext@Remote.test"]
""")
    router = Router(local_domains=config.domains.local, aliases=config.aliases,
                    account_exists=lambda a: a == "alice@example.test",
                    catchall=config.domains.catchall)
    from postwright.protocol.address import parse_mailbox
    resolved = router.resolve(parse_mailbox("postmaster@EXAMPLE.test", smtputf8=False))
    assert resolved.kind == "local"
    assert set(resolved.targets) == {"alice@example.test", "ext@remote.test"}
    assert router.resolve(parse_mailbox("x@example.test", smtputf8=False)).kind == "local"


@pytest.mark.parametrize(("text", "key", "fragment"), [
    ("colour = 1", "colour", "unknown key"),
    ("[limits]\nmax_recipents = 5", "limits.max_recipents", "unknown key"),
    ("[listen]\nlmtp = []", "listen.lmtp", "unknown key"),
    ("[tls]\nca = 'x'", "tls.ca", "unknown key"),
    ("[domains]\nrelay = []", "domains.relay", "unknown key"),
    ("[dns]\nport = 53", "dns.port", "unknown key"),
    ("[delivery]\nhelo = 'x'", "delivery.helo", "unknown key"),
    ("[queue]\ndir = 'x'", "queue.dir", "unknown key"),
    ("[log]\nformat = 'json'", "log.format", "unknown key"),
    ("[log.extra]\nx = 1", "log.extra", "unknown key"),
    ("limits = 5", "limits", "must be a table"),
    ("hostname = 5", "hostname", "must be a string"),
    ('hostname = "bad..name"', "hostname", "invalid domain"),
    ('hostname = "[127.0.0.1]"', "hostname", "literal"),
    ('data_dir = ""', "data_dir", "empty"),
    ("[limits]\nmax_recipients = true", "limits.max_recipients", "not a boolean"),
    ("[limits]\nmax_recipients = 1.5", "limits.max_recipients", "integer"),
    ('[limits]\nmax_recipients = "10"', "limits.max_recipients", "integer"),
    ("[limits]\nmax_recipients = 0", "limits.max_recipients", "at least 1"),
    ("[limits]\nmax_line_length = 511", "limits.max_line_length", "at least 512"),
    ("[limits]\ncommand_timeout = 0", "limits.command_timeout", "greater than 0"),
    ("[limits]\ndata_timeout = nan", "limits.data_timeout", "nan"),
    ("[limits]\ngreeting_delay = -1", "limits.greeting_delay", "at least 0"),
    ("[limits]\ndata_timeout = true", "limits.data_timeout", "number"),
    ('[listen]\nsmtp = "127.0.0.1:25"', "listen.smtp", "list of strings"),
    ('[listen]\nsmtp = ["127.0.0.1:25", 25]', "listen.smtp[1]", "must be a string"),
    ('[listen]\nsmtp = ["127.0.0.1:25", "::1:25"]', "listen.smtp[1]", "[address]:port"),
    ('[listen]\nsmtp = ["127.0.0.1:70000"]', "listen.smtp[0]", "port"),
    ('[listen]\nsmtp = ["127.0.0.1"]', "listen.smtp[0]", "missing ':port'"),
    ('[listen]\nsmtp = ["127.0.0.1:x"]', "listen.smtp[0]", "port"),
    ('[listen]\nsmtp = ["bad_host!:25"]', "listen.smtp[0]", "invalid domain"),
    ('[listen]\nsubmissions = ["[127.0.0.1]:25"]', "listen.submissions[0]", "IPv6"),
    ('[listen]\nsubmission = ["[::1]25"]', "listen.submission[0]", "after ']'"),
    ('[tls]\ncert = "cert.pem"', "tls.key", "both"),
    ('[tls]\ncert = "missing.pem"\nkey = "missing.pem"', "tls.cert", "cannot read"),
    ('[domains]\nlocal = ["ok.test", "-bad.test"]', "domains.local[1]", "invalid domain"),
    ('[domains]\nlocal = "example.test"', "domains.local", "list of strings"),
    ('[domains]\nlocal = ["a.test"]\n[domains.catchall]\n"b.test" = "x@a.test"',
     'domains.catchall."b.test"', "not a local domain"),
    ('[domains]\nlocal = ["a.test"]\n[domains.catchall]\n"a.test" = "nobody"',
     'domains.catchall."a.test"', "invalid address"),
    ('[domains]\nlocal = ["a.test"]\n[aliases]\n"pm@b.test" = "x@a.test"',
     'aliases."pm@b.test"', "not a local domain"),
    ('[domains]\nlocal = ["a.test"]\n[aliases]\n"pm@a.test" = []',
     'aliases."pm@a.test"', "at least one"),
    ('[domains]\nlocal = ["a.test"]\n[aliases]\n"pm@a.test" = ["x@a.test", "bad address"]',
     'aliases."pm@a.test"[1]', "invalid address"),
    ('[domains]\nlocal = ["a.test"]\n[aliases]\n"pm@a.test" = 3',
     'aliases."pm@a.test"', "list of them"),
    ('[domains]\nlocal = ["a.test"]\n[aliases]\n"not an address" = "x@a.test"',
     'aliases."not an address"', "invalid address"),
    ('[dns]\nnameservers = ["resolver.example"]', "dns.nameservers[0]", "not an IP"),
    ("[dns]\ntimeout = -1", "dns.timeout", "greater than 0"),
    ("[delivery]\nsmtp_port = 0", "delivery.smtp_port", "at least 1"),
    ("[delivery]\nsmtp_port = 65536", "delivery.smtp_port", "at most 65535"),
    ('[delivery]\nrelayhost = "relay.example"', "delivery.relayhost", "missing ':port'"),
    ("[delivery]\nretry_first = 600\nretry_max = 300", "delivery.retry_max", "retry_first"),
    ("[delivery]\nconcurrency = 0", "delivery.concurrency", "at least 1"),
    ("[queue]\ngroup_commit_window = -0.1", "queue.group_commit_window", "at least 0"),
    ("[queue]\nspill_threshold = 1.0", "queue.spill_threshold", "integer"),
    ('[log]\nlevel = "verbose"', "log.level", "one of"),
])
def test_bad_keys_are_named(text: str, key: str, fragment: str, tmp_path: Path) -> None:
    error = error_of(text, tmp_path)
    assert error.key == key
    assert fragment in error.message
    assert str(error) == f"{key}: {error.message}"


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("hostname = \n")
    with pytest.raises(ConfigError) as info:
        load_config(str(bad))
    assert info.value.key == str(bad) and "TOML" in info.value.message
    with pytest.raises(ConfigError) as info:
        load_config(str(tmp_path / "missing.toml"))
    assert info.value.key == str(tmp_path / "missing.toml")
    bad.write_bytes(b'hostname = "\xff"\n')
    with pytest.raises(ConfigError, match="UTF-8"):
        load_config(str(bad))
