"""A model's memory need from its GGUF metadata, for when llama-fit-params can't say."""

from __future__ import annotations

from typing import Any, Sequence

MIB = 1 << 20
# Bytes per element of the KV cache types llama-server accepts for --cache-type-k/-v.
_CACHE_BYTES = {"f32": 4.0, "f16": 2.0, "bf16": 2.0, "q8_0": 34 / 32, "q5_1": 24 / 32,
                "q5_0": 22 / 32, "q4_1": 20 / 32, "q4_0": 18 / 32, "iq4_nl": 18 / 32}
_OVERHEAD_MIB = 32  # the runtime's own buffers, measured as a few tens of MiB


class GGUFError(Exception):
    """The file is not a GGUF model llmd can read."""


def _arg(args: Sequence[str], names: tuple[str, ...], default: str) -> str:
    value = default
    for i, arg in enumerate(args):
        if arg in names and i + 1 < len(args):
            value = args[i + 1]
        for name in names:
            if arg.startswith(name + "="):
                value = arg.split("=", 1)[1]
    return value


def _field(reader: Any, key: str, default: Any = None) -> Any:
    field = reader.fields.get(key)
    if field is None or not field.data:
        return default
    value = field.contents()
    return value[0] if isinstance(value, list) and value else value


def read_shape(path: str) -> dict[str, Any]:
    """The numbers the estimate needs, read from the file's header and tensor table."""
    try:
        from gguf import GGUFReader

        reader = GGUFReader(path)
    except Exception as exc:
        raise GGUFError(f"{path}: not a readable GGUF file ({exc.__class__.__name__}: {exc})")
    arch = _field(reader, "general.architecture", "llama")
    layers = int(_field(reader, f"{arch}.block_count", 0))
    embd = int(_field(reader, f"{arch}.embedding_length", 0))
    heads = int(_field(reader, f"{arch}.attention.head_count", 1) or 1)
    kv_heads = int(_field(reader, f"{arch}.attention.head_count_kv", heads) or heads)
    head_dim = embd // heads if heads else 0
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    return {
        "weights": sum(int(t.n_bytes) for t in reader.tensors),
        "layers": layers,
        "embd": embd,
        "kv_heads": kv_heads,
        "key_length": int(_field(reader, f"{arch}.attention.key_length", head_dim) or head_dim),
        "value_length": int(_field(reader, f"{arch}.attention.value_length", head_dim)
                            or head_dim),
        "n_ctx_train": int(_field(reader, f"{arch}.context_length", 4096) or 4096),
        "n_vocab": len(tokens.data) if tokens is not None else 32000,
    }


def estimate_from_shape(shape: dict[str, Any], args: Sequence[str]) -> int:
    """MiB for weights + KV cache + compute buffers, given the child's arguments."""
    n_ctx = int(_arg(args, ("--ctx-size", "-c"), "0")) or shape["n_ctx_train"]
    n_ubatch = int(_arg(args, ("--ubatch-size", "-ub"), "512"))
    k_bytes = _CACHE_BYTES.get(_arg(args, ("--cache-type-k", "-ctk"), "f16"), 2.0)
    v_bytes = _CACHE_BYTES.get(_arg(args, ("--cache-type-v", "-ctv"), "f16"), 2.0)
    kv = n_ctx * shape["layers"] * shape["kv_heads"] * (
        shape["key_length"] * k_bytes + shape["value_length"] * v_bytes)
    # The output logits dominate the compute buffer: n_vocab floats per token of a ubatch.
    compute = n_ubatch * 4 * (shape["n_vocab"] + 8 * shape["embd"])
    return int((shape["weights"] + kv + compute) / MIB) + _OVERHEAD_MIB


def estimate_mib(path: str, args: Sequence[str]) -> dict[str, int]:
    """The need per device (all on the host: without llama.cpp's fit the split is unknown)."""
    return {"host": estimate_from_shape(read_shape(path), args)}
