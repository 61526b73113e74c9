"""One listener's accept loop: connections up to its limit, a refusal past it, and the
graceful shutdown (contract: __init__.py)."""

from __future__ import annotations

import errno
import logging
import socket
from dataclasses import dataclass

import trio

from llmd.server import wire
from llmd.server.connection import App, Connection

log = logging.getLogger("llmd.http")


@dataclass
class Limit:
    """How many connections one listener serves at once; the rest are refused."""

    most: int
    current: int = 0
    refused: int = 0


@dataclass(frozen=True)
class Settings:
    """One listener's time limits, in seconds."""

    header_timeout: float = 10  # from a connection's start to its first request's head
    keepalive_timeout: float = 10  # from a response's end to the next request's head
    shutdown_timeout: float = 30  # what requests in flight get once shutdown is set
    max_head: int = 16 << 10  # a longer request head gets 431


async def serve(app: App, listener: socket.socket, settings: Settings, limit: Limit,
                shutdown: trio.Event, *,
                task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve `listener` to `app` until `shutdown` is set and the requests in flight end."""
    await Listener(app, listener, settings, limit).run(shutdown, task_status)


class Listener:
    """One listening socket's connections, its limit and its shutdown."""

    def __init__(self, app: App, listener: socket.socket, settings: Settings,
                 limit: Limit) -> None:
        self.app = app
        self.listener = listener
        self.settings = settings
        self.limit = limit
        self.tcp = listener.family in (socket.AF_INET, socket.AF_INET6)
        self.connections: set[Connection] = set()
        self.closing = False
        self._all_gone: trio.Event | None = None

    async def run(self, shutdown: trio.Event, task_status: trio.TaskStatus[None]) -> None:
        self.listener.setblocking(False)
        async with trio.open_nursery() as nursery:
            async with trio.open_nursery() as accepting:
                accepting.start_soon(self._accept, nursery)
                task_status.started()
                await shutdown.wait()
                accepting.cancel_scope.cancel()
            self.closing = True
            for connection in list(self.connections):
                connection.close_if_idle()
            with trio.move_on_after(self.settings.shutdown_timeout):
                while self.connections:
                    self._all_gone = trio.Event()
                    await self._all_gone.wait()
            nursery.cancel_scope.cancel()

    def gone(self, connection: Connection) -> None:
        """A connection has closed."""
        self.connections.discard(connection)
        self.limit.current -= 1
        if not self.connections and self._all_gone is not None:
            self._all_gone.set()

    async def _accept(self, nursery: trio.Nursery) -> None:
        listener, limit = self.listener, self.limit
        while True:
            try:
                sock, address = listener.accept()
            except BlockingIOError:
                await trio.lowlevel.wait_readable(listener)
                continue
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.error("cannot accept a connection: %s", exc.strerror)
                    await trio.sleep(0.1)
                continue  # the client gave up before it was accepted
            sock.setblocking(False)
            if limit.current >= limit.most:
                limit.refused += 1
                answer = wire.refusal(limit.most)
                try:
                    sent = sock.send(answer)
                except BlockingIOError:
                    sent = 0
                except OSError:
                    sent = len(answer)  # gone already: nothing more to say
                if sent < len(answer):
                    nursery.start_soon(wire.finish_refusal, sock, answer[sent:])
                else:
                    wire.close(sock)
            else:
                try:
                    connection = Connection(self, sock, address)
                except OSError:  # reset before it could be looked at
                    sock.close()
                    continue
                limit.current += 1
                self.connections.add(connection)
                nursery.start_soon(connection.run)
            await trio.lowlevel.checkpoint()  # a flood of connections lets the rest run
