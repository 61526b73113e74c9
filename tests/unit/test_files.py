"""`llmctl files`: the shipped units, man pages and example configuration, read as package
data, printed and installed byte for byte, without a daemon."""

from __future__ import annotations

import json
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

import pytest
from click.testing import CliRunner

from llmctl import files
from llmctl.cli import main

ROOT = Path(__file__).resolve().parents[2]


def _walk(node: Traversable, prefix: str = "") -> list[str]:
    out = []
    for child in node.iterdir():
        name = f"{prefix}{child.name}"
        out += _walk(child, name + "/") if child.is_dir() else [name]
    return out


def _run(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(main, ["--socket", "/nonexistent/control.sock", *args], env=env)


def test_every_file_in_the_package_data_has_a_destination():
    on_disk = sorted(_walk(resources.files("llmd") / "share"))
    assert on_disk == sorted(f.name for f in files.SHIPPED)


def test_package_data_is_the_repository_files():
    for f in files.SHIPPED:
        assert files.read(f.name) == (ROOT / f.name).read_bytes(), f.name


@pytest.mark.parametrize(("args", "name"), [
    (["llmd.socket"], "systemd/llmd.socket"),
    (["--user", "llmd.socket"], "systemd/user/llmd.socket"),
    (["systemd/user/llmd.service"], "systemd/user/llmd.service"),
    (["llmd.8"], "man/llmd.8"),
    (["config.example.toml"], "config.example.toml"),
])
def test_show_prints_a_file_byte_for_byte(args, name):
    result = _run("files", "show", *args)
    assert result.exit_code == 0, result.output
    assert result.stdout_bytes == (ROOT / name).read_bytes()


def test_show_of_an_unknown_file_is_one_line_and_exit_1():
    result = _run("files", "show", "llmd.sysusers", "--user")
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1 and "no shipped file llmd.sysusers" in result.stderr


def test_list_names_each_file_and_its_destination():
    result = _run("files", "list", "--user", "--json",
                  env={"HOME": "/home/u", "XDG_CONFIG_HOME": "", "XDG_DATA_HOME": "/d"})
    assert result.exit_code == 0, result.output
    listed = {e["name"]: e["path"] for e in json.loads(result.stdout)}
    assert listed["systemd/user/llmd.socket"] == "/home/u/.config/systemd/user/llmd.socket"
    assert listed["man/llmctl.1"] == "/d/man/man1/llmctl.1"
    assert "systemd/llmd.socket" not in listed


def test_install_under_a_root_copies_the_system_set(tmp_path):
    result = _run("files", "install", "--root", str(tmp_path))
    assert result.exit_code == 0, result.output
    expect = {"etc/systemd/system/llmd.socket": "systemd/llmd.socket",
              "etc/systemd/system/llmd.service": "systemd/llmd.service",
              "etc/sysusers.d/llmd.conf": "systemd/llmd.sysusers",
              "usr/local/share/man/man8/llmd.8": "man/llmd.8",
              "usr/local/share/man/man1/llmctl.1": "man/llmctl.1",
              "usr/local/share/man/man5/llmd.toml.5": "man/llmd.toml.5",
              "etc/llmd/config.example.toml": "config.example.toml"}
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert written == sorted(expect)
    for dest, name in expect.items():
        assert (tmp_path / dest).read_bytes() == (ROOT / name).read_bytes()
        assert (tmp_path / dest).stat().st_mode & 0o777 == 0o644


def test_install_again_changes_nothing(tmp_path):
    _run("files", "install", "--root", str(tmp_path))
    result = _run("files", "install", "--root", str(tmp_path), "--json")
    assert {e["action"] for e in json.loads(result.stdout)} == {"unchanged"}


def test_a_changed_file_is_replaced_only_with_force(tmp_path):
    _run("files", "install", "--root", str(tmp_path))
    unit = tmp_path / "etc/systemd/system/llmd.service"
    unit.write_text("edited\n")
    (tmp_path / "etc/llmd/config.example.toml").unlink()
    result = _run("files", "install", "--root", str(tmp_path))
    assert result.exit_code == 1 and "--force" in result.stderr
    assert unit.read_text() == "edited\n"
    assert not (tmp_path / "etc/llmd/config.example.toml").exists()  # nothing was written
    result = _run("files", "install", "--root", str(tmp_path), "--force")
    assert result.exit_code == 0, result.output
    assert unit.read_bytes() == (ROOT / "systemd/llmd.service").read_bytes()


def test_install_user_follows_xdg(tmp_path):
    env = {"HOME": str(tmp_path / "home"), "XDG_CONFIG_HOME": str(tmp_path / "cfg"),
           "XDG_DATA_HOME": ""}
    result = _run("files", "install", "--user", env=env)
    assert result.exit_code == 0, result.output
    assert ((tmp_path / "cfg/systemd/user/llmd.socket").read_bytes()
            == (ROOT / "systemd/user/llmd.socket").read_bytes())
    assert (tmp_path / "cfg/llmd/config.example.toml").exists()
    assert (tmp_path / "home/.local/share/man/man8/llmd.8").exists()
    # The user unit runs %h/.local/bin/llmd, absent here: a note says so and where llmd is.
    assert "is not there" in result.stderr and "systemctl --user" in result.stderr


def test_root_is_for_the_system_set_only(tmp_path):
    result = _run("files", "install", "--user", "--root", str(tmp_path))
    assert result.exit_code == 1 and result.stderr.count("\n") == 1


def test_exec_start_expands_the_home_specifier():
    unit = b"[Service]\nExecStart=%h/.local/bin/llmd --log-level debug\n"
    assert files.exec_start(unit, Path("/home/u")) == Path("/home/u/.local/bin/llmd")
    assert files.exec_start(b"[Service]\n", Path("/")) is None
