"""Bytes and sockets below a connection: the Date header, whole error responses, and
writing and closing a non-blocking socket."""

from __future__ import annotations

import json
import socket
import time
from email.utils import formatdate
from http import HTTPStatus

import trio

from llmd.errors import LlmdError, Unavailable

MAX_RECV = 65536
PHRASES = {status.value: status.phrase.encode() for status in HTTPStatus}


class Date:
    """The Date header's value, made once a second."""

    second = -1
    value = b""

    @classmethod
    def now(cls) -> bytes:
        second = int(time.time())
        if second != cls.second:
            cls.second, cls.value = second, formatdate(second, usegmt=True).encode()
        return cls.value


def error_response(error: LlmdError, *extra: tuple[bytes, bytes]) -> bytes:
    """A whole response carrying `error` in the documented JSON body, closing the connection."""
    body = json.dumps(error.body()).encode()
    headers = b"".join(b"%s: %s\r\n" % pair for pair in extra)
    return (b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\n%scontent-length: %d\r\n"
            b"connection: close\r\ndate: %s\r\n\r\n%s"
            % (error.status, PHRASES.get(error.status, b""), headers, len(body), Date.now(),
               body))


def refusal(most: int) -> bytes:
    """The answer to a connection over the limit."""
    return error_response(Unavailable(f"too many connections (at most {most}); try again "
                                      "shortly"), (b"retry-after", b"1"))


def discard_unread(sock: socket.socket) -> None:
    # Closing a socket with unread bytes resets the connection, and a reset can destroy
    # the answer just sent before the client reads it: read what is there first.
    for _ in range(16):
        try:
            if not sock.recv(MAX_RECV):
                return
        except OSError:
            return


def close(sock: socket.socket) -> None:
    discard_unread(sock)
    trio.lowlevel.notify_closing(sock)
    sock.close()


async def send_rest(sock: socket.socket, rest: bytes | memoryview) -> None:
    """Send what the socket did not take at once, waiting until it can; raises OSError."""
    while rest:
        await trio.lowlevel.wait_writable(sock)
        try:
            rest = rest[sock.send(rest):]
        except BlockingIOError:
            pass


async def finish_refusal(sock: socket.socket, rest: bytes) -> None:
    with trio.move_on_after(1):  # a client that won't read its refusal loses it
        try:
            await send_rest(sock, rest)
        except OSError:
            pass
    close(sock)
