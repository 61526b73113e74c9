"""Config parsing: every mistake is one line naming the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmd.models import catalog
from llmd import config
from llmd.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "models").mkdir(exist_ok=True)
    path = tmp_path / "llmd.toml"
    path.write_text(f'models_dir = "{tmp_path / "models"}"\n' + text)
    return path


def load(path: Path) -> config.Config:
    return config.load(path, {}, env={"PATH": ""})


def test_defaults_match_the_design():
    c = config.Config()
    assert c.listen == "127.0.0.1:8080" and c.models_max == 4 and c.autoload is True
    assert c.control_socket_mode == 0o660 and c.stop_timeout == 10


def test_full_file_is_read(tmp_path):
    path = write(tmp_path, '''
listen = "127.0.0.1:9000"
control_socket_mode = "0600"
args = ["--ctx-size", "512"]
models_max = 1
api_keys = ["k"]
[models.g]
path = "g.gguf"
args = ["--temp", "0"]
aliases = ["default"]
tags = ["chat"]
''')
    c = load(path)
    assert c.listen == "127.0.0.1:9000" and c.control_socket_mode == 0o600
    assert c.models_max == 1 and c.api_keys == ("k",)
    (m,) = c.models
    assert m.name == "g" and m.aliases == ("default",) and m.args == ("--temp", "0")


@pytest.mark.parametrize("text, key, problem", [
    ("models_max = 'four'", "models_max", "expected int"),
    ("autoload = 1", "autoload", "expected bool"),
    ("stop_timeout = true", "stop_timeout", "got bool"),
    ("colour = 'red'", "colour", "unknown key"),
    ("args = '--ctx-size 5'", "args", "list of strings"),
    ("listen = 'nowhere'", "listen", "HOST:PORT"),
    ("models_max = -1", "models_max", "negative"),
    ("control_socket_mode = '999'", "control_socket_mode", "octal"),
    ("[models.x]\npath = 'x.gguf'\nflavour = 1", "models.x.flavour", "unknown key"),
    ("[models.x]\naliases = ['a']", "models.x", "needs 'path' or 'hf'"),
])
def test_bad_values_name_file_and_key(tmp_path, text, key, problem):
    path = write(tmp_path, text + "\n")
    with pytest.raises(ConfigError) as info:
        load(path)
    message = str(info.value)
    assert message.startswith(f"{path}: {key}: ") and problem in message
    assert "\n" not in message


def test_bad_toml_names_the_file(tmp_path):
    path = write(tmp_path, "listen = \n")
    with pytest.raises(ConfigError, match=f"^{path}: invalid TOML"):
        load(path)


def test_missing_models_dir_is_an_error(tmp_path):
    path = tmp_path / "llmd.toml"
    path.write_text(f'models_dir = "{tmp_path / "nope"}"\n')
    with pytest.raises(ConfigError, match="models_dir: models directory .* does not exist"):
        load(path)


def test_command_line_overrides_the_file(tmp_path):
    path = write(tmp_path, 'listen = "127.0.0.1:9000"\n')
    c = config.load(path, {"listen": "127.0.0.1:9001", "models_dir": None}, env={"PATH": ""})
    assert c.listen == "127.0.0.1:9001"


def test_alias_clashing_with_a_model_name_is_an_error(tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "other.gguf").write_bytes(b"x")
    path = write(tmp_path, "[models.a]\npath = 'a.gguf'\naliases = ['other']\n")
    with pytest.raises(ConfigError, match="models.a.aliases: alias 'other' clashes"):
        catalog.build(load(path))


def test_llama_server_resolution_order(tmp_path):
    binary = tmp_path / "llama-server"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    assert config.resolve_llama_server("/opt/x", {}) == "/opt/x"
    assert config.resolve_llama_server("", {"LLMD_LLAMA_SERVER": "/opt/y"}) == "/opt/y"
    assert config.resolve_llama_server("", {"PATH": str(tmp_path)}) == str(binary)
    assert config.resolve_llama_server("", {"PATH": ""}).endswith("llama-server")


def test_directories_follow_systemd_then_root_or_xdg(tmp_path, monkeypatch):
    path = write(tmp_path, "")
    env = {"PATH": "", "STATE_DIRECTORY": "/s", "CACHE_DIRECTORY": "/c:/c2",
           "RUNTIME_DIRECTORY": "/r"}
    c = config.load(path, {}, env=env)
    assert (c.state_dir, c.cache_dir, c.control_socket) == ("/s", "/c", "/r/control.sock")
    monkeypatch.setattr(config.os, "geteuid", lambda: 1000)
    user = config.load(path, {}, env={"PATH": "", "HOME": "/home/u", "XDG_RUNTIME_DIR": "/run/user/1000"})
    assert user.state_dir == "/home/u/.local/state/llmd"
    assert user.cache_dir == "/home/u/.cache/llmd"
    assert user.control_socket == "/run/user/1000/llmd/control.sock"
    monkeypatch.setattr(config.os, "geteuid", lambda: 0)
    root = config.load(path, {}, env={"PATH": ""})
    assert (root.state_dir, root.cache_dir, root.control_socket) == (
        "/var/lib/llmd", "/var/cache/llmd", "/run/llmd/control.sock")
