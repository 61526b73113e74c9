"""A lean HTTP/1.1 client for children: kept-alive loopback connections, parsed by httptools.

Every proxied request crosses this path, so it does only what talking to a llama-server
on loopback needs: no TLS, proxies, cookies, redirects or auth. httpx did all of those on
every request and was half of llmd's CPU per request (bench/results.md).
"""

from __future__ import annotations

import errno
import math
import os
import select
import socket
from functools import lru_cache
from typing import Iterable

import httptools
import trio

from llmd import http1
from llmd.http1 import ResponseParts

CONNECT_TIMEOUT = 5.0
WRITE_TIMEOUT = 60.0
KEEPALIVE = 64  # idle connections kept per child
# cpp-httplib's thread for a kept-alive connection wakes every 10 ms to poll it until the
# next request, for up to 5 s: 32 idle connections cost a child 3,200 wakeups and ~5% of a
# core a second, taken from whatever computes. So what a burst leaves beyond one
# connection per child is closed once unused this long (a reconnect costs ~0.4 ms)...
SURPLUS_SECONDS = 0.25
# ...and the last one, kept for a client that pauses between requests, before cpp-httplib
# closes it at 5 s: sending on a connection the child is closing would fail.
IDLE_SECONDS = 4.0
_CHUNK = 65536


class UpstreamBroken(Exception):
    """The child could not be reached, or broke the connection, or sent a bad response."""


class _Stale(Exception):
    """A reused connection closed before any byte of the response: safe to send again."""


@lru_cache(maxsize=256)
def address(base_url: str) -> tuple[str, int]:
    """The host and port of an `http://host:port` base URL."""
    host, _, port = base_url.removeprefix("http://").rstrip("/").rpartition(":")
    return host.strip("[]"), int(port)


class _Connection:
    """A kept-alive socket to a child, used without trio's socket wrapper.

    trio's socket calls end in a checkpoint even when the call did not have to wait: a
    trip through the scheduler for every send and every read of a response that is
    already in. Here the calls go straight to the non-blocking socket, and only a call
    that would block waits (trio.lowlevel), which is also where cancellation lands.
    """

    __slots__ = ("sock", "idle_since")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.idle_since = 0.0

    async def send_all(self, data: bytes) -> None:
        """Send all of `data`; past WRITE_TIMEOUT of waiting, UpstreamBroken."""
        view = memoryview(data)
        while view:
            try:
                view = view[self.sock.send(view):]
            except BlockingIOError:
                with trio.move_on_after(WRITE_TIMEOUT) as waited:
                    await trio.lowlevel.wait_writable(self.sock)
                if waited.cancelled_caught:
                    raise UpstreamBroken(f"request not sent within {WRITE_TIMEOUT:g}s")

    async def receive(self) -> bytes:
        """What the child sent next, waiting for it if nothing is in; b"" at its end."""
        while True:
            try:
                return self.sock.recv(_CHUNK)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(self.sock)

    def close(self) -> None:
        trio.lowlevel.notify_closing(self.sock)
        self.sock.close()  # synchronous: safe in a cancelled scope or a finally

    def dropped(self) -> bool:
        """Whether the child has closed this idle connection (or sent on it unasked)."""
        poll = select.poll()
        poll.register(self.sock.fileno(), select.POLLIN)
        return bool(poll.poll(0))


