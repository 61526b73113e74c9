"""The scheduler: the one owner of model state, leases, loads and unloads.

When a load may start, and which running model makes room for it, is admission.py's to
decide; the scheduler carries its evictions out.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections import Counter
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Awaitable, Callable

import trio

from llmd.children.upstream import Upstream
from llmd.models import idle, prepare, reporting, waits
from llmd.api import status
from llmd.models.admission import Admission
from llmd.hub.download import DownloadError, parse_ref
from llmd.models.catalog import ModelSpec, file_identity, names
from llmd.models.events import Broker
from llmd.errors import (BadRequest, LlmdError, ModelFailed, ModelNotFound, ModelNotLoaded,
                         ModelUnloaded, NotFound, NotSoon, QueueFull)
from llmd.models.model import DeviceTable, Failure, Handle, Launcher, Model, NeedSource
from llmd.models.progress import Progress, Queue
from llmd.models.prompt_keeping import PromptKeeping
from llmd.models.state import RUNNING, STARTING, State, check

log = logging.getLogger("llmd.scheduler")


def _is_hub_ref(name: str) -> bool:
    try:
        parse_ref(name)
    except DownloadError:
        return False
    return True

UNLOADED, DOWNLOADING, ESTIMATING, QUEUED, LOADING, LOADED, DRAINING = (
    State.UNLOADED, State.DOWNLOADING, State.ESTIMATING, State.QUEUED, State.LOADING,
    State.LOADED, State.DRAINING)
_MEASURE_EVERY = 2.0  # seconds between measurements of a child's real use


class Scheduler:
    """Loads models on demand, hands out leases, unloads them when asked or evicted."""

    def __init__(
        self,
        specs: dict[str, ModelSpec],
        launcher: Launcher,
        *,
        models_max: int = 4,
        drain_timeout: float = 600,
        min_residency: float = 0,
        devices: DeviceTable | None = None,
        estimator: NeedSource | None = None,
        hub: Any = None,
        default_args: tuple[str, ...] = (),
        allow_pull: bool = False,
        cache_ram_mib: int = 0,
        max_queue: int = 512,
        max_wait: float = -1,
        slot_files: Any = None,
        keep_prompt_cache: bool = False,
        binary: Callable[[], object] = lambda: None,
        resident: Callable[[int], int | None] | None = None,
        upstream: Upstream | None = None,
    ) -> None:
        self.models = {name: Model(spec) for name, spec in specs.items()}
        self._names = names(specs)
        self._launcher = launcher
        self.devices = devices  # None: count models only, no memory accounting
        self.admission = Admission(self.models, devices, evict=self._unload, drain=self._drain,
                                   undrain=self._undrain, models_max=models_max,
                                   min_residency=min_residency, drain_timeout=drain_timeout,
                                   cache_ram_mib=cache_ram_mib, waiting=self._queued,
                                   weigh=lambda m: self.prompts.weigh(m))
        self.estimator = estimator
        self.hub = hub  # download.Hub, or None when offline
        self.default_args = default_args  # for hub models named in a request or llmctl
        self.allow_pull = allow_pull  # may router requests name hub models not configured?
        self.max_queue = max_queue  # requests that may wait for one model (waits.waiting)
        self.max_wait = max_wait  # seconds a request may wait for its model; < 0: no bound
        # keep_prompt_cache: slot_cache.SlotFiles keeps the files, upstream asks children.
        self.prompts = PromptKeeping(slot_files, keep_prompt_cache, upstream)
        self.loads = 0
        self.failures: Counter[str] = Counter()  # "load", "download", "crash"
        self.closing = False  # llmd is shutting down: requests in flight finish, no new work
        self.stopping = False  # set by end_requests(): llmd is shutting down
        self.binary = binary  # the llama-server build's identity: a new one may load what failed
        self._nursery: trio.Nursery | None = None
        self.events = Broker()
        # MiB a loading child holds of its model, by pid: its progress (prepare.resident_mib).
        self.resident = resident or (lambda pid: prepare.resident_mib(pid, self.devices))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the nursery every model's supervisor runs in; on cancel, stop them all."""
        self._prune_prompt_caches()  # files replaced while llmd was not running
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for model in self.models.values():
                if model.spec.load_on_startup:
                    self._start(model, keep=True)
            task_status.started()
            await trio.sleep_forever()

    # ---- lookups --------------------------------------------------------------

    def resolve(self, name: str, *, status: int = 404, pull: bool = False) -> Model:
        """The model a name or alias refers to; with `pull`, an owner/repo:QUANT becomes one."""
        canonical = self._names.get(name)
        if canonical is not None:
            return self.models[canonical]
        if pull and self.hub is None and _is_hub_ref(name):
            raise ModelNotFound(name, status=status, why=(
                "is not in the hub cache, and llmd is offline (offline = true or "
                "HF_HUB_OFFLINE=1): it would otherwise be downloaded"))
        if pull and self.hub is not None:
            try:
                parse_ref(name)
            except DownloadError:
                raise ModelNotFound(name, status=status) from None
            cached = self.hub.cached(name) or ("", "")
            spec = ModelSpec(name=name, path=cached[0], mmproj=cached[1], hf=name,
                             args=self.default_args, source="pull")
            self.models[name] = Model(spec)
            self._names[name] = name
            log.info("%s: added as a hub model", name)
            return self.models[name]
        raise ModelNotFound(name, status=status)

    # ---- leases ---------------------------------------------------------------

    @asynccontextmanager
    async def lease(self, name: str, *, autoload: bool = True,
                    max_wait: float | None = None) -> AsyncIterator[Handle]:
        """Hold a ready model for one request; it can't be evicted until the block exits.

        Raises QueueFull when max_queue requests wait for the model already, and NotSoon
        when it won't be ready within `max_wait` seconds (else the model's or llmd's
        max_wait; negative: no bound).
        """
        model = self.resolve(name, status=400, pull=self.allow_pull)
        self._check_queue(model)
        if max_wait is None:
            max_wait = model.spec.max_wait if model.spec.max_wait is not None else self.max_wait
        await self._until_loaded(model, autoload=autoload, max_wait=max_wait)
        assert model.handle is not None
        model.leases += 1
        model.last_used = started = trio.current_time()
        self._touch(model)
        with trio.CancelScope() as scope:
            model.lease_scopes[scope] = started
            try:
                yield model.handle
            finally:
                del model.lease_scopes[scope]
                model.leases -= 1
                model.last_used = trio.current_time()
                model.request_seconds = waits.smooth(model.request_seconds,
                                                     model.last_used - started)
                self._touch(model)
                if model.last_used - model.measured_at >= _MEASURE_EVERY:
                    model.measured_at = model.last_used
                    if self.devices is not None:
                        self._nursery_start(prepare.measure_in_thread, model, self.devices)
                self.admission.freed()
        if scope.cancelled_caught:
            raise ModelUnloaded(model.spec.name,
                                "stopped: llmd is shutting down" if self.stopping else
                                "was unloaded")

    def _check_queue(self, model: Model) -> None:
        """Refuse a request at once when max_queue requests wait for the model already."""
        limit = model.spec.max_queue if model.spec.max_queue is not None else self.max_queue
        queued = waits.waiting(model)
        if model.state == UNLOADED:
            return  # it starts the load; the requests after it queue behind it
        if model.state == LOADED and model.handle is not None and (
                model.handle.slots is None or model.leases < model.handle.slots):
            return  # a free slot (or llmd can't tell): served at once, waits for nothing
        if queued >= limit:
            now = trio.current_time()
            wait = waits.queue_wait(model, self.models, self.admission.residency, now)
            raise QueueFull(model.spec.name, queued, waits.retry_after(wait))

    def end_requests(self) -> None:
        """Cancel every request in flight, for a shutdown that can wait no longer."""
        self.stopping = True
        for model in self.models.values():
            for scope in list(model.lease_scopes):
                scope.cancel()

    async def _until_loaded(self, model: Model, *, autoload: bool, keep: bool = False,
                            max_wait: float = -1) -> None:
        attempt = None
        bounded = max_wait >= 0
        deadline = trio.current_time() + max_wait if bounded else math.inf
        model.waiters += 1
        try:
            while model.state != LOADED:
                if model.state == UNLOADED:
                    if attempt is not None and model.pulled == attempt:
                        attempt = None  # that was a pull (download only): now load it
                    elif attempt is not None:
                        raise self._outcome(model, attempt)
                    if not autoload:
                        raise ModelNotLoaded(model.spec.name)
                    if not keep and (failed := self._failed_before(model)) is not None:
                        raise failed
                    attempt = self._start(model, keep=keep)
                elif model.state in STARTING:
                    attempt = model.attempt
                if bounded:
                    self._within(model, deadline)
                # A bounded wait also wakes for progress: where the load queues, and why.
                load = model.load
                changed = (load.changed if bounded and load is not None and not load.ended
                           else model.changed)
                with trio.move_on_at(deadline):
                    await changed.wait()
        except (trio.Cancelled, NotSoon):
            if (model.waiters == 1 and not model.keep and model.state in STARTING
                    and model.scope is not None):
                log.info("%s: last waiting client left; cancelling its load", model.spec.name)
                # Nobody wants it: its partial download goes. Unless llmd is stopping, which
                # cancels waiting requests too: then the partial stays, to resume.
                model.discard_partial = not self.stopping
                model.scope.cancel()
            raise
        finally:
            model.waiters -= 1

    def _within(self, model: Model, deadline: float) -> None:
        """Raise NotSoon when the model won't be ready by `deadline`, as far as llmd can
        tell (or it has passed)."""
        now = trio.current_time()
        found = waits.expected(model, self.models, self.admission.residency, now)
        if found is not None and found[0] > deadline - now:
            raise NotSoon(model.spec.name, f"{found[1]}; likely ready in {found[0]:.0f}s",
                          waits.retry_after(found[0]))
        if now >= deadline:
            raise NotSoon(model.spec.name, "not ready in time",
                          waits.retry_after(found[0] if found else None))

    def _outcome(self, model: Model, attempt: int) -> LlmdError:
        if model.error is not None and model.error[0] == attempt:
            return model.error[1]
        return ModelUnloaded(model.spec.name)

    def _load_key(self, model: Model) -> tuple[object, ...]:
        """What a failed load depends on: the file, the model's configuration, the binary."""
        return (file_identity(model.spec.path), model.spec, self.binary())

    def _failed_before(self, model: Model) -> LlmdError | None:
        """The error of the model's last load, if it failed and nothing has changed since."""
        if model.failed_load is None:
            return None
        key, error = model.failed_load
        if key != self._load_key(model):
            model.failed_load = None
            return None
        return error

    # ---- load, unload ---------------------------------------------------------

    async def load(self, name: str, *, wait: bool = True) -> Model:
        """Load a model on purpose (not cancelled when requests leave); wait until loaded."""
        model = self.resolve(name, pull=True)
        model.keep = True
        model.failed_load = None  # asked again on purpose: try again
        if model.state == UNLOADED:
            self._start(model, keep=True)
        if wait:
            await self._until_loaded(model, autoload=True, keep=True)
        return model

    async def pull(self, name: str, *, wait: bool = True) -> Model:
        """Download a hub model without loading it; return at once if it is on disk."""
        model = self.resolve(name, pull=True)
        if not model.spec.hf or os.path.exists(model.spec.path):
            return model
        if model.state == UNLOADED:
            model.pull_only = True
            attempt = self._start(model, keep=True)
        elif model.state == DOWNLOADING:
            attempt = model.attempt  # a second pull joins the first
        else:
            return model
        while wait and model.state != UNLOADED:
            await model.changed.wait()
        if wait and model.pulled != attempt:
            raise self._outcome(model, attempt)
        return model

    async def unload(self, name: str, *, force: bool = False, wait: bool = True) -> Model:
        """Stop a model: cancel its load, or let its leases drain (or cancel them with force)."""
        return await self._unload(self.resolve(name), force=force, wait=wait)

    async def _unload(self, model: Model, *, force: bool = False, wait: bool = True) -> Model:
        model.evicting = False  # an unload asked for stays asked for
        # Unloaded while downloading: asked for, so its partial download goes. A stop of
        # llmd (SIGTERM, restart, crash) keeps it, to resume.
        model.discard_partial = model.state == DOWNLOADING
        if model.state == UNLOADED:
            return model
        if model.state == LOADED:
            self._set(model, DRAINING)
        if force:
            for scope in list(model.lease_scopes):
                scope.cancel()
        if model.scope is not None:
            if model.state == DRAINING:  # (it may save its prompt cache first)
                if model.stopper != model.attempt:  # one such task per run is enough
                    self._nursery_start(self._stop_when_drained, model)
            else:
                self._stop(model)
        # Wait for this run to end, not for the state to read "unloaded": requests queued
        # for the model may start its next load before this task runs again.
        attempt = model.attempt
        while wait and model.state != UNLOADED and model.attempt == attempt:
            await model.changed.wait()
        return model

    async def delete(self, name: str) -> list[str]:
        """Unload a hub model and remove its files from the cache; the files removed.

        Raises BadRequest for a model that is not from a hub, NotFound when its files are
        not in the cache.
        """
        model = self.resolve(name)
        if not model.spec.hf:
            raise BadRequest(f"model '{model.spec.name}' is not a hub model in llmd's cache; "
                             "only those can be deleted")
        if self.hub is None:
            raise BadRequest("llmd is offline (offline = true or HF_HUB_OFFLINE=1): its hub "
                             "cache is left alone")
        await self._unload(model)
        try:
            removed = [str(p) for p in self.hub.delete(model.spec.hf)]
        except DownloadError as exc:
            raise NotFound(str(exc)) from None
        log.info("%s: deleted from the cache (%d files)", model.spec.name, len(removed))
        model.spec = dataclasses.replace(model.spec, path="", mmproj="")
        if model.spec.source != "config" and model.state == UNLOADED:  # gone for good
            self.models.pop(model.spec.name, None)
            self._names = {k: v for k, v in self._names.items() if v != model.spec.name}
            self.events.publish({"model": model.spec.name, "event": "model_remove"})
        return removed

    async def _stop_when_drained(self, model: Model) -> None:
        model.stopper = attempt = model.attempt
        try:
            await self._stop_once_drained(model)
        finally:
            if model.stopper == attempt:
                model.stopper = 0

    async def _stop_once_drained(self, model: Model) -> None:
        while model.leases and model.state == DRAINING:
            await self.admission.wait_freed()
        if model.state != DRAINING or model.scope is None:
            return
        handle = model.handle
        named = self._names.get(model.spec.name) == model.spec.name  # not being retired
        if named and handle is not None and not model.scope.cancel_called:
            # Bounded (slot_cache.SAVE_BOUND): a load waiting for this room waits no longer.
            await self.prompts.save(model, handle)
            if model.state != DRAINING or model.scope is None:
                return  # room was found elsewhere meanwhile: it serves on
        self._stop(model)

    def _prune_prompt_caches(self) -> None:
        """Drop the prompt caches kept for models gone or changed (prompt_keeping.py)."""
        self.prompts.prune(m for n, m in self.models.items() if self._names.get(n) == n)

    def _stop(self, model: Model) -> None:
        """Stop the model's child, or its load, noting what memory it leaves to release."""
        assert model.scope is not None
        releases = self.admission.releases
        if releases is not None and model.handle is not None and not model.scope.cancel_called:
            releases.stopping(model.spec.name, model.handle.pid)
        model.scope.cancel()

    def _nursery_start(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        if self._nursery is None:
            raise RuntimeError("scheduler is not running")
        self._nursery.start_soon(fn, *args)

    def _start(self, model: Model, *, keep: bool) -> int:
        model.attempt += 1
        model.keep = model.keep or keep
        model.error = None
        # Created here, entered by _supervise: an unload before it runs still cancels it.
        model.scope = trio.CancelScope()
        if model.spec.hf and not os.path.exists(model.spec.path):
            first = DOWNLOADING
        else:
            first = ESTIMATING if self.devices is not None else QUEUED
        model.load = Progress(downloads=first is DOWNLOADING, pull=model.pull_only)
        self.events.publish({"model": model.spec.name, "event": "model_status",
                             "data": {"status": first.wire}})
        self._set(model, first)
        self._nursery_start(self._supervise, model, model.attempt)
        return model.attempt

    async def _supervise(self, model: Model, attempt: int) -> None:
        assert model.scope is not None
        with model.scope as scope:
            try:
                if model.spec.hf and not os.path.exists(model.spec.path):
                    try:
                        await prepare.download(model, self.hub, self.events.publish, self.progressed)
                    except ModelFailed:
                        self.failures["download"] += 1
                        raise
                if model.pull_only:
                    model.pulled = attempt
                    if model.load is not None:
                        model.load.enter("downloaded")
                else:
                    await self._run_child(model, attempt)
            except LlmdError as exc:
                model.error = (attempt, exc)
            finally:
                if model.handle is not None:
                    model.output = model.handle.tail(1 << 20)
                    if self.admission.releases is not None:
                        self.admission.releases.exited(model.handle.pid)
        model.scope = None
        model.pull_only = False
        model.discard_partial = False
        model.handle = None
        model.measured = {}
        model.prompt_seconds, model.prompt_read_at = 0.0, -math.inf
        model.growth, model.cache_ram = {}, None
        model.keep_alive = None  # a client's keep_alive lasts as long as this run
        model.loaded_at = None
        model.keep = False
        if scope.cancelled_caught:
            log.info("%s: unloaded", model.spec.name)
        self._set(model, UNLOADED)

    async def _run_child(self, model: Model, attempt: int) -> None:
        """Estimate, get admitted, run the child until it exits; record how it ended."""
        name = model.spec.name
        model.file_id = file_identity(model.spec.path)
        model.started_args = model.spec.child_args()
        model.slot_dir = self.prompts.slot_dir(model)
        if self.devices is not None:
            assert self.estimator is not None
            await prepare.estimate(model, self.estimator)
            self._set(model, QUEUED)
        await self.admission.admit(model)
        self._set(model, LOADING)
        model.loading_since = trio.current_time()
        self.loads += 1
        log.info("%s: loading", name)
        result = await self._launcher(
            prepare.launch_spec(model), lambda h: self._ready(model, h),
            lambda pid: self._nursery_start(reporting.watch_load, model, attempt, pid,
                                            self.resident, self.progressed))
        if result.ready:
            log.warning("%s: %s", name, result.reason)
            if result.code not in (0, None):
                self.failures["crash"] += 1
        else:
            log.error("%s: failed to load: %s", name, result.reason)
            self.failures["load"] += 1
            model.error = (attempt, ModelFailed(name, result.reason))
            model.failed_load = (self._load_key(model), ModelFailed(name, (
                f"{result.reason} (at its last try; llmd tries again when its file, its "
                f"configuration or llama-server changes, on llmctl load {name}, "
                "POST /models/load or a reload)")))
        if not result.ready or result.code not in (0, None):
            model.failure = Failure(result.reason, result.code, result.tail)
        model.output = result.tail

    def _ready(self, model: Model, handle: Handle) -> None:
        model.handle = handle
        model.failure = None
        model.loaded_at = trio.current_time()
        if model.loading_since is not None:
            model.load_seconds = waits.smooth(model.load_seconds,
                                              model.loaded_at - model.loading_since)
            model.loading_since = None
        model.last_used = model.loaded_at
        if self.devices is not None:
            model.measured_at = model.loaded_at
            prepare.measure(model, self.devices)
        if model.slot_dir is not None:  # started with a save path: restore what it saved
            self._nursery_start(self._restore_then_serve, model, model.attempt, handle)
        else:
            self._serve(model)

    def _serve(self, model: Model) -> None:
        assert model.handle is not None
        log.info("%s: loaded (pid %d, port %d)", model.spec.name, model.handle.pid,
                 model.handle.port)
        self._set(model, LOADED)
        self._watch_idle(model)

    async def _restore_then_serve(self, model: Model, attempt: int, handle: Handle) -> None:
        """Restore the model's saved prompt cache before its first request is let in."""
        await self.prompts.restore(model, handle)
        if model.attempt == attempt and model.handle is handle and model.state == LOADING:
            self._serve(model)

    def _touch(self, model: Model) -> None:
        model.activity.set()
        model.activity = trio.Event()

    def _watch_idle(self, model: Model) -> None:
        """Unload the model once idle for its limit (ttl or keep_alive), if it has one."""
        if model.idle_limit() > 0 and model.expiring != model.attempt and model.state == LOADED:
            model.expiring = model.attempt
            self._nursery_start(idle.expire, model, model.attempt, self._unload)

    def keep_alive(self, name: str, seconds: float | None) -> None:
        """A client's keep_alive (Ollama's): unload the model once idle for `seconds`; 0
        once its requests are done; negative, never; None, after its configured ttl."""
        model = self.resolve(name)
        model.keep_alive = seconds
        self._touch(model)  # a watcher waiting on activity reads the new limit
        if seconds == 0 and model.state == LOADED:
            self._nursery_start(self._unload, model)
        else:
            self._watch_idle(model)

    def _drain(self, model: Model) -> None:
        """Admission needs this busy model's room: stop it once its requests are done."""
        model.evicting = True
        self._set(model, DRAINING)
        if model.stopper != model.attempt:
            self._nursery_start(self._stop_when_drained, model)

    def _undrain(self, model: Model) -> None:
        """Admission found room elsewhere: a model drained for it serves again, unless it
        drained meanwhile and its child is already stopping."""
        stopping = model.scope is None or model.scope.cancel_called
        if model.evicting and model.state == DRAINING and not stopping:
            model.evicting = False
            self._set(model, LOADED)

    # ---- reload ---------------------------------------------------------------

    def update(self, specs: dict[str, ModelSpec], *, models_max: int, drain_timeout: float,
               min_residency: float = 0, cache_ram_mib: int | None = None
               ) -> dict[str, list[str]]:
        """Take a new catalog: add models, retire removed ones, restart changed ones when idle."""
        self.admission.models_max = models_max
        self.admission.drain_timeout = drain_timeout
        self.admission.min_residency = min_residency
        if cache_ram_mib is not None:
            self.admission.cache_ram_mib = cache_ram_mib
        added: list[str] = []
        removed: list[str] = []
        changed: list[str] = []
        for known in self.models.values():  # a reload is asking again
            known.failed_load = None
        for name, spec in specs.items():
            model = self.models.get(name)
            if model is None:
                self.models[name] = Model(spec)
                added.append(name)
                continue
            # A file replaced or deleted under a running child: the next run must use what
            # is there now (or fail saying it is gone), not what was mapped.
            replaced = self._file_replaced(model, spec)
            if model.spec != spec or replaced:
                restart = model.state != UNLOADED and (
                    replaced or model.spec.child_args() != spec.child_args())
                model.spec = spec
                changed.append(name)
                if restart:
                    self._nursery_start(self._restart_when_idle, model)
        for name in [n for n in self.models
                     if n not in specs and self.models[n].spec.source != "pull"]:
            removed.append(name)
            self._nursery_start(self._retire, self.models[name])
        # Retired models can no longer be named by new requests; pulled ones stay.
        self._names = names(specs) | {n: n for n, m in self.models.items()
                                      if m.spec.source == "pull"}
        self._prune_prompt_caches()
        self.events.publish({"model": "*", "event": "models_reload",
                       "data": {"added": added, "removed": removed, "changed": changed}})
        return {"added": added, "removed": removed, "changed": changed}

    @staticmethod
    def _file_replaced(model: Model, spec: ModelSpec) -> bool:
        return model.state in RUNNING and model.file_id != file_identity(spec.path)

    async def _retire(self, model: Model) -> None:
        await self._unload(model)
        if self._names.get(model.spec.name) is None:
            self.models.pop(model.spec.name, None)
            self.events.publish({"model": model.spec.name, "event": "model_remove"})

    async def _restart_when_idle(self, model: Model) -> None:
        """Unload once its requests are done, then load again with the new arguments."""
        keep = model.keep
        await self._unload(model)
        log.info("%s: restarting with its new arguments", model.spec.name)
        if self._names.get(model.spec.name) == model.spec.name and model.state == UNLOADED:
            self._start(model, keep=keep)

    # ---- state and events -----------------------------------------------------

    def _set(self, model: Model, state: State) -> None:
        """The one place a model's state changes; raises IllegalTransition."""
        check(model.spec.name, model.state, state)
        old, model.state = model.state, state
        model.changed.set()
        model.changed = trio.Event()
        if state == UNLOADED:  # room freed: wake a load waiting for it
            model.evicting = False
            self.admission.freed()
        data = status.event_data(self.describe(model)["status"])
        reporting.on_state_change(model, old, data)
        self.events.publish({"model": model.spec.name, "event": "status_change", "data": data})

    def _queued(self, model: Model, queue: Queue) -> None:
        """Admission moved the model in its queue: a change worth an event at once."""
        if model.load is not None and model.load.queue != queue:
            model.load.queued(queue)
            reporting.in_step(self.events, model, now=True)

    def progressed(self, model: Model) -> None:
        """Publish how far the model's load has come within its step (rate-bounded)."""
        reporting.in_step(self.events, model)

    def subscribe(self, buffer: int = 256) -> trio.MemoryReceiveChannel[dict[str, Any]]:
        """A channel of state-change events; it is closed if its reader falls behind."""
        return self.events.subscribe(buffer)

    def describe(self, model: Model) -> dict[str, Any]:
        """One model in the llama.cpp router's /models shape, plus llmd's own fields."""
        return status.describe(model, model.state.wire, trio.current_time(),
                               self.prompts.kept(model))

    def listed(self, model: Model) -> bool:
        """Whether requests can name the model (a reload may have retired it)."""
        return self._names.get(model.spec.name) == model.spec.name

    def snapshot(self) -> list[dict[str, Any]]:
        """Every model that requests can name, described."""
        return [self.describe(m) for m in self.models.values() if self.listed(m)]

