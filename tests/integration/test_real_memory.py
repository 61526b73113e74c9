"""Memory-based eviction with real llama-server children and generated GGUF models.

Starts: llmd (subprocess), real llama-server children, llama-fit-params (via llmd), and
three generated ~200 MB models. The host margin is set so that two fit and three don't.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from llmd.memory.estimate import find_fit_params, parse_fit_output
from llmd.memory.devices import parse_meminfo
from tests.fakes import tiny_gguf
from tests.helpers import host_free_beside_llmd

pytestmark = pytest.mark.real
ARGS = ["--ctx-size", "512", "--threads", "2"]


@pytest.fixture(scope="module")
def big_models(tmp_path_factory) -> list[Path]:
    base = tmp_path_factory.mktemp("big")
    return [tiny_gguf.write(base / f"{name}.gguf", layers=2, width=2048, ff=5504,
                            dtype=np.float16, seed=i) for i, name in enumerate("abc")]


def complete(d, model: str):
    return d.http.post("/completion", json={"model": model, "prompt": "hi", "n_predict": 2})


def test_two_models_fit_and_a_third_evicts_the_lru_one(daemon, llama_server, big_models):
    tool = find_fit_params(llama_server)
    assert tool, "llama-fit-params ships beside llama-server"
    out = subprocess.run([tool, "--fit-print", "on", "--model", str(big_models[0]), *ARGS],
                         capture_output=True, text=True).stdout
    need = parse_fit_output(out)["host"]
    # The margin leaves room for 2.5 models beside what the machine uses now.
    free = host_free_beside_llmd(daemon, llama_server)
    budget = int(2.5 * need)
    d = daemon({"llama_server": llama_server, "args": ARGS, "models_max": 0,
                "cache_ram_mib": 0, "device_margins_mib": {"host": free - budget}},
               models={p.name: p for p in big_models})
    assert complete(d, "a").status_code == 200
    assert complete(d, "b").status_code == 200
    states = {n: m["status"]["value"] for n, m in d.models().items()}
    assert states == {"a": "loaded", "b": "loaded", "c": "unloaded"}

    ps = {m["id"]: m for m in json.loads(d.llmctl("ps", "--json").stdout)}
    assert ps["a"]["memory"]["source"] == "llama-fit-params"
    assert ps["a"]["memory"]["estimate_mib"]["host"] == need
    assert ps["a"]["memory"]["measured_mib"]["host"] > 0

    assert complete(d, "c").status_code == 200
    states = {n: m["status"]["value"] for n, m in d.models().items()}
    assert states == {"a": "unloaded", "b": "loaded", "c": "loaded"}

    status = json.loads(d.llmctl("status", "--json").stdout)
    (host,) = [dev for dev in status["devices"] if dev["id"] == "host"]
    assert host["margin_mib"] == free - budget
    assert 0 < host["committed_mib"] <= budget
    assert "DEVICE" in d.llmctl("status").stdout


def test_a_model_that_cannot_fit_is_refused_with_507(daemon, llama_server, big_models):
    total, _ = parse_meminfo(Path("/proc/meminfo").read_text())
    d = daemon({"llama_server": llama_server, "args": ARGS,
                "device_margins_mib": {"host": total - 50}},
               models={"a.gguf": big_models[0]})
    response = complete(d, "a")
    assert response.status_code == 507
    message = response.json()["error"]["message"]
    assert "needs" in message and "MiB on host" in message


def test_a_child_admitted_on_llama_fit_params_estimate_skips_its_own_fit(
        daemon, llama_server, big_models):
    d = daemon({"llama_server": llama_server, "args": ARGS}, models={"a.gguf": big_models[0]})
    assert complete(d, "a").status_code == 200
    (ps,) = json.loads(d.llmctl("ps", "--json").stdout)
    assert ps["memory"]["source"] == "llama-fit-params"
    argv = Path(f"/proc/{ps['pid']}/cmdline").read_bytes().decode().split("\0")
    assert argv[argv.index("--fit") + 1] == "off"
    assert argv[argv.index("--cache-ram") + 1] == str(ps["memory"]["cache_ram_mib"])
    assert ps["status"]["args"] == argv[1:argv.index("--cache-ram") + 2]
