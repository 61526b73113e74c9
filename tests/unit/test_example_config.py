"""config.example.toml is loaded by the real parser and documents every key."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

from llmd import config

EXAMPLE = Path(__file__).resolve().parents[2] / "config.example.toml"


def test_example_config_parses():
    data = tomllib.loads(EXAMPLE.read_text())
    parsed = config.parse(data, str(EXAMPLE))
    assert parsed.models[0].name == "gemma"


def test_example_config_documents_every_key_with_its_default():
    data = tomllib.loads(EXAMPLE.read_text())
    defaults = config.Config()
    for f in dataclasses.fields(config.Config):
        if f.name in ("source", "models") or f.metadata.get("from_env"):
            continue
        assert f.name in data, f"config.example.toml does not document {f.name}"
        value = config.parse({f.name: data[f.name]}).__getattribute__(f.name)
        assert value == getattr(defaults, f.name), f"{f.name}: example is not the default"
    model_keys = {f.name for f in dataclasses.fields(config.ModelConfig)} - {"name", "hf", "file"}
    assert model_keys <= set(data["models"]["gemma"])
