"""The GGUF header reader behind the fallback memory estimate."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import gguf
import numpy as np
import pytest

from llmd.memory import gguf_meta
from tests.fakes import tiny_gguf
from tests.fakes.tiny_gguf import reader_shape


def _gqa_model(path: Path, *, alignment: int = 32) -> Path:
    """A GGUF of another architecture with grouped KV heads and explicit head sizes."""
    w = gguf.GGUFWriter(str(path), "qwen3")
    w.add_custom_alignment(alignment)
    w.add_block_count(5)
    w.add_embedding_length(48)
    w.add_head_count(8)
    w.add_head_count_kv(2)
    w.add_key_length(40)
    w.add_value_length(24)
    w.add_context_length(40960)
    w.add_token_list([f"t{i}" for i in range(1000)])
    # 7 x 3 f16 = 42 bytes: not a multiple of the alignment, so padding follows it.
    w.add_tensor("a.weight", np.ones((7, 3), dtype=np.float16))
    w.add_tensor("b.weight", np.ones((16,), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_tiny_gguf_fields_match_what_was_written(tmp_path):
    path = tiny_gguf.write(tmp_path / "m.gguf", layers=3, width=96, heads=6, ctx=512)
    shape = gguf_meta.read_shape(str(path))
    vocab, width, ff, layers = len(tiny_gguf.VOCAB), 96, 192, 3
    elements = 2 * vocab * width + width + layers * (2 * width + 4 * width * width
                                                     + 3 * ff * width)
    n_tensors = 3 + 9 * layers
    assert elements * 4 <= shape.pop("weights") < elements * 4 + 32 * n_tensors
    assert shape == {"layers": 3, "embd": 96, "kv_heads": 6, "key_length": 16,
                     "value_length": 16, "n_ctx_train": 512, "n_vocab": vocab}


def test_explicit_head_sizes_and_kv_heads_of_another_architecture_are_read(tmp_path):
    shape = gguf_meta.read_shape(str(_gqa_model(tmp_path / "q.gguf")))
    assert {k: v for k, v in shape.items() if k != "weights"} == {
        "layers": 5, "embd": 48, "kv_heads": 2, "key_length": 40, "value_length": 24,
        "n_ctx_train": 40960, "n_vocab": 1000}


@pytest.mark.parametrize("alignment", [32, 64, 256])
def test_weights_are_the_data_region_at_the_files_alignment(tmp_path, alignment):
    path = _gqa_model(tmp_path / "q.gguf", alignment=alignment)
    reader = gguf.GGUFReader(str(path))
    assert gguf_meta.read_shape(str(path))["weights"] == (
        path.stat().st_size - reader.data_offset)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_fields_agree_with_gguf_reader(tmp_path, dtype):
    path = tiny_gguf.write(tmp_path / "m.gguf", layers=2, width=64, dtype=dtype)
    assert gguf_meta.read_shape(str(path)) == reader_shape(str(path))


def test_padding_between_tensors_counts_as_weights(tmp_path):
    path = _gqa_model(tmp_path / "q.gguf")
    # 42 bytes of the f16 tensor padded to 64, then 64 bytes of f32 (already aligned).
    assert reader_shape(str(path))["weights"] == 42 + 64
    assert gguf_meta.read_shape(str(path))["weights"] == 64 + 64


def _header_end(path: Path) -> int:
    return gguf.GGUFReader(str(path)).data_offset


@pytest.mark.parametrize("where", ["magic", "counts", "vocabulary", "tensor table", "data"])
def test_a_truncated_file_is_not_a_readable_gguf(tmp_path, where):
    path = tiny_gguf.write(tmp_path / "m.gguf")
    start = _header_end(path)
    cut = {"magic": 3, "counts": 20, "vocabulary": 1500, "tensor table": start - 40,
           "data": start + 1000}[where]
    path.write_bytes(path.read_bytes()[:cut])
    with pytest.raises(gguf_meta.GGUFError, match="not a readable GGUF"):
        gguf_meta.read_shape(str(path))


@pytest.mark.parametrize("version", [1, 4, 0x03000000])
def test_a_version_other_than_2_or_3_is_not_a_readable_gguf(tmp_path, version):
    path = tiny_gguf.write(tmp_path / "m.gguf")
    data = bytearray(path.read_bytes())
    data[4:8] = struct.pack("<I", version)
    path.write_bytes(bytes(data))
    with pytest.raises(gguf_meta.GGUFError, match=f"not a readable GGUF.*version {version}"):
        gguf_meta.read_shape(str(path))


def test_version_2_is_read(tmp_path):
    path = tiny_gguf.write(tmp_path / "m.gguf")
    data = bytearray(path.read_bytes())
    data[4:8] = struct.pack("<I", 2)  # v2 and v3 differ only in allowing big-endian files
    path.write_bytes(bytes(data))
    assert gguf_meta.read_shape(str(path))["n_vocab"] == len(tiny_gguf.VOCAB)


def test_a_big_endian_file_is_not_a_readable_gguf(tmp_path):
    w = gguf.GGUFWriter(str(tmp_path / "be.gguf"), "llama", endianess=gguf.GGUFEndian.BIG)
    w.add_block_count(1)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.close()
    with pytest.raises(gguf_meta.GGUFError, match="not a readable GGUF"):
        gguf_meta.read_shape(str(tmp_path / "be.gguf"))


@pytest.mark.parametrize("header", [
    b"GGUF" + struct.pack("<IQQ", 3, 0, 1 << 62),  # more KV pairs than bytes
    b"GGUF" + struct.pack("<IQQ", 3, 1 << 62, 0),  # more tensors than bytes
    b"GGUF" + struct.pack("<IQQQ", 3, 0, 1, 1 << 63) + b"k",  # a key longer than the file
    b"GGUF" + struct.pack("<IQQQ", 3, 0, 1, 1) + b"k" + struct.pack("<I", 99),  # no such type
    b"GGUF" + struct.pack("<IQQQ", 3, 0, 1, 1) + b"k" + struct.pack("<IIQ", 9, 8, 1 << 60),
    b"GGUF" + struct.pack("<IQQQ", 3, 0, 1, 2) + b"\xff\xfe" + struct.pack("<IB", 0, 1),
], ids=["kv count", "tensor count", "key length", "value type", "array count", "not utf-8"])
def test_a_hostile_header_is_not_a_readable_gguf(tmp_path, header):
    path = tmp_path / "bad.gguf"
    path.write_bytes(header + bytes(64))
    with pytest.raises(gguf_meta.GGUFError, match="not a readable GGUF"):
        gguf_meta.read_shape(str(path))


def test_a_missing_file_is_not_a_readable_gguf(tmp_path):
    with pytest.raises(gguf_meta.GGUFError, match="not a readable GGUF"):
        gguf_meta.read_shape(str(tmp_path / "absent.gguf"))


def _bytes_read() -> int:
    with open("/proc/self/io") as f:
        return int(next(line for line in f if line.startswith("rchar:")).split()[1])


@pytest.mark.skipif(not os.path.exists("/proc/self/io"), reason="needs Linux /proc/self/io")
def test_the_tensor_data_is_never_read(tmp_path):
    path = tiny_gguf.write(tmp_path / "m.gguf")
    start = _header_end(path)
    huge = 16 << 30  # a sparse 16 GiB tensor data region: reading it would take minutes
    os.truncate(path, huge)
    before = _bytes_read()
    shape = gguf_meta.read_shape(str(path))
    # /proc/self/io counts every read(2) of this process; the reader reads in 1 MiB chunks.
    assert _bytes_read() - before < start + (2 << 20)
    assert shape["weights"] == huge - start


def test_estimate_of_a_tiny_gguf_is_its_weights_plus_cache_and_buffers(tmp_path):
    path = tiny_gguf.write(tmp_path / "m.gguf", layers=2, width=64, ctx=2048)
    mib = gguf_meta.estimate_mib(str(path), ["--ctx-size", "1024"])["host"]
    assert mib == gguf_meta.estimate_from_shape(gguf_meta.read_shape(str(path)),
                                                ["--ctx-size", "1024"])
    assert 32 < mib < 64
