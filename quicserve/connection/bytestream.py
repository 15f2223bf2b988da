"""The byte-stream driver: HTTP/1.1 or HTTP/2 over one connected TCP, TLS or Unix stream.

:func:`serve_connection` is where every accepted TCP connection starts. On asyncio and
uvloop it is a plain socket, served callback-driven by ``connection/callback.py``; on trio
an anyio socket stream, served on its socket by :class:`SocketDriver` (plain TCP and Unix)
or :class:`TLSSocketDriver` (TLS: an ``ssl.SSLObject`` over memory buffers) with
``trio.lowlevel`` (no anyio stream layers, no scheduler trip for bytes that are already
there). Both are a :class:`ByteStreamDriver`, which is one
:class:`~quicserve.connection.bytebase.ByteStreamBase`: the same protocol choice, events
and streams as the callback driver; only the I/O differs.

:class:`ByteStreamDriver` is the glue between a TCP (or TLS) byte stream, the HTTP/1.1 or
HTTP/2 protocol object that parses it, and the streams that run the app. It owns:

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
* the stream runners, tasks in the connection's task group that run the requests (on
  HTTP/1.1, :class:`SocketDriver` runs each in the task that read it instead);
* the switch from HTTP/1.1 to HTTP/2 on ``Upgrade: h2c``.

It never parses HTTP itself, and never opens sockets: the TCP endpoint
(``transport/tcp.py``) hands :func:`serve_connection` an accepted stream, which does the TLS
handshake (bounded by ``header_read_timeout``) and picks the protocol: ALPN on TLS, the
HTTP/2 connection preface on cleartext. Everything it does to a peer is bounded by the
protocol's timers and limits.
"""

from __future__ import annotations

import logging
import math
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Generator
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import anyio.lowlevel
import sniffio

from ..addresses import peer_address
from ..connection_info import ConnectionInfo
from ..lowlevel import Wakeup
from ..protocol.base import ByteStreamProtocol
from ..protocol.http1 import switching_response
from ..transport.trioedge import EdgeHub, edge_hub
from .bytebase import ByteStreamBase, preface_verdict, start_protocol
from .callback import serve_callback_connection
from .driver import AnyStream

if TYPE_CHECKING:
    from ..registry import ConnectionRecord
    from ..transport.tcp import TCPEndpoint
    from .context import ServerContext

logger = logging.getLogger("quicserve.error")

_READ_SIZE = 65536
#: A reader whose peer keeps its socket full never waits in ``receive`` on asyncio (the
#: bytes are there already), so it lets the other tasks run at least this often (s).
_READ_SLICE = 0.005
#: A writer whose socket takes every write at once (trio, :class:`SocketDriver`) yields
#: after this many bytes so written in a row (16 x 64 KiB body chunks: about 1 ms).
#: Bytes, not writes: small HTTP/1.1 responses run in the reading task, which yields on
#: its own clock (``_READ_SLICE``); a yield every 16 of them made every 16th request hand
#: reading to the helper task for nothing.
_SEND_BURST = 16 * 65536
#: The ``trio`` module, imported the first time a connection is served on trio (importing
#: it costs ~0.1 s that asyncio servers need not pay).
_trio: Any = None
_wait_readable: Any = None

_current_time = time.monotonic


