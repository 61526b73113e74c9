"""Model states: the transitions the scheduler may make, and the sets defined once."""

from __future__ import annotations

import pytest

from llmd import daemon
from llmd.models.catalog import ModelSpec
from llmd.models.model import Model
from llmd.models.state import RUNNING, STARTING, IllegalTransition, State, check


def test_a_load_goes_through_its_states_in_order_and_any_run_may_end():
    path = [State.UNLOADED, State.DOWNLOADING, State.ESTIMATING, State.QUEUED,
            State.LOADING, State.LOADED, State.DRAINING, State.LOADED, State.DRAINING]
    for old, new in zip(path, path[1:]):
        check("m", old, new)
    for old in State:
        check("m", old, State.UNLOADED)


@pytest.mark.parametrize("old, new", [(State.UNLOADED, State.LOADED),
                                      (State.QUEUED, State.LOADED),
                                      (State.LOADING, State.DRAINING),
                                      (State.LOADED, State.LOADING),
                                      (State.DRAINING, State.QUEUED)])
def test_a_skipped_or_backward_step_is_illegal(old, new):
    with pytest.raises(IllegalTransition, match=f"{old.value} cannot become {new.value}"):
        check("m", old, new)


def test_the_wire_names_are_llama_cpps():
    assert [s.wire for s in State] == ["unloaded", "downloading", "loading", "loading",
                                       "loading", "loaded", "loaded"]


def test_a_download_is_part_of_starting_and_shows_in_the_status_line():
    assert State.DOWNLOADING in STARTING and State.DOWNLOADING not in RUNNING
    scheduler = type("S", (), {})()
    hub = Model(ModelSpec(name="hub", path="/m", args=()))
    hub.state = State.DOWNLOADING
    scheduler.models = {"hub": hub}
    assert daemon.status_line(scheduler) == "1 models, 0 loaded; loading hub"
