"""Reading a request body: whole at once when it is in, timed when it has to be waited for."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from llmd.api import asgi
from llmd.errors import BodyTooLarge, RequestTimeout

SCOPE = {"headers": []}


class _Take:
    """A receive with nowait(), as llmd's server gives apps: waits only when empty."""

    def __init__(self, channel: trio.MemoryReceiveChannel) -> None:
        self.nowait = channel.receive_nowait
        self._receive = channel.receive

    async def __call__(self) -> dict:
        try:
            return self.nowait()
        except trio.WouldBlock:
            return await self._receive()


def _queue():  # type: ignore[no-untyped-def]
    to_app, from_server = trio.open_memory_channel(10)

    async def put(event: dict) -> None:
        to_app.send_nowait(event)

    return put, _Take(from_server)


def _part(data: bytes, more: bool) -> dict:
    return {"type": "http.request", "body": data, "more_body": more}


async def test_a_body_that_came_whole_is_read_without_waiting() -> None:
    put, take = _queue()
    await put(_part(b'{"model":', True))
    await put(_part(b' "m"}', False))
    with trio.testing.assert_no_checkpoints():
        assert await asgi.read_body(SCOPE, take, 1024, 1.0) == b'{"model": "m"}'


async def test_the_rest_of_a_body_on_its_way_is_waited_for() -> None:
    put, take = _queue()
    await put(_part(b"ab", True))

    async def client() -> None:
        await trio.sleep(0.01)
        await put(_part(b"cd", False))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(client)
        assert await asgi.read_body(SCOPE, take, 1024, 5.0) == b"abcd"


async def test_a_body_that_stops_halfway_times_out() -> None:
    put, take = _queue()
    await put(_part(b"ab", True))
    with pytest.raises(RequestTimeout):
        await asgi.read_body(SCOPE, take, 1024, 0.05)


async def test_a_body_over_the_limit_is_refused_even_when_it_came_whole() -> None:
    put, take = _queue()
    await put(_part(b"x" * 100, False))
    with pytest.raises(BodyTooLarge):
        await asgi.read_body(SCOPE, take, 10, 1.0)


async def test_a_client_gone_before_its_body_came_is_reported() -> None:
    put, take = _queue()
    await put({"type": "http.disconnect"})
    with pytest.raises(asgi.ClientGone):
        await asgi.read_body(SCOPE, take, 10, 1.0)


async def test_a_plain_receive_is_read_under_the_timeout() -> None:
    parts = [_part(b"ab", True), _part(b"", False)]

    async def receive() -> dict:
        await trio.lowlevel.checkpoint()
        return parts.pop(0)

    assert await asgi.read_body(SCOPE, receive, 1024, 1.0) == b"ab"
