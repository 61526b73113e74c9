"""The daemon: one nursery holding the scheduler, the router and the control server."""

from __future__ import annotations

import errno
import grp
import logging
import os
import resource
import signal
import socket
import stat
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Callable, Iterator, TypedDict

import trio

from llmd.models import catalog
from llmd.children import child
from llmd import server
from llmd.models.catalog import ModelSpec
from llmd.config import Config
from llmd.errors import ConfigError
from llmd.api.control import Control
from llmd.hub.download import Hub
from llmd.memory.estimate import Estimator, identity
from llmd.models.state import STARTING, UP
from llmd.memory.devices import Devices
from llmd.api.metrics import Metrics
from llmd.api.proxy import Proxy
from llmd.api.router import Router
from llmd.children.slot_cache import SlotFiles
from llmd.models.model import Handle, Launcher
from llmd.models.scheduler import Scheduler
from llmd.systemd import Activation, Notifier
from llmd.children.upstream import Upstream

log = logging.getLogger("llmd")


class ListenError(Exception):
    """A listener could not be set up; the message says which and why."""


def bind_tcp(listen: str) -> socket.socket:
    """A listening TCP socket on HOST:PORT."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, int(port)))
        sock.listen(1024)
    except OSError as exc:
        sock.close()
        raise ListenError(f"cannot listen on {listen}: {exc.strerror}")
    return sock


def raise_fd_limit() -> int:
    """Raise the soft open-files limit to the hard one; return the new soft limit."""
    # systemd starts services with a soft limit of 1024, and every stream relayed holds
    # two sockets: a thousand editors' streams would hit it.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


def _remove_stale_socket(path: str) -> None:
    try:
        if not stat.S_ISSOCK(os.stat(path).st_mode):
            raise ListenError(f"control socket {path} exists and is not a socket")
    except FileNotFoundError:
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError as exc:
        if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
            os.unlink(path)  # left behind by an llmd that died
            return
        raise ListenError(f"control socket {path}: {exc.strerror}")
    else:
        raise ListenError(f"control socket {path} is in use: is another llmd running?")
    finally:
        probe.close()


@contextmanager
def control_listener(config: Config) -> Iterator[socket.socket]:
    """A listening Unix socket with the configured mode and group, removed on exit."""
    path = config.control_socket
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    except OSError as exc:
        raise ListenError(f"cannot create the directory of {path}: {exc.strerror}")
    _remove_stale_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)  # never world-accessible, even for an instant
    try:
        sock.bind(path)
    except OSError as exc:
        sock.close()
        raise ListenError(f"cannot bind control socket {path}: {exc.strerror}")
    finally:
        os.umask(old_umask)
    try:
        os.chmod(path, config.control_socket_mode)
        _set_group(path, config.control_group)
        sock.listen(128)
        yield sock
    finally:
        sock.close()
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def _set_group(path: str, group: str) -> None:
    if not group:
        return
    try:
        os.chown(path, -1, grp.getgrnam(group).gr_gid)
    except KeyError:
        log.debug("control group %r does not exist; the socket keeps its group", group)
    except PermissionError:
        log.info("cannot give the control socket to group %r (not permitted)", group)


def server_settings(config: Config) -> server.Settings:
    """The servers' time limits from the configuration."""
    # One bound for a request head: after a connection opens (slow loris) and after its
    # last response (idle keep-alive).
    return server.Settings(header_timeout=config.header_timeout,
                           keepalive_timeout=config.header_timeout,
                           shutdown_timeout=config.shutdown_timeout)


def make_launcher(config: Config, upstream: Upstream) -> Launcher:
    """The launcher that runs a real llama-server for a spec."""

    async def launch(spec: ModelSpec, on_ready: Callable[[Handle], None],
                     on_spawn: Callable[[int], None]) -> child.Exit:
        if not os.path.isfile(spec.path):  # deleted since the scan: say so, start nothing
            return child.Exit(None, f"model file {spec.path} does not exist", [], False)
        return await child.serve(
            spec.name, [config.llama_server, *spec.child_args()], on_ready,
            upstream=upstream, load_timeout=config.load_timeout,
            stop_timeout=config.stop_timeout,
            log_lines=config.log_lines, cache_dir=config.cache_dir, on_spawn=on_spawn)

    return launch


