"""Scheduler rules, against in-process fake children and trio's mock clock."""

from __future__ import annotations

from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from llmd.models.catalog import ModelSpec
from llmd.errors import ModelFailed, ModelNotLoaded, ModelNotFound, NoRoom
from llmd.models.scheduler import Scheduler
from tests.fakes.launcher import Behaviour, FakeLauncher


def specs(*names: str, **kw) -> dict[str, ModelSpec]:
    return {n: ModelSpec(name=n, path=f"/m/{n}.gguf", args=(), **kw) for n in names}


@asynccontextmanager
async def running(scheduler: Scheduler):
    async with trio.open_nursery() as nursery:
        await nursery.start(scheduler.run)
        yield nursery
        nursery.cancel_scope.cancel()


async def use(scheduler: Scheduler, name: str, seconds: float = 0.0, results=None, **kw):
    try:
        async with scheduler.lease(name, **kw) as handle:
            await trio.sleep(seconds)
            if results is not None:
                results.append((name, handle.pid))
    except Exception as exc:
        if results is None:
            raise
        results.append((name, exc))


async def test_concurrent_requests_share_one_load(autojump_clock):
    launcher = FakeLauncher()
    s = Scheduler(specs("a"), launcher)
    results: list = []
    async with running(s):
        async with trio.open_nursery() as n:
            for _ in range(5):
                n.start_soon(use, s, "a", 0.1, results)
    assert launcher.launches == ["a"]
    assert len({pid for _, pid in results}) == 1 and len(results) == 5


async def test_unknown_model_is_not_found():
    s = Scheduler(specs("a"), FakeLauncher())
    async with running(s):
        with pytest.raises(ModelNotFound) as info:
            async with s.lease("nope"):
                pass
    assert info.value.status == 400


async def test_alias_resolves_to_its_model(autojump_clock):
    s = Scheduler({"a": ModelSpec(name="a", path="/a", args=(), aliases=("default",))},
                  FakeLauncher())
    async with running(s):
        async with s.lease("default") as handle:
            assert handle.base_url == "fake://a"


async def test_autoload_false_refuses_an_unloaded_model(autojump_clock):
    s = Scheduler(specs("a"), FakeLauncher())
    async with running(s):
        with pytest.raises(ModelNotLoaded):
            async with s.lease("a", autoload=False):
                pass
        await s.load("a")
        async with s.lease("a", autoload=False):
            pass


async def test_idle_lru_model_is_evicted_at_models_max(autojump_clock):
    launcher = FakeLauncher()
    s = Scheduler(specs("a", "b", "c"), launcher, models_max=2)
    async with running(s):
        await use(s, "a")
        await trio.sleep(1)
        await use(s, "b")
        await trio.sleep(1)
        await use(s, "a")  # a is now more recently used than b
        await use(s, "c")
        states = {n: m.state for n, m in s.models.items()}
    assert states == {"a": "loaded", "b": "unloaded", "c": "loaded"}
    assert launcher.launches == ["a", "b", "c"]


async def test_busy_model_is_never_evicted_and_load_gets_503_after_drain_timeout(autojump_clock):
    launcher = FakeLauncher()
    s = Scheduler(specs("a", "b"), launcher, models_max=1, drain_timeout=30)
    async with running(s) as n:
        n.start_soon(use, s, "a", 1000)
        await trio.testing.wait_all_tasks_blocked()
        await trio.sleep(2)
        with pytest.raises(NoRoom) as info:
            await use(s, "b")
        assert info.value.status == 503 and info.value.headers["retry-after"]
        assert s.models["a"].state == "loaded"
        assert launcher.cancelled == []


async def test_load_waits_for_a_busy_model_to_go_idle(autojump_clock):
    s = Scheduler(specs("a", "b"), FakeLauncher(), models_max=1, drain_timeout=600)
    results: list = []
    async with running(s) as n:
        n.start_soon(use, s, "a", 50, results)
        await trio.sleep(2)
        start = trio.current_time()
        await use(s, "b", 0, results)
        assert trio.current_time() - start >= 48
    assert [name for name, _ in results] == ["a", "b"]


