"""Telling whether a child really holds its port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

from llmd.children import ports


def test_a_listener_of_our_own_group_is_held_and_another_groups_is_not():
    with socket.socket() as mine:
        mine.bind(("127.0.0.1", 0))
        mine.listen()
        port = mine.getsockname()[1]
        assert ports.taken(port)
        assert ports.held_by(os.getpgrp(), port)
        other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"],
                                 start_new_session=True)
        try:
            assert not ports.held_by(other.pid, port)
        finally:
            other.kill()
            other.wait()


def test_a_free_port_is_not_taken():
    port = ports.free_port()
    assert not ports.taken(port)


def test_a_listener_held_by_a_forked_member_of_the_group_counts(tmp_path):
    # An operator's wrapper script may fork llama-server instead of exec'ing it.
    port = ports.free_port()
    ready = tmp_path / "ready"
    server = (f"import socket, time, pathlib; s = socket.socket(); "
              f"s.bind(('127.0.0.1', {port})); s.listen(); "
              f"pathlib.Path({str(ready)!r}).touch(); time.sleep(30)")
    wrapper = subprocess.Popen(["sh", "-c", f'"{sys.executable}" -c "{server}" & wait'],
                               start_new_session=True)
    try:
        for _ in range(200):
            if ready.exists():
                break
            time.sleep(0.02)
        assert ports.held_by(wrapper.pid, port)
    finally:
        os.killpg(wrapper.pid, 9)
        wrapper.wait()
