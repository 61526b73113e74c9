"""Ollama's API on the router port, translated to and from the children's OpenAI endpoints.

Every model request goes through the scheduler's one lease, as on the OpenAI routes:
loads, eviction, API keys (checked by the router) and metrics are the same. Streaming
answers are newline-delimited JSON, Ollama's default; errors are `{"error": "..."}`.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, AsyncIterator, Callable

import trio

from llmd.api import asgi
from llmd.api.asgi import Send
from llmd.api.ollama import convert, describe
from llmd.api.proxy import child_error
from llmd.children.upstream import Response, Upstream, UpstreamBroken
from llmd.errors import BadRequest, ChildRefused, Forbidden, LlmdError, NotFound, UpstreamError
from llmd.models.model import Handle, Model
from llmd.models.scheduler import Scheduler
from llmd.models.state import UP

VERSION = "0.12.6"  # the Ollama API version whose shapes these are
NDJSON = [(b"content-type", b"application/x-ndjson")]
_PROGRESS_EVERY = 0.25  # seconds between two pull progress lines
GET = frozenset({"/api/version", "/api/tags", "/api/ps"})
POST = frozenset({"/api/show", "/api/chat", "/api/generate", "/api/embed", "/api/embeddings",
                  "/api/pull"})
PATHS = GET | POST | {"/api/delete"}


class Ndjson:
    """A streamed Ollama answer: one JSON object per line, begun on the first."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self.started = False

    async def line(self, data: dict[str, Any]) -> None:
        if not self.started:
            await self._send({"type": "http.response.start", "status": 200, "headers": NDJSON})
            self.started = True
        await self._send({"type": "http.response.body", "more_body": True,
                          "body": json.dumps(data).encode() + b"\n"})

    async def end(self) -> None:
        await self._send({"type": "http.response.body", "body": b""})


async def _events(response: Response) -> AsyncIterator[dict[str, Any]]:
    """The JSON data of a child's server-sent events, until [DONE] or the end."""
    pending = b""
    try:
        while chunk := await response.read():
            pending += chunk
            *blocks, pending = pending.split(b"\n\n")
            for block in blocks:
                for line in block.split(b"\n"):
                    if line.startswith(b"data: "):
                        if line[6:].strip() == b"[DONE]":
                            return
                        yield json.loads(line[6:])
    except UpstreamBroken:
        raise UpstreamError("model server stopped mid-response") from None


