"""State-change events fanned out to whoever listens (/events, /models/sse)."""

from __future__ import annotations

from typing import Any

import trio


class Broker:
    """Publishes each event to every subscriber; a reader that falls behind is dropped."""

    def __init__(self) -> None:
        self._subscribers: set[trio.MemorySendChannel[dict[str, Any]]] = set()

    def publish(self, event: dict[str, Any]) -> None:
        """Hand `event` to every subscriber without waiting on any."""
        for channel in list(self._subscribers):
            try:
                channel.send_nowait(event)
            except trio.WouldBlock:  # a slow subscriber is dropped, never waited on
                self._subscribers.discard(channel)
                channel.close()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._subscribers.discard(channel)

    def subscribe(self, buffer: int = 256) -> trio.MemoryReceiveChannel[dict[str, Any]]:
        """A channel of events; it is closed if its reader falls behind by `buffer`."""
        send, receive = trio.open_memory_channel[dict[str, Any]](buffer)
        self._subscribers.add(send)
        return receive
