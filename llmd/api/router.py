"""The router: llmd's OpenAI- and llama.cpp-router-compatible HTTP surface (ASGI)."""

from __future__ import annotations

import functools
import hmac
import json
import logging
import time
from typing import Any, Callable

from llmd.api import asgi, child_metrics, feedback, follow, ui
from llmd.api.ollama import routes as ollama
from llmd.api import origins
from llmd.api.asgi import Receive, Scope, Send
from llmd.config import Config
from llmd.errors import BadRequest, ConfigError, LlmdError, NotFound, ServerError, Unauthorized
from llmd.server.hangup import cancelled_on_hangup
from llmd.api.metrics import Metrics
from llmd.api.proxy import Proxy
from llmd.models.model import Handle, Model
from llmd.models.scheduler import Scheduler
from llmd.models.state import State

log = logging.getLogger("llmd.router")

PROXIED_POST = frozenset({
    "/v1/chat/completions", "/chat/completions", "/v1/completions", "/completions",
    "/completion", "/infill", "/v1/embeddings", "/embeddings", "/embedding", "/v1/rerank",
    "/rerank", "/v1/reranking", "/reranking", "/tokenize", "/detokenize", "/apply-template",
    "/v1/responses", "/responses", "/v1/messages", "/v1/messages/count_tokens", "/props",
    "/chat/completions/input_tokens", "/v1/chat/completions/input_tokens",
    "/responses/input_tokens", "/v1/responses/input_tokens",
})
PROXIED_GET = frozenset({"/props", "/slots", "/metrics", "/lora-adapters"})
# Routes of Anthropic's Messages API: their clients read errors in Anthropic's shape.
ANTHROPIC_PATHS = frozenset({"/v1/messages", "/v1/messages/count_tokens"})
KNOWN_PATHS = PROXIED_POST | PROXIED_GET | ui.PATHS | ollama.PATHS | {
    "/health", "/v1/health", "/models", "/v1/models", "/models/sse", "/models/load",
    "/models/unload", "/llmd/status", "/llmd/logs", "/llmd/page"}


MAX_WAIT_HEADER = b"x-llmd-max-wait"


def _max_wait(scope: Scope) -> float | None:
    """The request's own wait bound (X-Llmd-Max-Wait: seconds); BadRequest if not a number."""
    given = asgi.header(scope, MAX_WAIT_HEADER)
    if given is None:
        return None
    try:
        seconds = float(given)
    except ValueError:
        raise BadRequest("X-Llmd-Max-Wait must be a number of seconds") from None
    if seconds != seconds or seconds < 0:  # NaN, or negative
        raise BadRequest("X-Llmd-Max-Wait must be a number of seconds, 0 or more")
    return seconds


def autoload_of(params: dict[str, str], default: bool) -> bool:
    """The per-request `?autoload=` value, llama.cpp style: only "true"/"1" mean yes."""
    if "autoload" not in params:
        return default
    return params["autoload"] in ("true", "1")