class OllamaApi:
    """The /api/* routes; the router checks keys and reads bodies, this does the rest."""

    def __init__(self, scheduler: Scheduler, upstream: Upstream,
                 allow_pull: Callable[[], bool]) -> None:
        self.scheduler = scheduler
        self.upstream = upstream
        self.allow_pull = allow_pull

    async def handle(self, send: Send, method: str, path: str, body: bytes,
                     status: dict[str, Any], max_wait: float | None = None) -> None:
        """Answer one /api/* request; raises LlmdError (the router answers it as Ollama).

        `max_wait`: the request's own wait bound for its model (X-Llmd-Max-Wait)."""
        if method == "GET" and path in GET:
            if path == "/api/version":
                return await asgi.send_json(send, 200, {"version": VERSION})
            if path == "/api/tags":
                models = [m for m in list(self.scheduler.models.values())
                          if self.scheduler.listed(m)]
                return await asgi.send_json(send, 200, {
                    "models": [await describe.tag(m) for m in models]})
            now = trio.current_time()
            running = []
            for m in [m for m in self.scheduler.models.values() if m.state in UP]:
                entry = await describe.running(m, now)
                if m.handle is not None and m.handle.n_ctx:
                    entry["context_length"] = m.handle.n_ctx
                running.append(entry)
            return await asgi.send_json(send, 200, {"models": running})
        if not ((method == "POST" and path in POST) or (method == "DELETE"
                                                        and path == "/api/delete")):
            raise NotFound(f"no route for {method} {path}")
        request = asgi.json_object(body)
        name = request.get("model") or request.get("name")
        if not isinstance(name, str) or not name:
            raise BadRequest("model is required")
        status["model"] = name
        if path == "/api/pull":
            return await self._pull(send, name, request.get("stream") is not False)
        model = self._model(name, pull=self.allow_pull())
        status["model"] = model.spec.name
        if path == "/api/show":
            return await asgi.send_json(send, 200, await describe.show(model))
        if path == "/api/delete":
            await self.scheduler.delete(model.spec.name)
            return await asgi.send_json(send, 200, {})
        if path in ("/api/embed", "/api/embeddings"):
            return await self._embed(send, model, request, path == "/api/embeddings", max_wait)
        await self._generate(send, model, request, path == "/api/chat", max_wait)

    def _model(self, name: str, pull: bool = False) -> Model:
        """The model `name` refers to; Ollama clients may add ":latest" to a bare name."""
        try:
            return self.scheduler.resolve(name, pull=pull)
        except NotFound:
            if name.endswith(":latest"):
                return self.scheduler.resolve(name.removesuffix(":latest"))
            raise

    async def _open(self, handle: Handle, method: str, target: str,
                    body: dict[str, Any] | None) -> Response:
        raw = b"" if body is None else json.dumps(body).encode()
        try:
            response = await self.upstream.request(
                method, handle.base_url, target, [(b"content-type", b"application/json")], raw)
        except UpstreamBroken as exc:
            raise UpstreamError(f"model server unreachable: {exc}") from None
        if response.status != 200:
            raise ChildRefused(response.status, child_error(await response.read_all()))
        return response

    async def _call(self, handle: Handle, method: str, target: str,
                    body: dict[str, Any] | None) -> dict[str, Any]:
        response = await self._open(handle, method, target, body)
        try:
            raw = await response.read_all()
        except UpstreamBroken:
            raise UpstreamError("model server stopped mid-response") from None
        data = json.loads(raw)
        return data if isinstance(data, dict) else {"data": data}

    # ---- generation ------------------------------------------------------------------

    async def _generate(self, send: Send, model: Model, request: dict[str, Any],
                        chat: bool, max_wait: float | None) -> None:
        name = model.spec.name
        keep = convert.keep_alive(request.get("keep_alive"))
        stream = request.get("stream") is not False
        body = _openai_body(name, request, chat)
        started = trio.current_time()
        if body is None:  # nothing to generate: load it, or with keep_alive 0 unload it
            return await self._load_only(send, model, chat, keep, started, max_wait)
        options = body.pop("_options")
        async with self.scheduler.lease(name, max_wait=max_wait) as handle:
            loaded = trio.current_time() - started
            body.update(convert.options(options, handle.n_ctx))
            raw = body.pop("_raw", False)
            target = "/completion" if raw else "/v1/chat/completions"
            if raw and "max_tokens" in body:
                body["n_predict"] = body.pop("max_tokens")
            response = await self._open(handle, "POST", target, body)
            try:
                await _relay(send, response, name, chat, stream, started, loaded)
            finally:
                response.close()
        self.scheduler.keep_alive(name, keep)

    async def _load_only(self, send: Send, model: Model, chat: bool, keep: float | None,
                         started: float, max_wait: float | None) -> None:
        name = model.spec.name
        if keep == 0:
            await self.scheduler.unload(name)
            reason = "unload"
        else:
            async with self.scheduler.lease(name, max_wait=max_wait):
                pass
            self.scheduler.keep_alive(name, keep)
            reason = "load"
        answer: dict[str, Any] = {"model": name, "created_at": convert.now(), "done": True,
                                  "done_reason": reason}
        answer.update({"message": {"role": "assistant", "content": ""}} if chat
                      else {"response": ""})
        answer["total_duration"] = int((trio.current_time() - started) * 1e9)
        await asgi.send_json(send, 200, answer)

    # ---- embeddings ------------------------------------------------------------------

    async def _embed(self, send: Send, model: Model, request: dict[str, Any],
                     legacy: bool, max_wait: float | None) -> None:
        name = model.spec.name
        keep = convert.keep_alive(request.get("keep_alive"))
        given = request.get("prompt") if legacy else request.get("input")
        if not isinstance(given, (str, list)) or (isinstance(given, list) and not all(
                isinstance(x, str) for x in given)):
            raise BadRequest("prompt must be a string" if legacy
                             else "input must be a string or a list of strings")
        if request.get("dimensions") is not None:
            raise BadRequest("dimensions is not supported: llama-server returns the model's "
                             "own embedding size")
        convert.options(request.get("options"), None)  # refuse what can't apply
        started = trio.current_time()
        async with self.scheduler.lease(name, max_wait=max_wait) as handle:
            loaded = trio.current_time() - started
            data = await self._call(handle, "POST", "/v1/embeddings",
                                    {"model": name, "input": given})
        self.scheduler.keep_alive(name, keep)
        vectors = [item["embedding"] for item in sorted(data.get("data", []),
                                                        key=lambda d: d.get("index", 0))]
        if legacy:
            return await asgi.send_json(send, 200, {"embedding": vectors[0] if vectors else []})
        usage = data.get("usage") or {}
        await asgi.send_json(send, 200, {
            "model": name, "embeddings": vectors,
            "total_duration": int((trio.current_time() - started) * 1e9),
            "load_duration": int(loaded * 1e9),
            "prompt_eval_count": usage.get("prompt_tokens", 0)})

    # ---- pull ------------------------------------------------------------------------

    async def _pull(self, send: Send, name: str, stream: bool) -> None:
        """Download a hub model with llmctl pull's rules; progress as Ollama's lines."""
        try:
            model = self.scheduler.resolve(name, pull=self.allow_pull())
        except NotFound:
            if not self.allow_pull():
                raise Forbidden(f"'{name}' is not configured, and allow_pull is false: this "
                                "router may not download models it was not told of") from None
            raise
        out = Ndjson(send)
        outcome: dict[str, Any] = {}
        done = trio.Event()

        async def pull() -> None:
            try:
                await self.scheduler.pull(model.spec.name)
            except LlmdError as exc:
                outcome["error"] = exc
            finally:
                done.set()

        if stream:
            await out.line({"status": "pulling manifest"})
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pull)
            shown: dict[str, Any] | None = None
            # One id for the whole pull (the file's own sha256 is the hub's business).
            digest = hashlib.sha256(model.spec.hf.encode()).hexdigest()
            while True:
                # The hub writes the bytes into model.progress as they arrive.
                p = model.progress
                if stream and p is not None and p.total:
                    line = {"status": f"pulling {digest[:12]}", "digest": "sha256:" + digest,
                            "total": p.total, "completed": p.done}
                    if shown is None or line["completed"] != shown["completed"]:
                        await out.line(line)
                        shown = line
                if done.is_set():
                    break
                with trio.move_on_after(_PROGRESS_EVERY):  # the rate bound of the lines
                    await done.wait()
        if "error" in outcome:
            if not stream:
                raise outcome["error"]
            await out.line({"error": outcome["error"].message})
            return await out.end()
        if not stream:
            return await asgi.send_json(send, 200, {"status": "success"})
        for status in ("verifying sha256 digest", "writing manifest", "success"):
            await out.line({"status": status})
        await out.end()


