"""systemd integration: socket activation (sd_listen_fds) and sd_notify, without libsystemd."""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass, field
from typing import Mapping

import trio

log = logging.getLogger("llmd.systemd")

LISTEN_FDS_START = 3


class ActivationError(Exception):
    """The sockets systemd passed can't be used as they are; the message says why."""


@dataclass
class Activation:
    """Listeners passed by systemd, by role ("http", "control")."""

    sockets: dict[str, socket.socket] = field(default_factory=dict)
    ignored: str = ""  # why passed fds were ignored, if they were


def _check(role: str, sock: socket.socket, fd: int) -> None:
    kind = sock.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE)
    listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    if kind != socket.SOCK_STREAM or not listening:
        raise ActivationError(f"socket activation: fd {fd} ({role}) is not a listening stream "
                              "socket; use ListenStream= in llmd.socket")
    if role == "control" and sock.family != socket.AF_UNIX:
        raise ActivationError(f"socket activation: fd {fd} (control) must be a Unix socket, "
                              "e.g. ListenStream=/run/llmd/control.sock")


def listen_fds(env: Mapping[str, str], pid: int | None = None) -> Activation:
    """The listeners in LISTEN_FDS/LISTEN_PID/LISTEN_FDNAMES, by role; none if not activated."""
    if "LISTEN_FDS" not in env:
        return Activation()
    pid = os.getpid() if pid is None else pid
    if env.get("LISTEN_PID", "") != str(pid):
        return Activation(ignored=f"socket activation: LISTEN_PID={env.get('LISTEN_PID')} is "
                                  f"for another process (this is {pid}); binding sockets itself")
    try:
        count = int(env["LISTEN_FDS"])
    except ValueError:
        raise ActivationError(
            f"socket activation: LISTEN_FDS={env['LISTEN_FDS']!r} is not a number")
    names = env.get("LISTEN_FDNAMES", "").split(":") if env.get("LISTEN_FDNAMES") else []
    sockets: dict[str, socket.socket] = {}
    for i in range(count):
        fd = LISTEN_FDS_START + i
        name = names[i] if i < len(names) else ""
        try:
            sock = socket.socket(fileno=fd)
        except OSError as exc:
            raise ActivationError(f"socket activation: fd {fd} is not a socket: {exc.strerror}")
        # FileDescriptorName= names every fd of a unit alike, so a name says the role only
        # when it is http/control and unique; otherwise the family does: Unix is control.
        if name in ("http", "control") and names.count(name) == 1:
            role = name
        else:
            role = "control" if sock.family == socket.AF_UNIX and count > 1 else "http"
        if role in sockets:
            raise ActivationError(f"socket activation: two fds would be the {role} socket; "
                                  "name them with FileDescriptorName=http and =control")
        _check(role, sock, fd)
        os.set_inheritable(fd, False)  # children must not hold llmd's listeners
        sockets[role] = sock
    return Activation(sockets)


class Notifier:
    """sd_notify over $NOTIFY_SOCKET (a path or an abstract `@name`); silent without it."""

    def __init__(self, env: Mapping[str, str]) -> None:
        path = env.get("NOTIFY_SOCKET", "")
        self.address = "\0" + path[1:] if path.startswith("@") else path
        self._sock: socket.socket | None = None
        if self.address:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        usec = env.get("WATCHDOG_USEC", "")
        watchdog_pid = env.get("WATCHDOG_PID", "")
        own = not watchdog_pid or watchdog_pid == str(os.getpid())
        self.watchdog_interval = int(usec) / 1e6 / 2 if usec.isdigit() and own else 0.0
        self._last_status = ""

    def send(self, *lines: str) -> None:
        """Send `KEY=VALUE` lines in one datagram; failures are logged, never raised."""
        if self._sock is None:
            return
        try:
            self._sock.sendto("\n".join(lines).encode(), self.address)
        except OSError as exc:
            log.debug("sd_notify %s failed: %s", lines, exc)

    def status(self, text: str) -> None:
        """Send STATUS= when it changed."""
        if text != self._last_status:
            self._last_status = text
            self.send(f"STATUS={text}")

    async def watchdog(self) -> None:
        """Ping the watchdog at half its interval, for as long as this task runs."""
        if not self.watchdog_interval:
            return
        while True:
            self.send("WATCHDOG=1")
            await trio.sleep(self.watchdog_interval)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
