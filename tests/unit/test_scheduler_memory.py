"""Scheduler rules that involve memory, time-to-live and priorities (fake children,
stubbed devices through the NVML layer, trio's mock clock)."""

from __future__ import annotations

import trio
import trio.testing

from llmd.models.catalog import ModelSpec
from llmd.errors import TooBig
from llmd.memory.estimate import Need
from llmd.memory.devices import Devices, Nvml
from llmd.models.scheduler import Scheduler
from tests.fakes.launcher import FakeLauncher
from tests.unit.test_memory import FakePynvml
from tests.unit.test_scheduler import running, use


class StubNeeds:
    """Estimates by model name, taking a little (mock) time like llama-fit-params."""

    def __init__(self, needs: dict[str, dict[str, int]]) -> None:
        self.needs = needs
        self.calls: list[str] = []

    async def need(self, spec: ModelSpec) -> Need:
        self.calls.append(spec.name)
        await trio.sleep(0.5)
        return Need(self.needs[spec.name], "stub")


def gpu_devices(tmp_path, gpu_total_mib: int, margin: int = 1024, use=None) -> Devices:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal: 67108864 kB\nMemAvailable: 60000000 kB\n")
    nvml = Nvml(FakePynvml(gpus=((gpu_total_mib, gpu_total_mib),), procs=use or {}))
    return Devices(margin, nvml=nvml, meminfo=str(meminfo), proc=str(tmp_path))


def models(*names: str, **kw) -> dict[str, ModelSpec]:
    return {n: ModelSpec(name=n, path=f"/m/{n}", args=(), **kw) for n in names}


async def test_gpu_memory_evicts_idle_lru_to_fit(autojump_clock, tmp_path):
    # 10 GiB GPU, 1 GiB margin: two 4 GiB models fit, a third does not.
    launcher = FakeLauncher()
    needs = StubNeeds({n: {"gpu0": 4096, "host": 100} for n in "abc"})
    s = Scheduler(models("a", "b", "c"), launcher, models_max=0,
                  devices=gpu_devices(tmp_path, 10240), estimator=needs)
    async with running(s):
        await use(s, "a")
        await trio.sleep(1)
        await use(s, "b")
        assert s.admission.committed()["gpu0"] == 8192
        await use(s, "c")
        states = {n: m.state for n, m in s.models.items()}
        assert s.admission.device_table()[1]["committed_mib"] == 8192
    assert states == {"a": "unloaded", "b": "loaded", "c": "loaded"}
    assert s.admission.evictions == 1


async def test_model_too_big_for_the_machine_fails_at_once_without_evicting(autojump_clock,
                                                                             tmp_path):
    needs = StubNeeds({"small": {"gpu0": 1000}, "huge": {"gpu0": 20000}})
    s = Scheduler(models("small", "huge"), FakeLauncher(), models_max=0,
                  devices=gpu_devices(tmp_path, 10240), estimator=needs)
    async with running(s):
        await use(s, "small")
        results: list = []
        await use(s, "huge", 0, results)
        (_, error), = results
        assert isinstance(error, TooBig) and error.status == 507
        assert "needs 20000 MiB on gpu0" in error.message and "9216 MiB" in error.message
        assert s.models["small"].state == "loaded" and s.admission.evictions == 0


async def test_the_books_hold_the_larger_of_estimate_and_measured_use(autojump_clock,
                                                                       tmp_path):
    # A child below its estimate keeps its estimate booked (on the host, buffers it has
    # not touched yet still count); one above it is booked at what it uses.
    needs = StubNeeds({"a": {"gpu0": 4096}, "b": {"gpu0": 1024}})
    devices = gpu_devices(tmp_path, 10240, use={1001: (0, 2048), 1002: (0, 3072)})
    s = Scheduler(models("a", "b"), FakeLauncher(), models_max=0, devices=devices,
                  estimator=needs)
    async with running(s):
        await use(s, "a")
        await use(s, "b")
        info = s.describe(s.models["a"])["memory"]
        assert s.models["a"].booked() == {"gpu0": 4096}
        assert s.models["b"].booked() == {"gpu0": 3072}
    assert info["estimate_mib"] == {"gpu0": 4096} and info["measured_mib"]["gpu0"] == 2048


async def test_a_serving_model_is_measured_again_after_its_requests(autojump_clock, tmp_path):
    use_by_pid = {pid: (0, 2048) for pid in range(1000, 1100)}
    devices = gpu_devices(tmp_path, 10240, use=use_by_pid)
    s = Scheduler(models("a"), FakeLauncher(), devices=devices,
                  estimator=StubNeeds({"a": {"gpu0": 4096}}))
    async with running(s):
        await use(s, "a")
        for pid in use_by_pid:
            use_by_pid[pid] = (0, 3072)  # its KV cache and buffers grew
        await use(s, "a", 1)
        await trio.testing.wait_all_tasks_blocked()
        assert s.models["a"].measured["gpu0"] == 2048  # measured at most every 2 s
        await use(s, "a", 2)
        with trio.fail_after(60):  # measured in a thread, which the mock clock can't see
            while s.models["a"].measured["gpu0"] != 3072:
                await trio.sleep(0.001)


