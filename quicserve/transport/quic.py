"""The QUIC endpoint: one UDP socket, many QUIC connections, HTTP/3 on each.

I/O only: deciding what a datagram is (route, accept, Version Negotiation, Retry,
stateless reset) is :class:`~quicserve.quic.endpoint.EndpointCore`'s job, QUIC itself is
aioquic's (through :mod:`quicserve.quic.compat`), HTTP/3 is
:class:`~quicserve.protocol.http3.H3Protocol`'s, and the requests are
:class:`~quicserve.streams.http.HTTPStream`'s, the same as on TCP.

Rules:

* Datagrams are read in batches: wait until the socket is readable, then ``recvfrom``
  until it would block (at most ``_BATCH`` at a time, so one busy socket cannot starve
  the loop). Sends are plain non-blocking ``sendto`` calls, which cannot interleave; if
  the kernel buffer is full the datagram waits for writability (serialized by a lock).
* One timer wheel per endpoint drives every connection's single deadline
  (``get_timer``). A connection adds a wheel entry only when its deadline moves earlier;
  a later deadline is picked up when the old entry fires. No task is
  spawned per send or per timer.
* Routing is by connection ID only, so a client that changes address keeps its
  connection; the ASGI ``client`` of later requests follows aioquic's validated path.
* Any exception from one connection closes that connection only and is logged; a bad
  datagram never stops the endpoint.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import os
import socket
import time
from collections import OrderedDict
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import anyio.lowlevel
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.logger import QuicFileLogger
from aioquic.tls import SessionTicket

from ..config import Config, parse_bind
from ..connection import StreamDispatcher
from ..connection_info import HTTP3_CAPABILITIES, ConnectionInfo
from ..events import SessionDatagramReceived, SessionStreamDataReceived
from ..lowlevel import Wakeup, wakeup_factory
from ..protocol.base import DatagramProtocol
from ..protocol.http3 import H3Protocol
from ..quic.compat import ServerQuicConnection, quic_configuration
from ..quic.endpoint import Accept, EndpointCore, Reply, Route
from ..quic.lb import CidLayout
from ..quic.tokens import TokenAuthority
from ..streams.webtransport import WebTransportSession
from ..tls import TLSConfigError, load_quic_certificate
from .sockets import BindError, inherited_socket

if TYPE_CHECKING:
    from ..registry import ConnectionRecord
    from ..server import ServerContext
    from ..worker import DatagramRouter

logger = logging.getLogger("quicserve.error")

_BATCH = 64
# Linux UDP_SEGMENT (GSO): at most 64 segments and 64 KiB per send.
_UDP_SEGMENT = 103
_GSO_MAX_SEGMENTS = 64
_GSO_MAX_BYTES = 65000
_now = time.monotonic


class SessionTicketStore:
    """TLS session tickets for resumption, in memory and bounded.

    A ticket is handed out once (``pop``): that makes 0-RTT data single-use, the
    anti-replay measure RFC 9001 §9.2 asks servers to consider.
    """

    def __init__(self, capacity: int) -> None:
        self._tickets: OrderedDict[bytes, SessionTicket] = OrderedDict()
        self._capacity = capacity

    def add(self, ticket: SessionTicket) -> None:
        """Keep a ticket we issued (the oldest goes when full)."""
        self._tickets[ticket.ticket] = ticket
        while len(self._tickets) > self._capacity:
            self._tickets.popitem(last=False)

    def pop(self, label: bytes) -> SessionTicket | None:
        """The ticket a client presents, removed so it cannot be used twice."""
        return self._tickets.pop(label, None)

    def __len__(self) -> int:
        return len(self._tickets)


class QuicEndpoint:
    """One ``--quic-bind`` address: the UDP socket and the connections behind it."""

    def __init__(self, sock: socket.socket, context: ServerContext) -> None:
        config = context.config
        self.socket = sock
        self.context = context
        self.config = config
        # Workers (and a machine behind a QUIC-LB load balancer) issue CIDs that name them
        # (quic/lb.py); workers also share the token secret, so a Retry token or a
        # stateless reset made by one worker is good in every other.
        worker = context.worker
        layout: CidLayout | None = None
        slot = 0
        tokens: TokenAuthority | None = None
        if worker is not None:
            layout, slot, tokens = worker.layout, worker.slot, TokenAuthority(worker.secret)
        elif config.quic_lb_server_id:
            layout = CidLayout.from_hex(config.quic_lb_server_id)
        cid_length = layout.cid_length if layout is not None else 8
        self.core = EndpointCore(
            supported_versions=list(_configuration_versions(config)),
            retry=config.quic_retry,
            retry_threshold=config.quic_retry_threshold,
            max_connections=config.quic_max_connections,
            max_handshakes=config.quic_max_handshakes,
            max_unvalidated_per_address=config.quic_max_handshakes_per_address or None,
            cid_length=cid_length,
            cid_generator=layout.generator(slot) if layout is not None else None,
            tokens=tokens,
        )
        self.configuration = build_quic_configuration(config)
        self.configuration.connection_id_length = cid_length
        #: With workers: sends datagrams that belong to another worker there.
        self.router: DatagramRouter | None = None
        self._read_scope: anyio.CancelScope | None = None
        self.tickets = SessionTicketStore(config.quic_session_tickets)
        self.handlers: dict[int, QuicConnectionHandler] = {}
        self._ids = itertools.count(1)
        self._heap: list[tuple[float, int, int]] = []
        self._heap_seq = itertools.count()
        self._wheel_target = math.inf
        self._wheel_wakeup: anyio.Event | None = None
        self._send_lock = anyio.Lock()
        self._task_group: anyio.abc.TaskGroup | None = None
        self._closing = False
        # Connections with output to send at the next turn of the flusher task.
        self._dirty: dict[int, QuicConnectionHandler] = {}
        self._flush_wakeup: Wakeup | None = None
        self.stats = {
            "datagrams_in": 0,
            "datagrams_out": 0,
            "send_blocked": 0,
            "gso_sends": 0,
            # Connections that ended before their handshake completed.
            "handshake_failures": 0,
            # Requests on a new path (the ASGI client changed), and 0-RTT requests.
            "migrations": 0,
            "early_data_requests": 0,
        }
        self._gso = hasattr(socket.socket, "sendmsg") and os.name == "posix"

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port)."""
        name = self.socket.getsockname()
        return (str(name[0]), int(name[1]))

    @property
    def gso_enabled(self) -> bool:
        """Whether datagram runs still go out with UDP segmentation offload."""
        return self._gso

    # -- receiving ----------------------------------------------------------------------

    async def serve(self, task_group: anyio.abc.TaskGroup) -> None:
        """Read datagrams until cancelled or :meth:`stop_reading`; connections run in
        ``task_group``."""
        self._task_group = task_group
        task_group.start_soon(self._timer_wheel)
        task_group.start_soon(self._flusher)
        if self.context.worker is not None:
            self.context.worker.attach(self)
        with anyio.CancelScope() as self._read_scope:
            await self._read_loop()

    def stop_reading(self) -> None:
        """Stop reading the UDP socket (a worker handing its socket to its successor);
        sending, timers and datagrams forwarded to us go on."""
        if self._read_scope is not None:
            self._read_scope.cancel()

    def receive(self, data: bytes, addr: Any) -> None:
        """One datagram from ``addr`` that reached us some other way (forwarded)."""
        self.stats["datagrams_in"] += 1
        try:
            self._datagram_received(data, addr)
        except Exception:
            logger.exception("Unexpected error handling a datagram from %s", addr)

    async def _read_loop(self) -> None:
        sock = self.socket
        router = self.router
        while True:
            await anyio.wait_readable(sock)
            for _ in range(_BATCH):
                try:
                    data, addr = sock.recvfrom(65536)
                except BlockingIOError:
                    break
                except OSError:
                    # ICMP errors surface here on Linux (e.g. port unreachable): ignore.
                    continue
                self.stats["datagrams_in"] += 1
                if router is not None and router.divert(data, addr):
                    continue
                try:
                    self._datagram_received(data, addr)
                except Exception:
                    logger.exception("Unexpected error handling a datagram from %s", addr)

    def _datagram_received(self, data: bytes, addr: Any) -> None:
        now = _now()
        decision: Any = self.core.classify(data, addr, now)
        cls = type(decision)
        if cls is Route:
            handler = self.handlers.get(decision.key)
            if handler is not None:
                handler.datagram_received(data, addr, now)
        elif cls is Accept:
            self._accept(decision, data, addr, now)
        elif cls is Reply:
            self.sendto(decision.datagram, addr)

    def _accept(self, decision: Accept, data: bytes, addr: Any, now: float) -> None:
        if self._closing or self._task_group is None:
            return
        registry = self.context.registry
        if not registry.try_acquire_slot():
            return  # full: the client will retry its Initial
        key = next(self._ids)
        quic = ServerQuicConnection(
            configuration=self.configuration,
            original_destination_connection_id=decision.original_dcid,
            retry_source_connection_id=decision.retry_scid,
            session_ticket_fetcher=self.tickets.pop,
            session_ticket_handler=self.tickets.add,
            cid_factory=self.core.new_connection_id,
            stream_window=self.config.quic_stream_window_size,
            max_streams=self.config.quic_max_streams,
            max_fragments=self.config.quic_max_fragments,
            allow_early_data=self.config.quic_0rtt,
        )
        quic.guard(
            max_crypto_buffer=self.config.quic_max_crypto_buffer,
            max_ack_frames_per_packet=self.config.quic_max_ack_frames_per_packet,
        )
        record = registry.add("udp", "h3", _address(addr), self.address)
        handler = QuicConnectionHandler(self, key, quic, record)
        registry.attach(record, handler)
        self.handlers[key] = handler
        core = self.core
        core.register_cid(decision.dcid, key)
        for cid in quic.host_connection_ids():
            core.register_cid(cid, key)
        # Per-address accounting only for addresses Retry validated (a spoofed Initial
        # must not use up someone else's allowance), or for all without Retry.
        validated = decision.retry_scid is not None or self.config.quic_retry == "never"
        core.handshake_started(key, _address(addr) if validated else None)
        self._task_group.start_soon(handler.run)
        handler.datagram_received(data, addr, now)

    def connection_finished(self, handler: QuicConnectionHandler) -> None:
        """A connection is gone: forget its CIDs, timers and slot."""
        self.handlers.pop(handler.key, None)
        if not handler.handshake_reported:
            self.stats["handshake_failures"] += 1
            self.context.registry.handshake_failures["udp"] += 1
        self.core.forget(handler.key)
        self.context.registry.remove(handler.record)

    # -- sending ------------------------------------------------------------------------

    def send_many(self, datagrams: list[tuple[bytes, Any]]) -> None:
        """Send a connection's datagrams, in runs of one ``sendmsg`` each where possible.

        With UDP generic segmentation offload (Linux ``UDP_SEGMENT``) a run of datagrams
        of one size to one address (the last may be shorter) goes to the kernel as one
        buffer that it splits: one syscall instead of one per ~1350 bytes, which was 14% of
        a bulk download's time. Where the kernel refuses, we fall back to ``sendto``.
        """
        count = len(datagrams)
        if not self._gso or count < 2:
            for data, addr in datagrams:
                self.sendto(data, addr)
            return
        i = 0
        while i < count:
            data, addr = datagrams[i]
            size = len(data)
            total = size
            j = i + 1
            while j < count and j - i < _GSO_MAX_SEGMENTS:
                following, to = datagrams[j]
                length = len(following)
                if to != addr or length > size or total + length > _GSO_MAX_BYTES:
                    break
                total += length
                j += 1
                if length < size:
                    break  # only the last segment may be shorter
            if j - i == 1 or not self._send_segments(datagrams[i:j], size, addr):
                for one, to in datagrams[i:j]:
                    self.sendto(one, to)
            i = j

    def _send_segments(self, run: list[tuple[bytes, Any]], size: int, addr: Any) -> bool:
        try:
            self.socket.sendmsg(
                [b"".join(data for data, _ in run)],
                [(socket.SOL_UDP, _UDP_SEGMENT, size.to_bytes(2, "little"))],
                0,
                addr,
            )
        except BlockingIOError:
            return False
        except OSError as exc:
            logger.info("UDP segmentation offload unavailable (%s); sending datagrams singly", exc)
            self._gso = False
            return False
        self.stats["datagrams_out"] += len(run)
        self.stats["gso_sends"] += 1
        return True

    def sendto(self, data: bytes, addr: Any) -> None:
        """Send one datagram now; if the kernel buffer is full, send it when writable."""
        try:
            self.socket.sendto(data, addr)
            self.stats["datagrams_out"] += 1
        except BlockingIOError:
            self.stats["send_blocked"] += 1
            if self._task_group is not None:
                self._task_group.start_soon(self._send_when_writable, data, addr)
        except OSError as exc:
            logger.debug("sendto %s failed: %s", addr, exc)

    async def _send_when_writable(self, data: bytes, addr: Any) -> None:
        # anyio sockets allow one waiting sender at a time: serialize.
        async with self._send_lock:
            for _ in range(100):
                await anyio.wait_writable(self.socket)
                try:
                    self.socket.sendto(data, addr)
                    self.stats["datagrams_out"] += 1
                    return
                except BlockingIOError:
                    continue
                except OSError:
                    return

    def request_transmit(self, handler: QuicConnectionHandler) -> None:
        """Send ``handler``'s datagrams at the flusher's next turn, not now.

        Apps' ``send()`` calls only mark their connection: everything the streams of all
        connections produce until the event loop runs the flusher leaves together, so
        a WebSocket echoing a burst of messages sends a few full packets rather than a
        packet per message.
        """
        self._dirty[handler.key] = handler
        wakeup = self._flush_wakeup
        if wakeup is not None:
            self._flush_wakeup = None
            wakeup.set()

    def forget_transmit(self, handler: QuicConnectionHandler) -> None:
        """``handler`` is sending its output itself right now."""
        self._dirty.pop(handler.key, None)

    async def _flusher(self) -> None:
        new_wakeup = wakeup_factory()
        while True:
            if not self._dirty:
                wakeup = self._flush_wakeup = new_wakeup()
                await wakeup.wait()
            dirty, self._dirty = self._dirty, {}
            now = _now()
            for handler in dirty.values():
                handler.transmit_now(now)
            await anyio.lowlevel.checkpoint()

    # -- timers -------------------------------------------------------------------------

    def arm(self, key: int, deadline: float) -> None:
        """Make the wheel call the connection's ``timer_fired`` at ``deadline``.

        The heap holds connection keys, not connections: a finished connection is gone
        from ``handlers`` at once, and its entries cost a tuple until they expire.
        """
        heapq.heappush(self._heap, (deadline, next(self._heap_seq), key))
        if deadline < self._wheel_target and self._wheel_wakeup is not None:
            self._wheel_wakeup.set()

    @property
    def timer_entries(self) -> int:
        """Entries in the timer wheel (a few per connection)."""
        return len(self._heap)

    async def _timer_wheel(self) -> None:
        heap = self._heap
        handlers = self.handlers
        while True:
            now = _now()
            while heap and heap[0][0] <= now:
                _, _, key = heapq.heappop(heap)
                handler = handlers.get(key)
                if handler is not None:
                    handler.timer_fired(now)
            self._wheel_target = heap[0][0] if heap else math.inf
            wakeup = self._wheel_wakeup = anyio.Event()
            delay = self._wheel_target - now if heap else 3600.0
            with anyio.move_on_after(max(delay, 0.0)):
                await wakeup.wait()

    def shutdown(self) -> None:
        """Stop accepting connections (existing ones drain through the registry)."""
        self._closing = True


