"""The memory books on this machine, as a user would see them: real Gemma children from
separate files, another program holding memory beside them, long prompts filling the
prompt cache, and a llama-server without llama-fit-params.

Starts: llmd (subprocess), real llama-server children, llama-fit-params, a memory hog
(a Python subprocess), and the fake llama-server for a child that hangs or crashes.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from llmd.memory.estimate import find_fit_params, parse_fit_output
from llmd.memory.devices import process_host_use
from tests.helpers import FAKE_SERVER, host_free_beside_llmd

pytestmark = pytest.mark.real
ARGS = ["--ctx-size", "1024", "--threads", "2"]
CACHE_MIB = 64


def fit_estimate(llama_server: str, model: Path, args: list[str]) -> int:
    tool = find_fit_params(llama_server)
    assert tool, "llama-fit-params ships beside llama-server"
    out = subprocess.run([tool, "--fit-print", "on", "--model", str(model), *args],
                         capture_output=True, text=True, check=True).stdout
    return parse_fit_output(out)["host"]


class Hog:
    """Another program on the machine, holding (touched) memory it can grow on request."""

    SCRIPT = ("import sys\nheld = []\nfor line in sys.stdin:\n"
              "    block = bytearray(int(line) << 20)\n"
              "    for i in range(0, len(block), 4096):\n        block[i] = 1\n"
              "    held.append(block)\n    print('ok', flush=True)\n")

    def __init__(self, mib: int) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", self.SCRIPT], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        self.grow(mib)

    def grow(self, mib: int) -> None:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(f"{mib}\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "ok"

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


def servers(pid: int) -> list[int]:
    """The llama-server children of a process (not llama-fit-params, which llmd also runs)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            pids = (task / "children").read_text().split()
        except OSError:
            continue
        for child in pids:
            try:
                if Path(f"/proc/{child}/comm").read_text().strip() == "llama-server":
                    found.append(int(child))
            except OSError:
                pass  # gone already
    return found


def rss_mib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) // 1024
    except OSError:
        pass
    return 0


class Sampler:
    """Watches llmd's children every 10 ms: the most alive at once and their most RSS."""

    def __init__(self, llmd_pid: int) -> None:
        self.pid = llmd_pid
        self.most_alive = 0
        self.most_rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            alive = [p for p in servers(self.pid) if rss_mib(p)]
            self.most_alive = max(self.most_alive, len(alive))
            self.most_rss = max(self.most_rss, sum(rss_mib(p) for p in alive))

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


def test_three_models_share_the_room_the_margin_leaves_beside_another_program(
        daemon, llama_server, gemma, tmp_path):
    copies = {}
    for name in "abc":  # separate files: no page of one child is shared with another
        copies[name] = tmp_path / f"{name}.gguf"
        shutil.copyfile(gemma, copies[name])
    booking = fit_estimate(llama_server, copies["a"], ARGS) + CACHE_MIB
    hog = Hog(300)
    try:
        room = int(2.5 * booking)  # two children fit, a third doesn't
        margin = host_free_beside_llmd(daemon, llama_server) - room
        d = daemon({"llama_server": llama_server, "args": ARGS, "models_max": 0,
                    "min_residency": 0, "cache_ram_mib": CACHE_MIB,
                    "device_margins_mib": {"host": margin},
                    "models": {"huge": {"path": str(copies["a"]),
                                        "args": ["--cache-ram", "1000000"]}}},
                   models={f"{n}.gguf": p for n, p in copies.items()})
        with Sampler(d.proc.pid) as before:
            for name in "abcabcabc":
                assert d.chat(name).status_code == 200, name
        assert before.most_alive == 2 and before.most_rss <= 1.15 * room
        ps = {m["id"]: m for m in json.loads(d.llmctl("ps", "--json").stdout)}
        assert ps["c"]["memory"]["booked_mib"]["host"] == booking
        assert ps["c"]["memory"]["cache_ram_mib"] == CACHE_MIB

        # The other program grows by one child's booking: the next load sees it.
        hog.grow(booking)
        assert d.chat("a").status_code == 200
        with Sampler(d.proc.pid) as after:
            for name in "bcab":
                assert d.chat(name).status_code == 200, name
        assert after.most_alive == 1 and after.most_rss <= 1.15 * (room - booking)
        status = json.loads(d.llmctl("status", "--json").stdout)
        (host,) = [dev for dev in status["devices"] if dev["id"] == "host"]
        assert host["others_mib"] >= 300 + booking
        assert host["booked_mib"] == booking and host["growth_mib"] == CACHE_MIB
        assert "OTHERS" in d.llmctl("status").stdout

        # A model that can't fit even on an empty machine fails at once, evicting nothing.
        loaded = {n for n, m in d.models().items() if m["status"]["value"] == "loaded"}
        response = d.chat("huge")
        assert response.status_code == 507, response.text
        assert "needs" in response.json()["error"]["message"]
        assert {n for n, m in d.models().items() if m["status"]["value"] == "loaded"} == loaded
    finally:
        hog.stop()


