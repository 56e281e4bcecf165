"""Tests for ``postwright dns-records DOMAIN [--check]``: the real command line in a
subprocess, a real configuration and DKIM key files in a temporary directory, and a real DNS
server on loopback (``postwright.testing.dnsserver``)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import dns.name
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.MX
import dns.rdtypes.ANY.TXT
import dns.zone
import pytest

from postwright.dnsrecords import zone_line
from postwright.policy.dkimkeys import keygen, signing_key
from postwright.testing.dnsserver import DnsServer

BIN = Path(sys.executable).parent / "postwright"
COMMAND = [str(BIN)] if BIN.exists() else [sys.executable, "-m", "postwright"]
DOMAIN = "example.test"
HOST = "mx.example.test"


def run(conf: Path, *args: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "POSTWRIGHT_CONFIG"}
    return subprocess.run([*COMMAND, "dns-records", "--config", str(conf), *args],
                          cwd=conf.parent, env=environ, capture_output=True, text=True,
                          timeout=30)


def write_config(tmp_path: Path, server: DnsServer | None = None) -> Path:
    conf = tmp_path / "postwright.toml"
    text = (f'hostname = "{HOST}"\ndata_dir = "data"\n'
            f'[domains]\nlocal = ["{DOMAIN}", "other.example"]\n')
    if server is not None:
        text += f'[dns]\nnameservers = ["{server.address}"]\ntimeout = 3\n'
    conf.write_text(text)
    return conf


def parse_zone(text: str) -> dns.zone.Zone:
    """dnspython's zone-file reader: proves the output is valid master-file syntax."""
    return dns.zone.from_text(f"$TTL 300\n{text}", origin=dns.name.root, relativize=False,
                              check_origin=False)


def txt_at(zone: dns.zone.Zone, name: str) -> list[list[bytes]]:
    rdataset = zone.get_rdataset(f"{name}.", dns.rdatatype.TXT)
    assert rdataset is not None, name
    out = []
    for rdata in rdataset:
        assert isinstance(rdata, dns.rdtypes.ANY.TXT.TXT)
        out.append(list(rdata.strings))
    return out


