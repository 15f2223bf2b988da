"""The per-connection write budget, in-process: ``send()`` waits for a peer that does not
read, and carries on once it reads.

The client is HTTP/2 (cleartext, prior knowledge) with every window opened wide, so flow
control never holds the app back: only ``connection_write_buffer_size`` can. An HTTP
response and a WebSocket (RFC 8441) are both driven by an app that counts what its
``send()`` calls have handed over. (The attacks themselves, on every protocol, are in
``tests/adversarial/test_slow_reader.py``.)
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest
from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage

from .helpers import running_server

pytestmark = pytest.mark.anyio

CHUNK = b"x" * 65536
STREAMS = 8
CHUNKS = 32  # 2 MiB per stream, 16 MiB in all: more than the socket buffers take
BUDGET = 256 * 1024
#: What a stalled app may have handed over: the kernel's buffers on both ends of the
#: loopback connection (2-3 MiB), the budget, and one chunk per stream beyond it.
STALL_BOUND = 8 * 1024 * 1024


class Progress:
    """What the app's ``send()`` calls have returned from, in bytes."""

    def __init__(self) -> None:
        self.sent = 0


def make_app(progress: Progress) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            for i in range(CHUNKS):
                more = i < CHUNKS - 1
                await send({"type": "http.response.body", "body": CHUNK, "more_body": more})
                progress.sent += len(CHUNK)
        elif scope["type"] == "websocket":
            await receive()
            await send({"type": "websocket.accept"})
            for _ in range(CHUNKS * STREAMS):
                await send({"type": "websocket.send", "bytes": CHUNK})
                progress.sent += len(CHUNK)
            await send({"type": "websocket.close"})

    return app


class RawSocket:
    """A non-blocking socket read only when asked (anyio's asyncio stream reads ahead
    into memory on its own, which would drain the server for us)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    async def send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            await anyio.wait_writable(self.sock)
            try:
                view = view[self.sock.send(view) :]
            except BlockingIOError:
                pass

    async def receive(self) -> bytes:
        while True:
            await anyio.wait_readable(self.sock)
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                continue
            if not data:
                raise anyio.EndOfStream
            return data


@asynccontextmanager
async def _connect(port: int) -> AsyncIterator[RawSocket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with sock:
        # Before connect, so the window the client advertises is small: the kernel
        # holds little and the server's budget is what fills.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        try:
            sock.connect(("127.0.0.1", port))
        except BlockingIOError:
            await anyio.wait_writable(sock)
        yield RawSocket(sock)


def _h2_client() -> h2.connection.H2Connection:
    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(
            client_side=True, header_encoding=None, validate_outbound_headers=False
        )
    )
    conn.initiate_connection()
    conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 2**31 - 1})
    conn.increment_flow_control_window(2**31 - 1 - 65535)
    return conn


async def _wait_for_stall(progress: Progress) -> int:
    """Wait until the app's sends stop returning (0.5 s without progress); its total."""
    last = -1
    with anyio.fail_after(20):
        while progress.sent != last:
            last = progress.sent
            await anyio.sleep(0.5)
    return last


async def _wait_for(progress: Progress, total: int) -> None:
    """The app's last send returns once its bytes are written (the peer read them)."""
    with anyio.fail_after(5):
        while progress.sent < total:
            await anyio.sleep(0.01)


async def _read(
    stream: RawSocket,
    conn: h2.connection.H2Connection,
    received: Callable[[int, bytes | None], bool],
) -> None:
    """Read, giving the credit back, until ``received(stream_id, data)`` (``None``: the
    stream ended) returns true."""
    with anyio.fail_after(30):
        while True:
            for event in conn.receive_data(await stream.receive()):
                done = False
                if isinstance(event, h2.events.DataReceived):
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                    done = received(event.stream_id, event.data)
                elif isinstance(event, h2.events.StreamEnded):
                    done = received(event.stream_id, None)
                if done:
                    return
            data = conn.data_to_send()
            if data:
                await stream.send(data)


async def test_http2_send_waits_until_the_peer_reads() -> None:
    progress = Progress()
    async with running_server(make_app(progress), connection_write_buffer_size=BUDGET) as server:
        async with _connect(server.port()) as stream:
            conn = _h2_client()
            ids = set()
            for _ in range(STREAMS):
                stream_id = conn.get_next_available_stream_id()
                ids.add(stream_id)
                conn.send_headers(
                    stream_id,
                    [
                        (b":method", b"GET"),
                        (b":path", b"/"),
                        (b":scheme", b"http"),
                        (b":authority", b"localhost"),
                    ],
                    end_stream=True,
                )
            await stream.send(conn.data_to_send())
            stalled = await _wait_for_stall(progress)
            # Flow control is wide open: only the budget can have stopped the app.
            assert 0 < stalled < STALL_BOUND, stalled
            sizes = dict.fromkeys(ids, 0)
            ended: set[int] = set()

            def received(stream_id: int, data: bytes | None) -> bool:
                if data is None:
                    ended.add(stream_id)
                else:
                    sizes[stream_id] += len(data)
                return ended == ids

            await _read(stream, conn, received)
            await _wait_for(progress, STREAMS * CHUNKS * len(CHUNK))
    assert all(size == CHUNKS * len(CHUNK) for size in sizes.values())


async def test_websocket_send_waits_until_the_peer_reads() -> None:
    progress = Progress()
    async with running_server(make_app(progress), connection_write_buffer_size=BUDGET) as server:
        async with _connect(server.port()) as stream:
            conn = _h2_client()
            conn.send_headers(
                1,
                [
                    (b":method", b"CONNECT"),
                    (b":protocol", b"websocket"),
                    (b":scheme", b"http"),
                    (b":path", b"/ws"),
                    (b":authority", b"localhost"),
                    (b"sec-websocket-version", b"13"),
                ],
            )
            await stream.send(conn.data_to_send())
            stalled = await _wait_for_stall(progress)
            assert 0 < stalled < STALL_BOUND, stalled
            ws = Connection(ConnectionType.CLIENT)
            messages: list[bytes] = []
            parts: list[bytes] = []

            def received(stream_id: int, data: bytes | None) -> bool:
                assert stream_id == 1 and data is not None
                ws.receive_data(data)
                for event in ws.events():
                    if isinstance(event, BytesMessage):
                        parts.append(bytes(event.data))
                        if event.message_finished:
                            messages.append(b"".join(parts))
                            parts.clear()
                return len(messages) == STREAMS * CHUNKS

            await _read(stream, conn, received)
            await _wait_for(progress, STREAMS * CHUNKS * len(CHUNK))
    assert all(m == CHUNK for m in messages)