def _openai_body(name: str, request: dict[str, Any], chat: bool) -> dict[str, Any] | None:
    """The child's request for an Ollama chat or generate; None when there is nothing to
    generate (a load or unload). Options stay in "_options" until the child's context is
    known; "_raw" marks a raw prompt for /completion."""
    for key in ("template", "context", "suffix"):
        if request.get(key):
            raise BadRequest(f"{key} is not supported by llmd: the prompt template is the "
                             "model's own (llama-server's); use raw for a prompt as is")
    body: dict[str, Any] = {"model": name, "stream": True,
                            "_options": request.get("options")}
    convert.options(request.get("options"), None)  # refuse what can't apply, before loading
    if chat:
        if not request.get("messages"):
            return None
        body["messages"] = convert.messages(request["messages"])
        if request.get("tools"):
            body["tools"] = request["tools"]
    else:
        prompt, images = request.get("prompt"), request.get("images")
        if not prompt and not images:
            return None
        if not isinstance(prompt, str):
            raise BadRequest("prompt must be a string")
        if request.get("raw"):
            if request.get("system") or images or request.get("format"):
                raise BadRequest("raw takes the prompt as is: system, images and format "
                                 "don't apply to it")
            body.update(prompt=prompt, _raw=True)
            return body
        user: dict[str, Any] = {"role": "user", "content": prompt}
        if images:
            user["images"] = images
        given = [{"role": "system", "content": request["system"]}] if request.get("system") \
            else []
        body["messages"] = convert.messages([*given, user])
    body["stream_options"] = {"include_usage": True}
    body.update(convert.response_format(request.get("format")))
    body.update(convert.think(request.get("think")))
    return body


async def _relay(send: Send, response: Response, name: str, chat: bool, stream: bool,
                 started: float, loaded: float) -> None:
    """The child's stream as Ollama's: NDJSON lines, or one object when not streaming."""
    out = Ndjson(send)
    content: list[str] = []
    thinking: list[str] = []
    calls: dict[int, dict[str, Any]] = {}  # index -> the OpenAI tool call, accumulated
    finish, timings, usage = None, None, None
    async for event in _events(response):
        timings = event.get("timings") or timings
        usage = event.get("usage") or usage
        if "choices" not in event:  # /completion (a raw prompt)
            text, think_text = event.get("content") or "", ""
            if event.get("stop"):
                finish = "length" if event.get("stop_type") == "limit" else "stop"
        else:
            choice = (event.get("choices") or [{}])[0]
            delta = choice.get("delta") or {}
            text, think_text = delta.get("content") or "", delta.get("reasoning_content") or ""
            finish = choice.get("finish_reason") or finish
            for call in delta.get("tool_calls") or []:
                into = calls.setdefault(call.get("index", 0), {"function": {
                    "name": "", "arguments": ""}})
                fn = call.get("function") or {}
                into["function"]["name"] += fn.get("name") or ""
                into["function"]["arguments"] += fn.get("arguments") or ""
        content.append(text)
        thinking.append(think_text)
        if stream and (text or think_text):
            await out.line(_piece(name, chat, text, think_text))
    last = _piece(name, chat, "" if stream else "".join(content),
                  "" if stream else "".join(thinking))
    if calls and chat:
        last["message"]["tool_calls"] = convert.tool_calls([calls[i] for i in sorted(calls)])
    last.update(done=True, done_reason=convert.done_reason(finish),
                **convert.stats(timings, usage, trio.current_time() - started, loaded))
    if not stream:
        return await asgi.send_json(send, 200, last)
    await out.line(last)
    await out.end()


def _piece(name: str, chat: bool, text: str, thinking: str) -> dict[str, Any]:
    """One answer object with `text` (and `thinking`, when there is some)."""
    piece: dict[str, Any] = {"model": name, "created_at": convert.now()}
    if chat:
        piece["message"] = {"role": "assistant", "content": text}
        if thinking:
            piece["message"]["thinking"] = thinking
    else:
        piece["response"] = text
        if thinking:
            piece["thinking"] = thinking
    piece["done"] = False
    return piece
