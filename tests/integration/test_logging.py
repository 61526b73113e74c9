"""Logs go to the journal with <N> priorities and no timestamps when stderr is the journal."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.helpers import wait_until


def test_journal_stream_gets_priority_prefixes(tmp_path):
    log = tmp_path / "stderr"
    config = tmp_path / "llmd.toml"
    config.write_text(f'models_dir = "{tmp_path}"\nlisten = "127.0.0.1:1"\n'
                      f'control_socket = "{tmp_path}/ctl.sock"\n')
    with open(log, "wb") as err:
        st = os.fstat(err.fileno())
        env = {**os.environ, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        # Port 1 can't be bound by a non-root user; as root, binding works and we stop it.
        proc = subprocess.Popen([sys.executable, "-m", "llmd", "--config", str(config)],
                                stderr=err, env=env)
        wait_until(lambda: proc.poll() is not None or "listening" in log.read_text(), 20,
                   "llmd to log")
        proc.terminate()
        proc.wait(10)
    lines = [l for l in log.read_text().splitlines() if l]
    assert lines and all(l.startswith("<") and l[2] == ">" for l in lines if not
                         l.startswith("llmd:"))
    assert any(l.startswith("<6>llmd") for l in lines)
    assert not any(l[3:5].isdigit() and l[7] == "-" for l in lines)  # no timestamps
