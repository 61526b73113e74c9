"""A model's memory need from its GGUF metadata, for when llama-fit-params can't say.

The header reader is our own: gguf.GGUFReader parses every value, and the tokenizer's
hundreds of thousands of strings made one estimate take seconds. This one decodes only
the few fields the estimate uses, steps over the rest and never reads the tensor data.
It also tells, without decoding it, whether the file carries a chat template.
"""

from __future__ import annotations

import os
import struct
from typing import Any, BinaryIO, Sequence

MIB = 1 << 20
# Bytes per element of the KV cache types llama-server accepts for --cache-type-k/-v.
_CACHE_BYTES = {"f32": 4.0, "f16": 2.0, "bf16": 2.0, "q8_0": 34 / 32, "q5_1": 24 / 32,
                "q5_0": 22 / 32, "q4_1": 20 / 32, "q4_0": 18 / 32, "iq4_nl": 18 / 32}
_OVERHEAD_MIB = 32  # the runtime's own buffers, measured as a few tens of MiB

_CHUNK = 1 << 20  # big enough that a typical header is a handful of reads
_U32, _U64 = struct.Struct("<I"), struct.Struct("<Q")
# GGUF value types of fixed size (the rest are 8 string and 9 array).
_FIXED = {t: struct.Struct("<" + c) for t, c in zip((*range(8), 10, 11, 12), "BbHhIif?Qqd")}
_STRING, _ARRAY = 8, 9
_ARCH_KEYS = ("block_count", "embedding_length", "attention.head_count",
              "attention.head_count_kv", "attention.key_length", "attention.value_length",
              "context_length")
_TOKENS = "tokenizer.ggml.tokens"
_TEMPLATE = "tokenizer.chat_template"  # llama.cpp's default template; named ones add a suffix


class GGUFError(Exception):
    """The file is not a GGUF model llmd can read."""


class _Bad(Exception):
    """The bytes are not a GGUF file this reader understands (internal to this module)."""


class _Cursor:
    """A forward-only cursor over a file read in chunks; raises _Bad past the end."""

    def __init__(self, f: BinaryIO, size: int) -> None:
        self.f, self.size = f, size
        self.buf, self.pos, self.base = b"", 0, 0  # base: the file offset of buf[0]

    def offset(self) -> int:
        """The file offset of the next byte to read."""
        return self.base + self.pos

    def need(self, n: int) -> None:
        """Make `n` bytes available at `pos`; raises _Bad if the file ends first."""
        if self.pos + n <= len(self.buf):
            return
        self.guard(n)
        rest = self.buf[self.pos:]
        self.base += self.pos
        self.f.seek(self.base + len(rest))  # pos may lie past buf after a skip
        self.buf = rest + self.f.read(max(n - len(rest), _CHUNK))
        self.pos = 0
        if len(self.buf) < n:
            raise _Bad("the file shrank while being read")

    def unpack(self, st: struct.Struct) -> Any:
        """One fixed-size value; raises _Bad at the end of the file."""
        self.need(st.size)
        value = st.unpack_from(self.buf, self.pos)[0]
        self.pos += st.size
        return value

    def skip(self, n: int) -> None:
        """Step over `n` bytes without reading them; raises _Bad past the end."""
        self.guard(n)
        self.pos += n

    def string(self) -> str:
        """One GGUF string; raises _Bad if cut short, UnicodeDecodeError if not UTF-8."""
        n = self.unpack(_U64)
        self.need(n)
        self.pos += n
        return self.buf[self.pos - n:self.pos].decode("utf-8")

    def guard(self, count: int, least: int = 1) -> None:
        """Raises _Bad unless `count` items of `least` bytes or more fit in what is left."""
        if count * least > self.size - self.offset():
            raise _Bad(f"cut short: {count * least} bytes wanted at byte {self.offset()}, "
                       f"the file has {self.size}")

    def skip_strings(self, count: int) -> None:
        """Step over `count` strings by their lengths alone; raises _Bad past the end."""
        self.guard(count, 8)
        unpack, buf, pos, end = _U64.unpack_from, self.buf, self.pos, len(self.buf)
        for _ in range(count):  # the hot loop: 262k tokens in Gemma 3's vocabulary
            if pos + 8 > end:
                self.pos = pos
                self.need(8)
                buf, pos, end = self.buf, self.pos, len(self.buf)
            pos += 8 + unpack(buf, pos)[0]
        self.pos = pos
        self.guard(0)  # the last length may point past the end


