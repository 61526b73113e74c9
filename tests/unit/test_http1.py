"""The HTTP/1.1 codec llmctl and the child client share (llmd/http1.py)."""

from __future__ import annotations

from llmd import http1


def test_a_request_head_names_its_host_and_length_and_carries_the_body():
    data = http1.request("POST", "/v1/x?a=1", "127.0.0.1:5", [(b"x-a", b"1")], b"{}")
    assert data == (b"POST /v1/x?a=1 HTTP/1.1\r\nhost: 127.0.0.1:5\r\nx-a: 1\r\n"
                    b"content-length: 2\r\n\r\n{}")
    assert http1.request("GET", "/ps", "llmd", [], b"") == b"GET /ps HTTP/1.1\r\nhost: llmd\r\n\r\n"


def test_a_response_is_collected_and_an_interim_100_is_skipped():
    parts = http1.ResponseParts()
    parts.parser.feed_data(b"HTTP/1.1 100 Continue\r\n\r\n")
    assert not parts.head_done
    parts.parser.feed_data(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\n"
                           b"x-b: 2\r\n\r\nbu")
    assert parts.head_done and parts.status == 503 and parts.keep_alive
    assert parts.headers == [(b"content-length", b"4"), (b"x-b", b"2")] and not parts.done
    parts.parser.feed_data(b"sy")
    assert parts.done and b"".join(parts.body) == b"busy"
