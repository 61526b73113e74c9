"""What a model needs before its child starts, and measuring it once it runs.

Each step records what it finds on the model's books; the scheduler decides when to run it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Callable

import trio

from llmd.children import chat_template
from llmd.models.catalog import ModelSpec
from llmd.hub.download import DownloadError, Progress
from llmd.memory.devices import process_resident
from llmd.memory.gguf_meta import GGUFError, read_info
from llmd.models.catalog import file_identity
from llmd.errors import ModelFailed
from llmd.models.model import DeviceTable, Failure, Model, NeedSource

log = logging.getLogger("llmd.prepare")

_PROGRESS_EVERY = 0.25  # seconds between samples of a download's bytes
# llama-server's fit and its settings: an operator who sets any of them wants the fit.
_FIT_FLAGS = {"-fit", "--fit", "-fitt", "--fit-target", "-fitc", "--fit-ctx"}


async def download(model: Model, hub: Any, publish: Callable[[dict[str, Any]], None],
                   progressed: Callable[[Model], None] = lambda model: None) -> None:
    """Fetch a hub model into the cache and point its spec at the files; raises ModelFailed.

    A download cancelled on purpose (model.discard_partial) removes its partial files; any
    other cancel keeps them, for the next fetch to resume with Range.
    """
    name = model.spec.name
    if hub is None:
        raise ModelFailed(name, f"{model.spec.hf} is not in the cache and llmd is offline")
    model.progress = Progress()
    log.info("%s: downloading %s", name, model.spec.hf)
    error: DownloadError | None = None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_report_progress, model, progressed)
        try:
            path, mmproj = await hub.fetch(model.spec.hf, model.progress)
        except DownloadError as exc:  # caught here, not wrapped in an ExceptionGroup
            error = exc
        except trio.Cancelled:
            # Unloaded, or its last waiter left: nobody wants the bytes. A stop of llmd
            # (SIGTERM, restart) leaves discard_partial False and the partial to resume.
            if model.discard_partial:
                for part in hub.discard_partial(model.spec.hf):
                    log.info("%s: download cancelled; removed %s", name, part)
            raise
        nursery.cancel_scope.cancel()
    if error is not None:
        log.error("%s: download failed: %s", name, error)
        model.failure = Failure(f"download failed: {error}", None, [])
        publish({"model": name, "event": "download_failed", "data": {"error": str(error)}})
        raise ModelFailed(name, f"download failed: {error}")
    log.info("%s: downloaded to %s", name, path)
    publish({"model": name, "event": "download_finished", "data": {"path": path}})
    model.spec = dataclasses.replace(model.spec, path=path, mmproj=mmproj)


async def _report_progress(model: Model, progressed: Callable[[Model], None]) -> None:
    # The hub writes bytes into model.progress as they arrive; this samples them.
    while True:
        await trio.sleep(_PROGRESS_EVERY)
        p = model.progress
        if model.load is not None:
            model.load.downloaded(p.done, p.total, p.rate(trio.current_time()))
        progressed(model)


# path -> (file identity, its header, or None when unreadable)
_headers: dict[str, tuple[tuple[int, ...] | None, dict[str, Any] | None]] = {}


def header_known(path: str) -> bool:
    """Whether header(path) would answer from what it has read (no file read)."""
    cached = _headers.get(path)
    return cached is not None and cached[0] == file_identity(path)


def header(path: str) -> dict[str, Any] | None:
    """The model file's whole header (gguf_meta.read_info), read once per file version
    (~20 ms); None when there is no readable file."""
    identity = file_identity(path)
    cached = _headers.get(path)
    if cached is None or cached[0] != identity:
        try:
            found = read_info(path) if identity is not None else None
        except GGUFError:
            found = None
        cached = _headers[path] = (identity, found)
    return cached[1]


def sliding_window(path: str) -> bool:
    """Whether the model file's attention uses a sliding window (Gemma 3, ...); False when
    its header is unreadable."""
    values = (header(path) or {}).get("values", {})
    return any(k.endswith(".attention.sliding_window") and v for k, v in values.items())


def kept_cache_args(model: Model) -> tuple[str, ...]:
    """What keeping the prompt cache adds to the child's arguments: where it saves slots,
    and a full-size cache for sliding-window layers. Without --swa-full a restored slot of
    such a model (Gemma 3) is processed again in full: its window's checkpoints are not in
    the file."""
    if model.slot_dir is None:
        return ()
    swa = () if "--swa-full" in model.spec.args else ("--swa-full",)
    return ("--slot-save-path", model.slot_dir, *swa)


async def estimate(model: Model, estimator: NeedSource) -> None:
    """Record what the model will need per device; none if it can't be told."""
    spec = model.spec
    if model.slot_dir is not None and "--swa-full" not in spec.args:  # it costs memory
        spec = dataclasses.replace(spec, args=(*spec.args, "--swa-full"))
    try:
        need = await estimator.need(spec)
        model.need, model.need_source = dict(need.mib), need.source
    except Exception as exc:  # the child itself will say what is wrong with the file
        log.warning("%s: no memory estimate (%s); loading without one", model.spec.name, exc)
        model.need, model.need_source = {}, "none"


