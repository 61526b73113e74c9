"""Ollama's request fields in OpenAI's terms (what llama-server speaks), and back.

Pure functions: no I/O. Each raises BadRequest, in words an Ollama user understands,
for what llmd can't honour, rather than dropping it silently.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from datetime import datetime, timezone
from typing import Any

from llmd.errors import BadRequest

# Sampling options, by their llama-server (OpenAI-compatible) names.
_SAMPLING = {
    "temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "min_p": "min_p",
    "typical_p": "typical_p", "seed": "seed", "stop": "stop", "num_predict": "max_tokens",
    "repeat_penalty": "repeat_penalty", "repeat_last_n": "repeat_last_n",
    "presence_penalty": "presence_penalty", "frequency_penalty": "frequency_penalty",
    "mirostat": "mirostat", "mirostat_tau": "mirostat_tau", "mirostat_eta": "mirostat_eta",
    "num_keep": "n_keep",
}
# Options that shape how a model is loaded: fixed by its configuration in llmd.
_LOAD_TIME = ("num_batch", "num_gpu", "main_gpu", "low_vram", "f16_kv", "logits_all",
              "vocab_only", "use_mmap", "use_mlock", "num_thread", "numa", "embedding_only")
# Options llama.cpp dropped: accepted and unused, as Ollama itself does.
_OBSOLETE = ("tfs_z", "penalize_newline")
_DURATION = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*(ns|us|µs|ms|s|m|h)?\s*$")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0,
                 "h": 3600.0, None: 1.0}


def options(given: Any, n_ctx: int | None) -> dict[str, Any]:
    """Ollama's `options` as llama-server request fields; BadRequest for what can't apply.

    `num_ctx` may ask for no more than the child's context (`n_ctx`, when known): the
    request then runs in the larger one. A load-time option can't change per request.
    """
    if given is None:
        return {}
    if not isinstance(given, dict):
        raise BadRequest("options must be an object")
    out: dict[str, Any] = {}
    for key, value in given.items():
        if value is None or key in _OBSOLETE:
            continue
        if key in _SAMPLING:
            if key == "num_predict" and isinstance(value, int) and value < 0:
                continue  # -1 (no limit) and -2 (fill the context): llama-server's default
            out[_SAMPLING[key]] = [value] if key == "stop" and isinstance(value, str) else value
        elif key == "num_ctx":
            if not isinstance(value, int) or value <= 0:
                raise BadRequest("options.num_ctx must be a positive integer")
            if n_ctx and value > n_ctx:
                raise BadRequest(
                    f"options.num_ctx {value} is more than this model's context of {n_ctx} "
                    "tokens, which llmd sets when it loads the model (--ctx-size in its args); "
                    "llmd does not reload a model per request")
        elif key in _LOAD_TIME:
            raise BadRequest(f"options.{key} is set when llmd loads the model (its args in "
                             "llmd's configuration); it can't change per request")
        else:
            raise BadRequest(f"unknown option '{key}'")
    return out


def keep_alive(value: Any) -> float | None:
    """keep_alive as seconds: "5m", "1h", "30s", 300 (seconds), 0, a negative for ever;
    None when not given. BadRequest for anything else."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise BadRequest("keep_alive must be a duration such as \"5m\" or a number of seconds")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            return float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
    raise BadRequest(f"keep_alive {value!r} is not a duration such as \"5m\", \"1h\" or 300")


def response_format(fmt: Any) -> dict[str, Any]:
    """`format` ("json" or a JSON schema) as llama-server's response_format."""
    if fmt in (None, ""):
        return {}
    if fmt == "json":
        return {"response_format": {"type": "json_object"}}
    if isinstance(fmt, dict):
        return {"response_format": {"type": "json_schema",
                                    "json_schema": {"name": "format", "schema": fmt}}}
    raise BadRequest("format must be \"json\" or a JSON schema object")


