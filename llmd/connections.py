"""Each accepted connection before hypercorn serves it: who it is, and whether there's room.

hypercorn has no connection limit and no hook per connection, so llmd wraps the one
place it starts serving one (`hypercorn.trio.run.TCPServer`). A listener's limit rides
on its hypercorn Config; a connection over it gets a JSON 503 and is closed at once,
before any of it is parsed. The wrapper also:

- closes a connection as soon as its client has gone, which hypercorn 0.18 only does
  after keep_alive_timeout, and tells the connection's requests at that moment
  (hangup.py);
- keeps the keep-alive timer as one task per connection instead of one per request;
- sends a response head that declares its length together with its body, and sends
  without a trip through trio's scheduler when the socket takes the bytes at once;
- reads the socket itself, and waits only when nothing is in;
- answers a request h11 cannot parse with the documented JSON error body instead of an
  empty one.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from math import inf
from typing import Any, Awaitable, Callable

import h11
import hypercorn.config
import hypercorn.protocol.h11 as _hypercorn_h11
import hypercorn.trio.run as _hypercorn_run
import hypercorn.trio.tcp_server as _hypercorn_tcp
import trio
from hypercorn.events import Closed, RawData

from . import hangup, peercred
from .errors import MalformedRequest, Unavailable

_MAX_RECV = _hypercorn_tcp.MAX_RECV


@dataclass
class Limit:
    """How many connections one listener serves at once; the rest are refused."""

    most: int
    current: int = 0
    refused: int = 0


def set_limit(config: Any, limit: Limit) -> None:
    """Give a hypercorn Config's listener `limit`."""
    config.llmd_limit = limit


class ServerConfig(hypercorn.config.Config):  # type: ignore[misc]
    """hypercorn's Config, with the headers it adds to every response made once a second."""

    _made: tuple[float, str, list[tuple[bytes, bytes]]] = (0.0, "", [])

    def response_headers(self, protocol: str) -> list[tuple[bytes, bytes]]:
        second = time.time() // 1  # the Date header's resolution
        when, made_for, headers = self._made
        if when != second or made_for != protocol:
            headers = super().response_headers(protocol)
            self._made = (second, protocol, headers)
        return list(headers)


_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:", re.IGNORECASE)


def sized_head(data: bytes) -> bool:
    """Whether h11's bytes are a final response head that declares its Content-Length."""
    # An app that declares the length has the body in hand (llmd's do); a head without
    # one starts a stream, whose first chunk may be a long way off.
    return (data.startswith(b"HTTP/1.1 ") and data[9:10] != b"1"
            and _CONTENT_LENGTH.search(data) is not None)


def _refusal(most: int) -> bytes:
    error = Unavailable(f"too many connections (at most {most}); try again shortly")
    body = json.dumps(error.body()).encode()
    return (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
            b"retry-after: 1\r\nconnection: close\r\ncontent-length: "
            + str(len(body)).encode() + b"\r\n\r\n" + body)


async def _refuse(stream: Any, most: int) -> None:
    with trio.move_on_after(1):  # a client that won't read its refusal loses it
        try:
            await stream.send_all(_refusal(most))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
    await stream.aclose()


async def _send_error_response(self: Any, status_code: int) -> None:
    body = json.dumps(MalformedRequest(status_code).body()).encode()
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode()), (b"connection", b"close"),
               *self.config.response_headers("h11")]
    await self._send_h11_event(h11.Response(status_code=status_code, headers=headers))
    await self._send_h11_event(h11.Data(data=body))
    await self._send_h11_event(h11.EndOfMessage())


class IdleTimer:
    """hypercorn's keep-alive timer for one connection: one task whose deadline moves.

    hypercorn starts a fresh task (nursery.start, a scheduling round trip) each time a
    connection goes idle and cancels it when the next request comes: two task switches
    and a lock per request. Here going idle or busy only moves a deadline.
    """

    def __init__(self, timeout: float, terminated: Any,
                 close: Callable[[], Awaitable[None]]) -> None:
        self.timeout = timeout
        self._terminated = terminated  # set when the server shuts down: idle ones close
        self._close = close
        self._idle = False
        self._scope: trio.CancelScope | None = None  # the wait, while idle
        self._went_idle = trio.Event()
        self._task: trio.CancelScope | None = None

    async def restart(self, task_group: Any, action: object) -> None:
        """The connection is idle: close it after `timeout` unless a request comes."""
        self._idle = True
        if self._scope is not None:
            self._scope.deadline = trio.current_time() + self.timeout
        self._went_idle.set()
        if self._task is None:
            self._task = trio.CancelScope()
            task_group._nursery.start_soon(self._run)

    async def stop(self) -> None:
        """A request is being served: no keep-alive deadline until it is done."""
        self._idle = False
        if self._scope is not None:
            self._scope.deadline = inf

    def cancel(self) -> None:
        """The connection is closing: end the timer's task."""
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        assert self._task is not None
        with self._task:
            while True:
                if not self._idle:
                    self._went_idle = trio.Event()
                    await self._went_idle.wait()
                    continue
                with trio.CancelScope(deadline=trio.current_time() + self.timeout) as scope:
                    self._scope = scope
                    await self._terminated.wait()
                self._scope = None
                if self._idle:  # the deadline passed, or the server is shutting down
                    with trio.CancelScope(shield=True):
                        await self._close()
                    return


