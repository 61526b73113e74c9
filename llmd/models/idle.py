"""Unloading a model once it has been idle for its limit (its ttl, or a keep_alive)."""

from __future__ import annotations

import logging
from typing import Awaitable, Callable

import trio

from llmd.models.model import Model
from llmd.models.state import State

log = logging.getLogger("llmd.scheduler")


async def expire(model: Model, attempt: int, unload: Callable[[Model], Awaitable[object]]
                 ) -> None:
    """Watch one run of the model; `unload` it once idle for model.idle_limit() seconds.

    Its limit may change meanwhile (a client's keep_alive): every lease start and end
    wakes it to read the limit again.
    """
    try:
        while model.state in (State.LOADED, State.DRAINING) and model.attempt == attempt:
            limit = model.idle_limit()
            if model.leases or model.waiters or model.state is State.DRAINING or not limit:
                await model.activity.wait()
                continue
            with trio.move_on_at(model.last_used + limit) as idle:
                await model.activity.wait()
            if idle.cancelled_caught and model.state is State.LOADED and model.attempt == attempt:
                log.info("%s: idle for %gs (%s); unloading", model.spec.name, limit,
                         "keep_alive" if model.keep_alive is not None else "ttl")
                await unload(model)
                return
    finally:
        if model.expiring == attempt:
            model.expiring = 0
