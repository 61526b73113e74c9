"""Publishing how far a model's load has come: with each state change, and within a step
a few times a second at most (progress.py keeps the figures)."""

from __future__ import annotations

from typing import Any, Callable

import trio

from llmd.models import prepare
from llmd.models.events import Broker
from llmd.models.model import Model
from llmd.models.state import STARTING, State

PROGRESS_EVERY = 0.25  # seconds between progress events within one step of a load


def on_state_change(model: Model, old: State, data: dict[str, Any]) -> None:
    """Move the load's progress to the model's new state and add it to the state change's
    event `data`, in llama.cpp's shape (`progress`) and llmd's (`load`)."""
    load, state = model.load, model.state
    if load is None or not (state in STARTING or old in STARTING):
        return
    if state in STARTING or state is State.LOADED:
        load.enter(state.value)
    elif not load.ended:  # its run ended before the model was ready
        failed = model.error is not None and model.error[0] == model.attempt
        load.enter("failed" if failed else "cancelled")
    data["load"] = load.to_json()
    data["progress"] = load.llama_cpp()
    model.progress_sent = trio.current_time()


def in_step(events: Broker, model: Model, now: bool = False) -> None:
    """Publish how far the load has come within its step, unless one went out less than
    PROGRESS_EVERY ago (`now`: a change worth saying at once, such as a queue move)."""
    at = trio.current_time()
    load = model.load
    if load is None or load.ended or (not now and at - model.progress_sent < PROGRESS_EVERY):
        return
    model.progress_sent = at
    name = model.spec.name
    if model.state is State.DOWNLOADING and load.download is not None:
        # llama.cpp's router shape ({"progress": {source: {done, total}}}), and llmd's.
        d = load.download
        events.publish({"model": name, "event": "download_progress", "data": {
            "progress": {model.spec.hf: {"done": d["done"], "total": d["total"]}},
            **d, "load": load.to_json()}})
    else:
        events.publish({"model": name, "event": "status_change", "data": {
            "status": model.state.wire, "progress": load.llama_cpp(), "load": load.to_json()}})


async def watch_load(model: Model, attempt: int, pid: int,
                     resident: Callable[[int], int | None],
                     progressed: Callable[[Model], None]) -> None:
    """While the child loads, follow its resident memory against the model's size."""
    expected = prepare.expected_mib(model.spec)
    while model.state is State.LOADING and model.attempt == attempt and model.load is not None:
        # /proc/PID/status (and NVML's process list, with GPUs): well under a ms.
        found = resident(pid)
        if found is None:
            return
        model.load.resident(found, expected)
        progressed(model)
        with trio.move_on_after(PROGRESS_EVERY):
            await model.changed.wait()
