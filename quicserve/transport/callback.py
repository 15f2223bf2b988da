"""Callback-driven TCP, TLS and Unix connections on asyncio and uvloop.

On asyncio an accepted socket can be served without a reader task: the loop calls
``data_received`` as bytes arrive and ``transport.write`` takes bytes without an await, as
Uvicorn's ``asyncio.Protocol`` does. Per request that saves the reader task's wake-up, its
future and the stream adapter's ``receive``/``send`` (profiled with py-spy under wrk, issue
11). :class:`CallbackConnection` is that ``asyncio.Protocol``; it knows nothing about HTTP:
it forwards every event to the :class:`ByteSink` attached to it (the byte-stream driver in
``connection/``), and offers the sink the few transport calls it needs (write, pause and
resume reading, a timer, close).

Before a sink is attached (during the TLS handshake, or while the first bytes tell HTTP/2
prior knowledge from HTTP/1.1) it buffers what arrives; :meth:`CallbackConnection.receive_early`
waits for it. :func:`open_callback_connection` wraps an accepted socket, doing the TLS
handshake with asyncio's own SSL transport (ALPN included).

Rules:

* Only asyncio and uvloop come here (``Listener.callback_io``); trio keeps the anyio streams
  of ``sockets.py``. Both feed the same driver logic; only the I/O differs.
* ``pause_writing``/``resume_writing`` from the transport are passed to the sink, which turns
  them into its write budget; the high-water mark is the sink's to set
  (:meth:`CallbackConnection.set_write_limit`).
* Writes never copy the caller's bytes here. On the standard library's loop a big write
  is handed to the transport a piece at a time (:class:`_StdlibConnection`), so asyncio
  copies at most one piece; what is not handed over yet counts in ``write_buffer_size``.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol


class ByteSink(Protocol):
    """What a :class:`CallbackConnection` calls once a sink is attached."""

    def data_received(self, data: bytes) -> None:
        """Bytes arrived (never empty)."""

    def eof_received(self) -> None:
        """The peer ended its side (it may still read)."""

    def connection_lost(self) -> None:
        """The connection is gone: nothing more can be written."""

    def writing_paused(self) -> None:
        """The transport holds more than the write limit."""

    def writing_resumed(self) -> None:
        """The transport drained below the low-water mark."""


class CallbackConnection(asyncio.Protocol):
    """One accepted connection on asyncio: events to a :class:`ByteSink`, writes to the
    transport."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()
        self.sink: ByteSink | None = None
        self._early: list[bytes] = []
        self._eof = False
        self.lost = False
        self.write_paused = False
        #: Whether the transport reads (see :meth:`pause_reading`).
        self.reading = True
        self._waiter: asyncio.Future[None] | None = None
        self._tls = False

    # -- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._tls = transport.get_extra_info("ssl_object") is not None

    def data_received(self, data: bytes) -> None:
        sink = self.sink
        if sink is not None:
            sink.data_received(data)
            return
        self._early.append(data)
        self._wake()

    def eof_received(self) -> bool:
        self._eof = True
        if self.sink is not None:
            self.sink.eof_received()
        else:
            self._wake()
        # Keep the write side open: the response to what was read still goes out (the
        # sink closes the transport when it is done). A TLS transport closes anyway.
        return not self._tls

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost = True
        if self.sink is not None:
            self.sink.connection_lost()
        else:
            self._wake()

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.sink is not None:
            self.sink.writing_paused()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.sink is not None:
            self.sink.writing_resumed()

    # -- before a sink is attached -----------------------------------------------------

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def receive_early(self) -> bytes:
        """The bytes that arrived so far, waiting for some; ``b""`` at EOF or loss."""
        while not self._early:
            if self._eof or self.lost:
                return b""
            waiter = self._waiter = self.loop.create_future()
            try:
                await waiter
            finally:
                self._waiter = None
        data = b"".join(self._early)
        self._early.clear()
        return data

    def attach(self, sink: ByteSink) -> None:
        """From now on every event goes to ``sink``; an EOF or a loss that came before is
        delivered at once (bytes taken with :meth:`receive_early` are the caller's)."""
        self.sink = sink
        # The loop calls the sink's own method for every read: one Python call less per
        # request than forwarding it (``detach`` undoes this).
        self.data_received = sink.data_received  # type: ignore[method-assign]
        if self._early:
            data = b"".join(self._early)
            self._early.clear()
            sink.data_received(data)
        if self.lost:
            sink.connection_lost()
        elif self._eof:
            sink.eof_received()
        elif self.write_paused:
            sink.writing_paused()

    def detach(self) -> None:
        """No more events go to the sink (what arrives now is kept as before ``attach``)."""
        self.sink = None
        self.__dict__.pop("data_received", None)

    # -- what the sink calls -----------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Queue ``data`` (the transport writes what the socket takes now)."""
        assert self.transport is not None
        self.transport.write(data)

    def write_buffer_size(self) -> int:
        """Bytes the transport holds, not yet taken by the socket."""
        assert self.transport is not None
        return self.transport.get_write_buffer_size()

    def set_write_limit(self, high: int) -> None:
        """``pause_writing`` past ``high`` bytes held, ``resume_writing`` below a quarter."""
        transport = self.transport
        assert transport is not None
        if self.lost or transport.is_closing():
            # The peer reset it before the driver started (uvloop raises on a closed
            # handle); nothing will be written.
            return
        transport.set_write_buffer_limits(high=high, low=high // 4)

    def pause_reading(self) -> None:
        """Stop reading from the socket (idempotent)."""
        transport = self.transport
        if self.reading and not self.lost and transport is not None:
            self.reading = False
            if not transport.is_closing():
                transport.pause_reading()

    def resume_reading(self) -> None:
        """Read again (idempotent)."""
        transport = self.transport
        if not self.reading and not self.lost and transport is not None:
            self.reading = True
            if not transport.is_closing():
                transport.resume_reading()

    def call_later(self, delay: float, callback: Callable[[], None]) -> asyncio.TimerHandle:
        """Run ``callback`` after ``delay`` seconds (cancel the handle to forget it)."""
        return self.loop.call_later(delay, callback)

    def call_soon(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` once the loop has run what is ready now."""
        self.loop.call_soon(callback)

    def extra(self, name: str) -> Any:
        """The transport's extra info ``name`` (``ssl_object``, ``peername``...)."""
        assert self.transport is not None
        return self.transport.get_extra_info(name)

    def close(self) -> None:
        """Close once what is queued has been written (idempotent)."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def abort(self) -> None:
        """Close at once, dropping what is queued."""
        if self.transport is not None:
            self.transport.abort()


#: What one read may take: the stream driver's read size (a TLS transport reads as many
#: records as fit).
_READ_BUFFER = 65536
_buffers = threading.local()


#: The most one ``transport.write`` is handed on asyncio (see :class:`_StdlibConnection`).
_WRITE_PIECE = 256 * 1024


class _StdlibConnection(CallbackConnection, asyncio.BufferedProtocol):
    """A :class:`CallbackConnection` tuned for the standard library's event loop.

    * Reads go into a buffer shared by every connection of the thread (``recv_into``)
      instead of ``recv(256 KiB)``: CPython allocates those 256 KiB for every read and
      glibc maps and unmaps them, 50 us for a 100-byte request (measured: ``recv(262144)``
      60 us, ``recv_into`` and a copy of what came 11 us). The buffer is copied out before
      any other code runs, so one per thread is enough.
    * Big writes are handed over a piece at a time. asyncio copies what the socket did not
      take into a ``bytearray`` and, as it drains, copies the rest again each time it
      halves: one 64 MiB body message cost 2.6x uvloop's CPU. Here the transport holds at
      most one piece; the rest stays a view of the caller's bytes and is handed over when
      the transport has drained (its high-water mark is 0, so it says so), and the
      write budget counts both.

    uvloop reads into its own buffer and keeps unsent bytes without copying them: it
    needs none of this.
    """

    def __init__(self) -> None:
        super().__init__()
        self._backlog: deque[memoryview] = deque()
        self._backlog_size = 0
        self._transport_paused = False
        self._high = 65536
        self._low = 16384
        self._close_when_drained = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        # Told of every byte the socket did not take, and of the moment all went out.
        # (asyncio's SSL transport pauses at ``size >= high``: 1 there.)
        transport.set_write_buffer_limits(high=1 if self._tls else 0)  # type: ignore[attr-defined]

    def get_buffer(self, sizehint: int) -> memoryview:
        buffer: memoryview | None = getattr(_buffers, "view", None)
        if buffer is None:
            buffer = _buffers.view = memoryview(bytearray(_READ_BUFFER))
        return buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(bytes(_buffers.view[:nbytes]))

    def pause_writing(self) -> None:
        self._transport_paused = True

    def resume_writing(self) -> None:
        self._transport_paused = False
        self._pump()
        if self.write_paused and self.write_buffer_size() <= self._low:
            self.write_paused = False
            if self.sink is not None:
                self.sink.writing_resumed()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._backlog.clear()
        self._backlog_size = 0
        super().connection_lost(exc)

    def write(self, data: bytes) -> None:
        if self._backlog or len(data) > _WRITE_PIECE:
            self._backlog.append(memoryview(data))
            self._backlog_size += len(data)
            self._pump()
        else:
            assert self.transport is not None
            self.transport.write(data)
        if (
            self._transport_paused
            and not self.write_paused
            and self.write_buffer_size() > self._high
        ):
            self.write_paused = True
            if self.sink is not None:
                self.sink.writing_paused()

    def _pump(self) -> None:
        backlog = self._backlog
        transport = self.transport
        assert transport is not None
        while backlog and not self._transport_paused and not self.lost:
            view = backlog[0]
            if len(view) > _WRITE_PIECE:
                piece = view[:_WRITE_PIECE]
                backlog[0] = view[_WRITE_PIECE:]
            else:
                piece = backlog.popleft()
            self._backlog_size -= len(piece)
            transport.write(piece)
        if self._close_when_drained and not backlog:
            self._close_when_drained = False
            # Not from inside the transport's own write callback (this may be one):
            # asyncio would then report the loss twice.
            self.loop.call_soon(super().close)

    def write_buffer_size(self) -> int:
        assert self.transport is not None
        return self.transport.get_write_buffer_size() + self._backlog_size

    def set_write_limit(self, high: int) -> None:
        self._high = high
        self._low = high // 4

    def close(self) -> None:
        if self._backlog and not self.lost:
            self._close_when_drained = True  # the rest is handed over first
            return
        super().close()

    def abort(self) -> None:
        self._backlog.clear()
        self._backlog_size = 0
        super().abort()


async def open_callback_connection(
    sock: socket.socket, ssl_context: ssl.SSLContext | None, handshake_timeout: float
) -> CallbackConnection:
    """Serve the accepted ``sock`` through a :class:`CallbackConnection`, after the TLS
    handshake when ``ssl_context`` is given (raises ``ssl.SSLError``/``OSError`` if it
    fails; the socket is closed then)."""
    loop = asyncio.get_running_loop()
    # The instance is ours, not what connect_accepted_socket returns: with TLS, uvloop
    # returns its SSL protocol there instead of the app's.
    connection = (
        CallbackConnection() if type(loop).__module__.startswith("uvloop") else _StdlibConnection()
    )
    try:
        if ssl_context is None:
            await loop.connect_accepted_socket(lambda: connection, sock)
        else:
            await loop.connect_accepted_socket(
                lambda: connection,
                sock,
                ssl=ssl_context,
                ssl_handshake_timeout=handshake_timeout,
            )
    except BaseException:
        sock.close()
        raise
    return connection
