"""llmd's models as Ollama describes models: /api/tags, /api/ps and /api/show entries."""

from __future__ import annotations

import hashlib
import os
import time
from typing import Any

import trio

from llmd.api.ollama.convert import iso
from llmd.models import prepare
from llmd.models.model import Model
from llmd.models.state import UP

# llama.cpp's file types (general.file_type) by the names Ollama shows.
_QUANTS = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1",
           10: "Q2_K", 11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M",
           16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S",
           22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M",
           28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0",
           37: "TQ2_0", 38: "MXFP4"}
_NEVER = "9999-12-31T23:59:59Z"  # expires_at of a model kept loaded until unloaded
async def info(path: str) -> dict[str, Any] | None:
    """The model file's header (prepare.header), read off the event loop the first time;
    None when there is no readable file."""
    if not path:
        return None
    if prepare.header_known(path):
        return prepare.header(path)
    return await trio.to_thread.run_sync(prepare.header, path)


def parameter_size(n: int) -> str:
    """A parameter count as Ollama writes it: 268.10M, 7.6B."""
    return f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.2f}M"


def details(header: dict[str, Any] | None) -> dict[str, Any]:
    """Ollama's `details` from a GGUF header."""
    values = (header or {}).get("values", {})
    family = str(values.get("general.architecture") or "")
    return {"parent_model": "", "format": "gguf", "family": family,
            "families": [family] if family else None,
            "parameter_size": parameter_size(header["parameters"]) if header else "",
            "quantization_level": _QUANTS.get(values.get("general.file_type", -1), "")}


def digest(model: Model) -> str:
    """A stable id for the model file's current version: sha256 of its path, size and
    modification time (hashing gigabytes to list models would take minutes)."""
    try:
        st = os.stat(model.spec.path)
        stamp = f"{model.spec.path}\0{st.st_size}\0{st.st_mtime_ns}"
    except OSError:
        stamp = f"{model.spec.name}\0{model.spec.hf}"
    return hashlib.sha256(stamp.encode()).hexdigest()


def _modified(path: str) -> str:
    try:
        return iso(os.stat(path).st_mtime)
    except OSError:
        return iso(time.time())


async def tag(model: Model) -> dict[str, Any]:
    """One entry of /api/tags."""
    spec = model.spec
    return {"name": spec.name, "model": spec.name, "modified_at": _modified(spec.path),
            "size": prepare.model_bytes(spec), "digest": digest(model),
            "details": details(await info(spec.path))}


async def running(model: Model, now: float) -> dict[str, Any]:
    """One entry of /api/ps: what it holds (booked), on GPUs (measured), when it expires."""
    spec = model.spec
    booked = sum(model.booked().values()) if model.state in UP else 0
    vram = sum(v for k, v in model.measured.items() if k != "host")
    limit = model.idle_limit()
    expires = _NEVER
    if limit and model.last_used > float("-inf"):
        expires = iso(time.time() + max(0.0, model.last_used + limit - now))
    entry = await tag(model)
    entry.pop("modified_at")
    return {**entry, "size": (booked << 20) or entry["size"], "size_vram": vram << 20,
            "expires_at": expires}


def capabilities(model: Model, header: dict[str, Any] | None) -> list[str]:
    """What the model can be asked for, as Ollama names it."""
    args = set(model.spec.args)
    found = ["completion"]
    if args & {"--embedding", "--embeddings"}:
        found.append("embedding")
    if model.spec.mmproj:
        found.append("vision")
    template = (header or {}).get("template") or ""
    if "tools" in template:
        found.append("tools")
    if "enable_thinking" in template or "<think>" in template:
        found.append("thinking")
    return found


async def show(model: Model) -> dict[str, Any]:
    """/api/show: details, the GGUF header's values (arrays as null), the chat template,
    the child's arguments as the parameters."""
    header = await info(model.spec.path)
    model_info = dict((header or {}).get("values", {}))
    if header:
        model_info["general.parameter_count"] = header["parameters"]
    return {"modelfile": f"# llmd: {model.spec.path}\nFROM {model.spec.path}\n",
            "parameters": " ".join(model.spec.child_args()),
            "template": (header or {}).get("template") or "",
            "details": details(header), "model_info": model_info,
            "capabilities": capabilities(model, header),
            "modified_at": _modified(model.spec.path)}