async def serve_connection(
    stream: anyio.abc.SocketStream | socket.socket, endpoint: TCPEndpoint, context: ServerContext
) -> None:
    """Handshake, choose HTTP/1.1 or HTTP/2, and serve the connection to its end.

    An accepted plain socket (asyncio and uvloop) is served callback-driven
    (``connection/callback.py``); an anyio stream (trio) by :class:`ByteStreamDriver`."""
    if isinstance(stream, socket.socket):
        await serve_callback_connection(stream, endpoint, context)
        return
    config = context.config
    try:
        client = peer_address(stream.extra(anyio.abc.SocketAttribute.remote_address))
        server = peer_address(stream.extra(anyio.abc.SocketAttribute.local_address))
    except Exception:
        # The peer already hung up (reset, or closed before we looked): nothing to serve.
        context.registry.release_slot()
        await _aclose(stream)
        return
    # Read once: a certificate reload (Server.reload) swaps both for later connections.
    ssl_context, tls_info = endpoint.ssl_context, endpoint.tls_info
    record = context.registry.add("tcp", "tls" if ssl_context else "tcp", client, server)
    try:
        # trio's accepted streams (transport/sockets.py) are served on the socket itself.
        raw = _raw_trio_socket(stream)
        initial = b""
        tls = None
        tls_state: _TLSState | None = None
        with anyio.move_on_after(config.header_read_timeout) as scope:
            if ssl_context is not None:
                try:
                    tls_state = await _tls_handshake_socket(raw, ssl_context)
                except (ssl.SSLError, OSError, _trio.ClosedResourceError) as exc:
                    logger.debug("TLS handshake with %s failed: %s", client, exc)
                    context.registry.handshake_failures["tcp"] += 1
                    await _aclose(stream)
                    return
                assert tls_info is not None
                tls = tls_info.build(tls_state.sslobj)
                use_h2 = tls_state.sslobj.selected_alpn_protocol() == "h2"
            else:
                initial, use_h2 = await _sniff_preface_socket(raw)
        if scope.cancelled_caught:
            await _aclose(stream)
            return
        info, protocol = start_protocol(context, record, client, server, tls, use_h2)
        connection: SocketDriver
        if tls_state is not None:
            connection = TLSSocketDriver(context, stream, raw, info, protocol, record, tls_state)
        else:
            connection = SocketDriver(context, stream, raw, info, protocol, record)
        context.registry.attach(record, connection)
        await connection.run(initial)
    except Exception:
        # A bug in one connection must not take the server down: log it, drop only
        # this connection.
        logger.exception("Unexpected error on connection from %s", client)
        await _aclose(stream)
    finally:
        context.registry.remove(record)


def _on_trio() -> bool:
    """Whether trio runs this task (and then ``_trio`` is the imported module)."""
    global _trio, _wait_readable
    try:
        if sniffio.current_async_library() != "trio":
            return False
    except sniffio.AsyncLibraryNotFoundError:
        return False
    if _trio is None:
        import trio
        import trio.lowlevel

        _trio = trio
        _wait_readable = trio.lowlevel.wait_readable
    return True


def _raw_trio_socket(stream: anyio.abc.SocketStream) -> socket.socket:
    """The connected socket under a stream trio's listeners made, served with trio's own
    primitives (:class:`SocketDriver`, :class:`TLSSocketDriver`); the stream still owns it."""
    if not _on_trio():
        raise TypeError(f"not a trio socket stream: {stream!r}")
    sock: socket.socket = stream.extra(anyio.abc.SocketAttribute.raw_socket)
    return sock


def _backend_clock() -> Callable[[], float]:
    """The running backend's clock (cancel scope deadlines are in its time)."""
    if _on_trio():
        clock: Callable[[], float] = _trio.current_time
        return clock
    return anyio.current_time


async def _sniff_preface_socket(sock: socket.socket) -> tuple[bytes, bool]:
    """:func:`_sniff_preface` on a socket served by :class:`SocketDriver`."""
    data = b""
    while True:
        chunk = await _trio_recv(sock)
        if not chunk:
            return data, False
        data += chunk
        verdict = preface_verdict(data)
        if verdict is not None:
            return data, verdict


async def _trio_recv(sock: socket.socket) -> bytes:
    """What the peer sent (``b""`` at EOF or once the connection is gone), waiting with
    trio's ``wait_readable`` only while nothing is there. No scheduler trip when bytes are
    waiting: trio's socket ``recv`` checkpoints before and after every syscall."""
    while True:
        try:
            return sock.recv(_READ_SIZE)
        except BlockingIOError:
            pass
        except OSError:
            return b""
        try:
            await _wait_readable(sock)
        except (_trio.ClosedResourceError, OSError):
            return b""


