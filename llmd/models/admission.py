"""Admission: loads start one at a time, first come first served, once there is room.

A model may start when the models running beside it stay within models_max and, where
memory is accounted, within every device's room (books.py: free memory now, plus what
llmd's children hold, less what is booked and the margin). Until then idle models are
evicted, lowest priority and least recently used first (eviction.victim). Each eviction's
room is spent only once the device reports the memory free again. When only busy ones
are left, one is drained for the load: its requests in flight finish, and those that
arrive meanwhile queue behind the load instead of keeping it busy for ever.
"""

from __future__ import annotations

import logging
import os
from typing import Awaitable, Callable, Mapping

import trio

from llmd.memory import books
from llmd.models import eviction, residency
from llmd.memory import prompt_cache
from llmd.memory.books import Ledger
from llmd.errors import NoRoom
from llmd.models.model import DeviceTable, Model
from llmd.memory.releases import RELEASE_TIMEOUT, Releases
from llmd.models.progress import Queue
from llmd.models.state import RUNNING, State

log = logging.getLogger("llmd.admission")


class Admission:
    """Decides when a load may start, and which running models make room for it.

    The scheduler owns every model's state; admission reads it, and changes it only
    through the callables it is given: `evict` unloads an idle model, `drain`
    lets a busy one finish its requests and then stop, `undrain` has a drained model
    that was not needed after all serve again.
    """

    def __init__(self, models: Mapping[str, Model], devices: DeviceTable | None, *,
                 evict: Callable[[Model], Awaitable[object]],
                 drain: Callable[[Model], None], undrain: Callable[[Model], None],
                 models_max: int = 4, min_residency: float = 0,
                 drain_timeout: float = 600, cache_ram_mib: int = 0,
                 release_timeout: float = RELEASE_TIMEOUT,
                 child_env: Mapping[str, str] | None = None,
                 waiting: Callable[[Model, Queue], None] = lambda model, queue: None,
                 weigh: Callable[[Model], Awaitable[bool]] | None = None) -> None:
        self.models = models
        self.devices = devices  # None: count models only, no memory accounting
        self.cache_ram_mib = cache_ram_mib  # the most prompt cache a child is given
        self.child_env = os.environ if child_env is None else child_env  # children inherit it
        # Memory of stopped children that their devices have not reported free yet.
        self.releases = None if devices is None else Releases(devices, release_timeout)
        self.models_max = models_max
        self.min_residency = min_residency  # seconds a loaded model serves before eviction
        self.drain_timeout = drain_timeout
        self.evictions = 0
        self._evict, self._drain, self._undrain = evict, drain, undrain
        self._waiting = waiting  # told where each queued load stands, as that changes
        self._weigh = weigh  # notes the prompt work evicting a model would lose; read?
        self.queue: list[Model] = []  # loads waiting for admission, first come first
        self._why: tuple[str, str | None] = ("turn", None)  # what the first one waits for
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
        """Wait our turn, then evict until the count and memory allow `model`; else NoRoom.

        Raises TooBig, or NoRoom at once, when the model can't fit however much is evicted.
        """
        self.queue.append(model)
        self._report_queue()
        try:
            await self._admit(model)
        finally:
            self.queue.remove(model)
            self._why = ("turn", None)
            self._report_queue()

    def _report_queue(self) -> None:
        for position, m in enumerate(self.queue, 1):
            why, on = self._why if position == 1 else ("turn", self.queue[0].spec.name)
            self._waiting(m, Queue(position, why, on))

    async def _admit(self, model: Model) -> None:
        async with self._turn:
            drained: list[Model] = []
            self._book_growth_up_front(model)
            try:
                with trio.move_on_after(self.drain_timeout):
                    while (fitted := await self._make_room(model, drained)) is None:
                        self._report_queue()
                        now = trio.current_time()
                        with trio.move_on_at(eviction.next_settled(
                                self.models.values(), self.protected_until, now)):
                            await self.wait_freed()
                    self._size_prompt_cache(model, fitted)
                    return
            finally:
                for m in drained:  # room found elsewhere, or we gave up
                    self._undrain(m)
            raise NoRoom(
                f"no room to load '{model.spec.name}': every model that would have to be "
                f"unloaded stayed busy for drain_timeout ({self.drain_timeout:g}s)")

    def _book_growth_up_front(self, model: Model) -> None:
        model.cache_ram = None
        model.growth = {}
        if self.devices is None:
            return  # memory accounting off: the child's arguments stay as configured
        explicit = prompt_cache.booked_up_front(model.spec.child_args(), self.child_env)
        if explicit:
            model.growth = {"host": explicit}
        elif prompt_cache.value(model.spec.child_args(),
                                self.child_env) == prompt_cache.UNLIMITED:
            log.warning("%s: --cache-ram -1 lets its prompt cache grow without limit; "
                        "llmd can't book that", model.spec.name)

    def _size_prompt_cache(self, model: Model, fitted: list[Ledger]) -> None:
        """Give a child whose arguments don't set --cache-ram the cache the host has room for."""
        if self.devices is None or prompt_cache.given(model.spec.child_args(), self.child_env):
            return
        need = model.holding().need().get("host", 0)
        model.cache_ram = prompt_cache.sized(self.cache_ram_mib, books.room(fitted, "host") - need)
        model.growth = {"host": model.cache_ram} if model.cache_ram else {}
        if model.cache_ram < self.cache_ram_mib:
            log.info("%s: prompt cache limited to %d MiB (the room left on the host)",
                     model.spec.name, model.cache_ram)

    async def _make_room(self, model: Model, drained: list[Model]) -> list[Ledger] | None:
        """Evict what can go now; the books once `model` fits, None to wait for more."""
        while True:
            if self.releases is not None:
                await self.releases.settle()
            ledgers = self.books(exclude=model)
            short = self._short(model, ledgers)
            over = bool(self.models_max) and self._running_count(model) >= self.models_max
            if not short and not over:
                return ledgers
            if await self._weigh_candidates(model):
                continue  # time passed while children were asked: look again
            where = short if not over else []
            for b in ledgers:
                if b.device.id in short:
                    log.debug("%s: %s short: needs %d MiB, room %d (free %d + children %d "
                              "- booked %d - margin %d)", model.spec.name, b.device.id,
                              model.holding().need().get(b.device.id, 0), b.room,
                              b.device.free, b.children, b.booked, b.device.margin)
            # A model inside its residency is not evicted yet: under a swap storm each load
            # then serves its clients for a while, not one request each.
            now = trio.current_time()

            def young(m: Model) -> bool:
                return self.protected_until(m) > now

            victim = eviction.victim(self.models.values(), model, where, young=young)
            if victim is None:
                break
            log.info("%s: evicting %s (%s)", model.spec.name, victim.spec.name,
                     f"memory on {', '.join(short)}" if short else "models_max")
            self.evictions += 1
            await self._evict(victim)
        busy = eviction.victim(self.models.values(), model, where, busy=True, young=young)
        if busy is not None:
            log.info("%s: waiting for %s to finish its requests, then evicting it",
                     model.spec.name, busy.spec.name)
            drained.append(busy)
            self._drain(busy)
        self._why = self._waits_for(model, where, over, drained)
        return None

    async def _weigh_candidates(self, model: Model) -> bool:
        """Have every loaded model that may still be inside its residency note what
        evicting it would lose now, all at once; whether any was asked (time passed)."""
        if self._weigh is None or self.min_residency >= 0:
            return False
        weigh, now = self._weigh, trio.current_time()
        candidates = [m for m in self.models.values() if m is not model
                      and m.state is State.LOADED and residency.may_protect(m, now)]
        asked: list[bool] = []

        async def one(m: Model) -> None:
            asked.append(await weigh(m))

        async with trio.open_nursery() as nursery:
            for m in candidates:
                nursery.start_soon(one, m)
        return any(asked)

    def _waits_for(self, model: Model, where: list[str], over: bool,
                   drained: list[Model]) -> tuple[str, str | None]:
        """What a load that found no room waits for, and on which model, for its progress."""
        draining = [m for m in drained if m.state is State.DRAINING]
        if draining:
            return "drain", draining[-1].spec.name
        young = eviction.victim(self.models.values(), model, where, busy=True)
        if young is not None:  # evictable once it has served min_residency
            return "min_residency", young.spec.name
        return ("models_max" if over else "room"), None

    def residency(self, model: Model) -> float:
        """Seconds a freshly loaded model is kept from eviction (residency.py)."""
        return residency.length(model, self.min_residency)

    def protected_until(self, model: Model) -> float:
        """When the model's protection from eviction ends (residency.py)."""
        return residency.protected_until(model, self.min_residency)

    def _short(self, model: Model, ledgers: list[Ledger]) -> list[str]:
        need = model.holding().need()
        if not ledgers or not any(need.values()):
            return []
        books.check_fits_alone(model.spec.name, need, ledgers)
        return books.short_devices(need, ledgers)

    def books(self, exclude: Model | None = None) -> list[Ledger]:
        """Every device's books now; empty when memory is not accounted."""
        if self.devices is None:
            return []
        admitted = [m for m in self.models.values() if m is not exclude and m.state in RUNNING]
        back = self.devices.add_back(m.handle.pid for m in admitted if m.handle is not None)
        return books.ledgers(self.devices.read(), [m.holding() for m in admitted],
                             [back.get(m.handle.pid) if m.handle is not None else None
                              for m in admitted])

    def committed(self) -> dict[str, int]:
        """MiB booked per device by admitted models."""
        return {b.device.id: b.booked for b in self.books()}

    def device_table(self) -> list[dict[str, object]]:
        """Every device's books, as status and metrics report them."""
        return [b.to_json() for b in self.books()]

    def _running_count(self, model: Model) -> int:
        return sum(1 for m in self.models.values() if m is not model and m.state in RUNNING)
