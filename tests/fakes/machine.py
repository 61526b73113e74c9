"""A machine with GPUs, as pynvml would report it: llmd's fake children hold memory on
them while they run, other programs hold some too, and a driver may report an exited
child's memory free only some (mock) time later."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Sequence

import trio

from tests.fakes.launcher import FakeLauncher

MIB = 1 << 20


class FakeGpus:
    """Just enough of pynvml, backed by the fake launcher's running children."""

    def __init__(self, totals: Sequence[int], launcher: FakeLauncher,
                 use: dict[str, dict[int, int]], release_lag: float = 0.0) -> None:
        self.totals = list(totals)  # MiB per GPU
        self.others = [0] * len(totals)  # MiB other programs hold per GPU
        self.use = use  # model name -> {gpu index: MiB its child holds}
        self.release_lag = release_lag  # seconds before an exited child's memory reads free
        self.releasing: list[tuple[float, int, int]] = []  # (free from, gpu, MiB)
        self.launcher = launcher
        launcher.on_exit = self._exited

    def _exited(self, name: str, pid: int) -> None:
        until = trio.current_time() + self.release_lag
        self.releasing += [(until, gpu, mib) for gpu, mib in self.use.get(name, {}).items()]

    def _held(self, gpu: int) -> int:
        now = trio.current_time()
        children = sum(self.use.get(name, {}).get(gpu, 0) for name in self.launcher.running)
        late = sum(mib for until, g, mib in self.releasing if g == gpu and until > now)
        return self.others[gpu] + children + late

    def nvmlInit(self) -> None:
        pass

    def nvmlDeviceGetCount(self) -> int:
        return len(self.totals)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        return i

    def nvmlDeviceGetName(self, h: int) -> str:
        return f"Fake GPU {h}"

    def nvmlDeviceGetMemoryInfo(self, h: int) -> Any:
        total = self.totals[h]
        return SimpleNamespace(total=total * MIB, free=(total - self._held(h)) * MIB,
                               used=self._held(h) * MIB)

    def nvmlDeviceGetComputeRunningProcesses(self, h: int) -> list[Any]:
        return [SimpleNamespace(pid=handle.pid, usedGpuMemory=self.use[name][h] * MIB)
                for name, handle in self.launcher.running.items()
                if self.use.get(name, {}).get(h)]
