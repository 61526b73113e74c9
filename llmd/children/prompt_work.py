"""What a running child's cached prompts would cost to process again.

An eviction that does not keep the prompt cache (keep_prompt_cache) throws away the
prompts the child's slots hold; the next request that shares them processes them again.
Admission weighs that work into a young model's residency. The child says what it holds
in /slots (each slot's n_prompt_tokens) and how fast it processes prompts in /metrics
(its prompt token and second counters, with --metrics, which llmd always passes).
"""

from __future__ import annotations

import json

import trio

from llmd.children.upstream import Upstream, UpstreamBroken

READ_BOUND = 0.5  # seconds one reading may take; a child that is slower says nothing


def prompt_rate(metrics: str) -> float | None:
    """Prompt tokens a second from llama-server's Prometheus text, over its whole run (its
    prompt_tokens_total over prompt_seconds_total: counters, which no scrape resets);
    None before it has processed a prompt."""
    totals: dict[str, float] = {}
    for line in metrics.splitlines():
        name, _, value = line.partition(" ")
        if name in ("llamacpp:prompt_tokens_total", "llamacpp:prompt_seconds_total"):
            try:
                totals[name] = float(value)
            except ValueError:
                return None
    tokens = totals.get("llamacpp:prompt_tokens_total", 0.0)
    seconds = totals.get("llamacpp:prompt_seconds_total", 0.0)
    return tokens / seconds if tokens > 0 and seconds > 0 else None


def held_tokens(slots: bytes) -> int | None:
    """Prompt tokens the child's slots hold, busy or idle; None if /slots is unreadable."""
    try:
        listed = json.loads(slots)
        return sum(int(s.get("n_prompt_tokens") or 0) for s in listed if isinstance(s, dict))
    except (ValueError, TypeError, AttributeError):
        return None


async def held_seconds(upstream: Upstream, base_url: str) -> float | None:
    """Seconds the child would spend processing its slots' prompts again; None when it
    does not say within READ_BOUND (no /slots, no prompt processed yet, no answer)."""
    with trio.move_on_after(READ_BOUND):
        try:
            status, metrics = await upstream.fetch("GET", base_url, "/metrics")
            if status != 200:
                return None
            rate = prompt_rate(metrics.decode("utf-8", "replace"))
            if rate is None:
                return None
            status, slots = await upstream.fetch("GET", base_url, "/slots")
            tokens = held_tokens(slots) if status == 200 else None
        except UpstreamBroken:
            return None
        return tokens / rate if tokens is not None else None
    return None
