"""A failed load is remembered: requests get its error at once, without a new child, until
something it depended on changes or an operator asks again. Fake children, mock clock."""

from __future__ import annotations

import pytest

from llmd.errors import ModelFailed, ModelNotFound
from llmd.models.scheduler import Scheduler
from tests.fakes.launcher import Behaviour, FakeLauncher
from tests.unit.test_scheduler import running, specs, use


async def failing(binary: list[str]) -> tuple[Scheduler, FakeLauncher]:
    launcher = FakeLauncher()
    launcher.behaviour["bad"] = Behaviour(fail_code=1)
    return Scheduler(specs("bad", "good"), launcher, binary=lambda: binary[0]), launcher


async def test_a_failed_load_answers_the_next_requests_at_once_without_a_child(autojump_clock):
    s, launcher = await failing(["build 1"])
    async with running(s):
        for _ in range(3):
            with pytest.raises(ModelFailed) as info:
                await use(s, "bad")
        assert launcher.launches == ["bad"]
        assert "exited with code 1" in info.value.message
        assert "llmctl load bad" in info.value.message
        await use(s, "good")  # the others serve on


async def test_llmctl_load_a_reload_or_a_new_binary_tries_again(autojump_clock):
    binary = ["build 1"]
    s, launcher = await failing(binary)
    async with running(s):
        with pytest.raises(ModelFailed):
            await use(s, "bad")
        with pytest.raises(ModelFailed):
            await s.load("bad")  # asked on purpose: a new child
        assert launcher.launches == ["bad", "bad"]
        s.update(dict(specs("bad", "good")), models_max=4, drain_timeout=600)
        with pytest.raises(ModelFailed):
            await use(s, "bad")
        assert launcher.launches == ["bad"] * 3
        binary[0] = "build 2"
        with pytest.raises(ModelFailed):
            await use(s, "bad")
        assert launcher.launches == ["bad"] * 4


async def test_a_model_a_reload_retired_is_no_longer_listed(autojump_clock):
    s = Scheduler(specs("a", "b"), FakeLauncher())
    async with running(s):
        await use(s, "a")
        s.update(dict(specs("b", "c")), models_max=4, drain_timeout=600)
        assert [m["id"] for m in s.snapshot()] == ["b", "c"]


async def test_offline_a_hub_model_not_in_the_cache_says_llmd_is_offline():
    s = Scheduler(specs("a"), FakeLauncher(), hub=None)
    with pytest.raises(ModelNotFound) as info:
        s.resolve("owner/repo:Q4_K_M", status=400, pull=True)
    assert "llmd is offline" in info.value.message and info.value.status == 400
    with pytest.raises(ModelNotFound) as info:
        s.resolve("nonsense", status=400, pull=True)
    assert info.value.message == "model 'nonsense' not found"
