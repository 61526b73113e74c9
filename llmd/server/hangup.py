"""Cancelling a request's work when its client hangs up, without a task per request.

An ASGI app hears that its client has gone only from receive(), so noticing it in the
middle of a request would take a second task waiting on receive() beside the work: a
nursery and a task spawn on the path every proxied request takes. llmd's server sees the
moment a client goes (its socket reads end, or a write fails) and puts one `Hangup` per
connection in each request's scope (`scope["extensions"]["llmd.hangup"]`); it cancels
the scopes registered there at that moment.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, MutableMapping

import trio

from llmd.api.asgi import Message, Send

EXTENSION = "llmd.hangup"


class Hangup:
    """One connection's client: whether it has gone, and the scopes to cancel when it does."""

    __slots__ = ("gone", "_scopes")

    def __init__(self) -> None:
        self.gone = False
        self._scopes: set[trio.CancelScope] = set()

    def watch(self, scope: trio.CancelScope) -> None:
        """Cancel `scope` when the client hangs up (at once if it already has)."""
        if self.gone:
            scope.cancel()
        else:
            self._scopes.add(scope)

    def forget(self, scope: trio.CancelScope) -> None:
        """Cancel `scope` no more."""
        self._scopes.discard(scope)

    def happened(self) -> None:
        """The client has gone: cancel every scope registered for it."""
        if self.gone:
            return
        self.gone = True
        for scope in self._scopes:
            scope.cancel()
        self._scopes.clear()


def of(scope: MutableMapping[str, Any]) -> Hangup | None:
    """The request's Hangup, when a server that reports hang-ups put one in its scope."""
    extensions = scope.get("extensions")
    return extensions.get(EXTENSION) if extensions else None


@contextmanager
def cancelled_on_hangup(scope: MutableMapping[str, Any], send: Send) -> Iterator[Send]:
    """Run the block in a scope cancelled if the client hangs up; use the yielded send.

    A hangup after the response's last piece has been handed over cancels nothing: the
    request is done. Without a Hangup in the request's scope nothing can report a hangup,
    so nothing is cancelled.
    """
    hangup = of(scope)
    if hangup is None:
        yield send
        return
    cancel = trio.CancelScope()

    async def tracked_send(message: Message) -> None:
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            hangup.forget(cancel)
        await send(message)

    hangup.watch(cancel)
    try:
        with cancel:
            yield tracked_send
    finally:
        hangup.forget(cancel)
