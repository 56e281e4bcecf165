"""Test helpers that ship with the package, so benches and tests can use them.

Nothing here is used by the running server. ``dnsserver`` is a small authoritative DNS server
for loopback, so that code which looks up MX, A, AAAA and TXT records is tested against real
DNS traffic rather than a mocked resolver. ``postfix`` runs a private Postfix instance on
loopback (its own configuration, queue and Maildirs), a real peer for outbound tests and the
benchmark's point of comparison.
"""
