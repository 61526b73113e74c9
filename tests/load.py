"""A mixed load on llmd's router: many clients, several models, streamed and not.

Used by tests/integration/test_load.py (a bounded run in CI) and bench/soak.py (ten
minutes by hand). Every answer is checked: a 200 must be whole (a stream ends with
[DONE]); anything else must be a documented 503 with Retry-After.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import trio


@dataclass
class Tally:
    """What the clients saw."""

    outcomes: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)  # anything neither ok nor a clean 503
    most_children: int = 0
    peak_rss_mib: float = 0.0

    @property
    def requests(self) -> int:
        return sum(self.outcomes.values())


def rss_mib(pid: int) -> float:
    """A process's resident set size in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def children_of(pid: int, name: str | None = "llama-server") -> list[int]:
    """The pids of processes called `name` (any, with None) whose parent is `pid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            comm, rest = stat.split(" (", 1)[1].rsplit(")", 1)
            if name in (None, comm) and int(rest.split()[1]) == pid:
                found.append(int(entry.name))
    return found


async def _one(client: httpx.AsyncClient, model: str, stream: bool, tally: Tally) -> None:
    body = {"model": model, "prompt": "Once", "max_tokens": 4, "temperature": 0,
            "stream": stream}
    try:
        async with client.stream("POST", "/v1/completions", json=body) as response:
            if response.status_code == 503:
                error = json.loads(await response.aread())["error"]
                if "retry-after" in response.headers and error["code"] == 503:
                    tally.outcomes["503"] += 1
                else:
                    tally.problems.append(f"503 without Retry-After: {error}")
                return
            if response.status_code != 200:
                tally.problems.append(f"{response.status_code}: {(await response.aread())[:200]!r}")
                return
            if not stream:
                json.loads(await response.aread())["choices"]
                tally.outcomes["ok"] += 1
                return
            lines = [line async for line in response.aiter_lines() if line.startswith("data: ")]
            if lines and lines[-1] == "data: [DONE]":
                tally.outcomes["ok stream"] += 1
            else:
                tally.problems.append(f"stream cut: {lines[-2:]}")
    except (httpx.HTTPError, ValueError, KeyError) as exc:
        tally.problems.append(f"{model} stream={stream}: {exc!r}")


async def run(url: str, models: list[str], *, clients: int, seconds: float = 0,
              per_client: int = 1, llmd_pid: int | None = None, seed: int = 0) -> Tally:
    """`clients` concurrent clients, each sending `per_client` requests (or more until
    `seconds` have passed), a random model and a random mode each time."""
    tally = Tally()
    rng = random.Random(seed)
    deadline = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async def client(http: httpx.AsyncClient) -> None:
        sent = 0
        while sent < per_client or time.monotonic() < deadline:
            await _one(http, rng.choice(models), rng.random() < 0.5, tally)
            sent += 1

    async def watch(stop: trio.Event) -> None:
        while llmd_pid is not None and not stop.is_set():
            tally.most_children = max(tally.most_children, len(children_of(llmd_pid)))
            tally.peak_rss_mib = max(tally.peak_rss_mib, rss_mib(llmd_pid))
            with trio.move_on_after(0.2):
                await stop.wait()

    stop = trio.Event()
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as http:
        async with trio.open_nursery() as watcher:
            watcher.start_soon(watch, stop)
            async with trio.open_nursery() as nursery:
                for _ in range(clients):
                    nursery.start_soon(client, http)
            stop.set()
    return tally
