"""The queue between a connection and its app: waits only when it must."""

from __future__ import annotations

import hypercorn.trio.task_group as task_group
import trio
import trio.testing

from llmd import app_queue


def _queue(size: int = 2):  # type: ignore[no-untyped-def]
    to_app, from_server = trio.open_memory_channel(size)
    return app_queue.putter(to_app), app_queue.Taker(from_server)


async def test_an_event_goes_in_and_out_without_a_trip_through_the_scheduler() -> None:
    put, take = _queue()
    with trio.testing.assert_no_checkpoints():
        await put({"type": "http.request", "body": b"x", "more_body": True})
        await put({"type": "http.request", "body": b"", "more_body": False})
        assert (await take())["body"] == b"x"
        assert (await take())["more_body"] is False


async def test_a_take_from_an_empty_queue_waits_for_the_next_put() -> None:
    put, take = _queue()
    taken: list[dict] = []

    async def app() -> None:
        taken.append(await take())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(app)
        await trio.testing.wait_all_tasks_blocked()
        assert taken == []
        await put({"type": "http.disconnect"})
    assert taken == [{"type": "http.disconnect"}]


async def test_a_put_into_a_full_queue_waits_for_a_take() -> None:
    put, take = _queue(size=1)
    await put({"n": 1})
    put_done = trio.Event()

    async def server() -> None:
        await put({"n": 2})
        put_done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(server)
        await trio.testing.wait_all_tasks_blocked()
        assert not put_done.is_set()
        assert await take() == {"n": 1}
    assert put_done.is_set()
    assert await take() == {"n": 2}


async def test_a_waiting_take_is_where_cancellation_lands() -> None:
    _, take = _queue()
    with trio.move_on_after(0.01) as scope:
        await take()
    assert scope.cancelled_caught


def test_hypercorn_queues_app_events_this_way_once_installed() -> None:
    app_queue.install()
    assert task_group.TaskGroup.spawn_app is app_queue._spawn_app