class Router:
    """The ASGI app on the TCP listener."""

    def __init__(self, config: Config, scheduler: Scheduler, proxy: Proxy,
                 metrics: Metrics) -> None:
        self.config = config
        self.scheduler = scheduler
        self.proxy = proxy
        self.metrics = metrics
        self.reload: Callable[[], object] = lambda: None
        self.started = time.time()

    @functools.cached_property
    def ollama(self) -> ollama.OllamaApi:
        """The /api/* routes, made on first use."""
        return ollama.OllamaApi(self.scheduler, self.proxy.upstream,
                                lambda: self.config.allow_pull)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if await asgi.handled_as_non_http(scope, receive, send):
            return
        started = time.perf_counter()
        status: dict[str, Any] = {"code": 0, "model": "", "sse": False, "ndjson": False}
        anthropic = scope["path"] in ANTHROPIC_PATHS
        in_ollama = scope["path"].startswith("/api/")  # its clients read {"error": "..."}
        origin, host = asgi.header(scope, b"origin"), asgi.header(scope, b"host")
        cors = origins.cors_headers(origin, host, self.config.cors_origins)

        async def tracked_send(message: asgi.Message) -> None:
            if message["type"] == "http.response.start":
                if cors:
                    message = {**message, "headers": [*message.get("headers", []), *cors]}
                status["code"] = message["status"]
                kind = next((v for k, v in message.get("headers", [])
                             if k.lower() == b"content-type"), b"")
                status["sse"] = kind.startswith(b"text/event-stream")
                status["ndjson"] = kind.startswith(b"application/x-ndjson")
            await send(message)

        try:
            await self._dispatch(scope, receive, tracked_send, status, origin, host)
        except asgi.ClientGone:
            status["code"] = status["code"] or 499
        except LlmdError as error:
            if status["sse"]:  # a stream cut short ends with an error event, not mid-air
                await asgi.send_event_error(send, error, anthropic)
            elif status["ndjson"]:  # Ollama's streams end with an error line
                await send({"type": "http.response.body", "more_body": False,
                            "body": json.dumps({"error": error.message}).encode() + b"\n"})
            elif status["code"]:
                raise  # the response already started; nothing clean left to say
            elif in_ollama:
                await asgi.send_json(tracked_send, error.status, {"error": error.message},
                                     error.headers)
            else:
                await asgi.send_error(tracked_send, error, anthropic)
        except Exception:  # a bug: say so in the documented format, keep serving
            log.exception("request %s %s failed", scope["method"], scope["path"])
            if status["code"]:
                raise
            await asgi.send_error(tracked_send, ServerError("internal error; see llmd's log"),
                                  anthropic)
        finally:
            # Label values are bounded to known models and routes, whatever clients send.
            model = status["model"] if status["model"] in self.scheduler.models else ""
            path = scope["path"] if scope["path"] in KNOWN_PATHS else "other"
            self.metrics.request(model, path, status["code"] or 499, time.perf_counter() - started)

    def _check_key(self, scope: Scope) -> None:
        keys = [k.encode() for k in self.config.api_keys]
        if not keys or scope["path"] in ("/health", "/v1/health"):
            return
        given = asgi.header(scope, b"x-api-key")
        auth = asgi.header(scope, b"authorization")
        if auth and auth[:7].lower() == "bearer ":
            given = auth[7:].strip()
        candidate = (given or "").encode()
        # Compare against every key, always, so timing says nothing about which matched.
        if not any([hmac.compare_digest(candidate, key) for key in keys]) or not given:
            raise Unauthorized("invalid or missing API key")

    def _check_page(self, scope: Scope, origin: str | None, host: str | None) -> None:
        """Refuse web pages the operator did not allow, and rebound host names."""
        server = scope.get("server")
        origins.check_host(host, server[0] if server else None, self.config.allowed_hosts)
        origins.check_origin(origin, host, self.config.cors_origins)

    async def _preflight(self, scope: Scope, send: Send, origin: str | None) -> None:
        """Answer a browser's CORS preflight for an allowed origin."""
        if origin is None:
            raise NotFound(f"no route for OPTIONS {scope['path']}")
        requested = asgi.header(scope, b"access-control-request-headers")
        await send({"type": "http.response.start", "status": 200,
                    "headers": origins.preflight_headers(requested)})
        await send({"type": "http.response.body", "body": b""})

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send,
                        status: dict[str, Any], origin: str | None, host: str | None) -> None:
        asgi.check_framing(scope)
        self._check_page(scope, origin, host)
        method, path = scope["method"], scope["path"]
        if method == "OPTIONS":  # before the key check: browsers send none with it
            return await self._preflight(scope, send, origin)
        if method == "GET" and path in ui.PATHS:  # the page: no data, only the key prompt
            return await ui.send_file(send, path)
        if method == "GET" and path == "/llmd/page":  # whether the page must ask for a key
            return await asgi.send_json(send, 200, {"key_required": bool(self.config.api_keys)})
        self._check_key(scope)
        params = asgi.query(scope)
        if path.startswith("/api/"):
            body = await self._body(scope, receive) if method in ("POST", "DELETE") else b""
            max_wait = _max_wait(scope)
            with cancelled_on_hangup(scope, send) as send:
                return await self.ollama.handle(send, method, path, body, status, max_wait)
        if method == "GET":
            if path in ("/health", "/v1/health"):
                if self.scheduler.closing:  # a gateway should send work elsewhere now
                    return await asgi.send_json(send, 503, {"status": "shutting down"},
                                                {"retry-after": "5"})
                return await asgi.send_json(send, 200, {"status": "ok"})
            if path in ("/models", "/v1/models"):
                if params.get("reload"):
                    try:
                        self.reload()
                    except ConfigError as exc:
                        raise ServerError(f"reload failed: {exc}")
                return await asgi.send_json(send, 200, {"object": "list",
                                                        "data": self.scheduler.snapshot()})
            if path == "/models/sse":
                return await self._events(scope, send)
            if path == "/llmd/status":
                return await asgi.send_json(send, 200, ui.status(self.scheduler, self.metrics,
                                                                 self.started))
            if path == "/llmd/logs":
                followed, lines = follow.asked(self.scheduler, params)
                return await follow.stream(scope, send, followed, lines)
            if path.startswith(("/v1/models/", "/models/")) and path.count("/") >= 2:
                # OpenAI's models.retrieve; a name may hold slashes (owner/repo:QUANT).
                name = path.split("/models/", 1)[1]
                found = self.scheduler.resolve(name, status=404)
                if self.scheduler.listed(found):
                    return await asgi.send_json(send, 200, self.scheduler.describe(found))
                raise NotFound(f"model '{name}' not found")
            if path in PROXIED_GET and params.get("model"):
                status["model"] = params["model"]
                body = await self._body(scope, receive)
                return await self._proxy(scope, receive, send, params["model"], body,
                                         autoload_of(params, self.config.autoload))
            if path == "/props":
                return await asgi.send_json(send, 200, self._props())
            if path == "/metrics":
                # Only loaded children are asked, and only for SCRAPE_TIMEOUT at most.
                children = await child_metrics.scrape(self.proxy.upstream,
                                                      list(self.scheduler.models.values()))
                text = self.metrics.render(self.scheduler, self.proxy.retries, children)
                return await asgi.send_text(send, 200, text, b"text/plain; version=0.0.4")
            if path in PROXIED_GET:
                raise BadRequest("model name is missing from the request")
        elif method == "POST":
            if path in ("/models/load", "/models/unload"):
                return await self._load_unload(scope, receive, send, path)
            if path in PROXIED_POST:
                body = await self._body(scope, receive)
                request = asgi.json_object(body)
                model = request.get("model")
                if not isinstance(model, str) or not model:
                    raise BadRequest("model name is missing from the request")
                status["model"] = model
                return await self._proxy(scope, receive, send, model, body,
                                         autoload_of(params, self.config.autoload), request)
        raise NotFound(f"no route for {method} {path}")

    async def _body(self, scope: Scope, receive: Receive, limit: int | None = None) -> bytes:
        return await asgi.read_body(scope, receive, limit or self.config.max_body_mib << 20,
                                    self.config.body_timeout)

    async def _proxy(self, scope: Scope, receive: Receive, send: Send, model: str, body: bytes,
                     autoload: bool, request: dict[str, Any] | None = None) -> None:
        method, path, query = scope["method"], scope["path"], scope.get("query_string", b"")
        max_wait = _max_wait(scope)
        with cancelled_on_hangup(scope, send) as send:
            target = self._narrate(scope, model, request or {}) if autoload else None
            if target is not None:
                async def forward(into: Send, handle: Handle) -> None:
                    await self.proxy.forward_body(into, method, handle.base_url, path, query,
                                                  scope["headers"], body)
                return await feedback.narrated(
                    send, target, model,
                    lambda: self.scheduler.lease(model, autoload=autoload, max_wait=max_wait),
                    forward, anthropic=path in ANTHROPIC_PATHS)
            async with self.scheduler.lease(model, autoload=autoload,
                                            max_wait=max_wait) as handle:
                await self.proxy.forward(send, method, handle.base_url, path, query,
                                         scope["headers"], body)

    def _narrate(self, scope: Scope, name: str, request: dict[str, Any]) -> Model | None:
        """The model whose load this request waits for with loading feedback, if it does."""
        if not feedback.streaming_chat(scope["path"], request):
            return None  # the common case, decided without reading a header
        model = self.scheduler.resolve(name, status=400, pull=self.scheduler.allow_pull)
        setting = model.spec.loading_feedback
        on = self.config.loading_feedback if setting is None else setting
        if model.state is State.LOADED or not feedback.asked(
                asgi.header(scope, feedback.HEADER), on):
            return None
        return model

    async def _load_unload(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        body = asgi.json_object(await self._body(scope, receive, 1 << 20))
        name = body.get("model")
        if not isinstance(name, str) or not name:
            raise BadRequest("model name is missing from the request")
        if path == "/models/load":
            await self.scheduler.load(name, wait=False)
        else:
            self.scheduler.resolve(name, status=400)
            # llmd's addition: "force" cancels the requests in flight (llmctl unload --force).
            await self.scheduler.unload(name, force=body.get("force") is True, wait=False)
        await asgi.send_json(send, 200, {"success": True})

    async def _events(self, scope: Scope, send: Send) -> None:
        with cancelled_on_hangup(scope, send) as send:
            await asgi.event_stream(send, self.scheduler.subscribe())

    def _props(self) -> dict[str, Any]:
        return {
            "role": "router",
            "max_instances": self.config.models_max,
            "models_autoload": self.config.autoload,
            "model_alias": "llmd",
            "model_path": "none",
            "default_generation_settings": {"params": {}, "n_ctx": 0},
        }
