"""Soak: the load of tests/integration/test_load.py, for ten minutes.

200 clients over three generated models with models_max=2, real llama-server children,
mixed streamed and plain completions. It writes bench/soak.md: requests by outcome,
anything that was neither a whole answer nor a documented 503, llmd's memory over the
run, and whether any child outlived llmd.

Run: .venv/bin/python bench/soak.py [SECONDS]      (default 600)
"""

from __future__ import annotations

import datetime
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import tomli_w
import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from llmd.config import resolve_llama_server  # noqa: E402
from tests import load  # noqa: E402
from tests.fakes import tiny_gguf  # noqa: E402
from tests.helpers import free_port, healthy, pid_alive, wait_until  # noqa: E402

MODELS = ["red", "green", "blue"]
CLIENTS = 200


def start_llmd(tmp: Path) -> tuple[subprocess.Popen[bytes], str]:
    """llmd on three generated models with room for two, as the load test runs it; its
    process and URL once it answers, each model warmed up once."""
    models = tmp / "models"
    models.mkdir()
    for i, name in enumerate(MODELS):
        tiny_gguf.write(models / f"{name}.gguf", layers=2, width=128, seed=i)
    port = free_port()
    config = tmp / "llmd.toml"
    config.write_text(tomli_w.dumps({
        "listen": f"127.0.0.1:{port}", "control_socket": str(tmp / "ctl.sock"),
        "models_dir": str(models), "llama_server": resolve_llama_server("", os.environ),
        "models_max": 2, "drain_timeout": 30, "state_dir": str(tmp / "state"),
        "args": ["--ctx-size", "2048", "--threads", "2", "--parallel", "8"]}))
    proc = subprocess.Popen([sys.executable, "-m", "llmd", "--config", str(config),
                             "--log-level", "warning"], stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: healthy(url), 60, "llmd")
        for m in MODELS:
            httpx.post(url + "/v1/completions", timeout=120,
                       json={"model": m, "prompt": "a", "max_tokens": 1}).raise_for_status()
    except BaseException:
        proc.kill()
        raise
    return proc, url


def main(seconds: float) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="llmd-soak-"))
    proc, url = start_llmd(tmp)
    try:
        baseline = load.rss_mib(proc.pid)
        start = time.monotonic()
        tally = trio.run(lambda: load.run(url, MODELS, clients=CLIENTS, seconds=seconds,
                                          llmd_pid=proc.pid))
        elapsed = time.monotonic() - start
        time.sleep(5)
        after = load.rss_mib(proc.pid)
        children = load.children_of(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(120)
    time.sleep(1)
    orphans = [p for p in children if pid_alive(p)]
    shutil.rmtree(tmp, ignore_errors=True)
    lines = [f"# llmd soak ({datetime.date.today()})", "",
             f"{CLIENTS} clients, models {', '.join(MODELS)} (generated), models_max=2, "
             f"{elapsed:.0f} s; real llama-server children.", "",
             "| measure | value |", "|---|---|",
             f"| requests | {tally.requests} ({tally.requests / elapsed:.1f}/s) |",
             *(f"| {k} | {v} |" for k, v in sorted(tally.outcomes.items())),
             f"| problems (neither a whole answer nor a 503 with Retry-After) | "
             f"{len(tally.problems)} |",
             f"| most llama-server children at once | {tally.most_children} |",
             f"| llmd RSS before / peak / 5 s after (MiB) | {baseline:.0f} / "
             f"{tally.peak_rss_mib:.0f} / {after:.0f} |",
             f"| llmd exit code on SIGTERM | {code} |",
             f"| children alive after llmd exited | {len(orphans)} |"]
    if tally.problems:
        lines += ["", "First problems:", "", *(f"- {p}" for p in tally.problems[:10])]
    text = "\n".join(lines) + "\n"
    print(text)
    (ROOT / "bench" / "soak.md").write_text(text)


if __name__ == "__main__":
    main(float(sys.argv[1]) if len(sys.argv) > 1 else 600)
