"""The chat template llmd picks for a GGUF without one, and when it picks none."""

from __future__ import annotations

import logging
import os
import struct
from pathlib import Path

import gguf
import pytest

from llmctl import render
from llmd.models.state import State
from llmd.children import chat_template
from llmd.memory import gguf_meta
from llmd.models.catalog import ModelSpec
from llmd.models.model import Model
from llmd.models.prepare import launch_spec
from tests.fakes import tiny_gguf

LLMD_ARGS = ("--no-jinja", "--chat-template", "rwkv-world", "--reverse-prompt", "User:")


def header_only(path: Path, arch: str, template: str | None = None) -> Path:
    """A GGUF of `arch` with a vocabulary and no tensors: all that the template reader needs."""
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(2)
    w.add_token_list([f"t{i}" for i in range(1000)])
    if template is not None:
        w.add_chat_template(template)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.close()
    return path


def _kv_string(key: str, value: bytes) -> bytes:
    return (struct.pack("<Q", len(key)) + key.encode() + struct.pack("<IQ", 8, len(value))
            + value)


@pytest.fixture(autouse=True)
def fresh_cache(monkeypatch):
    monkeypatch.setattr(chat_template, "_read", {})
    monkeypatch.setattr(chat_template, "_told", set())


def test_a_gguf_without_a_template_reads_as_having_none(tmp_path):
    path = tiny_gguf.write(tmp_path / "m.gguf")
    assert gguf_meta.read_chat(str(path)) == ("llama", False)


def test_a_gguf_with_a_template_reads_as_having_one(tmp_path):
    path = tiny_gguf.write(tmp_path / "m.gguf", chat_template="{{ messages[0].content }}")
    assert gguf_meta.read_chat(str(path)) == ("llama", True)
    # The estimate reads the same header and is not thrown by the template.
    assert gguf_meta.read_shape(str(path)) == tiny_gguf.reader_shape(str(path))


def test_the_template_is_stepped_over_not_decoded(tmp_path):
    path = tmp_path / "m.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 2)
                     + _kv_string("general.architecture", b"gemma3")
                     + _kv_string("tokenizer.chat_template", b"\xff\xfe" * 50_000))
    assert gguf_meta.read_chat(str(path)) == ("gemma3", True)


def test_an_empty_template_is_none(tmp_path):
    path = tmp_path / "m.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 2)
                     + _kv_string("general.architecture", b"gemma3")
                     + _kv_string("tokenizer.chat_template", b""))
    assert gguf_meta.read_chat(str(path)) == ("gemma3", False)


def test_a_template_cut_short_is_not_a_readable_gguf(tmp_path):
    path = tmp_path / "m.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 1)
                     + _kv_string("tokenizer.chat_template", b"x" * 100)[:-10])
    with pytest.raises(gguf_meta.GGUFError, match="not a readable GGUF"):
        gguf_meta.read_chat(str(path))


def test_gemma3_without_a_template_gets_a_plain_transcript_ending_at_the_next_user_turn():
    chosen = chat_template.decide(["--ctx-size", "1024"], ("gemma3", False))
    assert chosen.source == "llmd" and chosen.name == "rwkv-world"
    assert chosen.args == LLMD_ARGS
    assert chosen.note.startswith("chosen by llmd: the GGUF has none")


def test_a_gguf_with_its_own_template_keeps_it():
    chosen = chat_template.decide([], ("gemma3", True))
    assert (chosen.source, chosen.args) == ("gguf", ())


def test_an_architecture_not_in_the_table_gets_llama_servers_chatml():
    for arch in ("llama", "qwen3", ""):
        chosen = chat_template.decide([], (arch, False))
        assert (chosen.name, chosen.source, chosen.args) == ("chatml", "llama-server", ())


def test_an_unreadable_gguf_gets_nothing_from_llmd():
    chosen = chat_template.decide([], None)
    assert (chosen.source, chosen.args) == ("unknown", ())


