"""How a child process is placed: its own process group, llmd's session."""

from __future__ import annotations

import os

import trio

from llmd.children import child


async def test_a_child_has_its_own_process_group_but_stays_in_llmds_session():
    # A session of its own would be a scheduler autogroup of its own (see spawn()).
    started = child.spawn("c", ["sh", "-c", "sleep 30"], log_lines=5)
    try:
        assert os.getpgid(started.pid) == started.pid
        assert os.getsid(started.pid) == os.getsid(0)
    finally:
        await started.stop(timeout=5)
    assert started.returncode is not None


async def test_a_stopped_child_is_told_before_its_signal_so_idle_connections_close_first():
    # llama-server waits for open keep-alive connections as it exits; on_stop is where
    # the launcher closes llmd's idle ones, so it must run while the child still lives.
    started = child.spawn("c", ["sh", "-c", "sleep 30"], log_lines=5)
    alive_when_told: list[bool] = []

    def on_stop() -> None:
        os.kill(started.pid, 0)  # raises if the child were gone
        alive_when_told.append(started.returncode is None)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(started.supervise, 5, on_stop)
        await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    assert alive_when_told == [True] and started.returncode is not None


async def test_a_child_that_exits_by_itself_needs_no_stop_call():
    told: list[bool] = []
    started = child.spawn("c", ["sh", "-c", "exit 3"], log_lines=5)
    await started.supervise(5, lambda: told.append(True))
    assert started.returncode == 3 and told == []
