"""How a model is described on the wire: the llama.cpp router's shape plus llmd's fields."""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

from llmd.children import chat_template
from llmd.models.state import RUNNING, STARTING, State
from llmd.models.prepare import launch_spec

if TYPE_CHECKING:
    from llmd.models.model import Model


def describe(model: Model, wire_state: str, now: float,
             prompt_cache: dict[str, Any] | None = None) -> dict[str, Any]:
    """One model for /models, llmctl ps and status; `now` is the scheduler's clock,
    `prompt_cache` what is saved of its prompts (slot_cache.Kept)."""
    spec = model.spec
    # Model files are read for their chat template when a model loads, not to list it.
    look = model.state is not State.UNLOADED
    # The arguments its child runs with, or will: llmd may add its own (launch_spec).
    status: dict[str, Any] = {"value": wire_state,
                              "args": list(launch_spec(model, look).child_args())}
    if model.state is State.UNLOADED and model.failure is not None:
        status.update(failed=True, exit_code=model.failure.exit_code,
                      reason=model.failure.reason, tail=model.failure.tail[-20:])
    wall = time.time()
    handle = model.handle
    return {
        "id": spec.name,
        "aliases": list(spec.aliases),
        "tags": list(spec.tags),
        "object": "model",
        "owned_by": "llmd",
        "created": int(wall),
        "source": spec.source,
        "path": spec.path,
        # Which chat template the child uses and who chose it (read once per file).
        "chat_template": chat_template.template(spec, look).describe(),
        "status": status,
        "state": model.state.value,
        "pid": handle.pid if handle else None,
        "port": handle.port if handle else None,
        "leases": model.leases,
        "waiters": model.waiters,
        "pinned": spec.pin,
        "hf": spec.hf or None,
        "download": ({"done": model.progress.done, "total": model.progress.total,
                      "rate": round(model.progress.rate(now))}
                     if model.progress is not None else None),
        # How far a load on its way has come (progress.py).
        "load": model.load.to_json() if model.load and model.state in STARTING else None,
        "memory": {"estimate_mib": model.need, "source": model.need_source,
                   "measured_mib": model.measured, "growth_mib": model.growth,
                   "booked_mib": model.booked() if model.state in RUNNING else {},
                   "cache_ram_mib": model.cache_ram},
        "ttl": spec.ttl,
        "keep_alive": model.keep_alive,
        "ttl_left": (round(max(0.0, model.last_used + limit - now), 1)
                     if (limit := model.idle_limit()) and model.state is State.LOADED
                     and not model.leases else None),
        "uptime": round(now - model.loaded_at, 3) if model.loaded_at is not None else None,
        "last_used": wall - (now - model.last_used) if model.last_used > -math.inf else None,
        "prompt_cache": prompt_cache,
    }


def event_data(status: dict[str, Any]) -> dict[str, Any]:
    """A status_change event's data, as llama.cpp's router sends it ({"status": "loaded"},
    with exit_code once unloaded), with llmd's own status fields beside it."""
    data = {k: v for k, v in status.items() if k != "value"}
    data["status"] = status["value"]
    if status["value"] == "unloaded":
        data.setdefault("exit_code", 0)
    return data
