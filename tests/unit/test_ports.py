"""Telling whether a child really holds its port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from llmd import ports


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
