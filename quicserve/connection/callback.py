"""The callback-driven byte-stream driver: HTTP/1.1 or HTTP/2 on asyncio and uvloop.

The same job as ``connection/bytestream.py``'s :class:`ByteStreamDriver` (which trio
uses), with the event loop's callbacks instead of a read-loop task and a timer task, as
Uvicorn's ``asyncio.Protocol`` does: per request that saves the reader task's wake-up and
the stream adapter's ``receive``/``send`` (issue 11). Both drivers are one
:class:`~quicserve.connection.bytebase.ByteStreamBase`: the events reach the same streams
through the same ``ConnectionDriver``; only the I/O differs.

* Reading: :meth:`CallbackDriver.data_received` feeds the protocol and dispatches its events
  at once. While ``protocol.wants_read()`` is false (request backpressure, pipelining) what
  arrives is kept aside and the transport stops reading (``pause_reading``); it is fed once
  the protocol wants it again (``resume_reading``).
* Writing: what the protocol produced goes to ``transport.write`` without an await. HTTP/1.1
  writes at once; HTTP/2 writes once per loop iteration (``call_soon``), so the frames of
  every stream that ran in it leave in one write. The write budget
  (``Config.connection_write_buffer_size``) is the transport's high-water mark on HTTP/1.1:
  a send waits while the transport says ``pause_writing``. On HTTP/2 the mark is the lower
  read budget: a send waits while the bytes held (in the transport and framed by h2) pass
  the budget, and reading stops while they pass the read budget, so a peer that does not
  read cannot make us frame answers for it; ``resume_writing`` lets both go on.
* Timers: the protocol's deadline (header-read, keep-alive, h2 idle) is one ``call_later``
  handle, moved only when the deadline comes earlier; a late one is found when it fires.
* TLS is asyncio's SSL transport (``transport/callback.py``); the handshake is bounded by
  ``header_read_timeout``; ALPN picks HTTP/2, the cleartext preface likewise.
* Requests run on the connection's stream runner (``driver.py``), as on trio. Beginning an
  HTTP/1.1 request inside the read callback that parsed it (as Python 3.12's eager tasks
  would) was tried in issue 11: fewer instructions in-process, but 1.06-1.11x the server
  CPU per request under wrk on plaintext and 1.16-1.29x over TLS, so it was taken out.

Rules: no task of its own per connection but the one holding its task group; nothing here
blocks; every callback catches what it raises (a bug closes this connection only).
"""

from __future__ import annotations

import asyncio
import logging
import math
import socket
import time
from collections import deque
from typing import TYPE_CHECKING

import anyio

from ..addresses import peer_address
from ..connection_info import ConnectionInfo
from ..lowlevel import Wakeup
from ..protocol.base import ByteStreamProtocol
from ..protocol.http1 import switching_response
from ..transport.callback import CallbackConnection, open_callback_connection
from .bytebase import ByteStreamBase, preface_verdict, start_protocol
from .driver import ConnectionDriver

if TYPE_CHECKING:
    from ..registry import ConnectionRecord
    from ..transport.tcp import TCPEndpoint
    from .context import ServerContext

logger = logging.getLogger("quicserve.error")

_current_time = time.monotonic
#: Bytes fed to the protocol at a time: the stream driver's read size, and on TLS one
#: record's worth.
_READ_SIZE = 65536
_TLS_READ_SIZE = 16384


