"""llmd's own Prometheus metrics, rendered in the text exposition format."""

from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Mapping

from llmd.models import waits
from llmd.models.state import State

if TYPE_CHECKING:
    from llmd.api.child_metrics import ChildFigures
    from llmd.server import Limit
    from llmd.models.scheduler import Scheduler

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


@dataclass
class Metrics:
    """Counters the router updates; rendered on GET /metrics."""

    requests: Counter[tuple[str, str, int]] = field(default_factory=Counter)
    latency_counts: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))
    latency_sum: float = 0.0
    connections: Limit | None = None  # the router listener's

    def request(self, model: str, path: str, status: int, seconds: float) -> None:
        """Count one finished request."""
        self.requests[(model, path, status)] += 1
        self.latency_counts[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.latency_sum += seconds

    def render(self, scheduler: Scheduler, upstream_retries: int = 0,
               children: Mapping[str, ChildFigures] | None = None) -> str:
        """The metrics in Prometheus text format; `children`: what the loaded children
        reported (child_metrics.scrape)."""
        lines = ["# HELP llmd_requests_total Requests answered by the router.",
                 "# TYPE llmd_requests_total counter"]
        for (model, path, status), n in sorted(self.requests.items()):
            lines.append(f'llmd_requests_total{{model="{_label(model)}",path="{_label(path)}",'
                         f'code="{status}"}} {n}')
        lines += ["# HELP llmd_request_duration_seconds Time from request to end of response.",
                  "# TYPE llmd_request_duration_seconds histogram"]
        cumulative = 0
        for bound, n in zip((*BUCKETS, "+Inf"), self.latency_counts):
            cumulative += n
            lines.append(f'llmd_request_duration_seconds_bucket{{le="{bound}"}} {cumulative}')
        lines.append(f"llmd_request_duration_seconds_sum {self.latency_sum}")
        lines.append(f"llmd_request_duration_seconds_count {cumulative}")
        for metric, text, value in (
                ("loaded", "Whether a model is loaded (1) or not (0).",
                 lambda m: int(m.state is State.LOADED)),
                ("leases", "Requests in flight per model.", lambda m: m.leases),
                ("waiters", "Requests waiting for a model to be loaded.", lambda m: m.waiters),
                ("requests_waiting", "Requests waiting in llmd for a model: for its load, or "
                 "beyond its child's slots (what max_queue bounds).", waits.waiting),
                ("requests_running", "Requests a model is serving (leases).",
                 lambda m: m.leases),
                ("slots", "Requests a model's child serves at once (0: not loaded).",
                 lambda m: (m.handle.slots or 0) if m.handle is not None else 0)):
            lines += [f"# HELP llmd_model_{metric} {text}", f"# TYPE llmd_model_{metric} gauge"]
            lines += [f'llmd_model_{metric}{{model="{_label(name)}"}} {value(model)}'
                      for name, model in scheduler.models.items()]
        lines += _children(children or {})
        models = scheduler.models.values()
        lines += ["# HELP llmd_in_flight Requests being served by children.",
                  "# TYPE llmd_in_flight gauge", f"llmd_in_flight {sum(m.leases for m in models)}",
                  "# HELP llmd_queue_depth Requests waiting for a load, all models.",
                  "# TYPE llmd_queue_depth gauge",
                  f"llmd_queue_depth {sum(m.waiters for m in models)}"]
        lines += _devices(scheduler)
        lines += ["# HELP llmd_loads_total Model loads started.", "# TYPE llmd_loads_total counter",
                  f"llmd_loads_total {scheduler.loads}",
                  "# HELP llmd_evictions_total Idle models stopped to make room for another.",
                  "# TYPE llmd_evictions_total counter",
                  f"llmd_evictions_total {scheduler.admission.evictions}",
                  "# HELP llmd_failures_total Loads and downloads that failed, and children that "
                  "exited on their own after loading.", "# TYPE llmd_failures_total counter"]
        for kind in ("load", "download", "crash"):
            lines.append(f'llmd_failures_total{{kind="{kind}"}} {scheduler.failures[kind]}')
        lines += ["# HELP llmd_upstream_retries_total Requests re-sent after a child closed a "
                  "kept-alive connection without answering.",
                  "# TYPE llmd_upstream_retries_total counter",
                  f"llmd_upstream_retries_total {upstream_retries}"]
        if self.connections is not None:
            lines += ["# HELP llmd_connections Open connections to the router.",
                      "# TYPE llmd_connections gauge",
                      f"llmd_connections {self.connections.current}",
                      "# HELP llmd_connections_refused_total Connections refused at "
                      "max_connections.", "# TYPE llmd_connections_refused_total counter",
                      f"llmd_connections_refused_total {self.connections.refused}"]
        return "\n".join(lines) + "\n"


_CHILD_FIGURES = (
    ("requests_waiting", "waiting", "Requests queued inside the model's child "
     "(llama-server's requests_deferred)."),
    ("requests_running", "running", "Requests the model's child is processing "
     "(llama-server's requests_processing)."),
    ("kv_cache_usage_ratio", "kv_used", "Share of the child's KV cache its busy slots hold "
     "(from its /slots), 0 to 1."),
)


def _children(children: Mapping[str, ChildFigures]) -> list[str]:
    lines = []
    for metric, attr, text in _CHILD_FIGURES:
        lines += [f"# HELP llmd_child_{metric} {text}", f"# TYPE llmd_child_{metric} gauge"]
        for name, figures in sorted(children.items()):
            value = getattr(figures, attr)
            if value is not None:
                lines.append(f'llmd_child_{metric}{{model="{_label(name)}"}} {value:g}')
    return lines


_DEVICE_FIGURES = (
    ("total", "total_mib", "in all"),
    ("free", "free_mib", "free now, as the device reports it"),
    ("others", "others_mib", "used by programs other than llmd's children"),
    ("children", "children_mib", "held by llmd's children that the device counts as used"),
    ("estimate", "estimate_mib", "estimated for llmd's admitted models"),
    ("measured", "measured_mib", "measured in use by llmd's children"),
    ("growth", "growth_mib", "booked for children to grow into (prompt cache)"),
    ("booked", "booked_mib", "booked by llmd's admitted models"),
    ("committed", "committed_mib", "booked by llmd's admitted models (as booked)"),
    ("margin", "margin_mib", "kept free"),
    ("room", "room_mib", "left for one more model"),
)


def _devices(scheduler: Scheduler) -> list[str]:
    table = scheduler.admission.device_table()
    lines = []
    for metric, key, text in _DEVICE_FIGURES:
        lines += [f"# HELP llmd_device_memory_{metric}_bytes Memory {text}, per device.",
                  f"# TYPE llmd_device_memory_{metric}_bytes gauge"]
        for device in table:
            label = _label(str(device["id"]))
            lines.append(f'llmd_device_memory_{metric}_bytes{{device="{label}"}} '
                         f"{int(device[key]) << 20}")  # type: ignore[call-overload]
    return lines
