"""A small client for llmd's control socket (HTTP+JSON over a Unix socket)."""

from __future__ import annotations

import errno
import json
import os
from typing import Any, Iterator

import httpx

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


class Client:
    """Calls on the control socket; every failure becomes a ClientError with a clear message."""

    def __init__(self, socket_path: str, timeout: float | None = None) -> None:
        self.socket_path = socket_path
        self._http = httpx.Client(transport=httpx.HTTPTransport(uds=socket_path),
                                  base_url="http://llmd", timeout=timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.close()

    def _explain(self, exc: Exception) -> ClientError:
        cause: BaseException = exc
        for _ in range(8):  # httpx -> httpcore -> OSError: find the OS-level reason
            if isinstance(cause, OSError) or (cause.__cause__ or cause.__context__) is None:
                break
            cause = cause.__cause__ or cause.__context__  # type: ignore[assignment]
        code = getattr(cause, "errno", None)
        if code in (errno.ENOENT, errno.ECONNREFUSED) or isinstance(
                cause, (FileNotFoundError, ConnectionRefusedError)):
            return ClientError(
                f"llmd is not running (nothing listens on {self.socket_path}); start it with "
                "`systemctl start llmd.socket` or `llmd`, or point --socket/$LLMD_SOCKET at it")
        if code == errno.EACCES or isinstance(cause, PermissionError):
            return ClientError(f"permission denied on {self.socket_path}: "
                               "ask to join the llmd group or use sudo")
        return ClientError(f"cannot talk to llmd on {self.socket_path}: {cause}")

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """One request; the decoded JSON answer, or DaemonError with llmd's message."""
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise self._explain(exc) from None
        data = response.json() if response.content else {}
        if response.status_code >= 400:
            message = data.get("error", {}).get("message", response.text) if isinstance(
                data, dict) else response.text
            raise DaemonError(response.status_code, message)
        return data

    def events(self, then: tuple[str, dict[str, Any]] | None = None) -> Iterator[dict[str, Any]]:
        """State-change events as they happen; `then` = (path, body) is POSTed once subscribed."""
        try:
            with self._http.stream("GET", "/events") as response:
                lines = response.iter_lines()
                next(lines, None)  # the stream's opening comment: we are subscribed
                if then is not None:
                    yield {"event": "answer", "data": self.call("POST", then[0], json=then[1])}
                for line in lines:
                    if line.startswith("data: "):
                        yield json.loads(line[6:])
        except httpx.TransportError as exc:
            raise self._explain(exc) from None
