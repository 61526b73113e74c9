"""No web page can drive llmd unless the operator says so: foreign origins get 403 before
any route runs, preflights are answered only for cors_origins, and rebound host names
are refused while the router listens on loopback.

Starts: llmd (subprocess) with fake llama-server children.
"""

from __future__ import annotations

import json

import openai
import pytest

EVIL = "http://evil.example"


def fake() -> str:
    return json.dumps({})


@pytest.mark.parametrize("path, body", [
    ("/models/load", {"model": "a"}), ("/models/unload", {"model": "a"}),
    ("/v1/chat/completions", {"model": "a", "messages": [{"role": "user", "content": "hi"}]}),
])
def test_a_simple_request_from_a_foreign_page_is_refused_before_any_route(daemon, fake_server,
                                                                           path, body):
    d = daemon({"llama_server": fake_server}, models={"a.gguf": fake()})
    if path == "/models/unload":
        d.llmctl("load", "a")
    # What a page's fetch() sends without a preflight: text/plain, its own Origin.
    response = d.http.post(path, content=json.dumps(body),
                           headers={"content-type": "text/plain", "origin": EVIL})
    assert response.status_code == 403, response.text
    assert response.json()["error"]["code"] == 403
    assert "access-control-allow-origin" not in response.headers
    expected = "loaded" if path == "/models/unload" else "unloaded"
    assert d.models()["a"]["status"]["value"] == expected  # nothing happened


def test_a_rebound_host_name_is_refused_on_loopback(daemon, fake_server):
    d = daemon({"llama_server": fake_server, "allowed_hosts": ["llm.internal"]},
               models={"a.gguf": fake()})
    assert d.http.get("/v1/models", headers={"host": "evil.example"}).status_code == 403
    assert d.http.get("/v1/models", headers={"host": "evil.example:8080"}).status_code == 403
    for host in ("localhost", f"127.0.0.1:{d.port}", "[::1]:8080", "llm.internal"):
        assert d.http.get("/v1/models", headers={"host": host}).status_code == 200, host


def test_listed_origins_get_cors_and_others_do_not(daemon, fake_server):
    ui = "http://localhost:3000"
    d = daemon({"llama_server": fake_server, "cors_origins": [ui], "api_keys": ["k"]},
               models={"a.gguf": fake()})
    preflight = d.http.options("/v1/chat/completions", headers={
        "origin": ui, "access-control-request-method": "POST",
        "access-control-request-headers": "authorization, content-type"})
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == ui
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert "authorization" in preflight.headers["access-control-allow-headers"]
    response = d.http.post("/v1/chat/completions", headers={"origin": ui, "x-api-key": "k"},
                           json={"model": "a", "messages": [{"role": "user", "content": "x"}]})
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == ui
    refused = d.http.options("/v1/models", headers={"origin": EVIL,
                                                    "access-control-request-method": "GET"})
    assert refused.status_code == 403
    assert "access-control-allow-origin" not in refused.headers
    # An error still carries the header, so the page can read why.
    bad_key = d.http.get("/v1/models", headers={"origin": ui})
    assert bad_key.status_code == 401 and bad_key.headers["access-control-allow-origin"] == ui


def test_clients_without_an_origin_and_llmds_own_pages_still_work(daemon, fake_server):
    d = daemon({"llama_server": fake_server}, models={"a.gguf": fake()})
    client = openai.OpenAI(base_url=d.url + "/v1", api_key="none", max_retries=0)
    answer = client.chat.completions.create(model="a", messages=[{"role": "user",
                                                                  "content": "hi"}])
    assert answer.choices[0].message.content
    assert d.llmctl("ps").returncode == 0
    own = d.http.post("/models/unload", json={"model": "a"},
                      headers={"origin": f"http://127.0.0.1:{d.port}"})
    assert own.status_code == 200
