"""systemd integration for real: systemd-socket-activate passes the listeners, and a
datagram socket in the test plays systemd's NOTIFY_SOCKET.

Starts: llmd (under systemd-socket-activate or directly), fake llama-server children.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import httpx
import pytest
import tomli_w

from llmd import systemd
from tests.helpers import FAKE_SERVER, free_port, pid_alive, wait_until

ACTIVATE = shutil.which("systemd-socket-activate")
needs_activate = pytest.mark.skipif(not ACTIVATE, reason="systemd-socket-activate not installed")


def write_config(tmp: Path, **extra) -> Path:
    (tmp / "models").mkdir(exist_ok=True)
    (tmp / "models" / "a.gguf").write_text(json.dumps({}))
    config = {"listen": f"127.0.0.1:{free_port()}", "control_socket": str(tmp / "ctl.sock"),
              "models_dir": str(tmp / "models"), "llama_server": str(FAKE_SERVER), **extra}
    path = tmp / "llmd.toml"
    path.write_text(tomli_w.dumps(config))
    return path


def llmd_cmd(config: Path) -> list[str]:
    return [sys.executable, "-m", "llmd", "--config", str(config)]


def stop(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(30)


@contextmanager
def activated(config: Path, ctl: str, *listeners: str) -> Iterator[None]:
    """llmd under systemd-socket-activate with `listeners` (its -l and --fdname
    arguments), once the control socket `ctl` is there; it must exit 0 when stopped."""
    proc = subprocess.Popen([ACTIVATE, *listeners, *llmd_cmd(config)])
    try:
        wait_until(lambda: os.path.exists(ctl), 10, "the activation socket")
        yield
    finally:
        assert stop(proc) == 0


def llmctl(ctl: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "llmctl", "--socket", ctl, *args],
                          capture_output=True, text=True, timeout=60)


@needs_activate
def test_first_request_on_an_activated_tcp_socket_is_served(tmp_path):
    config = write_config(tmp_path)
    port = free_port()
    proc = subprocess.Popen([ACTIVATE, "-l", f"127.0.0.1:{port}", "--fdname=http",
                             *llmd_cmd(config)], stderr=subprocess.PIPE)
    try:
        time.sleep(0.3)  # systemd-socket-activate is listening; llmd is not running yet
        # The client connects before llmd exists; the kernel queues it until llmd accepts.
        response = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions",
                              json={"model": "a", "messages": []}, timeout=60)
        assert response.status_code == 200
    finally:
        assert stop(proc) == 0


@needs_activate
def test_both_listeners_passed_by_name(tmp_path):
    config = write_config(tmp_path)
    port, ctl = free_port(), str(tmp_path / "activated.sock")
    with activated(config, ctl, "-l", f"127.0.0.1:{port}", "-l", ctl, "--fdname=http:control"):
        result = llmctl(ctl, "status", "--json")
        assert result.returncode == 0, result.stderr
        status = json.loads(result.stdout)
        assert status["models"] == 1
        assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=10).status_code == 200
        # llmd did not bind its configured control socket: systemd's one is used instead.
        assert not (tmp_path / "ctl.sock").exists()
    assert os.path.exists(ctl)  # systemd's socket is systemd's to remove


@needs_activate
def test_only_control_passed_and_router_bound_by_llmd(tmp_path):
    config = write_config(tmp_path)
    ctl = str(tmp_path / "activated.sock")
    with activated(config, ctl, "-l", ctl, "--fdname=control"):
        listen = json.loads(llmctl(ctl, "status", "--json").stdout)["listen"]
        assert httpx.get(f"http://{listen}/health", timeout=10).status_code == 200


@needs_activate
def test_a_datagram_socket_is_refused_in_one_line(tmp_path):
    config = write_config(tmp_path)
    port = free_port()
    proc = subprocess.Popen([ACTIVATE, "-d", "-l", f"127.0.0.1:{port}", "--fdname=http",
                             *llmd_cmd(config)], stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(0.3)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(b"x", ("127.0.0.1", port))
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 1
    line = [l for l in err.splitlines() if l.startswith("llmd:")]
    assert line == ["llmd: socket activation: fd 3 (http) is not a listening stream socket; "
                    "use ListenStream= in llmd.socket"]


def test_listen_pid_for_another_process_is_ignored_with_a_reason():
    activation = systemd.listen_fds({"LISTEN_FDS": "1", "LISTEN_PID": "1"}, pid=4242)
    assert activation.sockets == {}
    assert "LISTEN_PID=1 is for another process (this is 4242)" in activation.ignored


@needs_activate
def test_one_socket_unit_with_both_listeners_is_split_by_family(tmp_path):
    # systemd names every fd of one .socket unit alike (here "llmd"), as llmd.socket does.
    config = write_config(tmp_path)
    port, ctl = free_port(), str(tmp_path / "activated.sock")
    with activated(config, ctl, "-l", f"127.0.0.1:{port}", "-l", ctl, "--fdname=llmd:llmd"):
        result = llmctl(ctl, "ps")
        assert result.returncode == 0 and "a " in result.stdout
        assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=10).status_code == 200


@pytest.mark.parametrize("abstract", [False, True])
def test_notify_ready_status_watchdog_and_stopping(tmp_path, abstract):
    config = write_config(tmp_path)
    name = f"llmd-test-{os.getpid()}-{time.monotonic_ns()}"
    address = "\0" + name if abstract else str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(address)
        notify.settimeout(30)
        env = {**os.environ, "NOTIFY_SOCKET": "@" + name if abstract else address,
               "WATCHDOG_USEC": "400000"}
        proc = subprocess.Popen(llmd_cmd(config), env=env)
        messages: list[str] = []
        seen = 0

        def until(prefix: str) -> str:
            nonlocal seen
            while True:
                while seen < len(messages):
                    seen += 1
                    if messages[seen - 1].startswith(prefix):
                        return messages[seen - 1]
                messages.extend(notify.recv(4096).decode().splitlines())

        try:
            until("READY=1")
            assert "STATUS=1 models, 0 loaded" in messages
            until("WATCHDOG=1")
            until("WATCHDOG=1")
            httpx.post(f"http://{tomllib_listen(config)}/v1/chat/completions",
                       json={"model": "a"}, timeout=60)
            assert until("STATUS=1 models, 1 loaded").startswith("STATUS=1 models, 1 loaded: a")
            proc.send_signal(signal.SIGTERM)
            until("STOPPING=1")
            assert proc.wait(30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()


def tomllib_listen(config: Path) -> str:
    import tomllib
    return tomllib.loads(config.read_text())["listen"]


def test_sigterm_during_a_stream_and_a_load_exits_0_leaving_no_child(tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "slow.gguf").write_text(json.dumps({"load_delay": 30}))
    config = write_config(tmp_path, shutdown_timeout=1, stop_timeout=2)
    (tmp_path / "models" / "s.gguf").write_text(json.dumps({"tokens": 1000, "token_delay": 0.05}))
    proc = subprocess.Popen(llmd_cmd(config))
    listen = tomllib_listen(config)
    sock = str(tmp_path / "ctl.sock")
    try:
        wait_until(lambda: os.path.exists(sock), 20, "llmd")
        subprocess.run([sys.executable, "-m", "llmctl", "--socket", sock, "load", "--no-wait",
                        "slow"], check=True, capture_output=True)
        with httpx.stream("POST", f"http://{listen}/v1/chat/completions", timeout=60,
                          json={"model": "s", "stream": True}) as response:
            lines = response.iter_lines()
            next(line for line in lines if line.startswith("data: "))
            with httpx.Client(transport=httpx.HTTPTransport(uds=sock)) as c:
                pids = [m["pid"] for m in c.get("http://llmd/ps").json()["models"] if m["pid"]]
                children = subprocess.run(["pgrep", "-f", "fake_llama_server"],
                                          capture_output=True, text=True).stdout.split()
            proc.send_signal(signal.SIGTERM)
            rest = [line for line in lines if line.startswith("data: ")]
        # Ended just before shutdown_timeout with an error event, not cut mid-air.
        error = json.loads(rest[-1][6:])["error"]
        assert error["code"] == 503 and "shutting down" in error["message"]
        assert proc.wait(30) == 0
        assert pids and all(not pid_alive(int(p)) for p in [*pids, *children]
                            if int(p) != proc.pid)
        assert not os.path.exists(sock)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_load_on_startup_extends_the_start_timeout_until_ready(tmp_path):
    config = write_config(tmp_path, models={"boot": {"path": "boot.gguf",
                                                      "load_on_startup": True}})
    (tmp_path / "models" / "boot.gguf").write_text(json.dumps({"load_delay": 1.5}))
    address = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(address)
        notify.settimeout(30)
        proc = subprocess.Popen(llmd_cmd(config), env={**os.environ, "NOTIFY_SOCKET": address})
        lines: list[str] = []
        try:
            while "READY=1" not in lines:
                lines += notify.recv(4096).decode().splitlines()
            extend = [i for i, l in enumerate(lines) if l.startswith("EXTEND_TIMEOUT_USEC=")]
            assert extend and extend[0] < lines.index("READY=1")
            assert "STATUS=loading boot (load_on_startup)" in lines
            ready_status = lines[lines.index("READY=1") + 1]
            assert ready_status.startswith("STATUS=2 models, 1 loaded: boot")
        finally:
            assert stop(proc) == 0
