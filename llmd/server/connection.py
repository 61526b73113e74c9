"""Each connection's request loop and hang-up watcher (contract: __init__.py)."""

from __future__ import annotations

import logging
import socket
from math import inf
from typing import TYPE_CHECKING, Any, Awaitable, Callable
from urllib.parse import unquote

import h11
import trio

from llmd.api.asgi import Message, Scope
from llmd.errors import BadRequest, LlmdError, MalformedRequest, ServerError, Unavailable
from llmd.server import hangup as hangups
from llmd.server import peercred, wire
from llmd.server.wire import MAX_RECV

if TYPE_CHECKING:  # the listener makes connections; they only call back into it
    from llmd.server.listener import Listener

log = logging.getLogger("llmd.http")

App = Callable[[Scope, Any, Any], Awaitable[None]]

# What the hang-up watcher may read past a request (a pipelined next one) before it
# stops reading: a client that floods must not fill llmd's memory.
MAX_AHEAD = 1 << 20
ASGI = {"version": "3.0", "spec_version": "2.3"}
DISCONNECT: Message = {"type": "http.disconnect"}


class _Receive:
    """The ASGI receive of a connection's current request; `nowait()` never waits."""

    __slots__ = ("_c",)

    def __init__(self, connection: Connection) -> None:
        self._c = connection

    def nowait(self) -> Message:
        """The next message if it is in already; trio.WouldBlock otherwise."""
        c = self._c
        pending = c.pending
        if pending is not None:
            c.pending = None
            return pending
        if c.hangup.gone or c.malformed or c.complete:
            return DISCONNECT
        if c.their_done:
            raise trio.WouldBlock
        message = c.take()
        if message is None:
            if not c.read_now():
                raise trio.WouldBlock
            message = c.take()
            if message is None:
                raise trio.WouldBlock
        return message

    async def __call__(self) -> Message:
        try:
            return self.nowait()
        except trio.WouldBlock:
            pass
        c = self._c
        if c.their_done:  # nothing more will come: only the client going
            with trio.CancelScope() as wait:
                c.hangup.watch(wait)
                await trio.sleep_forever()
            c.hangup.forget(wait)
            return DISCONNECT
        if c.conn.they_are_waiting_for_100_continue:
            await c.write([c.conn.send(h11.InformationalResponse(
                status_code=100, headers=[], reason=b"Continue"))])
        while True:
            await c.read()
            message = c.take()
            if message is not None:
                return message
            if c.hangup.gone:
                return DISCONNECT


