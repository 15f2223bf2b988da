"""Listening sockets and the byte streams of accepted connections.

This is the one place where the event loop in use matters (DESIGN.md invariant 3):
:func:`open_listener` returns a :class:`Listener` whose ``accept`` gives an
``anyio.abc.SocketStream`` either way.

* On trio (and anything else) it is anyio's own socket stream.
* On asyncio and uvloop it is :class:`_AsyncioSocketStream`, a thin asyncio ``Protocol``
  adapter. anyio's asyncio stream pauses and resumes the transport around every
  ``receive`` (two ``epoll_ctl`` calls per read) and yields to the loop on every ``send``;
  at tens of thousands of small requests a second that was a third of the server's time
  (profiled with py-spy). This adapter keeps reading until its buffer passes a high-water
  mark and only waits in ``send`` when the transport asked to pause writing.

Both behave the same to callers: cancel-safe ``receive``/``send``, ``EndOfStream`` at EOF,
``BrokenResourceError`` once the connection is lost. The whole test suite runs on both.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from collections import deque
from typing import Any

import anyio
import anyio.abc
import sniffio

_HIGH_WATER = 256 * 1024


class BindError(Exception):
    """An address cannot be listened on (in use, not available, bad syntax)."""


def create_listening_socket(host: str, port: int, *, backlog: int = 1024) -> socket.socket:
    """A bound, listening, non-blocking TCP socket (IPv6 sockets are IPv6-only)."""
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise BindError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    family, socktype, proto, _, sockaddr = infos[0]
    sock = socket.socket(family, socktype, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(sockaddr)
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        reason = "address already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
        raise BindError(f"cannot listen on {host}:{port}: {(reason or str(exc)).lower()}") from None
    return sock


class Listener:
    """Accepts connections on one listening socket, on whichever backend is running."""

    def __init__(self, sock: socket.socket) -> None:
        self.socket = sock
        self._asyncio = sniffio.current_async_library() == "asyncio"
        self._anyio_listener: anyio.abc.SocketListener | None = None

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port)."""
        name = self.socket.getsockname()
        return (str(name[0]), int(name[1]))

    async def accept(self) -> anyio.abc.SocketStream:
        """The next connection, with TCP_NODELAY set."""
        if not self._asyncio:
            if self._anyio_listener is None:
                self._anyio_listener = await anyio.abc.SocketListener.from_socket(self.socket)
            return await self._anyio_listener.accept()
        loop = asyncio.get_running_loop()
        try:
            conn, _ = await loop.sock_accept(self.socket)
        except OSError as exc:
            if self.socket.fileno() < 0:
                raise anyio.ClosedResourceError from exc
            raise
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transport, protocol = await loop.connect_accepted_socket(_StreamProtocol, conn)
        return _AsyncioSocketStream(transport, protocol)

    async def aclose(self) -> None:
        """Stop listening."""
        if self._anyio_listener is not None:
            await self._anyio_listener.aclose()
        self.socket.close()


class _StreamProtocol(asyncio.Protocol):
    """Buffers what asyncio delivers until :class:`_AsyncioSocketStream` takes it."""

    __slots__ = (
        "buffer",
        "buffered",
        "eof",
        "lost",
        "read_paused",
        "reader",
        "transport",
        "write_paused",
        "writer",
    )

    def __init__(self) -> None:
        self.buffer: deque[bytes] = deque()
        self.buffered = 0
        self.eof = False
        self.lost = False
        self.read_paused = False
        self.write_paused = False
        self.reader: asyncio.Future[None] | None = None
        self.writer: asyncio.Future[None] | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer.append(data)
        self.buffered += len(data)
        if self.buffered > _HIGH_WATER and not self.read_paused:
            self.read_paused = True
            assert self.transport is not None
            self.transport.pause_reading()
        self._wake_reader()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake_reader()
        return False

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost = True
        self._wake_reader()
        self._wake_writer()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self._wake_writer()

    def _wake_reader(self) -> None:
        reader = self.reader
        if reader is not None and not reader.done():
            reader.set_result(None)

    def _wake_writer(self) -> None:
        writer = self.writer
        if writer is not None and not writer.done():
            writer.set_result(None)


class _AsyncioSocketStream(anyio.abc.SocketStream):
    """An ``anyio.abc.SocketStream`` over an asyncio transport and :class:`_StreamProtocol`."""

    def __init__(self, transport: asyncio.Transport, protocol: _StreamProtocol) -> None:
        self._transport = transport
        self._protocol = protocol
        self._loop = asyncio.get_running_loop()
        self._closed = False

    @property
    def _raw_socket(self) -> Any:
        sock = self._transport.get_extra_info("socket")
        if sock is None:  # uvloop drops it once the connection is lost
            raise anyio.BrokenResourceError
        return sock

    async def receive(self, max_bytes: int = 65536) -> bytes:
        protocol = self._protocol
        while not protocol.buffer:
            if self._closed:
                raise anyio.ClosedResourceError
            if protocol.eof:
                raise anyio.EndOfStream
            if protocol.lost:
                raise anyio.BrokenResourceError
            waiter = protocol.reader = self._loop.create_future()
            try:
                await waiter
            finally:
                protocol.reader = None
        data = protocol.buffer.popleft()
        if len(data) > max_bytes:
            protocol.buffer.appendleft(data[max_bytes:])
            data = data[:max_bytes]
        protocol.buffered -= len(data)
        if protocol.read_paused and protocol.buffered < _HIGH_WATER // 2:
            protocol.read_paused = False
            self._transport.resume_reading()
        return data

    async def send(self, item: bytes) -> None:
        protocol = self._protocol
        if self._closed:
            raise anyio.ClosedResourceError
        if protocol.lost or self._transport.is_closing():
            raise anyio.BrokenResourceError
        self._transport.write(item)
        while protocol.write_paused and not protocol.lost:
            waiter = protocol.writer = self._loop.create_future()
            try:
                await waiter
            finally:
                protocol.writer = None
        if protocol.lost:
            raise anyio.BrokenResourceError

    async def send_eof(self) -> None:
        if self._transport.can_write_eof():
            self._transport.write_eof()

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._transport.close()
            self._protocol._wake_reader()
