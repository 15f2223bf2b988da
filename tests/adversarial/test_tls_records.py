"""TLS records a client controls: what the server decrypts and holds for it is bounded.

On trio a TLS connection is decrypted by the server itself (``TLSSocketDriver``: an
``ssl.SSLObject`` over memory buffers); on asyncio and uvloop by the event loop's SSL
protocol. Either way:

* ciphertext is read only while the connection wants data: an app that never reads a
  1 GiB upload over TLS holds the client back through TCP (the 64 KiB read-ahead plus at
  most one read of ciphertext), as on plain TCP;
* a request cut into one-byte TLS records (about 22 bytes of record overhead per byte of
  HTTP) is answered like any other, head and body, while others are served.
"""

from __future__ import annotations

import asyncio
import socket

from quicserve.certs import DevCertificate

from ..test_cli import Spawn
from .harness import MAX_RSS_GROWTH_MIB, Prober, Target, serve
from .test_request_bodies import h1_uploads

CONNECTIONS = 20


def test_unread_tls_uploads_are_held_back(
    spawn: Spawn, backend: str, tls_files: DevCertificate
) -> None:
    with serve(spawn, backend, tls_files) as target, Prober(target) as prober:
        sent = asyncio.run(h1_uploads(target, CONNECTIONS, tls=True))
    prober.check()
    # Each connection got the server's read-ahead and the sockets' buffers, nowhere near
    # the 1 GiB it offered (on plain TCP the same attack stops at a few MiB too).
    assert sent < CONNECTIONS * 8 * 1024 * 1024, sent
    assert target.rss_growth_mib() < MAX_RSS_GROWTH_MIB


def _one_byte_records(target: Target, payload: bytes) -> bytes:
    """Send ``payload`` over TLS one byte per record; the whole response (the server
    closes: ``Connection: close``)."""
    context = target.client_context(["http/1.1"])
    with (
        socket.create_connection(("127.0.0.1", target.https), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as sock,
    ):
        for i in range(len(payload)):
            sock.sendall(payload[i : i + 1])  # one SSL_write: one record
        response = b""
        while chunk := sock.recv(65536):
            response += chunk
    return response


def test_one_byte_tls_records_are_answered(
    spawn: Spawn, backend: str, tls_files: DevCertificate
) -> None:
    body = b"b" * 3000
    head = (
        b"POST /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        + b"".join(b"X-Filler-%d: %s\r\n" % (i, b"f" * 40) for i in range(40))
        + b"Content-Length: %d\r\n\r\n" % len(body)
    )
    with serve(spawn, backend, tls_files) as target, Prober(target) as prober:
        responses = [_one_byte_records(target, head + body) for _ in range(3)]
    prober.check()
    for response in responses:
        assert response.startswith(b"HTTP/1.1 200 "), response[:200]
        # The app counted every byte of the body (its answer is chunked).
        assert response.endswith(b"\r\n\r\n4\r\n3000\r\n0\r\n\r\n"), response[-200:]
    assert target.rss_growth_mib() < MAX_RSS_GROWTH_MIB
