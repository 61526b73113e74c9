"""A model's prompt cache survives its unload: saved slots, restored before the next request."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import wait_until

pytestmark = pytest.mark.real
ARGS = ["--ctx-size", "4096", "--threads", "2", "--parallel", "1"]
LONG = " ".join(f"line {i}: the quick brown fox jumps over the lazy dog." for i in range(130))


def ask(d, model: str = "gemma") -> dict:
    """The child's timings for a request with a ~2,000-token prompt."""
    response = d.http.post("/v1/chat/completions", json={
        "model": model, "max_tokens": 2,
        "messages": [{"role": "user", "content": LONG + " Summarise."}]})
    assert response.status_code == 200, response.text
    return response.json()["timings"]


def saved(d) -> list[Path]:
    return sorted((Path(d.config["cache_dir"]) / "prompt-cache").glob("*/*"))


# Gemma 3 uses a sliding window: its own table must ask for the cache (and --swa-full).
KEPT = {"gemma": {"path": "gemma.gguf", "keep_prompt_cache": True}}


@pytest.fixture
def gemma_daemon(daemon, llama_server, gemma, tmp_path):
    def start(**config):
        return daemon({"llama_server": llama_server, "args": ARGS,
                       "cache_dir": str(tmp_path / "cache"), "models": KEPT, **config},
                      models={"gemma.gguf": gemma})
    return start


def test_a_sliding_window_model_keeps_its_cache_only_when_its_table_says_so(gemma_daemon):
    d = gemma_daemon(models={})  # keep_prompt_cache = true, the default, is not enough
    ask(d)
    d.llmctl("unload", "gemma")
    assert saved(d) == []
    assert "a sliding-window model: its prompt cache is kept across unloads only" in d.log()
    assert "--swa-full" not in d.models()["gemma"]["status"]["args"]


def test_a_swapped_back_model_skips_the_prompt_it_had_processed(gemma_daemon):
    d = gemma_daemon()
    cold = ask(d)
    assert cold["prompt_n"] > 1900
    d.llmctl("unload", "gemma")
    files = saved(d)
    assert [f.name for f in files] == ["manifest.json", "slot-0.bin"]
    assert "saved the prompt cache of 1 slot(s)" in d.log()
    kept = d.models()["gemma"]["prompt_cache"]  # what an operator sees of it
    assert kept["slots"] == 1 and kept["tokens"] > 1900 and kept["mib"] > 1
    assert "tokens in 1 slot kept on disk" in d.llmctl("status", "gemma").stdout
    assert f"prompt cache: {kept['mib']} MiB kept on disk" in d.llmctl("status").stdout
    warm = ask(d)  # loads it again; the slot is restored before this request is let in
    assert "restored the prompt cache of 1 slot(s)" in d.log()
    assert warm["prompt_n"] < 10 and warm["cache_n"] > 1900
    assert warm["prompt_ms"] < cold["prompt_ms"] / 10


def test_keep_prompt_cache_off_saves_nothing(gemma_daemon):
    d = gemma_daemon(keep_prompt_cache=False, models={})
    ask(d)
    d.llmctl("unload", "gemma")
    assert saved(d) == []
    assert ask(d)["prompt_n"] > 1900


def test_a_corrupt_or_missing_file_is_skipped_and_the_load_goes_on_cold(gemma_daemon):
    d = gemma_daemon()
    ask(d)
    d.llmctl("unload", "gemma")
    slot = [f for f in saved(d) if f.suffix == ".bin"][0]
    slot.write_bytes(b"not a slot" * 100)
    assert ask(d)["prompt_n"] > 1900  # served, cold
    assert "slot 0's saved prompt cache could not be restored; skipped" in d.log()
    d.llmctl("unload", "gemma")
    slot.unlink()
    assert ask(d)["prompt_n"] > 1900
    assert "slot 0's saved prompt cache is missing; skipped" in d.log()


def test_a_reload_removes_saved_slots_for_other_arguments_or_a_replaced_file(gemma_daemon):
    import shutil

    import tomli_w

    d = gemma_daemon()
    ask(d)
    d.llmctl("unload", "gemma")
    assert saved(d)
    config = json.loads(json.dumps(d.config))
    config["models"]["gemma"]["args"] = ["--temp", "0.5"]  # (still keep_prompt_cache)
    d.config_path.write_text(tomli_w.dumps(config))
    d.llmctl("reload")
    assert saved(d) == []  # gone at the reload, before any load
    assert d.models()["gemma"]["prompt_cache"] is None
    assert "gemma: its model file, arguments or llama-server changed" in d.log()
    assert ask(d)["prompt_n"] > 1900
    d.llmctl("unload", "gemma")
    assert saved(d)
    link = d.tmp / "models" / "gemma.gguf"
    copy = d.tmp / "copy.gguf"
    shutil.copyfile(link, copy)
    copy.replace(link)  # the same bytes in a new file: its identity changed
    d.llmctl("reload")
    assert saved(d) == []


def test_over_the_budget_the_oldest_saved_slots_go(gemma_daemon):
    d = gemma_daemon(prompt_cache_budget_mib=1)  # one slot of this model is ~13 MiB
    ask(d)
    d.llmctl("unload", "gemma")
    wait_until(lambda: "prompt cache over its budget" in d.log(), 5, "the budget enforced")
    assert saved(d) == [] and d.models()["gemma"]["prompt_cache"] is None
    assert ask(d)["prompt_n"] > 1900


def test_a_real_child_says_what_processing_its_prompts_again_would_cost(gemma_daemon):
    # What residency weighs for a model whose prompt cache is not kept (residency.py).
    import trio

    from llmd.children import prompt_work
    from llmd.children.upstream import Upstream

    d = gemma_daemon(models={})
    cold = ask(d)
    port = d.models()["gemma"]["port"]

    async def read() -> float | None:
        async with Upstream() as upstream:
            return await prompt_work.held_seconds(upstream, f"http://127.0.0.1:{port}")

    seconds = trio.run(read)
    # The slot holds the prompt and the reply; the rate is the child's average so far.
    assert seconds is not None
    assert 0.8 * cold["prompt_ms"] / 1000 < seconds < 1.5 * cold["prompt_ms"] / 1000
