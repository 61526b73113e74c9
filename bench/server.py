"""Old and new llmd side by side, for a change to the server layer (issue 20).

Two llmd daemons from two source trees (`--old` and `--new`, each a checkout of llmd)
serve the same Gemma file; they take turns window by window:
- /tokenize, 32 clients back to back: requests per second, p50 and p99;
- sequential /tokenize p50;
- llmd's own CPU per request (utime + stime of the llmd process over the windows).

Run alone: .venv/bin/python bench/server.py --old ../wt-old --new .
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import tomli_w

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from run import Target, concurrent  # noqa: E402
from llmd.config import resolve_llama_server  # noqa: E402
from tests.helpers import free_port, gemma_file, healthy, wait_until  # noqa: E402

ARGS = ["--ctx-size", "1024", "--threads", "2", "--parallel", "4"]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start(name: str, tree: Path, server: str, models: Path, tmp: Path) -> Target:
    port = free_port()
    config = tmp / f"{name}.toml"
    config.write_text(tomli_w.dumps({
        "listen": f"127.0.0.1:{port}", "control_socket": str(tmp / f"{name}.sock"),
        "models_dir": str(models), "llama_server": server, "args": ARGS,
        "state_dir": str(tmp / f"state-{name}")}))
    env = {**os.environ, "PYTHONPATH": str(tree.resolve())}
    proc = subprocess.Popen([sys.executable, "-m", "llmd", "--config", str(config),
                             "--log-level", "warning"], env=env, cwd=tree,
                            stderr=subprocess.DEVNULL)
    t = Target(name, f"http://127.0.0.1:{port}", "gemma", [proc])
    wait_until(lambda: healthy(t.url), 60, name)
    httpx.post(t.url + "/tokenize", json={"model": "gemma", "content": "warm"}, timeout=120)
    return t


def sequential_tokenize(t: Target, n: int = 50) -> list[float]:
    times = []
    with httpx.Client(base_url=t.url, timeout=60) as c:
        for _ in range(n):
            s = time.perf_counter()
            c.post("/tokenize", json={"model": "gemma", "content": "hello there"})
            times.append(time.perf_counter() - s)
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--old", type=Path, required=True)
    parser.add_argument("--new", type=Path, required=True)
    parser.add_argument("--windows", type=int, default=8)
    args = parser.parse_args()
    server = resolve_llama_server("", {"PATH": ""})
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        models = tmp / "models"
        models.mkdir()
        (models / "gemma.gguf").symlink_to(gemma_file())
        targets = [start("old", args.old, server, models, tmp),
                   start("new", args.new, server, models, tmp)]
        results: dict[str, dict[str, list[float]]] = {
            t.name: {"rate": [], "p50": [], "p99": [], "seq": [], "cpu_ms": []} for t in targets}
        try:
            for i in range(args.windows):
                for t in targets[i % 2:] + targets[:i % 2]:
                    pid = t.procs[0].pid
                    before = cpu_seconds(pid)
                    rate, lat = concurrent(t, 32, 2.0)
                    seq = sequential_tokenize(t)
                    cpu = cpu_seconds(pid) - before
                    r = results[t.name]
                    r["rate"].append(rate)
                    lat.sort()
                    r["p50"].append(1000 * statistics.median(lat))
                    r["p99"].append(1000 * lat[int(0.99 * len(lat))])
                    r["seq"].append(1000 * statistics.median(seq))
                    r["cpu_ms"].append(1000 * cpu / (len(lat) + len(seq)))
        finally:
            for t in targets:
                t.stop()
    print("| figure (median of windows) | old | new | new/old |")
    print("|---|---|---|---|")
    for key, label in (("rate", "/tokenize, 32 clients: requests/s"),
                       ("p50", "/tokenize, 32 clients: p50 (ms)"),
                       ("p99", "/tokenize, 32 clients: p99 (ms)"),
                       ("seq", "sequential /tokenize p50 (ms)"),
                       ("cpu_ms", "llmd CPU per request (ms, approx.)")):
        old = statistics.median(results["old"][key])
        new = statistics.median(results["new"][key])
        print(f"| {label} | {old:.2f} | {new:.2f} | {new / old:.2f} |")


if __name__ == "__main__":
    main()
