"""A model's output as it is printed, across restarts: what `llmctl logs -f` reads."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Awaitable, Callable

import trio

from llmd.api import asgi
from llmd.api.asgi import Scope, Send
from llmd.errors import BadRequest
from llmd.models.model import Model
from llmd.server.hangup import cancelled_on_hangup

if TYPE_CHECKING:
    from llmd.models.scheduler import Scheduler


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


def asked(scheduler: Scheduler, params: dict[str, str]) -> tuple[Model, int]:
    """The model and line count a logs request asks for (?model=, ?lines=); BadRequest or
    ModelNotFound when they are wrong."""
    name = params.get("model", "")
    if not name:
        raise BadRequest("'model' is required")
    model = scheduler.resolve(name)
    try:
        lines = max(0, min(int(params.get("lines", "100")), 100_000))
    except ValueError:
        raise BadRequest("'lines' must be an integer")
    return model, lines


async def stream(scope: Scope, send: Send, model: Model, last: int) -> None:
    """Answer with the model's last `last` lines and every new one, as server-sent events,
    until the client hangs up."""
    out, found = trio.open_memory_channel[dict[str, Any]](1024)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lines, model, last, out)
        with cancelled_on_hangup(scope, send) as send:
            await asgi.event_stream(send, found)
        nursery.cancel_scope.cancel()
