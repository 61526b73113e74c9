"""Who may reach what: children on loopback only, API keys kept out of every log.

Starts: llmd (subprocess) with real llama-server children on a small generated model.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.fakes import tiny_gguf

pytestmark = pytest.mark.real
KEY = "sk-llmd-test-key-never-logged"


def listen_addresses(port: int) -> set[str]:
    """Local addresses with a listener on `port`, from /proc/net/tcp{,6}."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, hex_port = fields[1].rsplit(":", 1)
            if fields[3] == "0A" and int(hex_port, 16) == port:
                found.add(address)
    return found


def test_children_listen_on_loopback_only_whatever_the_args_say(daemon, llama_server,
                                                                 tmp_path):
    model = tiny_gguf.write(tmp_path / "t.gguf")
    d = daemon({"llama_server": llama_server,
                "args": ["--ctx-size", "256", "--host", "0.0.0.0"]}, models={"t.gguf": model})
    d.llmctl("load", "t")
    port = d.models()["t"]["port"]
    assert listen_addresses(port) == {"0100007F"}  # 127.0.0.1, nothing else
    assert listen_addresses(d.port) == {"0100007F"}  # the router's default, too


def test_api_keys_guard_every_route_but_health_and_are_never_logged(daemon, llama_server,
                                                                    tmp_path):
    model = tiny_gguf.write(tmp_path / "t.gguf")
    d = daemon({"llama_server": llama_server, "args": ["--ctx-size", "256"],
                "api_keys": [KEY]}, models={"t.gguf": model})
    body = {"model": "t", "prompt": "a", "max_tokens": 2}
    for path, method in (("/v1/models", "GET"), ("/metrics", "GET"), ("/props", "GET"),
                         ("/v1/completions", "POST"), ("/models/load", "POST")):
        denied = d.http.request(method, path, json=body)
        assert denied.status_code == 401, path
        assert denied.json()["error"]["type"] == "authentication_error"
        wrong = d.http.request(method, path, json=body, headers={"x-api-key": KEY[:-1]})
        assert wrong.status_code == 401, path
    assert d.http.get("/health").status_code == 200
    ok = d.http.post("/v1/completions", json=body, headers={"authorization": f"Bearer {KEY}"})
    assert ok.status_code == 200
    assert d.http.get("/metrics", headers={"x-api-key": KEY}).status_code == 200
    with httpx.Client(base_url=d.url) as c:  # the key on a streamed request, too
        with c.stream("POST", "/v1/completions", json={**body, "stream": True},
                      headers={"authorization": f"Bearer {KEY}"}) as r:
            assert r.status_code == 200 and list(r.iter_lines())
    logs = d.log() + d.llmctl("logs", "t", "-n", "1000").stdout  # llmd's and the child's
    assert KEY not in logs and KEY[:-1] not in logs
