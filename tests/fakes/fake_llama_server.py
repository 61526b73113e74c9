#!/usr/bin/env python3
"""A fake llama-server for the corner cases a real one can't be made to hit on demand.

Its behaviour comes from the "model file", which holds JSON instead of GGUF:
  load_delay  seconds before /health answers 200        (default 0)
  exit_on_load  exit with this code instead of loading    (default none)
  hang        never become ready                          (default false)
  tokens      tokens per completion                       (default 8)
  token_delay seconds between streamed tokens             (default 0)
  crash_after_tokens  exit(1) after streaming this many   (default none)
  ignore_sigterm  keep running on SIGTERM (so only SIGKILL stops it)
  drop_every  close every Nth kept-alive connection without answering (like cpp-httplib)
"""

from __future__ import annotations

import argparse
import json
import itertools
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

parser = argparse.ArgumentParser()
parser.add_argument("--model", "-m", required=True)
parser.add_argument("--alias", default="fake")
parser.add_argument("--host", default="127.0.0.1")
parser.add_argument("--port", type=int, default=8080)
args, _unknown = parser.parse_known_args()

with open(args.model) as f:
    # The head only: a model padded to a size (tests/integration/test_progress.py) is read
    # in by "grow_mib" below, as llama-server reads its weights, not all at once here.
    behaviour = json.JSONDecoder().raw_decode(f.read(1 << 16).lstrip())[0]
print(f"fake llama-server: model {args.model} behaviour {behaviour}", flush=True)
print(f"fake llama-server: LLAMA_CACHE={os.environ.get('LLAMA_CACHE', '')}", flush=True)
if behaviour.get("exit_on_load") is not None:
    print("fake llama-server: failing to load on purpose", flush=True)
    sys.exit(int(behaviour["exit_on_load"]))

ready = threading.Event()
requests = itertools.count(1)
if behaviour.get("ignore_sigterm"):
    signal.signal(signal.SIGTERM, lambda *_: print("fake llama-server: ignoring SIGTERM", flush=True))


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Each piece of a stream goes out when written, not held back by Nagle's algorithm
    # until the reader's delayed ACK (40 ms on Linux).
    disable_nagle_algorithm = True

    def log_message(self, *a):  # quiet
        pass

    def _json(self, status: int, data: object) -> None:
        body = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path.startswith("/health"):
            if ready.is_set():
                self._json(200, {"status": "ok"})
            else:
                self._json(503, {"error": {"code": 503, "message": "Loading model"}})
        elif self.path.startswith("/props"):
            self._json(200, {"model_alias": args.alias, "pid": os.getpid(),
                             "total_slots": SLOTS})
        elif self.path.startswith("/metrics"):
            text = (f"llamacpp:requests_processing {counts['processing']}\n"
                    f"llamacpp:requests_deferred {counts['deferred']}\n")
            body = text.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif self.path.startswith("/slots"):
            self._json(200, [{"id": i, "n_ctx": 1000, "is_processing": i < counts["processing"],
                              "n_prompt_tokens": 100, "next_token": [{"n_decoded": 50}]}
                             for i in range(SLOTS)])
        else:
            self._json(404, {"error": {"code": 404, "message": "not found"}})

    def do_POST(self) -> None:
        # As llama-server: SLOTS requests at a time, the rest deferred until a slot frees.
        with lock:
            counts["deferred"] += 1
        with slots:
            with lock:
                counts["deferred"] -= 1
                counts["processing"] += 1
            try:
                self._post()
            finally:
                with lock:
                    counts["processing"] -= 1

    def _post(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        body = json.loads(self.rfile.read(length) or b"{}")
        drop = behaviour.get("drop_every")
        if drop and next(requests) % int(drop) == 0:
            self.close_connection = True  # read the request, answer nothing, hang up
            return
        n = body.get("max_tokens")
        if type(n) is not int:  # absent, null or nonsense: the default, as llama-server does
            n = int(behaviour.get("tokens", 8))
        delay = float(behaviour.get("token_delay", 0))
        crash_after = behaviour.get("crash_after_tokens")
        if self.path.endswith("/tokenize"):
            self._json(200, {"tokens": list(range(len(body.get("content", "")))) })
            return
        if not body.get("stream"):
            time.sleep(delay * n)
            self._json(200, {"object": "chat.completion", "model": args.alias, "pid": os.getpid(),
                             "choices": [{"index": 0, "message": {"role": "assistant",
                                                                  "content": "tok " * n}}]})
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for i in range(n):
            if crash_after is not None and i >= int(crash_after):
                os._exit(1)
            chunk = {"choices": [{"index": 0, "delta": {"content": f"tok{i} "}}], "pid": os.getpid()}
            self._chunk(f"data: {json.dumps(chunk)}\n\n".encode())
            time.sleep(delay)
        self._chunk(b"data: [DONE]\n\n")
        self._chunk(b"")

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()


SLOTS = int(behaviour.get("slots", 4))
slots = threading.Semaphore(SLOTS)
lock = threading.Lock()
counts = {"processing": 0, "deferred": 0}


class Server(ThreadingHTTPServer):
    request_queue_size = 1024  # bench/scale.py opens a thousand streams at once


server = Server((args.host, args.port), Handler)
server.daemon_threads = True


held: list[bytearray] = []


def load() -> None:
    if behaviour.get("hang"):
        return
    delay = float(behaviour.get("load_delay", 0))
    # Read the model in as llama-server does: resident memory grows while it loads.
    grow = int(behaviour.get("grow_mib", 0))
    for _ in range(10 if grow else 0):
        held.append(bytearray(os.urandom(1)) * ((grow << 20) // 10))
        time.sleep(delay / 10)
    time.sleep(0 if grow else delay)
    print("fake llama-server: model loaded", flush=True)
    ready.set()


threading.Thread(target=load, daemon=True).start()
print(f"fake llama-server: listening on {args.host}:{args.port}", flush=True)
server.serve_forever()
