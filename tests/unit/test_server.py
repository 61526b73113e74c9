"""llmd's HTTP server keeps each promise of its contract (llmd/server/__init__.py).

Starts: the server on a loopback TCP or Unix socket with small ASGI apps written here, and
trio socket streams as clients. Time limits are a fraction of a second of real time.
"""

from __future__ import annotations

import json
import os
import socket
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

import pytest
import trio
import trio.testing

from llmd.api import asgi
from llmd import server
from llmd.errors import RequestTimeout
from llmd.server.hangup import cancelled_on_hangup

GET = b"GET / HTTP/1.1\r\nhost: localhost\r\n\r\n"


async def hello(scope: Any, receive: Any, send: Any) -> None:
    await asgi.send_json(send, 200, {"path": scope["path"]})


class Served:
    def __init__(self, address: Any, shutdown: trio.Event, family: int) -> None:
        self.address = address
        self.shutdown = shutdown
        self.family = family

    async def connect(self) -> trio.SocketStream:
        if self.family == socket.AF_UNIX:
            return await trio.open_unix_socket(self.address)
        return await trio.open_tcp_stream(*self.address)


@asynccontextmanager
async def serving(app: Any = hello, settings: server.Settings | None = None,
                  limit: server.Limit | None = None,
                  unix: str | None = None) -> AsyncIterator[Served]:
    if unix:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(unix)
        address: Any = unix
    else:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("127.0.0.1", 0))
        address = listener.getsockname()
    listener.listen(64)
    shutdown = trio.Event()
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve, app, listener,
                                settings or server.Settings(shutdown_timeout=1),
                                limit or server.Limit(100), shutdown)
            try:
                yield Served(address, shutdown, listener.family)
            finally:
                shutdown.set()
    finally:
        listener.close()


async def read_all(stream: trio.SocketStream, within: float = 5) -> bytes:
    """Everything until the server closes the connection."""
    out = b""
    with trio.fail_after(within):
        try:
            while chunk := await stream.receive_some(65536):
                out += chunk
        except trio.BrokenResourceError:
            pass
    return out


def body_of(answer: bytes) -> Any:
    return json.loads(answer.split(b"\r\n\r\n", 1)[1])


async def test_a_connection_over_the_limit_gets_a_json_503_before_it_sends_a_byte() -> None:
    limit = server.Limit(1)
    async with serving(limit=limit) as served:
        held = await served.connect()
        await trio.testing.wait_all_tasks_blocked()
        over = await served.connect()
        answer = await read_all(over)  # without sending anything
        assert answer.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
        assert b"retry-after: 1\r\n" in answer and b"connection: close\r\n" in answer
        assert body_of(answer)["error"] == {
            "code": 503, "type": "unavailable_error",
            "message": "too many connections (at most 1); try again shortly"}
        assert (limit.current, limit.refused) == (1, 1)
        await held.send_all(GET)  # the one admitted is served
        assert (await held.receive_some(65536)).startswith(b"HTTP/1.1 200 OK\r\n")
        await held.aclose()
        with trio.fail_after(2):
            while limit.current:
                await trio.sleep(0.01)


async def test_a_request_head_that_never_ends_is_cut_off_at_header_timeout() -> None:
    async with serving(settings=server.Settings(header_timeout=0.2)) as served:
        stream = await served.connect()
        await stream.send_all(b"GET / HTTP/1.1\r\nhost: localhost\r\n")
        start = trio.current_time()
        assert await read_all(stream) == b""
        assert 0.15 < trio.current_time() - start < 2


async def test_an_idle_kept_alive_connection_closes_at_keepalive_timeout() -> None:
    settings = server.Settings(header_timeout=5, keepalive_timeout=0.2)
    async with serving(settings=settings) as served:
        stream = await served.connect()
        await stream.send_all(GET)
        start = trio.current_time()
        answer = await read_all(stream)
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer.count(b"HTTP/1.1") == 1
        assert 0.15 < trio.current_time() - start < 2


