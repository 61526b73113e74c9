"""Ollama's API on the router port, with the official `ollama` client and real children."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import httpx
import ollama
import pytest

from tests.fakes import tiny_gguf
from tests.fakes.fake_hub import FakeHub
from tests.helpers import wait_until
from tests.integration.test_real_gemma import GEMMA_ARGS

pytestmark = pytest.mark.real
# --embeddings for /api/embed; mean pooling gives one vector per input (OpenAI's shape).
EMBED_ARGS = [*GEMMA_ARGS, "--embeddings", "--pooling", "mean"]


@pytest.fixture
def gemma_daemon(daemon, llama_server, gemma):
    def start(**config):
        return daemon({"llama_server": llama_server, "args": EMBED_ARGS, **config},
                      models={"gemma.gguf": gemma})
    return start


def assert_capped(final, limit: int) -> None:
    """A reply under num_predict=limit: "length" exactly at the cap, else the model stopped early.

    Whether a tiny model emits its end token within a few tokens differs between CPUs, so
    the test pins the mapping, not the text.
    """
    assert final.done_reason in ("stop", "length") and 0 < final.eval_count <= limit
    assert final.done_reason == "stop" or final.eval_count == limit


def test_the_ollama_client_lists_shows_chats_generates_and_embeds(gemma_daemon):
    d = gemma_daemon()
    client = ollama.Client(host=d.url)
    (listed,) = client.list().models
    assert listed.model == "gemma" and listed.size == (d.tmp / "models" / "gemma.gguf").stat(
        ).st_size
    assert listed.details.family == "gemma3" and listed.details.quantization_level == "Q4_K_M"
    assert listed.details.parameter_size == "268.10M" and listed.digest
    assert client.ps().models == []

    reply = client.chat(model="gemma", messages=[{"role": "user", "content": "Say hi."}],
                        options={"num_predict": 12, "temperature": 0, "seed": 1})
    assert reply.done and reply.done_reason in ("stop", "length") and reply.message.content
    assert reply.eval_count and reply.prompt_eval_count and reply.eval_duration
    assert reply.load_duration > 0 and reply.total_duration >= reply.load_duration

    parts = list(client.chat(model="gemma:latest", stream=True, options={"num_predict": 6},
                             messages=[{"role": "user", "content": "Count to three."}]))
    assert [p.done for p in parts] == [False] * (len(parts) - 1) + [True]
    assert "".join(p.message.content for p in parts).strip()
    assert_capped(parts[-1], 6)

    generated = client.generate(model="gemma", prompt="Once upon a time", system="Be brief.",
                                options={"num_predict": 5})
    assert generated.response
    assert_capped(generated, 5)
    raw = list(client.generate(model="gemma", prompt="User: hi\nAssistant:", raw=True,
                               stream=True, options={"num_predict": 4}))
    assert raw[-1].done
    assert_capped(raw[-1], 4)

    (running,) = client.ps().models
    assert running.model == "gemma" and running.size > listed.size and running.size_vram == 0
    # What one request gets: --ctx-size 1024 over --parallel 2 slots.
    assert running.context_length == 512 and running.expires_at.year == 9999

    shown = client.show("gemma")
    assert shown.details.family == "gemma3" and "embedding" in shown.capabilities
    assert shown.modelinfo["gemma3.context_length"] == 32768
    assert shown.modelinfo["general.parameter_count"] == 268098176
    assert "--ctx-size 1024" in shown.parameters

    embedded = client.embed(model="gemma", input=["hello", "world"])
    assert len(embedded.embeddings) == 2 and len(embedded.embeddings[0]) == 640
    assert embedded.prompt_eval_count
    assert len(client.embeddings(model="gemma", prompt="hi").embedding) == 640

    with pytest.raises(ollama.ResponseError) as info:
        client.chat(model="nope", messages=[{"role": "user", "content": "hi"}])
    assert info.value.status_code == 404 and "nope" in info.value.error
    metrics = d.http.get("/metrics").text
    assert 'model="gemma",path="/api/chat",code="200"' in metrics


def test_keep_alive_zero_unloads_negative_keeps_and_an_empty_request_loads(gemma_daemon):
    d = gemma_daemon(models={"gemma": {"path": "gemma.gguf", "ttl": 1}})
    client = ollama.Client(host=d.url)
    client.generate(model="gemma")  # no prompt: load only
    assert d.models()["gemma"]["state"] == "loaded"
    client.chat(model="gemma", messages=[{"role": "user", "content": "hi"}],
                options={"num_predict": 2}, keep_alive=-1)
    time.sleep(2.5)  # past its ttl of 1 s: keep_alive < 0 keeps it
    assert d.models()["gemma"]["state"] == "loaded"
    (running,) = client.ps().models
    assert running.expires_at.year == 9999
    client.chat(model="gemma", messages=[{"role": "user", "content": "hi"}],
                options={"num_predict": 2}, keep_alive="30m")
    (running,) = client.ps().models
    assert 1700 < running.expires_at.timestamp() - time.time() <= 1800
    client.chat(model="gemma", messages=[{"role": "user", "content": "hi"}],
                options={"num_predict": 2}, keep_alive=0)
    wait_until(lambda: d.models()["gemma"]["state"] == "unloaded", 10, "unloaded after it")
    client.generate(model="gemma", keep_alive=0)  # unloading what is unloaded: fine
    assert client.ps().models == []


def test_the_wire_is_ndjson_with_ollamas_fields_and_errors(gemma_daemon):
    d = gemma_daemon(api_keys=["k"])
    auth = {"authorization": "Bearer k"}
    assert d.http.get("/api/tags").status_code == 401
    assert d.http.get("/api/tags").json() == {"error": "invalid or missing API key"}
    assert d.http.get("/api/version", headers=auth).json()["version"]
    body = {"model": "gemma", "messages": [{"role": "user", "content": "hi"}],
            "options": {"num_predict": 3}}
    with httpx.stream("POST", d.url + "/api/chat", json=body, headers=auth,
                      timeout=60) as response:
        assert response.headers["content-type"] == "application/x-ndjson"
        lines = [json.loads(line) for line in response.iter_lines() if line]
    assert all(set(line) >= {"model", "created_at", "message", "done"} for line in lines)
    assert set(lines[-1]) >= {"done_reason", "total_duration", "load_duration",
                              "prompt_eval_count", "prompt_eval_duration", "eval_count",
                              "eval_duration"}
    refused = {
        "num_ctx": {"num_ctx": 4096},  # more than a request gets from the child (512)
        "num_thread": {"num_thread": 8},  # fixed when llmd loads the model
        "unknown option": {"no_such_thing": 1},
    }
    for word, options in refused.items():
        answer = d.http.post("/api/chat", json={**body, "options": options}, headers=auth)
        assert answer.status_code == 400 and word in answer.json()["error"], answer.text
    assert d.http.post("/api/chat", json={**body, "options": {"num_ctx": 512}},
                       headers=auth).status_code == 200  # fits in the child's context
    answer = d.http.post("/api/generate", headers=auth, json={
        "model": "gemma", "prompt": "x", "template": "{{ .Prompt }}"})
    assert answer.status_code == 400 and "template" in answer.json()["error"]
    answer = d.http.post("/api/chat", headers=auth, json={"model": "gemma", "messages": "x"})
    assert answer.status_code == 400 and "messages" in answer.json()["error"]


def test_pull_streams_progress_and_delete_removes_a_cached_hub_model(daemon, llama_server,
                                                                     tmp_path):
    tiny = tiny_gguf.write(tmp_path / "tiny.gguf", layers=2, width=256)
    hub = FakeHub()
    try:
        hub.add("acme/tiny-GGUF", {"tiny-Q4_K_M.gguf": tiny}, delay=0.002)
        config = {"llama_server": llama_server, "args": ["--ctx-size", "512"],
                  "hf_endpoint": hub.url, "cache_dir": str(tmp_path / "cache")}
        closed = daemon(config)
        with pytest.raises(ollama.ResponseError) as info:
            ollama.Client(host=closed.url).pull("acme/tiny-GGUF:Q4_K_M")
        assert info.value.status_code == 403 and "allow_pull" in info.value.error
        d = daemon({**config, "allow_pull": True})
        client = ollama.Client(host=d.url)
        steps = list(client.pull("acme/tiny-GGUF:Q4_K_M", stream=True))
        assert steps[0].status == "pulling manifest" and steps[-1].status == "success"
        progress = [s for s in steps if s.status.startswith("pulling ") and s.total]
        assert progress and progress[-1].total == tiny.stat().st_size
        assert [p.completed for p in progress] == sorted(p.completed for p in progress)
        assert "acme/tiny-GGUF:Q4_K_M" in [m.model for m in client.list().models]
        reply = client.generate(model="acme/tiny-GGUF:Q4_K_M", prompt="a",
                                options={"num_predict": 2})
        assert reply.done
        path = Path(d.models()["acme/tiny-GGUF:Q4_K_M"]["path"])
        client.delete("acme/tiny-GGUF:Q4_K_M")
        assert not path.exists() and not os.path.exists(path.resolve())
        assert "acme/tiny-GGUF:Q4_K_M" not in [m.model for m in client.list().models]
        with pytest.raises(ollama.ResponseError) as info:
            client.delete("acme/tiny-GGUF:Q4_K_M")
        assert info.value.status_code == 404
    finally:
        hub.close()


def test_delete_refuses_a_model_that_is_not_from_a_hub(gemma_daemon):
    d = gemma_daemon()
    with pytest.raises(ollama.ResponseError) as info:
        ollama.Client(host=d.url).delete("gemma")
    assert info.value.status_code == 400 and "not a hub model" in info.value.error
    assert (d.tmp / "models" / "gemma.gguf").exists()
