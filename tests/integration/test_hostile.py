"""Hostile input: whatever a client sends, llmd answers with a JSON error and keeps serving.

Starts: one llmd (subprocess) for the module, with fake llama-server children, and raw
sockets for what an HTTP client library would refuse to send.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmd.children import chat_template
from tests import load
from tests.helpers import FAKE_SERVER, Llmd

HOSTILE_NAMES = ["../../etc/passwd", "/etc/passwd", "m\x00", "m; rm -rf /", "$(reboot)",
                 "`id`", "m --model /etc/shadow", "a" * 10_000, "owner/repo:Q4_K_M",
                 "..", "m/../m", "-m", "--host=0.0.0.0", "\n", "m\r\nX-Injected: 1"]
ALLOWED = {200, 400, 401, 403, 404, 405, 408, 413, 422, 503}


@pytest.fixture(scope="module")
def llmd(tmp_path_factory) -> Llmd:
    tmp = tmp_path_factory.mktemp("hostile")
    d = Llmd(tmp, {"llama_server": str(FAKE_SERVER), "offline": True, "max_body_mib": 1,
                   "body_timeout": 1, "header_timeout": 1, "max_connections": 64})
    (tmp / "models" / "m.gguf").write_text(json.dumps({}))
    d.start()
    # header_timeout = 1 also closes kept-alive connections after a second: no reuse here.
    d.http = httpx.Client(base_url=d.url, timeout=120, limits=httpx.Limits(
        max_keepalive_connections=0))
    assert d.chat("m").status_code == 200
    yield d
    d.stop()


def children(d: Llmd) -> list[list[str]]:
    """The command lines of llmd's child processes."""
    found = []
    for pid in load.children_of(d.proc.pid, name=None):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]
        except OSError:
            continue
        found.append([a.decode(errors="replace") for a in argv])
    return found


def check_error(response: httpx.Response) -> None:
    assert response.status_code in ALLOWED, (response.status_code, response.text[:300])
    if response.status_code != 200:
        error = response.json()["error"]
        assert error["code"] == response.status_code and error["message"] and error["type"]


def assert_unharmed(d: Llmd) -> None:
    assert d.proc.poll() is None
    assert d.http.get("/health").json() == {"status": "ok"}
    listed = d.http.get("/v1/models").json()
    assert {m["id"] for m in listed.get("data", [])} == {"m"}, listed
    model = str(Path(d.config["models_dir"]) / "m.gguf")
    for argv in children(d):  # only the configured child, with only configured arguments
        argv = argv[argv.index(str(FAKE_SERVER)):]  # the fake runs under its #! interpreter
        assert argv[1:5] == ["--model", model, "--alias", "m"], argv
        configured = list(d.config.get("args", ["--ctx-size", "4096"]))
        assert argv[5:5 + len(configured)] == configured, argv
        # llmd's own, and only these: no --fit pass, the prompt cache it booked, and last
        # a chat template from its table for a GGUF that has none.
        # --metrics (for a gateway's picker through llmd's /metrics), then host and port.
        assert argv[-5:-1] == ["--metrics", "--host", "127.0.0.1", "--port"], argv
        added = argv[5 + len(configured):-5]
        for arch in chat_template.CHOICES:
            chosen = list(chat_template.decide([], (arch, False)).args)
            if added[-len(chosen):] == chosen:
                added = added[:-len(chosen)]
                break
        # keep_prompt_cache: where slots are saved, and the full window cache they need.
        added = [a for a in added if a != "--swa-full"]
        pairs = list(zip(added[::2], added[1::2]))
        assert all(p == ("--fit", "off") or (p[0] == "--cache-ram" and p[1].isdigit())
                   or (p[0] == "--slot-save-path" and "prompt-cache" in p[1])
                   for p in pairs) and len(added) == 2 * len(pairs), argv


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12)
names = st.sampled_from(HOSTILE_NAMES) | st.text(max_size=64) | json_values
bodies = st.one_of(
    st.binary(max_size=256),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({"model": names}, optional={"stream": json_values,
                                                      "messages": json_values,
                                                      "max_tokens": json_values,
                                                      "unknown": json_values})
    .map(lambda v: json.dumps(v).encode()),
)
ROUTER_PATHS = ["/v1/chat/completions", "/v1/completions", "/completion", "/tokenize",
                "/v1/embeddings", "/models/load", "/models/unload", "/nope", "/v1/models"]
