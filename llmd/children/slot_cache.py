"""A model's prompt cache kept across an unload: its slots saved to files, restored on load.

llama-server can save a slot's KV cache to a file and restore it (`--slot-save-path DIR`,
`POST /slots/ID?action=save|restore`). Before llmd stops an idle model, it saves every
slot that holds a prompt; when the model is loaded again, it restores them before the
first request is let in, so a request that shares the earlier prefix skips processing it
again. Files live under llmd's cache directory, one folder per model, with a manifest
naming what they belong to: the model file's identity, the child's arguments and the
llama-server build. A file that belongs to something else, is missing or corrupt, or
would break the disk budget is skipped (logged) and the load goes on cold; it never
fails a request. Files go when the model file changes and, oldest first, when the budget
is exceeded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import trio

from llmd.children import reports
from llmd.children.upstream import Upstream, UpstreamBroken
from llmd.models.catalog import file_identity

log = logging.getLogger("llmd.prompt_cache")

SAVE_BOUND = 5.0  # seconds saving may add to an unload (an eviction a load waits for)
WORTH_SAVING = 256  # prompt tokens a slot must hold to be saved: a shorter one is
# processed again in less time than saving and restoring it cost (~0.1 s per switch)
RESTORE_BOUND = 10.0  # seconds restoring may add to a load before it goes on cold
_MANIFEST = "manifest.json"


def _key(path: str, identity: Sequence[int] | None, args: Sequence[str], binary: object
         ) -> str:
    """What saved slots belong to: the model file (its path and identity, catalog's
    file_identity), the child's arguments, the build."""
    return hashlib.sha256(json.dumps([path, list(identity or ()), list(args), repr(binary)]
                                     ).encode()).hexdigest()