def think(value: Any) -> dict[str, Any]:
    """`think` (true/false, or "low"/"medium"/"high") as llama-server's template switches."""
    if value is None:
        return {}
    if isinstance(value, bool):
        return {"chat_template_kwargs": {"enable_thinking": value}}
    if value in ("low", "medium", "high"):
        return {"chat_template_kwargs": {"enable_thinking": True}, "reasoning_effort": value}
    raise BadRequest("think must be true, false, \"low\", \"medium\" or \"high\"")


def _image_part(image: Any) -> dict[str, Any]:
    if not isinstance(image, str) or not image:
        raise BadRequest("images must be base64-encoded strings")
    return {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{image}"}}


def messages(given: Any) -> list[dict[str, Any]]:
    """Ollama chat messages as OpenAI's: images as content parts, tool calls with their
    arguments as JSON text, tool results with their call's id."""
    if not isinstance(given, list):
        raise BadRequest("messages must be a list")
    out: list[dict[str, Any]] = []
    calls: dict[str, str] = {}  # tool name -> the id of its last call, for the result
    for i, m in enumerate(given):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise BadRequest(f"messages[{i}] must be an object with a role")
        content = m.get("content") or ""
        msg: dict[str, Any] = {"role": m["role"]}
        if m.get("images"):
            msg["content"] = [{"type": "text", "text": content},
                              *(_image_part(img) for img in m["images"])]
        else:
            msg["content"] = content
        if m.get("tool_calls"):
            msg["tool_calls"] = []
            for call in m["tool_calls"]:
                fn = (call or {}).get("function") or {}
                call_id = "call_" + secrets.token_hex(6)
                calls[str(fn.get("name"))] = call_id
                msg["tool_calls"].append({"id": call_id, "type": "function", "function": {
                    "name": fn.get("name"), "arguments": json.dumps(fn.get("arguments") or {})}})
        if m["role"] == "tool":
            name = m.get("tool_name") or m.get("name")
            msg["tool_call_id"] = calls.get(str(name), "call_" + str(name))
        out.append(msg)
    return out


def tool_calls(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI's tool calls (arguments as JSON text) as Ollama's (arguments as an object)."""
    out = []
    for call in calls:
        fn = call.get("function") or {}
        raw = fn.get("arguments") or "{}"
        try:
            arguments = json.loads(raw) if isinstance(raw, str) else raw
        except ValueError:
            arguments = {"_raw": raw}  # the model wrote something that isn't JSON
        out.append({"function": {"name": fn.get("name"), "arguments": arguments}})
    return out


def now() -> str:
    """The current time as Ollama writes it (RFC 3339, nanoseconds, UTC)."""
    return iso(time.time())


def iso(wall: float) -> str:
    """A wall-clock time as Ollama writes it."""
    return datetime.fromtimestamp(wall, timezone.utc).isoformat().replace("+00:00", "Z")


def stats(timings: dict[str, Any] | None, usage: dict[str, Any] | None, total: float,
          load: float) -> dict[str, Any]:
    """The closing counts and durations (nanoseconds) from llama-server's timings and usage,
    and what llmd measured: the whole request and the wait for the model."""
    t, u = timings or {}, usage or {}
    prompt_n = u.get("prompt_tokens", t.get("prompt_n", 0) + t.get("cache_n", 0))
    return {"total_duration": int(total * 1e9), "load_duration": int(load * 1e9),
            "prompt_eval_count": prompt_n,
            "prompt_eval_duration": int(t.get("prompt_ms", 0) * 1e6),
            "eval_count": u.get("completion_tokens", t.get("predicted_n", 0)),
            "eval_duration": int(t.get("predicted_ms", 0) * 1e6)}


def done_reason(finish: str | None) -> str:
    """OpenAI's finish_reason as Ollama's done_reason."""
    return {"length": "length", "tool_calls": "stop"}.get(finish or "stop", "stop")
