"""Cancelling a request's work when its client hangs up, without a task per request.

An ASGI app hears that its client has gone only from receive(), so noticing it in the
middle of a request takes a second task waiting on receive() beside the work: a nursery
and a task spawn on the path every proxied request takes. llmd's connection wrapper
(connections.py) sees the moment a connection's read loop ends; it sets a `Hangup` in a
context variable as each connection starts, which the connection's ASGI tasks inherit,
and cancels the scopes they registered there.
"""

from __future__ import annotations

import contextvars
from contextlib import contextmanager
from typing import Iterator

import trio

from .asgi import Message, Send


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
        self.gone = True
        for scope in self._scopes:
            scope.cancel()
        self._scopes.clear()


CURRENT: contextvars.ContextVar[Hangup | None] = contextvars.ContextVar("llmd_hangup",
                                                                       default=None)


@contextmanager
def cancelled_on_hangup(send: Send) -> Iterator[Send]:
    """Run the block in a scope cancelled if the client hangs up; use the yielded send.

    A hangup after the response's last piece has been handed over cancels nothing: the
    request is done, and cancelling then would cut hypercorn's own bookkeeping short.
    Outside llmd's connection wrapper nothing can report a hangup, so nothing is cancelled.
    """
    hangup = CURRENT.get()
    if hangup is None:
        yield send
        return
    scope = trio.CancelScope()

    async def tracked_send(message: Message) -> None:
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            hangup.forget(scope)
        await send(message)

    hangup.watch(scope)
    try:
        with scope:
            yield tracked_send
    finally:
        hangup.forget(scope)
