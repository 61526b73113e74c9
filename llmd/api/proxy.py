"""Forward one request to a child and stream its response back, chunk by chunk."""

from __future__ import annotations

import json
import logging

from llmd.api import asgi
from llmd.api.asgi import Send
from llmd.errors import ChildRefused, UpstreamError
from llmd.children.upstream import Response, Upstream, UpstreamBroken

log = logging.getLogger("llmd.proxy")

# Hop-by-hop and framing headers are the proxy's own business on each side. So is CORS:
# llama-server echoes any Origin as allowed; the router decides (origins.py).
_DROP_REQUEST = {b"host", b"content-length", b"transfer-encoding", b"connection", b"keep-alive",
                 b"accept-encoding", b"upgrade", b"te", b"trailer", b"proxy-authorization",
                 b"authorization", b"x-api-key", b"expect", b"origin"}
_DROP_RESPONSE = {b"server", b"transfer-encoding", b"connection", b"keep-alive", b"date",
                  b"access-control-allow-origin", b"access-control-allow-credentials",
                  b"access-control-allow-methods", b"access-control-allow-headers"}


class Proxy:
    """Relays requests to children and their responses back to clients."""

    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream

    @property
    def retries(self) -> int:
        """Requests sent again after a kept-alive connection to a child went stale."""
        return self.upstream.retries

    async def _request(self, method: str, base_url: str, path: str, query: bytes,
                       headers: list[tuple[bytes, bytes]], body: bytes) -> Response:
        target = path + (("?" + query.decode("latin-1")) if query else "")
        upstream_headers = [(k, v) for k, v in headers if k not in _DROP_REQUEST]
        try:
            return await self.upstream.request(method, base_url, target, upstream_headers, body)
        except UpstreamBroken as exc:
            raise UpstreamError(f"model server unreachable: {exc}")

    async def forward(self, send: Send, method: str, base_url: str, path: str, query: bytes,
                      headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        """Send the request to `base_url` and relay status, headers and body to `send`."""
        response = await self._request(method, base_url, path, query, headers, body)
        try:
            out_headers = [(k, v) for k, v in response.headers
                           if k.lower() not in _DROP_RESPONSE]
            await send({"type": "http.response.start", "status": response.status,
                        "headers": out_headers})
            await self._relay(send, response, base_url)
        finally:
            response.close()

    async def forward_body(self, send: Send, method: str, base_url: str, path: str,
                           query: bytes, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        """Relay only the response body into an event stream llmd has already begun;
        raises ChildRefused with the child's message when it answers with an error."""
        response = await self._request(method, base_url, path, query, headers, body)
        try:
            if response.status != 200:
                raise ChildRefused(response.status, child_error(await response.read_all()))
            await self._relay(send, response, base_url)
        except UpstreamBroken as exc:
            raise UpstreamError(f"model server stopped mid-response: {exc}")
        finally:
            response.close()

    async def _relay(self, send: Send, response: Response, base_url: str) -> None:
        more = True
        try:
            while more and (chunk := await response.read()):
                # The last piece says so itself: one ASGI message fewer per response.
                more = not response.complete
                await send({"type": "http.response.body", "body": chunk, "more_body": more})
        except UpstreamBroken as exc:
            log.warning("upstream %s broke mid-response: %s", base_url, exc)
            # An SSE client gets an error event instead of a silent cut.
            if response.event_stream:
                await asgi.send_event_error(
                    send, UpstreamError("model server stopped mid-response"))
                return
        if more:
            await send({"type": "http.response.body", "body": b""})


def child_error(raw: bytes) -> str:
    """The message of a child's JSON error body, else its text."""
    text = raw.decode("utf-8", "replace")
    try:
        error = json.loads(text).get("error")
        return str(error.get("message") if isinstance(error, dict) else error or text)
    except (ValueError, AttributeError):
        return text.strip() or "the model server refused the request"
