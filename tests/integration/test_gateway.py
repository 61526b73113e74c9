"""Several llmd hosts behind a gateway: fast refusals, honest signals, LiteLLM's Router.

LiteLLM fetches a model price list from the internet at import unless told not to: the
environment variable below keeps every test on loopback.
"""

from __future__ import annotations

import json
import os
import threading
import time

import httpx
import pytest

from tests.helpers import wait_until

os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
import litellm  # noqa: E402  (a test dependency; imported once the variable is set)


def fake(**behaviour) -> str:
    return json.dumps(behaviour)


def stream_in_background(url: str, model: str, tokens: int = 400) -> threading.Thread:
    """A long streaming request that holds one of the model's slots meanwhile."""
    def run() -> None:
        with httpx.stream("POST", url + "/v1/chat/completions", timeout=120, json={
                "model": model, "stream": True, "max_tokens": tokens,
                "messages": [{"role": "user", "content": "go on"}]}) as response:
            for _ in response.iter_lines():
                pass
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def busy(d, model: str) -> None:
    wait_until(lambda: d.models()[model]["leases"] >= 1, 20, f"{model} busy")


def chat(d, model: str, **headers) -> httpx.Response:
    return d.http.post("/v1/chat/completions", headers=headers, json={
        "model": model, "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]})


def test_a_full_queue_is_refused_at_once_with_429_and_retry_after(daemon, fake_server):
    d = daemon({"llama_server": fake_server, "max_queue": 0},
               models={"s.gguf": fake(slots=1, token_delay=0.02)})
    assert chat(d, "s").status_code == 200  # loaded, its one slot free
    held = stream_in_background(d.url, "s")
    busy(d, "s")
    started = time.monotonic()
    refused = chat(d, "s")
    assert time.monotonic() - started < 2
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
    error = refused.json()["error"]
    assert error["type"] == "rate_limit_error" and "max_queue" in error["message"]
    held.join(30)
    assert chat(d, "s").status_code == 200  # the slot is free again


def test_max_queue_counts_what_waits_beyond_the_childs_slots(daemon, fake_server):
    d = daemon({"llama_server": fake_server, "models": {"s": {"path": "s.gguf",
                                                             "max_queue": 1}}},
               models={"s.gguf": fake(slots=1, token_delay=0.02)})
    assert chat(d, "s").status_code == 200
    first = stream_in_background(d.url, "s")
    busy(d, "s")
    second = stream_in_background(d.url, "s")  # waits in the child: the queue's one place
    wait_until(lambda: d.models()["s"]["leases"] >= 2, 20, "a second request queued")
    assert chat(d, "s").status_code == 429
    metrics = d.http.get("/metrics").text
    assert 'llmd_model_requests_waiting{model="s"} 1' in metrics
    assert 'llmd_child_requests_waiting{model="s"} 1' in metrics
    assert 'llmd_child_requests_running{model="s"} 1' in metrics
    assert 'llmd_child_kv_cache_usage_ratio{model="s"} 0.15' in metrics
    assert 'llmd_model_slots{model="s"} 1' in metrics
    first.join(60)
    second.join(60)


def test_a_request_that_would_wait_for_a_drain_past_its_bound_gets_503_at_once(daemon,
                                                                               fake_server):
    d = daemon({"llama_server": fake_server, "models_max": 1},
               models={"busy.gguf": fake(token_delay=0.02), "y.gguf": fake()})
    assert chat(d, "busy").status_code == 200
    held = stream_in_background(d.url, "busy", tokens=500)  # ~10 s
    busy(d, "busy")
    time.sleep(1.5)  # it has run a while: llmd guesses it runs as long again
    started = time.monotonic()
    refused = chat(d, "y", **{"X-Llmd-Max-Wait": "0.5"})
    assert time.monotonic() - started < 1.5
    assert refused.status_code == 503 and int(refused.headers["retry-after"]) >= 1
    assert "busy must finish its requests first" in refused.json()["error"]["message"]
    ollama = d.http.post("/api/chat", headers={"X-Llmd-Max-Wait": "0.5"}, json={
        "model": "y", "messages": [{"role": "user", "content": "hi"}]})
    assert ollama.status_code == 503 and "busy must finish" in ollama.json()["error"]
    # The load it started is cancelled (nobody waits for it), so busy serves on.
    wait_until(lambda: d.models()["busy"]["state"] == "loaded", 5, "busy undrained")
    assert d.models()["y"]["state"] == "unloaded"
    assert chat(d, "y", **{"X-Llmd-Max-Wait": "nonsense"}).status_code == 400
    held.join(60)
    assert chat(d, "y").status_code == 200  # no bound: it waits, as on one host


def test_scraping_metrics_loads_nothing(daemon, fake_server):
    d = daemon({"llama_server": fake_server}, models={"a.gguf": fake()})
    text = d.http.get("/metrics").text
    assert "llmd_child_requests_running{" not in text
    assert d.models()["a"]["state"] == "unloaded"


def _router(deployments: list[tuple[str, str, str]], **settings):
    """LiteLLM's Router over (model group, llmd model, llmd host) deployments."""
    return litellm.Router(model_list=[
        {"model_name": group, "litellm_params": {
            "model": f"openai/{model}", "api_base": base + "/v1", "api_key": "none"}}
        for group, model, base in deployments], **settings)


def _served_by(router, group: str, **kw) -> str:
    response = router.completion(model=group, max_tokens=2,
                                 messages=[{"role": "user", "content": "hi"}], **kw)
    return response._hidden_params["api_base"]


def test_litellms_router_routes_fails_over_and_routes_around_a_stopped_host(daemon,
                                                                           fake_server):
    a = daemon({"llama_server": fake_server, "max_queue": 0},
               models={"shared.gguf": fake(slots=1, token_delay=0.02), "only-a.gguf": fake()})
    b = daemon({"llama_server": fake_server},
               models={"shared.gguf": fake(slots=1), "only-b.gguf": fake()})
    router = _router([("only-a", "only-a", a.url), ("only-b", "only-b", b.url),
                      ("shared", "shared", a.url), ("shared", "shared", b.url),
                      ("shared-a", "shared", a.url), ("shared-b", "shared", b.url)],
                     num_retries=3, retry_after=0, allowed_fails=0, cooldown_time=30,
                     fallbacks=[{"shared-a": ["shared-b"]}])
    assert _served_by(router, "only-a") == a.url + "/v1"
    assert _served_by(router, "only-b") == b.url + "/v1"
    assert {_served_by(router, "shared") for _ in range(16)} == {a.url + "/v1",
                                                                  b.url + "/v1"}
    # A's one slot busy and max_queue 0: A says 429 at once, LiteLLM falls back to B.
    held = stream_in_background(a.url, "shared")
    busy(a, "shared")
    assert _served_by(router, "shared-a") == b.url + "/v1"
    assert 'code="429"' in a.http.get("/metrics").text
    held.join(60)
    # A stopped: requests for the shared model are routed around it.
    a.stop()
    assert {_served_by(router, "shared") for _ in range(6)} == {b.url + "/v1"}


@pytest.mark.real
def test_a_real_childs_queue_running_and_kv_figures_reach_llmds_metrics(daemon, llama_server,
                                                                       gemma):
    d = daemon({"llama_server": llama_server,
                "args": ["--ctx-size", "1024", "--threads", "2", "--parallel", "2"]},
               models={"gemma.gguf": gemma})
    assert chat(d, "gemma").status_code == 200
    lines = d.http.get("/metrics").text.splitlines()
    for metric in ("llmd_child_requests_waiting", "llmd_child_requests_running",
                   "llmd_child_kv_cache_usage_ratio"):
        (line,) = [x for x in lines if x.startswith(f'{metric}{{model="gemma"}} ')]
        assert 0 <= float(line.split()[1]) <= 1, line  # idle now: nothing queued or held
    assert 'llmd_model_slots{model="gemma"} 2' in lines