async def test_interleaved_requests_load_each_model_once(autojump_clock):
    launcher = FakeLauncher()
    s = Scheduler(specs("a", "b"), launcher, models_max=1)
    results: list = []
    async with running(s):
        async with trio.open_nursery() as n:
            for i in range(6):
                n.start_soon(use, s, "ab"[i % 2], 0.5, results)
                await trio.sleep(0.01)
    assert len(results) == 6 and all(isinstance(r, int) for _, r in results)
    assert len(launcher.launches) <= 2


async def test_failed_load_fails_every_waiter_and_is_reported(autojump_clock):
    launcher = FakeLauncher()
    launcher.behaviour["bad"] = Behaviour(fail_code=3)
    s = Scheduler(specs("bad", "good"), launcher)
    results: list = []
    async with running(s):
        async with trio.open_nursery() as n:
            for _ in range(3):
                n.start_soon(use, s, "bad", 0, results)
        await use(s, "good")
        info = s.describe(s.models["bad"])
    assert len(results) == 3 and all(isinstance(e, ModelFailed) for _, e in results)
    assert "exited with code 3" in str(results[0][1]) and "'bad'" in str(results[0][1])
    assert info["status"] == {**info["status"], "value": "unloaded", "failed": True,
                              "exit_code": 3}
    assert info["status"]["tail"] == ["error: bad model"]


async def test_child_dying_while_loaded_is_noticed_at_once(autojump_clock):
    launcher = FakeLauncher()
    s = Scheduler(specs("a"), launcher)
    async with running(s):
        await s.load("a")
        launcher.running["a"].crash(code=139)
        await trio.testing.wait_all_tasks_blocked()
        status = s.describe(s.models["a"])["status"]
    assert status["value"] == "unloaded" and status["failed"] and status["exit_code"] == 139


async def test_last_waiter_leaving_cancels_the_load(autojump_clock):
    launcher = FakeLauncher()
    launcher.behaviour["a"] = Behaviour(load_seconds=100)
    s = Scheduler(specs("a"), launcher)
    async with running(s):
        with trio.move_on_after(5):
            await use(s, "a")
        await trio.testing.wait_all_tasks_blocked()
        assert launcher.cancelled == ["a"] and s.models["a"].state == "unloaded"


async def test_explicit_load_survives_its_caller_leaving(autojump_clock):
    launcher = FakeLauncher()
    launcher.behaviour["a"] = Behaviour(load_seconds=100)
    s = Scheduler(specs("a"), launcher)
    async with running(s):
        with trio.move_on_after(5):
            await s.load("a")
        await trio.sleep(200)
        assert s.models["a"].state == "loaded" and launcher.cancelled == []


async def test_unload_cancels_a_loading_model_only(autojump_clock):
    launcher = FakeLauncher()
    launcher.behaviour["slow"] = Behaviour(hang=True)
    s = Scheduler(specs("slow", "other"), launcher)
    async with running(s) as n:
        await s.load("other")
        outcome: list = []
        n.start_soon(use, s, "slow", 0, outcome)
        await trio.testing.wait_all_tasks_blocked()
        assert s.models["slow"].state == "loading"
        await s.unload("slow")
        await trio.testing.wait_all_tasks_blocked()
        assert launcher.cancelled == ["slow"]
        assert s.models["other"].state == "loaded"
        assert type(outcome[0][1]).__name__ == "ModelUnloaded"


async def test_unload_waits_for_leases_to_drain(autojump_clock):
    s = Scheduler(specs("a"), FakeLauncher())
    async with running(s) as n:
        await s.load("a")
        n.start_soon(use, s, "a", 30)
        await trio.testing.wait_all_tasks_blocked()
        start = trio.current_time()
        n.start_soon(s.unload, "a")
        await trio.testing.wait_all_tasks_blocked()
        assert s.models["a"].state == "draining"
        while s.models["a"].state != "unloaded":
            await s.models["a"].changed.wait()
        assert trio.current_time() - start >= 29