def _skip(cur: _Cursor, vtype: int, count: int) -> None:
    """Step over `count` values of GGUF type `vtype`; raises _Bad on an unknown type."""
    if vtype in _FIXED:
        cur.skip(count * _FIXED[vtype].size)
    elif vtype == _STRING:
        cur.skip_strings(count)
    elif vtype == _ARRAY:
        cur.guard(count, 12)
        for _ in range(count):
            etype = cur.unpack(_U32)
            _skip(cur, etype, cur.unpack(_U64))
    else:
        raise _Bad(f"unknown value type {vtype}")


def _value(cur: _Cursor, vtype: int) -> tuple[Any, int]:
    """A value and its count: a scalar's own (1), an array's first element (or None)."""
    if vtype in _FIXED:
        return cur.unpack(_FIXED[vtype]), 1
    if vtype == _STRING:
        return cur.string(), 1
    if vtype != _ARRAY:
        raise _Bad(f"unknown value type {vtype}")
    etype, count = cur.unpack(_U32), cur.unpack(_U64)
    first = cur.unpack(_FIXED[etype]) if count and etype in _FIXED else None
    _skip(cur, etype, count - (first is not None))
    return first, count


def _pairs(cur: _Cursor) -> tuple[dict[str, Any], dict[str, int], int]:
    """The wanted key-value fields, their counts and the tensor count; raises _Bad.

    The chat template's value is its length in bytes: it is stepped over, not decoded.
    """
    cur.need(24)
    if cur.buf[:4] != b"GGUF":
        raise _Bad("no GGUF magic")
    cur.skip(4)
    version = cur.unpack(_U32)
    if version not in (2, 3):
        raise _Bad(f"GGUF version {version} is not supported (2 and 3 are)")
    n_tensors, n_kv = cur.unpack(_U64), cur.unpack(_U64)
    cur.guard(n_kv, 8 + 4)
    values: dict[str, Any] = {}
    counts: dict[str, int] = {}  # an array's length, a scalar's 1
    for _ in range(n_kv):
        key, vtype = cur.string(), cur.unpack(_U32)
        # Which architecture prefixes the wanted keys is known only once all are read.
        if key in ("general.architecture", "general.alignment", _TOKENS) or \
                key.endswith(_ARCH_KEYS):
            values[key], counts[key] = _value(cur, vtype)
        elif key == _TEMPLATE and vtype == _STRING:
            values[key] = length = cur.unpack(_U64)
            cur.skip(length)
        else:
            _skip(cur, vtype, 1)
    return values, counts, n_tensors


