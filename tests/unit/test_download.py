"""Choosing a quant's files, cache lookups and the disk-space check."""

from __future__ import annotations

import pytest

from llmd.hub import download
from llmd.hub.download import DownloadError, HubFile


def files(*names: str) -> list[HubFile]:
    return [HubFile(n, 10, "0" * 64) for n in names]


def test_quant_picks_its_file_and_the_mmproj():
    model, mmproj = download.pick(files("m-Q8_0.gguf", "m-Q4_K_M.gguf", "mmproj-m-f16.gguf",
                                        "README.md"), "q4_k_m")
    assert [f.name for f in model] == ["m-Q4_K_M.gguf"] and mmproj.name == "mmproj-m-f16.gguf"


def test_split_quant_picks_every_shard():
    model, _ = download.pick(files("Q4_K_M/m-Q4_K_M-00002-of-00002.gguf",
                                   "Q4_K_M/m-Q4_K_M-00001-of-00002.gguf", "m-Q8_0.gguf"), "Q4_K_M")
    assert [f.name for f in model] == ["Q4_K_M/m-Q4_K_M-00001-of-00002.gguf",
                                       "Q4_K_M/m-Q4_K_M-00002-of-00002.gguf"]


def test_missing_quant_says_what_there_is():
    with pytest.raises(DownloadError, match="no Q2_K GGUF in the repo .*m-Q8_0.gguf"):
        download.pick(files("m-Q8_0.gguf"), "Q2_K")


@pytest.mark.parametrize("ref", ["../etc:Q4", "owner", "a/b/c", "/abs/path", "x/..:Q4"])
def test_refs_that_are_not_hub_names_are_refused(ref):
    with pytest.raises(DownloadError, match="not a hub model name"):
        download.parse_ref(ref)


def test_a_download_bigger_than_the_disk_is_refused_before_it_starts(tmp_path):
    huge = [HubFile("big.gguf", 1 << 60, "a" * 64)]
    with pytest.raises(DownloadError, match="disk full: .* MiB needed"):
        download.check_space(tmp_path / "models--a--b", huge)


def test_cached_model_is_found_at_refs_main(tmp_path):
    base = download.repo_dir(tmp_path, "acme/m-GGUF")
    snap = base / "snapshots" / "abc"
    snap.mkdir(parents=True)
    (snap / "m-Q4_K_M.gguf").write_bytes(b"x")
    assert download.find_cached(tmp_path, "acme/m-GGUF:Q4_K_M") is None  # no refs/main yet
    (base / "refs").mkdir()
    (base / "refs" / "main").write_text("abc")
    assert download.find_cached(tmp_path, "acme/m-GGUF:Q4_K_M") == (str(snap / "m-Q4_K_M.gguf"), "")
    assert download.find_cached(tmp_path, "acme/m-GGUF:Q8_0") is None


async def test_disk_full_midway_removes_the_partial_file_and_says_so(tmp_path, monkeypatch):
    import errno
    import hashlib

    import httpx
    import trio

    data = b"x" * 300_000
    sha = hashlib.sha256(data).hexdigest()

    def handler(request: httpx.Request) -> httpx.Response:
        if "/api/models/" in request.url.path:
            return httpx.Response(200, json={"sha": "c0ffee", "siblings": [
                {"rfilename": "m-Q4_K_M.gguf", "size": len(data),
                 "lfs": {"sha256": sha, "size": len(data)}}]})
        return httpx.Response(200, content=data)

    real_open = trio.open_file

    async def full_disk_open(path, mode="r", *args, **kwargs):
        f = await real_open(path, mode, *args, **kwargs)

        async def write(chunk):
            raise OSError(errno.ENOSPC, "No space left on device")

        f.write = write
        return f

    monkeypatch.setattr(trio, "open_file", full_disk_open)
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        hub = download.Hub(client, "http://hub.test", tmp_path)
        with pytest.raises(DownloadError, match="disk full"):
            await hub.fetch("acme/m-GGUF:Q4_K_M", download.Progress())
    assert list((download.repo_dir(tmp_path, "acme/m-GGUF") / "blobs").iterdir()) == []
