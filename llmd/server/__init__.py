"""The HTTP/1.1 server llmd owns: trio for the sockets, h11 for the protocol.

`serve(app, listener, settings, limit, shutdown)` serves one listening socket (the TCP
router, the Unix control socket, or either passed by systemd) to one ASGI app. Each
connection is one task that reads its socket itself and calls the app in that task for
each request in turn; one more task per connection watches for the client going while
the app works. Its contract, each point pinned by tests/unit/test_server.py:

1. Connection limit. At most `limit.most` connections per listener are served at once;
   one more is answered `503` with the documented JSON error body, `retry-after: 1` and
   `connection: close`, and closed, before any of its bytes are read. `limit.current`
   (open now) and `limit.refused` (refused so far) are what /metrics reports.
2. Time limits. A connection that has not sent a whole request head `header_timeout`
   seconds after it opened (slow loris), or `keepalive_timeout` seconds after its last
   response (idle keep-alive), is closed. A request's body is timed by the app
   (asgi.read_body, `body_timeout`, 408): `receive` offers `nowait()` so a body that came
   whole needs no timer.
3. Malformed requests. What h11 refuses is answered with its status (400, 431 for too
   long a head, 501 for a transfer coding other than chunked) and the documented body
   `{"error": {"code", "message", "type"}}`, then the connection is closed. A request
   with both Content-Length and Transfer-Encoding gets 400 and a close: a proxy in front
   could read the other framing, and what follows could be a smuggled request.
4. One write for a sized response. A response whose head declares Content-Length goes
   out with (the start of) its body in one write; a head without one (a stream) goes out
   at once. Body chunks go out as they come, with no copy and no extra task.
5. Hang-ups. The moment a client goes (its socket reads end or a write fails), the
   scopes its requests registered with `hangup.cancelled_on_hangup(scope, send)` are
   cancelled, mid-request or mid-stream, without waiting for a timeout; `receive()` then
   answers `http.disconnect`, and later sends are dropped.
6. Peer credentials. On a Unix socket the peer's pid, uid and gids (SO_PEERCRED) are in
   every request's scope as `scope["extensions"]["peercred"]` (peercred.Peer; None on
   TCP).
7. Graceful shutdown. When `shutdown` is set the listener is no longer accepted from and
   idle connections close; requests in flight may finish for `shutdown_timeout` seconds
   (their connections close after their response), then they are cancelled; one that had
   not started its response is answered 503 "llmd is shutting down". (The daemon ends
   leases just before that, so streams end with an error event.)
8. Status lines carry reason phrases: `HTTP/1.1 400 Bad Request`. Responses carry a Date.

Nothing here patches another library: h11 is used through its public API only.
"""

from __future__ import annotations

from llmd.server.listener import Limit, Settings, serve

__all__ = ["Limit", "Settings", "serve"]
