"""Admission: loads start one at a time, first come first served, once there is room.

A model may start when the models running beside it stay within models_max and, where
memory is accounted, within every device's budget. Until then idle models are evicted,
lowest priority and least recently used first (eviction.victim). When only busy ones
are left, one is drained for the load: its requests in flight finish, and those that
arrive meanwhile queue behind the load instead of keeping it busy for ever.
"""

from __future__ import annotations

import logging
from typing import Awaitable, Callable, Mapping

import trio

from . import books, eviction
from .errors import NoRoom
from .model import DeviceTable, Model

log = logging.getLogger("llmd.admission")

RUNNING = ("loading", "loaded", "draining")  # admitted: these count against the limits


class Admission:
    """Decides when a load may start, and which running models make room for it.

    The scheduler owns every model's state; admission reads it, and changes it only
    through the three callables it is given: `evict` unloads an idle model, `drain`
    lets a busy one finish its requests and then stop, `undrain` has a drained model
    that was not needed after all serve again.
    """

    def __init__(self, models: Mapping[str, Model], devices: DeviceTable | None, *,
                 evict: Callable[[Model], Awaitable[object]],
                 drain: Callable[[Model], None], undrain: Callable[[Model], None],
                 models_max: int = 4, min_residency: float = 0,
                 drain_timeout: float = 600) -> None:
        self.models = models
        self.devices = devices  # None: count models only, no memory accounting
        self.models_max = models_max
        self.min_residency = min_residency  # seconds a loaded model serves before eviction
        self.drain_timeout = drain_timeout
        self.evictions = 0
        self._evict, self._drain, self._undrain = evict, drain, undrain
        self._turn = trio.Lock()  # trio.Lock is fair: loads are admitted FIFO
        self._freed = trio.Event()

    def freed(self) -> None:
        """Room may have been freed (a model stopped, a request ended): look again."""
        self._freed.set()
        self._freed = trio.Event()

    async def wait_freed(self) -> None:
        """Return at the next freed()."""
        await self._freed.wait()

    async def admit(self, model: Model) -> None:
        """Wait our turn, then evict until the count and memory allow `model`; else NoRoom."""
        async with self._turn:
            drained: list[Model] = []
            try:
                with trio.move_on_after(self.drain_timeout):
                    while not await self._make_room(model, drained):
                        now = trio.current_time()
                        with trio.move_on_at(eviction.next_settled(
                                self.models.values(), self.min_residency, now)):
                            await self.wait_freed()
                    return
            finally:
                for m in drained:  # room found elsewhere, or we gave up
                    self._undrain(m)
            raise NoRoom(
                f"no room to load '{model.spec.name}': every model that would have to be "
                f"unloaded stayed busy for drain_timeout ({self.drain_timeout:g}s)")

    async def _make_room(self, model: Model, drained: list[Model]) -> bool:
        """Evict what can go now; True once `model` fits, False to wait for more."""
        while True:
            short = self.short_devices(model)
            over = bool(self.models_max) and self._running_count(model) >= self.models_max
            if not short and not over:
                return True
            where = short if not over else []
            # A model loaded less than min_residency ago is not evicted yet: under a swap
            # storm each load then serves its clients for a while, not one request each.
            settled = trio.current_time() - self.min_residency
            victim = eviction.victim(self.models.values(), model, where, settled=settled)
            if victim is None:
                break
            log.info("%s: evicting %s (%s)", model.spec.name, victim.spec.name,
                     f"memory on {', '.join(short)}" if short else "models_max")
            self.evictions += 1
            await self._evict(victim)
        busy = eviction.victim(self.models.values(), model, where, busy=True, settled=settled)
        if busy is not None:
            log.info("%s: waiting for %s to finish its requests, then evicting it",
                     model.spec.name, busy.spec.name)
            drained.append(busy)
            self._drain(busy)
        return False

    def short_devices(self, model: Model) -> list[str]:
        """Devices where `model` would not fit beside the running models now."""
        if self.devices is None or not model.need:
            return []
        devices = self.devices.read()
        books.check_fits_alone(model.spec.name, model.need, devices)
        return books.short_devices(model.need, devices, self.committed(exclude=model))

    def committed(self, exclude: Model | None = None) -> dict[str, int]:
        """MiB held per device by admitted models."""
        return books.committed(m.holding() for m in self.models.values()
                               if m is not exclude and m.state in RUNNING)

    def device_table(self) -> list[dict[str, object]]:
        """Devices with total, free, margin and what llmd's models hold."""
        if self.devices is None:
            return []
        return books.device_table(self.devices.read(), self.committed())

    def _running_count(self, model: Model) -> int:
        return sum(1 for m in self.models.values() if m is not model and m.state in RUNNING)
