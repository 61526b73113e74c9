"""Devices and their memory: host RAM from /proc, NVIDIA GPUs through NVML."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

log = logging.getLogger("llmd.memory")

MIB = 1 << 20


@dataclass(frozen=True)
class Device:
    """One place models occupy memory, in MiB."""

    id: str  # "host", "gpu0", ...
    name: str
    total: int
    free: int
    margin: int

    @property
    def budget(self) -> int:
        """What models may use in all: total less the margin."""
        return max(0, self.total - self.margin)


def parse_meminfo(text: str) -> tuple[int, int]:
    """(MemTotal, MemAvailable) in MiB from /proc/meminfo text."""
    values: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            values[key] = int(parts[0])
    total = values.get("MemTotal", 0) // 1024
    return total, values.get("MemAvailable", values.get("MemFree", 0)) // 1024


def process_host_unfree(pid: int, proc: str = "/proc") -> int | None:
    """MiB of a process's host memory that MemAvailable counts as used: its anonymous and
    shared-memory pages. Its file-backed pages (a model mapped with mmap) are page cache,
    which MemAvailable already counts as available. None when the process is gone."""
    try:
        with open(f"{proc}/{pid}/status") as f:
            kib = sum(int(line.split()[1]) for line in f
                      if line.startswith(("RssAnon:", "RssShmem:")))
    except (OSError, ValueError, IndexError):
        return None
    return kib // 1024


def process_resident(pid: int, proc: str = "/proc") -> int | None:
    """A process's resident set (VmRSS) in MiB, file pages included; None once it is gone."""
    try:
        with open(f"{proc}/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def process_host_use(pid: int, proc: str = "/proc") -> int | None:
    """A process's proportional set size in MiB (RSS when PSS is unavailable)."""
    for path, key in ((f"{proc}/{pid}/smaps_rollup", "Pss:"), (f"{proc}/{pid}/status", "VmRSS:")):
        try:
            with open(path) as f:
                for line in f:
                    if line.startswith(key):
                        return int(line.split()[1]) // 1024
        except (OSError, ValueError, IndexError):
            continue
    return None


class Nvml:
    """NVIDIA GPUs through pynvml; without a driver it reports none, once, at info level."""

    def __init__(self, nvml: Any = None) -> None:
        self._nvml = nvml
        self.available = False
        try:
            if self._nvml is None:
                import pynvml  # type: ignore[import-untyped,unused-ignore]

                self._nvml = pynvml
            self._nvml.nvmlInit()
            self.available = True
        except Exception as exc:  # no library, no driver, no device: all mean host only
            log.info("no NVIDIA GPU available (%s); accounting host memory only",
                     exc.__class__.__name__)

    def _handles(self) -> list[Any]:
        if not self.available:
            return []
        try:
            count = self._nvml.nvmlDeviceGetCount()
            return [self._nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        except Exception as exc:
            log.warning("NVML stopped answering: %s", exc)
            return []

    def devices(self) -> list[tuple[str, str, int, int]]:
        """(id, name, total MiB, free MiB) per GPU."""
        found = []
        for index, handle in enumerate(self._handles()):
            try:
                info = self._nvml.nvmlDeviceGetMemoryInfo(handle)
                name = self._nvml.nvmlDeviceGetName(handle)
            except Exception as exc:
                log.warning("NVML: cannot read GPU %d: %s", index, exc)
                continue
            if isinstance(name, bytes):
                name = name.decode()
            found.append((f"gpu{index}", str(name), info.total // MIB, info.free // MIB))
        return found

    def process_use(self, pid: int) -> dict[str, int]:
        """MiB a process uses on each GPU it is on."""
        return self.processes().get(pid, {})

    def processes(self) -> dict[int, dict[str, int]]:
        """MiB each process on a GPU uses there, by pid, in one pass over the GPUs."""
        use: dict[int, dict[str, int]] = {}
        for index, handle in enumerate(self._handles()):
            try:
                procs = self._nvml.nvmlDeviceGetComputeRunningProcesses(handle)
            except Exception:
                continue
            for p in procs:
                if p.usedGpuMemory is not None:
                    per = use.setdefault(p.pid, {})
                    per[f"gpu{index}"] = per.get(f"gpu{index}", 0) + p.usedGpuMemory // MIB
        return use


class Devices:
    """The device table: host plus GPUs, with each device's margin."""

    def __init__(self, margin_mib: int, margins: Mapping[str, int] | None = None,
                 nvml: Nvml | None = None, meminfo: str = "/proc/meminfo",
                 proc: str = "/proc") -> None:
        self.margin_mib = margin_mib
        self.margins = dict(margins or {})
        self._nvml = nvml
        self.meminfo = meminfo
        self.proc = proc

    @property
    def nvml(self) -> Nvml:
        """The GPUs, looked for on first use: pynvml finding no driver takes ~40 ms."""
        if self._nvml is None:
            self._nvml = Nvml()
        return self._nvml

    def _margin(self, device_id: str) -> int:
        return self.margins.get(device_id, self.margin_mib)

    def read(self) -> list[Device]:
        """Every device as it is now."""
        with open(self.meminfo) as f:
            total, free = parse_meminfo(f.read())
        devices = [Device("host", "host memory", total, free, self._margin("host"))]
        for device_id, name, gpu_total, gpu_free in self.nvml.devices():
            devices.append(Device(device_id, name, gpu_total, gpu_free, self._margin(device_id)))
        return devices

    def add_back(self, pids: Iterable[int]) -> dict[int, dict[str, int]]:
        """Per child, the MiB on each device that the device's free figure counts as used
        by it: host anonymous memory, GPU memory. Admission adds these back to free."""
        pids = list(pids)
        gpus = self.nvml.processes() if pids else {}
        found: dict[int, dict[str, int]] = {}
        for pid in pids:
            use = dict(gpus.get(pid, {}))
            host = process_host_unfree(pid, self.proc)
            if host is not None:
                use["host"] = host
            found[pid] = use
        return found

    def process_use(self, pid: int) -> dict[str, int]:
        """What a child really uses, per device, in MiB: host PSS, GPU memory."""
        use = self.nvml.process_use(pid)
        host = process_host_use(pid, self.proc)
        if host is not None:
            use["host"] = host
        return use
