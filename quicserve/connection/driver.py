"""The connection driver: what every connection shares, whatever its transport.

:class:`ConnectionDriver` takes the neutral events a protocol produced (``quicserve.events``)
and hands them to the stream objects that run the app (``HTTPStream``, ``WebSocketStream``,
``WebTransportSession``), and is the :class:`~quicserve.streams.http.StreamHost` they answer
through. Its two subclasses add the I/O: :class:`~quicserve.connection.bytestream.ByteStreamDriver`
(HTTP/1.1 and HTTP/2 over TCP, TLS or a Unix socket) and
:class:`~quicserve.connection.quic.QuicDriver` (HTTP/3 over one QUIC connection).

Rules:

* Requests (and pushed requests) run on the connection's stream runners, tasks in its task
  group; HTTP/1.1 runs one at a time, multiplexed protocols as many as the protocol's
  limits allow. (On trio, HTTP/1.1 over a plain socket runs each request in the task that
  read it instead: ``bytestream.py`` ``SocketDriver._serve_loop``.)
* ``flush`` never lets one stream or one connection hold more than its write budget for a
  peer that is not reading: sends wait (``Config.write_buffer_size`` per stream,
  ``Config.connection_write_buffer_size`` per connection).
* Request bodies are acknowledged to the protocol (``ack_body``) only as the app receives
  them, so a slow app never makes the server buffer unbounded data.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import anyio.abc
import anyio.lowlevel

from ..connection_info import ConnectionInfo
from ..events import (
    BodyEnded,
    BodyReceived,
    ConnectionClosed,
    Headers,
    RequestReceived,
    StreamReset,
    StreamWritable,
)
from ..lowlevel import Wakeup, wakeup_factory
from ..protocol.base import PushProtocol, ServerProtocol, WebTransportProtocol
from ..stats import HTTP, WEBSOCKET, WEBTRANSPORT, Started
from ..streams.http import HTTPStream, RefusedStream, connection_extensions
from ..streams.websocket import WebSocketStream, is_websocket_request
from ..streams.webtransport import WebTransportSession, is_webtransport_request

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from ..registry import ConnectionRecord
    from .context import ServerContext

logger = logging.getLogger("quicserve.error")

AnyStream = HTTPStream | WebSocketStream | WebTransportSession
#: What ``--metrics-bind``'s RequestStats call each stream type.
_KIND = {HTTPStream: HTTP, WebSocketStream: WEBSOCKET, WebTransportSession: WEBTRANSPORT}
#: Shared by every connection without --metrics-bind (never written: nothing is timed).
_NOT_TIMED: dict[int, Started] = {}


class Runnable(Protocol):
    """What a stream runner takes from the queue: a stream, or (``connection/callback.py``)
    the rest of an app call that began outside the runner."""

    def run(self) -> Awaitable[None]:
        """The app call (or its rest), awaited by the runner."""


# Protocol timers only need a monotonic clock, and every sleep is relative; calling
# anyio.current_time() looks the backend up on each call (6% of an HTTP/1.1 request).
_current_time = time.monotonic


class ConnectionDriver:
    """What every connection driver shares, TCP or QUIC: it hands protocol events to
    :class:`HTTPStream` objects and is the :class:`~quicserve.streams.http.StreamHost` they
    answer through. Subclasses supply the I/O: ``_write_out`` (send what the protocol
    produced), ``_poke_reader`` (the protocol's state changed outside the read path) and
    ``_on_credit`` (the app consumed request body)."""

    def __init__(
        self,
        context: ServerContext,
        info: ConnectionInfo,
        protocol: ServerProtocol,
        record: ConnectionRecord,
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
        #: Only with --metrics-bind: when each open stream started (see stats.py).
        self._stats = context.registry.request_stats
        self._started: dict[int, Started] = {} if self._stats is not None else _NOT_TIMED
        self._broken = False
        self._closing = False
        self._task_group: anyio.abc.TaskGroup | None = None
        self._queue: deque[Runnable] = deque()
        self._idle_runners: list[Wakeup] = []
        self._runners = 0
        self._max_runners = 1_000_000 if info.capabilities.multiplexed else 1
        #: ``--limit-concurrency`` (0: none); the count is ``context.in_flight``.
        self._concurrency_limit = context.config.limit_concurrency

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
            if type(event) is BodyReceived:
                stream = streams.get(event.stream_id)
                if stream is not None:
                    stream.body_received(event.data)
                else:
                    # A finished stream's late body: discard, but give the credit back.
                    protocol.ack_body(event.stream_id, len(event.data))
            elif type(event) is RequestReceived:
                self._start_stream(event)
            elif type(event) is BodyEnded:
                stream = streams.get(event.stream_id)
                if stream is not None:
                    stream.body_ended()
            elif type(event) is StreamWritable:
                waiter = self._writable.pop(event.stream_id, None)
                if waiter is not None:
                    waiter.set()
            elif type(event) is StreamReset:
                stream = streams.get(event.stream_id)
                if stream is not None:
                    stream.reset()
                waiter = self._writable.pop(event.stream_id, None)
                if waiter is not None:
                    waiter.set()
                if self._budget_waiters and stream is not None:
                    self._budget_reset.add(event.stream_id)
                    self._release_budget_waiters()
            elif type(event) is ConnectionClosed:
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
            elif (
                self.config.webtransport
                and is_webtransport_request(request)
                and isinstance(self.protocol, WebTransportProtocol)
            ):
                # Only HTTP/3 carries WebTransport here; elsewhere it is an unknown
                # :protocol (501), as it is with --webtransport off.
                kind = WebTransportSession
        make = kind
        if self._concurrency_limit:
            # Counted from here to _release_stream, which every stream type reaches
            # from its run() (its finally), whatever the app did. A refused request is
            # still counted in the metrics as what it asked to be (kind).
            context = self.context
            if context.in_flight >= self._concurrency_limit:
                make = RefusedStream
            else:
                context.in_flight += 1
        stream = make(self.context.app, self, self._info, request, self.context.lifespan_state)
        self._streams[request.stream_id] = stream
        self._record.requests += 1
        if self._stats is not None:
            self._started[request.stream_id] = self._stats.start(
                _KIND[kind], self._info.http_version, request.method
            )
        self._launch(stream)

    def _launch(self, stream: AnyStream) -> None:
        """Run a registered stream's app call on one of the connection's stream runners.

        Runners are long-lived tasks that take streams from a queue, because waking an
        idle task is much cheaper than spawning one per request (anyio's spawn was 9-12%
        of a request's time). HTTP/1.1 has one runner, so its requests run in order;
        multiplexed protocols grow a runner per concurrent stream and keep them."""
        assert self._task_group is not None
        self._queue.append(stream)
        if self._idle_runners:
            self._idle_runners.pop().set()
        elif self._runners < self._max_runners:
            self._runners += 1
            self._task_group.start_soon(self._runner)

    async def _runner(self) -> None:
        queue = self._queue
        try:
            while True:
                while queue:
                    await queue.popleft().run()
                if self.protocol.closed or self._broken or self._closing:
                    return
                wakeup = self.new_wakeup()
                self._idle_runners.append(wakeup)
                await wakeup.wait()
        finally:
            self._runners -= 1

    def _shutdown_streams(self) -> None:
        """Graceful shutdown reached this connection: open WebSockets close with 1001
        (requests just finish). The caller writes out what that produced."""
        for stream in list(self._streams.values()):
            stream.server_shutdown()

    def _stop_runners(self) -> None:
        """Let idle stream runners end (the connection is closing)."""
        self._closing = True
        for wakeup in self._idle_runners:
            wakeup.set()
        self._idle_runners.clear()

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
        self._release_stream(stream_id)
        await self._write_out()
        self._poke_reader()

    def _release_stream(self, stream_id: int) -> None:
        """The I/O-free part of :meth:`stream_finished`: forget the stream, tell the
        protocol, and dispatch what that produced (the next pipelined request)."""
        stream = self._streams.pop(stream_id, None)
        if stream is not None:
            self._status_counts[stream.status] += 1
            if self._concurrency_limit and type(stream) is not RefusedStream:
                self.context.in_flight -= 1
            if self._stats is not None:
                started = self._started.pop(stream_id, None)
                if started is not None:
                    self._stats.finish(started, stream.status)
        self._writable.pop(stream_id, None)
        if self._budget_reset:
            self._budget_reset.discard(stream_id)
        self.protocol.stream_done(stream_id, _current_time())
        self._dispatch()

    def push(self, parent: RequestReceived, path: bytes, headers: Headers) -> None:
        """Promise and serve a pushed resource (only HTTP/2 offers push)."""
        protocol = self.protocol
        if not isinstance(protocol, PushProtocol):
            return
        stream_id = protocol.push_promise(parent.stream_id, path, headers)
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
