"""The memory books in the scheduler, on stubbed GPUs: free memory is what the driver
reports now, other programs count, evicted memory is spent only once it reads free, and
the prompt cache a child may fill is booked. Fake children, trio's mock clock."""

from __future__ import annotations

import logging

import trio
import trio.testing

from llmd.models.catalog import ModelSpec
from llmd.errors import NoRoom
from llmd.memory.devices import Devices, Nvml
from llmd.models.scheduler import Scheduler
from tests.fakes.launcher import FakeLauncher
from tests.fakes.machine import FakeGpus
from tests.unit.test_scheduler import running, use
from tests.unit.test_scheduler_memory import StubNeeds, models


def machine(tmp_path, launcher: FakeLauncher, totals, use_by_model, *, margin=1024,
            host_free_mib=60000, release_lag=0.0) -> tuple[Devices, FakeGpus]:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text(f"MemTotal: 67108864 kB\nMemAvailable: {host_free_mib * 1024} kB\n")
    gpus = FakeGpus(totals, launcher, use_by_model, release_lag=release_lag)
    return Devices(margin, nvml=Nvml(gpus), meminfo=str(meminfo), proc=str(tmp_path)), gpus


def three_4_gib_models(tmp_path, launcher: FakeLauncher,
                       release_lag: float = 0.0) -> tuple[Scheduler, FakeGpus]:
    """Models a, b and c, 4 GiB each on a 10 GiB GPU with a 1 GiB margin: two fit."""
    devices, gpus = machine(tmp_path, launcher, [10240], {n: {0: 4096} for n in "abc"},
                            release_lag=release_lag)
    return Scheduler(models("a", "b", "c"), launcher, models_max=0, devices=devices,
                     estimator=StubNeeds({n: {"gpu0": 4096} for n in "abc"})), gpus


def two_that_fill_a_gpu(tmp_path, launcher: FakeLauncher, release_lag: float) -> Scheduler:
    """Models a and b, 6000 MiB each on a 10 GiB GPU: only one fits at a time."""
    devices, _ = machine(tmp_path, launcher, [10240], {n: {0: 6000} for n in "ab"},
                         release_lag=release_lag)
    return Scheduler(models("a", "b"), launcher, models_max=0, devices=devices,
                     estimator=StubNeeds({n: {"gpu0": 6000} for n in "ab"}))


def loaded(s: Scheduler) -> set[str]:
    return {n for n, m in s.models.items() if m.state == "loaded"}


async def test_memory_other_programs_use_on_a_gpu_lowers_the_room(autojump_clock, tmp_path):
    # 10 GiB GPU, 1 GiB margin, 4 GiB models: two fit on an empty GPU, one beside a
    # program holding 3 GiB.
    s, gpus = three_4_gib_models(tmp_path, FakeLauncher())
    gpus.others[0] = 3072
    async with running(s):
        await use(s, "a")
        await trio.sleep(2)
        await use(s, "b")
        assert loaded(s) == {"b"}
        (gpu,) = [d for d in s.admission.device_table() if d["id"] == "gpu0"]
        assert gpu["others_mib"] == 3072 and gpu["children_mib"] == 4096
        assert gpu["room_mib"] == 10240 - 3072 - 4096 - 1024
        gpus.others[0] = 0  # the other program exits: the next admission sees it
        await use(s, "c")
        assert loaded(s) == {"b", "c"}
    assert s.admission.evictions == 1


async def test_several_gpus_evict_only_where_memory_is_short(autojump_clock, tmp_path):
    launcher = FakeLauncher()
    use_by_model = {"g0": {0: 6000}, "g1": {1: 6000}, "both": {0: 1000, 1: 3000}}
    devices, gpus = machine(tmp_path, launcher, [10240, 10240], use_by_model)
    gpus.others[1] = 1000
    needs = StubNeeds({"g0": {"gpu0": 6000}, "g1": {"gpu1": 6000},
                       "both": {"gpu0": 1000, "gpu1": 3000}})
    s = Scheduler(models("g0", "g1", "both"), launcher, models_max=0, devices=devices,
                  estimator=needs)
    async with running(s):
        await use(s, "g1")
        await trio.sleep(2)
        await use(s, "g0")  # used last, but gpu0 has room: g1 goes, on gpu1
        await use(s, "both")
        assert loaded(s) == {"g0", "both"}
        table = {d["id"]: d for d in s.admission.device_table()}
        assert table["gpu1"]["others_mib"] == 1000 and table["gpu0"]["booked_mib"] == 7000


async def test_an_evicted_childs_memory_is_spent_only_once_the_gpu_reports_it_free(
        autojump_clock, tmp_path):
    # The driver reports an exited child's memory free 3 s late. The load that evicted it
    # must wait for that, not take the GPU for full and evict the other model too.
    launcher = FakeLauncher()
    s, _ = three_4_gib_models(tmp_path, launcher, release_lag=3)
    async with running(s):
        await use(s, "a")
        await trio.sleep(2)
        await use(s, "b")
        await trio.sleep(2)
        await use(s, "c")
        assert loaded(s) == {"b", "c"} and s.admission.evictions == 1
    events = launcher.log
    assert events.index(("exit", "a")) < events.index(("launch", "c"))


