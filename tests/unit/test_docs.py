"""The man pages render without warnings and document every key, option and command."""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
import tomllib
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


README = MAN.parent / "README.md"
_NOT_ROUTES = ("/etc/", "/proc", "/run/", "/usr/", "/var/", "/tmp/")


def test_every_route_the_readme_names_is_served():
    from llmd.api.router import KNOWN_PATHS
    text = README.read_text()
    routes = set(re.findall(r"`(?:(?:GET|POST|DELETE|OPTIONS) )?(/[A-Za-z0-9_/{}.:\-]+)", text))
    routes = {r for r in routes if not r.startswith(_NOT_ROUTES)}
    assert "/v1/chat/completions" in routes and "/models/sse" in routes
    per_model = {"/v1/models/{id}", "/models/{id}"}  # GET, by name: not a fixed path
    missing = sorted(r for r in routes if r not in KNOWN_PATHS and r not in per_model)
    assert not missing, f"README names routes the router does not serve: {missing}"


def test_every_config_key_in_the_readme_exists():
    fields = {f.name for f in dataclasses.fields(config.Config)}
    model_fields = {f.name for f in dataclasses.fields(config.ModelConfig)}
    text = README.read_text()
    for block in re.findall(r"```toml\n(.*?)```", text, re.S):
        data = tomllib.loads(block)
        for key, value in data.items():
            if key == "models":
                for model in value.values():
                    assert set(model) <= model_fields, f"unknown model keys {set(model)}"
            else:
                assert key in fields, f"README names config key {key!r}, which llmd lacks"
    for key in set(re.findall(r"`([a-z_]+) = ", text)):
        assert key in fields | model_fields, f"README names config key {key!r}"


def test_every_llmctl_verb_the_readme_names_exists():
    verbs = set(re.findall(r"`(?:\.venv/bin/)?llmctl ([a-z-]+)", README.read_text()))
    assert {"load", "unload", "ps", "files"} <= verbs
    assert verbs <= set(llmctl_main.commands), verbs - set(llmctl_main.commands)


def test_the_readme_quotes_the_set_up_times_measured_on_fresh_machines():
    measured = (MAN.parent / "bench" / "setup.md").read_text()
    build = re.search(r"- build: (\d+ to \d+) minutes", measured).group(1)
    suite = re.search(r"- `./scripts/test`, the first time: (\d+ to \d+) minutes", measured)
    head = " ".join(README.read_text().split("---")[0].split())
    assert f"takes {build} minutes on 2 cores" in head
    assert f"{suite.group(1)} minutes the first time" in head