async def test_a_slow_body_gets_408_from_the_app_within_body_timeout() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        assert callable(receive.nowait)  # a body that came whole needs no timer
        try:
            await asgi.read_body(scope, receive, 1 << 20, 0.2)
        except RequestTimeout as error:
            await asgi.send_error(send, error)

    async with serving(app) as served:
        stream = await served.connect()
        await stream.send_all(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\nab")
        with trio.fail_after(2):
            answer = await stream.receive_some(65536)
        assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
        assert body_of(answer)["error"]["code"] == 408


@pytest.mark.parametrize("request_bytes, status", [
    (b"GET / HTTP/1.1\r\nhost: x\r\nBad Header: 1\r\n\r\n", 400),
    (b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\nhost: x\r\n\r\n", 431),
    (b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: gzip, chunked\r\n\r\n", 501),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64, 400),
    (b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n"
     b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nhost: x\r\n\r\n", 400),
])
async def test_a_request_h11_or_the_framing_check_refuses_gets_json_and_a_close(
        request_bytes: bytes, status: int) -> None:
    called = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        called.append(scope["path"])
        await hello(scope, receive, send)

    async with serving(app) as served:
        stream = await served.connect()
        await stream.send_all(request_bytes)
        answer = await read_all(stream)
    assert answer.startswith(b"HTTP/1.1 %d " % status), answer[:100]
    assert answer.count(b"HTTP/1.1 ") == 1 and b"connection: close\r\n" in answer
    error = body_of(answer)["error"]
    assert error["code"] == status and error["message"] and error["type"]
    assert called == []


async def test_a_sized_response_goes_out_in_one_write_a_stream_head_at_once() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        sized = scope["path"] == "/sized"
        headers = [(b"content-length", b"5")] if sized else []
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await trio.sleep(0.2)  # a head sent on its own would arrive alone
        await send({"type": "http.response.body", "body": b"hello"})

    async with serving(app) as served:
        stream = await served.connect()
        await stream.send_all(b"GET /sized HTTP/1.1\r\nhost: x\r\n\r\n")
        first = await stream.receive_some(65536)
        assert first.startswith(b"HTTP/1.1 200 OK\r\n") and first.endswith(b"\r\n\r\nhello")
        await stream.send_all(b"GET /stream HTTP/1.1\r\nhost: x\r\n\r\n")
        first = await stream.receive_some(65536)
        assert first.startswith(b"HTTP/1.1 200 OK\r\n") and first.endswith(b"\r\n\r\n")
        assert b"transfer-encoding: chunked" in first.lower()
        assert await stream.receive_some(65536) == b"5\r\nhello\r\n0\r\n\r\n"


@pytest.mark.parametrize("mid_stream", [False, True])
async def test_a_hangup_cancels_the_request_at_once(mid_stream: bool) -> None:
    cancelled = trio.Event()
    started = trio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await asgi.read_body(scope, receive, 1024, 5)
        with cancelled_on_hangup(scope, send) as send:
            try:
                if mid_stream:
                    await send({"type": "http.response.start", "status": 200,
                                "headers": asgi.SSE_HEADERS})
                started.set()
                while True:
                    if mid_stream:
                        await send({"type": "http.response.body", "body": b"data: x\n\n",
                                    "more_body": True})
                    await trio.sleep(0.05)
            except trio.Cancelled:
                cancelled.set()
                raise

    async with serving(app, settings=server.Settings(header_timeout=60,
                                                     keepalive_timeout=60)) as served:
        stream = await served.connect()
        await stream.send_all(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{}")
        await started.wait()
        await stream.aclose()
        with trio.fail_after(1):  # not a timeout: the hang-up itself
            await cancelled.wait()


async def test_receive_answers_disconnect_when_the_client_goes() -> None:
    got = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        got.append(await receive())
        got.append(await receive())

    async with serving(app) as served:
        stream = await served.connect()
        await stream.send_all(GET)
        await trio.testing.wait_all_tasks_blocked()
        await stream.aclose()
        with trio.fail_after(1):
            while len(got) < 2:
                await trio.sleep(0.01)
    assert got == [{"type": "http.request", "body": b"", "more_body": False},
                   {"type": "http.disconnect"}]


async def test_the_peer_credentials_of_a_unix_socket_are_in_the_scope(tmp_path: Any) -> None:
    seen = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["extensions"]["peercred"])
        await hello(scope, receive, send)

    async with serving(app, unix=str(tmp_path / "s.sock")) as served:
        stream = await served.connect()
        await stream.send_all(GET)
        assert (await stream.receive_some(65536)).startswith(b"HTTP/1.1 200 OK")
    peer = seen[0]
    assert (peer.pid, peer.uid) == (os.getpid(), os.getuid()) and os.getgid() in peer.gids


async def test_tcp_requests_carry_no_peer_credentials_but_client_and_server() -> None:
    seen = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope)
        await hello(scope, receive, send)

    async with serving(app) as served:
        stream = await served.connect()
        await stream.send_all(b"GET /a%20b?x=1 HTTP/1.1\r\nHost: x\r\n\r\n")
        await stream.receive_some(65536)
    scope = seen[0]
    assert scope["extensions"]["peercred"] is None
    assert scope["server"] == tuple(served.address) and scope["client"][0] == "127.0.0.1"
    assert (scope["path"], scope["raw_path"], scope["query_string"]) == ("/a b", b"/a%20b",
                                                                         b"x=1")
    assert scope["headers"] == [(b"host", b"x")]


async def test_shutdown_lets_requests_in_flight_finish_and_closes_idle_ones() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await trio.sleep(0.3)
        await hello(scope, receive, send)

    async with serving(app, settings=server.Settings(shutdown_timeout=5)) as served:
        idle = await served.connect()
        busy = await served.connect()
        await busy.send_all(GET)
        await trio.testing.wait_all_tasks_blocked()
        served.shutdown.set()
        assert await read_all(idle, within=1) == b""
        answer = await read_all(busy, within=2)  # answered, then closed
        assert answer.startswith(b"HTTP/1.1 200 OK") and answer.count(b"HTTP/1.1") == 1


async def test_shutdown_cancels_what_is_still_running_at_shutdown_timeout() -> None:
    cancelled = trio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            cancelled.set()
            raise

    with trio.fail_after(3):
        async with serving(app, settings=server.Settings(shutdown_timeout=0.2)) as served:
            stream = await served.connect()
            await stream.send_all(GET)
            await trio.testing.wait_all_tasks_blocked()
    assert cancelled.is_set()
    answer = await read_all(stream)
    assert answer.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert body_of(answer)["error"]["message"] == "llmd is shutting down"


async def test_status_lines_carry_reason_phrases_and_a_date() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await asgi.send_json(send, int(scope["path"][1:]), {})

    async with serving(app) as served:
        stream = await served.connect()
        for status, phrase in ((404, b"Not Found"), (200, b"OK"), (503, b"Service Unavailable")):
            await stream.send_all(b"GET /%d HTTP/1.1\r\nhost: x\r\n\r\n" % status)
            answer = await stream.receive_some(65536)
            assert answer.startswith(b"HTTP/1.1 %d %s\r\n" % (status, phrase))
            assert b"\r\ndate: " in answer


async def test_pipelined_requests_are_answered_in_order_on_one_connection() -> None:
    async with serving() as served:
        stream = await served.connect()
        await stream.send_all(b"".join(b"GET /%d HTTP/1.1\r\nhost: x\r\n\r\n" % i
                                       for i in range(3)) +
                              b"GET /last HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        answer = await read_all(stream)
    assert [json.loads(part.split(b"\r\n\r\n", 1)[1])["path"]
            for part in answer.split(b"HTTP/1.1 ")[1:]] == ["/0", "/1", "/2", "/last"]
