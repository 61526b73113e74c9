"""Model switches side by side: llmd against llama.cpp's router (and direct llama-server),
same llama-server build, same Gemma 3 270M file (issue 25).

1. Swap storm, models_max = 1: two models (two names for the Gemma file), 3 clients each,
   10 requests per client. Before it, each server has served one request to each model
   and unloaded them (run.warm_up): the storm starts from nothing loaded, with llmd's
   estimates made (it keeps them on disk across restarts), as on a server that has
   served these models before. Once with a cheap load (mmap) and once with an expensive one
   (--load-mode dio, this build's direct I/O: every load reads the whole file from disk;
   it has no --no-mmap). Total time, loads, failures.
2. Swap-back: a ~2,000-token prompt to model A, a request to B (A is evicted), then the
   same prompt to A again. The prompt processing the child did (timings.prompt_n,
   prompt_ms, cache_n) and the time to the first streamed token including the load, for
   llmd with keep_prompt_cache, llmd without, and the router; and, as the reference, the
   same request to a model that was never evicted (direct llama-server, second time).

Run alone: .venv/bin/python bench/swap.py      (a few minutes on 2 cores)
"""

from __future__ import annotations

import json
import os
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

from llmd.config import resolve_llama_server  # noqa: E402
import run  # noqa: E402
from run import Target, start_direct, start_router, storm, warm_up  # noqa: E402
from tests.helpers import free_port, gemma_file, healthy, wait_until  # noqa: E402

ARGS = ["--ctx-size", "4096", "--threads", "2", "--parallel", "1"]
LONG = " ".join(f"line {i}: the quick brown fox jumps over the lazy dog." for i in range(130))
MESSAGES = [{"role": "user", "content": LONG + " Summarise."}]


def start_llmd(server: str, models: Path, tmp: Path, args: list[str], keep: bool = True
               ) -> Target:
    port = free_port()
    config = tmp / f"llmd-{port}.toml"
    config.write_text(tomli_w.dumps({
        "listen": f"127.0.0.1:{port}", "control_socket": str(tmp / f"llmd-{port}.sock"),
        "models_dir": str(models), "llama_server": server, "args": args, "models_max": 1,
        "state_dir": str(tmp / "state"), "cache_dir": str(tmp / f"cache-{port}"),
        # Gemma 3 is a sliding-window model: its prompt cache is kept only when asked.
        "models": {m: {"path": f"{m}.gguf", "keep_prompt_cache": keep} for m in ("a", "b")},
        }))
    proc = subprocess.Popen([sys.executable, "-m", "llmd", "--config", str(config),
                             "--log-level", "warning"], stderr=subprocess.DEVNULL)
    t = Target("llmd", f"http://127.0.0.1:{port}", "a", [proc])
    wait_until(lambda: healthy(t.url), 60, "llmd")
    return t


def models_dir(tmp: Path, name: str) -> Path:
    folder = tmp / name
    folder.mkdir()
    for model in ("a", "b"):
        (folder / f"{model}.gguf").symlink_to(gemma_file())
    return folder


def ask(url: str, model: str) -> tuple[dict, float]:
    """The child's timings and the time to the first streamed token, for the long prompt."""
    start = time.perf_counter()
    first = None
    timings: dict = {}
    with httpx.stream("POST", url + "/v1/chat/completions", timeout=300, json={
            "model": model, "stream": True, "max_tokens": 4, "messages": MESSAGES,
            "stream_options": {"include_usage": True}}) as r:
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            data = json.loads(line[6:])
            if first is None and data.get("choices") and data["choices"][0]["delta"].get(
                    "content"):
                first = time.perf_counter() - start
            timings = data.get("timings") or timings
    return timings, first if first is not None else time.perf_counter() - start


def swap_back(target: Target) -> tuple[dict, float]:
    ask(target.url, "a")  # A processes the prompt
    target.http.post("/completion", json={"model": "b", "prompt": "hi", "n_predict": 2})
    return ask(target.url, "a")  # A again, after B evicted it


def main() -> None:
    server = resolve_llama_server("", os.environ)
    tmp = Path(tempfile.mkdtemp(prefix="llmd-swap-"))
    rows = []
    for label, args in (("mmap (cheap load)", ARGS),
                        ("--load-mode dio (every load reads the file)",
                         [*ARGS, "--load-mode", "dio"])):
        models = models_dir(tmp, f"storm-{len(rows)}")
        run.ARGS = args  # the router and direct llama-server take the same arguments
        for make in (lambda: start_router(server, models, 1),
                     lambda: start_llmd(server, models, tmp, args)):
            target = make()
            warm_up(target, ("a", "b"))
            seconds, loads, failed = storm(target, ("a", "b"))
            rows.append((label, target.name, seconds, loads, failed))
            target.stop()
    print("| swap storm | server | total s | loads | failed |")
    print("|---|---|---|---|---|")
    for label, name, seconds, loads, failed in rows:
        print(f"| {label} | {name} | {seconds:.1f} | {loads} | {failed} |")

    run.ARGS = ARGS
    back = []
    models = models_dir(tmp, "back")
    direct = start_direct(server, gemma_file())
    ask(direct.url, "gemma")
    back.append(("never evicted (direct, second time)", *ask(direct.url, "gemma")))
    direct.stop()
    for name, make in (
            ("llmd, keep_prompt_cache", lambda: start_llmd(server, models, tmp, ARGS)),
            ("llmd, without", lambda: start_llmd(server, models, tmp, ARGS, keep=False)),
            ("router", lambda: start_router(server, models, 1))):
        target = make()
        back.append((name, *swap_back(target)))
        target.stop()
    print()
    print("| swap-back | prompt_n | cache_n | prompt_ms | first token incl. load, s |")
    print("|---|---|---|---|---|")
    for name, timings, first in back:
        print(f"| {name} | {timings.get('prompt_n')} | {timings.get('cache_n')} | "
              f"{timings.get('prompt_ms', 0):.1f} | {first:.2f} |")


if __name__ == "__main__":
    main()
