"""The status page: its static files from the package, and the one JSON read it polls.

The page (llmd/web/) is plain HTML, CSS and JavaScript: no build step, nothing fetched
from elsewhere. It reads /llmd/status every few seconds and /models/sse as it happens;
its buttons call POST /models/load and /models/unload, so API keys apply to them as to
any client. The files themselves need no key: they hold no data, only the key prompt.
"""

from __future__ import annotations

import functools
import time
from importlib import resources
from typing import TYPE_CHECKING, Any

from llmd.api.asgi import Send

if TYPE_CHECKING:
    from llmd.api.metrics import Metrics
    from llmd.models.scheduler import Scheduler

_FILES = {
    "/": ("index.html", b"text/html; charset=utf-8"),
    "/ui": ("index.html", b"text/html; charset=utf-8"),
    "/ui/": ("index.html", b"text/html; charset=utf-8"),
    "/ui/app.js": ("app.js", b"text/javascript; charset=utf-8"),
    "/ui/style.css": ("style.css", b"text/css; charset=utf-8"),
}
PATHS = frozenset(_FILES)
# The page runs only its own files and talks only to this origin.
_POLICY = (b"default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
           b"img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


@functools.cache
def _read(name: str) -> bytes:
    return (resources.files("llmd") / "web" / name).read_bytes()


async def send_file(send: Send, path: str) -> None:
    """Answer GET `path` (one of PATHS) with its file."""
    name, kind = _FILES[path]
    body = _read(name)
    await send({"type": "http.response.start", "status": 200, "headers": [
        (b"content-type", kind), (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-cache"), (b"content-security-policy", _POLICY),
        (b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer")]})
    await send({"type": "http.response.body", "body": body})


def status(scheduler: Scheduler, metrics: Metrics, started: float) -> dict[str, Any]:
    """What the page shows beside the event stream: every model, every device's books,
    and llmd's own counters (the page works out the request rate from two reads)."""
    models = scheduler.snapshot()
    return {
        "time": time.time(),
        "uptime": round(time.time() - started, 3),
        "models": models,
        "devices": scheduler.admission.device_table(),
        # Requests for models only: the page's own reads would count themselves.
        "requests_total": sum(n for (model, _, _), n in metrics.requests.items() if model),
        "in_flight": sum(m["leases"] for m in models),
        "waiting": sum(m["waiters"] for m in models),
        "queue": len(scheduler.admission.queue),
        "loads": scheduler.loads,
        "evictions": scheduler.admission.evictions,
        "models_max": scheduler.admission.models_max,
    }