CONTROL_PATHS = ["/load", "/unload", "/pull", "/reload", "/status", "/nope"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=st.sampled_from(ROUTER_PATHS), body=bodies, query=st.sampled_from(
    ["", "?autoload=false", "?model=../../etc/passwd", "?model=m", "?reload=x"]))
def test_router_answers_any_body_with_json_and_spawns_nothing_new(llmd, path, body, query):
    response = llmd.http.post(path + query, content=body,
                              headers={"content-type": "application/json"})
    check_error(response)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=st.sampled_from(CONTROL_PATHS), body=bodies)
def test_control_answers_any_body_with_json(llmd, path, body):
    with httpx.Client(transport=httpx.HTTPTransport(uds=llmd.socket), timeout=30) as c:
        response = c.post("http://llmd" + path, content=body)
    check_error(response)


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_model_names_start_nothing(llmd, name):
    check_error(llmd.chat(name))
    for query in ("model", "autoload"):
        check_error(llmd.http.get("/props", params={query: name}))
    with httpx.Client(transport=httpx.HTTPTransport(uds=llmd.socket), timeout=30) as c:
        for path in ("/load", "/unload"):
            check_error(c.post("http://llmd" + path, json={"model": name}))
    assert_unharmed(llmd)


def test_a_body_over_the_limit_gets_413(llmd):
    response = httpx.post(llmd.url + "/v1/chat/completions", content=b"x" * (2 << 20))
    assert response.status_code == 413 and response.json()["error"]["code"] == 413
    assert_unharmed(llmd)


def raw(d: Llmd, data: bytes, wait: float = 5) -> bytes:
    """Send raw bytes on a new connection; everything read until the server closes it."""
    with socket.create_connection(("127.0.0.1", d.port), timeout=wait) as s:
        s.sendall(data)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    return out


@pytest.mark.parametrize("request_bytes", [
    # Both framings: a front proxy and llmd could disagree on where the body ends.
    b"POST /tokenize HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4\r\nTransfer-Encoding: chunked"
    b"\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n",
    b"POST /tokenize HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4\r\nContent-Length: 40\r\n\r\nabcd",
    b"POST /tokenize HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
    b"POST /tokenize HTTP/1.1\r\nHost: localhost\r\n Content-Length: 4\r\n\r\nabcd",
    b"GET /health HTTP/1.1\r\nHost: localhost\r\nBad Header: 1\r\n\r\n",
    b"GET /he\x00alth HTTP/1.1\r\nHost: localhost\r\n\r\n",
    b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: localhost\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(64),  # a TLS hello
])
def test_malformed_http_is_refused_and_nothing_is_smuggled(llmd, request_bytes):
    answer = raw(llmd, request_bytes)
    assert b"/smuggled" not in answer
    statuses = [line.split()[1] for line in answer.split(b"\r\n")
                if line.startswith(b"HTTP/1.1 ")]
    # Refused: an error answer, or (when hypercorn races closing the connection against
    # the answer) a connection closed with nothing. 501 is h11's answer to a transfer
    # coding it does not implement.
    assert all(s.startswith(b"4") or s == b"501" for s in statuses), answer[:300]
    assert statuses or not answer
    for response in answer.split(b"HTTP/1.1 ")[1:]:  # each with the documented JSON body
        error = json.loads(response.split(b"\r\n\r\n", 1)[1].split(b"HTTP/1.1")[0])["error"]
        assert error["code"] == int(response[:3]) and error["message"]
    assert_unharmed(llmd)


def test_pipelined_requests_are_each_answered_in_order(llmd):
    one = b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n"
    last = b"GET /v1/models HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    answer = raw(llmd, one * 3 + last)  # all four in one write
    assert answer.count(b"HTTP/1.1 200") == 4, answer[:500]
    assert answer.count(b'{"status": "ok"}') == 3 and answer.rindex(b'"object": "list"') > \
        answer.rindex(b'{"status": "ok"}')
    assert_unharmed(llmd)