class QuicConnectionHandler(StreamDispatcher):
    """Drives one QUIC connection: datagrams in, HTTP/3 streams, datagrams out."""

    def __init__(
        self,
        endpoint: QuicEndpoint,
        key: int,
        quic: ServerQuicConnection,
        record: ConnectionRecord,
    ) -> None:
        context = endpoint.context
        protocol: DatagramProtocol = H3Protocol(quic, context.config)
        info = ConnectionInfo(
            http_version="3",
            scheme="https",
            client=record.client,
            server=record.server,
            capabilities=HTTP3_CAPABILITIES,
            tls={
                "server_cert": None,
                "client_cert_chain": [],
                "client_cert_name": None,
                "client_cert_error": None,
                "tls_version": 0x0304,
                "cipher_suite": None,
            },
        )
        super().__init__(context, info, protocol, record)
        self.endpoint = endpoint
        self.key = key
        self.record = record
        self.quic = quic
        # QUIC's current deadline, and our entries in the wheel (a heap of their times).
        self.deadline: float | None = None
        self.scheduled: list[float] = []
        # QUIC holds in-flight data for the app's sends; a larger budget than TCP's keeps
        # a bulk transfer from stalling on the ACK clock.
        self._buffer_limit = max(self.config.write_buffer_size, 1024 * 1024)
        # The connection's budget is never below one stream's, so a single transfer is
        # not slowed by it. A stream holding no more than its share of the budget never
        # waits on it, which spares the sum over every stream on most sends (at most
        # ``quic_max_streams`` shares can be out on top of the budget).
        self._budget = max(self._budget, self._buffer_limit)
        self._budget_share = self._budget // max(1, self.config.quic_max_streams)
        self._finished = anyio.Event()
        self.handshake_reported = False
        self._peer = record.client
        self._early_streams: list[Any] = []
        self._in_input = False

    async def run(self) -> None:
        """Own this connection's streams until QUIC terminates."""
        try:
            async with anyio.create_task_group() as tg:
                self._task_group = tg
                # Streams whose requests came in the same batch of datagrams as the
                # handshake, before this task started.
                for stream in self._early_streams:
                    super()._launch(stream)
                self._early_streams.clear()
                await self._finished.wait()
                self._stop_workers()
        except Exception:
            # A bug while serving one of its streams (the app's own exceptions never get
            # here) must not reach the endpoint's task group and stop every connection:
            # log it and close this connection alone, as the TCP side does.
            self._fail("serving a stream")
        finally:
            self._task_group = None
            self.endpoint.connection_finished(self)

    # -- from the endpoint --------------------------------------------------------------

    def datagram_received(self, data: bytes, addr: Any, now: float) -> None:
        """One datagram for this connection."""
        try:
            self.protocol.receive_datagram(data, addr, now)
            self.record.bytes_in += len(data)
            self._after_input(now)
        except Exception:
            self._fail("handling a datagram")

    def timer_fired(self, now: float) -> None:
        """One of our wheel entries is due (the wheel fires them in order, so it is our
        earliest)."""
        heapq.heappop(self.scheduled)
        self.on_timer(now)

    def on_timer(self, now: float) -> None:
        """The wheel woke us: handle QUIC's deadline if it passed, else re-arm for it (it
        moved later since the wheel entry was made)."""
        deadline = self.deadline
        if deadline is None:
            return
        if now < deadline:
            self._schedule(deadline)
            return
        self.deadline = None
        try:
            self.protocol.handle_timer(now)
            self._after_input(now)
        except Exception:
            self._fail("handling a timer")

    def _schedule(self, deadline: float) -> None:
        # Only a deadline earlier than every wheel entry we have needs a new entry; a
        # later one is found when an entry fires and re-arms. Entries are not dropped
        # when the deadline moves earlier: each still fires and re-arms, so the wheel
        # holds a few entries per connection. (Dropping them as stale instead let every
        # idle -> ACK-timer -> idle cycle leave a dead entry for a whole idle timeout: a
        # peer sending PINGs grew the heap by one entry per PING.)
        entries = self.scheduled
        if not entries or deadline < entries[0]:
            heapq.heappush(entries, deadline)
            self.endpoint.arm(self.key, deadline)

    def _after_input(self, now: float) -> None:
        protocol = self.protocol
        core = self.endpoint.core
        if protocol.issued_cids:
            for cid in protocol.issued_cids:
                core.register_cid(cid, self.key)
            protocol.issued_cids.clear()
        if protocol.retired_cids:
            for cid in protocol.retired_cids:
                core.unregister_cid(cid)
            protocol.retired_cids.clear()
        if protocol.handshake_complete and not self.handshake_reported:
            self.handshake_reported = True
            core.handshake_done(self.key)
        self._in_input = True
        try:
            self._dispatch()
        finally:
            self._in_input = False
        self._wake_writers()
        self._transmit(now)
        if protocol.closed:
            self._connection_gone()
            self._finished.set()

    def _connection_gone(self) -> None:
        # QUIC has terminated (the peer closed, we closed it for a protocol error, or it
        # idled out): nothing more will leave or be acknowledged, so an app blocked in
        # send() waiting for its buffered response to drain must wake now and see the
        # disconnect its stream was given. Without this its call, and the connection's
        # task and state, stayed until... never: the buffer never drains.
        self._broken = True
        self._wake_all_senders()

    def _wake_writers(self) -> None:
        # ACKs may have freed buffered response data: wake the sends waiting on it.
        if self._budget_waiters and self.quic.held_bytes() <= self._budget:
            self._release_budget_waiters()
        if not self._writable:
            return
        protocol = self.protocol
        limit = self._buffer_limit
        for stream_id in [s for s in self._writable if protocol.buffered_amount(s) <= limit]:
            self._writable.pop(stream_id).set()

    def _transmit(self, now: float) -> None:
        endpoint = self.endpoint
        datagrams = self.protocol.datagrams_to_send(now)
        if datagrams:
            endpoint.send_many(datagrams)
            self.record.bytes_out += sum(len(data) for data, _ in datagrams)
        deadline = self.protocol.get_timer()
        self.deadline = deadline
        if deadline is not None:
            self._schedule(deadline)

    def _fail(self, what: str) -> None:
        # One broken connection must not affect the others: log it, close it.
        logger.exception("Unexpected error %s on QUIC connection from %s", what, self._peer)
        try:
            self.quic.close(error_code=0x1, reason_phrase="internal error")
            self._transmit(_now())
        except Exception:
            pass
        for stream in list(self._streams.values()):
            stream.reset()
        self._broken = True
        self._release_budget_waiters()
        self._finished.set()

    # -- StreamDispatcher hooks ---------------------------------------------------------

    def _start_stream(self, request: Any) -> None:
        # Migration: new requests report the path the connection is on now.
        peer = _address(self.quic.peer_address)
        if peer is not None and peer != self._info.client:
            self._info = replace(self._info, client=peer)
            self.endpoint.stats["migrations"] += 1
        if request.early_data:
            self.endpoint.stats["early_data_requests"] += 1
        super()._start_stream(request)

    def _on_other_event(self, event: object) -> None:
        # WebTransport: a session's datagrams and streams go to the session.
        if isinstance(event, SessionDatagramReceived):
            session = self._streams.get(event.session_id)
            if isinstance(session, WebTransportSession):
                session.datagram_received(event.data)
        elif isinstance(event, SessionStreamDataReceived):
            session = self._streams.get(event.session_id)
            if isinstance(session, WebTransportSession):
                session.stream_data_received(event.stream_id, event.data, event.ended)
            else:
                self.protocol.ack_body(event.stream_id, len(event.data))

    def _launch(self, stream: Any) -> None:
        # The stream is registered (its body events are not lost); its task starts
        # once run() has a task group.
        if self._task_group is None:
            self._early_streams.append(stream)
        else:
            super()._launch(stream)

    async def _write_out(self) -> None:
        # The endpoint's flusher sends it, after every stream that is ready in this turn
        # of the event loop has added its data (shared packets, not one per send).
        self.endpoint.request_transmit(self)

    async def stream_finished(self, stream_id: int) -> None:
        # What the stream produced leaves now: finishing the last stream after a GOAWAY
        # closes the connection, and aioquic sends nothing but CONNECTION_CLOSE after that.
        if self.protocol.draining:
            self.endpoint.forget_transmit(self)
            self._transmit(_now())
        await super().stream_finished(stream_id)

    def transmit_now(self, now: float) -> None:
        """The flusher's turn: send what QUIC has for this connection."""
        try:
            self._transmit(now)
        except Exception:
            self._fail("sending")

    def _poke_reader(self) -> None:
        if self.protocol.closed:
            self._finished.set()

    def _over_budget(self, stream_id: int) -> bool:
        # aioquic keeps what it sent until it is acknowledged: a peer that grants credit
        # and then acknowledges nothing would have it hold every stream's buffer.
        quic = self.quic
        if quic.buffered(stream_id) <= self._budget_share and not quic.datagrams_pending():
            return False
        return quic.held_bytes() > self._budget

    def _on_credit(self) -> None:
        # MAX_STREAM_DATA goes out with the next packet; send one now if nothing else
        # would, so a sender blocked on credit resumes. While datagrams are being
        # handled the transmit that follows them carries it (a WebSocket acknowledges
        # every chunk it parses there: one packet per chunk was 18% of an h3 echo).
        if not self._in_input:
            self._transmit(_now())

    def shutdown(self) -> None:
        """GOAWAY now; close once the requests in flight are done."""
        self.protocol.shutdown()
        self._shutdown_streams()
        self._transmit(_now())