def launch_spec(model: Model, look: bool = True) -> ModelSpec:
    """The spec to start the child with: no second fit when llama.cpp's estimate admitted it,
    the prompt cache admission booked, and llmd's chat template for a GGUF without one."""
    spec = model.spec
    # llama-server fits its arguments to free memory before loading, unless told not to:
    # a dry-run load of the whole model, about half of a cold start. llama-fit-params
    # estimated these arguments as given (--fit-print does not fit them) and admission
    # made room for that much, so a second fit would find nothing to shrink. The
    # operator's own --fit settings stay in charge.
    extra: tuple[str, ...] = ()
    if model.need_source == "llama-fit-params" and not _FIT_FLAGS & set(spec.args):
        extra += ("--fit", "off")
    extra += kept_cache_args(model)
    if model.cache_ram is not None:  # the prompt cache admission booked (prompt_cache.py)
        extra += ("--cache-ram", str(model.cache_ram))
    # Read once per file (chat_template caches it): ~20 ms for Gemma 3's vocabulary.
    extra += chat_template.template(spec, look).args
    return dataclasses.replace(spec, args=(*spec.args, *extra)) if extra else spec


def model_bytes(spec: ModelSpec) -> int:
    """The size of the model's files on disk: the model file and its projector."""
    total = 0
    for path in (spec.path, spec.mmproj):
        if path:
            try:
                total += os.stat(path).st_size
            except OSError:
                pass
    return total


def expected_mib(spec: ModelSpec) -> int:
    """What a loaded child holds of its model: its files, in MiB."""
    return model_bytes(spec) >> 20


def resident_mib(pid: int, devices: DeviceTable | None) -> int | None:
    """How much of its model a loading child holds: its resident host memory, or what it
    holds on its GPUs where that is more (weights copied there). None once it is gone."""
    host = process_resident(pid)
    if host is None:
        return None
    gpus = devices.process_use(pid) if devices is not None else {}
    return max(host, sum(v for k, v in gpus.items() if k != "host"))


def measure(model: Model, devices: DeviceTable) -> None:
    """Record what the model's child uses per device now.

    The scheduler stamps model.measured_at when it decides to measure, for this and for
    measure_in_thread() alike.
    """
    if model.handle is not None:
        model.measured = devices.process_use(model.handle.pid)


async def measure_in_thread(model: Model, devices: DeviceTable) -> None:
    """measure(), off the event loop: smaps_rollup takes ~3 ms to read for llama-server."""
    handle, attempt = model.handle, model.attempt
    if handle is None:
        return
    use = await trio.to_thread.run_sync(devices.process_use, handle.pid)
    if model.attempt == attempt and model.handle is handle:
        model.measured = use
