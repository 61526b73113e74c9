"""How far one load of a model has come: its step, the step's own fraction, and the whole.

A load runs through steps (downloading, estimating, queued, loading) and ends loaded.
Each step owns a span of the whole, 0 to 1; the whole only moves forward, and reads 1
only once the model is ready. The spans depend on whether the load downloads: a download
is most of the wait when there is one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import trio

# (start, end) of each step's span of the whole: a pull, a load with a download, without.
_PULL = {"downloading": (0.0, 0.99)}
_SPANS = {
    True: {"downloading": (0.0, 0.80), "estimating": (0.80, 0.81), "queued": (0.81, 0.82),
           "loading": (0.82, 0.99)},
    False: {"estimating": (0.0, 0.02), "queued": (0.02, 0.05), "loading": (0.05, 0.99)},
}
_READY = ("loaded", "downloaded")  # a load's end, a pull's
_ENDED = ("failed", "cancelled")


@dataclass
class Queue:
    """Where a queued load stands: loads ahead of it, and what it waits for now."""

    position: int  # 1: next to be admitted (or being admitted)
    waiting_for: str  # "turn", "room", "drain", "min_residency", "release", "models_max"
    on: str | None = None  # the model it waits on, where there is one

    def to_json(self) -> dict[str, Any]:
        return {"position": self.position, "waiting_for": self.waiting_for, "on": self.on}


@dataclass
class Progress:
    """One load attempt's progress; the scheduler updates it, events and llmctl read it."""

    downloads: bool  # this attempt starts with a download
    pull: bool = False  # it only downloads (llmctl pull): done once on disk
    state: str = "queued"
    value: float = 0.0  # the whole, 0..1, never decreasing
    step: float | None = None  # the current step's own fraction, where it has one
    started: float = field(default_factory=time.time)
    at: float = field(default_factory=time.time)  # wall time of the last change
    download: dict[str, Any] | None = None  # done, total, rate, eta
    queue: Queue | None = None
    loading: dict[str, Any] | None = None  # resident_mib, expected_mib
    changed: trio.Event = field(default_factory=trio.Event)  # set at every change

    def enter(self, state: str) -> None:
        """Move to the step `state` (or the end: loaded, failed, cancelled)."""
        self.state = state
        self.step = None
        if state != "queued":
            self.queue = None
        if state in _READY:
            self.step = 1.0
            self._advance(1.0)
        elif state in self._spans:
            self._advance(self._spans[state][0])
        else:
            self._touch()

    def advance(self, step: float) -> None:
        """The current step is `step` (0..1) done; the whole moves within its span."""
        step = min(1.0, max(0.0, step))
        span = self._spans.get(self.state)
        if span is None:
            return
        self.step = max(self.step or 0.0, step)
        self._advance(span[0] + (span[1] - span[0]) * self.step)

    def downloaded(self, done: int, total: int, rate: float) -> None:
        """Bytes of the download so far, and the rate they come at (bytes per second)."""
        eta = (total - done) / rate if rate > 0 and total >= done else None
        self.download = {"done": done, "total": total, "rate": round(rate),
                         "eta": round(eta, 1) if eta is not None else None}
        if total > 0:
            self.advance(done / total)
        else:
            self._touch()

    def queued(self, queue: Queue) -> None:
        """Where the load stands in admission's queue."""
        if queue != self.queue:
            self.queue = queue
            self._touch()

    def resident(self, resident_mib: int, expected_mib: int) -> None:
        """The child holds `resident_mib` of the `expected_mib` it will once loaded."""
        self.loading = {"resident_mib": resident_mib, "expected_mib": expected_mib}
        if expected_mib > 0:
            # Full residency is not ready: the child still warms up and binds its port.
            self.advance(min(0.99, resident_mib / expected_mib))
        else:
            self._touch()

    @property
    def _spans(self) -> dict[str, tuple[float, float]]:
        return _PULL if self.pull else _SPANS[self.downloads]

    def _advance(self, value: float) -> None:
        self.value = max(self.value, min(value, 1.0 if self.state in _READY else 0.99))
        self._touch()

    def _touch(self) -> None:
        self.at = time.time()
        self.changed.set()
        self.changed = trio.Event()

    @property
    def ended(self) -> bool:
        """Whether the load is over: ready, failed or cancelled."""
        return self.state in _READY or self.state in _ENDED

    def to_json(self) -> dict[str, Any]:
        """The progress as events, /models and llmctl show it."""
        return {"state": self.state, "progress": round(self.value, 4),
                "step_progress": round(self.step, 4) if self.step is not None else None,
                "at": round(self.at, 3), "elapsed": round(self.at - self.started, 3),
                "download": self.download,
                "queue": self.queue.to_json() if self.queue else None,
                "loading": self.loading}

    def llama_cpp(self) -> dict[str, Any]:
        """The load progress in llama.cpp's router shape: {stages, current, value}."""
        value = self.step if self.state == "loading" and self.step is not None else (
            1.0 if self.state in _READY else 0.0)
        return {"stages": ["text_model"], "current": "text_model", "value": round(value, 4)}
