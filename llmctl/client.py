"""A small client for llmd's control socket (HTTP+JSON over a Unix socket).

It uses the standard library's http.client rather than httpx: llmctl runs once per command,
and importing httpx (and building its TLS context) cost more than the whole call.
"""

from __future__ import annotations

import errno
import http.client
import json as _json  # call() takes a `json=` keyword, as httpx does
import os
import socket
from typing import Any, Iterator
from urllib.parse import urlencode

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


class _UnixConnection(http.client.HTTPConnection):
    """An HTTP/1.1 connection over a Unix socket."""

    def __init__(self, path: str, timeout: float | None) -> None:
        super().__init__("llmd", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class Client:
    """Calls on the control socket; every failure becomes a ClientError with a clear message."""

    def __init__(self, socket_path: str, timeout: float | None = None) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        self._open: list[_UnixConnection] = []

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        for conn in self._open:
            conn.close()

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
              json_body: Any) -> http.client.HTTPResponse:
        query = {k: v for k, v in (params or {}).items() if v is not None}
        target = f"{path}?{urlencode(query)}" if query else path
        body = None if json_body is None else _json.dumps(json_body).encode()
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn = _UnixConnection(self.socket_path, self.timeout)
        self._open.append(conn)
        try:
            conn.request(method, target, body=body, headers=headers)
            return conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            raise self._explain(exc) from None

    def call(self, method: str, path: str, params: dict[str, Any] | None = None,
             json: Any = None) -> Any:
        """One request; the decoded JSON answer, or DaemonError with llmd's message."""
        response = self._send(method, path, params, json)
        try:
            raw = response.read()
        except (OSError, http.client.HTTPException) as exc:
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
        if response.status >= 400:
            self._raise(response.status, response.read())
        try:
            response.readline()  # the stream's opening comment: we are subscribed
            if then is not None:
                yield {"event": "answer", "data": self.call("POST", then[0], json=then[1])}
            for line in response:
                if line.startswith(b"data: "):
                    yield _json.loads(line[6:])
        except (OSError, http.client.HTTPException) as exc:
            raise self._explain(exc) from None
