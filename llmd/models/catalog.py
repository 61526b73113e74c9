"""The catalog: which models exist, from the config's tables and the models directory."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Callable

from llmd.hub import download
from llmd.config import Config, ModelConfig
from llmd.errors import ConfigError

_SHARD = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$", re.IGNORECASE)


@dataclass(frozen=True)
class ModelSpec:
    """A model the daemon can load: its file and the exact arguments its child gets."""

    name: str
    path: str
    args: tuple[str, ...]
    mmproj: str = ""
    aliases: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    pin: bool = False
    ttl: float = 0
    load_on_startup: bool = False
    priority: int = 0
    source: str = "models_dir"
    hf: str = ""  # owner/repo[:QUANT] to download when `path` is not there yet
    loading_feedback: bool | None = None  # None: the global loading_feedback
    max_queue: int | None = None  # None: the global max_queue
    max_wait: float | None = None  # None: the global max_wait
    keep_prompt_cache: bool | None = None  # None: the global keep_prompt_cache

    def child_args(self) -> tuple[str, ...]:
        """Arguments for llama-server, without host and port."""
        extra = ("--mmproj", self.mmproj) if self.mmproj else ()
        return ("--model", self.path, "--alias", self.name, *extra, *self.args)


_DRAFT_PREFIXES = ("mtp-", "dspark-", "dflash-")


def _is_gguf(name: str) -> bool:
    return name.endswith(".gguf") and not name.startswith(".")


def _is_mmproj(name: str) -> bool:
    return "mmproj" in name


def _is_draft(name: str) -> bool:
    return name.startswith(_DRAFT_PREFIXES)


def _is_later_shard(name: str) -> bool:
    m = _SHARD.search(name)
    return m is not None and int(m.group(1)) != 1


def file_identity(path: str) -> tuple[int, ...] | None:
    """What tells one file from its replacement at the same path; None if it is gone."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _scan_subdir(path: str) -> tuple[str, str] | None:
    """The (model file, mmproj file) of a one-model sub-directory, or None if it has none."""
    files = sorted(e.name for e in os.scandir(path) if _is_gguf(e.name) and e.is_file())
    mmproj = next((f for f in files if _is_mmproj(f)), "")
    models = [f for f in files if not _is_mmproj(f) and not _is_draft(f)]
    first_shards = [f for f in models if "-00001-of-" in f]
    picked = first_shards or [f for f in models if not _is_later_shard(f)]
    if not picked:
        return None
    return os.path.join(path, picked[0]), os.path.join(path, mmproj) if mmproj else ""


def scan_models_dir(models_dir: str) -> dict[str, tuple[str, str]]:
    """Map model name to (file, mmproj) by llama.cpp router's rules for --models-dir."""
    found: dict[str, tuple[str, str]] = {}
    try:
        entries = sorted(os.scandir(models_dir), key=lambda e: e.name)
    except OSError:
        return found
    for entry in entries:
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            picked = _scan_subdir(entry.path)
            if picked:
                found[entry.name] = picked
        elif _is_gguf(entry.name) and entry.is_file():
            # Unlike llama.cpp, later shards of a top-level split are not models of their own.
            if _is_mmproj(entry.name) or _is_draft(entry.name) or _is_later_shard(entry.name):
                continue
            found[entry.name.replace(".gguf", "")] = (entry.path, "")
    return found


def _from_config(config: Config, model: ModelConfig,
                 cached: Callable[[str], tuple[str, str] | None]) -> ModelSpec:
    path, mmproj = model.path, ""
    if path and not os.path.isabs(path):
        path = os.path.join(config.models_dir, path)
    hf = model.hf
    if hf and model.file and ":" not in hf:
        hf = f"{hf}:{model.file}"  # a file name picks exactly that file, as a quant would
    if hf:
        path, mmproj = cached(hf) or ("", "")
    return ModelSpec(
        name=model.name,
        path=path,
        mmproj=mmproj,
        hf=hf,
        args=(*config.args, *model.args),
        aliases=model.aliases,
        tags=model.tags,
        pin=model.pin,
        ttl=model.ttl,
        load_on_startup=model.load_on_startup,
        priority=model.priority,
        loading_feedback=model.loading_feedback,
        max_queue=model.max_queue,
        max_wait=model.max_wait,
        keep_prompt_cache=model.keep_prompt_cache,
        source="config",
    )


def build(config: Config, cached: Callable[[str], tuple[str, str] | None] = lambda ref: None,
          hub_models: dict[str, tuple[str, str]] | None = None) -> dict[str, ModelSpec]:
    """Every model by name; raise ConfigError when an alias clashes with a name or alias.

    `cached(hf_ref)` gives the (model, mmproj) files of a hub model already downloaded.
    """
    specs: dict[str, ModelSpec] = {}
    configured = {m.hf for m in config.models if m.hf}
    for name, (path, mmproj) in (hub_models or {}).items():
        if name in configured:  # listed once, under its configured name
            continue
        specs[name] = ModelSpec(name=name, path=path, mmproj=mmproj, args=config.args, hf=name,
                                source="cache")
    for name, (path, mmproj) in scan_models_dir(config.models_dir).items():
        specs[name] = ModelSpec(name=name, path=path, mmproj=mmproj, args=config.args)
    for model in config.models:
        if model.hf:
            try:
                download.parse_ref(model.hf)
            except download.DownloadError as exc:
                raise ConfigError(config.source, f"models.{model.name}.hf", str(exc))
        specs[model.name] = _from_config(config, model, cached)
    owners: dict[str, str] = {}
    for spec in specs.values():
        for alias in spec.aliases:
            if alias in specs and alias != spec.name:
                raise ConfigError(
                    config.source, f"models.{spec.name}.aliases",
                    f"alias {alias!r} clashes with the model named {alias!r}",
                )
            if alias in owners:
                raise ConfigError(
                    config.source, f"models.{spec.name}.aliases",
                    f"alias {alias!r} is also an alias of {owners[alias]!r}",
                )
            owners[alias] = spec.name
    return specs


def names(specs: dict[str, ModelSpec]) -> dict[str, str]:
    """Map every name and alias to its model's name."""
    index = {alias: spec.name for spec in specs.values() for alias in spec.aliases}
    index.update((name, name) for name in specs)
    return index
