"""The systemd units pass `systemd-analyze verify` (with the paths they name stubbed).

Starts: systemd-analyze only.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ANALYZE = shutil.which("systemd-analyze")
pytestmark = pytest.mark.skipif(not ANALYZE, reason="systemd-analyze not installed")


def stage(tmp: Path, units: Path) -> tuple[list[str], dict[str, str]]:
    llmd = str(Path(sys.executable).with_name("llmd"))
    for unit in units.glob("llmd.*"):
        if unit.suffix in (".service", ".socket"):
            text = unit.read_text().replace("/usr/bin/llmd", llmd)
            text = text.replace("%h/.local/bin/llmd", llmd)
            (tmp / unit.name).write_text(text)
    # `Documentation=man:` entries are checked with man(1): point it at our pages.
    for page in (ROOT / "man").iterdir():
        section = tmp / "man" / f"man{page.suffix[1:]}"
        section.mkdir(parents=True, exist_ok=True)
        shutil.copy(page, section / page.name)
    env = {**os.environ, "MANPATH": str(tmp / "man"), "SYSTEMD_LOG_LEVEL": "warning"}
    return sorted(str(p) for p in tmp.glob("llmd.*")), env


def test_system_units_verify(tmp_path):
    units, env = stage(tmp_path, ROOT / "systemd")
    result = subprocess.run([ANALYZE, "verify", *units], capture_output=True, text=True,
                            env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


def test_user_units_verify(tmp_path):
    units, env = stage(tmp_path, ROOT / "systemd" / "user")
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    result = subprocess.run([ANALYZE, "--user", "verify", *units], capture_output=True,
                            text=True, env={**env, "XDG_RUNTIME_DIR": str(runtime)}, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


def test_service_has_the_expected_shape():
    service = (ROOT / "systemd" / "llmd.service").read_text()
    for line in ("Type=notify", "KillMode=control-group", "Restart=on-failure",
                 "NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes",
                 "PrivateTmp=yes", "StateDirectory=llmd", "CacheDirectory=llmd",
                 "RuntimeDirectory=llmd", "SupplementaryGroups=", "RestrictAddressFamilies="):
        assert line in service
    socket = (ROOT / "systemd" / "llmd.socket").read_text()
    assert "ListenStream=127.0.0.1:8080" in socket
    assert "ListenStream=/run/llmd/control.sock" in socket and "SocketMode=0660" in socket
    assert (ROOT / "systemd" / "user" / "llmd.socket").exists()
