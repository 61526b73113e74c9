"""Control socket access by peer credentials (SO_PEERCRED), tested as another uid.

Starts: llmd (subprocess, as root) with fake children; llmctl as `nobody` via setpriv.
"""

from __future__ import annotations

import grp
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

SETPRIV = shutil.which("setpriv")
pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not SETPRIV,
                                reason="needs root and setpriv to act as another uid")


@pytest.fixture
def open_socket_dir():
    # pytest's tmp dirs are 0700; nobody must be able to reach the socket.
    path = tempfile.mkdtemp(prefix="llmd-access-")
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def as_user(socket_path: str, *args: str, groups: str = "") -> subprocess.CompletedProcess[str]:
    ids = ["--reuid=65534", "--regid=65534"]
    ids += [f"--groups={groups}"] if groups else ["--clear-groups"]
    return subprocess.run([SETPRIV, *ids, sys.executable, "-m", "llmctl", "--socket",
                           socket_path, *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "HOME": "/tmp"})


def test_anyone_may_read_but_only_privileged_peers_may_control(daemon, fake_server,
                                                                open_socket_dir):
    sock = os.path.join(open_socket_dir, "ctl.sock")
    d = daemon({"llama_server": fake_server, "control_socket": sock,
                "control_socket_mode": "0666", "control_group": "users"},
               models={"a.gguf": "{}"})
    assert as_user(sock, "ps").returncode == 0
    assert as_user(sock, "status").returncode == 0
    denied = as_user(sock, "load", "a")
    assert denied.returncode == 1
    assert "needs root, llmd's own user or membership in group 'users'" in denied.stderr
    assert d.models()["a"]["status"]["value"] == "unloaded"
    assert "denied /load from uid 65534 pid" in d.log()
    assert as_user(sock, "reload").returncode == 1
    users = str(grp.getgrnam("users").gr_gid)
    allowed = as_user(sock, "load", "a", groups=users)
    assert allowed.returncode == 0, allowed.stderr
    assert d.llmctl("unload", "a").returncode == 0  # root
