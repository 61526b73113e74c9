"""The man pages render without warnings and document every key, option and command."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from pathlib import Path

import click
import pytest

from llmctl.cli import main as llmctl_main
from llmd import config
from llmd.__main__ import main as llmd_main

MAN = Path(__file__).resolve().parents[2] / "man"
PAGES = ["llmd.8", "llmctl.1", "llmd.toml.5"]


@pytest.mark.skipif(not shutil.which("groff"), reason="groff not installed")
@pytest.mark.parametrize("page", PAGES)
def test_man_page_renders_without_warnings(page):
    result = subprocess.run(["groff", "-ww", "-z", "-man", str(MAN / page)],
                            capture_output=True, text=True)
    assert result.returncode == 0 and result.stderr == ""


def test_every_config_key_is_documented():
    page = (MAN / "llmd.toml.5").read_text()
    for cls in (config.Config, config.ModelConfig):
        for f in dataclasses.fields(cls):
            if f.name in ("source", "models", "name") or f.metadata.get("from_env"):
                continue
            assert f'.B "{f.name} = ' in page, f"llmd.toml(5) does not document {f.name}"


def test_every_llmctl_command_and_option_is_documented():
    page = (MAN / "llmctl.1").read_text().replace("\\-", "-")
    for name, command in llmctl_main.commands.items():
        assert f".BR {name}" in page or f".B {name}" in page, f"llmctl(1) lacks {name}"
        for param in command.params:
            for opt in param.opts if isinstance(param, click.Option) else []:
                assert opt in page, f"llmctl(1) lacks {name} {opt}"
    assert "--socket" in page and "LLMD_SOCKET" in page


def test_every_llmd_option_is_documented():
    page = (MAN / "llmd.8").read_text().replace("\\-", "-")
    for param in llmd_main.params:
        for opt in param.opts:
            assert opt in page, f"llmd(8) lacks {opt}"
    for word in ("SIGTERM", "SIGHUP", "EXIT STATUS", "LISTEN_FDS", "NOTIFY_SOCKET"):
        assert word in page
