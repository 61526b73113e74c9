"""A small client for llmd's control socket (HTTP+JSON over a Unix socket).

llmctl runs once per command, so what it imports is most of its time: httpx (with its TLS
context) cost more than the whole call, and http.client pulls in ssl and the email package.
It writes requests and parses answers with llmd.http1, the codec llmd uses for its children.
"""

from __future__ import annotations

import errno
import json as _json  # call() takes a `json=` keyword, as httpx does
import os
import socket
from typing import Any, Iterator
from urllib.parse import urlencode

import httptools

from llmd import http1

DEFAULT_SOCKET = "/run/llmd/control.sock"


def default_socket(env: "dict[str, str] | os._Environ[str]") -> str:
    """$LLMD_SOCKET, then a user instance's socket if one is there, then the system one."""
    if env.get("LLMD_SOCKET"):
        return env["LLMD_SOCKET"]
    user = os.path.join(env.get("XDG_RUNTIME_DIR", ""), "llmd", "control.sock")
    if os.geteuid() != 0 and env.get("XDG_RUNTIME_DIR") and os.path.exists(user):
        return user
    return DEFAULT_SOCKET


class ClientError(Exception):
    """Something llmctl reports in one line and exits non-zero for."""


class DaemonError(ClientError):
    """llmd answered with an error."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _Response:
    """An answer read from a socket as it arrives (httptools' callbacks collect it)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._parts = http1.ResponseParts()
        self._pending = b""
        while not self._parts.head_done:
            self._feed()
        self.status = self._parts.status

    def _feed(self) -> None:
        data = self._sock.recv(65536)
        if not data:
            raise ConnectionResetError(errno.ECONNRESET, "llmd closed the connection mid-answer")
        self._parts.parser.feed_data(data)

    def read(self) -> bytes:
        """The whole body."""
        while not self._parts.done:
            self._feed()
        return b"".join(self._parts.body)

    def lines(self) -> Iterator[bytes]:
        """The body line by line, each as soon as it has arrived."""
        body = self._parts.body
        while True:
            if body:
                self._pending += b"".join(body)
                body.clear()
                *complete, self._pending = self._pending.split(b"\n")
                yield from complete
            elif self._parts.done:
                return
            else:
                self._feed()


class Client:
    """Calls on the control socket; every failure becomes a ClientError with a clear message."""

    def __init__(self, socket_path: str, timeout: float | None = None) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        self._open: list[socket.socket] = []

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        for sock in self._open:
            sock.close()

    def _explain(self, exc: Exception) -> ClientError:
        code = getattr(exc, "errno", None)
        if code in (errno.ENOENT, errno.ECONNREFUSED):
            return ClientError(
                f"llmd is not running (nothing listens on {self.socket_path}); start it with "
                "`systemctl start llmd.socket` or `llmd`, or point --socket/$LLMD_SOCKET at it")
        if code == errno.EACCES:
            return ClientError(f"permission denied on {self.socket_path}: "
                               "ask to join the llmd group or use sudo")
        return ClientError(f"cannot talk to llmd on {self.socket_path}: {exc}")

    def _send(self, method: str, path: str, params: dict[str, Any] | None,
              json_body: Any) -> _Response:
        query = {k: v for k, v in (params or {}).items() if v is not None}
        target = f"{path}?{urlencode(query)}" if query else path
        body = b"" if json_body is None else _json.dumps(json_body).encode()
        headers = [(b"connection", b"close")]
        if json_body is not None:
            headers.append((b"content-type", b"application/json"))
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._open.append(sock)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.socket_path)
            sock.sendall(http1.request(method, target, "llmd", headers, body))
            return _Response(sock)
        except (OSError, httptools.HttpParserError) as exc:
            raise self._explain(exc) from None

    def call(self, method: str, path: str, params: dict[str, Any] | None = None,
             json: Any = None) -> Any:
        """One request; the decoded JSON answer, or DaemonError with llmd's message."""
        response = self._send(method, path, params, json)
        try:
            raw = response.read()
        except (OSError, httptools.HttpParserError) as exc:
            raise self._explain(exc) from None
        if response.status >= 400:
            self._raise(response.status, raw)
        return _json.loads(raw) if raw else {}

    @staticmethod
    def _raise(status: int, raw: bytes) -> None:
        text = raw.decode("utf-8", "replace")
        try:
            data = _json.loads(text)
        except ValueError:
            data = None
        message = text
        if isinstance(data, dict) and isinstance(data.get("error"), dict):
            message = data["error"].get("message", text)
        raise DaemonError(status, message)

    def events(self, then: tuple[str, dict[str, Any]] | None = None) -> Iterator[dict[str, Any]]:
        """State-change events as they happen; `then` = (path, body) is POSTed once subscribed."""
        return self.stream("/events", None, then)

    def stream(self, path: str, params: dict[str, Any] | None = None,
               then: tuple[str, dict[str, Any]] | None = None) -> Iterator[dict[str, Any]]:
        """The JSON data of a server-sent event stream, as it comes."""
        response = self._send("GET", path, params, None)
        try:
            if response.status >= 400:
                self._raise(response.status, response.read())
            lines = response.lines()
            next(lines, None)  # the stream's opening comment: we are subscribed
            if then is not None:
                yield {"event": "answer", "data": self.call("POST", then[0], json=then[1])}
            for line in lines:
                if line.startswith(b"data: "):
                    yield _json.loads(line[6:])
        except (OSError, httptools.HttpParserError) as exc:
            raise self._explain(exc) from None
