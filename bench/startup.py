"""Scenarios 4 and 6, llmd's own part: socket-activated start and readiness detection."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import tomli_w

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.helpers import free_port  # noqa: E402


def activated_start(tmp: Path, models: Path) -> list[float]:
    """Scenario 6: socket-activated llmd, from the first connection to the first answer."""
    tool = shutil.which("systemd-socket-activate")
    if not tool:
        return []
    times = []
    for _ in range(3):
        port = free_port()
        config = tmp / f"act-{port}.toml"
        config.write_text(tomli_w.dumps({"control_socket": str(tmp / f"act-{port}.sock"),
                                         "models_dir": str(models), "memory_margin_mib": 0}))
        proc = subprocess.Popen([tool, "-l", f"127.0.0.1:{port}", "--fdname=http",
                                 sys.executable, "-m", "llmd", "--config", str(config),
                                 "--log-level", "warning"], stderr=subprocess.DEVNULL)
        time.sleep(0.3)
        start = time.perf_counter()
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=30).raise_for_status()
        times.append(time.perf_counter() - start)
        proc.terminate()
        proc.wait(30)
    return times


def readiness_delay(socket: str, model: str) -> float:
    """Load `model` through the control socket: how long after its child first answered
    /health 200 llmd's load call returned; negative when llmd saw it before the probe did."""
    child_ready: list[float] = []

    def watch() -> None:
        with httpx.Client(transport=httpx.HTTPTransport(uds=socket), base_url="http://llmd",
                          timeout=10) as control, httpx.Client(timeout=1) as probe:
            port = None
            deadline = time.monotonic() + 120
            while port is None and time.monotonic() < deadline:
                found = [m for m in control.get("/ps").json()["models"] if m["id"] == model]
                port = found[0].get("port") if found else None
            while time.monotonic() < deadline:
                try:
                    if probe.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                        child_ready.append(time.perf_counter())
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.001)

    watcher = threading.Thread(target=watch)
    watcher.start()
    with httpx.Client(transport=httpx.HTTPTransport(uds=socket), base_url="http://llmd",
                      timeout=120) as control:
        control.post("/load", json={"model": model, "wait": True}).raise_for_status()
    done = time.perf_counter()
    watcher.join()
    return done - child_ready[0] if child_ready else float("nan")
