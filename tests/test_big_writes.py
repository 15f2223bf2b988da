"""One big ``http.response.body`` message, on every backend, plaintext and TLS.

On asyncio the callback transport hands a big write to the event loop a piece at a time
(``transport/callback.py``) and keeps the rest as a view of the app's bytes: the body
must still arrive whole and in order, a ``Connection: close`` must not cut what was held
back, and the app's ``send`` must wait while the peer does not read (what is held back
counts in the write budget). trio's stream driver must behave the same.
"""

from __future__ import annotations

import ssl
from typing import Any

import anyio
import anyio.abc
import pytest

from quicserve.certs import DevCertificate

from .helpers import client_ssl_context, running_server

pytestmark = pytest.mark.anyio

#: 8 MiB that are not all alike, so a reordered or repeated piece shows.
BODY = bytes(range(256)) * (32 * 1024)
BUDGET = 256 * 1024


def make_app(body: bytes, done: anyio.Event | None = None) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        headers = [(b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        if done is not None:
            done.set()

    return app


async def _open(port: int, tls: ssl.SSLContext | None) -> anyio.abc.ByteStream:
    if tls is None:
        return await anyio.connect_tcp("127.0.0.1", port)
    return await anyio.connect_tcp(
        "127.0.0.1", port, ssl_context=tls, tls_hostname="localhost", tls_standard_compatible=False
    )


async def _read_response(stream: anyio.abc.ByteStream) -> tuple[bytes, bytes]:
    """The head and the body, read until the server closes."""
    data = bytearray()
    while True:
        try:
            data += await stream.receive(65536)
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            break
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    return head, body


@pytest.mark.parametrize("use_tls", [False, True], ids=["plain", "tls"])
async def test_one_big_body_message_arrives_whole_before_the_close(
    tls_files: DevCertificate, use_tls: bool
) -> None:
    # A budget larger than the body: the app's send returns at once, and the close that
    # follows finds most of the body still held back.
    async with running_server(
        make_app(BODY), tls_files if use_tls else None, connection_write_buffer_size=4 * len(BODY)
    ) as server:
        context = client_ssl_context(tls_files) if use_tls else None
        port = server.port("https" if use_tls else "http")
        stream = await _open(port, context)
        async with stream:
            await stream.send(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            # Not reading at first: the server holds most of the body back.
            await anyio.sleep(0.3)
            head, body = await _read_response(stream)
    assert head.startswith(b"HTTP/1.1 200")
    assert len(body) == len(BODY)
    assert body == BODY


async def test_a_big_send_waits_for_a_peer_that_does_not_read() -> None:
    done = anyio.Event()
    big = BODY * 3
    async with running_server(make_app(big, done), connection_write_buffer_size=BUDGET) as server:
        stream = await _open(server.port("http"), None)
        async with stream:
            await stream.send(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            # 24 MiB is more than the budget and the loopback's buffers (4 MiB to send,
            # the unread window) take: the app's send must still be waiting.
            await anyio.sleep(0.5)
            assert not done.is_set()
            head, body = await _read_response(stream)
            with anyio.fail_after(5):
                await done.wait()
    assert head.startswith(b"HTTP/1.1 200")
    assert body == big
