"""The files llmd ships beside its code: systemd units, man pages, example configuration.

They are package data of `llmd` under `llmd/share/` and are read with importlib.resources,
so a checkout, an editable install and an installed wheel find them alike. In the
repository `llmd/share/` holds only symlinks to `systemd/`, `man/` and
`config.example.toml`, which stay the one copy; the wheel carries the files themselves.

Two sets: the system set (the units under `systemd/`, the sysusers file, the man pages,
the example configuration) installs under /etc and /usr/local; the user set (the units
under `systemd/user/`, the man pages, the example configuration) under the XDG
directories of one user. Installing copies bytes unchanged.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal, Mapping

Scope = Literal["system", "user"]


@dataclass(frozen=True)
class Shipped:
    """One shipped file: its name (its path in the repository) and where each set puts it."""

    name: str
    system: str | None  # destination relative to the root, or None: not in the system set
    user: str | None  # destination under "config" or "data", or None: not in the user set


MAN = ("llmd.8", "llmctl.1", "llmd.toml.5")

SHIPPED: tuple[Shipped, ...] = (
    Shipped("systemd/llmd.socket", "etc/systemd/system/llmd.socket", None),
    Shipped("systemd/llmd.service", "etc/systemd/system/llmd.service", None),
    Shipped("systemd/llmd.sysusers", "etc/sysusers.d/llmd.conf", None),
    Shipped("systemd/user/llmd.socket", None, "config/systemd/user/llmd.socket"),
    Shipped("systemd/user/llmd.service", None, "config/systemd/user/llmd.service"),
    *(Shipped(f"man/{page}", f"usr/local/share/man/man{page[-1]}/{page}",
              f"data/man/man{page[-1]}/{page}") for page in MAN),
    Shipped("config.example.toml", "etc/llmd/config.example.toml",
            "config/llmd/config.example.toml"),
)


class FilesError(Exception):
    """A shipped file is unknown, or installing would overwrite a changed file."""


@dataclass(frozen=True)
class Placement:
    """Where `install` puts one shipped file, and what it would do there."""

    name: str
    path: Path
    action: Literal["install", "replace", "unchanged", "conflict"]


def shipped(scope: Scope) -> list[Shipped]:
    """The files of one set, in a stable order."""
    return [f for f in SHIPPED if (f.system if scope == "system" else f.user) is not None]


def read(name: str) -> bytes:
    """The bytes of the shipped file NAME (its repository path, e.g. systemd/llmd.socket)."""
    if name not in {f.name for f in SHIPPED}:
        raise FilesError(f"no shipped file {name}; `llmctl files list` names them")
    node = resources.files("llmd") / "share"
    for part in name.split("/"):
        node = node / part
    return node.read_bytes()


def resolve(name: str, scope: Scope) -> str:
    """A shipped file's name from its full name or, within the set, its file name."""
    if name in {f.name for f in SHIPPED}:
        return name
    found = [f.name for f in shipped(scope) if f.name.rsplit("/", 1)[-1] == name]
    if not found:
        hint = " (or the user set with --user)" if scope == "system" else ""
        raise FilesError(f"no shipped file {name} in the {scope} set{hint}; "
                         "`llmctl files list` names them")
    return found[0]  # a set never holds two files of one name


def destinations(scope: Scope, root: Path, env: Mapping[str, str]) -> dict[str, Path]:
    """Where each file of the set goes: under `root` for the system set, or under
    $XDG_CONFIG_HOME (~/.config) and $XDG_DATA_HOME (~/.local/share) for the user set."""
    if scope == "system":
        return {f.name: root / f.system for f in SHIPPED if f.system is not None}
    home = Path(env.get("HOME") or Path.home())
    bases = {"config": Path(env.get("XDG_CONFIG_HOME") or home / ".config"),
             "data": Path(env.get("XDG_DATA_HOME") or home / ".local" / "share")}
    out = {}
    for f in SHIPPED:
        if f.user is not None:
            base, rest = f.user.split("/", 1)
            out[f.name] = bases[base] / rest
    return out


def plan(scope: Scope, root: Path, env: Mapping[str, str]) -> list[Placement]:
    """What installing the set would do to each destination, touching nothing."""
    placements = []
    for name, path in destinations(scope, root, env).items():
        if not path.exists():
            action: Literal["install", "replace", "unchanged", "conflict"] = "install"
        elif path.is_file() and path.read_bytes() == read(name):
            action = "unchanged"
        else:
            action = "conflict"
        placements.append(Placement(name, path, action))
    return placements


def install(scope: Scope, root: Path, env: Mapping[str, str], force: bool = False
            ) -> list[Placement]:
    """Copy the set's files to their destinations (mode 0644, parents created).

    A destination that holds something else is replaced only with `force`; without it
    nothing at all is written and FilesError names the first such path."""
    placements = plan(scope, root, env)
    conflicts = [p for p in placements if p.action == "conflict"]
    if conflicts and not force:
        raise FilesError(f"{conflicts[0].path} exists and differs from the shipped "
                         f"{conflicts[0].name}; --force replaces it")
    data = {p.name: read(p.name) for p in placements}  # all read before any is written
    done = []
    for p in placements:
        if p.action == "unchanged":
            done.append(p)
            continue
        _write(p.path, data[p.name])
        done.append(Placement(p.name, p.path, "replace" if p.action == "conflict" else "install"))
    return done


def _write(path: Path, data: bytes) -> None:
    # Through a temporary file and rename: systemd never reads a half-written unit.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def exec_start(unit: bytes, home: Path) -> Path | None:
    """The program a unit's ExecStart= runs (with %h expanded), or None if it has none."""
    for line in unit.decode().splitlines():
        if line.startswith("ExecStart="):
            program = line.split("=", 1)[1].split()[0].lstrip("-@:+!")
            return Path(program.replace("%h", str(home)))
    return None