async def test_force_unload_cancels_requests_in_flight(autojump_clock):
    s = Scheduler(specs("a"), FakeLauncher())
    results: list = []
    async with running(s) as n:
        await s.load("a")
        n.start_soon(use, s, "a", 1000, results)
        await trio.testing.wait_all_tasks_blocked()
        await s.unload("a", force=True)
        await trio.testing.wait_all_tasks_blocked()
    assert s.models["a"].state == "unloaded"
    assert results and results[0][1].__class__.__name__ == "ModelUnloaded"


async def test_pinned_model_is_not_evicted(autojump_clock):
    s = Scheduler({"p": ModelSpec(name="p", path="/p", args=(), pin=True),
                   **specs("a", "b")}, FakeLauncher(), models_max=2, drain_timeout=10)
    async with running(s):
        await use(s, "p")
        await use(s, "a")
        await use(s, "b")
        assert s.models["p"].state == "loaded" and s.models["a"].state == "unloaded"


async def test_state_changes_are_published_in_llama_cpp_router_shapes(autojump_clock):
    s = Scheduler(specs("a"), FakeLauncher())
    async with running(s):
        events = s.subscribe()
        await s.load("a")
        await s.unload("a")
        seen = []
        while True:
            try:
                event = events.receive_nowait()
            except trio.WouldBlock:
                break
            if event["event"] == "model_status" or "args" in event["data"]:  # not progress
                seen.append((event["event"], event["data"]["status"]))
        assert event["data"]["exit_code"] == 0 and event["model"] == "a"
        assert "args" in event["data"]  # llmd's own fields ride along
    assert seen == [("model_status", "loading"), ("status_change", "loading"),
                    ("status_change", "loading"), ("status_change", "loaded"),
                    ("status_change", "loaded"), ("status_change", "unloaded")]


async def test_a_busy_victim_whose_child_is_stopping_is_not_handed_out_again(autojump_clock):
    # b's load marks busy a for eviction. a drains, and its (slow) child starts stopping.
    # Then room appears another way (c goes idle and is evicted). a must not go back to
    # "loaded" while its child exits: requests would be sent to a dying child.
    launcher = FakeLauncher()
    launcher.behaviour["a"] = Behaviour(stop_seconds=30)
    s = Scheduler(specs("a", "c", "b"), launcher, models_max=2, drain_timeout=600)
    results: list = []
    async with running(s) as n:
        n.start_soon(use, s, "a", 10, results)
        await trio.sleep(0.5)
        n.start_soon(use, s, "c", 12, results)
        await trio.sleep(2)
        n.start_soon(use, s, "b", 30, results)
        # a drains at ~11 and takes 30 s to stop; c goes idle at ~14.5 and is evicted.
        while s.models["b"].state != "loaded":
            await trio.sleep(0.1)
        assert s.models["a"].state == "draining" and "a" in launcher.cancelled
        await use(s, "a", 0, results)
    first_a, second_a = [pid for name, pid in results if name == "a"]
    assert first_a != second_a  # served by a new child, not the one that was stopping


async def swap_storm(scheduler: Scheduler) -> list:
    """Three clients per model, ten short requests each, models_max=1."""
    results: list = []

    async def client(name: str) -> None:
        for _ in range(10):
            await use(scheduler, name, 0.05, results)
            await trio.sleep(0.001)  # the client reads its answer, then asks again

    async with running(scheduler), trio.open_nursery() as n:
        for name in "ababab":
            n.start_soon(client, name)
    return results


async def test_without_residency_a_swap_storm_switches_every_few_requests(autojump_clock):
    launcher = FakeLauncher()
    results = await swap_storm(Scheduler(specs("a", "b"), launcher, models_max=1))
    assert len(results) == 60 and all(isinstance(r, int) for _, r in results)
    assert len(launcher.launches) >= 10


async def test_min_residency_lets_a_new_model_serve_before_it_is_evicted(autojump_clock):
    launcher = FakeLauncher()
    s = Scheduler(specs("a", "b"), launcher, models_max=1, min_residency=1)
    results = await swap_storm(s)
    assert len(results) == 60 and all(isinstance(r, int) for _, r in results)
    # Each load serves its clients for a second: ten 50 ms requests each fit in it.
    assert len(launcher.launches) <= 3
    assert s.admission.evictions == len(launcher.launches) - 1


