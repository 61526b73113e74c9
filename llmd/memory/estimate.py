"""How much memory a model will need, per device, before it is loaded."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import trio

from llmd.memory import gguf_meta
from llmd.models.catalog import ModelSpec

log = logging.getLogger("llmd.estimate")

_FIT_LINE = re.compile(r"^(\S+) (\d+) (\d+) (\d+)\s*$")
_BAD_ARG = re.compile(r"invalid argument: (\S+)")
# Arguments llama-fit-params has no use for (it rejects server-only ones).
_NOT_FOR_FIT = {"--alias", "-a", "--host", "--port", "--api-key", "--api-key-file"}


@dataclass(frozen=True)
class Need:
    """MiB a model needs per device, and where the figure came from."""

    mib: dict[str, int]
    source: str  # "llama-fit-params" or "gguf"

    def to_json(self) -> dict[str, object]:
        return {"mib": self.mib, "source": self.source}


def device_id(name: str) -> str:
    """llama.cpp's device name as llmd's device id: Host -> host, CUDA0 -> gpu0."""
    if name.lower() in ("host", "cpu"):
        return "host"
    m = re.fullmatch(r"CUDA(\d+)", name)
    return f"gpu{m.group(1)}" if m else name.lower()


def parse_fit_output(stdout: str) -> dict[str, int]:
    """The `DEVICE MODEL CONTEXT COMPUTE` lines of `--fit-print on`, summed per device."""
    need: dict[str, int] = {}
    for line in stdout.splitlines():
        m = _FIT_LINE.match(line.strip())
        if m:
            dev = device_id(m.group(1))
            need[dev] = need.get(dev, 0) + sum(int(m.group(i)) for i in (2, 3, 4))
    return need


def _drop(args: list[str], flag: str) -> list[str]:
    out, skip = [], False
    for i, arg in enumerate(args):
        if skip:
            skip = False
            continue
        if arg == flag:
            skip = i + 1 < len(args) and not args[i + 1].startswith("-")
            continue
        out.append(arg)
    return out


def fit_args(spec: ModelSpec) -> list[str]:
    """The model's own arguments as llama-fit-params takes them."""
    args = list(spec.child_args())
    for flag in _NOT_FOR_FIT:
        args = _drop(args, flag)
    return args


def identity(path: str | None) -> list[object] | None:
    """A file's real path, size and mtime: a rebuilt or replaced binary changes it."""
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return [path]
    return [os.path.realpath(path), st.st_size, st.st_mtime_ns]


def find_fit_params(llama_server: str) -> str | None:
    """llama-fit-params beside llama-server, else on PATH."""
    beside = Path(llama_server).with_name("llama-fit-params")
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("llama-fit-params")


async def run_fit_params(tool: str, args: Sequence[str], timeout: float) -> dict[str, int] | None:
    """Ask llama-fit-params; None when it fails. Unknown arguments are dropped and retried."""
    args = list(args)
    for _ in range(8):
        with trio.move_on_after(timeout) as scope:
            result = await trio.run_process([tool, "--fit-print", "on", *args], check=False,
                                            capture_stdout=True, capture_stderr=True,
                                            stdin=subprocess.DEVNULL)
        if scope.cancelled_caught:
            log.warning("llama-fit-params timed out after %gs", timeout)
            return None
        need = parse_fit_output(result.stdout.decode(errors="replace"))
        if need:
            return need
        bad = _BAD_ARG.search(result.stderr.decode(errors="replace"))
        if not bad or bad.group(1) not in args:
            log.info("llama-fit-params gave no estimate: %s",
                     result.stderr.decode(errors="replace").strip().splitlines()[-1:])
            return None
        args = _drop(args, bad.group(1))
    return None


class Estimator:
    """Estimates per model, cached by file identity, mtime and arguments, on disk."""

    def __init__(self, llama_server: str, state_dir: str | None, timeout: float = 60) -> None:
        self.tool = find_fit_params(llama_server)
        # Another llama.cpp build may estimate differently, and a child admitted on
        # llama-fit-params' estimate starts with `--fit off`, which a build older than
        # --fit would refuse: estimates made with other binaries are not reused.
        self._binaries = [identity(llama_server), identity(self.tool)]
        self.timeout = timeout
        self.cache_path = Path(state_dir) / "estimates.json" if state_dir else None
        self.cache: dict[str, dict[str, object]] = {}
        if self.cache_path and self.cache_path.exists():
            try:
                self.cache = json.loads(self.cache_path.read_text())
            except (OSError, ValueError):
                log.warning("ignoring unreadable estimate cache %s", self.cache_path)

    def key(self, spec: ModelSpec) -> str | None:
        """The cache key: what the estimate depends on."""
        try:
            st = os.stat(spec.path)
        except OSError:
            return None
        parts = [os.path.realpath(spec.path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns,
                 *spec.child_args(), *self._binaries]
        return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()

    async def need(self, spec: ModelSpec) -> Need:
        """The model's need per device: cached, then llama-fit-params, then GGUF metadata."""
        key = self.key(spec)
        if key and key in self.cache:
            cached = self.cache[key]
            return Need(dict(cached["mib"]), str(cached["source"]))  # type: ignore[call-overload]
        need = None
        if self.tool:
            mib = await run_fit_params(self.tool, fit_args(spec), self.timeout)
            if mib:
                need = Need(mib, "llama-fit-params")
        if need is None:
            need = Need(await trio.to_thread.run_sync(gguf_meta.estimate_mib, spec.path,
                                                      list(spec.args)), "gguf")
        if key:
            self.cache[key] = need.to_json()
            self._save()
        return need

    def _save(self) -> None:
        if not self.cache_path:
            return
        try:
            self.cache_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.cache_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.cache))
            tmp.replace(self.cache_path)
        except OSError as exc:
            log.warning("cannot save estimates to %s: %s", self.cache_path, exc)
