"""The whole path with real parts: llmd, real llama-server children, the real Gemma model."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from tests.helpers import pid_alive, wait_until

pytestmark = pytest.mark.real

GEMMA_ARGS = ["--ctx-size", "1024", "--threads", "2", "--parallel", "2"]


def gemma_config(llama_server: str, **extra: object) -> dict:
    return {"llama_server": llama_server, "args": GEMMA_ARGS, **extra}


def test_chat_completion_through_the_router(daemon, llama_server, gemma):
    d = daemon(gemma_config(llama_server), models={"gemma.gguf": gemma})
    response = d.chat("gemma")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["choices"][0]["message"]["content"]
    assert body["model"] == "gemma"
    assert d.models()["gemma"]["status"]["value"] == "loaded"


def test_streaming_chunks_arrive_before_generation_ends(daemon, llama_server, gemma):
    d = daemon(gemma_config(llama_server), models={"gemma.gguf": gemma})
    d.llmctl("load", "gemma")
    body = {"model": "gemma", "stream": True, "max_tokens": 48,
            "messages": [{"role": "user", "content": "Count from one to twenty."}]}
    arrivals = []
    with d.http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data: "):
                arrivals.append((time.monotonic(), line[6:]))
    assert arrivals[-1][1] == "[DONE]"
    deltas = [json.loads(data) for _, data in arrivals[:-1]]
    assert len(deltas) >= 5
    # Chunks were relayed as generated, not buffered: they arrived spread out in time.
    assert arrivals[-1][0] - arrivals[0][0] > 0.02
    # llama-server closes the connection after a stream; llmd must not reuse it and retry.
    for _ in range(3):
        answer = d.http.post("/v1/completions",
                             json={"model": "gemma", "prompt": "Hi", "max_tokens": 2})
        assert answer.status_code == 200
    retries = [line for line in d.http.get("/metrics").text.splitlines()
               if line.startswith("llmd_upstream_retries_total ")]
    assert retries == ["llmd_upstream_retries_total 0"]


def test_llmctl_load_ps_and_unload(daemon, llama_server, gemma):
    d = daemon(gemma_config(llama_server), models={"gemma.gguf": gemma})
    loaded = d.llmctl("load", "gemma")
    assert "gemma: loaded" in loaded.stdout
    ps = json.loads(d.llmctl("ps", "--json").stdout)
    (entry,) = [m for m in ps if m["id"] == "gemma"]
    assert entry["state"] == "loaded" and pid_alive(entry["pid"]) and entry["port"]
    table = d.llmctl("ps").stdout
    assert "gemma" in table and "loaded" in table and "IN-FLIGHT" in table
    d.llmctl("unload", "gemma")
    assert d.models()["gemma"]["status"]["value"] == "unloaded"
    wait_until(lambda: not pid_alive(entry["pid"]), 10, "the child to exit")


def test_models_max_one_alternates_two_models(daemon, llama_server, gemma):
    d = daemon(gemma_config(llama_server, models_max=1),
               models={"first.gguf": gemma, "second.gguf": gemma})
    for name in ("first", "second", "first"):
        response = d.chat(name)
        assert response.status_code == 200, response.text
        states = {n: m["status"]["value"] for n, m in d.models().items()}
        assert states[name] == "loaded"
        assert list(states.values()).count("loaded") == 1


def test_broken_model_fails_while_good_one_serves(daemon, llama_server, gemma):
    d = daemon(gemma_config(llama_server),
               models={"good.gguf": gemma, "broken.gguf": b"GGUF" + os.urandom(4096)})
    assert d.chat("good").status_code == 200
    bad = d.chat("broken")
    assert bad.status_code == 503
    error = bad.json()["error"]
    assert error["type"] == "unavailable_error" and "broken" in error["message"]
    status = d.models()["broken"]["status"]
    assert status["value"] == "unloaded" and status["failed"] is True
    assert status["exit_code"] not in (0, None) and status["tail"]
    assert d.chat("good").status_code == 200


def test_sigkill_of_llmd_leaves_no_llama_server_and_the_next_start_is_clean(
        daemon, llama_server, gemma):
    d = daemon(gemma_config(llama_server), models={"gemma.gguf": gemma})
    d.llmctl("load", "gemma")
    pid = d.models()["gemma"]["pid"]
    assert pid_alive(pid)
    d.proc.send_signal(signal.SIGKILL)
    d.proc.wait()
    wait_until(lambda: not pid_alive(pid), 1, "llama-server to die within a second of llmd")
    assert os.path.exists(d.socket)  # left behind: nobody removed it
    d.start()  # replaces the stale control socket
    assert d.llmctl("ps").returncode == 0
    assert d.chat("gemma").status_code == 200


def test_failed_load_reports_through_llmctl(daemon, llama_server, tmp_path):
    d = daemon(gemma_config(llama_server), models={"junk.gguf": b"not a gguf at all"})
    result = d.llmctl("load", "junk", check=False)
    assert result.returncode == 1
    assert "junk" in result.stderr and "failed" in result.stderr
    assert "Traceback" not in result.stderr


def test_client_disconnect_cancels_generation_in_the_child(daemon, llama_server, gemma):
    d = daemon(gemma_config(llama_server), models={"gemma.gguf": gemma})
    d.llmctl("load", "gemma")
    # A stop of the request's own replaces the one llmd gives a GGUF without a chat
    # template (chat_template.py), which would end the story at its first "User:" line.
    body = {"model": "gemma", "stream": True, "max_tokens": 4000, "ignore_eos": True,
            "stop": ["<never seen>"],
            "messages": [{"role": "user", "content": "Write a very long story."}]}

    def busy_slots() -> int:
        slots = d.http.get("/slots", params={"model": "gemma"}).json()
        return sum(1 for s in slots if s.get("is_processing"))

    with d.http.stream("POST", "/v1/chat/completions", json=body) as response:
        for line in response.iter_lines():
            if line.startswith("data: "):
                break
        assert busy_slots() == 1
    # The client went away after one chunk; llama-server must stop generating for it.
    wait_until(lambda: busy_slots() == 0, 20, "the child's slot to go idle")
    assert d.models()["gemma"]["leases"] == 0
