"""One llama-server process: spawn it, capture its output, notice its exit, stop it."""

from __future__ import annotations

import collections
import functools
import ctypes
import json
import logging
import os
import signal
import subprocess
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import trio

from llmd.children import ports, reports
from llmd.children.upstream import Upstream, UpstreamBroken

log = logging.getLogger("llmd.child")

_PR_SET_PDEATHSIG = 1
_GATHER_SECONDS = 0.003  # how long a child's output may wait to be read with what follows
_ANNOUNCE_GRACE = 0.01  # how long a 200 from /health waits for the child's "listening" line
_prctl: Any
try:
    _libc = ctypes.CDLL(None, use_errno=True)
    _prctl = _libc.prctl
except (OSError, AttributeError):  # not Linux: no parent-death signal
    _prctl = None

# Variables that describe llmd's own service context and must not leak into children.
_PRIVATE_ENV = ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "NOTIFY_SOCKET", "WATCHDOG_USEC",
                "WATCHDOG_PID", "LLMD_SOCKET")


class ChildExited(Exception):
    """The child exited before it became ready."""

    def __init__(self, code: int, tail: list[str]) -> None:
        super().__init__(f"llama-server exited with code {code}")
        self.code = code
        self.tail = tail


def _die_with_parent(parent: int) -> None:
    # Runs in the forked child before exec. The kernel ties PDEATHSIG to the thread that
    # forked, which is why llmd forks from its main (trio) thread, never a worker thread.
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # llmd already died between fork and prctl
        os._exit(1)


class Child:
    """A running llama-server in its own process group, with its recent output."""

    def __init__(
        self, name: str, popen: subprocess.Popen[bytes], port: int, log_lines: int, output_fd: int
    ) -> None:
        self.name = name
        self.pid = popen.pid
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}"
        self.output: collections.deque[str] = collections.deque(maxlen=max(1, log_lines))
        self.lines_total = 0  # lines printed so far, including those the deque let go
        self.announced = False  # it printed that it listens on its port
        self.slots: int | None = None  # requests it serves at once (its /props total_slots)
        self.n_ctx: int | None = None  # the context one request gets (its /props n_ctx)
        self._announcement = f"listening on {self.base_url}"
        self.returncode: int | None = None
        self.exited = trio.Event()
        self._activity = trio.Event()
        self._popen = popen
        self._output_fd = output_fd
        self._pidfd = os.pidfd_open(popen.pid)

    def tail(self, n: int = 20) -> list[str]:
        """The last `n` lines the child printed."""
        return list(self.output)[-n:]

    def signal_group(self, sig: int) -> None:
        """Send `sig` to the child's whole process group, if it still exists."""
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    async def wait_activity(self) -> None:
        """Return after the child prints its next line or exits."""
        await self._activity.wait()

    async def _pump_output(self, stream: trio.lowlevel.FdStream) -> None:
        pending = b""
        async with stream:
            while True:
                try:
                    chunk = await stream.receive_some(65536)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    chunk = b""
                if not chunk:
                    break
                *lines, pending = (pending + chunk).split(b"\n")
                for raw in lines:
                    line = raw.decode("utf-8", "replace").rstrip("\r")
                    self.output.append(line)
                    self.lines_total += 1
                    if not self.announced and line.endswith(self._announcement):
                        self.announced = True
                    log.info("[%s] %s", self.name, line)
                self._wake()
                # llama-server writes each log line in three pieces and ~8 lines per
                # request, each a wakeup that takes a core from its compute threads.
                # Letting output gather for a moment makes that one read per burst.
                await trio.sleep(_GATHER_SECONDS)
        if pending:
            self.output.append(pending.decode("utf-8", "replace"))
            self.lines_total += 1

    def _wake(self) -> None:
        self._activity.set()
        self._activity = trio.Event()

    async def _reap(self) -> None:
        if self.returncode is None:
            await trio.lowlevel.wait_readable(self._pidfd)
            self.returncode = self._popen.wait()
            os.close(self._pidfd)
            self.exited.set()
            self._wake()

    async def supervise(self, stop_timeout: float,
                        on_stop: Callable[[], None] = lambda: None) -> None:
        """Capture output until the child exits; if cancelled first, call `on_stop`, then
        stop it."""
        # The output pump is shielded: a child being stopped still prints its last lines,
        # and closing the pipe under it would turn its shutdown into a SIGPIPE death.
        pump_scope = trio.CancelScope(shield=True)
        pumped = trio.Event()

        async def pump() -> None:
            with pump_scope:
                await self._pump_output(trio.lowlevel.FdStream(self._output_fd))
            pumped.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump)
            try:
                await self._reap()
            finally:
                with trio.CancelScope(shield=True):
                    if self.returncode is None:
                        try:
                            on_stop()
                        except Exception:  # the child must be stopped whatever it raised
                            log.exception("[%s] before stopping it", self.name)
                    await self.stop(stop_timeout)
                    # EOF follows once the group is dead, unless something escaped it.
                    with trio.move_on_after(1):
                        await pumped.wait()
                    pump_scope.cancel()

    async def stop(self, timeout: float) -> None:
        """SIGTERM the group, SIGKILL it after `timeout` seconds; return once it is gone."""
        if self.returncode is None:
            self.signal_group(signal.SIGTERM)
            with trio.move_on_after(timeout):
                await self._reap()
        # Whatever is left in the group (the child itself or anything it forked) dies now.
        self.signal_group(signal.SIGKILL)
        await self._reap()