def build_quic_configuration(config: Config) -> QuicConfiguration:
    """The server's QUIC configuration with certificate, qlog and key log."""
    configuration = quic_configuration(config)
    load_quic_certificate(configuration, config)
    if config.quic_qlog_dir:
        os.makedirs(config.quic_qlog_dir, exist_ok=True)
        configuration.quic_logger = QuicFileLogger(config.quic_qlog_dir)
    keylog = config.ssl_keylog_file or os.environ.get("SSLKEYLOGFILE")
    if keylog:
        configuration.secrets_log_file = open(keylog, "a")
    return configuration


def _configuration_versions(config: Config) -> list[int]:
    return list(quic_configuration(config).supported_versions)


def open_udp_socket(bind: str, *, reuse_port: bool = False) -> socket.socket:
    """A bound non-blocking UDP socket for ``bind`` (``HOST:PORT`` or an inherited
    ``fd://N``); :class:`BindError` if impossible. ``reuse_port`` joins the socket to the
    ``SO_REUSEPORT`` group of the address (for workers)."""
    if bind.startswith("fd://"):
        return inherited_socket(bind, socket.SOCK_DGRAM)
    if bind.startswith("unix:"):
        raise BindError(f"{bind}: QUIC needs a UDP address or fd://N, not a Unix socket")
    try:
        host, port = parse_bind(bind)
    except ValueError as exc:
        raise BindError(str(exc)) from None
    try:
        family, _, _, _, sockaddr = socket.getaddrinfo(
            host, port, type=socket.SOCK_DGRAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise BindError(f"cannot listen on {bind} (UDP): {exc.strerror}") from None
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            try:
                sock.setsockopt(socket.SOL_SOCKET, option, 4 * 1024 * 1024)
            except OSError:
                pass
        sock.bind(sockaddr)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise BindError(
            f"cannot listen on {bind} (UDP): {(exc.strerror or str(exc)).lower()}"
        ) from None
    return sock


def _address(value: Any) -> tuple[str, int] | None:
    if isinstance(value, tuple) and len(value) >= 2:
        return (str(value[0]), int(value[1]))
    return None


__all__ = [
    "QuicConnectionHandler",
    "QuicEndpoint",
    "SessionTicketStore",
    "TLSConfigError",
    "build_quic_configuration",
    "open_udp_socket",
]
