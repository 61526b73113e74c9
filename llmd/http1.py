"""The HTTP/1.1 client codec llmd's two clients share: llmctl on the control socket and
llmd to its children. Request heads are written here; responses are parsed by httptools
(llhttp), whose callbacks ResponseParts collects. Light to import: llmctl starts with it.
"""

from __future__ import annotations

from typing import Iterable

import httptools


def request(method: str, target: str, host: str, headers: Iterable[tuple[bytes, bytes]],
            body: bytes) -> bytes:
    """A whole request: head and body. Header names and values must hold no CR, LF or NUL
    (the router's come from h11, which refused them; llmctl's are its own)."""
    lines = [f"{method} {target} HTTP/1.1\r\nhost: {host}\r\n".encode("latin-1")]
    lines += [b"%s: %s\r\n" % pair for pair in headers]
    if body or method != "GET":
        lines.append(b"content-length: %d\r\n" % len(body))
    lines.append(b"\r\n")
    lines.append(body)
    return b"".join(lines)


class ResponseParts:
    """httptools' callbacks for one response, collected: feed `parser` what arrives."""

    __slots__ = ("parser", "status", "headers", "body", "head_done", "keep_alive", "done",
                 "received")

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.head_done = False
        self.keep_alive = False
        self.done = False
        self.received = 0  # bytes fed so far (the child client counts them)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status < 200:  # e.g. 100 Continue: the answer follows
            self.headers.clear()
            return
        self.status = status
        self.head_done = True
        # Asked now: llhttp forgets the answer once the message is complete.
        self.keep_alive = self.parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.done = self.head_done
