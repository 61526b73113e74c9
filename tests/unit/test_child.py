"""How a child process is placed: its own process group, llmd's session."""

from __future__ import annotations

import os

from llmd.children import child


async def test_a_child_has_its_own_process_group_but_stays_in_llmds_session():
    # A session of its own would be a scheduler autogroup of its own (see spawn()).
    started = child.spawn("c", ["sh", "-c", "sleep 30"], log_lines=5)
    try:
        assert os.getpgid(started.pid) == started.pid
        assert os.getsid(started.pid) == os.getsid(0)
    finally:
        await started.stop(timeout=5)
    assert started.returncode is not None
