"""Following one load or pull as it runs: its progress events, until it ends."""

from __future__ import annotations

from typing import Any, Callable

from .client import Client

# What a state change to these says about the end of a load (or a pull).
_LOAD_ENDS = ("loaded", "unloaded")


def follow(c: Client, verb: str, name: str,
           on_progress: Callable[[str, dict[str, Any]], None]) -> str:
    """POST /load or /pull for `name` (not waiting), call `on_progress(id, load)` for every
    progress step, and return the model's id once the load or pull is over."""
    model_id = name
    for event in c.events(then=(f"/{verb}", {"model": name, "wait": False})):
        if event["event"] == "answer":
            model = event["data"]
            model_id = model["id"]
            if model.get("load"):
                on_progress(model_id, model["load"])
            if _over(verb, model["state"]):
                return model_id
            continue
        if event.get("model") != model_id:
            continue
        data = event.get("data") or {}
        if data.get("load"):
            on_progress(model_id, data["load"])
        if event["event"] == "status_change" and "args" in data:  # a change of state
            state = data.get("state") or data["status"]
            if _over(verb, state):
                return model_id
    return model_id  # the stream ended: llmd is stopping; the status will say


def _over(verb: str, state: str) -> bool:
    if verb == "pull":
        return state != "downloading"
    return state in _LOAD_ENDS
