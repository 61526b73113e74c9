"""Partial downloads: a cancel keeps the bytes to resume, a cancel on purpose removes them."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import AsyncIterator

import httpx
import trio
import trio.testing

from llmd.hub import download
from llmd.models import prepare
from llmd.models.catalog import ModelSpec
from llmd.models.model import Model

REF = "acme/m-GGUF:Q4_K_M"
DATA = bytes(range(256)) * 1200  # 300 KiB
SHA = hashlib.sha256(DATA).hexdigest()


class SlowHub:
    """A MockTransport hub: serves DATA (honouring Range), then stalls after `stall_at` bytes."""

    def __init__(self, stall_at: int | None = None) -> None:
        self.stall_at = stall_at
        self.ranges: list[str | None] = []
        self.stalled = trio.Event()

    async def handler(self, request: httpx.Request) -> httpx.Response:
        if "/api/models/" in request.url.path:
            return httpx.Response(200, json={"sha": "c0ffee", "siblings": [
                {"rfilename": "m-Q4_K_M.gguf", "size": len(DATA),
                 "lfs": {"sha256": SHA, "size": len(DATA)}}]})
        rng = request.headers.get("range")
        self.ranges.append(rng)
        start = int(rng.removeprefix("bytes=").rstrip("-")) if rng else 0
        return httpx.Response(206 if rng else 200, content=self._body(start))

    async def _body(self, start: int) -> AsyncIterator[bytes]:
        end = len(DATA) if self.stall_at is None else self.stall_at
        for i in range(start, end, 10_000):
            yield DATA[i:min(i + 10_000, end)]
        if self.stall_at is not None:
            self.stalled.set()
            await trio.sleep_forever()


def part_of(cache: Path) -> Path:
    return download.repo_dir(cache, "acme/m-GGUF") / "blobs" / (SHA + ".incomplete")


async def cancelled_midway(hub: download.Hub, fake: SlowHub, model: Model | None = None) -> None:
    """Start a fetch (through prepare.download when given a model), cancel it once it stalls."""
    async with trio.open_nursery() as nursery:
        if model is None:
            nursery.start_soon(hub.fetch, REF, download.Progress())
        else:
            nursery.start_soon(prepare.download, model, hub, lambda event: None)
        await fake.stalled.wait()
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()


def hub_model() -> Model:
    return Model(spec=ModelSpec(name="m", path="", args=(), hf=REF))


async def test_a_cancelled_fetch_keeps_what_it_wrote_and_the_next_resumes_from_there(tmp_path):
    fake = SlowHub(stall_at=120_000)
    async with httpx.AsyncClient(transport=httpx.MockTransport(fake.handler)) as client:
        hub = download.Hub(client, "http://hub.test", tmp_path)
        await cancelled_midway(hub, fake)
        assert part_of(tmp_path).stat().st_size == 120_000
        fake.stall_at = None
        path, _ = await hub.fetch(REF, download.Progress())
    assert fake.ranges == [None, "bytes=120000-"]
    assert Path(path).read_bytes() == DATA and not part_of(tmp_path).exists()


async def test_stopping_llmd_keeps_a_downloads_partial_file(tmp_path):
    fake = SlowHub(stall_at=120_000)
    model = hub_model()  # discard_partial stays False: llmd itself is stopping
    async with httpx.AsyncClient(transport=httpx.MockTransport(fake.handler)) as client:
        await cancelled_midway(download.Hub(client, "http://hub.test", tmp_path), fake, model)
    assert part_of(tmp_path).stat().st_size == 120_000


async def test_a_download_cancelled_on_purpose_removes_its_partial_file(tmp_path):
    fake = SlowHub(stall_at=120_000)
    model = hub_model()
    model.discard_partial = True  # what the scheduler sets before an unload's cancel
    async with httpx.AsyncClient(transport=httpx.MockTransport(fake.handler)) as client:
        await cancelled_midway(download.Hub(client, "http://hub.test", tmp_path), fake, model)
    assert list(part_of(tmp_path).parent.iterdir()) == []


async def test_discarding_spares_a_partial_file_another_fetch_is_still_writing(tmp_path):
    fake = SlowHub(stall_at=120_000)
    async with httpx.AsyncClient(transport=httpx.MockTransport(fake.handler)) as client:
        hub = download.Hub(client, "http://hub.test", tmp_path)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(hub.fetch, REF, download.Progress())
            await fake.stalled.wait()
            assert hub.discard_partial(REF) == []
            nursery.cancel_scope.cancel()
    assert part_of(tmp_path).exists()
    assert hub.discard_partial("acme/never-fetched:Q4_K_M") == []


async def test_a_partial_file_longer_than_the_hub_file_is_downloaded_again(tmp_path):
    part_of(tmp_path).parent.mkdir(parents=True)
    part_of(tmp_path).write_bytes(b"x" * (len(DATA) + 1))
    fake = SlowHub()
    async with httpx.AsyncClient(transport=httpx.MockTransport(fake.handler)) as client:
        path, _ = await download.Hub(client, "http://hub.test", tmp_path).fetch(
            REF, download.Progress())
    assert fake.ranges == [None] and Path(path).read_bytes() == DATA