@pytest.mark.parametrize("args, name", [
    (["--chat-template", "chatml"], "chatml"),
    (["--chat-template=gemma"], "gemma"),
    (["--chat-template-file", "/t.jinja", "-c", "512"], "/t.jinja"),
    (["--jinja"], None),
    (["--no-jinja"], None),
    (["--chat-template", "gemma", "--no-jinja", "--chat-template", "chatml"], "chatml"),
])
def test_the_models_own_chat_arguments_override_llmds_choice(args, name):
    chosen = chat_template.decide(args, ("gemma3", False))
    assert (chosen.source, chosen.name, chosen.args) == ("args", name, ())


def test_look_alike_arguments_choose_nothing():
    assert chat_template.own_choice(["--chat-template-kwargs", "{}", "--jinja-x"]) is None


def test_the_file_is_read_once_per_identity(tmp_path, monkeypatch):
    path = header_only(tmp_path / "g.gguf", "gemma3")
    calls = []
    real = gguf_meta.read_chat
    monkeypatch.setattr(gguf_meta, "read_chat", lambda p: calls.append(p) or real(p))
    for _ in range(3):
        assert chat_template.read(str(path)) == ("gemma3", False)
    assert len(calls) == 1
    header_only(path, "gemma3", template="{{ x }}")  # replaced: another size and mtime
    os.utime(path, ns=(1, 1))
    assert chat_template.read(str(path)) == ("gemma3", True)
    assert len(calls) == 2


def test_a_missing_file_is_not_remembered_as_unreadable(tmp_path):
    path = tmp_path / "later.gguf"
    assert chat_template.read(str(path)) is None
    header_only(path, "gemma3")
    assert chat_template.read(str(path)) == ("gemma3", False)


def _model(path: Path, args: tuple[str, ...] = ("--ctx-size", "1024"), **books) -> Model:
    return Model(spec=ModelSpec(name="g", path=str(path), args=args), **books)


def test_launch_spec_adds_the_template_after_llmds_other_arguments(tmp_path):
    path = header_only(tmp_path / "g.gguf", "gemma3")
    model = _model(path, need={"host": 700}, need_source="llama-fit-params")
    model.cache_ram = 256
    assert launch_spec(model).args == ("--ctx-size", "1024", "--fit", "off",
                                       "--cache-ram", "256", *LLMD_ARGS)


def test_launch_spec_adds_no_template_to_a_model_that_sets_one(tmp_path):
    path = header_only(tmp_path / "g.gguf", "gemma3")
    model = _model(path, args=("--chat-template", "chatml"))
    assert launch_spec(model) is model.spec


def test_launch_spec_adds_no_template_to_a_gguf_that_has_one(tmp_path):
    path = header_only(tmp_path / "g.gguf", "gemma3", template="{{ x }}")
    model = _model(path)
    assert launch_spec(model) is model.spec


def test_the_choice_is_logged_once(tmp_path, caplog):
    path = header_only(tmp_path / "g.gguf", "gemma3")
    model = _model(path)
    with caplog.at_level(logging.INFO, logger="llmd.chat_template"):
        for _ in range(3):
            launch_spec(model)
    (record,) = caplog.records
    assert record.levelno == logging.INFO
    assert record.getMessage().startswith(
        "g: the GGUF has no chat template; using llama.cpp's built-in 'rwkv-world'")
    assert "architecture gemma3" in record.getMessage()
    assert "set --chat-template in its args" in record.getMessage()


def test_llmctl_status_shows_who_chose_the_template(tmp_path):
    from llmd.api import status

    path = header_only(tmp_path / "g.gguf", "gemma3")
    assert status.describe(_model(path), "unloaded", 0.0)["chat_template"]["source"] == \
        "unknown"  # listing a model that has not loaded reads no file
    loading = _model(path)
    loading.state = State.LOADING
    described = status.describe(loading, "loading", 0.0)
    assert described["chat_template"]["source"] == "llmd"
    assert described["status"]["args"][-len(LLMD_ARGS):] == list(LLMD_ARGS)
    text = render.model(described)
    assert "  template: rwkv-world (chosen by llmd: the GGUF has none;" in text

    own = status.describe(_model(path, args=("--chat-template", "chatml")), "unloaded", 0.0)
    assert "  template: chatml (set by the model's args (--chat-template))" in render.model(own)
