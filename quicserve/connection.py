"""ByteStreamConnection: one sans-IO protocol driven over one anyio byte stream.

This is the glue between a TCP (or TLS) byte stream, the HTTP/1.1 or HTTP/2 protocol
object that parses it, and the streams that run the app. It owns:

* the read loop: bytes in -> ``protocol.receive_data`` -> events dispatched to streams;
  reading pauses while ``protocol.wants_read()`` is false (request backpressure) and the
  read is bounded by ``protocol.get_timer()`` (header-read and keep-alive timeouts);
* the write path: ``flush`` writes ``protocol.data_to_send()`` under one lock, so bytes
  reach the socket in the order the protocol produced them, and then waits while the
  protocol holds too much data for the stream (response backpressure);
* one task per request (or pushed request) in the connection's task group;
* the switch from HTTP/1.1 to HTTP/2 on ``Upgrade: h2c``.

It never parses HTTP itself, and never opens sockets: the transport hands it a connected
stream. Everything it does to a peer is bounded by the protocol's timers and limits.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc

from .connection_info import HTTP2_CAPABILITIES, ConnectionInfo
from .events import (
    BodyEnded,
    BodyReceived,
    ConnectionClosed,
    Headers,
    RequestReceived,
    StreamReset,
    StreamWritable,
)
from .protocol.http1 import H2CUpgrade, switching_response
from .streams.http import HTTPStream

if TYPE_CHECKING:
    from .registry import ConnectionRecord
    from .server import ServerContext

logger = logging.getLogger("quicserve.error")

_READ_SIZE = 65536

_current_time = anyio.current_time


class ByteStreamConnection:
    """Serves HTTP/1.1 or HTTP/2 on one connected byte stream until it closes."""

    def __init__(
        self,
        context: ServerContext,
        stream: anyio.abc.ByteStream,
        info: ConnectionInfo,
        protocol: Any,
        record: ConnectionRecord,
    ) -> None:
        self.context = context
        self.config = context.config
        self.protocol = protocol
        self._stream = stream
        self._info = info
        self._record = record
        self._streams: dict[int, HTTPStream] = {}
        self._write_lock = anyio.Lock(fast_acquire=True)
        self._writable: dict[int, anyio.Event] = {}
        self._read_scope: anyio.CancelScope | None = None
        self._read_wakeup: anyio.Event | None = None
        self._task_group: anyio.abc.TaskGroup | None = None
        self._upgrade: H2CUpgrade | None = None
        self._broken = False

    # -- the read loop -----------------------------------------------------------------

    async def run(self, initial_data: bytes = b"") -> None:
        """Serve until the protocol closes or the peer goes away."""
        try:
            async with anyio.create_task_group() as tg:
                self._task_group = tg
                await self._write_out()
                if initial_data:
                    self._receive(initial_data)
                    await self._write_out()
                await self._read_loop()
        finally:
            self._task_group = None
            await self._close_stream()

    async def _read_loop(self) -> None:
        stream = self._stream
        record = self._record
        while True:
            if self._upgrade is not None:
                await self._switch_to_h2c()
            protocol = self.protocol
            if protocol.closed or self._broken:
                return
            if not protocol.wants_read():
                wakeup = self._read_wakeup = anyio.Event()
                await wakeup.wait()
                continue
            deadline = protocol.get_timer()
            with anyio.CancelScope(deadline=math.inf if deadline is None else deadline) as scope:
                self._read_scope = scope
                try:
                    data = await stream.receive(_READ_SIZE)
                except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                    data = b""
                except OSError:
                    data = b""
            self._read_scope = None
            if scope.cancelled_caught:
                # A deadline passed, or a stream asked us to re-check the protocol.
                protocol.handle_timer(_current_time())
                self._dispatch()
                await self._write_out()
                continue
            record.bytes_in += len(data)
            self._receive(data)
            await self._write_out()
            if not data:
                return

    def _receive(self, data: bytes) -> None:
        self.protocol.receive_data(data, _current_time())
        self._dispatch()

    def _dispatch(self) -> None:
        """Hand every pending protocol event to its stream."""
        protocol = self.protocol
        streams = self._streams
        while True:
            event = protocol.next_event()
            if event is None:
                return
            cls = type(event)
            if cls is BodyReceived:
                stream = streams.get(event.stream_id)
                if stream is not None:
                    stream.body_received(event.data)
                else:
                    # A finished stream's late body: discard, but give the credit back.
                    protocol.ack_body(event.stream_id, len(event.data))
            elif cls is RequestReceived:
                self._start_stream(event)
            elif cls is BodyEnded:
                stream = streams.get(event.stream_id)
                if stream is not None:
                    stream.body_ended()
            elif cls is StreamWritable:
                waiter = self._writable.pop(event.stream_id, None)
                if waiter is not None:
                    waiter.set()
            elif cls is StreamReset:
                stream = streams.get(event.stream_id)
                if stream is not None:
                    stream.reset()
                waiter = self._writable.pop(event.stream_id, None)
                if waiter is not None:
                    waiter.set()
            elif cls is ConnectionClosed:
                for stream in streams.values():
                    stream.reset()
                for waiter in self._writable.values():
                    waiter.set()
                self._writable.clear()
            elif cls is H2CUpgrade:
                self._upgrade = event

    def _start_stream(self, request: RequestReceived) -> None:
        assert self._task_group is not None
        stream = HTTPStream(
            self.context.app, self, self._info, request, self.context.lifespan_state
        )
        self._streams[request.stream_id] = stream
        self._record.requests += 1
        self._task_group.start_soon(stream.run)

    async def _switch_to_h2c(self) -> None:
        # RFC 7540 §3.2: 101, then the server preface; the request becomes stream 1.
        from .protocol.http2 import H2Protocol

        upgrade = self._upgrade
        assert upgrade is not None
        self._upgrade = None
        async with self._write_lock:
            await self._send(switching_response())
        request = upgrade.request
        self.protocol = H2Protocol.from_h2c_upgrade(
            self.config, _current_time(), upgrade.settings, request
        )
        self._info = self._info.with_protocol("2", HTTP2_CAPABILITIES)
        self._record.protocol = "h2c"
        self._dispatch()
        if upgrade.trailing_data:
            self._receive(upgrade.trailing_data)
        await self._write_out()

    # -- the StreamHost interface used by HTTPStream ----------------------------------

    async def flush(self, stream_id: int) -> None:
        """Write what the protocol produced; wait while ``stream_id`` has too much queued."""
        await self._write_out()
        protocol = self.protocol
        limit = self.config.write_buffer_size
        while protocol.buffered_amount(stream_id) > limit and not self._broken:
            waiter = self._writable.get(stream_id)
            if waiter is None:
                waiter = self._writable[stream_id] = anyio.Event()
            await waiter.wait()
            await self._write_out()

    def ack_body(self, stream_id: int, amount: int) -> None:
        """Give flow-control credit back; resume reading if the protocol paused it."""
        protocol = self.protocol
        protocol.ack_body(stream_id, amount)
        if self._read_wakeup is not None and protocol.wants_read():
            self._read_wakeup.set()
            self._read_wakeup = None

    async def stream_finished(self, stream_id: int) -> None:
        """A stream's app call is over: release it and let the protocol move on."""
        self._streams.pop(stream_id, None)
        self._writable.pop(stream_id, None)
        protocol = self.protocol
        protocol.stream_done(stream_id, _current_time())
        self._dispatch()
        await self._write_out()
        self._poke_reader()

    def push(self, parent: RequestReceived, path: bytes, headers: Headers) -> None:
        """Promise and serve a pushed resource (only HTTP/2 offers push)."""
        push_promise = getattr(self.protocol, "push_promise", None)
        if push_promise is None:
            return
        stream_id = push_promise(parent.stream_id, path, headers)
        if stream_id is None:
            return
        request = RequestReceived(
            stream_id=stream_id,
            method=b"GET",
            raw_path=path,
            headers=headers,
            scheme=parent.scheme,
            authority=parent.authority,
        )
        self._start_stream(request)
        stream = self._streams[stream_id]
        stream.body_ended()

    # -- shutdown ----------------------------------------------------------------------

    def shutdown(self) -> None:
        """Begin a graceful close: GOAWAY on HTTP/2, close-when-idle on HTTP/1.1."""
        self.protocol.shutdown()
        if self._task_group is not None:
            # GOAWAY (or nothing, on HTTP/1.1) goes out from a task of this connection.
            self._task_group.start_soon(self._write_out)
        self._poke_reader()

    def _poke_reader(self) -> None:
        # The protocol's state changed outside the read loop (a response ended, a
        # shutdown began): re-arm the read deadline, or stop reading if it closed.
        protocol = self.protocol
        scope = self._read_scope
        if protocol.closed:
            if scope is not None:
                scope.cancel()
            if self._read_wakeup is not None:
                self._read_wakeup.set()
                self._read_wakeup = None
            return
        if scope is not None:
            deadline = protocol.get_timer()
            scope.deadline = math.inf if deadline is None else deadline
        elif self._read_wakeup is not None and protocol.wants_read():
            self._read_wakeup.set()
            self._read_wakeup = None

    # -- writing -----------------------------------------------------------------------

    async def _write_out(self) -> None:
        # The data is taken inside the lock: whoever writes, writes everything produced
        # so far, in order.
        async with self._write_lock:
            data = self.protocol.data_to_send()
            if data:
                await self._send(data)
        if self.protocol.closed:
            self._poke_reader()

    async def _send(self, data: bytes) -> None:
        if self._broken:
            return
        try:
            await self._stream.send(data)
            self._record.bytes_out += len(data)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            self._on_broken()

    def _on_broken(self) -> None:
        # The peer is gone: every stream sees a disconnect, nobody waits for credit.
        self._broken = True
        for stream in self._streams.values():
            stream.reset()
        for waiter in self._writable.values():
            waiter.set()
        self._writable.clear()
        if self._read_scope is not None:
            self._read_scope.cancel()
        if self._read_wakeup is not None:
            self._read_wakeup.set()

    async def _close_stream(self) -> None:
        with anyio.CancelScope(shield=True), anyio.move_on_after(5):
            try:
                await self._stream.aclose()
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                pass
