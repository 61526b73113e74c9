"""Each accepted connection before hypercorn serves it: who it is, and whether there's room.

hypercorn has no connection limit and no hook per connection, so llmd wraps the one
place it starts serving one (`hypercorn.trio.run.TCPServer`). A listener's limit rides
on its hypercorn Config; a connection over it gets a JSON 503 and is closed at once,
before any of it is parsed. The wrapper also closes a connection as soon as its client
has gone, which hypercorn 0.17 only does after keep_alive_timeout. And a request h11
cannot parse gets the documented JSON error body instead of an empty one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import h11
import hypercorn.protocol.h11 as _hypercorn_h11
import hypercorn.trio.run as _hypercorn_run
import trio

from . import peercred
from .errors import MalformedRequest, Unavailable


@dataclass
class Limit:
    """How many connections one listener serves at once; the rest are refused."""

    most: int
    current: int = 0
    refused: int = 0


def set_limit(config: Any, limit: Limit) -> None:
    """Give a hypercorn Config's listener `limit`."""
    config.llmd_limit = limit


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


def install() -> None:
    """Make hypercorn check the limit and record the peer of each connection (idempotent)."""
    if getattr(_hypercorn_run.TCPServer, "_llmd_connections", False):
        return

    class Connection(_hypercorn_run.TCPServer):  # type: ignore[misc, valid-type]
        async def _read_data(self) -> None:
            await super()._read_data()
            # hypercorn leaves its keep-alive timer running after the client has gone,
            # and its nursery waits for it: the socket would stay open that long.
            await self.idle_task.stop()

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
            if limit is not None:
                limit.current += 1
            try:
                await Connection(app, config, context, state, stream)
            finally:
                if limit is not None:
                    limit.current -= 1

        return run()

    serve_connection._llmd_connections = True  # type: ignore[attr-defined]
    _hypercorn_run.TCPServer = serve_connection  # type: ignore[assignment]
    _hypercorn_h11.H11Protocol._send_error_response = _send_error_response  # type: ignore
