"""A Hugging Face-style hub on loopback: the model API and file downloads with Range.

Modes, per file, for the failures a real hub can't be made to show on demand:
cut_after (close the connection after N bytes, once), corrupt (serve a flipped byte),
delay (seconds per 64 KiB chunk).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class HubRepo:
    files: dict[str, bytes]
    cut_after: dict[str, int] = field(default_factory=dict)
    corrupt: set[str] = field(default_factory=set)
    delay: float = 0.0


class FakeHub:
    """Serve repos until closed; counts file requests and Range requests."""

    def __init__(self) -> None:
        self.repos: dict[str, HubRepo] = {}
        self.file_requests: list[tuple[str, str | None]] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a: object) -> None:
                pass

            def do_GET(self) -> None:
                m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/revision/main(\?.*)?", self.path)
                if m:
                    return hub._api(self, m.group(1))
                m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([0-9a-f]+)/(.+)", self.path)
                if m:
                    return hub._file(self, m.group(1), m.group(3))
                self.send_error(404)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def add(self, repo: str, files: dict[str, Path | bytes], **modes: object) -> HubRepo:
        data = {n: (p.read_bytes() if isinstance(p, Path) else p) for n, p in files.items()}
        self.repos[repo] = HubRepo(data, **modes)  # type: ignore[arg-type]
        return self.repos[repo]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _api(self, h: BaseHTTPRequestHandler, repo: str) -> None:
        r = self.repos.get(repo)
        if r is None:
            body = b'{"error": "Repository not found"}'
            h.send_response(404)
        else:
            siblings = [{"rfilename": n, "size": len(b),
                         "lfs": {"sha256": hashlib.sha256(b).hexdigest(), "size": len(b)}}
                        for n, b in r.files.items()]
            body = json.dumps({"id": repo, "sha": COMMIT, "siblings": siblings}).encode()
            h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    def _file(self, h: BaseHTTPRequestHandler, repo: str, name: str) -> None:
        r = self.repos.get(repo)
        if r is None or name not in r.files:
            h.send_error(404)
            return
        data = r.files[name]
        if name in r.corrupt:
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        rng = h.headers.get("Range")
        self.file_requests.append((name, rng))
        start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1)) if rng else 0
        if start >= len(data):
            h.send_response(416)
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        h.send_response(206 if rng else 200)
        h.send_header("Content-Length", str(len(data) - start))
        if rng:
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        h.end_headers()
        cut = r.cut_after.pop(name, None)
        end = len(data) if cut is None else min(len(data), start + cut)
        for i in range(start, end, 65536):
            h.wfile.write(data[i:min(i + 65536, end)])
            if r.delay:
                import time
                time.sleep(r.delay)
        if cut is not None:
            h.close_connection = True
            h.wfile.flush()
            h.connection.shutdown(2)
