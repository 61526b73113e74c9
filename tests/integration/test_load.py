"""200 clients over 3 models with room for 2: nothing lost, nothing hung, nothing leaked.

Starts: llmd (subprocess) with real llama-server children on three generated models.
bench/soak.py runs the same load for ten minutes.
"""

from __future__ import annotations

import signal
import time

import pytest
import trio

from tests import load
from tests.fakes import tiny_gguf
from tests.helpers import pid_alive, wait_until

pytestmark = pytest.mark.real
MODELS = ["red", "green", "blue"]


def test_200_clients_over_3_models_with_models_max_2(daemon, llama_server, tmp_path):
    files = {f"{m}.gguf": tiny_gguf.write(tmp_path / f"{m}.gguf", layers=2, width=128, seed=i)
             for i, m in enumerate(MODELS)}
    d = daemon({"llama_server": llama_server, "models_max": 2, "drain_timeout": 30,
                "args": ["--ctx-size", "2048", "--threads", "2", "--parallel", "8"]},
               models=files)
    for m in MODELS:  # warm up every model once: the baseline is a daemon that has worked
        assert d.http.post("/v1/completions", json={"model": m, "prompt": "a",
                                                    "max_tokens": 1}).status_code == 200
    baseline = load.rss_mib(d.proc.pid)
    start = time.monotonic()
    tally = trio.run(lambda: _bounded(d.url, d.proc.pid))
    assert tally.problems == [], tally.problems[:10]
    assert tally.requests == 400 and tally.outcomes["ok"] + tally.outcomes["ok stream"] > 0
    assert time.monotonic() - start < 240  # bounded: no deadlock
    assert tally.most_children <= 2  # never more children than models_max
    assert d.http.get("/health").status_code == 200
    # Memory comes back: what 200 connections and their buffers took is returned.
    wait_until(lambda: load.rss_mib(d.proc.pid) < baseline + 40, 20,
               f"llmd RSS back near its baseline of {baseline:.0f} MiB")
    children = load.children_of(d.proc.pid)
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(60) == 0
    assert children and not any(pid_alive(p) for p in children)  # no orphans


async def _bounded(url: str, pid: int) -> load.Tally:
    with trio.fail_after(240):
        return await load.run(url, MODELS, clients=200, per_client=2, llmd_pid=pid)