class Accounting(TypedDict, total=False):
    """The scheduler's memory-accounting arguments."""

    devices: Devices
    estimator: Estimator
    cache_ram_mib: int


def memory_accounting(config: Config) -> Accounting:
    """The scheduler's device table and estimator, unless memory accounting is off."""
    if config.memory_margin_mib == 0 and not config.device_margins_mib:
        return {}
    return {"devices": Devices(config.memory_margin_mib, dict(config.device_margins_mib)),
            "cache_ram_mib": config.cache_ram_mib,
            "estimator": Estimator(config.llama_server, config.state_dir,
                                   timeout=config.estimate_timeout)}


# Reads the configuration again: the new Config and catalog, or ConfigError.
Loader = Callable[[], tuple[Config, dict[str, ModelSpec]]]


class Reloader:
    """Applies a re-read configuration to the running daemon (SIGHUP, llmctl reload)."""

    def __init__(self, load: Loader | None, config: Config, scheduler: Scheduler,
                 apps: list[Router | Control]) -> None:
        self.load = load
        self.config = config
        self.scheduler = scheduler
        self.apps = apps

    def __call__(self) -> dict[str, list[str]]:
        """Reload now; raise ConfigError (keeping the running config) when the file is bad."""
        if self.load is None:
            return {"added": [], "removed": [], "changed": []}
        try:
            config, specs = self.load()
        except ConfigError as exc:
            log.error("reload failed; keeping the running configuration: %s", exc)
            raise
        for key in ("listen", "control_socket", "control_socket_mode", "control_group",
                    "header_timeout", "max_connections", "shutdown_timeout"):
            if getattr(config, key) != getattr(self.config, key):
                log.warning("%s changed; it takes effect when llmd restarts", key)
        result = self.scheduler.update(specs, models_max=config.models_max,
                                       drain_timeout=config.drain_timeout,
                                       min_residency=config.min_residency,
                                       cache_ram_mib=config.cache_ram_mib)
        self.scheduler.default_args, self.scheduler.allow_pull = config.args, config.allow_pull
        self.scheduler.max_queue, self.scheduler.max_wait = config.max_queue, config.max_wait
        self.scheduler.prompts.default = config.keep_prompt_cache
        if self.scheduler.prompts.files is not None:
            self.scheduler.prompts.files.budget = config.prompt_cache_budget_mib << 20
        for app in self.apps:
            app.config = config
        self.config = config
        log.info("reloaded %s: %d models (added %s, removed %s, changed %s)", config.source,
                 len(specs), result["added"] or "none", result["removed"] or "none",
                 result["changed"] or "none")
        return result


async def _until_signal(shutdown: trio.Event, reload: Callable[[], object]) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            if signum == signal.SIGHUP:
                try:
                    reload()
                except ConfigError:
                    pass  # logged; the running configuration stays
                continue
            log.info("received %s; shutting down", signal.Signals(signum).name)
            break
    shutdown.set()


def status_line(scheduler: Scheduler) -> str:
    """What llmd is doing, for systemd's STATUS=: "3 models, 1 loaded: gemma (2 in flight)"."""
    loaded = [m for m in scheduler.models.values() if m.state in UP]
    starting = [m.spec.name for m in scheduler.models.values() if m.state in STARTING]
    text = f"{len(scheduler.models)} models, {len(loaded)} loaded"
    if loaded:
        text += ": " + ", ".join(
            m.spec.name + (f" ({m.leases} in flight)" if m.leases else "") for m in loaded)
    if starting:
        text += "; loading " + ", ".join(starting)
    return text


async def _report_status(scheduler: Scheduler, notifier: Notifier) -> None:
    events = scheduler.subscribe()
    while True:
        notifier.status(status_line(scheduler))
        # State changes come as events; in-flight counts are refreshed every few seconds.
        with trio.move_on_after(5):
            await events.receive()


async def _startup_loads(scheduler: Scheduler, notifier: Notifier) -> None:
    """Wait for load_on_startup models to settle, asking systemd for more time meanwhile."""
    for model in scheduler.models.values():
        # A download counts: the service is up once what it must load at startup is.
        while model.spec.load_on_startup and model.state in STARTING:
            notifier.send(f"EXTEND_TIMEOUT_USEC={int(15e6)}",
                          f"STATUS=loading {model.spec.name} (load_on_startup)")
            with trio.move_on_after(10):
                await model.changed.wait()


