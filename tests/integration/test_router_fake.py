"""Router and control behaviour against the real daemon with fake llama-server children.

Starts: llmd (subprocess) + tests/fakes/fake_llama_server.py children. These are the corner
cases a real llama-server can't be made to hit on demand (hang, crash mid-stream), plus
HTTP-surface checks that don't need real tokens.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import threading
import time

import httpx
import pytest

from tests.helpers import pid_alive, wait_until


def fake(**behaviour) -> str:
    return json.dumps(behaviour)


@pytest.fixture
def fake_daemon(daemon, fake_server):
    def start(models: dict, **config):
        return daemon({"llama_server": fake_server, **config}, models=models)
    return start


def loads_total(d) -> int:
    for line in d.http.get("/metrics").text.splitlines():
        if line.startswith("llmd_loads_total "):
            return int(line.split()[1])
    raise AssertionError("no llmd_loads_total")


def test_concurrent_requests_share_one_load(fake_daemon):
    d = fake_daemon({"a.gguf": fake(load_delay=0.5)})
    results = []

    def one():
        results.append(d.chat("a").status_code)

    threads = [threading.Thread(target=one) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [200] * 6
    assert loads_total(d) == 1


def test_child_hanging_on_load_times_out_and_fails(fake_daemon):
    d = fake_daemon({"stuck.gguf": fake(hang=True)}, load_timeout=1)
    response = d.chat("stuck")
    assert response.status_code == 503
    assert "load_timeout" in response.json()["error"]["message"]
    status = d.models()["stuck"]["status"]
    assert status["value"] == "unloaded" and status["failed"] is True


def test_crash_mid_stream_ends_with_an_error_event(fake_daemon):
    d = fake_daemon({"c.gguf": fake(tokens=10, token_delay=0.05, crash_after_tokens=3)})
    body = {"model": "c", "stream": True, "messages": []}
    with d.http.stream("POST", "/v1/chat/completions", json=body) as response:
        events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert len(events) == 4
    assert json.loads(events[-1])["error"]["code"] == 502
    wait_until(lambda: d.models()["c"]["status"]["value"] == "unloaded", 10, "crash noticed")
    assert d.chat("c", stream=False).status_code == 200


def test_client_disconnect_releases_the_lease(fake_daemon):
    d = fake_daemon({"s.gguf": fake(tokens=200, token_delay=0.05)})
    body = {"model": "s", "stream": True, "messages": []}
    with d.http.stream("POST", "/v1/chat/completions", json=body) as response:
        for line in response.iter_lines():
            if line.startswith("data: "):
                assert d.models()["s"]["leases"] == 1
                break
    wait_until(lambda: d.models()["s"]["leases"] == 0, 10, "the lease to end")


def test_client_hanging_up_on_a_silent_request_releases_the_lease(fake_daemon):
    # Nothing is sent to this client until the child answers (after 60 s), so only the
    # hangup itself can end the request.
    d = fake_daemon({"s.gguf": fake(tokens=1200, token_delay=0.05)})
    body = {"model": "s", "messages": []}
    with pytest.raises(httpx.ReadTimeout):
        d.http.post("/v1/chat/completions", json=body, timeout=httpx.Timeout(10, read=2))
    wait_until(lambda: d.models()["s"]["leases"] == 0, 20, "the lease to end")
    assert d.chat("s", stream=False).status_code == 200


def content_length(head: bytes) -> int:
    """The Content-Length a raw response head declares."""
    return int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")))


def test_a_sized_answer_arrives_head_and_body_in_one_segment(fake_daemon):
    # As from llama-server itself: a client reads the whole answer with one recv().
    d = fake_daemon({"a.gguf": fake()})
    d.llmctl("load", "a")
    body = b'{"model": "a", "content": "hello"}'
    requests = [b"GET /health HTTP/1.1\r\nhost: localhost\r\n\r\n",
                b"POST /tokenize HTTP/1.1\r\nhost: localhost\r\ncontent-length: %d\r\n\r\n%s"
                % (len(body), body)]
    with socket.create_connection(("127.0.0.1", d.port), timeout=10) as s:
        for request in requests:
            s.sendall(request)
            answer = s.recv(65536)
            head, _, got = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200") and len(got) == content_length(head) > 0


def test_a_large_answer_to_a_slow_reader_arrives_whole(fake_daemon):
    # Far more than the socket buffers hold: llmd must wait for the client, not drop bytes.
    d = fake_daemon({"a.gguf": fake()})
    d.llmctl("load", "a")
    body = json.dumps({"model": "a", "content": "x" * 1_000_000}).encode()
    with socket.create_connection(("127.0.0.1", d.port), timeout=30) as s:
        s.sendall(b"POST /tokenize HTTP/1.1\r\nhost: localhost\r\ncontent-length: %d\r\n\r\n%s"
                  % (len(body), body))
        time.sleep(1)
        answer = bytearray()
        while b"\r\n\r\n" not in answer:
            answer += s.recv(65536)
        head, _, rest = bytes(answer).partition(b"\r\n\r\n")
        got = bytearray(rest)
        while len(got) < content_length(head):
            got += s.recv(1 << 20)
    assert json.loads(got)["tokens"] == list(range(1_000_000))


@pytest.mark.parametrize("method, path, body, status, kind", [
    ("POST", "/v1/chat/completions", b"{not json", 400, "invalid_request_error"),
    ("POST", "/v1/chat/completions", b"[1, 2]", 400, "invalid_request_error"),
    ("POST", "/v1/chat/completions", b'{"messages": []}', 400, "invalid_request_error"),
    ("POST", "/v1/chat/completions", b'{"model": "nope"}', 400, "invalid_request_error"),
    ("POST", "/models/load", b'{"model": "nope"}', 404, "not_found_error"),
    ("POST", "/models/unload", b'{"model": "nope"}', 400, "invalid_request_error"),
    ("GET", "/slots", b"", 400, "invalid_request_error"),
    ("GET", "/no/such/route", b"", 404, "not_found_error"),
])
def test_bad_requests_get_documented_json_errors(fake_daemon, method, path, body, status, kind):
    d = fake_daemon({"a.gguf": fake()})
    response = d.http.request(method, path, content=body)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["code"] == status and error["type"] == kind and error["message"]


def test_autoload_false_is_honoured(fake_daemon):
    d = fake_daemon({"a.gguf": fake()})
    response = d.http.post("/v1/chat/completions?autoload=false", json={"model": "a"})
    assert response.status_code == 400 and "not loaded" in response.json()["error"]["message"]
    assert d.models()["a"]["status"]["value"] == "unloaded"
    assert d.http.post("/models/load", json={"model": "a"}).json() == {"success": True}
    wait_until(lambda: d.models()["a"]["status"]["value"] == "loaded", 10, "the load")
    assert d.http.post("/v1/chat/completions?autoload=false", json={"model": "a"}).status_code == 200
    assert d.http.post("/models/unload", json={"model": "a"}).json() == {"success": True}
    wait_until(lambda: d.models()["a"]["status"]["value"] == "unloaded", 10, "the unload")


def test_router_props_and_get_proxy(fake_daemon):
    d = fake_daemon({"a.gguf": fake()}, models_max=3)
    props = d.http.get("/props").json()
    assert props["role"] == "router" and props["max_instances"] == 3
    assert props["models_autoload"] is True
    proxied = d.http.get("/props", params={"model": "a"}).json()
    assert proxied["model_alias"] == "a"


def test_api_keys_are_required_except_on_health(fake_daemon):
    d = fake_daemon({"a.gguf": fake()}, api_keys=["sesame"])
    assert d.http.get("/health").status_code == 200
    denied = d.http.get("/v1/models")
    assert denied.status_code == 401 and denied.json()["error"]["type"] == "authentication_error"
    assert d.http.get("/v1/models", headers={"authorization": "Bearer wrong"}).status_code == 401
    assert d.http.get("/v1/models", headers={"authorization": "Bearer sesame"}).status_code == 200
    assert d.http.get("/v1/models", headers={"x-api-key": "sesame"}).status_code == 200


def test_models_list_has_the_router_shape(fake_daemon):
    d = fake_daemon({"a.gguf": fake()})
    body = d.http.get("/models").json()
    assert body["object"] == "list"
    (model,) = body["data"]
    assert model["id"] == "a" and model["object"] == "model" and model["owned_by"]
    assert model["status"]["value"] == "unloaded" and "--model" in model["status"]["args"]
    assert d.http.get("/v1/models").json()["data"][0]["id"] == "a"


def test_control_socket_has_the_configured_mode_and_is_removed(fake_daemon):
    d = fake_daemon({}, control_socket_mode="0600")
    assert stat.S_IMODE(os.stat(d.socket).st_mode) == 0o600
    assert d.stop() == 0
    assert not os.path.exists(d.socket)


def test_llmctl_without_a_daemon_says_so_in_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "llmctl", "--socket", str(tmp_path / "x"),
                             "ps"], capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "llmd is not running" in result.stderr


def test_llmd_with_a_bad_config_exits_with_one_line(tmp_path):
    config = tmp_path / "llmd.toml"
    config.write_text(f'models_dir = "{tmp_path}"\nmodels_max = "x"\n')
    result = subprocess.run([sys.executable, "-m", "llmd", "--config", str(config)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert result.stderr == f"llmd: {config}: models_max: expected int, got str\n"


def test_llmctl_status_and_logs(fake_daemon, tmp_path):
    d = fake_daemon({"a.gguf": fake()}, cache_dir=str(tmp_path / "cache"))
    d.llmctl("load", "a")
    assert f"LLAMA_CACHE={tmp_path / 'cache'}" in d.llmctl("logs", "a").stdout
    status = json.loads(d.llmctl("status", "--json").stdout)
    assert status["models"] == 1 and status["loaded"] == 1
    logs = d.llmctl("logs", "a").stdout
    assert "fake llama-server" in logs
    assert "a: loaded" in d.llmctl("status", "a").stdout
    assert "llmd running" in d.llmctl("status").stdout
    no_wait = d.llmctl("unload", "a", "--no-wait")
    assert no_wait.returncode == 0
    with httpx.Client(transport=httpx.HTTPTransport(uds=d.socket)) as c:
        assert c.post("http://llmd/load", json={"model": "a", "wait": False}).status_code == 200


def metric(d, name: str) -> float:
    for line in d.http.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no metric {name}")


def test_kept_alive_connection_closed_without_answer_is_retried(fake_daemon):
    d = fake_daemon({"flaky.gguf": fake(drop_every=3)})
    for _ in range(12):
        assert d.chat("flaky").status_code == 200
    assert metric(d, "llmd_upstream_retries_total") >= 3


def test_child_ignoring_sigterm_is_killed_after_stop_timeout(fake_daemon):
    d = fake_daemon({"stubborn.gguf": fake(ignore_sigterm=True)}, stop_timeout=1)
    d.llmctl("load", "stubborn")
    pid = d.models()["stubborn"]["pid"]
    d.llmctl("unload", "stubborn")
    assert not pid_alive(pid)
    # It printed this on SIGTERM and was still there to be SIGKILLed after stop_timeout.
    assert "ignoring SIGTERM" in d.llmctl("logs", "stubborn").stdout


def test_llmctl_logs_follow_prints_new_lines_across_restarts(fake_daemon):
    d = fake_daemon({"a.gguf": fake()})
    follower = subprocess.Popen([sys.executable, "-m", "llmctl", "--socket", d.socket, "logs",
                                 "-f", "-n", "0", "a"], stdout=subprocess.PIPE, text=True)
    try:
        seen: list[str] = []

        def saw(text: str, times: int = 1) -> bool:
            return sum(text in line for line in seen) >= times

        reader = threading.Thread(target=lambda: seen.extend(follower.stdout), daemon=True)
        reader.start()
        d.llmctl("load", "a")
        wait_until(lambda: saw("model loaded"), 10, "the first child's lines")
        d.llmctl("unload", "a")
        d.llmctl("load", "a")
        wait_until(lambda: saw("model loaded", 2), 10, "the restarted child's lines")
        assert follower.poll() is None  # still following
    finally:
        follower.terminate()
        follower.wait(10)
    missing = d.llmctl("logs", "-f", "nosuch", check=False)
    assert missing.returncode == 1 and "not found" in missing.stderr


def test_forced_unload_mid_stream_ends_the_stream_with_an_error_event(fake_daemon):
    d = fake_daemon({"s.gguf": fake(tokens=1000, token_delay=0.05)})
    with httpx.stream("POST", d.url + "/v1/chat/completions", timeout=60,
                      json={"model": "s", "stream": True}) as response:
        lines = response.iter_lines()
        next(line for line in lines if line.startswith("data: "))
        d.llmctl("unload", "--force", "s")
        rest = [line for line in lines if line.startswith("data: ")]
    error = json.loads(rest[-1][6:])["error"]
    assert error["code"] == 503 and "was unloaded" in error["message"]


def test_models_sse_streams_state_changes(fake_daemon):
    d = fake_daemon({"a.gguf": fake()})
    seen: list[dict] = []
    with httpx.stream("GET", d.url + "/models/sse", timeout=30) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = response.iter_lines()
        next(lines)  # subscribed
        loader = threading.Thread(target=d.llmctl, args=("load", "a"))
        loader.start()
        for line in lines:
            if line.startswith("data: "):
                seen.append(json.loads(line[6:]))
                if seen[-1]["data"].get("status") == "loaded":
                    break
    # llmctl reads the model once more after "loaded": let it finish before the daemon
    # is stopped under it.
    loader.join(timeout=30)
    assert [e["model"] for e in seen] == ["a"] * len(seen)
    assert seen[0]["data"]["status"] == "loading" and seen[-1]["data"]["status"] == "loaded"


def test_llmctl_events_prints_state_changes_as_json_lines(fake_daemon):
    d = fake_daemon({"a.gguf": fake()})
    follower = subprocess.Popen([sys.executable, "-m", "llmctl", "--socket", d.socket,
                                 "events"], stdout=subprocess.PIPE, text=True)
    try:
        events: list[dict] = []

        def read() -> None:
            for line in follower.stdout:
                events.append(json.loads(line))

        threading.Thread(target=read, daemon=True).start()
        wait_until(lambda: d.llmctl("load", "a") and events, 10, "the first event")
        wait_until(lambda: any(e["data"].get("status") == "loaded" for e in events), 10,
                   "the loaded event")
    finally:
        follower.terminate()
        follower.wait(10)
    assert all(e["model"] == "a" and e["event"] in ("model_status", "status_change")
               for e in events)


def test_a_client_expecting_100_continue_gets_the_childs_answer(fake_daemon):
    d = fake_daemon({"m.gguf": fake()})
    r = d.http.post("/v1/chat/completions", headers={"expect": "100-continue"},
                    json={"model": "m", "messages": [{"role": "user", "content": "x" * 4000}]})
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"]


def test_switching_models_leaves_no_connections_behind(fake_daemon):
    d = fake_daemon({"a.gguf": fake(), "b.gguf": fake()}, models_max=1, min_residency=0)

    def sockets() -> int:
        return sum(1 for fd in os.listdir(f"/proc/{d.proc.pid}/fd")
                   if os.readlink(f"/proc/{d.proc.pid}/fd/{fd}").startswith("socket:"))

    assert d.chat("a").status_code == 200
    before = sockets()
    for name in "ba" * 8:  # every request evicts the other model's child
        assert d.chat(name).status_code == 200
    assert loads_total(d) == 17
    assert sockets() <= before + 2
