"""Who is on the other end of a control-socket connection (SO_PEERCRED), for the apps.

An ASGI scope has no client for Unix sockets, so llmd's server reads the peer's
pid/uid/gid as each connection starts and puts it in every request's scope as
`scope["extensions"]["peercred"]` (see `of`).
"""

from __future__ import annotations

import grp
import os
import pwd
import socket
import struct
from dataclasses import dataclass
from typing import Any, MutableMapping


@dataclass(frozen=True)
class Peer:
    """The process that connected: its pid, uid and all its gids."""

    pid: int
    uid: int
    gids: frozenset[int]


EXTENSION = "peercred"
_CREDS = struct.Struct("3i")


def _groups(pid: int, gid: int) -> frozenset[int]:
    gids = {gid}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Groups:"):
                    gids.update(int(g) for g in line.split()[1:])
    except OSError:
        pass
    return frozenset(gids)


def peer_of(sock: Any) -> Peer | None:
    """The credentials of a connected Unix socket's peer."""
    if sock.family != socket.AF_UNIX:
        return None
    pid, uid, gid = _CREDS.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                  _CREDS.size))
    return Peer(pid, uid, _groups(pid, gid))


def of(scope: MutableMapping[str, Any]) -> Peer | None:
    """The peer of the connection a request came on, if the server could tell."""
    extensions = scope.get("extensions")
    return extensions.get(EXTENSION) if extensions else None


def may_control(peer: Peer | None, group: str) -> bool:
    """Root, llmd's own user and members of `group` may load, unload and reload."""
    if peer is None:  # not a Unix socket: no credentials to go by
        return False
    if peer.uid in (0, os.geteuid()):
        return True
    try:
        entry = grp.getgrnam(group) if group else None
    except KeyError:
        return False
    if entry is None:
        return False
    if entry.gr_gid in peer.gids:
        return True
    try:
        return pwd.getpwuid(peer.uid).pw_name in entry.gr_mem
    except KeyError:
        return False
