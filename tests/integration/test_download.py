"""Hub models: download into the HF cache layout, resume, verify, then load and serve.

Starts: a fake hub on loopback (tests/fakes/fake_hub.py), llmd (subprocess), real
llama-server children on generated GGUF models.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
import threading

import pytest

from tests.fakes import tiny_gguf
from tests.fakes.fake_hub import COMMIT, FakeHub
from tests.helpers import wait_until


@pytest.fixture
def hub():
    h = FakeHub()
    yield h
    h.close()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_gguf.write(tmp_path_factory.mktemp("tiny") / "tiny.gguf", layers=2, width=256)


def hub_daemon(daemon, llama_server, hub, tmp_path, **config):
    return daemon({"llama_server": llama_server, "args": ["--ctx-size", "512"],
                   "hf_endpoint": hub.url, "cache_dir": str(tmp_path / "cache"),
                   "models": {"t": {"hf": "acme/tiny-GGUF:Q4_K_M"}}, **config})


def complete(d, model="t"):
    return d.http.post("/completion", json={"model": model, "prompt": "hi", "n_predict": 2})


def blob_dir(tmp_path):
    return tmp_path / "cache" / "huggingface" / "hub" / "models--acme--tiny-GGUF" / "blobs"


def test_download_then_load_then_complete(daemon, llama_server, hub, tiny, tmp_path):
    hub.add("acme/tiny-GGUF", {"tiny-Q4_K_M.gguf": tiny, "tiny-Q8_0.gguf": b"other quant"})
    d = hub_daemon(daemon, llama_server, hub, tmp_path)
    assert d.models()["t"]["status"]["value"] == "unloaded"
    assert complete(d).status_code == 200
    chat = d.chat("t", max_tokens=4)
    assert chat.status_code == 200 and chat.json()["choices"][0]["message"]["role"] == "assistant"
    base = tmp_path / "cache" / "huggingface" / "hub" / "models--acme--tiny-GGUF"
    link = base / "snapshots" / COMMIT / "tiny-Q4_K_M.gguf"
    assert link.is_symlink() and link.resolve().parent == base / "blobs"
    assert (base / "refs" / "main").read_text() == COMMIT
    assert [name for name, _ in hub.file_requests] == ["tiny-Q4_K_M.gguf"]
    model = d.models()["t"]
    assert model["download"]["done"] == model["download"]["total"] == tiny.stat().st_size


def test_cut_connection_is_resumed_with_range(daemon, llama_server, hub, tiny, tmp_path):
    hub.add("acme/tiny-GGUF", {"tiny-Q4_K_M.gguf": tiny}, cut_after={"tiny-Q4_K_M.gguf": 200_000})
    d = hub_daemon(daemon, llama_server, hub, tmp_path)
    assert complete(d).status_code == 200
    assert hub.file_requests == [("tiny-Q4_K_M.gguf", None),
                                 ("tiny-Q4_K_M.gguf", "bytes=200000-")]


def test_sha256_mismatch_fails_the_model_and_leaves_no_partial_file(daemon, llama_server, hub,
                                                                    tiny, tmp_path):
    hub.add("acme/tiny-GGUF", {"tiny-Q4_K_M.gguf": tiny}, corrupt={"tiny-Q4_K_M.gguf"})
    d = hub_daemon(daemon, llama_server, hub, tmp_path)
    response = complete(d)
    assert response.status_code == 503
    assert "sha256 mismatch" in response.json()["error"]["message"]
    status = d.models()["t"]["status"]
    assert status["failed"] and "sha256 mismatch" in status["reason"]
    assert os.listdir(blob_dir(tmp_path)) == []


def test_concurrent_requests_share_one_download(daemon, llama_server, hub, tiny, tmp_path):
    hub.add("acme/tiny-GGUF", {"tiny-Q4_K_M.gguf": tiny}, delay=0.01)
    d = hub_daemon(daemon, llama_server, hub, tmp_path)
    codes = []
    threads = [threading.Thread(target=lambda: codes.append(complete(d).status_code))
               for _ in range(4)]
    for t in threads:
        t.start()
    wait_until(lambda: d.models()["t"]["status"]["value"] in ("downloading", "loading",
                                                               "loaded"), 10, "the download")
    for t in threads:
        t.join()
    assert codes == [200] * 4
    assert len(hub.file_requests) == 1


def test_unknown_repo_and_offline_fail_clearly(daemon, llama_server, hub, tmp_path):
    d = hub_daemon(daemon, llama_server, hub, tmp_path)
    response = complete(d)
    assert response.status_code == 503 and "hub has no model 'acme/tiny-GGUF'" in \
        response.json()["error"]["message"]
    offline = hub_daemon(daemon, llama_server, hub, tmp_path, offline=True)
    message = complete(offline).json()["error"]["message"]
    assert "not in the cache and llmd is offline" in message


def test_partial_file_from_an_earlier_run_is_resumed(daemon, llama_server, hub, tiny, tmp_path):
    import hashlib
    hub.add("acme/tiny-GGUF", {"tiny-Q4_K_M.gguf": tiny})
    data = tiny.read_bytes()
    blobs = blob_dir(tmp_path)
    blobs.mkdir(parents=True)
    # What a daemon killed mid-download leaves behind.
    (blobs / (hashlib.sha256(data).hexdigest() + ".incomplete")).write_bytes(data[:123_456])
    d = hub_daemon(daemon, llama_server, hub, tmp_path)
    assert complete(d).status_code == 200
    assert hub.file_requests == [("tiny-Q4_K_M.gguf", "bytes=123456-")]


def test_unload_cancels_a_download_and_lists_no_model_file(daemon, llama_server, hub, tiny,
                                                           tmp_path):
    hub.add("acme/tiny-GGUF", {"tiny-Q4_K_M.gguf": tiny}, delay=0.2)
    d = hub_daemon(daemon, llama_server, hub, tmp_path)
    codes = []
    t = threading.Thread(target=lambda: codes.append(complete(d).status_code))
    t.start()
    wait_until(lambda: d.models()["t"]["status"]["value"] == "downloading", 10, "downloading")
    events = d.llmctl("unload", "t")
    assert events.returncode == 0
    t.join()
    assert codes == [503]
    assert d.models()["t"]["status"]["value"] == "unloaded"
    assert not [p for p in os.listdir(blob_dir(tmp_path)) if not p.endswith(".incomplete")]


def test_llmctl_pull_downloads_without_loading_and_the_cache_is_listed_next_time(
        daemon, llama_server, hub, tiny, tmp_path):
    hub.add("acme/tiny-GGUF", {"tiny-Q4_K_M.gguf": tiny})
    config = {"llama_server": llama_server, "args": ["--ctx-size", "512"],
              "hf_endpoint": hub.url, "cache_dir": str(tmp_path / "cache")}
    d = daemon(config)
    result = d.llmctl("pull", "acme/tiny-GGUF:Q4_K_M", "--json")
    # JSON lines: one per progress step, then the model.
    *progress, final = [json.loads(line) for line in result.stdout.splitlines()]
    assert final["id"] == "acme/tiny-GGUF:Q4_K_M" and final["status"]["value"] == "unloaded"
    assert Path(final["path"]).exists()
    assert progress and all(p["model"] == final["id"] for p in progress)
    assert progress[0]["state"] == "downloading"
    assert (progress[-1]["state"], progress[-1]["progress"]) == ("downloaded", 1.0)
    values = [p["progress"] for p in progress]
    assert values == sorted(values) and all(0 <= v < 1 for v in values[:-1])
    assert all(p["download"]["total"] == tiny.stat().st_size
               for p in progress if p["download"])
    assert d.llmctl("pull", "acme/tiny-GGUF:Q4_K_M").stdout.startswith(
        "acme/tiny-GGUF:Q4_K_M: on disk at ")
    assert len(hub.file_requests) == 1
    assert complete(d, "acme/tiny-GGUF:Q4_K_M").status_code == 200
    d.stop()
    again = daemon(config)  # a fresh daemon lists the cached model without downloading
    listed = again.models()["acme/tiny-GGUF:Q4_K_M"]
    assert listed["source"] == "cache" and listed["status"]["value"] == "unloaded"
    assert complete(again, "acme/tiny-GGUF:Q4_K_M").status_code == 200
    assert len(hub.file_requests) == 1


def test_router_may_name_hub_models_only_with_allow_pull(daemon, llama_server, hub, tiny,
                                                         tmp_path):
    hub.add("acme/tiny-GGUF", {"tiny-Q4_K_M.gguf": tiny})
    config = {"llama_server": llama_server, "args": ["--ctx-size", "512"],
              "hf_endpoint": hub.url, "cache_dir": str(tmp_path / "cache")}
    closed = daemon(config)
    response = complete(closed, "acme/tiny-GGUF:Q4_K_M")
    assert response.status_code == 400 and "not found" in response.json()["error"]["message"]
    assert hub.file_requests == []
    open_ = daemon({**config, "allow_pull": True})
    assert complete(open_, "acme/tiny-GGUF:Q4_K_M").status_code == 200
    assert complete(open_, "../../etc/passwd").status_code == 400


def test_second_pull_joins_the_first_and_ps_shows_progress(daemon, llama_server, hub, tiny,
                                                           tmp_path):
    hub.add("acme/tiny-GGUF", {"tiny-Q4_K_M.gguf": tiny}, delay=0.05)
    d = hub_daemon(daemon, llama_server, hub, tmp_path)
    results = []
    pulls = [threading.Thread(target=lambda: results.append(d.llmctl("pull", "t", "-q")))
             for _ in range(2)]
    for t in pulls:
        t.start()
    wait_until(lambda: (d.models()["t"]["download"] or {}).get("done"), 20, "progress")
    assert "downloading" in d.llmctl("ps").stdout and "%" in d.llmctl("ps").stdout
    for t in pulls:
        t.join()
    assert [r.returncode for r in results] == [0, 0]
    assert len(hub.file_requests) == 1
    assert d.models()["t"]["status"]["value"] == "unloaded"


def test_last_waiting_client_leaving_cancels_a_router_download(daemon, llama_server, hub, tiny,
                                                               tmp_path):
    import httpx
    hub.add("acme/tiny-GGUF", {"tiny-Q4_K_M.gguf": tiny}, delay=0.2)
    d = hub_daemon(daemon, llama_server, hub, tmp_path)
    with pytest.raises(httpx.ReadTimeout):
        d.http.post("/completion", json={"model": "t", "prompt": "hi"}, timeout=1.5)
    wait_until(lambda: d.models()["t"]["status"]["value"] == "unloaded", 10, "the cancel")
    assert not [p for p in os.listdir(blob_dir(tmp_path)) if not p.endswith(".incomplete")]
