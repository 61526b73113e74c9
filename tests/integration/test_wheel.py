"""Installed from its wheel into a fresh virtual environment, llmd brings its systemd units,
man pages and example configuration, and `llmctl files` prints and installs them.

Starts: setuptools (an sdist, then a wheel built from it, as `python -m build` does), pip
(installing the wheel into a fresh venv) and the installed `llmctl`; no daemon.

Offline by construction: the build uses this environment's setuptools
(--no-build-isolation), and the wheel goes in with --no-index --no-deps. Its runtime
dependencies (click, httptools, ...) come from this environment through a .pth file in the
fresh venv, which puts this environment's site-packages *after* the venv's own: llmd and
llmctl are imported from the installed wheel (checked below), never from the checkout,
and this environment's editable-install hook is not run (its .pth is not processed).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import venv
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from llmctl import files

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
# Not build inputs; models/ and run/ can be large, and a build must not see stale output.
_SKIP_TOP = {".git", ".venv", "tests", "bench", "models", "run", "build", "dist"}
_SKIP_ANY = {"__pycache__", ".pytest_cache", ".mypy_cache", ".hypothesis"}


def _ignore(directory: str, names: list[str]) -> set[str]:
    top = Path(directory).resolve() == ROOT
    return {n for n in names
            if n in _SKIP_ANY or n.endswith(".egg-info") or (top and n in _SKIP_TOP)}


def _check(cmd: list[str], **kw) -> subprocess.CompletedProcess[bytes]:
    result = subprocess.run(cmd, capture_output=True, timeout=120, **kw)
    assert result.returncode == 0, (cmd, result.stdout.decode()[-2000:],
                                    result.stderr.decode()[-2000:])
    return result


@dataclass(frozen=True)
class Installed:
    tmp: Path
    wheel: Path
    venv: Path
    site: Path  # the fresh venv's site-packages
    env: dict[str, str]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Installed:
    """A wheel built from a copy of the checkout, installed into a fresh venv."""
    if importlib.util.find_spec("setuptools.command.bdist_wheel") is None:  # 70.1 and later
        pytest.fail("setuptools here cannot build wheels; run ./scripts/test to install "
                    "the test dependencies")
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    # A copy, so the build writes nothing into the checkout; symlinks stay symlinks, as in git.
    shutil.copytree(ROOT, src, symlinks=True, ignore=_ignore)
    dist = tmp / "dist"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PIP_"))}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    _check([sys.executable, "-c",
            "import sys; from setuptools import build_meta as b; b.build_sdist(sys.argv[1])",
            str(dist)], cwd=src, env=env)
    (sdist,) = dist.glob("llmd-*.tar.gz")
    with tarfile.open(sdist) as tar:
        tar.extractall(tmp / "sdist", filter="data")
    (unpacked,) = (tmp / "sdist").iterdir()
    _check([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
            "--no-index", "-q", "-w", str(dist), str(unpacked)], cwd=tmp, env=env)
    (wheel,) = dist.glob("llmd-*.whl")

    env_dir = tmp / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    _check([sys.executable, "-m", "pip", "--python", str(python), "install", "-q",
            "--no-index", "--no-deps", str(wheel)], cwd=tmp, env=env)
    site = Path(_check([str(python), "-c",
                        "import sysconfig; print(sysconfig.get_path('purelib'))"],
                       cwd=tmp, env=env).stdout.decode().strip())
    ours = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}
    (site / "zz_llmd_test_deps.pth").write_text("".join(f"{p}\n" for p in sorted(ours)))
    return Installed(tmp, wheel, env_dir, site, env)


def _llmctl(installed: Installed, *args: str, **env: str) -> subprocess.CompletedProcess[bytes]:
    run_env = {k: v for k, v in installed.env.items() if not k.startswith("XDG_")}
    run_env = {**run_env, "HOME": str(installed.tmp / "home"), **env}
    return _check([str(installed.venv / "bin" / "llmctl"), *args],
                  cwd=installed.tmp, env=run_env)


def test_the_wheel_holds_every_shipped_file_as_a_file(installed):
    with zipfile.ZipFile(installed.wheel) as whl:
        names = set(whl.namelist())
        for f in files.SHIPPED:
            assert whl.read(f"llmd/share/{f.name}") == (ROOT / f.name).read_bytes(), f.name
    assert not any(n.startswith(("systemd/", "man/", "tests/")) for n in names)


def test_llmd_is_imported_from_the_fresh_venv(installed):
    out = _check([str(installed.venv / "bin" / "python"), "-c",
                  "import llmd, llmctl; from importlib import resources; "
                  "print(llmd.__file__, llmctl.__file__, resources.files('llmd') / 'share')"],
                 cwd=installed.tmp, env=installed.env).stdout.decode().split()
    assert len(out) == 3
    for path in out:
        assert Path(path).is_relative_to(installed.site), path
    assert not (Path(out[2]) / "systemd").is_symlink()  # the files themselves, not links


def test_list_names_the_system_and_user_sets(installed):
    system = json.loads(_llmctl(installed, "files", "list", "--json").stdout)
    user = json.loads(_llmctl(installed, "files", "list", "--user", "--json").stdout)
    assert {e["name"] for e in system} == {f.name for f in files.shipped("system")}
    assert {e["name"] for e in user} == {f.name for f in files.shipped("user")}
    assert {e["name"] for e in system} >= {"systemd/llmd.socket", "systemd/llmd.service",
                                           "man/llmd.8", "config.example.toml"}


@pytest.mark.parametrize("name", ["llmd.socket", "llmd.service", "llmd.sysusers", "llmd.8",
                                  "llmctl.1", "llmd.toml.5", "config.example.toml"])
def test_show_prints_the_repository_file(installed, name):
    (repo,) = [f.name for f in files.shipped("system") if f.name.endswith("/" + name)
               or f.name == name]
    assert _llmctl(installed, "files", "show", name).stdout == (ROOT / repo).read_bytes()


def test_install_puts_byte_identical_files_under_a_root(installed):
    root = installed.tmp / "root"
    done = json.loads(_llmctl(installed, "files", "install", "--root", str(root),
                              "--json").stdout)
    assert {e["name"] for e in done} == {f.name for f in files.shipped("system")}
    for e in done:
        assert Path(e["path"]).is_relative_to(root)
        assert Path(e["path"]).read_bytes() == (ROOT / e["name"]).read_bytes(), e["name"]
    assert (root / "etc/systemd/system/llmd.socket").exists()


def test_install_user_puts_the_user_units_in_the_home(installed):
    home = installed.tmp / "user-home"
    _llmctl(installed, "files", "install", "--user", HOME=str(home))
    unit_dir = home / ".config/systemd/user"
    for name in ("llmd.socket", "llmd.service"):
        assert (unit_dir / name).read_bytes() == (ROOT / "systemd/user" / name).read_bytes()
    assert (home / ".local/share/man/man1/llmctl.1").read_bytes() == \
        (ROOT / "man/llmctl.1").read_bytes()
    shown = _llmctl(installed, "files", "show", "--user", "llmd.socket").stdout
    assert shown == (ROOT / "systemd/user/llmd.socket").read_bytes()
