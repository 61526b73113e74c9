"""The figures a gateway's endpoint picker reads, from each running child, by model.

llmd starts children with --metrics (prepare.launch_spec). A scrape of llmd's /metrics
asks every loaded child, at once and within a bound, for its queue (llama-server's
requests_deferred), its running requests (requests_processing) and how full its KV cache
is (from /slots: the tokens of busy slots over every slot's context). A child that does
not answer in time is left out of that scrape; no model is loaded to answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import trio

from llmd.children import reports
from llmd.children.upstream import Upstream
from llmd.models.model import Model
from llmd.models.state import UP

SCRAPE_TIMEOUT = 1.0  # seconds a scrape waits for the children, all together


@dataclass
class ChildFigures:
    """One child's queue, running requests and KV-cache use."""

    waiting: float | None = None
    running: float | None = None
    kv_used: float | None = None  # 0..1


def parse_metrics(text: bytes, into: ChildFigures) -> None:
    """llama-server's Prometheus text: its deferred and processing request gauges."""
    values = reports.metric_values(
        text, ("llamacpp:requests_deferred", "llamacpp:requests_processing"))
    into.waiting = values.get("llamacpp:requests_deferred")
    into.running = values.get("llamacpp:requests_processing")


def parse_slots(raw: bytes, into: ChildFigures) -> None:
    """llama-server's /slots: the tokens busy slots hold over every slot's context."""
    slots = reports.slot_list(raw) or []
    try:
        total = sum(int(s.get("n_ctx", 0)) for s in slots)
        used = sum(int(s.get("n_prompt_tokens", 0)) + sum(
            int(t.get("n_decoded", 0)) for t in s.get("next_token") or [])
            for s in slots if s.get("is_processing"))
    except (ValueError, TypeError, AttributeError):
        return
    if total > 0:
        into.kv_used = min(1.0, used / total)


async def scrape(upstream: Upstream, models: Iterable[Model]) -> dict[str, ChildFigures]:
    """Every loaded model's child figures, asked for at once; what came in time."""
    found: dict[str, ChildFigures] = {}

    async def one(name: str, base_url: str) -> None:
        figures = ChildFigures()
        text = await reports.get(upstream, base_url, "/metrics")
        if text is not None:
            parse_metrics(text, figures)
        slots = await reports.get(upstream, base_url, "/slots")
        if slots is not None:
            parse_slots(slots, figures)
        found[name] = figures

    with trio.move_on_after(SCRAPE_TIMEOUT):
        async with trio.open_nursery() as nursery:
            for model in models:
                if model.state in UP and model.handle is not None:
                    nursery.start_soon(one, model.spec.name, model.handle.base_url)
    return found
