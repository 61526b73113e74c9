"""An in-process stand-in for llama-server children, for deterministic scheduler tests."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import trio

from llmd.models.catalog import ModelSpec
from llmd.children.child import Exit


@dataclass
class FakeHandle:
    pid: int
    port: int
    base_url: str
    code: int | None = None
    exited: trio.Event = field(default_factory=trio.Event)
    lines_total: int = 1
    slots: int | None = None
    n_ctx: int | None = None

    async def wait_activity(self) -> None:
        await self.exited.wait()

    def tail(self, n: int = 20) -> list[str]:
        return [f"fake output of pid {self.pid}"][-n:]

    def crash(self, code: int = 1) -> None:
        self.code = code
        self.exited.set()


@dataclass
class Behaviour:
    load_seconds: float = 1.0
    fail_code: int | None = None  # exit with this code while loading
    hang: bool = False
    stop_seconds: float = 0.0  # how long the child takes to exit once told to stop


class FakeLauncher:
    """Records launches; each 'child' takes load_seconds of (mock) time to become ready."""

    def __init__(self) -> None:
        self.behaviour: dict[str, Behaviour] = {}
        self.log: list[tuple[str, str]] = []  # ("launch" | "ready" | "exit", name), in order
        self.on_exit: Callable[[str, int], None] | None = None
        self.launches: list[str] = []
        self.running: dict[str, FakeHandle] = {}
        self.cancelled: list[str] = []
        self.specs: dict[str, ModelSpec] = {}  # the spec each model was last launched with
        self._next_pid = 1000

    async def __call__(self, spec: ModelSpec, on_ready: Callable[[FakeHandle], None],
                       on_spawn: Callable[[int], None] = lambda pid: None) -> Exit:
        b = self.behaviour.get(spec.name, Behaviour())
        self.launches.append(spec.name)
        self.log.append(("launch", spec.name))
        self.specs[spec.name] = spec
        self._next_pid += 1
        handle = FakeHandle(self._next_pid, 20000 + self._next_pid, f"fake://{spec.name}")
        on_spawn(handle.pid)
        try:
            if b.hang:
                await trio.sleep_forever()
            await trio.sleep(b.load_seconds)
            if b.fail_code is not None:
                return Exit(b.fail_code, f"llama-server exited with code {b.fail_code} while "
                            "loading", ["error: bad model"], False)
            self.running[spec.name] = handle
            self.log.append(("ready", spec.name))
            on_ready(handle)
            await handle.exited.wait()
            return Exit(handle.code, f"llama-server exited with code {handle.code}",
                        handle.tail(), True)
        except trio.Cancelled:
            self.cancelled.append(spec.name)
            with trio.CancelScope(shield=True):
                await trio.sleep(b.stop_seconds)
            raise
        finally:
            if self.running.pop(spec.name, None) is not None:
                self.log.append(("exit", spec.name))
                if self.on_exit is not None:
                    self.on_exit(spec.name, handle.pid)
