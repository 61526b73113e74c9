"""A load narrated inside a streaming chat's own response, as reasoning the client shows.

A streaming chat completion for a model that is not loaded would sit silent until the
load ends. With loading feedback, llmd answers at once (200, an event stream), sends what
the load is doing as `reasoning_content` deltas (the field chat UIs show as "thinking"),
at most two a second, and then the model's own stream follows in the same response. A
load that fails ends the stream with the documented error event.
"""

from __future__ import annotations

import json
import math
import secrets
import time
from typing import Any, Awaitable, Callable

import trio

from llmd.api import asgi
from llmd.api.asgi import Send
from llmd.models.model import Handle, Model
from llmd.models.state import STARTING, State

HEADER = b"x-llmd-loading-feedback"  # "off" (or "on") for this request
CHAT_PATHS = frozenset({"/v1/chat/completions", "/chat/completions"})
MESSAGES_PATHS = frozenset({"/v1/messages"})
PATHS = CHAT_PATHS | MESSAGES_PATHS
MIN_GAP = 0.5  # seconds between two narration chunks: no more than two a second
_NO = ("off", "0", "false", "no")
_YES = ("on", "1", "true", "yes")


def streaming_chat(path: str, request: dict[str, Any]) -> bool:
    """Whether the request is a streaming chat whose wait can be narrated."""
    return path in PATHS and request.get("stream") is True


def asked(header: str | None, setting: bool) -> bool:
    """Whether loading feedback is on: the request's header if it says, else `setting`
    (the model's loading_feedback, or llmd's)."""
    given = (header or "").strip().lower()
    return False if given in _NO else given in _YES or setting


def wanted(path: str, request: dict[str, Any], header: str | None, setting: bool) -> bool:
    """Whether this request gets its wait narrated: a streaming chat completion, with
    loading feedback on for its model (`setting`) unless its header says otherwise."""
    return streaming_chat(path, request) and asked(header, setting)


def _pct(fraction: float | None) -> str:
    return f"{int(100 * (fraction or 0.0))} %"


def narration(name: str, model: Model) -> str | None:
    """One line saying what the load of `model` is doing now; None while it does nothing
    worth saying (not started yet, or between runs)."""
    load = model.load
    if model.state not in STARTING or load is None:
        return None
    if model.state is State.DOWNLOADING:
        d = load.download
        if not d or not d["total"]:
            return f"Downloading {name}…"
        eta = f", about {math.ceil(d['eta'])} s left" if d.get("eta") is not None else ""
        return (f"Downloading {name}: {_pct(d['done'] / d['total'])} ({d['done'] >> 20} of "
                f"{d['total'] >> 20} MiB at {d['rate'] / 2**20:.1f} MiB/s{eta})")
    if model.state is State.ESTIMATING:
        return f"Working out how much memory {name} needs…"
    if model.state is State.QUEUED:
        q = load.queue
        if q is None or q.waiting_for == "room" or q.on is None:
            return f"Waiting for room to load {name}…"
        return {"turn": f"Queued ({q.position} in line), behind the load of {q.on}…",
                "drain": f"Waiting for {q.on} to finish its requests, to make room for {name}…",
                "min_residency": f"Waiting for {q.on}, loaded moments ago, to serve its "
                                 f"clients first…"}.get(q.waiting_for,
                                                        f"Waiting to load {name}…")
    return f"Loading {name}: {_pct(load.step)}"


