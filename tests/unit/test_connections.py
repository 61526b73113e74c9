"""Which response heads llmd holds back to send with their body."""

from __future__ import annotations

import h11

from llmd.connections import sized_head


def head(status: int, headers: list[tuple[bytes, bytes]]) -> bytes:
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
    conn.next_event()
    event = (h11.Response if status >= 200 else h11.InformationalResponse)
    return conn.send(event(status_code=status, headers=headers))


def test_a_head_that_declares_its_length_is_held_for_its_body():
    assert sized_head(head(200, [(b"content-length", b"12")]))
    assert sized_head(head(404, [(b"Content-Length", b"0")]))


def test_a_stream_head_goes_out_at_once():
    assert not sized_head(head(200, [(b"content-type", b"text/event-stream")]))


def test_an_interim_head_goes_out_at_once():
    assert not sized_head(head(100, []))


def test_body_bytes_are_not_a_head():
    assert not sized_head(b'{"x": "HTTP/1.1 200\r\ncontent-length: 1"}')
