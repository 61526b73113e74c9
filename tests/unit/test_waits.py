"""The estimates behind 429 and 503: what waits, and how long it is likely to take."""

from __future__ import annotations

import trio

from llmd.errors import NotSoon, QueueFull
from llmd.models import waits
from llmd.models.catalog import ModelSpec
from llmd.models.scheduler import Scheduler
from tests.fakes.launcher import FakeLauncher
from tests.unit.test_scheduler import running, specs, use


def test_smoothing_folds_each_duration_into_the_average():
    assert waits.smooth(None, 10.0) == 10.0
    assert waits.smooth(10.0, 20.0) == 12.0


def test_retry_after_is_a_whole_second_at_least():
    assert waits.retry_after(None) == 1 and waits.retry_after(0.2) == 1
    assert waits.retry_after(7.1) == 8


async def test_a_drain_is_estimated_from_how_long_the_busy_models_requests_run(
        autojump_clock):
    s = Scheduler(specs("busy", "y"), FakeLauncher(), models_max=1, drain_timeout=600)
    async with running(s) as nursery:
        await use(s, "busy", 4)  # its requests take about 4 s
        nursery.start_soon(use, s, "busy", 30)
        await trio.sleep(1)
        nursery.start_soon(use, s, "y")
        await trio.sleep(0.1)
        now = trio.current_time()
        seconds, why = waits.expected(s.models["y"], s.models, s.admission.residency, now)
        # The busy request has run ~1.1 s of a typical 4 s (y has never loaded: no more).
        assert 2.5 < seconds < 3.5 and "busy must finish its requests first" in why


async def test_a_bounded_wait_gives_up_at_once_when_the_estimate_is_longer(autojump_clock):
    s = Scheduler(specs("busy", "y"), FakeLauncher(), models_max=1, drain_timeout=600)
    async with running(s) as nursery:
        await use(s, "busy", 20)
        nursery.start_soon(use, s, "busy", 20)
        await trio.sleep(1)
        started = trio.current_time()
        results: list = []
        await use(s, "y", 0, results, max_wait=5)
        (name, error), = results
        assert isinstance(error, NotSoon) and trio.current_time() - started < 0.5
        assert int(error.headers["retry-after"]) >= 19
        await trio.sleep(0.1)  # the load it started is cancelled: nobody waits for it
        assert s.models["busy"].state == "loaded"  # not evicted for a request that left
        assert s.models["y"].state == "unloaded"


async def test_max_queue_refuses_what_would_wait_behind_a_load(autojump_clock):
    s = Scheduler({"a": ModelSpec(name="a", path="/a", args=(), max_queue=2)}, FakeLauncher())
    results: list = []
    async with running(s) as nursery:
        nursery.start_soon(use, s, "a", 0, results)  # starts the load
        await trio.sleep(0.1)
        nursery.start_soon(use, s, "a", 0, results)  # the one place in the queue
        await trio.sleep(0.1)
        await use(s, "a", 0, results)
        await trio.sleep(5)  # the first two are served once the load is done
    refused = [r for _, r in results if isinstance(r, QueueFull)]
    assert len(refused) == 1 and refused[0].status == 429, results
    assert len([r for _, r in results if isinstance(r, int)]) == 2
