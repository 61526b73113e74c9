"""A model's state, and the transitions between states that the scheduler may make.

    unloaded -> downloading -> estimating -> queued -> loading -> loaded <-> draining
        ^                                                                      |
        +------------------ any state, when its run ends --------------------+

Without memory accounting a load skips `estimating`; a hub model already on disk skips
`downloading`. On the wire (llama.cpp's router states) `estimating` and `queued` read
as `loading`, and `draining` as `loaded`.
"""

from __future__ import annotations

import enum


class State(enum.StrEnum):
    """Where a model is in its life; the scheduler is the only one that sets it."""

    UNLOADED = "unloaded"
    DOWNLOADING = "downloading"
    ESTIMATING = "estimating"
    QUEUED = "queued"
    LOADING = "loading"
    LOADED = "loaded"
    DRAINING = "draining"

    @property
    def wire(self) -> str:
        """The state as llama.cpp's router names it."""
        return _WIRE.get(self, self.value)


# A load on its way: requests wait for it, and the last one leaving cancels it.
STARTING = frozenset({State.DOWNLOADING, State.ESTIMATING, State.QUEUED, State.LOADING})
# Admitted: these count against models_max and hold memory in the books.
RUNNING = frozenset({State.LOADING, State.LOADED, State.DRAINING})
# Serving, or finishing what it serves.
UP = frozenset({State.LOADED, State.DRAINING})

_WIRE = {State.ESTIMATING: "loading", State.QUEUED: "loading", State.DRAINING: "loaded"}
_NEXT = {
    State.UNLOADED: {State.DOWNLOADING, State.ESTIMATING, State.QUEUED},
    State.DOWNLOADING: {State.ESTIMATING, State.QUEUED},
    State.ESTIMATING: {State.QUEUED},
    State.QUEUED: {State.LOADING},
    State.LOADING: {State.LOADED},
    State.LOADED: {State.DRAINING},
    State.DRAINING: {State.LOADED},
}


class IllegalTransition(Exception):
    """The scheduler tried to move a model between states that do not follow each other."""

    def __init__(self, name: str, old: State, new: State) -> None:
        super().__init__(f"model '{name}': {old.value} cannot become {new.value}")


def check(name: str, old: State, new: State) -> None:
    """Raise IllegalTransition unless `new` may follow `old` (any run may end: unloaded)."""
    if new is old or new is State.UNLOADED or new in _NEXT[old]:
        return
    raise IllegalTransition(name, old, new)