class Connection:
    """One client connection: its h11 state, its request loop, its hang-up watcher."""

    def __init__(self, server: Listener, sock: socket.socket, address: Any) -> None:
        self.server = server
        self.app = server.app
        self.sock = sock
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=server.settings.max_head)
        self.hangup = hangups.Hangup()
        self.timer = trio.CancelScope()  # its deadline is the header or keep-alive timeout
        self.idle = True  # waiting for a request's head
        self.receive = _Receive(self)
        peer = None
        if server.tcp:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.client: tuple[str, int] | None = (address[0], address[1])
            local = sock.getsockname()
            self.local: tuple[str, int] | None = (local[0], local[1])
        else:
            self.client = self.local = None
            try:
                peer = peercred.peer_of(sock)
            except OSError:
                pass
        self.extensions = {hangups.EXTENSION: self.hangup, peercred.EXTENSION: peer}
        self._streak = 0  # reads and requests in a row that did not wait
        # The current request's state.
        self.pending: Message | None = None  # a body message taken ahead
        self.their_done = False  # the request's body is all in
        self.started = False
        self.complete = False
        self.broken = False  # a write was cut short: the connection must close
        self.malformed = 0  # the status h11 gave a bad body, if it did
        self._head_request = False
        self._held = b""  # a sized response's head, waiting for its body
        # The hang-up watcher: one task, started with the first request it is needed for.
        self._nursery: trio.Nursery | None = None
        self._watching = False
        self._watcher = False
        self._wake: trio.Event | None = None
        self._watch_scope: trio.CancelScope | None = None
        self._ahead = 0

    def close_if_idle(self) -> None:
        """Close now if no request is being served (shutdown)."""
        if self.idle:
            self.timer.cancel()

    async def run(self) -> None:
        """Serve requests until the client or the server ends the connection."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                with self.timer:
                    await self._serve()
                nursery.cancel_scope.cancel()
        except Exception:  # a bug here must cost one connection, never the listener
            log.exception("connection from %s failed", self.client or "the control socket")
        finally:
            self._watching = False
            if not self.hangup.gone:
                wire.close(self.sock)
            else:
                trio.lowlevel.notify_closing(self.sock)
                self.sock.close()
            self.server.gone(self)

    async def _serve(self) -> None:
        settings = self.server.settings
        timeout = settings.header_timeout
        conn = self.conn
        while not self.server.closing:
            self.idle = True
            self.timer.deadline = trio.current_time() + timeout
            try:
                while True:
                    event = conn.next_event()
                    if event is not h11.NEED_DATA:
                        break
                    await self.read()
            except h11.RemoteProtocolError as exc:
                if not self.hangup.gone:
                    await self.write([wire.error_response(MalformedRequest(exc.error_status_hint))])
                return
            if type(event) is not h11.Request:
                return  # the client closed the connection
            self.idle = False
            self.timer.deadline = inf
            if not await self._respond(event):
                return
            timeout = settings.keepalive_timeout
            self._streak += 1
            if self._streak > 2:  # pipelined requests: let the other tasks run
                self._streak = 0
                await trio.lowlevel.checkpoint()

    async def _respond(self, request: h11.Request) -> bool:
        """Serve one request; whether the connection may serve another."""
        headers = list(request.headers)
        length = chunked = False
        for name, _ in headers:
            if name == b"content-length":
                length = True
            elif name == b"transfer-encoding":
                chunked = True
        if length and chunked:
            await self.write([wire.error_response(BadRequest(
                "request has both Content-Length and Transfer-Encoding"))])
            return False
        path, _, query = request.target.partition(b"?")
        scope = {
            "type": "http", "asgi": ASGI, "http_version": request.http_version.decode(),
            "method": request.method.decode("ascii"), "scheme": "http",
            "path": unquote(path.decode("latin-1")), "raw_path": path, "query_string": query,
            "root_path": "", "headers": headers, "client": self.client, "server": self.local,
            "extensions": self.extensions,
        }
        self.pending = None
        self.their_done = self.started = self.complete = False
        self.malformed = 0
        self._head_request = request.method == b"HEAD"
        self._ahead = 0
        self.pending = self.take()  # a body that came with the head is handed over whole
        try:
            await self.app(scope, self.receive, self.send)
        except Exception:
            log.exception("request %s %s failed", scope["method"], scope["path"])
            if not self.started and not self.hangup.gone:
                await self.write([wire.error_response(ServerError("internal error; see llmd's log"))])
            return False
        except BaseException:  # cancelled: shutdown_timeout has passed
            if not self.started and not self.hangup.gone:
                # Said without waiting, so it can be said while cancelled: the client
                # learns why it got nothing, as far as the socket takes it at once.
                self.write_now(wire.error_response(Unavailable("llmd is shutting down")))
            raise
        finally:
            self._unwatch()
        if self.hangup.gone:
            return False
        if not self.started:
            error: LlmdError = (MalformedRequest(self.malformed) if self.malformed
                                else ServerError("no response; see llmd's log"))
            await self.write([wire.error_response(error)])
            return False
        if not self.complete or self.broken or self.server.closing:
            return False
        conn = self.conn
        if conn.their_state is h11.SEND_BODY:  # a body the app did not read: skip it if in
            try:
                while type(conn.next_event()) is h11.Data:
                    pass
            except h11.RemoteProtocolError:
                return False
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
            return True
        return False

    def take(self) -> Message | None:
        """The request body that has come in and is not handed over yet; None if none."""
        parts = []
        try:
            while True:
                event = self.conn.next_event()
                kind = type(event)
                if kind is h11.Data:
                    parts.append(event.data)  # type: ignore[union-attr]
                    continue
                if kind is h11.EndOfMessage:
                    self._body_done()
                    return {"type": "http.request", "body": _joined(parts), "more_body": False}
                if parts:
                    return {"type": "http.request", "body": _joined(parts), "more_body": True}
                return None  # NEED_DATA
        except h11.RemoteProtocolError as exc:
            if not self.hangup.gone:
                self.malformed = exc.error_status_hint
            return DISCONNECT

    def read_now(self) -> bool:
        """Read what the socket holds, without waiting; whether anything (or its end) came."""
        if self.hangup.gone:
            return False
        try:
            data = self.sock.recv(MAX_RECV)
        except BlockingIOError:
            return False
        except OSError:
            data = b""
        if not data:
            self.hangup.happened()
        self.conn.receive_data(data)
        return True

    async def read(self) -> None:
        """Read the socket, waiting only while it is empty; its end is a hang-up."""
        sock = self.sock
        while True:
            if self.hangup.gone:
                self.conn.receive_data(b"")
                return
            try:
                data = sock.recv(MAX_RECV)
            except BlockingIOError:
                self._streak = 0
                await trio.lowlevel.wait_readable(sock)
                continue
            except OSError:  # reset by the client
                data = b""
            break
        if not data:
            self.hangup.happened()
        self.conn.receive_data(data)
        self._streak += 1
        if self._streak > 2:  # a client whose bytes never run out lets the others run
            self._streak = 0
            await trio.lowlevel.checkpoint()

    async def send(self, message: Message) -> None:
        """The ASGI send of the current request."""
        kind = message["type"]
        if kind == "http.response.body":
            if not self.started or self.complete:
                raise RuntimeError("http.response.body outside a response")
            more = message.get("more_body", False)
            if not more:
                self.complete = True
                self._unwatch()
            if self.hangup.gone:
                return
            conn = self.conn
            parts = [self._held] if self._held else []
            self._held = b""
            body = message.get("body", b"")
            if body and not self._head_request:
                parts += conn.send_with_data_passthrough(h11.Data(data=body)) or []
            if not more:
                end = conn.send(h11.EndOfMessage())
                if end:
                    parts.append(end)
            await self.write(parts)
        elif kind == "http.response.start":
            if self.started:
                raise RuntimeError("http.response.start sent twice")
            status = message["status"]
            headers = message.get("headers", [])
            sized = False
            for name, _ in headers:
                if len(name) == 14 and name.lower() == b"content-length":
                    sized = True
                    break
            head = self.conn.send(h11.Response(
                status_code=status, headers=[*headers, (b"date", wire.Date.now())],
                reason=wire.PHRASES.get(status, b""))) or b""
            self.started = True
            if sized:  # its body follows at once: both go out in one write
                self._held = head
            else:  # a stream, whose first chunk may be a long way off
                await self.write([head])

    def write_now(self, data: bytes) -> None:
        """Send what the socket takes of `data` now, and nothing more."""
        try:
            self.sock.send(data)
        except OSError:
            pass

    async def write(self, parts: list[bytes]) -> None:
        """Send `parts` in one write if the socket takes them; wait only for what it won't."""
        if self.hangup.gone or not parts:
            return
        sock = self.sock
        try:
            if len(parts) == 1:
                total = len(parts[0])
                sent = sock.send(parts[0])
            else:
                total = sum(map(len, parts))
                sent = sock.sendmsg(parts)
        except BlockingIOError:
            sent = 0
        except OSError:
            self.hangup.happened()
            return
        if sent >= total:
            return
        rest = memoryview(b"".join(parts))[sent:]
        try:
            await wire.send_rest(sock, rest)
        except OSError:
            self.hangup.happened()
        except BaseException:
            self.broken = True
            raise

    def _body_done(self) -> None:
        # From here until the response ends, only a hang-up can come: watch for it.
        self.their_done = True
        if self.complete or self.hangup.gone:
            return
        self._watching = True
        if self._wake is not None:
            self._wake.set()
        elif not self._watcher and self._nursery is not None:
            self._watcher = True
            self._nursery.start_soon(self._watch)

    def _unwatch(self) -> None:
        self._watching = False
        if self._watch_scope is not None:
            self._watch_scope.cancel()  # the socket is the request loop's again at once

    async def _watch(self) -> None:
        sock = self.sock
        while True:
            if not self._watching:
                self._wake = trio.Event()
                await self._wake.wait()
                self._wake = None
                continue
            with trio.CancelScope() as self._watch_scope:
                await trio.lowlevel.wait_readable(sock)
            self._watch_scope = None
            if self.hangup.gone:
                return
            if not self._watching:
                continue
            try:
                data = sock.recv(MAX_RECV)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                self.conn.receive_data(b"")
                self.hangup.happened()
                return
            self.conn.receive_data(data)  # a pipelined request: kept for the request loop
            self._ahead += len(data)
            if self._ahead > MAX_AHEAD:
                self._watching = False


def _joined(parts: list[Any]) -> bytes:
    if len(parts) == 1:
        part = parts[0]
        return part if type(part) is bytes else bytes(part)
    return b"".join(parts)
