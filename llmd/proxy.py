"""Forward one request to a child and stream its response back, chunk by chunk."""

from __future__ import annotations

import logging

from typing import TYPE_CHECKING

from . import asgi
from .asgi import Send
from .errors import UpstreamError

if TYPE_CHECKING:
    import httpx

log = logging.getLogger("llmd.proxy")

# Hop-by-hop and framing headers are the proxy's own business on each side.
_DROP_REQUEST = {b"host", b"content-length", b"transfer-encoding", b"connection", b"keep-alive",
                 b"accept-encoding", b"upgrade", b"te", b"trailer", b"proxy-authorization",
                 b"authorization", b"x-api-key"}
_DROP_RESPONSE = {"server", "transfer-encoding", "connection", "keep-alive", "date"}


class Upstream:
    """The HTTP clients for children, made on first use.

    httpx is imported then, not at start-up: it is ~60 ms of a socket-activated start,
    and the first request that needs it waits for a model load anyway.
    """

    def __init__(self) -> None:
        self._pooled: httpx.AsyncClient | None = None
        self._fresh: httpx.AsyncClient | None = None

    @staticmethod
    def _client(keepalive: int) -> httpx.AsyncClient:
        import httpx

        # Children speak plain HTTP on loopback: no TLS context, no proxy from the env.
        return httpx.AsyncClient(
            verify=False, trust_env=False,
            timeout=httpx.Timeout(connect=5, read=None, write=60, pool=None),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=keepalive))

    @property
    def pooled(self) -> httpx.AsyncClient:
        """The pooled client used to talk to children."""
        if self._pooled is None:
            self._pooled = self._client(64)
        return self._pooled

    @property
    def fresh(self) -> httpx.AsyncClient:
        """A client that never reuses a connection: for the one retry of a stale one."""
        if self._fresh is None:
            self._fresh = self._client(0)
        return self._fresh

    async def __aenter__(self) -> Upstream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close whichever clients were made."""
        for client in (self._pooled, self._fresh):
            if client is not None:
                await client.aclose()
        self._pooled = self._fresh = None


class Proxy:
    """Sends requests to children, retrying once when a pooled connection was stale."""

    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream
        self.retries = 0

    async def _open(self, method: str, url: str, headers: list[tuple[bytes, bytes]],
                    body: bytes) -> httpx.Response:
        import httpx

        client = self.upstream.pooled
        request = client.build_request(method, url, headers=headers, content=body)
        try:
            return await client.send(request, stream=True)
        except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
            # cpp-httplib sometimes closes a kept-alive connection without answering the
            # request just sent on it; no byte of a response came, so sending again is safe.
            self.retries += 1
            log.debug("retrying %s %s on a fresh connection after: %r", method, url, exc)
            fresh = self.upstream.fresh
            retry = fresh.build_request(method, url, headers=headers, content=body)
            return await fresh.send(retry, stream=True)

    async def forward(self, send: Send, method: str, base_url: str, path: str, query: bytes,
                      headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        """Send the request to `base_url` and relay status, headers and body to `send`."""
        import httpx

        url = base_url + path + (("?" + query.decode("latin-1")) if query else "")
        upstream_headers = [(k, v) for k, v in headers if k not in _DROP_REQUEST]
        try:
            response = await self._open(method, url, upstream_headers, body)
        except httpx.TransportError as exc:
            raise UpstreamError(f"model server unreachable: {exc.__class__.__name__}")
        try:
            out_headers = [(k.encode("latin-1"), v.encode("latin-1"))
                           for k, v in response.headers.multi_items()
                           if k.lower() not in _DROP_RESPONSE]
            await send({"type": "http.response.start", "status": response.status_code,
                        "headers": out_headers})
            streaming = response.headers.get("content-type", "").startswith("text/event-stream")
            try:
                async for chunk in response.aiter_raw():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            except httpx.TransportError as exc:
                log.warning("upstream %s broke mid-response: %r", base_url, exc)
                if streaming:  # an SSE client gets an error event instead of a silent cut
                    await asgi.send_event_error(
                        send, UpstreamError("model server stopped mid-response"))
                    return
            await send({"type": "http.response.body", "body": b""})
        finally:
            await response.aclose()
