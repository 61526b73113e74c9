"""A model's output as it is printed, across restarts: what `llmctl logs -f` reads."""

from __future__ import annotations

from typing import Any, Awaitable, Callable

import trio

from llmd.models.model import Model


async def _first(*waits: Callable[[], Awaitable[Any]]) -> None:
    """Return as soon as any of `waits` returns."""
    async with trio.open_nursery() as nursery:
        for wait in waits:
            async def one(wait: Callable[[], Awaitable[Any]] = wait) -> None:
                await wait()
                nursery.cancel_scope.cancel()
            nursery.start_soon(one)


def tail(model: Model, n: int) -> list[str]:
    """The last `n` lines of the model's running child, or of its last one."""
    if n <= 0:  # a [-0:] slice would be everything
        return []
    return model.handle.tail(n) if model.handle else model.output[-n:]


async def lines(model: Model, last: int, out: trio.MemorySendChannel[dict[str, Any]]) -> None:
    """Send the model's last `last` lines, then every new one, until cancelled."""
    name = model.spec.name
    async with out:
        handle = model.handle
        for line in tail(model, last):
            await out.send({"model": name, "line": line})
        seen = handle.lines_total if handle else 0
        while True:
            if model.handle is not handle:  # a new child (or none): all its lines are new
                handle, seen = model.handle, 0
            if handle is not None and handle.lines_total > seen:
                fresh = handle.lines_total - seen
                seen = handle.lines_total
                for line in handle.tail(fresh):
                    await out.send({"model": name, "line": line})
                continue
            waits = [model.changed.wait] + ([handle.wait_activity] if handle else [])
            await _first(*waits)
