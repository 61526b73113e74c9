"""Does an open status page slow llmd under load? The same load with pages open and without.

The load of tests/integration/test_load.py (200 clients, 2 requests each, over three
generated models with models_max=2, real llama-server children), run in rounds that
alternate: no page, then N headless Chromium pages open on `/` (each with its event
stream and its 2-second read). Reported per round: wall time of the load, llmd's own CPU
seconds, and requests per second; then the medians and their ratio.

Run alone: .venv/bin/python bench/page.py [ROUNDS] [PAGES]      (default 3 rounds, 2 pages)
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import trio
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from soak import MODELS, start_llmd  # noqa: E402
from tests import load  # noqa: E402


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def browser() -> webdriver.Chrome:
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    return webdriver.Chrome(options=options,
                            service=Service(shutil.which("chromedriver") or "chromedriver"))


def one_load(url: str, pid: int) -> tuple[float, float, int]:
    cpu, start = cpu_seconds(pid), time.monotonic()
    tally = trio.run(lambda: load.run(url, MODELS, clients=200, per_client=2, llmd_pid=pid))
    if tally.problems:
        raise SystemExit(f"the load went wrong: {tally.problems[:5]}")
    return time.monotonic() - start, cpu_seconds(pid) - cpu, tally.requests


def main(rounds: int, pages: int) -> None:
    proc, url = start_llmd(Path(tempfile.mkdtemp(prefix="llmd-page-")))
    results: dict[str, list[tuple[float, float, int]]] = {"without": [], "with": []}
    try:
        for _ in range(rounds):
            results["without"].append(one_load(url, proc.pid))
            open_pages = [browser() for _ in range(pages)]
            try:
                for page in open_pages:
                    page.get(url + "/")
                time.sleep(3)  # the pages have read the list and follow the stream
                results["with"].append(one_load(url, proc.pid))
            finally:
                for page in open_pages:
                    page.quit()
    finally:
        proc.terminate()
        proc.wait(60)
    print(f"| round | without: s | CPU s | with {pages} pages: s | CPU s |")
    print("|---|---|---|---|---|")
    for i, (a, b) in enumerate(zip(results["without"], results["with"]), 1):
        print(f"| {i} | {a[0]:.2f} | {a[1]:.2f} | {b[0]:.2f} | {b[1]:.2f} |")
    wall = [statistics.median(r[0] for r in results[k]) for k in ("without", "with")]
    cpu = [statistics.median(r[1] for r in results[k]) for k in ("without", "with")]
    print(f"| median | {wall[0]:.2f} | {cpu[0]:.2f} | {wall[1]:.2f} | {cpu[1]:.2f} |")
    print(f"with/without: wall {wall[1] / wall[0]:.2f}, llmd CPU {cpu[1] / cpu[0]:.2f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3,
         int(sys.argv[2]) if len(sys.argv) > 2 else 2)