async def test_estimating_state_is_visible_and_estimate_runs_once_per_load(autojump_clock,
                                                                            tmp_path):
    needs = StubNeeds({"a": {"gpu0": 100}})
    s = Scheduler(models("a"), FakeLauncher(), devices=gpu_devices(tmp_path, 10240),
                  estimator=needs)
    async with running(s) as n:
        n.start_soon(s.load, "a")
        await trio.testing.wait_all_tasks_blocked()
        assert s.models["a"].state == "estimating"
        assert s.describe(s.models["a"])["status"]["value"] == "loading"
        await trio.sleep(5)
        assert s.models["a"].state == "loaded" and needs.calls == ["a"]


async def test_idle_model_is_unloaded_after_its_ttl(autojump_clock):
    s = Scheduler(models("a", ttl=60), FakeLauncher())
    async with running(s):
        await use(s, "a", 10)
        await trio.sleep(30)
        assert s.models["a"].state == "loaded"
        assert 25 <= s.describe(s.models["a"])["ttl_left"] <= 31
        await use(s, "a")  # activity restarts the clock
        await trio.sleep(59)
        assert s.models["a"].state == "loaded"
        await trio.sleep(2)
        assert s.models["a"].state == "unloaded"


async def test_busy_model_outlives_its_ttl(autojump_clock):
    s = Scheduler(models("a", ttl=5), FakeLauncher())
    async with running(s) as n:
        n.start_soon(use, s, "a", 100)
        await trio.sleep(50)
        assert s.models["a"].state == "loaded"
        await trio.sleep(60)
        assert s.models["a"].state == "unloaded"


async def test_lower_priority_is_evicted_first(autojump_clock):
    specs = {"low": ModelSpec(name="low", path="/l", args=(), priority=-1),
             **models("high", "new")}
    s = Scheduler(specs, FakeLauncher(), models_max=2)
    async with running(s):
        await use(s, "high")
        await trio.sleep(1)
        await use(s, "low")  # more recently used, but lower priority
        await use(s, "new")
        assert s.models["low"].state == "unloaded" and s.models["high"].state == "loaded"


async def test_three_models_with_room_for_two_all_succeed(autojump_clock):
    launcher = FakeLauncher()
    s = Scheduler(models("a", "b", "c"), launcher, models_max=2)
    results: list = []
    async with running(s):
        async with trio.open_nursery() as n:
            for i in range(12):
                n.start_soon(use, s, "abc"[i % 3], 0.3, results)
                await trio.sleep(0.01)
    assert len(results) == 12 and all(isinstance(r, int) for _, r in results)


async def test_client_giving_up_in_the_queue_costs_no_model_its_slot(autojump_clock):
    launcher = FakeLauncher()
    s = Scheduler(models("a", "b"), launcher, models_max=1)
    async with running(s) as n:
        n.start_soon(use, s, "a", 100)
        await trio.testing.wait_all_tasks_blocked()
        with trio.move_on_after(10):
            await use(s, "b")  # queued behind busy a; gives up
        await trio.testing.wait_all_tasks_blocked()
        assert s.models["b"].state == "unloaded" and s.models["a"].state == "loaded"
        assert launcher.launches == ["a"]


async def test_load_on_startup_models_load_when_the_scheduler_starts(autojump_clock):
    launcher = FakeLauncher()
    specs = {"boot": ModelSpec(name="boot", path="/b", args=(), load_on_startup=True),
             **models("lazy")}
    s = Scheduler(specs, launcher)
    async with running(s):
        await trio.sleep(5)
        assert s.models["boot"].state == "loaded" and s.models["lazy"].state == "unloaded"
        assert s.models["boot"].keep


async def test_sustained_traffic_on_one_model_does_not_starve_a_load_of_another(autojump_clock):
    # models_max=1, three clients per model, each sending requests back to back: without
    # first-come-first-served admission the busy model never idles and the other waits
    # for drain_timeout; with it every request is served well before that.
    launcher = FakeLauncher()
    s = Scheduler(models("left", "right"), launcher, models_max=1, drain_timeout=600)
    results: list = []

    async def client(name: str) -> None:
        for _ in range(10):
            await use(s, name, 0.1, results)

    async with running(s):
        start = trio.current_time()
        async with trio.open_nursery() as n:
            for name in ("left", "right") * 3:
                n.start_soon(client, name)
        elapsed = trio.current_time() - start
    assert len(results) == 60 and all(isinstance(r, int) for _, r in results)
    assert elapsed < 100  # far from the 600 s drain_timeout
    assert len(launcher.launches) < 60


async def test_eviction_does_not_wait_on_a_victim_that_requests_already_restarted(
        autojump_clock):
    # left's load evicts idle right; a request for right arrives while right is stopping
    # and starts right's next load at once. left's admission must see that right's run
    # ended, not wait for right to read "unloaded" (which would deadlock on the FIFO lock).
    from tests.fakes.launcher import Behaviour
    launcher = FakeLauncher()
    launcher.behaviour["right"] = Behaviour(stop_seconds=5)
    s = Scheduler(models("left", "right"), launcher, models_max=1, drain_timeout=600)
    results: list = []
    async with running(s) as n:
        await use(s, "right")
        n.start_soon(use, s, "left", 0.1, results)
        await trio.sleep(1)
        assert s.models["right"].state == "draining"
        n.start_soon(use, s, "right", 0.1, results)
        with trio.fail_after(60):
            while len(results) < 2:
                await trio.sleep(1)
    assert sorted(name for name, _ in results) == ["left", "right"]
    assert all(isinstance(r, int) for _, r in results)
