"""Faults with real children: a child killed mid-stream, model files deleted or replaced.

Starts: llmd (subprocess), real llama-server children on the Gemma model and on small
generated GGUF models.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest
import tomli_w

from tests.fakes import tiny_gguf
from tests.helpers import pid_alive, wait_until

pytestmark = pytest.mark.real
ARGS = ["--ctx-size", "2048", "--threads", "2", "--parallel", "2"]


def stream(d, model: str, tokens: int, first: threading.Event,
           out: list[tuple[float, str]]) -> None:
    """Read one streamed completion into `out` as (arrival, data), setting `first` early."""
    body = {"model": model, "prompt": "Once upon a time", "max_tokens": tokens,
            "temperature": 0, "stream": True}
    with httpx.Client(base_url=d.url, timeout=120) as c:
        with c.stream("POST", "/v1/completions", json=body) as r:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    out.append((time.monotonic(), line[6:]))
                    first.set()
    first.set()


def test_child_killed_mid_stream_ends_that_stream_cleanly_and_others_go_on(
        daemon, llama_server, gemma, tmp_path):
    tiny = tiny_gguf.write(tmp_path / "tiny.gguf", layers=2, width=256)
    d = daemon({"llama_server": llama_server, "args": ARGS},
               models={"gemma.gguf": gemma, "tiny.gguf": tiny})
    d.llmctl("load", "tiny")
    other_first, victim_first = threading.Event(), threading.Event()
    other: list[tuple[float, str]] = []
    victim: list[tuple[float, str]] = []
    threads = [threading.Thread(target=stream, args=(d, "gemma", 300, other_first, other)),
               threading.Thread(target=stream, args=(d, "tiny", 4000, victim_first, victim))]
    threads[0].start()
    assert other_first.wait(60)
    threads[1].start()
    assert victim_first.wait(60)
    pid = d.models()["tiny"]["pid"]
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    for t in threads:
        t.join(120)
    # The victim's stream ends with an error event, not a silent cut or a hang.
    error = json.loads(victim[-1][1])["error"]
    assert error["code"] == 502 and "stopped" in error["message"]
    assert "[DONE]" not in [data for _, data in victim]
    # The other model's stream went on after the kill, to its end.
    assert other[-1][1] == "[DONE]" and not any('"error"' in data for _, data in other)
    assert other[-2][0] > killed
    wait_until(lambda: d.models()["tiny"]["state"] == "unloaded", 10, "tiny to be unloaded")
    assert d.models()["tiny"]["status"]["exit_code"] == -signal.SIGKILL
    # The next request loads it again.
    again = d.http.post("/v1/completions", json={"model": "tiny", "prompt": "Hi",
                                                 "max_tokens": 2})
    assert again.status_code == 200
    assert d.models()["tiny"]["pid"] not in (None, pid)


def test_model_file_replaced_or_deleted_while_loaded(daemon, llama_server, tmp_path):
    first = tiny_gguf.write(tmp_path / "first.gguf", layers=1, width=64, seed=1)
    second = tiny_gguf.write(tmp_path / "second.gguf", layers=1, width=64, seed=2)
    d = daemon({"llama_server": llama_server, "args": ARGS},
               models={"scanned.gguf": first.read_bytes()})
    listed = tmp_path / "listed.gguf"
    listed.write_bytes(first.read_bytes())
    config = {**d.config, "models": {"listed": {"path": str(listed)}}}
    d.config_path.write_text(tomli_w.dumps(config))
    d.llmctl("reload")
    scanned = Path(d.config["models_dir"]) / "scanned.gguf"

    def complete(model: str) -> int:
        return d.http.post("/v1/completions", json={"model": model, "prompt": "a",
                                                    "max_tokens": 2}).status_code

    assert complete("scanned") == 200 and complete("listed") == 200
    pids = {m: d.models()[m]["pid"] for m in ("scanned", "listed")}
    # Replaced under a running child: it keeps serving; a reload restarts it on the new file.
    os.replace(second, listed)
    assert complete("listed") == 200
    assert "changed: listed" in d.llmctl("reload").stdout
    wait_until(lambda: d.models()["listed"]["pid"] not in (None, pids["listed"]), 30,
               "listed to restart on its new file")
    assert not pid_alive(pids["listed"]) and complete("listed") == 200
    # Deleted under a running child: it keeps serving until a reload drops the model.
    scanned.unlink()
    assert complete("scanned") == 200
    assert "removed: scanned" in d.llmctl("reload").stdout
    wait_until(lambda: not pid_alive(pids["scanned"]), 10, "scanned's child to stop")
    # The model leaves the list once llmd has seen its child exit, a moment after.
    wait_until(lambda: "scanned" not in d.models(), 10, "scanned to leave the list")
    # A configured model whose file is gone fails with the reason; the rest serve on.
    listed.unlink()
    d.llmctl("reload")
    wait_until(lambda: d.models()["listed"]["state"] == "unloaded", 30, "listed to stop")
    assert complete("listed") == 503
    status = d.models()["listed"]["status"]
    assert status["failed"] and "does not exist" in status["reason"]
    assert d.http.get("/health").status_code == 200


def test_child_exiting_at_once_on_bad_args_fails_the_model_with_its_output(
        daemon, llama_server, tmp_path):
    model = tiny_gguf.write(tmp_path / "t.gguf")
    d = daemon({"llama_server": llama_server, "args": ARGS,
                "models": {"bad": {"path": str(model), "args": ["--no-such-flag"]}}},
               models={"good.gguf": model})
    response = d.http.post("/v1/completions", json={"model": "bad", "prompt": "a"})
    assert response.status_code == 503
    assert "bad" in response.json()["error"]["message"]
    status = d.models()["bad"]["status"]
    assert status["failed"] and status["exit_code"] not in (0, None)
    assert any("no-such-flag" in line for line in status["tail"])
    good = d.http.post("/v1/completions", json={"model": "good", "prompt": "a",
                                                "max_tokens": 2})
    assert good.status_code == 200
