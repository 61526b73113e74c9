"""llama-server's host-RAM prompt cache (--cache-ram), as llmd books and bounds it.

llama-server 11434 keeps up to `--cache-ram` MiB (8192 by default) of prompt states in
host memory and fills it as distinct prompts are served: a child measured small at ready
grows by tens of MiB a prompt. Neither llama-fit-params nor a measurement at ready sees
that, so llmd books it:

- A child whose arguments set `--cache-ram N` keeps them (so does one whose environment,
  inherited from llmd's, sets LLAMA_ARG_CACHE_RAM, which llama-server reads too). N is booked on the host in full
  before admission, so admission makes room for it. `-1` (no limit) can't be booked.
- Any other child gets `--cache-ram` from llmd: `cache_ram_mib`, cut down to what the
  host has left once the model itself fits (never evicting anything for it), and that
  much is booked as the child's growth.
"""

from __future__ import annotations

from typing import Mapping, Sequence

FLAGS = ("--cache-ram", "-cram")
ENV = "LLAMA_ARG_CACHE_RAM"
_INLINE = tuple(f + "=" for f in FLAGS)  # --cache-ram=N
UNLIMITED = -1


def given(args: Sequence[str], env: Mapping[str, str]) -> bool:
    """Whether the child's arguments or environment set the cache size themselves."""
    return ENV in env or any(a in FLAGS or a.startswith(_INLINE)
                             for a in args)


def value(args: Sequence[str], env: Mapping[str, str]) -> int | None:
    """The --cache-ram the arguments set (the last one wins), else the environment's; None
    if neither, or not a number (llama-server then refuses it and says so)."""
    found: int | None = None
    text = env.get(ENV)
    for i, arg in enumerate(args):
        if arg in FLAGS and i + 1 < len(args):
            text = args[i + 1]
        elif arg.startswith(_INLINE):
            text = arg.split("=", 1)[1]
    if text is not None:
        try:
            found = int(text)
        except ValueError:
            found = None
    return found


def booked_up_front(args: Sequence[str], env: Mapping[str, str]) -> int:
    """MiB of host growth to book before admission: the child's own --cache-ram."""
    found = value(args, env)
    return found if found is not None and found > 0 else 0


def sized(cap: int, room_left: int) -> int:
    """The --cache-ram llmd gives a child: at most `cap`, at most the room left."""
    return max(0, min(cap, room_left))