def check_lines(done: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """``--check`` output as {kind: rest of the line}; every line names one record."""
    out: dict[str, str] = {}
    for line in done.stdout.splitlines():
        kind, _, rest = line.partition(" ")
        assert kind not in out, done.stdout
        out[kind] = rest
    return out


@pytest.fixture
def server() -> Iterator[DnsServer]:
    with DnsServer() as dns_server:
        yield dns_server


# -- printing -----------------------------------------------------------------------------

def test_prints_every_record_as_valid_zone_lines(tmp_path: Path) -> None:
    conf = write_config(tmp_path)
    keygen(tmp_path / "data", DOMAIN, "s1", "rsa")
    key = signing_key(tmp_path / "data", DOMAIN)
    assert key is not None
    before = datetime.now(UTC).replace(microsecond=0)
    done = run(conf, "Example.Test.")
    after = datetime.now(UTC)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    records = [line for line in lines if not line.startswith(";")]
    assert all(line and line.split()[0].endswith(".") for line in records), records
    assert len(records) == 6
    assert f"{DOMAIN}. IN MX 10 {HOST}." in records
    assert f'{DOMAIN}. IN TXT "v=spf1 mx -all"' in records
    assert key.zone_line() in records  # the same line `dkim keygen` printed
    assert (f'_dmarc.{DOMAIN}. IN TXT "v=DMARC1; p=quarantine; '
            f'rua=mailto:postmaster@{DOMAIN}"') in records
    assert (f'_smtp._tls.{DOMAIN}. IN TXT "v=TLSRPTv1; '
            f'rua=mailto:postmaster@{DOMAIN}"') in records

    zone = parse_zone(done.stdout)
    mx = zone.get_rdataset(f"{DOMAIN}.", dns.rdatatype.MX)
    assert mx is not None and len(mx) == 1
    first = next(iter(mx))
    assert isinstance(first, dns.rdtypes.ANY.MX.MX)
    assert (first.preference, first.exchange.to_text()) == (10, f"{HOST}.")
    assert txt_at(zone, DOMAIN) == [[b"v=spf1 mx -all"]]
    [dkim] = txt_at(zone, f"s1._domainkey.{DOMAIN}")
    assert len(dkim) > 1 and all(len(s) <= 255 for s in dkim)  # a 2048-bit key is split
    assert b"".join(dkim).decode() == key.txt()
    [[sts]] = txt_at(zone, f"_mta-sts.{DOMAIN}")
    found = re.fullmatch(rb"v=STSv1; id=(\d{14})", sts)
    assert found is not None, sts
    stamp = datetime.strptime(found.group(1).decode(), "%Y%m%d%H%M%S").replace(tzinfo=UTC)
    assert before <= stamp <= after

    comments = "\n".join(line for line in lines if line.startswith(";"))
    assert "p=reject" in comments and "other sender" in comments
    assert f"https://mta-sts.{DOMAIN}/.well-known/mta-sts.txt" in comments
    for policy_line in ("version: STSv1", "mode: testing", f"mx: {HOST}", "max_age: 86400"):
        assert re.search(rf"^;\s+{re.escape(policy_line)}$", comments, re.M), policy_line


def test_without_a_dkim_key_it_says_how_to_make_one(tmp_path: Path) -> None:
    done = run(write_config(tmp_path), DOMAIN)
    assert done.returncode == 0, done.stderr
    assert "_domainkey" not in done.stdout
    assert any(line.startswith(";") and f"postwright dkim keygen {DOMAIN}" in line
               for line in done.stdout.splitlines())
    zone = parse_zone(done.stdout)
    assert sorted(name.to_text() for name in zone.nodes) == sorted(
        [f"{DOMAIN}.", f"_dmarc.{DOMAIN}.", f"_mta-sts.{DOMAIN}.", f"_smtp._tls.{DOMAIN}."])


def test_an_unknown_domain_exits_2(tmp_path: Path) -> None:
    conf = write_config(tmp_path)
    for args in (["unknown.test"], ["unknown.test", "--check"]):
        done = run(conf, *args)
        assert done.returncode == 2, done
        assert done.stdout == ""
        assert "unknown.test is not a local domain" in done.stderr
    done = run(conf, "not a domain")
    assert done.returncode == 2 and "invalid domain" in done.stderr


def test_txt_quoting_survives_the_zone_reader() -> None:
    text = 'a "quoted" back\\slash, caf\u00e9; ' + "x" * 300
    line = zone_line("t.example.test", "TXT", text)
    assert line.startswith("t.example.test. IN TXT ")
    strings = txt_at(parse_zone(line), "t.example.test")[0]
    assert all(len(s) <= 255 for s in strings) and len(strings) == 2
    assert b"".join(strings) == text.encode()


# -- checking -----------------------------------------------------------------------------

def test_check_all_ok_when_the_printed_records_are_published(tmp_path: Path) -> None:
    keygen(tmp_path / "data", DOMAIN, "s1", "rsa")
    conf = write_config(tmp_path)
    printed = run(conf, DOMAIN)
    assert printed.returncode == 0, printed.stderr
    zone = printed.stdout + f"{HOST}. IN A 127.0.0.1\n"
    with DnsServer(zone) as dns_server:
        done = run(write_config(tmp_path, dns_server), DOMAIN, "--check")
    assert done.returncode == 0, done.stdout + done.stderr
    lines = check_lines(done)
    assert set(lines) == {"MX", "SPF", "DKIM", "DMARC", "MTA-STS", "TLS-RPT"}
    assert lines["DKIM"] == f"s1._domainkey.{DOMAIN}. OK"
    assert all(rest.endswith(" OK") for rest in lines.values()), done.stdout


def test_check_compares_by_meaning(tmp_path: Path, server: DnsServer) -> None:
    keygen(tmp_path / "data", DOMAIN, "sel2", "ed25519")
    key = signing_key(tmp_path / "data", DOMAIN)
    assert key is not None
    spaced_key = key.txt().replace("p=", "p= ").replace("; ", " ;  ")
    server.set(DOMAIN, "MX", ["20 backup.example.net.", "10 MX.Example.Test."])
    server.set(DOMAIN, "TXT", ["google-site-verification=abc", "v=spf1 ip4:127.0.0.0/8 -all"])
    server.set(HOST, "A", ["127.0.0.1"])
    server.set(f"sel2._domainkey.{DOMAIN}", "TXT", [spaced_key])
    server.set(f"_dmarc.{DOMAIN}", "TXT", ["v=DMARC1;p=reject;adkim=s"])
    server.set(f"_mta-sts.{DOMAIN}", "TXT", ["v=STSv1; id=2019abc;"])
    server.set(f"_smtp._tls.{DOMAIN}", "TXT",
               [("v=TLSRPTv1;", f"rua=mailto:postmaster@{DOMAIN}")])
    done = run(write_config(tmp_path, server), DOMAIN, "--check")
    assert done.returncode == 0, done.stdout + done.stderr
    assert all(rest.endswith(" OK") for rest in check_lines(done).values()), done.stdout


def test_check_reports_missing_records(tmp_path: Path, server: DnsServer) -> None:
    keygen(tmp_path / "data", DOMAIN, "s1", "ed25519")
    server.set(f"_dmarc.{DOMAIN}", "TXT", ["v=DMARC1; p=quarantine"])
    server.set(DOMAIN, "TXT", ["not spf"])
    done = run(write_config(tmp_path, server), DOMAIN, "--check")
    assert done.returncode == 1, done.stdout + done.stderr
    assert check_lines(done) == {
        "MX": f"{DOMAIN}. MISSING", "SPF": f"{DOMAIN}. MISSING",
        "DKIM": f"s1._domainkey.{DOMAIN}. MISSING", "DMARC": f"_dmarc.{DOMAIN}. OK",
        "MTA-STS": f"_mta-sts.{DOMAIN}. MISSING", "TLS-RPT": f"_smtp._tls.{DOMAIN}. MISSING",
    }


def test_check_reports_a_different_dkim_key(tmp_path: Path, server: DnsServer) -> None:
    keygen(tmp_path / "data", DOMAIN, "s1", "rsa")
    old = signing_key(tmp_path / "data", DOMAIN)
    assert old is not None
    printed = run(write_config(tmp_path), DOMAIN)
    keygen(tmp_path / "data", DOMAIN, "s1", "rsa", force=True)  # rotated, not re-published
    with DnsServer(printed.stdout + f"{HOST}. IN A 127.0.0.1\n") as dns_server:
        done = run(write_config(tmp_path, dns_server), DOMAIN, "--check")
    assert done.returncode == 1, done.stdout + done.stderr
    lines = check_lines(done)
    assert lines["DKIM"].startswith(f"s1._domainkey.{DOMAIN}. DIFFERENT (found: \"v=DKIM1; ")
    assert old.txt()[:60] in lines["DKIM"]
    assert [k for k, rest in lines.items() if not rest.endswith(" OK")] == ["DKIM"]


def test_check_reports_different_records(tmp_path: Path, server: DnsServer) -> None:
    keygen(tmp_path / "data", DOMAIN, "s1", "ed25519")
    server.set(DOMAIN, "MX", ["10 mail.elsewhere.example."])
    server.set(DOMAIN, "TXT", ["v=spf1 ip4:192.0.2.9 -all"])
    server.set(HOST, "A", ["127.0.0.1"])
    server.set(f"_dmarc.{DOMAIN}", "TXT", ["v=DMARC1; p=none"])
    server.set(f"_mta-sts.{DOMAIN}", "TXT", ["v=STSv1; id=not-valid!"])
    server.set(f"_smtp._tls.{DOMAIN}", "TXT", ["v=TLSRPTv1; rua=mailto:tls@elsewhere.example"])
    done = run(write_config(tmp_path, server), DOMAIN, "--check")
    assert done.returncode == 1
    lines = check_lines(done)
    assert lines["MX"] == f"{DOMAIN}. DIFFERENT (found: 10 mail.elsewhere.example.)"
    assert lines["SPF"].startswith(f'{DOMAIN}. DIFFERENT (found: "v=spf1 ip4:192.0.2.9 -all"')
    assert "127.0.0.1 gets fail" in lines["SPF"]
    assert lines["DMARC"].startswith(f'_dmarc.{DOMAIN}. DIFFERENT (found: "v=DMARC1; p=none"')
    assert "DIFFERENT" in lines["MTA-STS"] and "DIFFERENT" in lines["TLS-RPT"]
    assert lines["DKIM"] == f"s1._domainkey.{DOMAIN}. MISSING"


def test_spf_without_an_address_for_the_hostname_looks_for_mx(tmp_path: Path,
                                                            server: DnsServer) -> None:
    conf = write_config(tmp_path, server)
    server.set(DOMAIN, "TXT", ["v=spf1 a +mx:example.test ~all"])
    assert check_lines(run(conf, DOMAIN, "--check"))["SPF"] == f"{DOMAIN}. OK"
    server.set(DOMAIN, "TXT", ["v=spf1 -all mx"])
    spf_line = check_lines(run(conf, DOMAIN, "--check"))["SPF"]
    assert spf_line.startswith(f"{DOMAIN}. DIFFERENT") and HOST in spf_line


def test_check_without_a_dkim_key_fails(tmp_path: Path) -> None:
    printed = run(write_config(tmp_path), DOMAIN)
    with DnsServer(printed.stdout + f"{HOST}. IN A 127.0.0.1\n") as dns_server:
        done = run(write_config(tmp_path, dns_server), DOMAIN, "--check")
    assert done.returncode == 1
    lines = check_lines(done)
    assert lines["DKIM"] == f"{DOMAIN}. NO KEY (run `postwright dkim keygen {DOMAIN}`)"
    assert list(lines) == ["MX", "SPF", "DKIM", "DMARC", "MTA-STS", "TLS-RPT"]
    assert sum(rest.endswith(" OK") for rest in lines.values()) == 5


def test_check_reports_a_dns_failure(tmp_path: Path) -> None:
    keygen(tmp_path / "data", DOMAIN, "s1", "ed25519")
    printed = run(write_config(tmp_path), DOMAIN)
    with DnsServer(printed.stdout + f"{HOST}. IN A 127.0.0.1\n",
                   servfail={DOMAIN}) as dns_server:
        done = run(write_config(tmp_path, dns_server), DOMAIN, "--check")
    assert done.returncode == 1, done.stdout + done.stderr
    lines = check_lines(done)
    for kind in ("MX", "SPF"):
        assert lines[kind].startswith(f"{DOMAIN}. DNS FAILURE (lookup failed: "), lines[kind]
    assert all(lines[k].endswith(" OK") for k in ("DKIM", "DMARC", "MTA-STS", "TLS-RPT"))
