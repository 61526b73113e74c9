"""A child's port taken by another process between pick and bind.

Starts: a real llama-server (in-process trio supervisor, no daemon) with a generated
model, and the fake llama-server as the process squatting on the picked port.
"""

from __future__ import annotations

import json
import subprocess
import sys
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio

from llmd.children import child
from llmd.children import ports
from llmd.children.upstream import Upstream
from tests.fakes import tiny_gguf
from tests.helpers import FAKE_SERVER, healthy, wait_until

pytestmark = pytest.mark.real


@pytest.fixture
def squatter(tmp_path: Path):
    """A process that answers /health 200 on a port, as a stray server would."""
    behaviour = tmp_path / "squat.json"
    behaviour.write_text(json.dumps({}))
    port = ports.free_port()
    proc = subprocess.Popen([sys.executable, str(FAKE_SERVER), "--model", str(behaviour),
                             "--port", str(port)], stdout=subprocess.DEVNULL)
    wait_until(lambda: healthy(f"http://127.0.0.1:{port}"), 30, "squatter")
    yield port
    proc.kill()
    proc.wait()


async def test_a_child_whose_port_was_taken_is_started_again_on_another_port(
        llama_server, squatter, tmp_path, monkeypatch):
    model = tiny_gguf.write(tmp_path / "t.gguf")
    picks = [squatter]
    pick = ports.free_port
    monkeypatch.setattr(ports, "free_port", lambda: picks.pop() if picks else pick())
    ready: list[child.Child] = []
    got_ready = trio.Event()

    def on_ready(c: child.Child) -> None:
        ready.append(c)
        got_ready.set()

    async with httpx.AsyncClient() as client, Upstream() as upstream, \
            trio.open_nursery() as nursery:
        nursery.start_soon(partial(
            child.serve, "t", [llama_server, "--model", str(model), "--ctx-size", "256"],
            on_ready, upstream=upstream, load_timeout=60, stop_timeout=5, log_lines=100))
        with trio.fail_after(60):
            await got_ready.wait()
        assert ready[0].port != squatter
        props = (await client.get(f"{ready[0].base_url}/props")).json()
        assert "pid" not in props  # llama-server's answer, not the squatter's
        nursery.cancel_scope.cancel()



async def test_a_child_that_says_it_listens_on_its_port_needs_no_proc_lookup(
        llama_server, tmp_path, monkeypatch):
    # /proc/net/tcp takes ~10 ms to read on a busy machine, on every cold start.
    model = tiny_gguf.write(tmp_path / "t.gguf")
    monkeypatch.setattr(ports, "held_by", lambda group, port: False)
    ready: list[child.Child] = []
    got_ready = trio.Event()

    def on_ready(c: child.Child) -> None:
        ready.append(c)
        got_ready.set()

    async with Upstream() as upstream, trio.open_nursery() as nursery:
        nursery.start_soon(partial(
            child.serve, "t", [llama_server, "--model", str(model), "--ctx-size", "256"],
            on_ready, upstream=upstream, load_timeout=60, stop_timeout=5, log_lines=100))
        with trio.fail_after(60):
            await got_ready.wait()
        assert ready[0].announced
        nursery.cancel_scope.cancel()
