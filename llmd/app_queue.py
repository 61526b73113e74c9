"""hypercorn's queue between a connection and its ASGI app, without needless scheduler trips.

hypercorn hands a request's events to the app task through a trio memory channel, and a
memory channel's send() and receive() each pass through the scheduler even when the event
can go in or come out at once. A request whose body came in one read costs five such
trips: the body and its end put in, both taken out, and the disconnect notice put in
after the response. Here an event goes in or comes out at once when it can; only a put
into a full queue or a take from an empty one waits, and that is where cancellation
lands.
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


class Taker:
    """An async take from a channel that waits only while it is empty.

    `nowait()` takes what is already in, or raises trio.WouldBlock: asgi.read_body reads a
    body that has arrived whole without the cancel scope that times a slow one.
    """

    __slots__ = ("nowait", "_receive")

    def __init__(self, channel: trio.MemoryReceiveChannel[Event]) -> None:
        self.nowait = channel.receive_nowait
        self._receive = channel.receive

    async def __call__(self) -> Event:
        try:
            return self.nowait()
        except trio.WouldBlock:
            return await self._receive()


async def _spawn_app(self: Any, app: Any, config: Any, scope: Any,
                     send: Callable[[Any], Awaitable[None]]) -> Callable[[Event], Awaitable[None]]:
    # hypercorn 0.18's TaskGroup.spawn_app, with the channel's ends wrapped.
    to_app: trio.MemorySendChannel[Event]
    from_server: trio.MemoryReceiveChannel[Event]
    to_app, from_server = trio.open_memory_channel(config.max_app_queue_size)
    self._nursery.start_soon(_task_group._handle, app, config, scope, Taker(from_server), send,
                             trio.to_thread.run_sync, trio.from_thread.run)
    return putter(to_app)


def install() -> None:
    """Make hypercorn's trio worker queue app events this way (idempotent)."""
    _task_group.TaskGroup.spawn_app = _spawn_app