@contextmanager
def _router_socket(config: Config, activation: Activation) -> Iterator[socket.socket]:
    sock = activation.sockets.get("http") or bind_tcp(config.listen)
    try:
        yield sock
    finally:
        sock.close()


@contextmanager
def _control_socket(config: Config, activation: Activation) -> Iterator[socket.socket]:
    passed = activation.sockets.get("control")
    if passed is not None:  # systemd owns it: its mode, group and removal are the unit's
        yield passed
        return
    with control_listener(config) as sock:
        yield sock


async def run(config: Config, specs: dict[str, ModelSpec] | None = None,
              activation: Activation | None = None, notifier: Notifier | None = None,
              load: Loader | None = None) -> None:
    """Run llmd until SIGTERM/SIGINT: serve, then drain, then stop every child."""
    specs = catalog.build(config) if specs is None else specs
    raise_fd_limit()
    activation = activation or Activation()
    notifier = notifier or Notifier({})
    shutdown = trio.Event()
    with _control_socket(config, activation) as control_sock, \
            _router_socket(config, activation) as router_sock:
        async with Upstream() as upstream:
            hub = None if config.offline else Hub(None, config.hf_endpoint,
                                                  Path(config.hub_cache), config.hf_token)
            scheduler = Scheduler(specs, make_launcher(config, upstream),
                                  models_max=config.models_max, drain_timeout=config.drain_timeout,
                                  min_residency=config.min_residency,
                                  hub=hub, default_args=config.args,
                                  allow_pull=config.allow_pull,
                                  max_queue=config.max_queue, max_wait=config.max_wait,
                                  slot_files=SlotFiles(
                                      upstream, Path(config.cache_dir) / "prompt-cache",
                                      config.prompt_cache_budget_mib,
                                      lambda: identity(config.llama_server)),
                                  keep_prompt_cache=config.keep_prompt_cache,
                                  binary=lambda: identity(config.llama_server),
                                  upstream=upstream, **memory_accounting(config))
            limits = {app: server.Limit(config.max_connections or 1 << 30)
                      for app in ("router", "control")}
            router = Router(config, scheduler, Proxy(upstream),
                            Metrics(connections=limits["router"]))
            control = Control(config, scheduler)
            reloader = Reloader(load, config, scheduler, [router, control])
            router.reload = control.reload = reloader
            async with trio.open_nursery() as nursery:
                nursery.start_soon(upstream.close_idle)
                await nursery.start(scheduler.run)
                async with trio.open_nursery() as servers:
                    servers.start_soon(_until_signal, shutdown, reloader)
                    settings = server_settings(config)
                    for app, sock, limit in ((router, router_sock, limits["router"]),
                                             (control, control_sock, limits["control"])):
                        await servers.start(partial(server.serve, app, sock, settings, limit,
                                                    shutdown))
                    log.info("llmd listening: router on %s, control on %s, %d models",
                             _where(router_sock), _where(control_sock), len(specs))
                    nursery.start_soon(notifier.watchdog)
                    await _startup_loads(scheduler, notifier)
                    notifier.send("READY=1", f"STATUS={status_line(scheduler)}")
                    nursery.start_soon(_report_status, scheduler, notifier)
                    await shutdown.wait()
                    scheduler.closing = True  # /health says so to gateways at once
                    notifier.send("STOPPING=1", "STATUS=stopping: finishing requests in flight")
                    nursery.start_soon(_end_requests, scheduler, config.shutdown_timeout)
                log.info("listeners closed; stopping children")
                notifier.send("STATUS=stopping: stopping children")
                nursery.cancel_scope.cancel()  # stops every child, each with its own timeout
            if hub is not None:
                await hub.aclose()
    log.info("llmd stopped")


async def _end_requests(scheduler: Scheduler, shutdown_timeout: float) -> None:
    # Just before the servers' shutdown_timeout cuts connections mid-air, end the requests
    # still in flight ourselves: a stream then ends with an error event a client can read.
    await trio.sleep(max(0.0, shutdown_timeout - min(1.0, shutdown_timeout / 4)))
    log.warning("shutdown_timeout: ending the requests still in flight")
    scheduler.end_requests()


def _where(sock: socket.socket) -> str:
    name = sock.getsockname()
    return name if isinstance(name, str) else f"{name[0]}:{name[1]}"