async def _trio_send_all(sock: socket.socket, data: bytes) -> None:
    """Write all of ``data``, waiting with trio only while the socket is full."""
    try:
        sent = sock.send(data)
    except BlockingIOError:
        sent = 0
    if sent < len(data):
        await _trio_send_rest(sock, memoryview(data)[sent:])


async def _trio_send_rest(sock: socket.socket, view: memoryview) -> None:
    """The rest of a write the socket did not take whole: it is full, so wait first."""
    while view:
        await _trio.lowlevel.wait_writable(sock)
        try:
            view = view[sock.send(view) :]
        except BlockingIOError:
            pass


class _TLSState:
    """A server-side TLS session over two memory buffers (:class:`TLSSocketDriver`)."""

    __slots__ = ("incoming", "outgoing", "sslobj")

    def __init__(self, ssl_context: ssl.SSLContext) -> None:
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.sslobj = ssl_context.wrap_bio(self.incoming, self.outgoing, server_side=True)


async def _tls_handshake_socket(sock: socket.socket, ssl_context: ssl.SSLContext) -> _TLSState:
    """The server's TLS handshake on a socket served by :class:`TLSSocketDriver`; what
    the client sent after its Finished stays in ``incoming`` for the driver. Raises
    ``ssl.SSLError`` for a failed handshake, ``ConnectionError`` if the peer left."""
    state = _TLSState(ssl_context)
    while True:
        try:
            state.sslobj.do_handshake()
            break
        except ssl.SSLWantReadError:
            pending = state.outgoing.read()
            if pending:
                await _trio_send_all(sock, pending)
            data = await _trio_recv(sock)
            if not data:
                raise ConnectionError("the peer closed during the TLS handshake") from None
            state.incoming.write(data)
    pending = state.outgoing.read()  # the server's Finished, session tickets
    if pending:
        await _trio_send_all(sock, pending)
    return state


