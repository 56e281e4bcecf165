"""A small authoritative DNS server on loopback, for tests and benches.

:class:`DnsServer` answers queries over UDP and TCP on one port of 127.0.0.1 from a background
thread, using dnspython to parse and build messages. Zone data comes as a dict
(``{"example.test": {"MX": ["10 mx1.example.test."]}}``) or as zone-file text, and can be
changed while the server runs. It answers NXDOMAIN for names that do not exist, NODATA
(NOERROR with an empty answer) for names that exist without the asked type, and can be told
to answer SERVFAIL for some names or to never answer others. It counts queries per
(name, type).

What it does not do: recursion, wildcards, DNSSEC, zone transfers, delegations, EDNS options
beyond the payload size. It is not meant to face the Internet.

Covers RFC 1035 sections 4.1 (message format) and 4.2 (UDP 512-octet limit and TCP length
prefix), RFC 2181 section 10.1 (CNAME chains), RFC 2308 (SOA in negative answers, when the
data has one), RFC 6891 section 6.2.3 (EDNS payload size), RFC 7766 (TCP, several queries per
connection), RFC 8020 (empty non-terminals exist).
"""

from __future__ import annotations

import selectors
import socket
import struct
import threading
from collections import Counter
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Self, TypeAlias

import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.CNAME
import dns.rdtypes.ANY.SOA
import dns.rdtypes.ANY.TXT
import dns.rrset
import dns.zone

HOST = "127.0.0.1"
UDP_PLAIN_LIMIT = 512  # RFC 1035 section 4.2.1
OUR_UDP_PAYLOAD = 1232  # what we advertise to EDNS clients (the DNS flag day 2020 value)
MAX_CNAME_CHAIN = 8
TXT_CHUNK = 255  # octets in one TXT character-string

# A record value: zone-file rdata text ("10 mx1.example.test."), or for TXT the record's
# content as plain text or bytes (split into 255-octet strings), or a tuple of strings
# taken as the record's character-strings as they are.
RecordValue: TypeAlias = str | bytes | tuple[str | bytes, ...]
Records: TypeAlias = Mapping[str, Mapping[str, RecordValue | Iterable[RecordValue]]]
_Node: TypeAlias = dict[dns.rdatatype.RdataType, dns.rrset.RRset]
_Data: TypeAlias = dict[dns.name.Name, _Node]


def _key(name: str | dns.name.Name) -> str:
    """The form names take in ``servfail``, ``timeout`` and ``queries``: lower case, no dot."""
    text = name.to_text() if isinstance(name, dns.name.Name) else name
    return text.lower().rstrip(".") or "."


def _name(name: str) -> dns.name.Name:
    return dns.name.from_text(name, origin=dns.name.root)


def _txt_strings(value: RecordValue) -> list[bytes]:
    if isinstance(value, tuple):
        return [p.encode() if isinstance(p, str) else p for p in value]
    raw = value.encode() if isinstance(value, str) else value
    return [raw[i:i + TXT_CHUNK] for i in range(0, len(raw), TXT_CHUNK)] or [b""]


def _make_rrset(name: dns.name.Name, rtype: dns.rdatatype.RdataType,
                values: Iterable[RecordValue], ttl: int) -> dns.rrset.RRset:
    rrset = dns.rrset.RRset(name, dns.rdataclass.IN, rtype)
    for value in values:
        rdata: dns.rdata.Rdata
        if rtype == dns.rdatatype.TXT:
            rdata = dns.rdtypes.ANY.TXT.TXT(dns.rdataclass.IN, rtype, _txt_strings(value))
        elif isinstance(value, str):
            rdata = dns.rdata.from_text(dns.rdataclass.IN, rtype, value,
                                        origin=dns.name.root, relativize=False)
        else:
            raise TypeError(f"{rtype.name} values must be zone-file text, not {value!r}")
        rrset.add(rdata, ttl)
    return rrset


