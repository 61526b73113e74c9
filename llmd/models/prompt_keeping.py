"""Which models keep their prompt cache across unloads, and what that means for a stop,
a load and an eviction.

The files are slot_cache.SlotFiles' business; what a running child would lose is
prompt_work's. This module decides per model (keep_prompt_cache, globally and per
model) and is what the scheduler calls at each of those moments.
"""

from __future__ import annotations

import logging
from typing import Any, Iterable

import trio

from llmd.children import prompt_work
from llmd.children.slot_cache import SlotFiles
from llmd.children.upstream import Upstream
from llmd.models import prepare
from llmd.models.model import Handle, Model

log = logging.getLogger("llmd.scheduler")
WEIGH_EVERY = 1.0  # seconds between two readings of what a child's prompts would cost


class PromptKeeping:
    """keep_prompt_cache for every model: saved before a stop, restored after a load."""

    def __init__(self, files: SlotFiles | None, default: bool,
                 upstream: Upstream | None) -> None:
        self.files = files  # None: nothing is ever kept
        self.default = default  # the global keep_prompt_cache, for models that don't say
        self.upstream = upstream  # to ask children what they hold (None: never asked)
        self._window_noted: set[str] = set()  # models told they keep no prompt cache

    def keeps(self, model: Model) -> bool:
        """Whether the model's prompt cache is kept across unloads.

        A sliding-window model needs --swa-full for a restored slot to count, a cache
        several times the size: only its own keep_prompt_cache = true asks for that.
        """
        keep = model.spec.keep_prompt_cache
        if self.files is None or keep is False or not self.default and not keep:
            return False
        if keep or "--swa-full" in model.spec.args or not prepare.sliding_window(
                model.spec.path):
            return True
        if model.spec.name not in self._window_noted:
            self._window_noted.add(model.spec.name)
            log.info("%s: a sliding-window model: its prompt cache is kept across unloads "
                     "only with keep_prompt_cache = true in its own table (that adds "
                     "--swa-full, a full-size cache)", model.spec.name)
        return False

    def slot_dir(self, model: Model) -> str | None:
        """Where the model's next child saves its slots; None when it keeps none."""
        if self.files is None or not self.keeps(model):
            return None
        return str(self.files.folder(model.spec.name))

    def saves(self, model: Model) -> bool:
        """Whether the model's running child saves its slots when it stops: started with a
        save path, and still asked to keep them."""
        return model.slot_dir is not None and self.keeps(model)

    async def save(self, model: Model, handle: Handle) -> None:
        """Save the running child's prompts, if the model keeps them (slot_cache.SAVE_BOUND).
        They are labelled with the file and arguments the child started with."""
        if self.files is not None and self.saves(model):
            await self.files.save(model.spec.name, handle.base_url, model.spec.path,
                                  model.file_id, model.started_args)

    async def restore(self, model: Model, handle: Handle) -> None:
        """Restore what was saved for the model into its new child (RESTORE_BOUND)."""
        if self.files is not None:
            await self.files.restore(model.spec.name, handle.base_url, model.spec.path,
                                     model.file_id, model.started_args)

    def kept(self, model: Model) -> dict[str, Any] | None:
        """What is saved for the model now (slots, tokens, MiB, when); None if nothing."""
        kept = self.files.kept.get(model.spec.name) if self.files is not None else None
        return kept.to_json() if kept is not None else None

    def kept_bytes(self) -> int:
        """The disk all saved prompt caches use."""
        return sum(k.size for k in self.files.kept.values()) if self.files is not None else 0

    def prune(self, known: Iterable[Model]) -> None:
        """Drop what was kept for models not `known` and for files, arguments or
        llama-server builds that changed."""
        if self.files is not None:
            self.files.prune({m.spec.name: (m.spec.path, m.spec.child_args()) for m in known})

    async def weigh(self, model: Model) -> bool:
        """Note the prompt work evicting `model` would lose (residency.py): none when its
        child saves its prompts, else what the child holds, read at most every
        WEIGH_EVERY; whether the child was asked. A child that does not say keeps the
        last figure."""
        now = trio.current_time()
        handle = model.handle
        if self.upstream is None or handle is None or now < model.prompt_read_at + WEIGH_EVERY:
            return False
        model.prompt_read_at = now
        if self.saves(model):
            model.prompt_seconds = 0.0  # saved before the stop, restored after the load
            return False
        held = await prompt_work.held_seconds(self.upstream, handle.base_url)
        if held is not None and model.handle is handle:  # still the child that was asked
            model.prompt_seconds = held
        return True
