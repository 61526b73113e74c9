"""Forward one request to a child and stream its response back, chunk by chunk."""

from __future__ import annotations

import logging

import httpx

from . import asgi
from .asgi import Send
from .errors import UpstreamError

log = logging.getLogger("llmd.proxy")

# Hop-by-hop and framing headers are the proxy's own business on each side.
_DROP_REQUEST = {b"host", b"content-length", b"transfer-encoding", b"connection", b"keep-alive",
                 b"accept-encoding", b"upgrade", b"te", b"trailer", b"proxy-authorization",
                 b"authorization", b"x-api-key"}
_DROP_RESPONSE = {"server", "transfer-encoding", "connection", "keep-alive", "date"}

# What a pooled keep-alive connection that the child already closed looks like to httpx.
_STALE_CONNECTION = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)


def upstream_client() -> httpx.AsyncClient:
    """The pooled client used to talk to children."""
    # Children speak plain HTTP on loopback: verify=False spares building a TLS context
    # with the CA bundle, ~50 ms of every socket-activated start.
    return httpx.AsyncClient(
        verify=False, trust_env=False,
        timeout=httpx.Timeout(connect=5, read=None, write=60, pool=None),
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
    )


def fresh_client() -> httpx.AsyncClient:
    """A client that never reuses a connection: for the one retry of a stale one."""
    return httpx.AsyncClient(
        verify=False, trust_env=False,
        timeout=httpx.Timeout(connect=5, read=None, write=60, pool=None),
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=0),
    )


class Proxy:
    """Sends requests to children, retrying once when a pooled connection was stale."""

    def __init__(self, client: httpx.AsyncClient, fresh: httpx.AsyncClient) -> None:
        self.client = client
        self.fresh = fresh
        self.retries = 0

    async def _open(self, method: str, url: str, headers: list[tuple[bytes, bytes]],
                    body: bytes) -> httpx.Response:
        request = self.client.build_request(method, url, headers=headers, content=body)
        try:
            return await self.client.send(request, stream=True)
        except _STALE_CONNECTION as exc:
            # cpp-httplib sometimes closes a kept-alive connection without answering the
            # request just sent on it; no byte of a response came, so sending again is safe.
            self.retries += 1
            log.debug("retrying %s %s on a fresh connection after: %r", method, url, exc)
            retry = self.fresh.build_request(method, url, headers=headers, content=body)
            return await self.fresh.send(retry, stream=True)

    async def forward(self, send: Send, method: str, base_url: str, path: str, query: bytes,
                      headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        """Send the request to `base_url` and relay status, headers and body to `send`."""
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
