"""Tests for the loopback DNS server, queried over UDP and TCP with dnspython."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator

import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.rdtypes.ANY.TXT
import pytest

from postwright.testing.dnsserver import DnsServer, Records

RECORDS: Records = {
    "example.test": {"MX": ["10 mx1.example.test.", "20 mx2.example.test."],
                     "TXT": ["v=spf1 -all"]},
    "mx1.example.test": {"A": ["127.0.0.2"], "AAAA": ["::1"]},
    "mx2.example.test": {"A": ["127.0.0.3"]},
    "s1._domainkey.example.test": {"TXT": ["v=DKIM1; k=rsa; p=" + "A" * 400]},
    "alias.example.test": {"CNAME": ["mx2.example.test."]},
}


@pytest.fixture
def server() -> Iterator[DnsServer]:
    with DnsServer(RECORDS) as srv:
        yield srv
    assert srv.errors == []


def ask(server: DnsServer, name: str, rtype: str, *, tcp: bool = False,
        timeout: float = 2.0, payload: int | None = None) -> dns.message.Message:
    if payload is None:
        query = dns.message.make_query(name, rtype)
    else:
        query = dns.message.make_query(name, rtype, use_edns=0, payload=payload)
    if tcp:
        return dns.query.tcp(query, "127.0.0.1", port=server.port, timeout=timeout)
    return dns.query.udp(query, "127.0.0.1", port=server.port, timeout=timeout)


def texts(response: dns.message.Message) -> list[str]:
    return [rdata.to_text() for rrset in response.answer for rdata in rrset]


def test_a_record_over_udp_is_authoritative(server: DnsServer) -> None:
    response = ask(server, "mx1.example.test", "A")
    assert response.rcode() == dns.rcode.NOERROR
    assert response.flags & dns.flags.AA
    assert texts(response) == ["127.0.0.2"]


def test_mx_records_as_given(server: DnsServer) -> None:
    response = ask(server, "example.test", "MX")
    assert texts(response) == ["10 mx1.example.test.", "20 mx2.example.test."]


def test_aaaa_record(server: DnsServer) -> None:
    assert texts(ask(server, "mx1.example.test", "AAAA")) == ["::1"]


def test_names_are_case_insensitive(server: DnsServer) -> None:
    assert texts(ask(server, "MX1.Example.TEST.", "A")) == ["127.0.0.2"]


def test_unknown_name_is_nxdomain(server: DnsServer) -> None:
    response = ask(server, "nowhere.example.test", "A")
    assert response.rcode() == dns.rcode.NXDOMAIN
    assert response.answer == []


def test_known_name_without_that_type_is_nodata(server: DnsServer) -> None:
    response = ask(server, "mx2.example.test", "AAAA")
    assert response.rcode() == dns.rcode.NOERROR
    assert response.answer == []


def test_empty_non_terminal_exists(server: DnsServer) -> None:
    # _domainkey.example.test has no records but a child: NODATA, not NXDOMAIN (RFC 8020)
    response = ask(server, "_domainkey.example.test", "TXT")
    assert response.rcode() == dns.rcode.NOERROR
    assert response.answer == []


def test_cname_is_followed(server: DnsServer) -> None:
    response = ask(server, "alias.example.test", "A")
    assert texts(response) == ["mx2.example.test.", "127.0.0.3"]
    assert texts(ask(server, "alias.example.test", "CNAME")) == ["mx2.example.test."]


def test_tcp_on_the_same_port(server: DnsServer) -> None:
    response = ask(server, "mx1.example.test", "A", tcp=True)
    assert texts(response) == ["127.0.0.2"]


def test_several_queries_on_one_tcp_connection(server: DnsServer) -> None:
    wires = [dns.message.make_query(n, "A").to_wire()
             for n in ("mx1.example.test", "mx2.example.test")]
    with socket.create_connection(("127.0.0.1", server.port), timeout=2) as conn:
        conn.sendall(b"".join(struct.pack("!H", len(w)) + w for w in wires))  # pipelined
        answers = []
        for _ in wires:
            (length,) = struct.unpack("!H", _read_exactly(conn, 2))
            answers.append(dns.message.from_wire(_read_exactly(conn, length)))
    assert [texts(a) for a in answers] == [["127.0.0.2"], ["127.0.0.3"]]


def _read_exactly(conn: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = conn.recv(count - len(data))
        assert chunk, "connection closed early"
        data += chunk
    return data


def test_long_txt_is_split_into_255_octet_strings(server: DnsServer) -> None:
    value = "v=DKIM1; k=rsa; p=" + "A" * 400
    (rrset,) = ask(server, "s1._domainkey.example.test", "TXT").answer
    (rdata,) = rrset
    assert isinstance(rdata, dns.rdtypes.ANY.TXT.TXT)
    assert [len(s) for s in rdata.strings] == [255, len(value) - 255]
    assert b"".join(rdata.strings) == value.encode()


def test_txt_strings_given_as_a_tuple_are_kept(server: DnsServer) -> None:
    server.set("split.example.test", "TXT", [("v=spf1 ", "-all")])
    (rrset,) = ask(server, "split.example.test", "TXT").answer
    (rdata,) = rrset
    assert isinstance(rdata, dns.rdtypes.ANY.TXT.TXT)
    assert list(rdata.strings) == [b"v=spf1 ", b"-all"]


def test_large_answer_is_truncated_over_udp_and_whole_over_tcp(server: DnsServer) -> None:
    server.set("big.example.test", "TXT", ["x" * 1500])
    udp = ask(server, "big.example.test", "TXT")
    assert udp.flags & dns.flags.TC
    tcp = ask(server, "big.example.test", "TXT", tcp=True)
    assert not tcp.flags & dns.flags.TC
    (rrset,) = tcp.answer
    (rdata,) = rrset
    assert isinstance(rdata, dns.rdtypes.ANY.TXT.TXT)
    assert len(b"".join(rdata.strings)) == 1500


def test_edns_payload_allows_a_larger_udp_answer(server: DnsServer) -> None:
    server.set("mid.example.test", "TXT", ["y" * 700])  # over 512, under 1232
    assert ask(server, "mid.example.test", "TXT").flags & dns.flags.TC
    response = ask(server, "mid.example.test", "TXT", payload=1232)
    assert not response.flags & dns.flags.TC
    assert len(response.answer) == 1


def test_set_while_running_replaces_and_removes(server: DnsServer) -> None:
    server.set("mx2.example.test", "A", ["127.0.0.9", "127.0.0.10"])
    assert texts(ask(server, "mx2.example.test", "A")) == ["127.0.0.9", "127.0.0.10"]
    server.set("mx2.example.test", "A", "127.0.0.11")  # a single value needs no list
    assert texts(ask(server, "mx2.example.test", "A")) == ["127.0.0.11"]
    server.set("mx2.example.test", "A", [])
    assert ask(server, "mx2.example.test", "A").rcode() == dns.rcode.NXDOMAIN
    server.remove("mx1.example.test")
    assert ask(server, "mx1.example.test", "AAAA").rcode() == dns.rcode.NXDOMAIN


def test_servfail_names(server: DnsServer) -> None:
    assert ask(server, "example.test", "MX").rcode() == dns.rcode.NOERROR
    server.servfail.add("Example.Test.")
    assert ask(server, "example.test", "MX").rcode() == dns.rcode.SERVFAIL
    assert ask(server, "example.test", "MX", tcp=True).rcode() == dns.rcode.SERVFAIL
    assert ask(server, "mx1.example.test", "A").rcode() == dns.rcode.NOERROR
    server.servfail.clear()
    assert ask(server, "example.test", "MX").rcode() == dns.rcode.NOERROR


def test_timeout_names_are_never_answered() -> None:
    with DnsServer(RECORDS, timeout={"example.test"}) as server:
        with pytest.raises(dns.exception.Timeout):
            ask(server, "example.test", "MX", timeout=0.2)
        with pytest.raises(dns.exception.Timeout):
            ask(server, "example.test", "MX", tcp=True, timeout=0.2)
        assert texts(ask(server, "mx1.example.test", "A")) == ["127.0.0.2"]
        assert server.queries[("example.test", "MX")] == 2


def test_queries_are_counted_per_name_and_type(server: DnsServer) -> None:
    ask(server, "example.test", "MX")
    ask(server, "EXAMPLE.test", "MX", tcp=True)
    ask(server, "example.test", "TXT")
    ask(server, "unknown.test", "A")
    assert server.queries == {("example.test", "MX"): 2, ("example.test", "TXT"): 1,
                              ("unknown.test", "A"): 1}
    server.reset_queries()
    assert server.queries == {}


ZONE = """\
@        3600 IN SOA ns.zone.test. hostmaster.zone.test. 1 7200 900 1209600 60
@             IN MX  5 mail
mail          IN A   127.0.0.7
mail          IN AAAA ::7
@             IN TXT "v=spf1 " "mx -all"
"""


def test_zone_file_text() -> None:
    with DnsServer(ZONE, origin="zone.test") as server:
        assert texts(ask(server, "zone.test", "MX")) == ["5 mail.zone.test."]
        assert texts(ask(server, "mail.zone.test", "AAAA")) == ["::7"]
        assert texts(ask(server, "zone.test", "TXT")) == ['"v=spf1 " "mx -all"']
        negative = ask(server, "nothing.zone.test", "A")
        assert negative.rcode() == dns.rcode.NXDOMAIN
        (soa,) = negative.authority  # RFC 2308: SOA with the negative TTL
        assert soa.rdtype == dns.rdatatype.SOA and soa.ttl == 60
        assert server.errors == []


def test_zone_text_with_absolute_names_and_origin_directive() -> None:
    text = "$ORIGIN b.test.\nmx1 60 A 127.0.0.8\na.test. MX 10 mx1.b.test.\n"
    with DnsServer(text) as server:
        assert texts(ask(server, "a.test", "MX")) == ["10 mx1.b.test."]
        response = ask(server, "mx1.b.test", "A")
        assert texts(response) == ["127.0.0.8"] and response.answer[0].ttl == 60


def test_zone_text_soa_away_from_origin_is_refused() -> None:
    with pytest.raises(ValueError, match="origin"):
        DnsServer("zone.test. SOA ns.zone.test. h.zone.test. 1 7200 900 1209600 60\n")


def test_malformed_query_gets_formerr_and_short_ones_are_dropped(server: DnsServer) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(2)
        sock.sendto(b"\x12\x34", ("127.0.0.1", server.port))  # shorter than a header
        sock.sendto(b"\xab\xcd\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xff", ("127.0.0.1",
                                                                              server.port))
        reply = sock.recv(512)
    assert reply[:2] == b"\xab\xcd"
    assert reply[3] & 0x0F == dns.rcode.FORMERR and reply[2] & 0x80
    assert texts(ask(server, "mx1.example.test", "A")) == ["127.0.0.2"]


def test_life_cycle() -> None:
    server = DnsServer({"a.test": {"A": ["127.0.0.1"]}})
    with pytest.raises(RuntimeError):
        server.port  # noqa: B018 - not started yet
    server.start()
    try:
        assert server.address == f"127.0.0.1:{server.port}"
        assert server.nameserver == ("127.0.0.1", server.port)
        assert texts(ask(server, "a.test", "A")) == ["127.0.0.1"]
    finally:
        server.stop()
    server.stop()  # idempotent
    with pytest.raises((dns.exception.Timeout, OSError)):
        ask(server, "a.test", "A", timeout=0.2)


def test_a_fixed_port_is_used_for_both_transports() -> None:
    with DnsServer() as first:
        port = first.port
    with DnsServer({"a.test": {"A": ["127.0.0.1"]}}, port=port) as server:
        assert server.port == port
        assert texts(ask(server, "a.test", "A", tcp=True)) == ["127.0.0.1"]


def test_order_is_kept_unless_shuffle_is_asked() -> None:
    values = [f"127.0.0.{i}" for i in range(1, 9)]
    with DnsServer({"many.test": {"A": values}}) as server:
        assert all(texts(ask(server, "many.test", "A")) == values for _ in range(5))
    with DnsServer({"many.test": {"A": values}}, shuffle=True) as server:
        orders = {tuple(texts(ask(server, "many.test", "A"))) for _ in range(5)}
        assert len(orders) > 1 and all(sorted(o) == sorted(values) for o in orders)
