"""Which web pages may use the router: CORS for the origins the operator lists, 403 for
every other page's request, and Host checks against DNS rebinding on loopback.

A browser sends a "simple" cross-origin POST (Content-Type text/plain) without asking
first, so answering CORS preflights is not enough: any request that names a foreign
Origin is refused before a route runs. Clients that are not browsers (curl, the openai
SDK, llmctl) send no Origin and are not affected. A page served by llmd itself (the
status page) has llmd's own origin, which is always allowed.

DNS rebinding points a name the attacker controls at 127.0.0.1: the browser then sends
that name as Host and sees the page as same-origin. While the router listens on a
loopback address, only loopback names and the configured `allowed_hosts` are served.
"""

from __future__ import annotations

import ipaddress
from typing import Sequence
from urllib.parse import urlsplit

from llmd.errors import Forbidden

_LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}
ALLOW_METHODS = b"GET, POST, DELETE, OPTIONS"
ALLOW_HEADERS = b"Authorization, Content-Type, X-Api-Key"
MAX_AGE = b"600"


def is_loopback(host: str) -> bool:
    """Whether a host name or address names this machine's loopback interface."""
    host = host.strip("[]").lower().rstrip(".")
    if host in _LOOPBACK_NAMES or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_name(host_header: str) -> str:
    """The name in a Host header, without its port."""
    if host_header.startswith("["):
        return host_header[1:].split("]", 1)[0]
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header


def check_host(host_header: str | None, server_host: str | None,
               allowed_hosts: Sequence[str]) -> None:
    """Raise Forbidden for a Host that is neither loopback nor allowed, while the router
    itself listens on loopback (elsewhere the operator chose to be reachable)."""
    if server_host is None or not is_loopback(server_host):
        return
    name = host_name(host_header or "").lower()
    if not name or is_loopback(name) or name in {h.lower() for h in allowed_hosts}:
        return
    raise Forbidden(f"Host '{name}' is not served: llmd listens on loopback and takes only "
                    "loopback names and those in allowed_hosts (DNS rebinding)")


def origin_allowed(origin: str, host_header: str | None, cors_origins: Sequence[str]) -> bool:
    """Whether a page of this origin may call the router: llmd's own pages, and those the
    operator listed in cors_origins ("*" lists every origin)."""
    if "*" in cors_origins or origin.rstrip("/") in {o.rstrip("/") for o in cors_origins}:
        return True
    parts = urlsplit(origin)
    return bool(host_header) and parts.netloc.lower() == (host_header or "").lower()


def check_origin(origin: str | None, host_header: str | None,
                 cors_origins: Sequence[str]) -> None:
    """Raise Forbidden for a request from a web page whose origin is not allowed."""
    if origin is None or origin_allowed(origin, host_header, cors_origins):
        return
    raise Forbidden(f"requests from the web page at {origin} are refused; an operator can "
                    "allow it with cors_origins")


def cors_headers(origin: str | None, host_header: str | None,
                 cors_origins: Sequence[str]) -> list[tuple[bytes, bytes]]:
    """The headers a response to an allowed cross-origin request carries (none for an
    origin that is not allowed: its 403 gives a page nothing to read)."""
    if origin is None or not cors_origins or not origin_allowed(origin, host_header,
                                                                 cors_origins):
        return []
    return [(b"access-control-allow-origin", origin.encode()), (b"vary", b"Origin")]


def preflight_headers(requested: str | None) -> list[tuple[bytes, bytes]]:
    """The headers of the answer to an allowed preflight (OPTIONS), beside cors_headers."""
    return [(b"access-control-allow-methods", ALLOW_METHODS),
            (b"access-control-allow-headers",
             requested.encode() if requested else ALLOW_HEADERS),
            (b"access-control-max-age", MAX_AGE), (b"content-length", b"0")]