class Narrator:
    """Sends a model's load progress into a started event stream until stopped, in the
    shape of the request's API: OpenAI chat chunks, or Anthropic's Messages events."""

    def __init__(self, send: Send, model: Model, name: str, anthropic: bool = False) -> None:
        self._send = send
        self.model = model
        self.name = name
        self.anthropic = anthropic
        self.scope = trio.CancelScope()
        self.done = trio.Event()
        self._id = "chatcmpl-llmd-" + secrets.token_hex(8)
        self._first = True

    async def _event(self, data: dict[str, Any]) -> None:
        head = f"event: {data['type']}\n" if self.anthropic else ""
        await self._send({"type": "http.response.body", "more_body": True,
                          "body": f"{head}data: {json.dumps(data)}\n\n".encode()})

    async def say(self, text: str) -> None:
        """Send one line as a reasoning delta (a thinking block's delta, for Anthropic)."""
        if self.anthropic:
            if self._first:
                await self._event({"type": "message_start", "message": {
                    "id": "msg_llmd_" + secrets.token_hex(8), "type": "message",
                    "role": "assistant", "model": self.name, "content": [],
                    "stop_reason": None, "stop_sequence": None,
                    "usage": {"input_tokens": 0, "output_tokens": 0}}})
                await self._event({"type": "content_block_start", "index": 0, "content_block": {
                    "type": "thinking", "thinking": "", "signature": ""}})
                self._first = False
            await self._event({"type": "content_block_delta", "index": 0,
                               "delta": {"type": "thinking_delta", "thinking": text + "\n"}})
            return
        delta: dict[str, Any] = {"reasoning_content": text + "\n"}
        if self._first:
            delta = {"role": "assistant", "content": None, **delta}
            self._first = False
        await self._event({"id": self._id, "object": "chat.completion.chunk",
                           "created": int(time.time()), "model": self.name,
                           "system_fingerprint": "llmd",
                           "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                        "finish_reason": None}]})

    async def finish(self, text: str) -> Send:
        """Say the last line; the `send` the model's own stream goes through after it."""
        await self.say(text)
        if not self.anthropic:
            return self._send
        await self._event({"type": "content_block_stop", "index": 0})
        return _AfterThinking(self._send)

    async def run(self) -> None:
        """Narrate each change, at most one line every MIN_GAP seconds, until stopped."""
        with self.scope:
            try:
                await self._narrate()
            except Exception:  # the client went away: the request itself finds out
                pass
        self.done.set()

    async def _narrate(self) -> None:
        said, sent = None, -math.inf
        while True:
            text = narration(self.name, self.model)
            if text is not None and text != said:
                wait = sent + MIN_GAP - trio.current_time()
                if wait > 0:
                    await trio.sleep(wait)  # the rate bound, then say what is true by then
                    continue
                with trio.CancelScope(shield=True):  # never half a chunk
                    await self.say(text)
                said, sent = text, trio.current_time()
            load = self.model.load
            if self.model.state in STARTING and load is not None and not load.ended:
                await load.changed.wait()
            else:
                await self.model.changed.wait()

    async def stop(self) -> None:
        """Stop narrating; return once no line is being sent."""
        self.scope.cancel()
        await self.done.wait()


async def narrated(send: Send, model: Model, name: str,
                   lease: Callable[[], Any],
                   forward: Callable[[Send, Handle], Awaitable[None]],
                   anthropic: bool = False) -> None:
    """Answer with an event stream at once, narrate the wait for `lease()`, then let
    `forward(send, handle)` relay the model's own stream into it; raises what the lease
    raises."""
    started = trio.current_time()
    await send({"type": "http.response.start", "status": 200, "headers": asgi.SSE_HEADERS})
    narrator = Narrator(send, model, name, anthropic)
    failure: Exception | None = None
    # Errors are caught inside and raised after the nursery: callers see the error itself.
    async with trio.open_nursery() as nursery:
        nursery.start_soon(narrator.run)
        try:
            async with lease() as handle:
                await narrator.stop()
                rest = await narrator.finish(
                    f"{name} is ready ({trio.current_time() - started:.1f} s).\n")
                await forward(rest, handle)
        except Exception as exc:
            failure = exc
        finally:
            narrator.scope.cancel()
    if failure is not None:
        raise failure


class _AfterThinking:
    """The model's own Messages stream, after llmd's thinking block: its message_start is
    dropped (llmd sent one) and its content blocks move one index up."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self._pending = b""

    async def __call__(self, message: asgi.Message) -> None:
        if message["type"] != "http.response.body":
            return await self._send(message)
        self._pending += message.get("body", b"")
        more = message.get("more_body", False)
        *events, self._pending = self._pending.split(b"\n\n")
        if not more and self._pending:
            events, self._pending = [*events, self._pending], b""
        out = b"".join(_shifted(e) for e in events)
        if out or not more:
            await self._send({"type": "http.response.body", "body": out, "more_body": more})


def _shifted(event: bytes) -> bytes:
    """One server-sent event of the model's Messages stream, as it goes on after llmd's."""
    lines = event.split(b"\n")
    data = next((line[6:] for line in lines if line.startswith(b"data: ")), None)
    try:
        parsed = json.loads(data) if data is not None else None
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict):
        return event + b"\n\n"
    if parsed.get("type") == "message_start":
        return b""
    if isinstance(parsed.get("index"), int) and str(parsed.get("type", "")).startswith(
            "content_block_"):
        parsed["index"] += 1
        return f"event: {parsed['type']}\ndata: {json.dumps(parsed)}\n\n".encode()
    return event + b"\n\n"
