"""Loading feedback: a streaming chat that waits for a load hears what the load is doing."""

from __future__ import annotations

import json
import time

import anthropic
import httpx
import openai
import pytest

from tests.fakes.fake_hub import FakeHub
from tests.integration.test_progress import slow_model
from tests.integration.test_real_gemma import gemma_config

CHAT = {"stream": True, "max_tokens": 8, "messages": [{"role": "user", "content": "Say hi."}]}


def raw_stream(d, model: str, headers: dict | None = None) -> list[tuple[float, dict | str]]:
    """(seconds since sent, decoded data) of every event of a streaming chat."""
    events = []
    start = time.monotonic()
    with httpx.stream("POST", d.url + "/v1/chat/completions", json={"model": model, **CHAT},
                      headers=headers or {}, timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data: "):
                data = line[6:]
                events.append((time.monotonic() - start, data if data == "[DONE]" else
                               json.loads(data)))
    return events


def reasoning(events) -> list[str]:
    return [e["choices"][0]["delta"]["reasoning_content"] for _, e in events
            if isinstance(e, dict) and e.get("choices")
            and e["choices"][0]["delta"].get("reasoning_content")]


def test_a_streaming_chat_hears_the_load_then_the_models_own_stream(daemon, fake_server):
    d = daemon({"llama_server": fake_server, "loading_feedback": True},
               models={"a.gguf": slow_model(seconds=3)})
    events = raw_stream(d, "a")
    said = reasoning(events)
    assert said[0].startswith(("Working out", "Loading a"))  # answered before the load ended
    assert events[0][0] < 1.5
    loading = [line for line in said if line.startswith("Loading a: ")]
    percents = [int(line.split(": ")[1].split(" %")[0]) for line in loading]
    assert len(percents) >= 3 and percents == sorted(percents) and percents[-1] < 100
    assert said[-1].startswith("a is ready (") and " s)" in said[-1]
    # No more than a few narration chunks a second.
    times = [t for t, e in events if isinstance(e, dict) and e.get("id", "").startswith(
        "chatcmpl-llmd-")]
    assert all(b - a >= 0.45 for a, b in zip(times[:-2], times[1:-1]))
    # Then the model's own chunks, to the end.
    assert events[-1][1] == "[DONE]"
    assert any(e.get("choices") and e["choices"][0]["delta"].get("content")
               for _, e in events if isinstance(e, dict))


def test_feedback_is_off_by_default_per_model_and_by_header(daemon, fake_server):
    d = daemon({"llama_server": fake_server,
                "models": {"quiet": {"path": "q.gguf", "loading_feedback": False},
                           "chatty": {"path": "c.gguf", "loading_feedback": True}}},
               models={"q.gguf": slow_model(1, 0.5), "c.gguf": slow_model(1, 0.5),
                       "plain.gguf": slow_model(1, 0.5)})
    assert reasoning(raw_stream(d, "plain")) == []  # default: off
    assert reasoning(raw_stream(d, "quiet")) == []
    assert reasoning(raw_stream(d, "chatty", {"x-llmd-loading-feedback": "off"})) == []
    d.llmctl("unload", "chatty")
    assert reasoning(raw_stream(d, "chatty"))
    d.llmctl("unload", "plain")
    assert reasoning(raw_stream(d, "plain", {"X-Llmd-Loading-Feedback": "on"}))
    # A loaded model: nothing to narrate.
    assert reasoning(raw_stream(d, "chatty")) == []
    # Non-streaming requests are unchanged.
    d.llmctl("unload", "chatty")
    body = d.http.post("/v1/chat/completions", json={"model": "chatty", **CHAT,
                                                     "stream": False}, timeout=60)
    assert body.status_code == 200 and body.headers["content-type"].startswith(
        "application/json")


def test_a_load_that_fails_ends_the_stream_with_the_error_event(daemon, fake_server):
    d = daemon({"llama_server": fake_server, "loading_feedback": True},
               models={"bad.gguf": json.dumps({"exit_on_load": 3, "load_delay": 0.5})})
    events = raw_stream(d, "bad")
    assert reasoning(events)
    error = events[-1][1]["error"]
    assert error["code"] == 503 and "exited with code 3" in error["message"]


@pytest.mark.real
def test_the_openai_client_parses_every_chunk_of_a_narrated_real_load(daemon, llama_server,
                                                                      gemma):
    d = daemon(gemma_config(llama_server, loading_feedback=True),
               models={"gemma.gguf": gemma})
    client = openai.OpenAI(base_url=d.url + "/v1", api_key="none", max_retries=0)
    chunks = list(client.chat.completions.create(model="gemma", stream=True, max_tokens=16,
                                                 messages=[{"role": "user",
                                                            "content": "Say hi."}]))
    thought = "".join(getattr(c.choices[0].delta, "reasoning_content", None) or ""
                      for c in chunks if c.choices)
    answer = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "Loading gemma" in thought and "gemma is ready (" in thought
    assert answer.strip()


@pytest.mark.real
def test_a_messages_stream_gets_the_wait_as_a_thinking_block_first(daemon, llama_server, gemma):
    d = daemon(gemma_config(llama_server, loading_feedback=True),
               models={"gemma.gguf": gemma})
    events = []
    body = {"model": "gemma", "stream": True, "max_tokens": 16,
            "messages": [{"role": "user", "content": "Say hi."}]}
    with httpx.stream("POST", d.url + "/v1/messages", json=body, timeout=60) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
    kinds = [e["type"] for e in events]
    assert kinds[:2] == ["message_start", "content_block_start"] and kinds.count(
        "message_start") == 1
    assert events[1]["content_block"]["type"] == "thinking"
    thought = "".join(e["delta"]["thinking"] for e in events
                      if e["type"] == "content_block_delta" and e["index"] == 0)
    assert "gemma is ready (" in thought
    text = "".join(e["delta"].get("text", "") for e in events
                   if e["type"] == "content_block_delta" and e["index"] == 1)
    assert text.strip() and kinds[-1] == "message_stop"


def test_a_download_is_narrated_with_its_percentage_before_the_load(daemon, fake_server,
                                                                     tmp_path):
    hub = FakeHub()
    try:
        model = slow_model(2, 0.5).encode()
        hub.add("acme/slow-GGUF", {"slow-Q4_K_M.gguf": model}, delay=0.05)
        d = daemon({"llama_server": fake_server, "loading_feedback": True,
                    "hf_endpoint": hub.url, "cache_dir": str(tmp_path / "cache"),
                    "models": {"s": {"hf": "acme/slow-GGUF:Q4_K_M"}}})
        said = reasoning(raw_stream(d, "s"))
    finally:
        hub.close()
    downloads = [line for line in said if line.startswith("Downloading s: ")]
    percents = [int(line.split(": ")[1].split(" %")[0]) for line in downloads]
    assert len(percents) >= 2 and percents == sorted(percents)
    assert "MiB/s" in downloads[-1]
    assert said.index(downloads[-1]) < max(i for i, line in enumerate(said)
                                           if line.startswith(("Loading s", "s is ready")))


@pytest.mark.real
def test_the_anthropic_client_reads_the_wait_as_thinking_then_the_answer(daemon, llama_server,
                                                                       gemma):
    d = daemon(gemma_config(llama_server, loading_feedback=True),
               models={"gemma.gguf": gemma})
    client = anthropic.Anthropic(base_url=d.url, api_key="none", max_retries=0)
    with client.messages.stream(model="gemma", max_tokens=16,
                                messages=[{"role": "user", "content": "Say hi."}]) as stream:
        message = stream.get_final_message()
    thinking, text = message.content[0], message.content[1]
    assert thinking.type == "thinking" and "gemma is ready (" in thinking.thinking
    assert text.type == "text" and text.text.strip()