def _folder_name(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Kept:
    """What is saved for one model: its slots, their prompt tokens, the disk they use."""

    slots: int
    tokens: int
    size: int  # bytes
    saved_at: float  # wall time

    @classmethod
    def of(cls, folder: Path, manifest: dict[str, Any]) -> Kept:
        """What a model's folder and manifest hold."""
        entries = manifest.get("slots") or {}
        return cls(len(entries), sum(int(e.get("tokens") or 0) for e in entries.values()),
                   _size(folder), float(manifest.get("saved_at") or 0))

    def to_json(self) -> dict[str, Any]:
        return {"slots": self.slots, "tokens": self.tokens,
                "mib": round(self.size / (1 << 20), 1), "saved_at": self.saved_at}


def _size(folder: Path) -> int:
    try:
        return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
    except OSError:
        return 0


class SlotFiles:
    """Where and whether each model's slots are kept, and the disk they may use."""

    def __init__(self, upstream: Upstream, root: Path, budget_mib: int,
                 binary: Callable[[], object] = lambda: None) -> None:
        self.upstream = upstream
        self.root = root
        self.budget = budget_mib << 20
        self.binary = binary
        self.kept: dict[str, Kept] = {}  # by model name: what is saved now (prune fills it)

    def folder(self, name: str) -> Path:
        """The model's folder (made if missing): what --slot-save-path points at."""
        folder = self.root / _folder_name(name)
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    async def _post(self, base_url: str, slot: int, action: str, filename: str
                    ) -> dict[str, Any] | None:
        body = json.dumps({"filename": filename}).encode()
        try:
            status, raw = await self.upstream.fetch(
                "POST", base_url, f"/slots/{slot}?action={action}", body,
                [(b"content-type", b"application/json")])
        except UpstreamBroken as exc:
            log.warning("slot %d %s: %s", slot, action, exc)
            return None
        if status != 200:
            log.warning("slot %d %s refused (%d): %s", slot, action, status,
                        raw[:200].decode("utf-8", "replace"))
            return None
        try:
            data = json.loads(raw)
        except ValueError:
            return None
        return data if isinstance(data, dict) else None

    async def _slots(self, base_url: str) -> list[dict[str, Any]]:
        raw = await reports.get(self.upstream, base_url, "/slots")
        return (reports.slot_list(raw) if raw is not None else None) or []

    async def save(self, name: str, base_url: str, path: str,
                   identity: Sequence[int] | None, args: Sequence[str]) -> int:
        """Save the slots of the running child that hold a prompt; how many were saved.

        `identity` is the model file's when the child started: if the file at `path` has
        changed since, nothing is saved and what was kept for the model goes."""
        if file_identity(path) != identity:
            log.info("%s: its model file changed under it; its prompt cache is not kept",
                     name)
            self.clear(name)
            return 0
        folder = self.folder(name)
        saved: dict[str, Any] = {}
        with trio.move_on_after(SAVE_BOUND) as bound:
            for slot in await self._slots(base_url):
                if (slot.get("n_prompt_tokens") or 0) < WORTH_SAVING or slot.get("is_processing"):
                    continue
                filename = f"slot-{slot['id']}.bin"
                result = await self._post(base_url, int(slot["id"]), "save", filename)
                if result is not None:
                    saved[str(slot["id"])] = {"file": filename,
                                              "tokens": result.get("n_saved", 0)}
        if bound.cancelled_caught:
            log.warning("%s: saving its prompt cache took over %gs; the rest is dropped",
                        name, SAVE_BOUND)
        if saved:
            manifest = {"key": _key(path, identity, args, self.binary()),
                        "saved_at": time.time(),
                        "slots": saved}
            try:
                folder.mkdir(parents=True, exist_ok=True)
                (folder / _MANIFEST).write_text(json.dumps(manifest))
                log.info("%s: saved the prompt cache of %d slot(s)", name, len(saved))
                self.kept[name] = Kept.of(folder, manifest)
                self.keep_within_budget()
            except OSError as exc:  # a full or vanished disk costs the cache, nothing more
                log.warning("%s: its prompt cache could not be kept: %s", name, exc)
                self.clear(name)
                return 0
        return len(saved)

    async def restore(self, name: str, base_url: str, path: str,
                      identity: Sequence[int] | None, args: Sequence[str]) -> int:
        """Restore what was saved for this model file (`identity`: the file the child
        started with), arguments and build; how many slots. Anything else found is
        skipped with a log line and removed."""
        folder = self.folder(name)
        try:
            manifest = json.loads((folder / _MANIFEST).read_text())
        except FileNotFoundError:
            return 0
        except (OSError, ValueError):
            log.warning("%s: its prompt cache manifest is unreadable; loading cold", name)
            self.clear(name)
            return 0
        if manifest.get("key") != _key(path, identity, args, self.binary()):
            log.info("%s: its saved prompt cache is for another model file, other arguments "
                     "or another llama-server; removed, loading cold", name)
            self.clear(name)
            return 0
        restored = 0
        with trio.move_on_after(RESTORE_BOUND):
            for slot, entry in (manifest.get("slots") or {}).items():
                if not (folder / entry["file"]).is_file():
                    log.warning("%s: slot %s's saved prompt cache is missing; skipped",
                                name, slot)
                    continue
                if await self._post(base_url, int(slot), "restore", entry["file"]) is None:
                    log.warning("%s: slot %s's saved prompt cache could not be restored; "
                                "skipped", name, slot)
                    continue
                restored += 1
        if restored:
            log.info("%s: restored the prompt cache of %d slot(s)", name, restored)
        return restored

    def clear(self, name: str) -> None:
        """Remove everything saved for the model."""
        shutil.rmtree(self.root / _folder_name(name), ignore_errors=True)
        self.kept.pop(name, None)

    def prune(self, models: Mapping[str, tuple[str, Sequence[str]]]) -> None:
        """Remove what was saved for models no longer known, and for model files (or
        arguments, or builds) that changed; `models` maps each known model's name to its
        (path, arguments). A folder without a manifest may be a running child's: kept."""
        wanted = {_folder_name(name): (name, path, args)
                  for name, (path, args) in models.items()}
        try:
            folders = [f for f in self.root.iterdir() if f.is_dir()] if self.root.is_dir() \
                else []
        except OSError as exc:  # an unreadable cache directory costs the cleanup, no more
            log.warning("cannot look through the prompt cache %s: %s", self.root, exc)
            return
        self.kept = {}
        for folder in folders:
            try:
                manifest = json.loads((folder / _MANIFEST).read_text())
                key = manifest.get("key")
            except (OSError, ValueError, AttributeError):
                continue
            known = wanted.get(folder.name)
            if known is not None:
                name, path, args = known
                if key == _key(path, file_identity(path), args, self.binary()):
                    self.kept[name] = Kept.of(folder, manifest)
                    continue
                log.info("%s: its model file, arguments or llama-server changed; its saved "
                         "prompt cache is removed", name)
            shutil.rmtree(folder, ignore_errors=True)

    def keep_within_budget(self) -> None:
        """Remove the oldest models' saved slots until all fit in the budget."""
        folders = [f for f in self.root.iterdir() if f.is_dir()] if self.root.is_dir() else []
        sizes = {f: _size(f) for f in folders}
        total = sum(sizes.values())

        def saved_at(folder: Path) -> float:
            try:
                return (folder / _MANIFEST).stat().st_mtime
            except OSError:
                return 0.0  # no manifest: nothing there can be restored; it goes first

        for folder in sorted(folders, key=saved_at):
            if total <= self.budget:
                break
            log.info("prompt cache over its budget (%d MiB): removing %s", self.budget >> 20,
                     folder.name)
            shutil.rmtree(folder, ignore_errors=True)
            total -= sizes[folder]
        self.kept = {name: kept for name, kept in self.kept.items()
                     if (self.root / _folder_name(name)).is_dir()}