class ByteStreamDriver(ByteStreamBase):
    """Serves HTTP/1.1 or HTTP/2 on one connected anyio byte stream until it closes: the
    loops, timers and write path; :class:`SocketDriver` and :class:`TLSSocketDriver` do
    the reads and writes."""

    def __init__(
        self,
        context: ServerContext,
        stream: anyio.abc.ByteStream,
        info: ConnectionInfo,
        protocol: ByteStreamProtocol,
        record: ConnectionRecord,
    ) -> None:
        super().__init__(context, info, protocol, record)
        self._stream = stream
        self._writing = False
        #: Bytes of the write in progress (handed to the socket, not yet accepted by it).
        self._in_flight = 0
        self._drained: Wakeup | None = None
        self._reader_scope: anyio.CancelScope | None = None
        self._read_wakeup: Wakeup | None = None
        self._timer_wakeup: Wakeup | None = None
        self._timer_target = math.inf
        self._flush_requested = False
        #: The backend's own checkpoint (anyio's looks the backend up on every call).
        self._checkpoint: Callable[[], Awaitable[None]] = (
            _trio.lowlevel.checkpoint if _on_trio() else anyio.lowlevel.checkpoint
        )
        #: When the read loop next lets other tasks run if it has not waited by then.
        self._read_yield_at = 0.0

    # -- the read loop -----------------------------------------------------------------

    async def run(self, initial_data: bytes = b"") -> None:
        """Serve until the protocol closes or the peer goes away."""
        try:
            async with anyio.create_task_group() as tg:
                self._task_group = tg
                tg.start_soon(self._timer_loop)
                await self._write_out()
                if initial_data:
                    # Read while telling HTTP/1.1 from HTTP/2: counted like every read.
                    self._record.bytes_in += len(initial_data)
                    self._receive(initial_data)
                    await self._write_out()
                with anyio.CancelScope() as self._reader_scope:
                    await self._read_loop()
                # Whatever the protocol produced last (a GOAWAY, a final error) goes out
                # before the connection closes.
                await self._write_out()
                # Streams still running finish (or see their reset) before we close.
                self._stop_runners()
                self._wake_timer()
        finally:
            self._task_group = None
            await self._close_stream()

    async def _receive_bytes(self) -> bytes:
        """The next bytes from the peer; ``b""`` at EOF or once the connection is gone
        (the subclasses read their socket)."""
        raise NotImplementedError

    async def _read_loop(self) -> None:
        record = self._record
        checkpoint = self._checkpoint
        self._read_yield_at = _current_time() + _READ_SLICE
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
            data = await self._receive_bytes()
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
            if now >= self._read_yield_at:
                # A flood of small frames (PINGs: ~30 us of h2 each) must not starve
                # every other connection of this worker.
                await checkpoint()
                self._read_yield_at = now + _READ_SLICE

    async def _timer_loop(self) -> None:
        """Header-read and keep-alive deadlines, without a cancel scope per read.

        The task sleeps until the protocol's deadline; while there is none it re-checks
        every ``poll`` seconds. A deadline that moves later needs no wake-up (the task
        finds the new one when it wakes); only an earlier one wakes it early.

        The sleep is one cancel scope whose deadline is moved, not a scope per sleep: the
        task wakes for every deferred write (a WebSocket burst, HTTP/2 WINDOW_UPDATEs), and
        ``anyio.move_on_after`` each time was 5-6% of a WebSocket echo on trio (py-spy,
        issue 11). A new scope is made only after one expired. Between sleeps the
        deadline is infinite, so an expiry never cancels a write.
        """
        poll = min(self.config.keep_alive_timeout, self.config.header_read_timeout)
        clock = _backend_clock()
        while not self._closing:
            with anyio.CancelScope() as scope:
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
                    scope.deadline = clock() + (target - now)
                    await wakeup.wait()
                    if scope.cancel_called:
                        # The deadline passed as the wake-up came: this scope would cancel
                        # the next write; the next turn gets a fresh one.
                        break
                    scope.deadline = math.inf

    def _wake_timer(self) -> None:
        if self._timer_wakeup is not None:
            self._timer_wakeup.set()

    def _reader_scope_cancel(self) -> None:
        if self._reader_scope is not None:
            self._reader_scope.cancel()
        if self._read_wakeup is not None:
            self._read_wakeup.set()
            self._read_wakeup = None

    def _on_credit(self) -> None:
        if self._batch_writes:
            # HTTP/2: the credit became WINDOW_UPDATE frames that must be written now; a
            # peer that used up its window sends nothing until it sees them, so waiting
            # for the next write would deadlock a large upload. The timer task writes.
            self._request_flush()
        if self._read_wakeup is not None and self.protocol.wants_read():
            self._read_wakeup.set()
            self._read_wakeup = None

    async def _switch_to_h2c(self) -> None:
        upgrade = self._upgrade
        assert upgrade is not None
        self._upgrade = None
        await self._write_out()  # anything h11 still had, then the 101
        await self._send(switching_response())
        self._become_h2c(upgrade)
        await self._write_out()

    def _request_flush(self) -> None:
        # The timer task writes: it belongs to this connection.
        if not self._flush_requested:
            self._flush_requested = True
            self._wake_timer()

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
                await self._checkpoint()
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
        """Write ``data`` whole, or mark the connection broken (the subclasses write their
        socket)."""
        raise NotImplementedError

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