async def test_min_residency_only_delays_a_load_waiting_for_an_idle_model(autojump_clock):
    launcher = FakeLauncher()
    s = Scheduler(specs("a", "b"), launcher, models_max=1, min_residency=5)
    async with running(s):
        await use(s, "a")
        loaded = trio.current_time()
        await use(s, "b")  # "a" is idle, but was loaded less than 5 s ago
        assert trio.current_time() - loaded >= 5
    assert launcher.launches == ["a", "b"]


async def test_keep_alive_sets_how_long_an_idle_model_stays(autojump_clock):
    s = Scheduler(specs("a", ttl=60), FakeLauncher())
    async with running(s):
        await use(s, "a")
        s.keep_alive("a", 5)
        await trio.sleep(6)
        assert s.models["a"].state == "unloaded"  # 5 s, not its ttl of 60
        await use(s, "a")
        s.keep_alive("a", -1)
        await trio.sleep(120)
        assert s.models["a"].state == "loaded"  # negative: kept past its ttl
        s.keep_alive("a", None)  # back to its ttl
        await trio.sleep(61)
        assert s.models["a"].state == "unloaded"


async def test_keep_alive_zero_unloads_once_its_requests_are_done(autojump_clock):
    s = Scheduler(specs("a"), FakeLauncher())
    async with running(s) as n:
        await use(s, "a")
        n.start_soon(use, s, "a", 10)
        await trio.sleep(1)
        s.keep_alive("a", 0)
        await trio.sleep(1)
        assert s.models["a"].state == "draining"  # the request in flight finishes first
        await trio.sleep(10)
        assert s.models["a"].state == "unloaded"
        await use(s, "a")
        assert s.models["a"].keep_alive is None  # it lasted one run


async def test_by_cost_a_cheap_load_swaps_at_once_and_a_costly_one_serves_first(
        autojump_clock):
    launcher = FakeLauncher()
    launcher.behaviour["slow"] = Behaviour(load_seconds=20)
    launcher.behaviour["cheap"] = Behaviour(load_seconds=0.05)
    s = Scheduler(specs("slow", "cheap", "other"), launcher, models_max=1, min_residency=-1)

    async def busy_client(name: str) -> None:
        for _ in range(100):  # back-to-back requests, as a client in a swap storm
            await use(s, name, 1)

    async with running(s) as nursery:
        await use(s, "cheap")
        nursery.start_soon(busy_client, "cheap")
        start = trio.current_time()
        await use(s, "other")  # cheap is protected for 5 x 0.05 s only
        assert trio.current_time() - start < 2.5
        await use(s, "slow")
        loaded = s.models["slow"].loaded_at
        nursery.start_soon(busy_client, "slow")
        await use(s, "other")  # slow serves its client 30 s (5 x 20, capped) first
        assert s.models["other"].loaded_at - loaded >= 30
        assert s.admission.residency(s.models["slow"]) == 30  # the cap: none waits longer
        nursery.cancel_scope.cancel()


async def test_an_idle_model_loses_its_residency_once_its_clients_are_done(autojump_clock):
    launcher = FakeLauncher()
    launcher.behaviour["slow"] = Behaviour(load_seconds=20)
    s = Scheduler(specs("slow", "other"), launcher, models_max=1, min_residency=-1)
    async with running(s):
        await use(s, "slow")
        done = trio.current_time()
        await use(s, "other")  # slow sat idle: evicted after the grace, not after 30 s
        assert s.models["other"].loaded_at - done < 2


async def test_an_explicit_min_residency_overrides_the_cost(autojump_clock):
    launcher = FakeLauncher()
    launcher.behaviour["slow"] = Behaviour(load_seconds=20)
    s = Scheduler(specs("slow", "other"), launcher, models_max=1, min_residency=0)
    async with running(s):
        await use(s, "slow")
        loaded = s.models["slow"].loaded_at
        await use(s, "other")
        assert s.models["other"].loaded_at - loaded < 2  # only other's own 1 s load