async def test_a_load_waits_for_late_frees_at_most_release_timeout_then_says_so(
        autojump_clock, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="llmd.admission")
    launcher = FakeLauncher()
    s = two_that_fill_a_gpu(tmp_path, launcher, release_lag=3600)
    async with running(s):
        await use(s, "a")
        await trio.sleep(2)
        start = trio.current_time()
        results: list = []
        await use(s, "b", 0, results)
        waited = trio.current_time() - start
    # The GPU never reported the memory free: after the bounded wait the load went on,
    # and with the room still not there it failed instead of overcommitting the GPU.
    assert 10 <= waited < 20
    assert "still reports 6000 MiB less free" in caplog.text
    assert isinstance(results[0][1], NoRoom) and "other programs use" in str(results[0][1])


async def test_a_model_other_programs_leave_no_room_for_fails_at_once_evicting_nothing(
        autojump_clock, tmp_path):
    launcher = FakeLauncher()
    devices, gpus = machine(tmp_path, launcher, [10240], {n: {0: 2048} for n in "ab"})
    gpus.others[0] = 6000
    needs = StubNeeds({"a": {"gpu0": 2048}, "b": {"gpu0": 4096}})
    s = Scheduler(models("a", "b"), launcher, models_max=0, devices=devices, estimator=needs)
    async with running(s):
        await use(s, "a")
        results: list = []
        await use(s, "b", 0, results)
        (_, error), = results
        assert isinstance(error, NoRoom) and error.status == 503
        assert "other programs use 6000 MiB" in error.message
        assert loaded(s) == {"a"} and s.admission.evictions == 0


async def test_a_child_gets_the_prompt_cache_the_host_has_room_for_and_it_is_booked(
        autojump_clock, tmp_path):
    launcher = FakeLauncher()
    # Host: 3000 MiB free, 1024 margin: room 1976. a needs 1000: its cache gets 976 of
    # the 2048 allowed; b, when a is gone, the full 2048 (host free has grown by then).
    devices, _ = machine(tmp_path, launcher, [], {}, host_free_mib=3000)
    s = Scheduler(models("a"), launcher, devices=devices, cache_ram_mib=2048,
                  estimator=StubNeeds({"a": {"host": 1000}}))
    async with running(s):
        await use(s, "a")
        a = s.models["a"]
        assert a.cache_ram == 976 and a.growth == {"host": 976}
        assert a.booked() == {"host": 1976}
        args = launcher.specs["a"].child_args()
        assert args[args.index("--cache-ram") + 1] == "976"
        assert "--cache-ram" in s.describe(a)["status"]["args"]
        (host,) = s.admission.device_table()
        assert host["growth_mib"] == 976 and host["booked_mib"] == 1976


async def test_a_models_own_cache_ram_is_kept_and_booked_before_admission(autojump_clock,
                                                                          tmp_path):
    launcher = FakeLauncher()
    devices, _ = machine(tmp_path, launcher, [], {}, host_free_mib=4000)
    specs = {"own": ModelSpec(name="own", path="/m/own", args=("--cache-ram", "2000")),
             **models("small")}
    needs = StubNeeds({"own": {"host": 500}, "small": {"host": 500}})
    s = Scheduler(specs, launcher, models_max=0, devices=devices, cache_ram_mib=0,
                  estimator=needs)
    async with running(s):
        await use(s, "small")  # books 500, no cache (cache_ram_mib = 0)
        assert s.models["small"].cache_ram == 0
        await trio.sleep(2)
        await use(s, "own")  # needs 500 + 2000 of the 2976 room: small must go
        assert loaded(s) == {"own"}
        assert s.models["own"].growth == {"host": 2000} and s.models["own"].cache_ram is None
        assert launcher.specs["own"].child_args().count("--cache-ram") == 1


async def test_a_load_right_after_an_unload_waits_for_the_gpu_to_report_it_free(
        autojump_clock, tmp_path):
    # Not only evictions: `llmctl unload a` and then a load of b at once. Until the GPU
    # reports a's memory free, it reads as another program's, which would leave b no room.
    launcher = FakeLauncher()
    s = two_that_fill_a_gpu(tmp_path, launcher, release_lag=2)
    async with running(s):
        await use(s, "a")
        await s.unload("a")
        unloaded_at = trio.current_time()
        await use(s, "b")
        assert loaded(s) == {"b"}
        assert launcher.log[-2:] == [("launch", "b"), ("ready", "b")]
    assert trio.current_time() - unloaded_at >= 2


def test_the_cache_size_a_child_sets_itself_is_read_from_its_args_then_environment():
    from llmd.memory import prompt_cache
    assert prompt_cache.value(["--cache-ram", "512"], {}) == 512
    assert prompt_cache.value(["-cram=256"], {"LLAMA_ARG_CACHE_RAM": "64"}) == 256
    assert prompt_cache.value([], {"LLAMA_ARG_CACHE_RAM": "64"}) == 64
    assert prompt_cache.value(["--cache-ram", "lots"], {}) is None
    assert prompt_cache.given([], {"LLAMA_ARG_CACHE_RAM": "0"})
    assert prompt_cache.booked_up_front(["--cache-ram", "-1"], {}) == 0
    assert not prompt_cache.given(["--ctx-size", "512"], {})
