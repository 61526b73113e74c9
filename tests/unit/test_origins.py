"""Which pages and host names the router serves (llmd/origins.py)."""

from __future__ import annotations

import pytest

from llmd.api import origins
from llmd.errors import Forbidden


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "127.8.9.1", "::1", "[::1]",
                                  "app.localhost", "LOCALHOST."])
def test_loopback_names_and_addresses_are_loopback(host):
    assert origins.is_loopback(host)


@pytest.mark.parametrize("host", ["evil.example", "192.168.1.2", "localhost.evil.example", ""])
def test_other_names_are_not(host):
    assert not origins.is_loopback(host)


def test_a_host_header_is_read_without_its_port():
    assert origins.host_name("localhost:8080") == "localhost"
    assert origins.host_name("[::1]:8080") == "::1"
    assert origins.host_name("example.org") == "example.org"


def test_host_checks_apply_only_while_listening_on_loopback():
    with pytest.raises(Forbidden):
        origins.check_host("evil.example:8080", "127.0.0.1", [])
    origins.check_host("llm.lan", "127.0.0.1", ["LLM.lan"])
    origins.check_host("evil.example", "0.0.0.0", [])  # the operator chose to be reachable
    origins.check_host("evil.example", None, [])  # a Unix socket


def test_an_origin_is_allowed_when_listed_or_the_routers_own():
    assert origins.origin_allowed("http://ui.lan:3000/", None, ["http://ui.lan:3000"])
    assert origins.origin_allowed("http://127.0.0.1:8080", "127.0.0.1:8080", [])
    assert origins.origin_allowed("http://anything", None, ["*"])
    assert not origins.origin_allowed("http://evil.example", "127.0.0.1:8080", [])
    assert not origins.origin_allowed("null", "127.0.0.1:8080", [])
    with pytest.raises(Forbidden, match="cors_origins"):
        origins.check_origin("http://evil.example", "localhost:8080", [])
    origins.check_origin(None, "localhost:8080", [])  # not a browser
