"""What llmd's memory books cost a load: reading every device and each child's add-back.

Before issue 18 an admission read /proc/meminfo (Devices.read). Now it also reads
/proc/PID/status for each running child (Devices.add_back). Both are timed here in one
run, with two real llama-server children (Gemma 3 270M) running.

Run: .venv/bin/python bench/books.py
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from llmd.config import resolve_llama_server  # noqa: E402
from llmd.memory.devices import Devices  # noqa: E402
from tests.helpers import free_port, gemma_file  # noqa: E402


def timed(fn, runs: int = 2000) -> tuple[float, float]:
    """Median and p99 in microseconds."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e6)
    times.sort()
    return statistics.median(times), times[int(0.99 * len(times))]


def main() -> None:
    server = resolve_llama_server("", {"PATH": ""})
    children = []
    for _ in range(2):
        port = free_port()
        children.append((subprocess.Popen(
            [server, "--model", str(gemma_file()), "--port", str(port), "--ctx-size", "1024"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), port))
    try:
        for proc, port in children:
            while True:
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
        devices = Devices(1024)
        devices.read()  # looks for GPUs once
        pids = [proc.pid for proc, _ in children]
        before = timed(devices.read)
        after = timed(lambda: (devices.read(), devices.add_back(pids)))
        print("| books read per admission, 2 children (µs) | before: meminfo only | "
              "after: meminfo + add-back |")
        print("|---|---|---|")
        print(f"| median | {before[0]:.0f} | {after[0]:.0f} |")
        print(f"| p99 | {before[1]:.0f} | {after[1]:.0f} |")
    finally:
        for proc, _ in children:
            proc.terminate()
            proc.wait()


if __name__ == "__main__":
    main()
