"""Scenario 7, scale: 1,000 slow streams held open through llmd, and a 2,000-model directory.

The streams come from the fake llama-server (a real one has a few slots), so what is
measured is llmd alone: its RSS and CPU while it relays every stream. The directory
holds 2,000 sparse GGUF files: the start-up scan and `GET /v1/models` are timed.

Run alone: .venv/bin/python bench/scale.py   (bench/run.py runs it too)
"""

from __future__ import annotations

import json
import os
import shutil
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

from llmd.models import catalog
from llmd import config  # noqa: E402
from tests import load  # noqa: E402
from tests.helpers import FAKE_SERVER, free_port, healthy, wait_until  # noqa: E402

STREAMS = 1000
TOKENS, TOKEN_DELAY = 12, 1.0  # each stream lasts ~12 s: one chunk a second per client
MODELS = 2000


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_llmd(tmp: Path, models: Path, server: str) -> tuple[subprocess.Popen, str, int]:
    port = free_port()
    config = tmp / f"scale-{port}.toml"
    config.write_text(tomli_w.dumps({
        "listen": f"127.0.0.1:{port}", "control_socket": str(tmp / f"scale-{port}.sock"),
        "models_dir": str(models), "llama_server": server, "state_dir": str(tmp / "state"),
        "memory_margin_mib": 0}))
    proc = subprocess.Popen([sys.executable, "-m", "llmd", "--config", str(config),
                             "--log-level", "warning"], stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: healthy(url), 60, "llmd")
    return proc, url, port


async def _hold_streams(port: int, started: list[float], finished: list[bool]) -> None:
    """STREAMS raw HTTP clients, each reading one slow stream to its end."""
    body = json.dumps({"model": "slow", "messages": [{"role": "user", "content": "hi"}],
                       "stream": True, "max_tokens": TOKENS}).encode()
    request = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: llmd\r\n"
               b"Content-Type: application/json\r\nConnection: close\r\n"
               b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)

    async def one() -> None:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(request)
            seen, first = b"", True
            while True:
                data = await stream.receive_some(65536)
                if not data:
                    break
                seen = (seen + data)[-64:]
                if first and b"data: " in data:
                    started.append(time.perf_counter())
                    first = False
            finished.append(b"[DONE]" in seen or b"0\r\n\r\n" in seen)

    async with trio.open_nursery() as nursery:
        for _ in range(STREAMS):
            nursery.start_soon(one)
            await trio.sleep(0.002)  # a ramp, not a SYN flood


def streams(tmp: Path) -> dict[str, list[float]]:
    """Hold STREAMS streams through llmd; its peak RSS, its CPU, and how many completed."""
    models = tmp / "slow-models"
    models.mkdir()
    (models / "slow.gguf").write_text(json.dumps({"token_delay": TOKEN_DELAY, "tokens": TOKENS}))
    proc, url, port = start_llmd(tmp, models, str(FAKE_SERVER))
    try:
        httpx.post(url + "/v1/chat/completions", timeout=60,  # load the model first
                   json={"model": "slow", "messages": [], "max_tokens": 1}).raise_for_status()
        base_rss = load.rss_mib(proc.pid)
        started: list[float] = []
        finished: list[bool] = []
        peak = [base_rss]
        cpu0, t0 = _cpu_seconds(proc.pid), time.perf_counter()

        async def run() -> None:
            with trio.fail_after(TOKENS * TOKEN_DELAY + 120):
                await hold()

        async def hold() -> None:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_hold_streams, port, started, finished)
                while len(finished) < STREAMS:
                    peak.append(load.rss_mib(proc.pid))
                    await trio.sleep(0.25)
                nursery.cancel_scope.cancel()

        trio.run(run)
        cpu = (_cpu_seconds(proc.pid) - cpu0) / (time.perf_counter() - t0)
        return {"streams_rss_mib": [max(peak)], "streams_base_rss_mib": [base_rss],
                "streams_cpu_pct": [cpu * 100], "streams_completed": [float(sum(finished))]}
    finally:
        proc.terminate()
        proc.wait(30)


def _sparse_gguf(path: Path, header: bytes, size: int) -> None:
    with open(path, "wb") as f:
        f.write(header)
        f.truncate(size)


def directory(tmp: Path) -> dict[str, list[float]]:
    """MODELS sparse GGUF files: llmd's scan time and GET /v1/models latency."""
    from tests.fakes import tiny_gguf

    models = tmp / "many"
    models.mkdir()
    header = tiny_gguf.write(tmp / "one.gguf", layers=1, width=16).read_bytes()
    for i in range(MODELS):
        _sparse_gguf(models / f"model-{i:04d}-Q4_K_M.gguf", header, 4 << 30)
    scans = []
    for _ in range(5):
        s = time.perf_counter()
        found = catalog.build(config.parse({"models_dir": str(models)}))
        scans.append(time.perf_counter() - s)
    assert len(found) == MODELS, len(found)
    proc, url, _ = start_llmd(tmp, models, str(FAKE_SERVER))
    try:
        latencies = []
        with httpx.Client(base_url=url, timeout=30) as c:
            for _ in range(20):
                s = time.perf_counter()
                r = c.get("/v1/models")
                latencies.append(time.perf_counter() - s)
                assert len(r.json()["data"]) == MODELS
        return {"scan_seconds": scans, "models_list_latency": latencies}
    finally:
        proc.terminate()
        proc.wait(30)


def run(tmp: Path) -> dict[str, list[float]]:
    """Both halves of scenario 7."""
    return {**streams(tmp), **directory(tmp)}


if __name__ == "__main__":
    where = Path(tempfile.mkdtemp(prefix="llmd-scale-"))
    try:
        for key, values in run(where).items():
            print(f"{key}: {sorted(values)[len(values) // 2]:.3f}")
    finally:
        shutil.rmtree(where, ignore_errors=True)
