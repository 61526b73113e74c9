"""Memory a stopped child held, until its devices report it free again.

A GPU driver may report an exited process's memory free only some time after it exits
(Ollama waits for it too). A load that counted that room at once would find the GPU
still full and evict another model, or start beside memory that is not there yet. So
when llmd stops a child it notes what the child holds and what each device reports free
then; once the child has exited, loads wait (up to release_timeout) until the devices
report that much more free. Host memory needs no wait: the kernel returns a process's
pages before its parent learns that it exited.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import trio

from llmd.models.model import DeviceTable

log = logging.getLogger("llmd.releases")

RELEASE_TIMEOUT = 10.0  # seconds a load waits for a device to report freed memory
_POLL = 0.05  # devices announce no such change: look this often
_SLACK_MIB = 16  # what a device's free figure may still miss by


@dataclass
class Release:
    """One stopped child's memory on the devices that report frees late."""

    name: str
    pid: int
    target: dict[str, int]  # MiB free per device once it is released
    until: float | None = None  # set when the child has exited


class Releases:
    """The releases llmd is waiting for; loads settle them before counting room."""

    def __init__(self, devices: DeviceTable, timeout: float = RELEASE_TIMEOUT) -> None:
        self.devices = devices
        self.timeout = timeout
        self.pending: list[Release] = []

    def stopping(self, name: str, pid: int) -> None:
        """Note what a child about to be stopped holds, and what its devices report free."""
        held = self.devices.add_back([pid]).get(pid, {})
        late = {d: mib for d, mib in held.items() if d != "host" and mib > _SLACK_MIB}
        if not late:
            return
        free = {d.id: d.free for d in self.devices.read()}
        self.pending.append(Release(name, pid, {d: free.get(d, 0) + mib
                                                for d, mib in late.items()}))

    def exited(self, pid: int) -> None:
        """The child has exited: its release is now awaited, for at most `timeout`."""
        for release in self.pending:
            if release.pid == pid and release.until is None:
                release.until = trio.current_time() + self.timeout

    async def settle(self) -> None:
        """Return once every exited child's memory reads free, or its wait ran out (which
        is logged)."""
        while waiting := [r for r in self.pending if r.until is not None]:
            free = {d.id: d.free for d in self.devices.read()}
            now = trio.current_time()
            for r in waiting:
                short = {d: mib - free.get(d, 0) for d, mib in r.target.items()
                         if free.get(d, 0) < mib - _SLACK_MIB}
                if short and now < (r.until or now):
                    continue
                if short:
                    log.warning("%s exited, but %s still reports %s MiB less free than it "
                                "held after %gs; loading anyway", r.name, ", ".join(short),
                                ", ".join(map(str, short.values())), self.timeout)
                self.pending.remove(r)
            if any(r.until is not None for r in self.pending):
                await trio.sleep(_POLL)
