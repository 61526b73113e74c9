"""What a running child's cached prompts would cost to process again.

An eviction that does not keep the prompt cache (keep_prompt_cache) throws away the
prompts the child's slots hold; the next request that shares them processes them again.
Admission weighs that work into a young model's residency. The child says what it holds
in /slots (each slot's n_prompt_tokens) and how fast it processes prompts in /metrics
(its prompt token and second counters, with --metrics, which llmd always passes).
"""

from __future__ import annotations

import trio

from llmd.children import reports
from llmd.children.upstream import Upstream

READ_BOUND = 0.5  # seconds one reading may take; a child that is slower says nothing


_TOKENS, _SECONDS = "llamacpp:prompt_tokens_total", "llamacpp:prompt_seconds_total"


def prompt_rate(metrics: bytes) -> float | None:
    """Prompt tokens a second from llama-server's Prometheus text, over its whole run (its
    prompt_tokens_total over prompt_seconds_total: counters, which no scrape resets);
    None before it has processed a prompt."""
    values = reports.metric_values(metrics, (_TOKENS, _SECONDS))
    tokens, seconds = values.get(_TOKENS, 0.0), values.get(_SECONDS, 0.0)
    return tokens / seconds if tokens > 0 and seconds > 0 else None


def held_tokens(slots: bytes) -> int | None:
    """Prompt tokens the child's slots hold, busy or idle; None if /slots is unreadable."""
    listed = reports.slot_list(slots)
    try:
        return sum(int(s.get("n_prompt_tokens") or 0) for s in listed) \
            if listed is not None else None
    except (ValueError, TypeError):
        return None


async def held_seconds(upstream: Upstream, base_url: str) -> float | None:
    """Seconds the child would spend processing its slots' prompts again; None when it
    does not say within READ_BOUND (no /slots, no prompt processed yet, no answer)."""
    with trio.move_on_after(READ_BOUND):
        metrics = await reports.get(upstream, base_url, "/metrics")
        rate = prompt_rate(metrics) if metrics is not None else None
        if rate is None:
            return None
        slots = await reports.get(upstream, base_url, "/slots")
        tokens = held_tokens(slots) if slots is not None else None
        return tokens / rate if tokens is not None else None
    return None
