"""hypercorn's queue between a connection and its ASGI app, without needless scheduler trips.

hypercorn hands a request's events to the app task through a trio memory channel, and a
memory channel's send() and receive() each pass through the scheduler even when the event
can go in or come out at once. A request whose body came in one read costs five such
trips: the body and its end put in, both taken out, and the disconnect notice put in
after the response. Here an event goes in or comes out at once when it can; only a put
into a full queue or a take from an empty one waits, and that is where cancellation
lands. The connection's read loop still passes through the scheduler on every read.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable

import hypercorn.trio.task_group as _task_group
import trio

Event = dict[str, Any]


def putter(channel: trio.MemorySendChannel[Event]) -> Callable[[Event], Awaitable[None]]:
    """An async put into `channel` that waits only while it is full."""

    async def put(event: Event) -> None:
        try:
            channel.send_nowait(event)
        except trio.WouldBlock:
            await channel.send(event)

    return put


def taker(channel: trio.MemoryReceiveChannel[Event]) -> Callable[[], Awaitable[Event]]:
    """An async take from `channel` that waits only while it is empty."""

    async def take() -> Event:
        try:
            return channel.receive_nowait()
        except trio.WouldBlock:
            return await channel.receive()

    return take


async def _spawn_app(self: Any, app: Any, config: Any, scope: Any,
                     send: Callable[[Any], Awaitable[None]]) -> Callable[[Event], Awaitable[None]]:
    # hypercorn 0.18's TaskGroup.spawn_app, with the channel's ends wrapped.
    to_app: trio.MemorySendChannel[Event]
    from_server: trio.MemoryReceiveChannel[Event]
    to_app, from_server = trio.open_memory_channel(config.max_app_queue_size)
    self._nursery.start_soon(_task_group._handle, app, config, scope, taker(from_server), send,
                             trio.to_thread.run_sync, trio.from_thread.run)
    return putter(to_app)


def install() -> None:
    """Make hypercorn's trio worker queue app events this way (idempotent)."""
    _task_group.TaskGroup.spawn_app = _spawn_app
