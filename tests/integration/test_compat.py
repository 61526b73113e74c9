"""What clients of llama.cpp's router, of OpenAI and of Anthropic expect of llmd, checked
with their own requests and assertions (and the real openai and anthropic clients).

Starts: llmd (subprocess) with fake llama-server children.
"""

from __future__ import annotations

import json
import threading

import anthropic
import httpx
import openai
import pytest

from tests.helpers import wait_until


def fake(**behaviour) -> str:
    return json.dumps(behaviour)


def test_models_sse_carries_llama_cpp_router_event_shapes(daemon, fake_server):
    d = daemon({"llama_server": fake_server}, models={"a.gguf": fake()})
    events: list[dict] = []

    def listen() -> None:
        with httpx.stream("GET", d.url + "/models/sse", timeout=30) as response:
            for line in response.iter_lines():
                if line.startswith("data: "):
                    events.append(json.loads(line[6:]))
                    if events[-1].get("event") == "model_remove":
                        return

    reader = threading.Thread(target=listen, daemon=True)
    reader.start()
    wait_until(lambda: d.http.get("/metrics").text.count("llmd_connections ") and
               "llmd_connections 2" in d.http.get("/metrics").text, 10, "the event stream")
    assert d.http.post("/models/load", json={"model": "a"}).status_code == 200
    wait_until(lambda: any(e["data"].get("status") == "loaded" for e in events
                           if e["event"] == "status_change"), 10, "loaded")
    (d.tmp / "models" / "a.gguf").unlink()
    assert [m["id"] for m in d.http.get("/models", params={"reload": "1"}).json()["data"]] == []
    reader.join(10)
    by_kind = {(e["event"], (e.get("data") or {}).get("status")) for e in events}
    assert ("model_status", "loading") in by_kind  # what llama.cpp's web UI reads
    assert ("status_change", "loading") in by_kind and ("status_change", "loaded") in by_kind
    assert ("status_change", "unloaded") in by_kind
    assert any(e["event"] == "models_reload" and e["model"] == "*" for e in events)
    assert {"model": "a", "event": "model_remove"} in events


def test_reload_query_answers_with_the_list_after_the_reload(daemon, fake_server):
    d = daemon({"llama_server": fake_server}, models={"a.gguf": fake(), "b.gguf": fake()})
    assert d.chat("a").status_code == 200
    (d.tmp / "models" / "a.gguf").unlink()
    (d.tmp / "models" / "c.gguf").write_text(fake())
    ids = [m["id"] for m in d.http.get("/models", params={"reload": "1"}).json()["data"]]
    assert ids == ["b", "c"]


def test_autoload_false_for_an_unloaded_model_is_400_as_in_llama_cpp(daemon, fake_server):
    d = daemon({"llama_server": fake_server}, models={"a.gguf": fake()})
    response = d.http.post("/v1/chat/completions?autoload=false", json={"model": "a"})
    assert response.status_code == 400 and "error" in response.json()
    assert response.json()["error"]["type"] == "invalid_request_error"
    d2 = daemon({"llama_server": fake_server, "autoload": False}, models={"a.gguf": fake()})
    assert d2.chat("a").status_code == 400


def test_openai_client_retrieves_a_model_by_id(daemon, fake_server):
    d = daemon({"llama_server": fake_server,
                "models": {"gemma": {"path": "g.gguf", "aliases": ["default"]}}},
               models={"g.gguf": fake()})
    client = openai.OpenAI(base_url=d.url + "/v1", api_key="none", max_retries=0)
    model = client.models.retrieve("gemma")
    assert model.id == "gemma" and model.object == "model"
    assert client.models.retrieve("default").id == "gemma"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")
    assert "gemma" in [m.id for m in client.models.list()]


def test_a_broken_model_fails_once_then_answers_at_once_until_asked_again(daemon, fake_server):
    d = daemon({"llama_server": fake_server}, models={"bad.gguf": fake(exit_on_load=3),
                                                        "good.gguf": fake()})
    client = openai.OpenAI(base_url=d.url + "/v1", api_key="none")  # retries 503 twice
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model="bad", messages=[{"role": "user", "content": "hi"}])
    assert "exited with code 3" in info.value.message
    assert d.log().count("bad: loading") == 1  # the SDK's retries started no child
    assert d.chat("good").status_code == 200
    assert d.llmctl("load", "bad", check=False).returncode == 1  # asked again: tried again
    assert d.log().count("bad: loading") == 2


def test_anthropic_routes_answer_errors_in_anthropics_shape(daemon, fake_server):
    d = daemon({"llama_server": fake_server}, models={"a.gguf": fake()})
    response = d.http.post("/v1/messages", json={"model": "nope", "max_tokens": 8,
                                                 "messages": []})
    body = response.json()
    assert response.status_code == 400 and body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error" and "nope" in body["error"]["message"]
    client = anthropic.Anthropic(base_url=d.url, api_key="none", max_retries=0)
    with pytest.raises(anthropic.BadRequestError) as info:
        client.messages.create(model="nope", max_tokens=8,
                               messages=[{"role": "user", "content": "hi"}])
    assert "nope" in info.value.message
    assert "code" in d.http.post("/v1/chat/completions", json={"model": "nope"}).json()["error"]


def test_offline_a_hub_model_not_in_the_cache_says_so(daemon, fake_server):
    d = daemon({"llama_server": fake_server, "offline": True, "allow_pull": True},
               models={"a.gguf": fake()})
    response = d.chat("owner/repo:Q4_K_M")
    assert response.status_code == 400 and "offline" in response.json()["error"]["message"]
    result = d.llmctl("load", "owner/repo:Q4_K_M", check=False)
    assert result.returncode == 1 and "offline" in result.stderr


def test_llmctl_unload_all_stops_every_model(daemon, fake_server):
    d = daemon({"llama_server": fake_server}, models={"a.gguf": fake(), "b.gguf": fake()})
    d.llmctl("load", "a")
    d.llmctl("load", "b")
    out = d.llmctl("unload", "--all").stdout
    assert "a: unloaded" in out and "b: unloaded" in out
    assert all(m["status"]["value"] == "unloaded" for m in d.models().values())
    assert d.llmctl("unload", "--all").stdout.strip() == "no model is loaded"
    assert d.llmctl("unload", check=False).returncode == 2
