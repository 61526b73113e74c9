"""Real GGUF models of any size: a tiny llama architecture with a byte vocabulary.

The files are real: llama-server loads them and generates (nonsense). Width, depth and
the tensor type set their size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gguf
import numpy as np

VOCAB = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]


def write(path: Path | str, *, layers: int = 2, width: int = 64, ff: int | None = None,
          heads: int = 4, ctx: int = 2048, dtype: type = np.float32, seed: int = 0,
          chat_template: str | None = None) -> Path:
    """Write a tiny llama GGUF, with `chat_template` if given, and return its path."""
    path = Path(path)
    ff = ff or width * 2
    rng = np.random.default_rng(seed)

    def weights(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(dtype)

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name(path.stem)
    w.add_context_length(ctx)
    w.add_embedding_length(width)
    w.add_block_count(layers)
    w.add_feed_forward_length(ff)
    w.add_head_count(heads)
    w.add_head_count_kv(heads)
    w.add_rope_dimension_count(width // heads)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(gguf.LlamaFileType.ALL_F32 if dtype == np.float32
                    else gguf.LlamaFileType.MOSTLY_F16)
    w.add_tokenizer_model("llama")
    w.add_token_list(VOCAB)
    w.add_token_scores([0.0] * len(VOCAB))
    w.add_token_types([gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
                      + [gguf.TokenType.BYTE] * 256)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    if chat_template is not None:
        w.add_chat_template(chat_template)
    ones = np.ones(width, dtype=np.float32)
    w.add_tensor("token_embd.weight", weights(len(VOCAB), width))
    w.add_tensor("output_norm.weight", ones)
    w.add_tensor("output.weight", weights(len(VOCAB), width))
    for i in range(layers):
        w.add_tensor(f"blk.{i}.attn_norm.weight", ones)
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            w.add_tensor(f"blk.{i}.{name}.weight", weights(width, width))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", ones)
        w.add_tensor(f"blk.{i}.ffn_gate.weight", weights(ff, width))
        w.add_tensor(f"blk.{i}.ffn_up.weight", weights(ff, width))
        w.add_tensor(f"blk.{i}.ffn_down.weight", weights(width, ff))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def reader_shape(path: str) -> dict[str, Any]:
    """The fields llmd.memory.gguf_meta reads, as gguf.GGUFReader reads them (as llmd once did)."""
    from gguf import GGUFReader

    reader = GGUFReader(path)

    def field(key: str, default: int) -> int:
        f = reader.fields.get(key)
        value = f.contents() if f is not None and f.data else None
        value = value[0] if isinstance(value, list) and value else value
        return int(value or default)

    arch = str(reader.fields["general.architecture"].contents())
    embd, heads = field(f"{arch}.embedding_length", 0), field(f"{arch}.attention.head_count", 1)
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    return {"weights": sum(int(t.n_bytes) for t in reader.tensors),
            "layers": field(f"{arch}.block_count", 0), "embd": embd,
            "kv_heads": field(f"{arch}.attention.head_count_kv", heads),
            "key_length": field(f"{arch}.attention.key_length", embd // heads),
            "value_length": field(f"{arch}.attention.value_length", embd // heads),
            "n_ctx_train": field(f"{arch}.context_length", 4096),
            "n_vocab": len(tokens.data) if tokens is not None else 32000}
