"""Small ASGI helpers shared by the router and the control app."""

from __future__ import annotations

import json
from typing import Any, Awaitable, Callable, MutableMapping
from urllib.parse import parse_qs

import trio

from llmd.errors import BadRequest, BodyTooLarge, LlmdError, RequestTimeout

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

JSON_HEADERS = [(b"content-type", b"application/json")]
SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


def query(scope: Scope) -> dict[str, str]:
    """The query string as a dict of first values."""
    raw = scope.get("query_string", b"").decode("latin-1")
    if not raw:
        return {}
    return {k: v[0] for k, v in parse_qs(raw, keep_blank_values=True).items()}


def header(scope: Scope, name: bytes) -> str | None:
    """The first value of a request header (name in lower case)."""
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


def check_framing(scope: Scope) -> None:
    """Refuse a request framed by both Content-Length and Transfer-Encoding."""
    # h11 lets Transfer-Encoding win, as RFC 9112 allows; but behind a proxy that read the
    # other framing, what follows could be a smuggled request. Answer, then hang up.
    names = {name for name, _ in scope["headers"]}
    if b"transfer-encoding" in names and b"content-length" in names:
        raise BadRequest("request has both Content-Length and Transfer-Encoding",
                         headers={"connection": "close"})


async def read_body(scope: Scope, receive: Receive, limit: int, timeout: float) -> bytes:
    """The whole request body; BodyTooLarge past `limit` bytes, RequestTimeout past `timeout`."""
    declared = header(scope, b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"request body exceeds {limit} bytes")
    body = _Body(limit)
    # A receive that offers nowait() (llmd's server's) gives what has arrived at once: a
    # body that came whole needs no cancel scope to time it.
    nowait = getattr(receive, "nowait", None)
    if nowait is not None:
        try:
            while not body.add(nowait()):
                pass
            return body.whole()
        except trio.WouldBlock:
            pass  # the rest is on its way
    with trio.move_on_after(timeout):  # a client dribbling its body must not hold us
        while not body.add(await receive()):
            pass
        return body.whole()
    raise RequestTimeout(f"request body not received within {timeout:g}s")


class _Body:
    """A request body gathered message by message, within a size limit."""

    __slots__ = ("limit", "size", "chunks")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.size = 0
        self.chunks: list[bytes] = []

    def add(self, message: Message) -> bool:
        """Take one ASGI message; whether the body is complete."""
        if message["type"] == "http.disconnect":
            raise ClientGone()
        chunk = message.get("body", b"")
        self.size += len(chunk)
        if self.size > self.limit:
            raise BodyTooLarge(f"request body exceeds {self.limit} bytes")
        self.chunks.append(chunk)
        return not message.get("more_body", False)

    def whole(self) -> bytes:
        return self.chunks[0] if len(self.chunks) == 1 else b"".join(self.chunks)


class ClientGone(Exception):
    """The client disconnected before its request was read."""


def json_object(body: bytes) -> dict[str, Any]:
    """The body parsed as a JSON object; BadRequest otherwise."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"invalid JSON body: {exc}")
    if not isinstance(data, dict):
        raise BadRequest("request body must be a JSON object")
    return data


async def send_json(send: Send, status: int, data: Any,
                    headers: dict[str, str] | None = None) -> None:
    """Send a complete JSON response."""
    body = json.dumps(data).encode()
    extra = [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status,
                "headers": [*JSON_HEADERS, (b"content-length", str(len(body)).encode()), *extra]})
    await send({"type": "http.response.body", "body": body})


async def send_error(send: Send, error: LlmdError, anthropic: bool = False) -> None:
    """Send an error in the documented JSON format (Anthropic's, for its routes)."""
    body = error.anthropic_body() if anthropic else error.body()
    await send_json(send, error.status, body, error.headers)


async def send_event_error(send: Send, error: LlmdError, anthropic: bool = False) -> None:
    """End a started server-sent event stream with the error as its last event."""
    tail = (f"event: error\ndata: {json.dumps(error.anthropic_body())}\n\n" if anthropic
            else f"data: {json.dumps(error.body())}\n\n").encode()
    await send({"type": "http.response.body", "body": tail, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


async def send_text(send: Send, status: int, text: str, content_type: bytes) -> None:
    """Send a complete plain-text response."""
    body = text.encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def handled_as_non_http(scope: Scope, receive: Receive, send: Send) -> bool:
    """Answer lifespan (and ignore anything else that isn't HTTP); True if not HTTP."""
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
    return scope["type"] != "http"


async def lifespan(receive: Receive, send: Send) -> None:
    """Answer the ASGI lifespan protocol; llmd's own lifetime is its nursery's."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def event_stream(send: Send, events: trio.MemoryReceiveChannel[dict[str, Any]]) -> None:
    """Forward events as server-sent events until the channel closes."""
    await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
    await send({"type": "http.response.body", "body": b": llmd events\n\n", "more_body": True})
    async with events:
        async for event in events:
            data = f"data: {json.dumps(event)}\n\n".encode()
            await send({"type": "http.response.body", "body": data, "more_body": True})
    await send({"type": "http.response.body", "body": b""})
