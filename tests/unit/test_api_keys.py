"""API keys: every key is compared, in constant time, whichever one matches."""

from __future__ import annotations

import hmac

import pytest

from llmd.config import parse
from llmd.errors import Unauthorized
from llmd.api.metrics import Metrics
from llmd.api.router import Router


def scope(headers: dict[str, str], path: str = "/v1/models") -> dict:
    return {"path": path, "headers": [(k.encode(), v.encode()) for k, v in headers.items()]}


def test_every_key_is_compared_whichever_matches(monkeypatch):
    router = Router(parse({"api_keys": ["k1", "k2", "k3"]}), None, None, None)  # type: ignore
    calls = []
    compare = hmac.compare_digest

    def counting(a, b):
        calls.append(b)
        return compare(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)
    router._check_key(scope({"authorization": "Bearer k1"}))
    assert calls == [b"k1", b"k2", b"k3"]  # no early exit on the first match
    calls.clear()
    with pytest.raises(Unauthorized):
        router._check_key(scope({"x-api-key": "nope"}))
    assert len(calls) == 3


def test_health_needs_no_key_and_an_empty_key_is_refused():
    router = Router(parse({"api_keys": ["k1"]}), None, None, None)  # type: ignore
    router._check_key(scope({}, "/health"))
    with pytest.raises(Unauthorized):
        router._check_key(scope({"x-api-key": ""}))


async def test_health_says_503_while_llmd_shuts_down():
    class Closing:
        closing = True
        models: dict = {}

    router = Router(parse({}), Closing(), None, Metrics())  # type: ignore[arg-type]
    sent: list = []

    async def send(message) -> None:
        sent.append(message)

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    scope = {"type": "http", "method": "GET", "path": "/health", "headers": [],
             "query_string": b"", "server": ("127.0.0.1", 8080)}
    await router(scope, receive, send)
    assert sent[0]["status"] == 503 and (b"retry-after", b"5") in sent[0]["headers"]