def _values(values: RecordValue | Iterable[RecordValue]) -> list[RecordValue]:
    if isinstance(values, str | bytes | tuple):
        return [values]
    return list(values)


def _parse_zone_text(text: str, ttl: int, origin: str) -> _Data:
    try:
        zone = dns.zone.from_text(f"$TTL {ttl}\n{text}", origin=_name(origin),
                                  relativize=False, check_origin=False)
    except ValueError as exc:  # dnspython allows an SOA only at the zone's origin
        raise ValueError(f"zone text: {exc} (an SOA must be at origin={origin!r})") from exc
    data: _Data = {}
    for name, rdataset in zone.iterate_rdatasets():
        rrset = dns.rrset.RRset(name, rdataset.rdclass, rdataset.rdtype)
        for rdata in rdataset:
            rrset.add(rdata, rdataset.ttl)
        data.setdefault(name, {})[rdataset.rdtype] = rrset
    return data


class DnsServer:
    """An authoritative DNS server on 127.0.0.1, UDP and TCP on one port, in a thread.

    ``records`` maps names to ``{type: [values]}`` (see :data:`RecordValue`), or is zone-file
    text read as one zone whose origin is ``origin`` (default the root): relative names are
    relative to it (or to a later ``$ORIGIN``), an SOA may stand only at it, and names
    outside it are skipped, as dnspython's zone reader does. Names in the dict form and in
    :meth:`set` are always taken as absolute.
    ``servfail`` and ``timeout`` are sets of names (any case, trailing dot optional) that get
    SERVFAIL or no answer at all; both are plain sets and may be changed while running.
    ``port=0`` picks a port that is free for both UDP and TCP. Records go out in the order
    given, unless ``shuffle`` asks for a random order in each answer (as many servers do).
    """

    def __init__(self, records: Records | str | None = None, *,
                 servfail: Iterable[str] = (), timeout: Iterable[str] = (),
                 ttl: int = 300, port: int = 0, origin: str = ".",
                 shuffle: bool = False) -> None:
        self.ttl = ttl
        self.shuffle = shuffle
        self.servfail: set[str] = set(servfail)
        self.timeout: set[str] = set(timeout)
        self._want_port = port
        self._port: int | None = None
        self._lock = threading.Lock()
        self._queries: Counter[tuple[str, str]] = Counter()
        self._data: _Data = {}
        self._thread: threading.Thread | None = None
        self._udp: socket.socket | None = None
        self._tcp: socket.socket | None = None
        self._wake: tuple[socket.socket, socket.socket] | None = None
        self._stopping = threading.Event()
        self.errors: list[BaseException] = []  # unexpected failures while answering
        if isinstance(records, str):
            self._data = _parse_zone_text(records, ttl, origin)
        elif records is not None:
            for name, types in records.items():
                for rtype, values in types.items():
                    self.set(name, rtype, values)

    # -- zone data ------------------------------------------------------------------------

    def set(self, name: str, rtype: str, values: RecordValue | Iterable[RecordValue],
            ttl: int | None = None) -> None:
        """Replace the records of one type at ``name``; empty ``values`` removes them."""
        owner = _name(name)
        kind = dns.rdatatype.RdataType.make(rtype.upper())
        rrset = _make_rrset(owner, kind, _values(values), self.ttl if ttl is None else ttl)
        with self._lock:
            data = dict(self._data)  # copy on write: the server thread reads a snapshot
            node = dict(data.get(owner, {}))
            if len(rrset):
                node[kind] = rrset
            else:
                node.pop(kind, None)
            if node:
                data[owner] = node
            else:
                data.pop(owner, None)
            self._data = data

    def remove(self, name: str) -> None:
        """Remove every record at ``name`` (it becomes NXDOMAIN unless it has children)."""
        owner = _name(name)
        with self._lock:
            data = dict(self._data)
            data.pop(owner, None)
            self._data = data

    # -- statistics -----------------------------------------------------------------------

    @property
    def queries(self) -> Counter[tuple[str, str]]:
        """A copy of the query counts, keyed by ("name", "TYPE"), name lower case, no dot."""
        with self._lock:
            return Counter(self._queries)

    def reset_queries(self) -> None:
        with self._lock:
            self._queries.clear()

    # -- life cycle -----------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("DnsServer is not started")
        return self._port

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def nameserver(self) -> tuple[str, int]:
        """``(host, port)``, the form :class:`postwright.net.dns.Resolver` takes."""
        return (HOST, self.port)

    def start(self) -> Self:
        if self._thread is not None:
            raise RuntimeError("DnsServer already started")
        self._udp, self._tcp = self._bind()
        self._port = self._udp.getsockname()[1]
        self._wake = socket.socketpair()
        self._stopping.clear()
        self._thread = threading.Thread(target=self._serve, name=f"dns-{self._port}",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stopping.set()
        assert self._wake is not None
        self._wake[1].send(b"x")
        thread.join(timeout=5)
        for sock in (self._udp, self._tcp, *self._wake):
            if sock is not None:
                sock.close()
        self._udp = self._tcp = self._wake = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def _bind(self) -> tuple[socket.socket, socket.socket]:
        last: OSError | None = None
        for _ in range(50):
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                udp.bind((HOST, self._want_port))
                tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                tcp.bind((HOST, udp.getsockname()[1]))
                tcp.listen(64)
            except OSError as exc:
                udp.close()
                tcp.close()
                last = exc
                if self._want_port:
                    raise
                continue
            return udp, tcp
        raise OSError("no port free for both UDP and TCP") from last

    # -- the server thread ----------------------------------------------------------------

    def _serve(self) -> None:
        assert self._udp is not None and self._tcp is not None and self._wake is not None
        udp, tcp, wake = self._udp, self._tcp, self._wake[0]
        buffers: dict[socket.socket, bytearray] = {}
        with selectors.DefaultSelector() as sel:
            sel.register(udp, selectors.EVENT_READ)
            sel.register(tcp, selectors.EVENT_READ)
            sel.register(wake, selectors.EVENT_READ)
            while not self._stopping.is_set():
                for key, _ in sel.select():
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    if sock is udp:
                        self._on_datagram(udp)
                    elif sock is tcp:
                        try:
                            conn, _addr = tcp.accept()
                        except OSError:
                            continue
                        conn.settimeout(2.0)
                        buffers[conn] = bytearray()
                        sel.register(conn, selectors.EVENT_READ)
                    elif sock in buffers and not self._on_stream(sock, buffers[sock]):
                        sel.unregister(sock)
                        del buffers[sock]
                        sock.close()
            for conn in buffers:
                conn.close()

    def _on_datagram(self, udp: socket.socket) -> None:
        try:
            wire, peer = udp.recvfrom(65535)
        except OSError:
            return
        reply = self._respond(wire, tcp=False)
        if reply is not None:
            try:
                udp.sendto(reply, peer)
            except OSError:
                pass

    def _on_stream(self, conn: socket.socket, buffer: bytearray) -> bool:
        """Read what is there and answer every complete message; False when done."""
        try:
            chunk = conn.recv(65535)
        except OSError:
            return False
        if not chunk:
            return False
        buffer += chunk
        while len(buffer) >= 2:
            (length,) = struct.unpack("!H", buffer[:2])
            if len(buffer) < 2 + length:
                break
            wire = bytes(buffer[2:2 + length])
            del buffer[:2 + length]
            reply = self._respond(wire, tcp=True)
            if reply is not None:
                try:
                    conn.sendall(struct.pack("!H", len(reply)) + reply)
                except OSError:
                    return False
        return True

    def _respond(self, wire: bytes, *, tcp: bool) -> bytes | None:
        try:
            query = dns.message.from_wire(wire)
        except Exception:
            if len(wire) < 12:
                return None
            # FORMERR with the query's id, QR set, no sections (RFC 1035 section 4.1.1)
            return wire[:2] + struct.pack("!HHHHH", 0x8000 | dns.rcode.FORMERR, 0, 0, 0, 0)
        try:
            response = self._answer(query)
            if response is None:
                return None
            if tcp:
                limit = 65535
            elif query.edns >= 0:
                limit = max(UDP_PLAIN_LIMIT, min(query.payload, OUR_UDP_PAYLOAD))
            else:
                limit = UDP_PLAIN_LIMIT
            return response.to_wire(max_size=limit, prefer_truncation=True,
                                    want_shuffle=self.shuffle)
        except Exception as exc:  # keep serving; the test can look at .errors
            self.errors.append(exc)
            response = dns.message.make_response(query)
            response.set_rcode(dns.rcode.SERVFAIL)
            return response.to_wire()

    def _answer(self, query: dns.message.Message) -> dns.message.Message | None:
        response = dns.message.make_response(query, our_payload=OUR_UDP_PAYLOAD)
        response.flags |= dns.flags.AA
        if query.opcode() != dns.opcode.QUERY:
            response.set_rcode(dns.rcode.NOTIMP)
            return response
        if len(query.question) != 1:
            response.set_rcode(dns.rcode.FORMERR)
            return response
        question = query.question[0]
        qname, qtype = question.name, question.rdtype
        key = _key(qname)
        with self._lock:
            self._queries[(key, dns.rdatatype.to_text(qtype))] += 1
            data = self._data
        if key in {_key(n) for n in set(self.timeout)}:
            return None
        if key in {_key(n) for n in set(self.servfail)}:
            response.set_rcode(dns.rcode.SERVFAIL)
            return response
        if question.rdclass != dns.rdataclass.IN:
            response.set_rcode(dns.rcode.REFUSED)
            return response
        last, rcode = self._lookup(data, qname, qtype, response.answer)
        response.set_rcode(rcode)
        has_data = any(rrset.rdtype == qtype for rrset in response.answer)
        if not has_data and qtype != dns.rdatatype.ANY:
            soa = _enclosing_soa(data, last)
            if soa is not None:
                response.authority.append(soa)
        return response

    @staticmethod
    def _lookup(data: _Data, qname: dns.name.Name, qtype: dns.rdatatype.RdataType,
                answer: list[dns.rrset.RRset]) -> tuple[dns.name.Name, dns.rcode.Rcode]:
        """Fill ``answer``, following CNAMEs; return the last name and the rcode."""
        name = qname
        seen = {qname}
        for _ in range(MAX_CNAME_CHAIN + 1):
            node = data.get(name)
            if node is None:
                exists = any(owner.is_subdomain(name) for owner in data)
                return name, dns.rcode.NOERROR if exists else dns.rcode.NXDOMAIN
            if qtype == dns.rdatatype.ANY:
                answer.extend(node.values())
                break
            if qtype in node:
                answer.append(node[qtype])
                break
            cname = node.get(dns.rdatatype.CNAME)
            if cname is None:
                break
            answer.append(cname)
            target = cname[0]
            assert isinstance(target, dns.rdtypes.ANY.CNAME.CNAME)
            name = target.target
            if name in seen:
                break
            seen.add(name)
        return name, dns.rcode.NOERROR


def _enclosing_soa(data: _Data, name: dns.name.Name) -> dns.rrset.RRset | None:
    """The SOA of the nearest enclosing name that has one, with the negative TTL."""
    while True:
        node = data.get(name)
        soa = node.get(dns.rdatatype.SOA) if node else None
        if soa is not None:
            first = soa[0]
            assert isinstance(first, dns.rdtypes.ANY.SOA.SOA)
            out = dns.rrset.RRset(soa.name, soa.rdclass, soa.rdtype)
            out.add(first, min(soa.ttl, first.minimum))
            return out
        if name == dns.name.root or not name.is_absolute():
            return None
        name = name.parent()