class Response:
    """A response whose head has arrived; read() its body, then close() it."""

    def __init__(self, pool: Upstream, key: tuple[str, int], conn: _Connection,
                 message: ResponseParts) -> None:
        self._pool, self._key, self._message = pool, key, message
        self._conn: _Connection | None = conn
        self.status: int = message.status
        self.headers = message.headers
        self._framed = bool(self.header(b"content-length") or self.header(b"transfer-encoding"))
        self.event_stream = self.header(b"content-type").startswith(b"text/event-stream")

    def header(self, name: bytes) -> bytes:
        """The first value of header `name` (lower case), or b""."""
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return b""

    async def read(self) -> bytes:
        """The next piece of the body as it arrives; b"" once it is complete."""
        message = self._message
        while not message.body:
            if message.done or self._conn is None:
                return b""
            await _feed(self._conn, message, framed=self._framed)
        data = message.body[0] if len(message.body) == 1 else b"".join(message.body)
        message.body.clear()
        return data

    async def read_all(self) -> bytes:
        """The rest of the body, whole; the response is closed after it, however it ends."""
        body = b""
        try:
            while chunk := await self.read():
                body += chunk
        finally:
            self.close()
        return body

    @property
    def complete(self) -> bool:
        """Whether the whole body has been read."""
        return self._message.done and not self._message.body

    def close(self) -> None:
        """Give the connection back if the response was read whole, else close it."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        # llama-server closes the connection after every event stream, whatever its
        # Keep-Alive header said: one would only come back stale.
        if self._message.done and self._message.keep_alive and not self.event_stream:
            self._pool._put(self._key, conn)
            return
        conn.close()
        if self.event_stream and self._message.done:
            self._pool._spare(self._key)


async def _feed(conn: _Connection, message: ResponseParts, framed: bool = True) -> None:
    error: OSError | None = None
    try:
        data = await conn.receive()
    except OSError as exc:
        data, error = b"", exc
    if not data:
        if message.received == 0:
            raise _Stale(repr(error) if error else "connection closed")
        if message.head_done and not framed:
            message.done = True  # a body delimited by the connection closing
            return
        raise UpstreamBroken(f"connection broken mid-response ({error or 'closed'})")
    message.received += len(data)
    try:
        message.parser.feed_data(data)
    except httptools.HttpParserError as exc:
        raise UpstreamBroken(f"malformed response: {exc}")


class Upstream:
    """Kept-alive connections to children, and the requests sent on them."""

    def __init__(self) -> None:
        self._idle: dict[tuple[str, int], list[_Connection]] = {}
        self._sweep = trio.CancelScope()  # close_idle's sleep, until the next expiry
        self.retries = 0  # requests sent again after a kept-alive connection went stale

    async def fetch(self, method: str, base_url: str, target: str, body: bytes = b"",
                    headers: Iterable[tuple[bytes, bytes]] = ()) -> tuple[int, bytes]:
        """One request and its whole answer: (status, body); raises UpstreamBroken."""
        response = await self.request(method, base_url, target, headers, body)
        return response.status, await response.read_all()

    async def request(self, method: str, base_url: str, target: str,
                      headers: Iterable[tuple[bytes, bytes]], body: bytes) -> Response:
        """Send a request to the child at `base_url`; return once the response head is in."""
        key = address(base_url)
        head = http1.request(method, target, f"{key[0]}:{key[1]}", headers, body)
        conn = self._take(key)
        if conn is not None:
            try:
                return await self._exchange(key, conn, head)
            except _Stale:
                # cpp-httplib may close a kept-alive connection without answering what was
                # just sent on it; no byte of a response came, so sending again is safe.
                self.retries += 1
        conn = await _connect(key)
        try:
            return await self._exchange(key, conn, head)
        except _Stale as exc:
            raise UpstreamBroken(f"connection closed before a response ({exc})")

    async def _exchange(self, key: tuple[str, int], conn: _Connection,
                        head: bytes) -> Response:
        message = ResponseParts()
        try:
            await conn.send_all(head)
            while not message.head_done:
                await _feed(conn, message)
        except OSError as exc:
            conn.close()
            raise _Stale(repr(exc))
        except BaseException:
            conn.close()
            raise
        return Response(self, key, conn, message)

    def _take(self, key: tuple[str, int]) -> _Connection | None:
        idle = self._idle.get(key)
        now = trio.current_time()
        while idle:
            conn = idle.pop()
            if now - conn.idle_since < IDLE_SECONDS and not conn.dropped():
                return conn
            conn.close()
        return None

    def _put(self, key: tuple[str, int], conn: _Connection) -> None:
        idle = self._idle.setdefault(key, [])
        now = trio.current_time()
        _close_expired(idle, now)
        if len(idle) >= KEEPALIVE:
            conn.close()
            return
        conn.idle_since = now
        idle.append(conn)
        due = _expiry(idle)
        if due < self._sweep.deadline:  # a burst's surplus: sooner than close_idle expects
            self._sweep.deadline = due

    def _spare(self, key: tuple[str, int]) -> None:
        """Start a connection for the child's next request now, off that request's path.

        llama-server closes the connection after every event stream, so each stream would
        otherwise begin with a connect: a loopback handshake and a trip through the
        scheduler, ~0.4 ms of its time to first byte. The kernel completes this one while
        nothing waits for it; a request that takes it finds it connected (or, if the
        child has gone, dropped).
        """
        sock, error = _open(key)
        if error not in (0, errno.EINPROGRESS):
            sock.close()
            return
        self._put(key, _Connection(sock))

    def _prune(self) -> None:
        # Whichever child they were for: a spare for a child that exited just after its
        # stream ended is never taken, and is closed here when it expires.
        now = trio.current_time()
        for key in list(self._idle):
            _close_expired(self._idle[key], now)
            if not self._idle[key]:
                del self._idle[key]

    async def close_idle(self) -> None:
        """Close idle connections as they expire; runs until cancelled."""
        while True:
            self._prune()
            due = min(map(_expiry, self._idle.values()), default=math.inf)  # none left empty
            with trio.CancelScope(deadline=due) as self._sweep:
                await trio.sleep_forever()

    def forget(self, base_url: str) -> None:
        """Close the idle connections to a child that has exited."""
        for conn in self._idle.pop(address(base_url), []):
            conn.close()

    async def __aenter__(self) -> Upstream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.aclose()

    def aclose(self) -> None:
        """Close every idle connection."""
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()


def _expiry(idle: list[_Connection]) -> float:
    """When the first of `idle` (oldest first) is due to be closed."""
    return idle[0].idle_since + (SURPLUS_SECONDS if len(idle) > 1 else IDLE_SECONDS)


def _close_expired(idle: list[_Connection], now: float) -> None:
    while idle and now >= _expiry(idle):
        idle.pop(0).close()


def _open(key: tuple[str, int]) -> tuple[socket.socket, int]:
    """A non-blocking socket whose connect to `key` has started, and connect_ex's answer."""
    # Children listen on a numeric loopback address: a plain connect, without
    # open_tcp_stream's name lookup and happy-eyeballs nursery on every new connection.
    family = socket.AF_INET6 if ":" in key[0] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock, sock.connect_ex(key)
    except BaseException:
        sock.close()
        raise


async def _connect(key: tuple[str, int]) -> _Connection:
    sock, error = _open(key)
    conn = _Connection(sock)
    try:
        if error == errno.EINPROGRESS:
            with trio.move_on_after(CONNECT_TIMEOUT) as waited:
                await trio.lowlevel.wait_writable(sock)
            if waited.cancelled_caught:
                raise UpstreamBroken(f"connect to {key[0]}:{key[1]} timed out")
            error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if error:
            raise UpstreamBroken(f"cannot connect to {key[0]}:{key[1]}: {os.strerror(error)}")
    except BaseException:
        conn.close()
        raise
    return conn

