"""Loopback ports for children: pick one, and tell whether a child really holds it.

A port picked free can be taken by another process before the child binds it. The child
then exits at once; worse, the other process may answer /health on that port. So llmd
treats a child as ready only when the listener on its port is one of the child's own
sockets, and retries on another port when a child lost its port.
"""

from __future__ import annotations

import errno
import os
import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on `host`."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def taken(port: int, host: str = "127.0.0.1") -> bool:
    """Whether another process holds `port` on `host` now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


def _listeners(port: int) -> set[str] | None:
    """Socket inodes listening on `port` (any address); None where /proc can't say."""
    inodes: set[str] = set()
    seen = False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                seen = True
                next(f, None)
                for line in f:
                    fields = line.split()
                    # The kernel lists listening sockets before all others, and the rest
                    # of the table grows with every connection on the machine.
                    if fields[3] != "0A":  # state 0A is LISTEN
                        break
                    # local_address is HEX_ADDR:HEX_PORT
                    if int(fields[1].rsplit(":", 1)[1], 16) == port:
                        inodes.add(fields[9])
        except (OSError, IndexError, ValueError):
            continue
    return inodes if seen else None


def _sockets_of(pid: int) -> set[str]:
    found: set[str] = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return found
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            found.add(target[8:-1])
    return found


def _group_members(pgid: int) -> list[int]:
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid:  # the field after ppid is the process group
                members.append(int(entry))
    return members


def held_by(group: int, port: int) -> bool:
    """Whether the listener on `port` belongs to process group `group` (True if unknowable).

    A group, not a pid: an operator's wrapper script may fork the real server.
    """
    inodes = _listeners(port)
    if not inodes:  # no /proc, or no listener visible: nothing says it is someone else's
        return True
    if _sockets_of(group) & inodes:
        return True
    return any(_sockets_of(pid) & inodes for pid in _group_members(group) if pid != group)