def test_a_child_serving_many_distinct_long_prompts_stays_within_its_booking(
        daemon, llama_server, gemma):
    cache = 128
    d = daemon({"llama_server": llama_server, "cache_ram_mib": cache,
                "args": ["--ctx-size", "4096", "--parallel", "2", "--threads", "2"]},
               models={"g.gguf": gemma})
    assert d.chat("g").status_code == 200
    (ps,) = json.loads(d.llmctl("ps", "--json").stdout)
    booked, pid = ps["memory"]["booked_mib"]["host"], ps["pid"]
    assert ps["memory"]["cache_ram_mib"] == cache
    ready = process_host_use(pid)
    assert ready is not None
    words = "apple river stone cloud music garden window paper silver forest".split()
    used = [ready]
    for i in range(12):  # each ~2,000 tokens, each a new prompt state for the cache
        rnd = random.Random(i)
        prompt = f"Note {i}: " + " ".join(rnd.choice(words) for _ in range(1500))
        response = d.http.post("/completion", json={"model": "g", "prompt": prompt,
                                                    "n_predict": 2, "cache_prompt": True})
        assert response.status_code == 200
        used.append(process_host_use(pid) or 0)
    assert max(used) <= booked, (used, booked)
    # Unbounded, each prompt would add ~27 MiB (8 GiB by default). Bounded, the cache
    # adds at most `cache`, and long batches touch ~60 MiB more of the compute buffers.
    assert max(used) - ready <= cache + 100, used


@pytest.mark.parametrize("behaviour", [{"hang": True}, {"exit_on_load": 3}])
def test_without_llama_fit_params_a_failing_child_is_reported_within_load_timeout(
        daemon, gemma, tmp_path, behaviour):
    # A llama-server with no llama-fit-params beside it: the estimate comes from the
    # Gemma file's GGUF metadata. The child itself is the fake, hanging or crashing.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake_model = tmp_path / "fake.json"
    fake_model.write_text(json.dumps(behaviour))
    wrapper = bin_dir / "llama-server"
    wrapper.write_text(f'#!/bin/sh\nexec {sys.executable} {FAKE_SERVER} "$@" '
                       f'--model {fake_model}\n')
    wrapper.chmod(0o755)
    load_timeout = 3
    d = daemon({"llama_server": str(wrapper), "load_timeout": load_timeout,
                "state_dir": str(tmp_path / "state")}, models={"g.gguf": gemma})
    start = time.monotonic()
    response = d.chat("g")
    elapsed = time.monotonic() - start
    assert response.status_code == 503, response.text
    assert elapsed <= load_timeout + 1, elapsed
    (ps,) = json.loads(d.llmctl("ps", "--json").stdout)
    assert ps["memory"]["source"] == "gguf" and ps["memory"]["estimate_mib"]["host"] > 500
