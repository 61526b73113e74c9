"""Scanning the models directory by llama.cpp router's rules."""

from __future__ import annotations

from llmd.models import catalog
from llmd.config import Config, ModelConfig


def touch(path, content=b"GGUF"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)


def test_top_level_files_are_models_named_after_the_file(tmp_path):
    touch(tmp_path / "a.gguf")
    touch(tmp_path / "b.GGUF.txt")
    touch(tmp_path / ".hidden.gguf")
    touch(tmp_path / "mmproj-a.gguf")
    found = catalog.scan_models_dir(str(tmp_path))
    assert found == {"a": (str(tmp_path / "a.gguf"), "")}


def test_subdirectory_is_one_model_with_first_shard_and_mmproj(tmp_path):
    d = tmp_path / "big"
    touch(d / "big-00002-of-00002.gguf")
    touch(d / "big-00001-of-00002.gguf")
    touch(d / "mmproj-big-f16.gguf")
    touch(d / "notes.txt")
    found = catalog.scan_models_dir(str(tmp_path))
    assert found == {"big": (str(d / "big-00001-of-00002.gguf"), str(d / "mmproj-big-f16.gguf"))}


def test_later_top_level_shards_are_not_models(tmp_path):
    touch(tmp_path / "m-00001-of-00002.gguf")
    touch(tmp_path / "m-00002-of-00002.gguf")
    assert list(catalog.scan_models_dir(str(tmp_path))) == ["m-00001-of-00002"]


def test_empty_subdirectory_is_ignored(tmp_path):
    (tmp_path / "empty").mkdir()
    touch(tmp_path / "only-mmproj" / "mmproj.gguf")
    assert catalog.scan_models_dir(str(tmp_path)) == {}


def test_config_models_join_scanned_ones_with_default_args(tmp_path):
    touch(tmp_path / "a.gguf")
    config = Config(models_dir=str(tmp_path), args=("--ctx-size", "512"), models=(
        ModelConfig(name="g", path="a.gguf", args=("--temp", "0"), aliases=("default",)),))
    specs = catalog.build(config)
    assert set(specs) == {"a", "g"}
    assert specs["g"].path == str(tmp_path / "a.gguf")
    assert specs["g"].child_args() == ("--model", str(tmp_path / "a.gguf"), "--alias", "g",
                                       "--ctx-size", "512", "--temp", "0")
    assert catalog.names(specs)["default"] == "g"


def test_mmproj_is_passed_to_the_child(tmp_path):
    touch(tmp_path / "v" / "v.gguf")
    touch(tmp_path / "v" / "mmproj.gguf")
    spec = catalog.build(Config(models_dir=str(tmp_path), args=()))["v"]
    assert spec.child_args()[-2:] == ("--mmproj", str(tmp_path / "v" / "mmproj.gguf"))
