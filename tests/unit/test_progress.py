"""Load progress: its steps, that it never goes backwards, and how often it is published."""

from __future__ import annotations

import trio
from hypothesis import given
from hypothesis import strategies as st

from llmd.models.catalog import ModelSpec
from llmd.models.progress import Progress, Queue
from llmd.models.reporting import PROGRESS_EVERY
from llmd.models.scheduler import Scheduler
from tests.fakes.launcher import Behaviour, FakeLauncher
from tests.unit.test_scheduler import running, use


def model_files(tmp_path, *names: str, mib: int = 100) -> dict[str, ModelSpec]:
    found = {}
    for name in names:
        path = tmp_path / f"{name}.gguf"
        with open(path, "wb") as f:
            f.truncate(mib << 20)  # sparse: only its size matters here
        found[name] = ModelSpec(name=name, path=str(path), args=())
    return found


def test_progress_never_goes_backwards_and_reads_one_only_when_ready():
    p = Progress(downloads=True)
    p.enter("downloading")
    seen = []
    for done in (0, 50, 30, 100):  # a retried range can report fewer bytes: no step back
        p.downloaded(done, 100, 10.0)
        seen.append(p.value)
    for state in ("estimating", "queued", "loading"):
        p.enter(state)
        seen.append(p.value)
    p.resident(500, 100)  # more than the file (buffers): still not ready
    seen.append(p.value)
    assert seen == sorted(seen) and 0.98 < max(seen) < 1.0
    assert p.download == {"done": 100, "total": 100, "rate": 10, "eta": 0.0}
    p.enter("loaded")
    assert p.value == 1.0 and p.to_json()["progress"] == 1.0
    assert p.llama_cpp() == {"stages": ["text_model"], "current": "text_model", "value": 1.0}


def test_a_load_that_fails_keeps_its_progress_and_says_failed():
    p = Progress(downloads=False)
    p.enter("loading")
    p.resident(40, 100)
    before = p.value
    p.enter("failed")
    assert p.value == before < 1.0 and p.ended and p.to_json()["state"] == "failed"


async def collect(s: Scheduler, name: str, out: list) -> None:
    """(trio time, event) for every event about `name` that carries load progress."""
    async with s.subscribe(4096) as events:
        async for event in events:
            if event.get("model") == name and "load" in event.get("data", {}):
                out.append((trio.current_time(), event))


async def test_a_load_publishes_every_step_with_a_real_fraction_at_a_bounded_rate(
        tmp_path, autojump_clock):
    launcher = FakeLauncher()
    launcher.behaviour["a"] = Behaviour(load_seconds=3.0)
    start = trio.current_time()
    # The child's resident memory grows with time while it loads: 10 MiB a second.
    resident = lambda pid: int((trio.current_time() - start) * 10)  # noqa: E731
    s = Scheduler(model_files(tmp_path, "a"), launcher, resident=resident)
    seen: list = []
    async with running(s) as nursery:
        nursery.start_soon(collect, s, "a", seen)
        await trio.sleep(0)
        await s.load("a")
        await trio.sleep(1)
    loads = [e["data"]["load"] for _, e in seen]
    states = [load["state"] for load in loads]
    assert states[0] == "queued" and states[-1] == "loaded" and "loading" in states
    values = [load["progress"] for load in loads]
    assert values == sorted(values), "progress went backwards"
    assert values[-1] == 1.0 and all(v < 1.0 for v in values[:-1])
    fractions = [load["loading"]["resident_mib"] for load in loads if load["loading"]]
    assert len(set(fractions)) >= 5  # sampled as the child grew, not one jump at the end
    assert all(load["at"] and load["elapsed"] is not None for load in loads)
    # Within a step, a few events a second at most (state changes come as they happen).
    progress_only = [t for t, e in seen if "args" not in e["data"]]
    gaps = [b - a for a, b in zip(progress_only, progress_only[1:])]
    assert gaps and min(gaps) >= PROGRESS_EVERY - 1e-9
    # llama.cpp's router shape rides on every one of them.
    assert all(e["data"]["progress"]["stages"] == ["text_model"] for _, e in seen)


async def test_a_queued_load_says_its_position_and_what_it_waits_for(tmp_path, autojump_clock):
    s = Scheduler(model_files(tmp_path, "busy", "b", "c"), FakeLauncher(), models_max=1,
                  drain_timeout=600)
    async with running(s) as nursery:
        nursery.start_soon(use, s, "busy", 30)
        await trio.sleep(2)  # loaded and serving a long request
        nursery.start_soon(use, s, "b")
        await trio.sleep(0.1)
        nursery.start_soon(use, s, "c")
        await trio.sleep(0.1)
        b, c = s.models["b"].load, s.models["c"].load
        assert b is not None and c is not None
        assert b.queue == Queue(1, "drain", "busy")
        assert c.queue == Queue(2, "turn", "b")
        assert s.describe(s.models["c"])["load"]["queue"] == {
            "position": 2, "waiting_for": "turn", "on": "b"}
        await trio.sleep(60)
    assert s.models["c"].load.state == "loaded"


async def test_min_residency_is_named_as_what_a_queued_load_waits_for(tmp_path, autojump_clock):
    s = Scheduler(model_files(tmp_path, "a", "b"), FakeLauncher(), models_max=1,
                  min_residency=30)
    async with running(s) as nursery:
        await use(s, "a")
        nursery.start_soon(use, s, "b")
        await trio.sleep(0.5)
        assert s.models["b"].load.queue == Queue(1, "min_residency", "a")


_STEPS = st.sampled_from(["downloading", "estimating", "queued", "loading"])
_OPS = st.lists(st.one_of(
    st.tuples(st.just("enter"), _STEPS),
    st.tuples(st.just("downloaded"), st.integers(0, 1000), st.integers(0, 1000)),
    st.tuples(st.just("resident"), st.integers(0, 5000), st.integers(0, 1000)),
    st.tuples(st.just("advance"), st.floats(-1, 2, allow_nan=False))), max_size=40)


@given(downloads=st.booleans(), pull=st.booleans(), ops=_OPS)
def test_whatever_is_reported_progress_only_moves_forward_and_stays_short_of_one(
        downloads, pull, ops):
    p = Progress(downloads=downloads, pull=pull)
    last = p.value
    for name, *args in ops:
        if name == "downloaded":
            p.downloaded(args[0], args[1], 1.0)
        else:
            getattr(p, name)(*args)
        assert last <= p.value < 1.0
        last = p.value
    p.enter("downloaded" if pull else "loaded")
    assert p.value == 1.0
