"""Residency by cost: how long a freshly loaded model is kept from eviction, and the
prompt work an eviction would lose, on trio's clock with fake children."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import trio

from llmd.children import prompt_work
from llmd.children.slot_cache import SlotFiles
from llmd.children.upstream import UpstreamBroken
from llmd.models import residency
from llmd.models.catalog import ModelSpec
from llmd.models.model import Model
from llmd.models.scheduler import Scheduler
from tests.fakes.launcher import Behaviour, FakeLauncher
from tests.unit.test_scheduler import running, specs, use

# What llama-server 11434.0.0 printed after one 224-token prompt (trimmed).
METRICS = """# HELP llamacpp:prompt_tokens_total Number of prompt tokens processed
llamacpp:prompt_tokens_total 224
llamacpp:prompt_seconds_total 0.240825
# TYPE llamacpp:prompt_tokens_seconds gauge
llamacpp:prompt_tokens_seconds 930.136
llamacpp:predicted_tokens_seconds 88.3626
"""


def model(load: float | None, prompt: float = 0.0) -> Model:
    m = Model(specs("m")["m"])
    m.load_seconds, m.prompt_seconds = load, prompt
    return m


def test_residency_is_five_times_the_load_and_the_lost_prompts_capped_at_30_s():
    assert residency.length(model(0.05), -1) == 0.25
    assert residency.length(model(0.4, prompt=2.0), -1) == 12.0
    assert residency.length(model(20), -1) == residency.CAP == 30
    assert residency.length(model(None), -1) == 0  # never loaded: nothing to weigh yet
    assert residency.length(model(20, prompt=9), 4) == 4  # min_residency overrides


def test_an_idle_young_model_is_protected_only_for_the_grace():
    m = model(20)
    m.loaded_at, m.last_used = 100.0, 101.0
    assert residency.protected_until(m, -1) == 101.0 + residency.IDLE_GRACE
    m.leases = 1
    assert residency.protected_until(m, -1) == 130.0
    assert residency.protected_until(m, 2) == 102.0


def test_the_prompt_rate_and_held_tokens_are_read_from_llama_servers_own_words():
    # From the counters, which no scrape resets, not the windowed gauge.
    assert prompt_work.prompt_rate(METRICS.encode()) == 224 / 0.240825
    assert prompt_work.prompt_rate(b"llamacpp:prompt_tokens_total 0\n"
                                   b"llamacpp:prompt_seconds_total 0\n") is None  # none yet
    assert prompt_work.prompt_rate(b"no figures") is None
    slots = b'[{"id": 0, "n_ctx": 2048, "is_processing": false}, ' \
            b'{"id": 1, "is_processing": false, "n_prompt_tokens": 226}, ' \
            b'{"id": 2, "is_processing": true, "n_prompt_tokens": 74}]'
    assert prompt_work.held_tokens(slots) == 300  # idle slots keep their prompt too
    assert prompt_work.held_tokens(b"not json") is None


class ChildSays:
    """An upstream whose children hold `tokens` prompt tokens at `rate` tokens a second."""

    def __init__(self, tokens: int, rate: float) -> None:
        self.tokens, self.rate = tokens, rate
        self.asked: list[str] = []

    async def fetch(self, method: str, base_url: str, target: str, *args) -> tuple[int, bytes]:
        self.asked.append(target)
        if self.rate < 0:
            raise UpstreamBroken("refused")
        if target == "/metrics":
            return 200, (f"llamacpp:prompt_tokens_total {self.rate * 10}\n"
                         "llamacpp:prompt_seconds_total 10\n").encode()
        return 200, f'[{{"id": 0, "n_prompt_tokens": {self.tokens}}}]'.encode()


async def switch_time(s: Scheduler, after: float = 0) -> float:
    """How long after its load 'cheap', with a busy client, makes way for 'other', asked
    for `after` seconds after that load."""

    async def busy_client() -> None:
        for _ in range(200):
            await use(s, "cheap", 0.5)

    async with running(s) as nursery:
        await use(s, "cheap")
        nursery.start_soon(busy_client)
        loaded = s.models["cheap"].loaded_at
        await trio.sleep(after)
        await use(s, "other")
        nursery.cancel_scope.cancel()
        return s.models["other"].loaded_at - loaded


def cheap_and_other(**kw) -> Scheduler:
    launcher = FakeLauncher()
    launcher.behaviour["cheap"] = Behaviour(load_seconds=0.05)
    return Scheduler(specs("cheap", "other"), launcher, models_max=1, min_residency=-1, **kw)


async def test_a_model_that_would_lose_seconds_of_prompt_work_serves_longer(autojump_clock):
    # 1,000 tokens at 500 a second: 2 s of prompt work lost, so 5 x (0.05 + 2) s resident.
    child = ChildSays(1000, 500)
    waited = await switch_time(cheap_and_other(upstream=child))
    assert 10.25 <= waited < 10.25 + 0.5 + 1 + 0.5  # + a request's drain, other's load, grace
    assert child.asked[:2] == ["/metrics", "/slots"]


async def test_prompt_work_counts_for_a_load_that_comes_after_the_load_time_alone(
        autojump_clock):
    # 5 x 0.05 s of load alone ends after 0.25 s; the lost prompts keep it 10.25 s.
    waited = await switch_time(cheap_and_other(upstream=ChildSays(1000, 500)), after=3)
    assert 10.25 <= waited < 10.25 + 0.5 + 1 + 0.5


async def test_a_child_that_stops_answering_keeps_its_last_figure(autojump_clock):
    child = ChildSays(1000, 500)
    s = cheap_and_other(upstream=child)
    async with running(s):
        await use(s, "cheap")
        m = s.models["cheap"]
        m.last_used = trio.current_time()
        assert await s.prompts.weigh(m) and m.prompt_seconds == 2.0
        child.rate = -1  # refused from now on
        await trio.sleep(1)
        assert await s.prompts.weigh(m) and m.prompt_seconds == 2.0
        assert not await s.prompts.weigh(m)  # asked less than a second ago: not again


async def test_a_cheap_model_with_nothing_to_lose_swaps_almost_at_once(autojump_clock):
    assert await switch_time(cheap_and_other(upstream=ChildSays(0, 500))) < 2
    assert await switch_time(cheap_and_other(upstream=ChildSays(1000, -1))) < 2  # no answer
    assert await switch_time(cheap_and_other()) < 2  # nobody to ask


async def test_a_kept_prompt_cache_loses_no_prompt_work(autojump_clock, tmp_path):
    child = ChildSays(1000, 500)
    files = SlotFiles(child, tmp_path, 64, lambda: "build")  # type: ignore[arg-type]
    kept = cheap_and_other(upstream=child, slot_files=files, keep_prompt_cache=True)
    assert await switch_time(kept) < 2
    assert "/metrics" not in child.asked  # saved and restored: nothing to weigh


class SavingChild(ChildSays):
    """A child whose one slot holds 1,000 prompt tokens and saves them into `folder`."""

    folder: Path

    async def fetch(self, method: str, base_url: str, target: str, *args) -> tuple[int, bytes]:
        if "action=save" in target:
            self.asked.append(target)
            (self.folder / "slot-0.bin").write_bytes(b"kv")
            return 200, b'{"n_saved": 1000}'
        return await super().fetch(method, base_url, target, *args)


async def test_slots_saved_on_the_way_to_a_restart_carry_the_arguments_they_ran_with(
        autojump_clock, tmp_path):
    # A reload that changes a running model's arguments restarts it; what the old child
    # saves on its way out must not be restored into the new one.
    (tmp_path / "m.gguf").write_bytes(b"model")
    old = ModelSpec(name="m", path=str(tmp_path / "m.gguf"), args=("--ctx-size", "4096"),
                    keep_prompt_cache=True)
    child = SavingChild(1000, 500)
    files = SlotFiles(child, tmp_path / "cache", 64, lambda: "build")  # type: ignore[arg-type]
    child.folder = files.folder("m")
    s = Scheduler({"m": old}, FakeLauncher(), slot_files=files, keep_prompt_cache=True,
                  upstream=child)  # type: ignore[arg-type]
    async with running(s):
        await use(s, "m")
        s.update({"m": dataclasses.replace(old, args=("--ctx-size", "8192"))}, models_max=4,
                 drain_timeout=600)
        await trio.sleep(5)  # the old child saves and stops; the new one starts
        assert any("action=save" in t for t in child.asked)
        assert not any("action=restore" in t for t in child.asked)
        assert s.models["m"].state == "loaded"