def _header(cur: _Cursor) -> tuple[dict[str, Any], dict[str, int], int, int]:
    """The wanted fields, their counts, the data offset and tensor count; raises _Bad."""
    values, counts, n_tensors = _pairs(cur)
    cur.guard(n_tensors, 8 + 4 + 4 + 8)
    last = 0  # the largest tensor offset, to see that the data region is all there
    for _ in range(n_tensors):
        cur.skip(cur.unpack(_U64))
        n_dims = cur.unpack(_U32)
        cur.skip(8 * n_dims + 4)
        last = max(last, cur.unpack(_U64))
    align = values.get("general.alignment", 32)
    if not isinstance(align, int) or align <= 0:
        raise _Bad(f"general.alignment is {align!r}")
    start = -(-cur.offset() // align) * align
    if n_tensors and start + last >= cur.size:
        raise _Bad(f"the tensor data is cut short at byte {cur.size}")
    return values, counts, start, n_tensors


def read_shape(path: str) -> dict[str, Any]:
    """The numbers the estimate needs, from the header; raises GGUFError if unreadable."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            values, counts, start, n_tensors = _header(_Cursor(f, size))
    except (OSError, UnicodeDecodeError, _Bad) as exc:
        raise GGUFError(f"{path}: not a readable GGUF file ({exc})") from None
    arch = values.get("general.architecture", "llama")

    def field(name: str, default: int) -> int:
        value = values.get(f"{arch}.{name}")
        try:
            return default if value is None else int(value) or default
        except (TypeError, ValueError, OverflowError):
            raise GGUFError(f"{path}: not a readable GGUF file ({arch}.{name} is "
                            f"{value!r})") from None

    layers, embd = field("block_count", 0), field("embedding_length", 0)
    heads = field("attention.head_count", 1)
    kv_heads = field("attention.head_count_kv", heads)
    head_dim = embd // heads
    return {
        # The data region: every tensor's bytes plus the alignment padding between them.
        "weights": size - start if n_tensors else 0,
        "layers": layers, "embd": embd, "kv_heads": kv_heads,
        "key_length": field("attention.key_length", head_dim),
        "value_length": field("attention.value_length", head_dim),
        "n_ctx_train": field("context_length", 4096),
        "n_vocab": counts.get(_TOKENS, 32000),
    }


def read_chat(path: str) -> tuple[str, bool]:
    """The file's general.architecture ("" if none) and whether it has a chat template.

    Reads only the key-value pairs, as fast as read_shape(); raises GGUFError if unreadable.
    """
    try:
        with open(path, "rb") as f:
            values, _, _ = _pairs(_Cursor(f, os.fstat(f.fileno()).st_size))
    except (OSError, UnicodeDecodeError, _Bad) as exc:
        raise GGUFError(f"{path}: not a readable GGUF file ({exc})") from None
    arch = values.get("general.architecture", "")
    return (arch if isinstance(arch, str) else ""), values.get(_TEMPLATE, 0) > 0


def read_info(path: str) -> dict[str, Any]:
    """Every key-value pair of the header (an array as None, its length in `arrays`), the
    chat template and the parameter count, for describing a model (Ollama's /api/show);
    raises GGUFError if unreadable."""
    try:
        with open(path, "rb") as f:
            cur = _Cursor(f, os.fstat(f.fileno()).st_size)
            cur.need(24)
            if cur.buf[:4] != b"GGUF":
                raise _Bad("no GGUF magic")
            cur.skip(8)
            n_tensors, n_kv = cur.unpack(_U64), cur.unpack(_U64)
            cur.guard(n_kv, 12)
            values: dict[str, Any] = {}
            arrays: dict[str, int] = {}
            for _ in range(n_kv):
                key, vtype = cur.string(), cur.unpack(_U32)
                if vtype == _ARRAY:
                    etype, count = cur.unpack(_U32), cur.unpack(_U64)
                    _skip(cur, etype, count)
                    values[key], arrays[key] = None, count
                else:
                    values[key] = _value(cur, vtype)[0]
            cur.guard(n_tensors, 8 + 4 + 4 + 8)
            parameters = 0
            for _ in range(n_tensors):
                cur.skip(cur.unpack(_U64))
                count = 1
                for _ in range(cur.unpack(_U32)):
                    count *= cur.unpack(_U64)
                parameters += count
                cur.skip(4 + 8)
    except (OSError, UnicodeDecodeError, _Bad) as exc:
        raise GGUFError(f"{path}: not a readable GGUF file ({exc})") from None
    template = values.pop(_TEMPLATE, None)
    return {"values": values, "arrays": arrays, "parameters": parameters,
            "template": template if isinstance(template, str) else None}


def _arg(args: Sequence[str], names: tuple[str, ...], default: str) -> str:
    value = default
    for i, arg in enumerate(args):
        if arg in names and i + 1 < len(args):
            value = args[i + 1]
        for name in names:
            if arg.startswith(name + "="):
                value = arg.split("=", 1)[1]
    return value


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
