"""How a TCP connection's bytes move, per backend: the driver each backend gets, the
one-shot wake-ups, and the edges of trio's socket path (``SocketDriver``).

trio serves plain TCP on the socket with ``trio.lowlevel`` (recv and send first, waiting for
readiness only when the kernel says so), TLS through anyio's stream; asyncio and uvloop are
callback-driven. Whatever the path, bytes must arrive whole and in order when the kernel
buffer fills (a partial ``send``), when a request comes in pieces (a wait after a short
read), and the timer task must keep polling and expiring while a request runs long.

Every test runs on asyncio, uvloop and trio (see conftest.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import select
import socket
import ssl
import subprocess
import time
from typing import Any

import anyio
import anyio.abc
import pytest
import sniffio
from anyio.streams.tls import TLSStream

from quicserve.certs import DevCertificate
from quicserve.connection.bytestream import SocketDriver, TLSSocketDriver
from quicserve.connection.callback import CallbackDriver
from quicserve.lowlevel import wakeup_factory

from .helpers import client_ssl_context, running_server

pytestmark = pytest.mark.anyio

BIG = 16 * 1024 * 1024  # more than both loopback socket buffers hold


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    path = scope["path"]
    if path == "/big":
        chunk = bytes(range(256)) * 256  # 64 KiB, not all one byte: order matters
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", str(BIG).encode())],
            }
        )
        for i in range(BIG // len(chunk)):
            more = i < BIG // len(chunk) - 1
            await send({"type": "http.response.body", "body": chunk, "more_body": more})
        return
    if path == "/slow":
        await anyio.sleep(0.7)
    body = path.encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _read_response(stream: anyio.abc.ByteStream, buffer: bytearray) -> bytes:
    """One response with a content-length from ``stream``; what follows stays in ``buffer``."""
    while b"\r\n\r\n" not in buffer:
        buffer += await stream.receive()
    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    body = bytearray(rest)
    while len(body) < length:
        body += await stream.receive()
    buffer[:] = body[length:]
    return bytes(body[:length])


async def test_wakeup_set_before_and_after_wait(anyio_backend: object) -> None:
    new_wakeup = wakeup_factory()
    early = new_wakeup()
    early.set()
    early.set()  # idempotent
    with anyio.fail_after(1):
        await early.wait()  # set before wait: returns

    late = new_wakeup()
    woken: list[str] = []

    async def waiter() -> None:
        await late.wait()
        woken.append("yes")

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        await anyio.wait_all_tasks_blocked()
        assert woken == []
        late.set()
    assert woken == ["yes"]


async def test_wakeup_cancelled_waiter_then_set(anyio_backend: object) -> None:
    wakeup = wakeup_factory()()
    with anyio.move_on_after(0.05) as scope:
        await wakeup.wait()
    assert scope.cancelled_caught
    wakeup.set()  # nobody waits any more: nothing to reschedule, nothing raised
    await anyio.sleep(0.01)


async def test_driver_per_backend(anyio_backend: object, tls_files: DevCertificate) -> None:
    """trio: plain TCP on the socket (SocketDriver), TLS too (TLSSocketDriver: an
    SSLObject over memory buffers); asyncio and uvloop: callback-driven, both."""
    async with running_server(_app, tls=tls_files) as running:
        owners: dict[str, object] = {}
        for address in running.addresses:
            if address.transport != "tcp":
                continue
            tls = address.scheme == "https"
            stream: anyio.abc.ByteStream = await anyio.connect_tcp(address.host, address.port)
            if tls:
                context = client_ssl_context(tls_files)
                stream = await TLSStream.wrap(
                    stream, hostname="localhost", ssl_context=context, standard_compatible=False
                )
            async with stream:
                await stream.send(b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n")
                assert await _read_response(stream, bytearray()) == b"/x"
                records = running.server.registry.records()
                assert len(records) == 1
                owners[address.scheme] = records[0].owner
            with anyio.fail_after(5):
                while running.server.registry.records():
                    await anyio.sleep(0.01)
    if sniffio.current_async_library() == "trio":
        assert type(owners["http"]) is SocketDriver
        assert type(owners["https"]) is TLSSocketDriver
    else:
        assert type(owners["http"]) is CallbackDriver
        assert type(owners["https"]) is CallbackDriver


def _tls_https_port(running: Any) -> int:
    return next(a.port for a in running.addresses if a.transport == "tcp" and a.scheme == "https")


def _close_notify_seen(port: int, tls: DevCertificate) -> tuple[bytes, bool]:
    """A ``Connection: close`` request over TLS; the response, and whether the server's
    end came with a TLS close_notify (a ragged end raises with ragged EOFs not suppressed)."""
    context = client_ssl_context(tls)
    context.set_alpn_protocols(["http/1.1"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost", suppress_ragged_eofs=False) as sock,
    ):
        sock.sendall(b"GET /bye HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        response = b""
        try:
            while chunk := sock.recv(65536):
                response += chunk
        except ssl.SSLEOFError:
            return response, False
    return response, True


async def test_tls_connection_ends_with_close_notify(
    anyio_backend: object, tls_files: DevCertificate
) -> None:
    """RFC 8446 §6.1: the server's TLS closure alert before the socket closes, so a client
    can tell the end of a close-delimited response from a truncation (every backend)."""
    async with running_server(_app, tls=tls_files) as running:
        port = _tls_https_port(running)
        response, clean = await anyio.to_thread.run_sync(_close_notify_seen, port, tls_files)
    assert response.startswith(b"HTTP/1.1 200 ") and response.endswith(b"\r\n\r\n/bye")
    assert clean, "the server closed without a TLS close_notify"


def _openssl_key_update(port: int, tls: DevCertificate) -> str:
    """openssl s_client: TLS 1.3, a KeyUpdate that asks the server to update its keys too
    (the ``K`` command), then a request on the new keys; everything it printed."""
    argv = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "localhost"]
    argv += ["-tls1_3", "-alpn", "http/1.1", "-CAfile", str(tls.ca_certfile)]
    process = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert process.stdin is not None and process.stdout is not None
    output = b""
    try:
        process.stdin.write(b"K\n")
        process.stdin.flush()
        time.sleep(0.5)
        request = b"GET /after-update HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        process.stdin.write(request)
        process.stdin.flush()
        # stdin stays open until the server has answered and closed (s_client quits at
        # the end of its input); then it exits by itself.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            ready, _, _ = select.select([process.stdout], [], [], 0.2)
            if ready:
                chunk = os.read(process.stdout.fileno(), 65536)
                if not chunk:
                    break
                output += chunk
                if b"closed" in output or b"unexpected eof" in output:
                    break
    finally:
        process.stdin.close()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        process.stdout.close()
    return output.decode("latin-1")


@pytest.mark.client("openssl")
async def test_tls13_key_update_requested_by_the_client(
    anyio_backend: object, tls_files: DevCertificate
) -> None:
    """A client's KeyUpdate with update_requested makes the server send its own KeyUpdate
    from the read path (trio: ``TLSSocketDriver`` writes what a read produced); the
    request after it is answered on the new keys, and the connection ends cleanly."""
    async with running_server(_app, tls=tls_files) as running:
        port = _tls_https_port(running)
        output = await anyio.to_thread.run_sync(_openssl_key_update, port, tls_files)
    assert "KEYUPDATE" in output, output
    assert "HTTP/1.1 200 OK" in output and "/after-update" in output, output
    assert "closed" in output and "unexpected eof" not in output, output


async def test_big_body_to_a_slow_reader_arrives_whole(anyio_backend: object) -> None:
    """The socket fills (partial sends, waits for writability); every byte arrives, in
    order, and the next request on the connection is served."""
    chunk = bytes(range(256)) * 256
    expected = hashlib.sha256(chunk * (BIG // len(chunk))).hexdigest()
    async with running_server(_app) as running:
        address = running.addresses[0]
        async with await anyio.connect_tcp(address.host, address.port) as stream:
            await stream.send(
                b"GET /big HTTP/1.1\r\nHost: t\r\n\r\nGET /after HTTP/1.1\r\nHost: t\r\n\r\n"
            )
            await anyio.sleep(0.3)  # let the server fill both socket buffers
            buffer = bytearray()
            with anyio.fail_after(30):
                body = await _read_response(stream, buffer)
                assert hashlib.sha256(body).hexdigest() == expected
                assert await _read_response(stream, buffer) == b"/after"


async def test_request_in_pieces_and_pipelined(anyio_backend: object) -> None:
    """A request split over several writes (short reads, then waits) and a burst of
    pipelined ones in one write are all answered, in order."""
    async with running_server(_app) as running:
        address = running.addresses[0]
        async with await anyio.connect_tcp(address.host, address.port) as stream:
            stream.extra(anyio.abc.SocketAttribute.raw_socket).setsockopt(
                socket.IPPROTO_TCP, socket.TCP_NODELAY, 1
            )
            buffer = bytearray()
            with anyio.fail_after(10):
                for piece in (b"GET /pie", b"ces HTTP/1.1\r\nHo", b"st: t\r\n", b"\r\n"):
                    await stream.send(piece)
                    await anyio.sleep(0.02)
                assert await _read_response(stream, buffer) == b"/pieces"
                await stream.send(
                    b"".join(b"GET /p%d HTTP/1.1\r\nHost: t\r\n\r\n" % i for i in range(50))
                )
                for i in range(50):
                    assert await _read_response(stream, buffer) == b"/p%d" % i


async def test_timer_keeps_polling_through_a_long_request(anyio_backend: object) -> None:
    """With short timeouts the timer task's deadline expires several times while the app
    runs (no protocol deadline then); the response still goes out, the connection is
    still served, and the keep-alive timeout then closes it."""
    async with running_server(_app, keep_alive_timeout=0.2, header_read_timeout=0.2) as running:
        address = running.addresses[0]
        async with await anyio.connect_tcp(address.host, address.port) as stream:
            buffer = bytearray()
            with anyio.fail_after(10):
                await stream.send(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
                assert await _read_response(stream, buffer) == b"/slow"
                await stream.send(b"GET /next HTTP/1.1\r\nHost: t\r\n\r\n")
                assert await _read_response(stream, buffer) == b"/next"
                start = anyio.current_time()
                with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
                    while True:
                        buffer += await stream.receive()
                assert anyio.current_time() - start < 2
                assert not buffer


def test_a_write_limit_on_a_connection_reset_before_its_driver_is_ignored() -> None:
    """uvloop raises on a closed handle: a peer that resets a connection before its driver
    starts must not make the driver's set_write_limit log a traceback (seen under load in
    test_cli's hang-up test)."""
    uvloop = pytest.importorskip("uvloop")
    from quicserve.transport.callback import CallbackConnection

    async def main() -> None:
        loop = asyncio.get_running_loop()
        made: asyncio.Future[CallbackConnection] = loop.create_future()

        def factory() -> CallbackConnection:
            connection = CallbackConnection()
            made.set_result(connection)
            return connection

        server = await loop.create_server(factory, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        connection = await made
        assert connection.transport is not None
        connection.transport.abort()
        await asyncio.sleep(0.01)
        connection.set_write_limit(65536)  # no RuntimeError
        writer.close()
        server.close()

    uvloop.run(main())
