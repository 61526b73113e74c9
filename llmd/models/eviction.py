"""Which model makes room for another: the eviction order."""

from __future__ import annotations

import math
from typing import Callable, Iterable

from llmd.models.model import Model
from llmd.models.state import State


def victim(models: Iterable[Model], for_model: Model, short: list[str],
           busy: bool = False, young: Callable[[Model], bool] = lambda m: False
           ) -> Model | None:
    """The model to evict (idle, or with `busy` in use): lowest priority, then LRU.

    Only a loaded model that holds memory on a `short` device (when memory is short) can
    be one. A pinned model never is, nor one that requests are waiting for: it was
    loaded for them; nor one still `young` (inside its residency).
    """
    candidates = [m for m in models
                  if m is not for_model and m.state is State.LOADED and (busy or m.leases == 0)
                  and m.waiters == 0 and not m.spec.pin and not young(m)
                  and (not short or any(m.booked().get(d) for d in short))]
    return min(candidates, key=lambda m: (m.spec.priority, m.last_used), default=None)


def next_settled(models: Iterable[Model], protected_until: Callable[[Model], float],
                 now: float) -> float:
    """When the next loaded model still protected from eviction stops being so (inf: none)."""
    ends = [end for m in models if m.state is State.LOADED
            and (end := protected_until(m)) > now]
    return min(ends, default=math.inf)
