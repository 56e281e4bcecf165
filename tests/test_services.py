"""Services.is_trusted: trusted networks by client address, answers remembered per address."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

import postwright.server.session as session_module
from postwright.delivery.routing import Router
from postwright.queue import QueueStore
from postwright.server.session import Services


def services(tmp_path: Path, *networks: str) -> Services:
    router = Router(local_domains=["example.test"], aliases={}, account_exists=lambda a: True)
    return Services(hostname="mx.example.test", router=router, queue=QueueStore(tmp_path / "q"),
                    trusted_networks=tuple(ipaddress.ip_network(n) for n in networks))


def test_trusted_networks_by_address(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(session_module, "_TRUSTED_MEMORY", 2)
    svc = services(tmp_path, "127.0.0.0/8", "2001:db8::/32")
    cases = {"127.0.0.1": True, "::ffff:127.0.0.2": True, "2001:db8::5": True,
             "192.0.2.1": False, "2001:db9::1": False, "not an address": False}
    for _round in range(2):  # the second time from memory, which keeps at most two
        for client, trusted in cases.items():
            assert svc.is_trusted(client) is trusted, client
            assert len(svc._trusted) <= 2
    assert not services(tmp_path).is_trusted("127.0.0.1")
