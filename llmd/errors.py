"""Error types that cross the wire: each maps to one HTTP status and one error type."""

from __future__ import annotations

from typing import Any


class LlmdError(Exception):
    """An error a client sees as `{"error": {"code", "message", "type"}}`."""

    status: int = 500
    type: str = "server_error"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        """The documented JSON error body."""
        return {"error": {"code": self.status, "message": self.message, "type": self.type}}

    def anthropic_body(self) -> dict[str, Any]:
        """The error in Anthropic's Messages API shape, for its clients."""
        kind = _ANTHROPIC_TYPES.get(self.status,
                                    "invalid_request_error" if self.status < 500 else "api_error")
        return {"type": "error", "error": {"type": kind, "message": self.message}}


_ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error",
                    403: "permission_error", 404: "not_found_error", 413: "request_too_large",
                    429: "rate_limit_error", 503: "overloaded_error"}


class BadRequest(LlmdError):
    status = 400
    type = "invalid_request_error"


class Unauthorized(LlmdError):
    status = 401
    type = "authentication_error"


class Forbidden(LlmdError):
    status = 403
    type = "authentication_error"


class NotFound(LlmdError):
    status = 404
    type = "not_found_error"


class ModelNotFound(NotFound):
    """A model name that is neither configured, scanned nor an alias."""

    def __init__(self, name: str, *, status: int = 404, why: str = "not found") -> None:
        super().__init__(f"model '{name}' {why}")
        self.name = name
        # llama.cpp answers 400 on proxied endpoints and 404 on /models/load.
        self.status = status
        if status == 400:
            self.type = "invalid_request_error"


class BodyTooLarge(LlmdError):
    status = 413
    type = "invalid_request_error"


class MalformedRequest(LlmdError):
    """What h11 could not parse: bad framing, bad headers, too long a head."""

    type = "invalid_request_error"

    def __init__(self, status: int) -> None:
        super().__init__("malformed HTTP request")
        self.status = status


class RequestTimeout(LlmdError):
    """The client took longer than body_timeout to send its request body."""

    status = 408
    type = "invalid_request_error"


class Unavailable(LlmdError):
    status = 503
    type = "unavailable_error"


class ModelNotLoaded(BadRequest):
    """The model exists but is not loaded and autoload is off for this request (400, as
    llama.cpp's router answers)."""

    def __init__(self, name: str) -> None:
        super().__init__(f"model '{name}' is not loaded and autoload is disabled")


class ModelFailed(Unavailable):
    """The model's child exited or timed out while loading."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"model '{name}' failed to load: {reason}")
        self.name = name
        self.reason = reason


class ModelUnloaded(Unavailable):
    """The model was unloaded (or llmd is stopping) before the request was done."""

    def __init__(self, name: str, why: str = "was unloaded") -> None:
        super().__init__(f"model '{name}' {why} before the request was done")


class NoRoom(Unavailable):
    """No idle model could be evicted in time to make room for a load."""

    def __init__(self, message: str, retry_after: int = 5) -> None:
        super().__init__(message, headers={"retry-after": str(retry_after)})


class QueueFull(LlmdError):
    """As many requests wait for the model as max_queue allows: this one is refused at once."""

    status = 429
    type = "rate_limit_error"

    def __init__(self, name: str, waiting: int, retry_after: int) -> None:
        super().__init__(f"model '{name}' has {waiting} requests waiting (max_queue); try "
                         "again later or another host", headers={"retry-after": str(retry_after)})


class NotSoon(Unavailable):
    """The model could serve this request only after a longer wait than the request allows
    (max_wait, or the X-Llmd-Max-Wait header)."""

    def __init__(self, name: str, why: str, retry_after: int) -> None:
        super().__init__(f"model '{name}' can't serve this request within its wait bound: "
                         f"{why}", headers={"retry-after": str(retry_after)})


class TooBig(LlmdError):
    """The model can't fit on this machine even with every other model unloaded."""

    status = 507
    type = "unavailable_error"


class ServerError(LlmdError):
    status = 500
    type = "server_error"


class UpstreamError(LlmdError):
    status = 502
    type = "server_error"


class ChildRefused(LlmdError):
    """The model's server answered with an error where llmd had already begun the response
    (a narrated load): its status and message, as the stream's error event."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.type = "invalid_request_error" if status < 500 else "server_error"


class ConfigError(Exception):
    """A configuration problem, reported as one line naming the file and key."""

    def __init__(self, source: str, key: str, problem: str) -> None:
        where = f"{source}: {key}" if key else source
        super().__init__(f"{where}: {problem}")
        self.source = source
        self.key = key
        self.problem = problem
