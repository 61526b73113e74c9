"""The lean child client: connection reuse, stale connections, framing and breakage."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial

import pytest
import trio

from llmd.children import upstream as upstream_module
from llmd.children.upstream import Upstream, UpstreamBroken

Handler = Callable[[trio.SocketStream, int], Awaitable[None]]


async def read_request(stream: trio.SocketStream) -> bytes:
    """One request head and its Content-Length body (enough for these tests)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some(65536)
        if not chunk:
            return b""
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    body = bytearray(rest)
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            want = int(line.split(b":")[1])
            while len(body) < want:
                body += await stream.receive_some(65536)
    return head


class Server:
    """A scripted HTTP server on loopback; counts connections."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.heads: list[bytes] = []
        self.url = ""

    async def _serve(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        number = self.connections
        async with stream:
            await self.handler(stream, number)

    async def start(self, nursery: trio.Nursery) -> None:
        listeners = await nursery.start(partial(trio.serve_tcp, self._serve, 0, host="127.0.0.1"))
        self.url = f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}"


async def body_of(upstream: Upstream, url: str) -> tuple[int, bytes]:
    response = await upstream.request("POST", url, "/x", [(b"content-type", b"text/plain")], b"hi")
    try:
        parts = []
        while chunk := await response.read():
            parts.append(chunk)
        return response.status, b"".join(parts)
    finally:
        response.close()


def keep_alive_answers(server_heads: list[bytes]) -> Handler:
    async def handler(stream: trio.SocketStream, number: int) -> None:
        while head := await read_request(stream):
            server_heads.append(head)
            await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    return handler


@pytest.fixture
async def serve(nursery):
    async def start(handler: Handler) -> Server:
        server = Server(handler)
        await server.start(nursery)
        return server
    return start


async def test_a_connection_is_reused_for_the_next_request(serve):
    heads: list[bytes] = []
    server = await serve(keep_alive_answers(heads))
    upstream = Upstream()
    for _ in range(5):
        assert await body_of(upstream, server.url) == (200, b"ok")
    assert server.connections == 1
    assert heads[0].startswith(b"POST /x HTTP/1.1\r\nhost: 127.0.0.1:")
    assert b"content-length: 2" in heads[0] and b"content-type: text/plain" in heads[0]
    upstream.aclose()


async def test_a_connection_the_child_closed_while_idle_is_not_used(serve):
    async def answer_once(stream: trio.SocketStream, number: int) -> None:
        await read_request(stream)
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    server = await serve(answer_once)  # answers, then closes without saying so
    upstream = Upstream()
    assert await body_of(upstream, server.url) == (200, b"ok")
    await trio.sleep(0.05)  # the close reaches us
    assert await body_of(upstream, server.url) == (200, b"ok")
    assert server.connections == 2 and upstream.retries == 0


async def test_a_request_on_a_connection_closed_unanswered_is_sent_again_once(serve):
    async def drop_first(stream: trio.SocketStream, number: int) -> None:
        while head := await read_request(stream):
            if number == 1 and len(seen) == 1:
                return  # read the second request, close without a byte of answer
            seen.append(head)
            await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    seen: list[bytes] = []
    server = await serve(drop_first)
    upstream = Upstream()
    assert await body_of(upstream, server.url) == (200, b"ok")
    assert await body_of(upstream, server.url) == (200, b"ok")
    assert upstream.retries == 1 and server.connections == 2


async def test_an_event_stream_is_relayed_piece_by_piece_and_its_connection_not_kept(serve):
    gate = trio.Event()

    async def stream_events(stream: trio.SocketStream, number: int) -> None:
        await read_request(stream)
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                              b"Transfer-Encoding: chunked\r\n\r\n7\r\ndata: 1\r\n")
        await gate.wait()
        await stream.send_all(b"7\r\ndata: 2\r\n0\r\n\r\n")
        await trio.sleep_forever()  # llama-server would close it; we must not wait to see

    server = await serve(stream_events)
    upstream = Upstream()
    response = await upstream.request("POST", server.url, "/s", [], b"{}")
    assert response.header(b"content-type") == b"text/event-stream"
    assert await response.read() == b"data: 1"
    gate.set()
    assert await response.read() == b"data: 2"
    assert await response.read() == b""
    response.close()
    # The next request goes out on a fresh connection (the stream's own never answers
    # again): the spare opened as the stream ended, so no connect waits in its path.
    with trio.fail_after(5):
        while server.connections < 2:
            await trio.sleep(0.01)
        second = await upstream.request("POST", server.url, "/s", [], b"{}")
        assert [await second.read() for _ in range(3)] == [b"data: 1", b"data: 2", b""]
    assert server.connections == 2


async def test_a_spare_for_a_child_that_has_gone_is_dropped_not_used(serve):
    async def stream_once(stream: trio.SocketStream, number: int) -> None:
        if number == 2:
            return  # the spare: closed unanswered, as by a child that has exited
        await read_request(stream)
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                              b"Content-Length: 7\r\n\r\ndata: 1")

    server = await serve(stream_once)
    upstream = Upstream()
    response = await upstream.request("POST", server.url, "/s", [], b"{}")
    assert await response.read() == b"data: 1"
    response.close()  # a spare is opened; the child then closes it unanswered
    with trio.fail_after(5):
        while server.connections < 2:
            await trio.sleep(0.01)
    await trio.sleep(0.05)
    response = await upstream.request("POST", server.url, "/s", [], b"{}")
    assert await response.read() == b"data: 1"
    assert server.connections == 3 and upstream.retries == 0


async def test_a_body_cut_short_is_an_error_not_a_short_answer(serve):
    async def cut(stream: trio.SocketStream, number: int) -> None:
        await read_request(stream)
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")

    server = await serve(cut)
    with pytest.raises(UpstreamBroken, match="mid-response"):
        await body_of(Upstream(), server.url)


async def test_a_body_delimited_by_close_is_read_whole(serve):
    async def until_close(stream: trio.SocketStream, number: int) -> None:
        await read_request(stream)
        await stream.send_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of it")

    server = await serve(until_close)
    assert await body_of(Upstream(), server.url) == (200, b"all of it")


async def test_a_malformed_response_is_an_error(serve):
    async def garbage(stream: trio.SocketStream, number: int) -> None:
        await read_request(stream)
        await stream.send_all(b"SPDY/9 what\r\n\r\n")

    server = await serve(garbage)
    with pytest.raises(UpstreamBroken, match="malformed"):
        await body_of(Upstream(), server.url)


async def test_nobody_listening_is_an_error_that_says_where():
    with trio.socket.socket() as s:
        await s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(UpstreamBroken, match=f"127.0.0.1:{port}"):
        await body_of(Upstream(), f"http://127.0.0.1:{port}")


async def test_a_response_abandoned_midway_closes_its_connection(serve):
    heads: list[bytes] = []

    async def slow(stream: trio.SocketStream, number: int) -> None:
        while head := await read_request(stream):
            heads.append(head)
            await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab")
            await trio.sleep(0.05)
            await stream.send_all(b"cd")

    server = await serve(slow)
    upstream = Upstream()
    response = await upstream.request("GET", server.url, "/", [], b"")
    assert await response.read() == b"ab"
    response.close()  # the client went away: the rest must not be read as the next answer
    assert await body_of(upstream, server.url) == (200, b"abcd")
    assert server.connections == 2


async def test_an_interim_100_continue_is_skipped_for_the_real_answer(serve):
    async def continue_first(stream: trio.SocketStream, number: int) -> None:
        while await read_request(stream):
            await stream.send_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            await stream.send_all(b"HTTP/1.1 201 Created\r\nContent-Length: 4\r\n\r\ndone")

    server = await serve(continue_first)
    upstream = Upstream()
    assert await body_of(upstream, server.url) == (201, b"done")
    assert await body_of(upstream, server.url) == (201, b"done")
    assert server.connections == 1


async def test_forgetting_a_child_closes_its_idle_connections(serve):
    heads: list[bytes] = []
    server = await serve(keep_alive_answers(heads))
    upstream = Upstream()
    await body_of(upstream, server.url)
    await body_of(upstream, server.url)
    upstream.forget(server.url)
    await body_of(upstream, server.url)
    assert server.connections == 2 and upstream.retries == 0


async def test_a_large_request_waits_for_the_child_to_read_it(serve):
    async def slow_reader(stream: trio.SocketStream, number: int) -> None:
        await trio.sleep(0.2)  # the request is far bigger than the socket buffers
        await read_request(stream)
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    server = await serve(slow_reader)
    body = b"x" * (16 << 20)
    response = await Upstream().request("POST", server.url, "/", [], body)
    assert response.status == 200 and await response.read() == b"ok"


async def test_a_child_that_never_reads_the_request_is_given_up_on(serve, autojump_clock,
                                                                   monkeypatch):
    monkeypatch.setattr(upstream_module, "WRITE_TIMEOUT", 5.0)

    async def deaf(stream: trio.SocketStream, number: int) -> None:
        await trio.sleep_forever()

    server = await serve(deaf)
    with pytest.raises(UpstreamBroken, match="not sent within 5s"):
        await Upstream().request("POST", server.url, "/", [], b"x" * (16 << 20))


async def test_a_bursts_surplus_connections_are_closed_soon_and_the_last_later(
        serve, nursery, monkeypatch):
    # cpp-httplib polls a kept-alive connection every 10 ms while it waits for the next request.
    monkeypatch.setattr(upstream_module, "IDLE_SECONDS", 2.0)
    closes = 0

    async def answer_then_count_close(stream: trio.SocketStream, number: int) -> None:
        nonlocal closes
        while await read_request(stream):
            await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        closes += 1

    async def closed(count: int) -> None:
        with trio.fail_after(5):
            while closes < count:
                await trio.sleep(0.02)

    server = await serve(answer_then_count_close)
    upstream = Upstream()
    nursery.start_soon(upstream.close_idle)
    assert await body_of(upstream, server.url) == (200, b"ok")  # the last one: IDLE_SECONDS
    await trio.sleep(0.1)  # close_idle now sleeps until that one is due
    burst = [await upstream.request("GET", server.url, "/", [], b"") for _ in range(2)]
    for response in burst:
        assert await response.read() == b"ok"
        response.close()
    assert server.connections == 2
    with trio.fail_after(1):
        await closed(1)  # the surplus, after SURPLUS_SECONDS, not when the first would go
    assert await body_of(upstream, server.url) == (200, b"ok")
    assert server.connections == 2  # the last one was kept for this
    await closed(2)  # and closed in its turn, after IDLE_SECONDS
    assert upstream.retries == 0