def install() -> None:
    """Make hypercorn check the limit and record the peer of each connection (idempotent)."""
    if getattr(_hypercorn_run.TCPServer, "_llmd_connections", False):
        return

    class Connection(_hypercorn_run.TCPServer):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, client: hangup.Hangup) -> None:
            super().__init__(*args)
            self.client = client
            self.held = b""  # a response head waiting for its body
            self.idle_task = IdleTimer(self.config.keep_alive_timeout,
                                       self.context.terminated, self._initiate_server_close)

        async def protocol_send(self, event: Any) -> None:
            if type(event) is RawData:
                data = event.data
                if self.held:
                    data, self.held = self.held + data, b""
                elif sized_head(data):
                    # Its body follows at once: both go out in one write, and the client
                    # gets them in one segment (one read, as from llama-server itself).
                    self.held = data
                    return
                if data:  # h11 ends a Content-Length body with no bytes
                    await self._send(data)
                return
            await super().protocol_send(event)

        async def _send(self, data: bytes) -> None:
            # hypercorn's send, without two trips through the scheduler when nothing has to
            # wait: a free lock is taken without a checkpoint, and the bytes go straight to
            # the non-blocking socket. trio's stream sends only what the socket won't take.
            try:
                self.send_lock.acquire_nowait()
            except trio.WouldBlock:
                await self.send_lock.acquire()
            try:
                sent = 0
                if type(self.stream) is trio.SocketStream:
                    try:
                        sent = os.write(self.stream.socket.fileno(), data)
                    except BlockingIOError:
                        pass
                if sent < len(data):
                    with trio.CancelScope(shield=True):
                        await self.stream.send_all(data[sent:])
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
                await self.protocol.handle(Closed())
            finally:
                self.send_lock.release()

        async def _read_data(self) -> None:
            if type(self.stream) is trio.SocketStream:
                await self._read_socket()
            else:
                await super()._read_data()
            # hypercorn leaves its keep-alive timer running after the client has gone,
            # and its nursery waits for it: the socket would stay open that long.
            self.idle_task.cancel()
            self.client.happened()

        async def _read_socket(self) -> None:
            # hypercorn's read loop, reading the non-blocking socket itself: trio's
            # receive_some wraps each read in two context managers and passes through the
            # scheduler even when the bytes are already in. Here only an empty socket
            # waits. Two reads in a row that did not wait are parted by a checkpoint, so a
            # client whose bytes never run out still lets the other tasks run.
            timeout = self.config.read_timeout
            streak = 0
            while True:
                fd = self.stream.socket.fileno()  # -1 once closed: never a reused number
                if fd < 0:
                    break
                try:
                    data = os.read(fd, _MAX_RECV)
                except BlockingIOError:
                    streak = 0
                    try:
                        if timeout is None:  # hypercorn's default: no cancel scope per wait
                            await trio.lowlevel.wait_readable(fd)
                        else:
                            with trio.fail_after(timeout):
                                await trio.lowlevel.wait_readable(fd)
                    except (trio.ClosedResourceError, trio.TooSlowError):
                        break
                    continue
                except OSError:  # reset by the client: as trio's BrokenResourceError
                    break
                await self.protocol.handle(RawData(data))
                if not data:
                    break
                streak += 1
                if streak > 1:
                    await trio.lowlevel.checkpoint()
            await self.protocol.handle(Closed())

    def serve_connection(app: Any, config: Any, context: Any, state: Any, stream: Any) -> Any:
        limit: Limit | None = getattr(config, "llmd_limit", None)

        async def run() -> None:
            if limit is not None and limit.current >= limit.most:
                limit.refused += 1
                await _refuse(stream, limit.most)
                return
            try:
                peercred.PEER.set(peercred.peer_of(stream.socket))
            except OSError:
                peercred.PEER.set(None)
            client = hangup.Hangup()
            hangup.CURRENT.set(client)
            if limit is not None:
                limit.current += 1
            try:
                await Connection(app, config, context, state, stream, client=client)
            finally:
                if limit is not None:
                    limit.current -= 1

        return run()

    serve_connection._llmd_connections = True  # type: ignore[attr-defined]
    _hypercorn_run.TCPServer = serve_connection  # type: ignore[assignment]
    _hypercorn_h11.H11Protocol._send_error_response = _send_error_response  # type: ignore