def test_a_client_that_never_stops_sending_does_not_stall_the_others(llmd):
    stop = threading.Event()

    def flood() -> None:
        with socket.create_connection(("127.0.0.1", llmd.port), timeout=10) as s:
            s.sendall(b"POST /tokenize HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n")
            chunk = b"%x\r\n%s\r\n" % (65536, b"a" * 65536)
            try:
                while not stop.is_set():
                    s.sendall(chunk)
            except OSError:
                pass  # refused with a 413 and closed: llmd is free of it either way

    sender = threading.Thread(target=flood)
    sender.start()
    try:
        time.sleep(0.2)
        for _ in range(5):
            start = time.monotonic()
            assert llmd.http.get("/health").json() == {"status": "ok"}
            assert time.monotonic() - start < 5
    finally:
        stop.set()
        sender.join()
    assert_unharmed(llmd)


def test_slow_loris_headers_are_cut_off(llmd):
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", llmd.port), timeout=10) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\n")
        closed = False
        for _ in range(40):
            try:
                s.sendall(b"X-Slow: 1\r\n")
                time.sleep(0.2)
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
    assert closed and time.monotonic() - start < 5  # header_timeout = 1
    assert_unharmed(llmd)


def test_slow_body_gets_408(llmd):
    start = time.monotonic()
    answer = raw(llmd, b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\n"
                       b"Content-Length: 100\r\n\r\n{\"model\": ", wait=10)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["code"] == 408
    assert time.monotonic() - start < 5  # body_timeout = 1
    assert_unharmed(llmd)


def test_thousands_of_idle_connections_are_refused_past_the_limit(daemon):
    llmd = daemon({"llama_server": str(FAKE_SERVER), "header_timeout": 60,
                   "max_connections": 64}, models={"m.gguf": json.dumps({})})
    held = []
    try:
        for _ in range(2000):
            held.append(socket.create_connection(("127.0.0.1", llmd.port), timeout=10))
        refused = 0
        for s in held[-100:]:  # the last ones are over max_connections = 64
            answer = s.recv(4096)
            if answer.startswith(b"HTTP/1.1 503"):
                assert b"retry-after: 1" in answer
                assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["code"] == 503
                refused += 1
        assert refused == 100
    finally:
        for s in held:
            s.close()
    # Once the idle ones are gone, the router serves again.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if llmd.http.get("/health").status_code == 200:
                break
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    assert llmd.chat("m").status_code == 200
    assert_unharmed(llmd)


def test_connections_closed_by_their_clients_are_released_at_once(daemon):
    d = daemon({"llama_server": str(FAKE_SERVER), "header_timeout": 60},
               models={"m.gguf": json.dumps({})})
    for _ in range(20):
        with httpx.Client(base_url=d.url) as once:
            assert once.post("/tokenize", json={"model": "m", "content": "x"}).status_code == 200
    with httpx.Client(base_url=d.url) as once:
        text = once.get("/metrics").text
    assert "llmd_connections 1\n" in text  # only the one asking


def test_kept_alive_connections_close_when_idle_not_while_busy(daemon):
    d = daemon({"llama_server": str(FAKE_SERVER), "header_timeout": 1},
               models={"m.gguf": json.dumps({"token_delay": 0.3})})
    body = json.dumps({"model": "m", "max_tokens": 6, "messages": []}).encode()
    request = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json"
               b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    with socket.create_connection(("127.0.0.1", d.port), timeout=10) as s:
        for _ in range(2):  # each answer takes ~1.8 s, longer than header_timeout
            s.sendall(request)
            answer = b""
            while b"tok tok tok tok tok tok" not in answer:
                answer += s.recv(65536)
            assert answer.startswith(b"HTTP/1.1 200")
        idle_since = time.monotonic()
        assert s.recv(65536) == b""  # then closed for being idle past header_timeout
        assert time.monotonic() - idle_since < 5
