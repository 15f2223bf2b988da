"""ByteStreamConnection: one sans-IO protocol driven over one anyio byte stream.

This is the glue between a TCP (or TLS) byte stream, the HTTP/1.1 or HTTP/2 protocol
object that parses it, and the streams that run the app. It owns:

* the read loop: bytes in -> ``protocol.receive_data`` -> events dispatched to streams;
  reading pauses while ``protocol.wants_read()`` is false (request backpressure) and the
  read is bounded by ``protocol.get_timer()`` (header-read and keep-alive timeouts);
* the write path: ``flush`` writes ``protocol.data_to_send()`` under one lock, so bytes
  reach the socket in the order the protocol produced them, and then waits while the
  protocol holds too much data for the stream (response backpressure), or while the
  connection holds more than ``Config.connection_write_buffer_size`` for a peer that is
  not reading (bytes framed but not written, plus the write in progress); HTTP/2 also
  stops reading from such a peer, so the frames it makes us answer (PING and SETTINGS
  ACKs, responses) cannot pile up either;
* one task per request (or pushed request) in the connection's task group;
* the switch from HTTP/1.1 to HTTP/2 on ``Upgrade: h2c``.

It never parses HTTP itself, and never opens sockets: the transport hands it a connected
stream. Everything it does to a peer is bounded by the protocol's timers and limits.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import anyio.lowlevel

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
from .lowlevel import Wakeup, wakeup_factory
from .protocol.http1 import H2CUpgrade, switching_response
from .streams.http import HTTPStream, connection_extensions
from .streams.websocket import WebSocketStream, is_websocket_request
from .streams.webtransport import WebTransportSession, is_webtransport_request

if TYPE_CHECKING:
    from .registry import ConnectionRecord
    from .server import ServerContext

logger = logging.getLogger("quicserve.error")

_READ_SIZE = 65536
#: A reader whose peer keeps its socket full never waits in ``receive`` on asyncio (the
#: bytes are there already), so it lets the other tasks run at least this often (s).
_READ_SLICE = 0.005
#: HTTP/2 reads no more from a peer while this much (or the write budget, if smaller) of
#: what it asked for is framed or being written and it does not read. Low, because each
#: PING or SETTINGS it sends costs ~30 us of h2 and makes a frame to answer: filling a
#: 1 MiB budget with PING ACKs would take 2 s of CPU.
_READ_PAUSE = 64 * 1024

AnyStream = HTTPStream | WebSocketStream | WebTransportSession

# Protocol timers only need a monotonic clock, and every sleep is relative; calling
# anyio.current_time() looks the backend up on each call (6% of an HTTP/1.1 request).
_current_time = time.monotonic


class StreamDispatcher:
    """What every connection driver shares, TCP or QUIC: it hands protocol events to
    :class:`HTTPStream` objects and is the :class:`~quicserve.streams.http.StreamHost` they
    answer through. Subclasses supply the I/O: ``_write_out`` (send what the protocol
    produced), ``_poke_reader`` (the protocol's state changed outside the read path) and
    ``_on_credit`` (the app consumed request body)."""

    def __init__(
        self, context: ServerContext, info: ConnectionInfo, protocol: Any, record: ConnectionRecord
    ) -> None:
        self.context = context
        self.config = context.config
        self.protocol = protocol
        self.new_wakeup = wakeup_factory()
        self._extensions: dict[str, Any] = {}
        self._extensions_info: ConnectionInfo | None = None
        self._info = info
        self._record = record
        self._streams: dict[int, AnyStream] = {}
        self._writable: dict[int, Wakeup] = {}
        self._buffer_limit = context.config.write_buffer_size
        #: Bytes the connection may hold for its peer before sends wait (see
        #: ``_over_budget``), and the tasks waiting for it to drain.
        self._budget = context.config.connection_write_buffer_size
        self._budget_waiters: list[Wakeup] = []
        #: Streams reset while sends waited on the budget: those sends stop waiting.
        self._budget_reset: set[int] = set()
        self._status_counts = context.registry.status_counts
        self._broken = False
        self._closing = False
        self._task_group: anyio.abc.TaskGroup | None = None
        self._queue: deque[AnyStream] = deque()
        self._idle_workers: list[Wakeup] = []
        self._workers = 0
        self._max_workers = 1_000_000 if info.capabilities.multiplexed else 1

    def extensions_for(self, info: ConnectionInfo) -> dict[str, Any]:
        """The base ASGI extensions for ``info``, built once and kept with the connection
        (rebuilt if the info changes: an h2c upgrade, a QUIC migration)."""
        if self._extensions_info is not info:
            self._extensions = connection_extensions(info)
            self._extensions_info = info
        return self._extensions

    async def _write_out(self) -> None:
        raise NotImplementedError

    def _poke_reader(self) -> None:
        raise NotImplementedError

    def _on_credit(self) -> None:
        """Request-body credit went back to the protocol (reading may resume)."""

    def _on_other_event(self, event: object) -> None:
        """A protocol-specific event the dispatcher does not know."""

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
                if self._budget_waiters and stream is not None:
                    self._budget_reset.add(event.stream_id)
                    self._release_budget_waiters()
            elif cls is ConnectionClosed:
                for stream in streams.values():
                    stream.reset()
                self._wake_all_senders()
            else:
                self._on_other_event(event)

    def _start_stream(self, request: RequestReceived) -> None:
        stream: AnyStream
        kind: type[AnyStream] = HTTPStream
        if request.websocket_upgrade or request.protocol is not None:
            if is_websocket_request(request):
                kind = WebSocketStream
            elif self.config.webtransport and is_webtransport_request(request):
                kind = WebTransportSession
        stream = kind(self.context.app, self, self._info, request, self.context.lifespan_state)
        self._streams[request.stream_id] = stream
        self._record.requests += 1
        self._launch(stream)

    def _launch(self, stream: AnyStream) -> None:
        """Run a registered stream's app call on one of the connection's workers.

        Workers are long-lived tasks that take streams from a queue, because waking an
        idle task is much cheaper than spawning one per request (anyio's spawn was 9-12%
        of a request's time). HTTP/1.1 has one worker, so its requests run in order;
        multiplexed protocols grow a worker per concurrent stream and keep them."""
        assert self._task_group is not None
        self._queue.append(stream)
        if self._idle_workers:
            self._idle_workers.pop().set()
        elif self._workers < self._max_workers:
            self._workers += 1
            self._task_group.start_soon(self._worker)

    async def _worker(self) -> None:
        queue = self._queue
        try:
            while True:
                while queue:
                    await queue.popleft().run()
                if self.protocol.closed or self._broken or self._closing:
                    return
                wakeup = self.new_wakeup()
                self._idle_workers.append(wakeup)
                await wakeup.wait()
        finally:
            self._workers -= 1

    def _shutdown_streams(self) -> None:
        """Graceful shutdown reached this connection: open WebSockets close with 1001
        (requests just finish). The caller writes out what that produced."""
        for stream in list(self._streams.values()):
            stream.server_shutdown()

    def _stop_workers(self) -> None:
        """Let idle workers end (the connection is closing)."""
        self._closing = True
        for wakeup in self._idle_workers:
            wakeup.set()
        self._idle_workers.clear()

    async def flush(self, stream_id: int) -> None:
        """Write what the protocol produced; wait while ``stream_id`` has too much queued,
        then while the connection holds more than its budget for the peer."""
        await self._write_out()
        protocol = self.protocol
        limit = self._buffer_limit
        while (
            protocol.buffered_amount(stream_id) > limit and not self._broken and not protocol.closed
        ):
            waiter = self._writable.get(stream_id)
            if waiter is None:
                waiter = self._writable[stream_id] = self.new_wakeup()
            await waiter.wait()
            await self._write_out()
        if self._over_budget(stream_id):
            await self._wait_for_budget(stream_id)

    # -- the per-connection write budget -------------------------------------------------

    def _over_budget(self, stream_id: int) -> bool:
        """Whether a send on ``stream_id`` (0: the connection's own reader) must wait
        because the connection holds more than ``_budget`` bytes for its peer."""
        return False

    async def _wait_for_budget(self, stream_id: int) -> None:
        """Wait until the connection's held bytes drain to the budget (or it closes).

        Each waiter checks again when woken, so a waiter that was woken while another
        refilled the buffer waits again: a stream is at most one send over budget."""
        while (
            not self._broken
            and not self.protocol.closed
            and stream_id not in self._budget_reset
            and self._over_budget(stream_id)
        ):
            waiter = self.new_wakeup()
            self._budget_waiters.append(waiter)
            await waiter.wait()

    def _wake_all_senders(self) -> None:
        """Nothing more will leave this connection: every send waiting for its stream to
        drain, or for the connection's budget, wakes (and finds the connection gone)."""
        for waiter in self._writable.values():
            waiter.set()
        self._writable.clear()
        self._release_budget_waiters()

    def _release_budget_waiters(self) -> None:
        waiters = self._budget_waiters
        if waiters:
            self._budget_waiters = []
            for waiter in waiters:
                waiter.set()

    def ack_body(self, stream_id: int, amount: int) -> None:
        """Give flow-control credit back; resume reading if the protocol paused it."""
        self.protocol.ack_body(stream_id, amount)
        self._on_credit()

    async def stream_finished(self, stream_id: int) -> None:
        """A stream's app call is over: release it and let the protocol move on."""
        stream = self._streams.pop(stream_id, None)
        if stream is not None:
            self._status_counts[stream.status] += 1
        self._writable.pop(stream_id, None)
        if self._budget_reset:
            self._budget_reset.discard(stream_id)
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


class ByteStreamConnection(StreamDispatcher):
    """Serves HTTP/1.1 or HTTP/2 on one connected byte stream until it closes."""

    def __init__(
        self,
        context: ServerContext,
        stream: anyio.abc.ByteStream,
        info: ConnectionInfo,
        protocol: Any,
        record: ConnectionRecord,
    ) -> None:
        super().__init__(context, info, protocol, record)
        self._stream = stream
        self._writing = False
        #: Bytes of the write in progress (handed to the socket, not yet accepted by it).
        self._in_flight = 0
        self._read_budget = min(self._budget, _READ_PAUSE)
        self._drained: Wakeup | None = None
        self._batch_writes = info.capabilities.multiplexed
        self._reader_scope: anyio.CancelScope | None = None
        self._read_wakeup: Wakeup | None = None
        self._timer_wakeup: Wakeup | None = None
        self._timer_target = math.inf
        self._flush_requested = False
        self._upgrade: H2CUpgrade | None = None
        # Only HTTP/1.1 turns into a WebSocket tunnel (checked per flush, cheaply).
        self._h1_tunnel_possible = not info.capabilities.multiplexed

    # -- the read loop -----------------------------------------------------------------

    async def run(self, initial_data: bytes = b"") -> None:
        """Serve until the protocol closes or the peer goes away."""
        try:
            async with anyio.create_task_group() as tg:
                self._task_group = tg
                tg.start_soon(self._timer_loop)
                await self._write_out()
                if initial_data:
                    self._receive(initial_data)
                    await self._write_out()
                with anyio.CancelScope() as self._reader_scope:
                    await self._read_loop()
                # Whatever the protocol produced last (a GOAWAY, a final error) goes out
                # before the connection closes.
                await self._write_out()
                # Streams still running finish (or see their reset) before we close.
                self._stop_workers()
                self._wake_timer()
        finally:
            self._task_group = None
            await self._close_stream()

    async def _read_loop(self) -> None:
        stream = self._stream
        record = self._record
        yield_at = _current_time() + _READ_SLICE
        while True:
            if self._upgrade is not None:
                await self._switch_to_h2c()
            protocol = self.protocol
            if protocol.closed or self._broken:
                return
            if not protocol.wants_read():
                wakeup = self._read_wakeup = self.new_wakeup()
                await wakeup.wait()
                continue
            try:
                data = await stream.receive(_READ_SIZE)
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                data = b""
            except OSError:
                data = b""
            record.bytes_in += len(data)
            self._receive(data)
            await self._write_out()
            if not data:
                return
            if self._over_budget(0):
                # HTTP/2: what this peer sends makes us answer (PING and SETTINGS ACKs,
                # responses); while it does not read those, we read no more of it.
                await self._wait_for_budget(0)
            now = _current_time()
            if now >= yield_at:
                # A flood of small frames (PINGs: ~30 us of h2 each) must not starve
                # every other connection of this worker.
                await anyio.lowlevel.checkpoint()
                yield_at = now + _READ_SLICE

    async def _timer_loop(self) -> None:
        """Header-read and keep-alive deadlines, without a cancel scope per read.

        The task sleeps until the protocol's deadline; while there is none it re-checks
        every ``_TIMER_POLL`` seconds. A deadline that moves later needs no wake-up (the
        task finds the new one when it wakes); only an earlier one wakes it early.
        """
        poll = min(self.config.keep_alive_timeout, self.config.header_read_timeout)
        while not self._closing:
            protocol = self.protocol
            if self._flush_requested:
                self._flush_requested = False
                await self._write_out()
            now = _current_time()
            deadline = protocol.get_timer()
            if deadline is not None and now >= deadline:
                protocol.handle_timer(now)
                self._dispatch()
                await self._write_out()
                if protocol.closed:
                    self._reader_scope_cancel()
                    return
                continue
            target = deadline if deadline is not None else now + poll
            self._timer_target = target
            if self._closing or self._flush_requested:
                continue  # changed while we were writing: a wake-up would be lost
            wakeup = self._timer_wakeup = self.new_wakeup()
            with anyio.move_on_after(target - now):
                await wakeup.wait()

    def _wake_timer(self) -> None:
        if self._timer_wakeup is not None:
            self._timer_wakeup.set()

    def _reader_scope_cancel(self) -> None:
        if self._reader_scope is not None:
            self._reader_scope.cancel()
        if self._read_wakeup is not None:
            self._read_wakeup.set()
            self._read_wakeup = None

    def _receive(self, data: bytes) -> None:
        self.protocol.receive_data(data, _current_time())
        self._dispatch()

    def _on_credit(self) -> None:
        if self._batch_writes:
            # HTTP/2: the credit became WINDOW_UPDATE frames that must be written now; a
            # peer that used up its window sends nothing until it sees them, so waiting
            # for the next write would deadlock a large upload. The timer task writes.
            self._flush_requested = True
            self._wake_timer()
        if self._read_wakeup is not None and self.protocol.wants_read():
            self._read_wakeup.set()
            self._read_wakeup = None

    def _on_other_event(self, event: object) -> None:
        if type(event) is H2CUpgrade:
            self._upgrade = event

    async def _switch_to_h2c(self) -> None:
        # RFC 7540 §3.2: 101, then the server preface; the request becomes stream 1.
        from .protocol.http2 import H2Protocol

        upgrade = self._upgrade
        assert upgrade is not None
        self._upgrade = None
        await self._write_out()  # anything h11 still had, then the 101
        await self._send(switching_response())
        request = upgrade.request
        self._batch_writes = True
        self._h1_tunnel_possible = False
        self._max_workers = 1_000_000
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
        """As :meth:`StreamDispatcher.flush`; but on an HTTP/1.1 WebSocket tunnel, while
        less than the write buffer is queued, the write is left to the timer task, so
        the frames of a burst (an app echoing queued messages) leave in one write
        instead of one syscall each (py-spy: 24% of an h1 echo was those writes)."""
        protocol = self.protocol
        if (
            self._h1_tunnel_possible
            and protocol.tunnel
            and protocol.pending() < self._buffer_limit
            and not self._broken
        ):
            if not self._flush_requested:
                self._flush_requested = True
                self._wake_timer()
            return
        await super().flush(stream_id)

    # -- shutdown ----------------------------------------------------------------------

    def shutdown(self) -> None:
        """Begin a graceful close: GOAWAY on HTTP/2, close-when-idle on HTTP/1.1."""
        self.protocol.shutdown()
        self._shutdown_streams()
        # GOAWAY (HTTP/2) is written by the timer task, which belongs to this connection.
        self._flush_requested = True
        self._wake_timer()
        self._poke_reader()

    def _poke_reader(self) -> None:
        # The protocol's state changed outside the read loop (a response ended, a
        # shutdown began): stop reading if it closed, resume if it wants data again, and
        # wake the timer if its deadline moved earlier.
        protocol = self.protocol
        if protocol.closed:
            self._reader_scope_cancel()
            self._wake_timer()
            return
        if self._read_wakeup is not None and protocol.wants_read():
            self._read_wakeup.set()
            self._read_wakeup = None
        deadline = protocol.get_timer()
        if deadline is not None and deadline < self._timer_target:
            self._wake_timer()

    # -- writing -----------------------------------------------------------------------

    async def _write_out(self) -> None:
        # One writer at a time, without a lock: whoever finds no write in progress
        # writes everything the protocol has produced, looping until it is empty, so
        # bytes reach the socket in the order the protocol produced them. Others wait
        # for that writer to finish (that wait is the TCP backpressure they get).
        if self._writing:
            if self._batch_writes:
                return  # the active writer takes this data too; flow control bounds it
            drained = self._drained
            if drained is None:
                drained = self._drained = self.new_wakeup()
            await drained.wait()
            return
        self._writing = True
        protocol = self.protocol
        try:
            if self._batch_writes:
                # Let the other streams of this connection that are ready run first, so
                # their responses leave in this one write (one TLS record, one syscall)
                # instead of one each.
                await anyio.lowlevel.checkpoint()
            while True:
                data = protocol.data_to_send()
                if not data:
                    break
                self._in_flight = len(data)
                await self._send(data)
                self._in_flight = 0
                if self._budget_waiters and protocol.pending() <= self._budget:
                    self._release_budget_waiters()
        finally:
            self._writing = False
            self._in_flight = 0
            drained = self._drained
            if drained is not None:
                self._drained = None
                drained.set()
            if self._budget_waiters:
                # They re-check; one of them becomes the writer of what is left.
                self._release_budget_waiters()
        if protocol.closed:
            self._poke_reader()

    def _over_budget(self, stream_id: int) -> bool:
        # Only HTTP/2 needs the check: there a second writer returns at once while the
        # first is blocked on the socket (so that streams' frames share writes), and
        # flow control bounds nothing once the peer opens its windows wide. On HTTP/1.1 a
        # second writer waits for the first, which bounds the held bytes by one write.
        # Nobody writing means everything was written (or whoever produced more is about
        # to write it). Stream 0 is the reader, held to the lower ``_read_budget``.
        return (
            self._writing
            and self._batch_writes
            and self._in_flight + self.protocol.pending()
            > (self._budget if stream_id else self._read_budget)
        )

    async def _send(self, data: bytes) -> None:
        if self._broken:
            return
        try:
            await self._stream.send(data)
            self._record.bytes_out += len(data)
        except (
            anyio.BrokenResourceError,
            anyio.ClosedResourceError,
            anyio.EndOfStream,  # anyio's TLS stream, when the peer closed under us
            OSError,
        ):
            self._on_broken()

    def _on_broken(self) -> None:
        # The peer is gone: every stream sees a disconnect, nobody waits for credit.
        self._broken = True
        for stream in self._streams.values():
            stream.reset()
        self._wake_all_senders()
        self._reader_scope_cancel()
        self._wake_timer()

    async def _close_stream(self) -> None:
        with anyio.CancelScope(shield=True), anyio.move_on_after(5):
            try:
                await self._stream.aclose()
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                pass
