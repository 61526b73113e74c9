"""What a running llama-server reports about itself: a plain GET's body, the values of its
Prometheus series (/metrics, with --metrics, which llmd always passes) and its slots
(/slots). Shared by the metrics scrape, the prompt cache and the residency weighing."""

from __future__ import annotations

import json
from typing import Any, Collection

from llmd.children.upstream import Upstream, UpstreamBroken


async def get(upstream: Upstream, base_url: str, target: str) -> bytes | None:
    """The body of GET `target` at the child; None unless it answered 200."""
    try:
        status, body = await upstream.fetch("GET", base_url, target)
    except UpstreamBroken:
        return None
    return body if status == 200 else None


def metric_values(text: bytes, names: Collection[str]) -> dict[str, float]:
    """The values of the named series in Prometheus text; a malformed line is skipped."""
    found: dict[str, float] = {}
    for line in text.decode("utf-8", "replace").splitlines():
        name, _, value = line.partition(" ")
        if name in names:
            try:
                found[name] = float(value)
            except ValueError:
                continue
    return found


def slot_list(raw: bytes) -> list[dict[str, Any]] | None:
    """The slots of a /slots answer; None when it is not a JSON list."""
    try:
        slots = json.loads(raw)
    except ValueError:
        return None
    return [s for s in slots if isinstance(s, dict)] if isinstance(slots, list) else None
