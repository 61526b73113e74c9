"""Saved slots belong to one model file, one set of arguments and one llama-server build."""

from __future__ import annotations

import json
import os

from llmd.children.slot_cache import SlotFiles, _key
from llmd.models.catalog import file_identity


class NoChild:
    """An upstream that must not be asked: a stale file is refused before any request."""

    async def request(self, *args, **kwargs):  # pragma: no cover - failing is the point
        raise AssertionError("a stale prompt cache must not be sent to the child")


def saved(tmp_path, files: SlotFiles, model, args=("--ctx-size", "4096")) -> None:
    folder = files.folder("m")
    (folder / "slot-0.bin").write_bytes(b"x" * 1000)
    (folder / "manifest.json").write_text(json.dumps({
        "key": _key(str(model), file_identity(str(model)), args, files.binary()),
        "saved_at": 0,
        "slots": {"0": {"file": "slot-0.bin", "tokens": 10}}}))


async def test_a_changed_model_file_makes_its_saved_slots_go(tmp_path):
    model = tmp_path / "m.gguf"
    model.write_bytes(b"one")
    files = SlotFiles(NoChild(), tmp_path / "cache", 100)  # type: ignore[arg-type]
    saved(tmp_path, files, model)
    model.write_bytes(b"two, longer")
    assert await files.restore("m", "http://x", str(model), file_identity(str(model)),
                               ("--ctx-size", "4096")) == 0
    assert not list((tmp_path / "cache").glob("*/*"))


async def test_another_llama_server_build_makes_them_go(tmp_path):
    model = tmp_path / "m.gguf"
    model.write_bytes(b"one")
    build = ["b1"]
    files = SlotFiles(NoChild(), tmp_path / "cache", 100,  # type: ignore[arg-type]
                      lambda: build[0])
    saved(tmp_path, files, model)
    build[0] = "b2"
    assert await files.restore("m", "http://x", str(model), file_identity(str(model)),
                               ("--ctx-size", "4096")) == 0
    assert not list((tmp_path / "cache").glob("*/*"))


async def test_an_unreadable_manifest_is_skipped_and_removed(tmp_path):
    files = SlotFiles(NoChild(), tmp_path / "cache", 100)  # type: ignore[arg-type]
    (files.folder("m") / "manifest.json").write_text("{not json")
    assert await files.restore("m", "http://x", "/nope.gguf", None, ()) == 0
    assert not list((tmp_path / "cache").glob("*/*"))


def test_over_budget_the_oldest_model_goes_first(tmp_path):
    files = SlotFiles(NoChild(), tmp_path / "cache", 1)  # type: ignore[arg-type]
    for i, name in enumerate(("old", "new")):
        folder = files.folder(name)
        (folder / "slot-0.bin").write_bytes(b"x" * (700 << 10))
        (folder / "manifest.json").write_text("{}")
        os.utime(folder / "manifest.json", (1000 + i, 1000 + i))
    files.keep_within_budget()
    left = {p.parent for p in (tmp_path / "cache").glob("*/*")}
    assert left == {files.folder("new")}


async def test_a_file_replaced_under_a_running_child_saves_nothing(tmp_path):
    model = tmp_path / "m.gguf"
    model.write_bytes(b"one")
    started_with = file_identity(str(model))
    files = SlotFiles(NoChild(), tmp_path / "cache", 100)  # type: ignore[arg-type]
    saved(tmp_path, files, model)
    model.write_bytes(b"two, longer")  # the child still maps the old file
    assert await files.save("m", "http://x", str(model), started_with, ()) == 0
    assert not list((tmp_path / "cache").glob("*/*"))


def test_pruning_keeps_what_still_matches_and_drops_changed_and_unknown_models(tmp_path):
    args = ("--ctx-size", "4096")
    files = SlotFiles(NoChild(), tmp_path / "cache", 100)  # type: ignore[arg-type]
    for name in ("same", "replaced", "reargued", "gone"):
        (tmp_path / f"{name}.gguf").write_bytes(name.encode())
        folder = files.folder(name)
        (folder / "slot-0.bin").write_bytes(b"x")
        path = str(tmp_path / f"{name}.gguf")
        (folder / "manifest.json").write_text(json.dumps({
            "key": _key(path, file_identity(path), args, files.binary())}))
    (tmp_path / "replaced.gguf").write_bytes(b"a new file")
    running = files.folder("running")  # a child's save path, nothing saved yet
    files.prune({n: (str(tmp_path / f"{n}.gguf"), ("--ctx-size", "8192") if n == "reargued"
                     else args) for n in ("same", "replaced", "reargued", "running")})
    left = {f for f in (tmp_path / "cache").iterdir()}
    assert left == {files.folder("same"), running}
    assert set(files.kept) == {"same"} and files.kept["same"].size == 1 + len(
        (files.folder("same") / "manifest.json").read_bytes())
    files.clear("same")
    assert files.kept == {}
