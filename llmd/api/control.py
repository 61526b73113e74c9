"""The control app: HTTP+JSON on the Unix socket, for llmctl and `curl --unix-socket`."""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Callable

from llmd.api import asgi
from llmd.api import follow
from llmd.api.asgi import Receive, Scope, Send
from llmd.config import Config
from llmd.errors import BadRequest, ConfigError, Forbidden, LlmdError, NotFound, ServerError
from llmd.models.scheduler import Scheduler
from llmd.server import peercred
from llmd.server.hangup import cancelled_on_hangup

log = logging.getLogger("llmd.control")


class Control:
    """The ASGI app on the control socket."""

    def __init__(self, config: Config, scheduler: Scheduler) -> None:
        self.config = config
        self.scheduler = scheduler
        self.started = time.time()
        self.reload: Callable[[], dict[str, Any]] = lambda: {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if await asgi.handled_as_non_http(scope, receive, send):
            return
        try:
            await self._dispatch(scope, receive, send)
        except asgi.ClientGone:
            pass
        except LlmdError as error:
            await asgi.send_error(send, error)
        except Exception:  # a bug: say so in the documented format, keep serving
            log.exception("control request %s %s failed", scope["method"], scope["path"])
            await asgi.send_error(send, ServerError("internal error; see llmd's log"))

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        method, path = scope["method"], scope["path"]
        params = asgi.query(scope)
        if method == "GET":
            if path == "/status":
                return await asgi.send_json(send, 200, self._status(params.get("model")))
            if path == "/ps":
                return await asgi.send_json(send, 200, {"models": self.scheduler.snapshot()})
            if path == "/logs" and params.get("follow") in ("1", "true"):
                return await self._follow(scope, send, params)
            if path == "/logs":
                return await asgi.send_json(send, 200, self._logs(params))
            if path == "/events":
                with cancelled_on_hangup(scope, send) as send:
                    await asgi.event_stream(send, self.scheduler.subscribe())
                return
        elif method == "POST":
            self._authorize(scope, path)
        if method == "POST" and path == "/reload":
            try:
                return await asgi.send_json(send, 200, self.reload())
            except ConfigError as exc:
                raise BadRequest(f"reload failed, the running configuration stays: {exc}")
        elif method == "POST" and path in ("/load", "/unload", "/pull"):
            body = asgi.json_object(await asgi.read_body(scope, receive, 1 << 20,
                                                            self.config.body_timeout))
            name = body.get("model")
            if not isinstance(name, str) or not name:
                raise BadRequest("'model' is required")
            wait = body.get("wait", True) is not False
            if path == "/load":
                model = await self._while_connected(
                    scope, send, self.scheduler.load(name, wait=wait))
            elif path == "/pull":
                model = await self._while_connected(
                    scope, send, self.scheduler.pull(name, wait=wait))
            else:
                force = body.get("force", False) is True
                model = await self._while_connected(
                    scope, send, self.scheduler.unload(name, force=force, wait=wait))
            if model is None:
                return
            return await asgi.send_json(send, 200, self.scheduler.describe(model))
        raise NotFound(f"no route for {method} {path}")

    def _authorize(self, scope: Scope, path: str) -> None:
        peer = peercred.of(scope)
        if peercred.may_control(peer, self.config.control_group):
            return
        who = f"uid {peer.uid} pid {peer.pid}" if peer else "an unknown peer"
        log.warning("denied %s from %s (not root, llmd's user or group %r)", path, who,
                    self.config.control_group)
        raise Forbidden(f"{path.strip('/')} needs root, llmd's own user or membership in group "
                        f"'{self.config.control_group}'")

    async def _while_connected(self, scope: Scope, send: Send, work: Any) -> Any:
        # Waiting for a load is cancelled when llmctl goes away; the load itself goes on.
        result = None
        with cancelled_on_hangup(scope, send):
            result = await work
        return result

    def _status(self, name: str | None) -> dict[str, Any]:
        if name:
            return self.scheduler.describe(self.scheduler.resolve(name))
        models = self.scheduler.snapshot()
        return {
            "pid": os.getpid(),
            "uptime": round(time.time() - self.started, 3),
            "listen": self.config.listen,
            "control_socket": self.config.control_socket,
            "models_dir": self.config.models_dir,
            "models_max": self.config.models_max,
            "llama_server": self.config.llama_server,
            "models": len(models),
            "loaded": sum(1 for m in models if m["status"]["value"] == "loaded"),
            "in_flight": sum(m["leases"] for m in models),
            "devices": self.scheduler.admission.device_table(),
            "prompt_cache": {"mib": round(self.scheduler.prompts.kept_bytes() / (1 << 20), 1),
                             "budget_mib": self.config.prompt_cache_budget_mib},
        }

    def _logs(self, params: dict[str, str]) -> dict[str, Any]:
        model, lines = follow.asked(self.scheduler, params)
        return {"model": model.spec.name, "lines": follow.tail(model, lines)}

    async def _follow(self, scope: Scope, send: Send, params: dict[str, str]) -> None:
        await follow.stream(scope, send, *follow.asked(self.scheduler, params))