class SocketDriver(ByteStreamDriver):
    """:class:`ByteStreamDriver` on a plain TCP or Unix socket on trio, with trio's own
    primitives instead of anyio's stream layers (issue 11: trio served HTTP/1.1 at half
    asyncio's rate; py-spy put a third of its time in those layers).

    * Reading: ``sock.recv`` first; ``trio.lowlevel.wait_readable`` only when nothing is
      there (trio's socket ``recv`` adds a checkpoint before and a scheduler trip after
      every syscall, anyio's stream a guard and an exception translation around that).
    * Writing: ``sock.send`` first; ``wait_writable`` only while the kernel buffer is full.
      A write the socket takes whole does not yield, except once per ``_SEND_BURST``, so
      an app sending a large body to a fast reader does not starve other connections.
    * Read readiness comes from the worker's edge-triggered epoll set
      (``transport/trioedge.py``): one ``epoll_ctl`` per connection, where trio's own
      ``wait_readable`` re-arms the socket with one per wait (11 % of an HTTP/1.1 worker).
    * HTTP/1.1 requests run in the task that read them (``_serve_loop``): no hand-off to a
      stream runner unless the request waits, and then reading moves, not the request.
    * The anyio stream stays the owner of the socket: closing it tells trio the fd is
      closing (``notify_closing``), which wakes a task still waiting on it.
    """

    def __init__(
        self,
        context: ServerContext,
        stream: anyio.abc.ByteStream,
        sock: socket.socket,
        info: ConnectionInfo,
        protocol: ByteStreamProtocol,
        record: ConnectionRecord,
    ) -> None:
        super().__init__(context, stream, info, protocol, record)
        self._sock = sock
        #: The descriptor, for trio's I/O manager (saves it a ``fileno()`` per wait).
        self._fd = sock.fileno()
        self._unyielded_bytes = 0
        self._socket_empty = False
        #: Read readiness from the worker's edge-triggered set (one ``epoll_ctl`` per
        #: connection instead of one per wait), or trio's ``wait_readable`` without it.
        hub = edge_hub()
        self._hub: EdgeHub | None = hub if hub is not None and hub.register(self._fd) else None
        self._wait_readable = self._hub.wait_readable if self._hub is not None else _wait_readable
        # HTTP/1.1 requests run in the task that read them (see ``_serve_loop``).
        #: The task reading the socket now (``None``: nobody; the next free task takes it).
        self._leader: Any = None
        #: The task running a request now (one at a time: HTTP/1.1 is sequential).
        self._inline_task: Any = None
        #: The connection's task (``run``) and its reader scope, and the one helper task
        #: (made the first time a request waits) and its scope.
        self._main_task: Any = None
        self._helper_task: Any = None
        self._helper_scope: anyio.CancelScope | None = None
        self._helper_started = False
        #: Tasks with nothing to do (neither reading nor running a request).
        self._followers: list[Wakeup] = []
        #: Nobody reads any more (end of stream, closed, broken): the loops end.
        self._read_over = False

    async def _receive_bytes(self) -> bytes:
        sock = self._sock
        # The last read took less than it asked for: the socket is most likely empty (a
        # client waiting for its response), so wait first instead of paying for a recv
        # that fails (a syscall and an exception per request).
        wait = self._socket_empty
        while True:
            if wait:
                try:
                    await self._wait_readable(self._fd)
                except (_trio.ClosedResourceError, OSError):
                    return b""
                # This task just waited: its slice without a yield starts again.
                self._read_yield_at = _current_time() + _READ_SLICE
            try:
                data = sock.recv(_READ_SIZE)
            except BlockingIOError:
                wait = True
                continue
            except OSError:
                return b""
            self._socket_empty = len(data) < _READ_SIZE
            return data

    # -- HTTP/1.1 requests in the reading task -------------------------------------------

    def _inline(self) -> bool:
        """Whether requests run in the task that read them: HTTP/1.1 (not after an h2c
        switch) where the edge hub serves (Linux); elsewhere the stream runner stays, as
        the path measured and tested there."""
        return self._hub is not None and not self._batch_writes

    async def flush(self, stream_id: int) -> None:
        """As :meth:`ByteStreamBase.flush`; on HTTP/1.1 only the write: nothing is held
        per stream there (``buffered_amount`` is 0) and a second writer already waits
        for the first (so ``_over_budget`` is false), as ``CallbackDriver.flush`` has it."""
        if self._batch_writes:
            await super().flush(stream_id)
        elif not self._defer_tunnel_write():
            await self._write_out()

    def _launch(self, stream: AnyStream) -> None:
        if not self._inline():
            super()._launch(stream)
            return
        # The task that dispatched it (the reader, or the one finishing the request
        # before it: pipelining) runs it at the top of its ``_serve_loop``.
        self._queue.append(stream)

    async def _read_loop(self) -> None:
        if not self._inline():
            await super()._read_loop()
            return
        self._main_task = _trio.lowlevel.current_task()
        await self._serve_loop()

    async def _helper_loop(self) -> None:
        try:
            with anyio.CancelScope() as self._helper_scope:
                self._helper_task = _trio.lowlevel.current_task()
                if self.protocol.closed or self._broken or self._read_over:
                    return  # the scope was not there to cancel
                await self._serve_loop()
        finally:
            self._helper_task = None
            self._helper_scope = None

    async def _serve_loop(self) -> None:
        """The HTTP/1.1 read loop, run by the connection's task and, once a request has
        had to wait, by one helper task: whichever task is free reads (the leader); a task
        that reads a request runs it itself, so a request that never waits costs no task
        switch (on trio the hand-off from the reader to a stream runner was a scheduler
        pass per request: issue 11). If the request waits (the app awaits anything that
        parks: body, a timer, I/O), the other task takes over reading before it parks
        (``_hand_off``, called between the request's first step and the rest, ``_Resume``),
        so request bodies, the peer's end and disconnects are seen as before.

        Every exit path of the inherited read loop is kept: end of stream, the protocol
        closing, the peer gone, the h2c switch (after it the leader reads HTTP/2 as
        :meth:`ByteStreamDriver._read_loop` does, with stream runners)."""
        me = _trio.lowlevel.current_task()
        record = self._record
        queue = self._queue
        checkpoint = self._checkpoint
        self._read_yield_at = _current_time() + _READ_SLICE
        try:
            while True:
                if queue and self._inline_task is None:
                    self._inline_task = me
                    try:
                        while queue:
                            # The request's first step, here: most never yield.
                            step = queue.popleft().run().__await__()
                            try:
                                trap = step.send(None)
                            except StopIteration:
                                continue
                            self._hand_off()
                            await _Resume(step, trap)
                    finally:
                        self._inline_task = None
                    await self._write_out()
                    now = _current_time()
                    if now >= self._read_yield_at:
                        # A pipelined flood must not starve the other connections.
                        await checkpoint()
                        self._read_yield_at = now + _READ_SLICE
                    continue
                protocol = self.protocol
                if protocol.closed or self._broken or self._read_over or self._closing:
                    return
                leader = self._leader
                if leader is not None and leader is not me:
                    wakeup = self.new_wakeup()
                    self._followers.append(wakeup)
                    await wakeup.wait()
                    continue
                self._leader = me
                if self._upgrade is not None:
                    await self._switch_to_h2c()
                    await ByteStreamDriver._read_loop(self)
                    return
                if not protocol.wants_read():
                    wakeup = self._read_wakeup = self.new_wakeup()
                    await wakeup.wait()
                    continue
                data = await self._receive_bytes()
                record.bytes_in += len(data)
                self._receive(data)
                if not data:
                    self._read_over = True
                if queue:
                    # Free the reading role while this task runs the request.
                    self._leader = None
                    continue
                await self._write_out()
                now = _current_time()
                if now >= self._read_yield_at:
                    await checkpoint()
                    self._read_yield_at = now + _READ_SLICE
        finally:
            if self._leader is me:
                self._leader = None
            if self._inline_task is None:
                # This task is done reading for good: so is the other one.
                self._read_over = True
                self._wake_followers()

    def _hand_off(self) -> None:
        """A request running in its reading task is about to wait: a free task (the
        helper, made the first time) takes over reading."""
        if self._leader is not None or self._read_over or self._task_group is None:
            return
        if self._followers:
            self._followers.pop().set()
        elif not self._helper_started and not self._closing:
            self._helper_started = True
            self._task_group.start_soon(self._helper_loop)

    def _wake_followers(self) -> None:
        followers = self._followers
        while followers:
            followers.pop().set()

    def _stop_runners(self) -> None:
        super()._stop_runners()
        self._wake_followers()

    def _reader_scope_cancel(self) -> None:
        # Reading stops; a task running a request is not cancelled (its request goes on,
        # as on a stream runner, and its loop ends after it).
        if not self._inline():
            # HTTP/2 after an h2c switch: either task may be the one reading it.
            if self._helper_scope is not None:
                self._helper_scope.cancel()
            super()._reader_scope_cancel()
            return
        inline = self._inline_task
        if self._reader_scope is not None and (inline is None or inline is not self._main_task):
            self._reader_scope.cancel()
        helper = self._helper_scope
        if helper is not None and (inline is None or inline is not self._helper_task):
            helper.cancel()
        if self._read_wakeup is not None:
            self._read_wakeup.set()
            self._read_wakeup = None
        self._wake_followers()

    async def _close_stream(self) -> None:
        # Out of the edge-triggered set before the descriptor is closed (its number is
        # reused by the next connection).
        if self._hub is not None:
            self._hub.unregister(self._fd)
        await super()._close_stream()

    async def _send(self, data: bytes) -> None:
        if self._broken:
            return
        if await self._write_socket(data):
            self._record.bytes_out += len(data)

    async def _write_socket(self, data: bytes) -> bool:
        """Write all of ``data`` to the socket; False (and the connection broken) if the
        peer is gone."""
        sock = self._sock
        try:
            try:
                sent = sock.send(data)
            except BlockingIOError:
                sent = 0
            if sent < len(data):
                await _trio_send_rest(sock, memoryview(data)[sent:])
                self._unyielded_bytes = 0
                return True
        except (OSError, _trio.ClosedResourceError):
            self._on_broken()
            return False
        # Counted, not timed: the sending task (a stream runner) yields between requests
        # where this driver cannot see it, so a per-connection clock would make nearly
        # every small response yield once more for nothing.
        self._unyielded_bytes += sent
        if self._unyielded_bytes >= _SEND_BURST:
            self._unyielded_bytes = 0
            await _trio.lowlevel.checkpoint()
        return True