async def serve_callback_connection(
    sock: socket.socket, endpoint: TCPEndpoint, context: ServerContext
) -> None:
    """Handshake, choose HTTP/1.1 or HTTP/2, and serve the accepted ``sock`` to its end."""
    config = context.config
    try:
        client = peer_address(sock.getpeername())
        server = peer_address(sock.getsockname())
    except OSError:
        # The peer already hung up (reset, or closed before we looked): nothing to serve.
        context.registry.release_slot()
        sock.close()
        return
    # Read once: a certificate reload (Server.reload) swaps both for later connections.
    ssl_context, tls_info = endpoint.ssl_context, endpoint.tls_info
    record = context.registry.add("tcp", "tls" if ssl_context else "tcp", client, server)
    connection: CallbackConnection | None = None
    try:
        initial = b""
        tls = None
        use_h2 = False
        with anyio.move_on_after(config.header_read_timeout) as scope:
            try:
                connection = await open_callback_connection(
                    sock, ssl_context, config.header_read_timeout
                )
            except Exception as exc:
                # A failed handshake, or a peer that reset while its transport was being
                # made (uvloop may report that as other than OSError): drop it quietly.
                if ssl_context is not None:
                    logger.debug("TLS handshake with %s failed: %s", client, exc)
                    context.registry.handshake_failures["tcp"] += 1
                else:
                    logger.debug("Connection from %s lost before serving: %r", client, exc)
                return
            if ssl_context is not None:
                ssl_object = connection.extra("ssl_object")
                assert tls_info is not None and ssl_object is not None
                use_h2 = ssl_object.selected_alpn_protocol() == "h2"
                tls = tls_info.build(ssl_object)
            else:
                while True:
                    chunk = await connection.receive_early()
                    if not chunk:
                        break
                    initial += chunk
                    verdict = preface_verdict(initial)
                    if verdict is not None:
                        use_h2 = verdict
                        break
        if scope.cancelled_caught:
            if connection is not None:
                connection.close()
            else:
                sock.close()
            return
        assert connection is not None
        info, protocol = start_protocol(context, record, client, server, tls, use_h2)
        driver = CallbackDriver(context, connection, info, protocol, record)
        context.registry.attach(record, driver)
        await driver.run(initial)
    except Exception:
        # A bug in one connection must not take the server down: log it, drop only
        # this connection.
        logger.exception("Unexpected error on connection from %s", client)
        if connection is not None:
            connection.abort()
        else:
            sock.close()
    except BaseException:
        # Cancelled (the server is stopping) during the handshake, the preface or the
        # driver: no transport may outlive the loop (uvloop cannot close a loop that still
        # holds one: seen as EBUSY when a browser connected just as a test's server stopped).
        if connection is not None:
            if not connection.lost:
                connection.abort()
        else:
            sock.close()
        raise
    finally:
        context.registry.remove(record)


