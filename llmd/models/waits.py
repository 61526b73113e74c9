"""How long a request would wait for its model, and how many wait already: the figures
behind max_queue's 429 and max_wait's 503, and their Retry-After.

Estimates, from what llmd has seen: how long the model's loads took, how long requests
to a busy model took (both smoothed), how long its requests in flight have run, and the
ETA of a download. A request that has run past the typical time is guessed to run as
long again. Unknown is None: the caller then waits and sees.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Mapping

from llmd.models.model import Model
from llmd.models.state import State

SMOOTHING = 0.2  # the weight of the newest duration in a smoothed one


def smooth(old: float | None, new: float) -> float:
    """A duration folded into its running average."""
    return new if old is None else (1 - SMOOTHING) * old + SMOOTHING * new


def waiting(model: Model) -> int:
    """Requests waiting for the model: for its load, or beyond its child's free slots."""
    beyond = 0
    if model.handle is not None and model.handle.slots:
        beyond = max(0, model.leases - model.handle.slots)
    return model.waiters + beyond


def busy_left(model: Model, now: float) -> float:
    """Seconds until every request in flight on `model` is likely done."""
    ages = [now - started for started in model.lease_scopes.values()]
    if not ages:
        return 0.0
    typical = model.request_seconds
    return max((typical - age) if typical and age < typical else max(age, 1.0)
               for age in ages)


def expected(model: Model, models: Mapping[str, Model], residency: Callable[[Model], float],
             now: float, depth: int = 0) -> tuple[float, str] | None:
    """(seconds, why) until `model` is likely ready, or None when llmd can't tell."""
    load = model.load
    loading = model.load_seconds or 0.0
    state = model.state
    if state in (State.LOADED, State.DRAINING) or load is None or depth > len(models):
        return None
    if state is State.DOWNLOADING:
        eta = (load.download or {}).get("eta")
        return (eta + loading, "downloading") if eta is not None else None
    if state is State.ESTIMATING:
        return loading, "loading"
    if state is State.LOADING:
        return max(0.0, loading - (time.time() - load.started)), "loading"
    q = load.queue
    other = models.get(q.on) if q is not None and q.on else None
    if q is None or other is None:
        return None
    if q.waiting_for == "drain":
        return busy_left(other, now) + loading, f"{other.spec.name} must finish its requests first"
    if q.waiting_for == "min_residency" and other.loaded_at is not None:
        return (max(0.0, other.loaded_at + residency(other) - now) + loading,
                f"{other.spec.name} was loaded moments ago")
    if q.waiting_for == "turn":
        ahead = expected(other, models, residency, now, depth + 1)
        if ahead is not None:
            return ahead[0] + loading, f"queued behind the load of {other.spec.name}"
    return None


def retry_after(seconds: float | None) -> int:
    """Seconds for a Retry-After header: the estimate rounded up, at least 1."""
    return max(1, math.ceil(seconds)) if seconds is not None else 1


def queue_wait(model: Model, models: Mapping[str, Model],
               residency: Callable[[Model], float], now: float) -> float | None:
    """How long the requests already waiting for `model` are likely to take."""
    if model.state in (State.LOADED, State.DRAINING):
        slots = (model.handle.slots if model.handle is not None else None) or 1
        rounds = math.ceil((waiting(model) + 1) / slots)
        return rounds * model.request_seconds if model.request_seconds else None
    found = expected(model, models, residency, now)
    return found[0] if found is not None else None
