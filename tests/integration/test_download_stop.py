"""A stop of llmd keeps a partial hub download to resume; a cancel on purpose removes it.

Starts: a fake hub on loopback (tests/fakes/fake_hub.py) serving a file slowly, and llmd
(subprocess), twice on one cache where a test restarts it. No llama-server child starts.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import httpx
import pytest

from tests.fakes.fake_hub import FakeHub
from tests.helpers import wait_until

DATA = os.urandom(3_000_000)  # 46 chunks of 64 KiB: 4.6 s at the fake hub's 0.1 s a chunk
SHA = hashlib.sha256(DATA).hexdigest()


@pytest.fixture
def hub():
    h = FakeHub()
    h.add("acme/slow-GGUF", {"slow-Q4_K_M.gguf": DATA}, delay=0.1)
    yield h
    h.close()


def slow_daemon(daemon, hub, tmp_path):
    # A short shutdown_timeout: a SIGTERM ends the requests waiting on the download at once.
    return daemon({"hf_endpoint": hub.url, "cache_dir": str(tmp_path / "cache"),
                   "llama_server": "/bin/false", "shutdown_timeout": 1,
                   "models": {"s": {"hf": "acme/slow-GGUF:Q4_K_M"}}})


def blobs(tmp_path: Path) -> Path:
    return tmp_path / "cache" / "huggingface" / "hub" / "models--acme--slow-GGUF" / "blobs"


def partial_size(tmp_path: Path) -> int:
    try:
        return (blobs(tmp_path) / (SHA + ".incomplete")).stat().st_size
    except FileNotFoundError:
        return 0


def in_background(fn) -> threading.Thread:
    t = threading.Thread(target=fn, daemon=True)
    t.start()
    return t


def resumes_and_verifies(daemon, hub, tmp_path, kept: int) -> None:
    hub.repos["acme/slow-GGUF"].delay = 0.0
    again = slow_daemon(daemon, hub, tmp_path)
    again.llmctl("pull", "s", "-q")
    assert hub.file_requests[-1] == ("slow-Q4_K_M.gguf", f"bytes={kept}-")
    assert hashlib.sha256((blobs(tmp_path) / SHA).read_bytes()).hexdigest() == SHA
    assert os.listdir(blobs(tmp_path)) == [SHA]


# The download waited on by `llmctl pull`, or by a request. At shutdown_timeout the
# server cancels the waiting request: the scheduler must not take that for the last
# waiter leaving on purpose.
WAITERS = {
    "pull": lambda d: d.llmctl("pull", "s", "-q", check=False),
    "request": lambda d: httpx.post(d.url + "/completion", timeout=30,
                                    json={"model": "s", "prompt": "hi"}),
}


@pytest.mark.parametrize("waiter", WAITERS)
def test_sigterm_during_a_download_keeps_the_partial_file_and_the_next_start_resumes_it(
        daemon, hub, tmp_path, waiter):
    d = slow_daemon(daemon, hub, tmp_path)
    waiting = in_background(lambda: WAITERS[waiter](d))
    wait_until(lambda: partial_size(tmp_path) > 0, 20, "some bytes on disk")
    assert d.stop() == 0
    waiting.join(30)
    kept = partial_size(tmp_path)
    assert 0 < kept < len(DATA)
    resumes_and_verifies(daemon, hub, tmp_path, kept)


def test_llmctl_unload_during_a_download_removes_its_partial_file(daemon, hub, tmp_path):
    d = slow_daemon(daemon, hub, tmp_path)
    pull = in_background(lambda: d.llmctl("pull", "s", "-q", check=False))
    wait_until(lambda: partial_size(tmp_path) > 0, 20, "some bytes on disk")
    d.llmctl("unload", "s")
    pull.join(30)
    assert d.models()["s"]["status"]["value"] == "unloaded"
    assert os.listdir(blobs(tmp_path)) == []
    assert "removed" in d.log()


def test_the_last_waiting_client_leaving_removes_the_partial_file(daemon, hub, tmp_path):
    d = slow_daemon(daemon, hub, tmp_path)
    with pytest.raises(httpx.ReadTimeout):  # gives up while the download runs
        d.http.post("/completion", json={"model": "s", "prompt": "hi"}, timeout=0.5)
    wait_until(lambda: d.models()["s"]["status"]["value"] == "unloaded", 10, "the cancel")
    assert os.listdir(blobs(tmp_path)) == []