class TLSSocketDriver(SocketDriver):
    """:class:`SocketDriver` with TLS: the socket's bytes go through an ``ssl.SSLObject``
    over two memory buffers here, as asyncio's SSL protocol does inside its event loop,
    instead of through anyio's ``TLSStream`` (issue 11: trio served HTTP/1.1 over TLS at
    0.57x asyncio; py-spy put half of its time under ``TLSStream``, its socket stream and
    their exception handling, and every request went through a stream runner).

    * Reading: whole TLS records already in ``incoming`` are decrypted first (one
      ``read`` per record, and no ``SSLWantReadError`` when the buffer ends on a record
      boundary); only then is the socket read (:meth:`SocketDriver._receive_bytes`: the
      edge hub, one ``recv``). A ``close_notify`` or the socket's end is the stream's end.
    * Writing: ``write`` encrypts into ``outgoing``, which one writer at a time empties to
      the socket (:meth:`_drain_outgoing`), so records leave in the order they were made
      even when a read produced some (TLS 1.3 KeyUpdate).
    * HTTP/1.1 requests run in the reading task, as on plain TCP; HTTP/2 keeps its stream
      runners. A ``close_notify`` goes out before the socket closes (unless the peer is
      gone); a peer that leaves without one has simply ended the stream.
    """

    def __init__(
        self,
        context: ServerContext,
        stream: anyio.abc.ByteStream,
        sock: socket.socket,
        info: ConnectionInfo,
        protocol: ByteStreamProtocol,
        record: ConnectionRecord,
        tls: _TLSState,
    ) -> None:
        super().__init__(context, stream, sock, info, protocol, record)
        self._incoming = tls.incoming
        self._outgoing = tls.outgoing
        self._sslobj = tls.sslobj
        self._draining = False

    async def _receive_bytes(self) -> bytes:
        incoming = self._incoming
        sslobj = self._sslobj
        while True:
            if incoming.pending or sslobj.pending():
                try:
                    data = sslobj.read(_READ_SIZE)
                except ssl.SSLWantReadError:
                    pass  # a record is not complete yet
                except ssl.SSLError:
                    return b""  # bad record, or the peer's TLS ended it: the stream ends
                else:
                    if data and incoming.pending:
                        data = self._more_records(data)
                    if self._outgoing.pending:
                        await self._drain_outgoing()
                    return data  # b"": the peer's close_notify
            raw = await SocketDriver._receive_bytes(self)
            if not raw:
                return b""
            incoming.write(raw)

    def _more_records(self, data: bytes) -> bytes:
        """``data`` and the records after it in ``incoming``, up to ``_READ_SIZE`` bytes:
        one parser call for a burst of records (a peer's 1-byte records cost one call each
        otherwise, and a 64 KiB upload four)."""
        incoming = self._incoming
        sslobj = self._sslobj
        parts = [data]
        total = len(data)
        while incoming.pending and total < _READ_SIZE:
            try:
                more = sslobj.read(_READ_SIZE - total)
            except ssl.SSLError:
                break  # incomplete (the next read waits for it) or bad (the next read says)
            if not more:
                break  # close_notify: the next read returns b"" again
            parts.append(more)
            total += len(more)
        return b"".join(parts)

    async def _close_stream(self) -> None:
        if not self._broken:
            self._send_close_notify()
        await super()._close_stream()

    def _send_close_notify(self) -> None:
        """The TLS closure alert before the socket closes (RFC 8446 §6.1; asyncio's SSL
        transport sends it too): a client reading a response delimited by the connection's
        end can tell the end from a truncation. Best effort, without waiting: the socket
        takes a few dozen bytes, or the peer is gone and the close follows anyway."""
        try:
            self._sslobj.unwrap()  # writes close_notify, then wants the peer's
        except ssl.SSLError:
            pass
        data = self._outgoing.read()
        if data:
            try:
                self._sock.send(data)
            except OSError:
                pass

    async def _send(self, data: bytes) -> None:
        if self._broken:
            return
        try:
            self._sslobj.write(data)
        except ssl.SSLError:
            self._on_broken()
            return
        await self._drain_outgoing()
        if not self._broken:
            self._record.bytes_out += len(data)

    async def _drain_outgoing(self) -> None:
        """Write the encrypted records to the socket; one task at a time (another one
        already doing it takes the new records too)."""
        if self._draining:
            return
        self._draining = True
        outgoing = self._outgoing
        try:
            while outgoing.pending and not self._broken:
                await self._write_socket(outgoing.read())
        finally:
            self._draining = False


class _Resume:
    """Awaits the rest of a coroutine that was started by hand (its first ``send`` made
    outside, which gave ``trap``): what ``await`` does, written out, since ``yield from``
    cannot take over a coroutine that has started."""

    __slots__ = ("_step", "_trap")

    def __init__(self, step: Generator[Any, Any, None], trap: Any) -> None:
        self._step = step
        self._trap = trap

    def __await__(self) -> Generator[Any, Any, None]:
        step = self._step
        trap = self._trap
        while True:
            try:
                value = yield trap
            except GeneratorExit:
                step.close()
                raise
            except BaseException as exc:  # trio throws nothing in, but keep await's rules
                try:
                    trap = step.throw(exc)
                except StopIteration:
                    return
            else:
                try:
                    trap = step.send(value)
                except StopIteration:
                    return


async def _aclose(stream: anyio.abc.AsyncResource) -> None:
    with anyio.CancelScope(shield=True), anyio.move_on_after(1):
        try:
            await stream.aclose()
        except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass
