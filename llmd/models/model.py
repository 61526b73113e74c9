"""The books on one model, and what the scheduler needs of children, devices and estimates."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Iterable, Protocol

import trio

from llmd.memory import books
from llmd.models.catalog import ModelSpec
from llmd.errors import LlmdError
from llmd.memory.devices import Device
from llmd.models.progress import Progress
from llmd.models.state import State


class Handle(Protocol):
    """What the scheduler needs of a running child."""

    pid: int
    port: int
    base_url: str
    lines_total: int  # output lines printed so far
    slots: int | None  # requests it serves at once (llama-server's total_slots), if known
    n_ctx: int | None  # the context one request gets (llama-server's n_ctx), if known

    def tail(self, n: int = 20) -> list[str]: ...

    async def wait_activity(self) -> None: ...


class Exit(Protocol):
    """How a child's run ended (child.Exit, or a fake's)."""

    @property
    def code(self) -> int | None: ...

    @property
    def reason(self) -> str: ...

    @property
    def tail(self) -> list[str]: ...

    @property
    def ready(self) -> bool: ...


class Launcher(Protocol):
    """Runs a child for `spec` until it exits; cancelling it stops the child. It calls
    `on_spawn(pid)` once the process exists and `on_ready(handle)` once it serves."""

    def __call__(self, spec: ModelSpec, on_ready: Callable[[Handle], None],
                 on_spawn: Callable[[int], None]) -> Awaitable[Exit]: ...


class DeviceTable(Protocol):
    """Where memory is read: memory.Devices, or a stub in tests."""

    def read(self) -> list[Device]: ...

    def process_use(self, pid: int) -> dict[str, int]: ...

    def add_back(self, pids: Iterable[int]) -> dict[int, dict[str, int]]: ...


class NeedSource(Protocol):
    """Where a model's need per device comes from: estimate.Estimator, or a stub."""

    async def need(self, spec: ModelSpec) -> Any: ...


@dataclass
class Failure:
    """Why the last load or run of a model ended badly."""

    reason: str
    exit_code: int | None
    tail: list[str]


@dataclass
class Model:
    """The scheduler's books on one model. Only the scheduler writes these."""

    spec: ModelSpec
    state: State = State.UNLOADED
    handle: Handle | None = None
    leases: int = 0
    waiters: int = 0
    keep: bool = False  # loaded on purpose (llmctl, startup): waiters leaving don't cancel it
    last_used: float = -math.inf
    loaded_at: float | None = None
    failure: Failure | None = None
    attempt: int = 0
    error: tuple[int, LlmdError] | None = None  # (attempt, what its waiters get)
    scope: trio.CancelScope | None = None
    changed: trio.Event = field(default_factory=trio.Event)
    # Each request in flight: its scope (cancelled by a forced unload) and when it began.
    lease_scopes: dict[trio.CancelScope, float] = field(default_factory=dict)
    request_seconds: float | None = None  # how long its requests take, smoothed (waits.py)
    load_seconds: float | None = None  # how long its child takes to load, smoothed
    # Seconds its child would take to process its slots' prompts again after an eviction
    # that does not keep them, as last read (residency.py), and when that was read.
    prompt_seconds: float = 0.0
    prompt_read_at: float = -math.inf
    loading_since: float | None = None  # when its child was started, while it loads
    output: list[str] = field(default_factory=list)  # the last child's output, kept after it ends
    need: dict[str, int] = field(default_factory=dict)  # MiB per device, estimated
    need_source: str = ""
    growth: dict[str, int] = field(default_factory=dict)  # MiB per device booked to grow into
    cache_ram: int | None = None  # the --cache-ram llmd passes its child (None: none)
    measured: dict[str, int] = field(default_factory=dict)  # MiB per device, once loaded
    measured_at: float = -math.inf
    activity: trio.Event = field(default_factory=trio.Event)  # set when a lease starts or ends
    progress: Any = None  # download.Progress while (and after) downloading
    load: Progress | None = None  # how far the current (or last) load has come
    progress_sent: float = -math.inf  # when its last in-step progress event went out
    pull_only: bool = False  # this attempt downloads and stops (llmctl pull)
    evicting: bool = False  # draining because a queued load needs its room (not an unload)
    pulled: int = 0  # the attempt whose pull completed
    discard_partial: bool = False  # its download was cancelled on purpose: drop the partial
    file_id: tuple[int, ...] | None = None  # the model file's identity when its child started
    started_args: tuple[str, ...] = ()  # the arguments its child started with (child_args)
    failed_load: tuple[object, LlmdError] | None = None  # (what it depended on, its error)
    keep_alive: float | None = None  # a client's idle time to keep it (Ollama); None: ttl
    slot_dir: str | None = None  # where its child saves slots (keep_prompt_cache), if it does
    expiring: int = 0  # the attempt whose idle expiry is being watched
    stopper: int = 0  # the attempt a stop-once-drained task is running for

    def idle_limit(self) -> float:
        """Seconds idle before it is unloaded; 0 for never (a ttl of 0, a keep_alive < 0)."""
        if self.keep_alive is None:
            return self.spec.ttl
        return self.keep_alive if self.keep_alive > 0 else 0.0

    def holding(self) -> books.Holding:
        """This model's figures for the books."""
        return books.Holding(self.need, self.growth, self.measured)

    def booked(self) -> dict[str, int]:
        """What the books hold for this model per device, in MiB."""
        return self.holding().booked()
