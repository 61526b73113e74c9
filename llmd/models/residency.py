"""How long a freshly loaded model is kept from eviction: by what evicting it would cost.

Evicting a model whose clients are still sending means loading it again when they come
back, and unless its prompt cache is kept (keep_prompt_cache), processing again the
prompts its slots held. So a young model serves FACTOR times that cost before a load
waiting for its room may drain it:

    residency = min(CAP, FACTOR * (its measured load time + its lost prompt work))

When two models take turns, each serves FACTOR times its own cost per turn, so at most
1 / (FACTOR + 1) of a contested host's time goes to loads and lost prompts: a sixth. A
model that loads in 50 ms swaps after a quarter of a second; one that loads in 20 s
serves its clients CAP seconds first. Protection ends sooner once the model has sat idle
IDLE_GRACE seconds: its clients are done, and holding it longer only keeps the next
model's clients waiting. Worst case, a queued load waits CAP seconds for residency to
end, then for the drain of the requests in flight (up to drain_timeout); loads are
admitted first come first served, so none starves. A min_residency of 0 or more
replaces all of this with one fixed number.
"""

from __future__ import annotations

import math

from llmd.models.model import Model

# A young model serves five times what evicting it would cost... (3, a quarter of the
# time loading, put bench/swap.py's storm, 30 requests of 45 ms per model after a 0.45 s
# load, on the edge: one run took 2 loads, the next 4.)
FACTOR = 5.0
CAP = 30.0  # ...up to this many seconds: the longest a queued load waits for residency
# ...unless it sits idle this long. A client that sends its next request as soon as the
# last one is answered comes back within milliseconds, even through a gateway.
IDLE_GRACE = 0.1


def length(model: Model, fixed: float) -> float:
    """Seconds `model` is kept from eviction after its load; `fixed` >= 0 is the
    operator's min_residency."""
    if fixed >= 0:
        return fixed
    return min(CAP, FACTOR * ((model.load_seconds or 0.0) + model.prompt_seconds))


def protected_until(model: Model, fixed: float) -> float:
    """When `model`'s protection from eviction ends (-inf: it has none, not being loaded)."""
    if model.loaded_at is None:
        return -math.inf
    end = model.loaded_at + length(model, fixed)
    if model.leases == 0 and fixed < 0:
        end = min(end, model.last_used + IDLE_GRACE)
    return end


def may_protect(model: Model, now: float) -> bool:
    """Whether `model` could still be inside its residency at `now`, whatever its lost
    prompt work: loaded less than CAP ago, and busy or idle less than IDLE_GRACE."""
    if model.loaded_at is None or now >= model.loaded_at + CAP:
        return False
    return model.leases > 0 or now < model.last_used + IDLE_GRACE