class CallbackDriver(ByteStreamBase):
    """Serves HTTP/1.1 or HTTP/2 on one :class:`CallbackConnection` until it closes; it is
    that connection's :class:`~quicserve.transport.callback.ByteSink`."""

    def __init__(
        self,
        context: ServerContext,
        connection: CallbackConnection,
        info: ConnectionInfo,
        protocol: ByteStreamProtocol,
        record: ConnectionRecord,
    ) -> None:
        super().__init__(context, info, protocol, record)
        self._conn = connection
        #: What arrived while the protocol wanted no more (``b""``: the peer's EOF).
        self._stash: deque[bytes] = deque()
        self._stash_scheduled = False
        #: Reading is over (EOF, protocol closed, connection lost): ``run`` winds down.
        self._reading_done = False
        self._done: Wakeup | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_target = math.inf
        self._flush_scheduled = False
        #: HTTP/2: reading stopped because the peer does not read what it asked for.
        self._budget_paused = False
        self._slice = _READ_SIZE if info.tls is None else _TLS_READ_SIZE
        #: Graceful shutdown reached this connection: a TLS close does not wait for the
        #: peer's close_notify then.
        self._server_stopping = False
        self._set_write_limit()

    def _set_write_limit(self) -> None:
        self._conn.set_write_limit(self._read_budget if self._batch_writes else self._budget)

    async def run(self, initial_data: bytes = b"") -> None:
        """Serve until the protocol closes or the peer goes away."""
        connection = self._conn
        try:
            async with anyio.create_task_group() as tg:
                self._task_group = tg
                done = self._done = self.new_wakeup()
                self._write_now()
                if initial_data:
                    # Read while telling HTTP/1.1 from HTTP/2: counted like every read.
                    self._record.bytes_in += len(initial_data)
                    self._feed(initial_data)
                if not self._reading_done:
                    connection.attach(self)
                if not self._reading_done:
                    self._arm_timer()
                    await done.wait()
                # Whatever the protocol produced last (a GOAWAY, a final error) goes out
                # before the connection closes; streams still running finish (or see their
                # reset) before we close.
                self._write_now()
                self._stop_runners()
        finally:
            self._task_group = None
            self._cancel_timer()
            connection.detach()
            if self._info.tls is not None and (
                self._broken
                or connection.write_buffer_size() > self._budget
                or (self._server_stopping and not connection.write_buffer_size())
            ):
                # A TLS close waits for the peer's close_notify while it reads (and
                # decrypts) whatever the peer sends, for up to 30 s: a peer that does not
                # read what it is owed (more than the budget: sends wait before that, so
                # an orderly close holds less) but floods us (PINGs) would have us decrypt
                # its flood all that time. Nothing more reaches it anyway: drop it. Nor
                # when the server is stopping and all was handed to the socket: the loop
                # ends with it, and uvloop cannot close a loop that still holds a
                # transport (EBUSY).
                connection.abort()
            else:
                connection.close()

    def shutdown(self) -> None:
        """Graceful shutdown reached this connection (see ``ByteStreamBase.shutdown``)."""
        self._server_stopping = True
        super().shutdown()

    # -- ByteSink: what the connection calls -------------------------------------------

    def data_received(self, data: bytes) -> None:
        """Bytes from the peer: parse and dispatch now, or keep them aside."""
        self._record.bytes_in += len(data)
        if self._reading_done:
            return
        if self._stash or self._budget_paused or not self.protocol.wants_read():
            self._stash.append(data)
            self._conn.pause_reading()
            return
        try:
            if len(data) > self._slice:
                self._feed_slices(data)
            else:
                self._feed(data)
        except Exception:
            self._fail()

    def eof_received(self) -> None:
        """The peer ended its side: the protocol sees the end, answers still go out."""
        if self._reading_done:
            return
        if self._stash or self._budget_paused or not self.protocol.wants_read():
            # The end comes after what the protocol has not taken yet.
            self._stash.append(b"")
            return
        try:
            self._feed(b"")
        except Exception:
            self._fail()

    def connection_lost(self) -> None:
        """The connection is gone: every stream sees a disconnect."""
        if not self._broken:
            self._on_broken()

    def writing_paused(self) -> None:
        """The transport holds more than its high-water mark (waiters check themselves)."""

    def writing_resumed(self) -> None:
        """The transport drained: sends waiting for the budget, and reading, go on."""
        self._release_budget_waiters()
        if self._budget_paused and not self._over_budget(0):
            self._budget_paused = False
            self._resume_reading()

    # -- reading -----------------------------------------------------------------------

    def _feed(self, data: bytes) -> None:
        protocol = self.protocol
        protocol.receive_data(data, _current_time())
        self._dispatch()
        if self._upgrade is not None:
            self._switch_to_h2c()
            protocol = self.protocol
        if self._batch_writes:
            self._request_flush()
        else:
            self._write_now()
        if not data or protocol.closed:
            self._end_reading()
        else:
            if self._batch_writes and self._over_budget(0):
                # HTTP/2: what this peer sends makes us answer (PING and SETTINGS ACKs,
                # responses); while it does not read those, we read no more of it.
                self._budget_paused = True
                self._conn.pause_reading()
            self._arm_timer()

    def _feed_slices(self, data: bytes) -> None:
        # A transport hands over all it read (TLS: decrypted) at once, 256 KiB and more:
        # feed it as the stream driver reads, a slice (TLS: a record) at a time, so that
        # HTTP/2 stops at its read budget (a PING flood must not be parsed past it) and
        # HTTP/1.1 at its read-ahead.
        view = memoryview(data)
        size = self._slice
        for start in range(0, len(data), size):
            if self._reading_done:
                return
            if self._budget_paused or not self.protocol.wants_read():
                self._stash.appendleft(bytes(view[start:]))
                self._conn.pause_reading()
                return
            self._feed(bytes(view[start : start + size]))

    def _end_reading(self) -> None:
        if not self._reading_done:
            self._reading_done = True
            self._stash.clear()
            self._conn.pause_reading()
            self._cancel_timer()
            if self._done is not None:
                self._done.set()

    def _resume_reading(self) -> None:
        """Read again if the protocol wants data and the budget allows; what was kept
        aside is fed first, from the loop (never from inside a stream's call)."""
        if self._reading_done or self._budget_paused or not self.protocol.wants_read():
            return
        if self._stash:
            if not self._stash_scheduled:
                self._stash_scheduled = True
                self._conn.call_soon(self._feed_stash)
            return
        self._conn.resume_reading()

    def _feed_stash(self) -> None:
        self._stash_scheduled = False
        stash = self._stash
        try:
            while stash and not self._reading_done and not self._budget_paused:
                if not self.protocol.wants_read():
                    return
                data = stash.popleft()
                if len(data) > self._slice:
                    self._feed_slices(data)
                else:
                    self._feed(data)
        except Exception:
            self._fail()
            return
        self._resume_reading()

    def _switch_to_h2c(self) -> None:
        upgrade = self._upgrade
        assert upgrade is not None
        self._upgrade = None
        self._write_now()  # anything h11 still had, then the 101
        self._write(switching_response())
        self._become_h2c(upgrade)
        self._set_write_limit()

    def _on_credit(self) -> None:
        if self._batch_writes:
            # HTTP/2: the credit became WINDOW_UPDATE frames that must be written now; a
            # peer that used up its window sends nothing until it sees them.
            self._request_flush()
        if self._stash or not self._conn.reading:
            self._resume_reading()

    def _poke_reader(self) -> None:
        # The protocol's state changed outside the read path (a response ended, a
        # shutdown began): stop reading if it closed, resume if it wants data again, and
        # move the timer if its deadline came earlier.
        if self.protocol.closed:
            self._end_reading()
            return
        if self._stash or not self._conn.reading:
            self._resume_reading()
        self._arm_timer()

    # -- timers ------------------------------------------------------------------------

    def _arm_timer(self) -> None:
        deadline = self.protocol.get_timer()
        if deadline is None or deadline >= self._timer_target or self._reading_done:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_target = deadline
        self._timer = self._conn.call_later(max(0.0, deadline - _current_time()), self._on_timer)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_target = math.inf

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_target = math.inf
        if self._reading_done:
            return
        try:
            protocol = self.protocol
            now = _current_time()
            deadline = protocol.get_timer()
            if deadline is not None and now >= deadline:
                protocol.handle_timer(now)
                self._dispatch()
                self._write_now()
                if protocol.closed:
                    self._end_reading()
                    return
            self._arm_timer()
        except Exception:
            self._fail()

    # -- writing -----------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        self._conn.write(data)
        self._record.bytes_out += len(data)

    def _write_now(self) -> None:
        connection = self._conn
        if self._broken or connection.lost:
            return
        protocol = self.protocol
        data = protocol.data_to_send()
        if data:
            connection.write(data)  # self._write inlined: this is the per-request path
            self._record.bytes_out += len(data)
            # HTTP/1.1 hands a large body piece apart from the head before it (no copy
            # to join them): write the rest.
            while protocol.split_output and (data := protocol.data_to_send()):
                self._write(data)
        if self._budget_waiters and not self._over_budget(-1):
            self._release_budget_waiters()
        if protocol.closed:
            self._end_reading()

    async def flush(self, stream_id: int) -> None:
        """As :meth:`ByteStreamBase.flush`, with the common case (the write went out, the
        stream and the connection are within their budgets) free of further awaits."""
        if not self._batch_writes:
            # HTTP/1.1: nothing is held per stream (``buffered_amount`` is 0), and the
            # budget is the transport's high-water mark.
            if self._defer_tunnel_write():
                return
            self._write_now()
            if self._conn.write_paused:
                await self._wait_for_budget(stream_id)
            return
        self._request_flush()
        if self.protocol.buffered_amount(stream_id) > self._buffer_limit:
            # Waits for the stream's flow control (HTTP/2), then for the budget.
            await ConnectionDriver.flush(self, stream_id)
        elif self._over_budget(stream_id):
            await self._wait_for_budget(stream_id)

    async def stream_finished(self, stream_id: int) -> None:
        """As :meth:`ConnectionDriver.stream_finished`, with the write made here (it
        never waits), not in a coroutine of its own."""
        self._release_stream(stream_id)
        if self._batch_writes:
            self._request_flush()
        else:
            self._write_now()
        self._poke_reader()

    async def _write_out(self) -> None:
        if self._batch_writes:
            self._request_flush()
        else:
            self._write_now()

    def _request_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._conn.call_soon(self._flush_now)

    def _flush_now(self) -> None:
        self._flush_scheduled = False
        try:
            self._write_now()
            if self._budget_paused and not self._over_budget(0):
                self._budget_paused = False
                self._resume_reading()
        except Exception:
            self._fail()

    def _over_budget(self, stream_id: int) -> bool:
        # HTTP/1.1: the transport's high-water mark is the budget. HTTP/2: the bytes held
        # (in the transport, and framed by h2 but not yet written) against the budget; the
        # reader (stream 0) against the lower read budget.
        if not self._batch_writes:
            return self._conn.write_paused
        held = self._conn.write_buffer_size() + self.protocol.pending()
        return held > (self._read_budget if stream_id == 0 else self._budget)

    # -- the end -----------------------------------------------------------------------

    def _on_broken(self) -> None:
        # The peer is gone: every stream sees a disconnect, nobody waits for credit.
        self._broken = True
        for stream in self._streams.values():
            stream.reset()
        self._wake_all_senders()
        self._end_reading()

    def _fail(self) -> None:
        # A bug in a callback: log it and drop this connection only.
        logger.exception("Unexpected error on connection from %s", self._info.client)
        self._conn.abort()
        if not self._broken:
            self._on_broken()