def spawn(name: str, argv: Sequence[str], *, log_lines: int, cache_dir: str = "") -> Child:
    """Start llama-server on a free loopback port in its own process group."""
    port = ports.free_port()
    env = {k: v for k, v in os.environ.items() if k not in _PRIVATE_ENV}
    if cache_dir:
        # What llama-server downloads itself (an operator's -hf argument) lands in llmd's
        # cache directory, the one place a hardened unit lets it write.
        env.setdefault("LLAMA_CACHE", cache_dir)
    read_fd, write_fd = os.pipe()
    try:
        # Popen runs here, in the trio thread, on purpose: see _die_with_parent.
        popen = subprocess.Popen(
            # --metrics: what a gateway's picker reads through llmd's /metrics.
            [*argv, *(() if "--metrics" in argv else ("--metrics",)),
             "--host", "127.0.0.1", "--port", str(port)],
            stdin=subprocess.DEVNULL,
            stdout=write_fd,
            stderr=write_fd,
            env=env,
            # A process group of its own, for signal_group, but llmd's session. Linux's
            # scheduler autogroups (on by default) make each session one group sharing CPU
            # with the others. A child in a session of its own served 32 clients'
            # completions at 0.87x direct llama-server; in llmd's, 1.0x.
            process_group=0,
            preexec_fn=functools.partial(_die_with_parent, os.getpid()),
        )
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)
    log.info("[%s] started pid %d on port %d", name, popen.pid, port)
    return Child(name, popen, port, log_lines, read_fd)


async def healthy(upstream: Upstream, base_url: str) -> bool:
    """Whether GET /health at `base_url` answers 200 within 5 s."""
    with trio.move_on_after(5):
        try:
            status, _ = await upstream.fetch("GET", base_url, "/health")
            return status == 200
        except UpstreamBroken:
            pass
    return False


def _positive(value: object) -> int | None:
    return value if isinstance(value, int) and value > 0 else None


async def read_props(child: Child, upstream: Upstream) -> None:
    """Note what the ready child says of itself in /props: how many requests it serves at
    once (total_slots) and the context one request gets (n_ctx); None where it does not
    say within 5 s."""
    with trio.move_on_after(5):
        body = await reports.get(upstream, child.base_url, "/props")
        try:
            props = json.loads(body) if body is not None else {}
            child.slots = _positive(props.get("total_slots"))
            child.n_ctx = _positive((props.get("default_generation_settings") or {}).get(
                "n_ctx"))
        except (ValueError, AttributeError):
            pass


async def wait_ready(child: Child, upstream: Upstream) -> None:
    """Return once the child's /health answers 200; raise ChildExited if it exits first."""
    delay = 0.005
    while True:
        if child.returncode is not None:
            raise ChildExited(child.returncode, child.tail())
        # A 200 from a process that took the child's port is not the child's. A child that
        # says it listens there bound the port itself; otherwise /proc must say (~10 ms).
        if await healthy(upstream, child.base_url):
            # llama-server prints that line as it starts answering, so the 200 usually
            # comes while the line is still in the pipe: give it a moment to be read.
            with trio.move_on_after(_ANNOUNCE_GRACE):
                while not child.announced and child.returncode is None:
                    await child.wait_activity()
            if child.announced or ports.held_by(child.pid, child.port):
                return
        # Any new output line (e.g. "model loaded") is the likeliest moment to be ready.
        with trio.move_on_after(delay):
            await child.wait_activity()
        delay = min(delay * 2, 0.1)


_PORT_ATTEMPTS = 3  # how many ports a child may lose to other processes before it fails


@dataclass(frozen=True)
class Exit:
    """How a launched child ended: its code (None if never started) and why."""

    code: int | None
    reason: str
    tail: list[str]
    ready: bool


async def serve(
    name: str,
    argv: Sequence[str],
    on_ready: Callable[[Child], None],
    *,
    upstream: Upstream,
    load_timeout: float,
    stop_timeout: float,
    log_lines: int,
    cache_dir: str = "",
    on_spawn: Callable[[int], None] = lambda pid: None,
) -> Exit:
    """Run one child: call `on_spawn` with its pid once it is started and `on_ready` once
    /health answers; return when it exits."""
    for _ in range(_PORT_ATTEMPTS):
        try:
            child = spawn(name, argv, log_lines=log_lines, cache_dir=cache_dir)
        except OSError as exc:
            return Exit(None, f"cannot start {argv[0]}: {exc.strerror or exc}", [], False)
        on_spawn(child.pid)
        try:
            ended = await _run(child, on_ready, upstream=upstream, load_timeout=load_timeout,
                               stop_timeout=stop_timeout)
        finally:  # an evicted child is cancelled, not returned from: forget it either way
            upstream.forget(child.base_url)
        if ended.ready or ended.code is None or not ports.taken(child.port):
            return ended
        log.warning("[%s] port %d was taken by another process before llama-server bound "
                    "it; retrying on another port", name, child.port)
    return ended


async def _run(child: Child, on_ready: Callable[[Child], None], *, upstream: Upstream,
               load_timeout: float, stop_timeout: float) -> Exit:
    async with trio.open_nursery() as nursery:
        # llama-server waits for its open keep-alive connections as it shuts down: closing
        # llmd's idle ones first takes its exit from ~150 ms to ~50 ms, and a waiting load
        # starts that much sooner.
        nursery.start_soon(child.supervise, stop_timeout,
                           lambda: upstream.forget(child.base_url))
        try:
            with trio.fail_after(load_timeout):
                await wait_ready(child, upstream)
        except trio.TooSlowError:
            nursery.cancel_scope.cancel()  # supervise() stops the child before we return
            return Exit(None, f"not ready after {load_timeout:g}s (load_timeout)",
                        list(child.output), False)
        except ChildExited as exc:
            return Exit(exc.code, f"llama-server exited with code {exc.code} while loading",
                        list(child.output), False)
        # Its slots (what max_queue counts beyond) and context (Ollama's num_ctx): ~1 ms.
        await read_props(child, upstream)
        on_ready(child)
        await child.exited.wait()
    code = child.returncode
    return Exit(code, f"llama-server exited with code {code}", list(child.output), True)
