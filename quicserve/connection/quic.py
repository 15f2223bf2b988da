"""The QUIC driver: QUIC connections accepted on one UDP endpoint, HTTP/3 on each.

:class:`QuicListener` is one ``--quic-bind`` address. It classifies every datagram with
:class:`~quicserve.quic.endpoint.EndpointCore` (route by connection ID, accept, Version
Negotiation, Retry, stateless reset), accepts new connections and routes the rest to their
:class:`QuicDriver`, which drives one QUIC connection (aioquic, through
:mod:`quicserve.quic.compat`) with HTTP/3 on it (:class:`~quicserve.protocol.http3.H3Protocol`)
and runs its requests as the same stream objects as on TCP. The socket, timers and sends are
the UDP endpoint's (:mod:`quicserve.transport.udp`).

Rules:

* Routing is by connection ID only, so a client that changes address keeps its
  connection; the ASGI ``client`` of later requests follows aioquic's validated path.
* A connection has one deadline (``get_timer``) in the UDP endpoint's timer wheel; it adds a
  wheel entry only when its deadline moves earlier, and a later deadline is picked up when
  the old entry fires.
* What a connection's streams send leaves at the flusher's next turn, batched with every
  other stream ready in the same turn of the event loop.
* Any exception from one connection closes that connection only and is logged; a bad
  datagram never stops the listener.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import socket
import time
from collections.abc import Hashable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc

from ..addresses import peer_address
from ..connection_info import HTTP3_CAPABILITIES, ConnectionInfo
from ..events import (
    RequestReceived,
    SessionDatagramReceived,
    SessionStreamDataReceived,
    SessionStreamReset,
    SessionUpdated,
)
from ..protocol.base import DatagramProtocol
from ..protocol.http3 import H3Protocol
from ..quic.compat import ServerQuicConnection
from ..quic.endpoint import Accept, EndpointCore, Reply, Route
from ..quic.lb import CidLayout
from ..quic.tickets import SealedTickets, SessionTicketStore
from ..quic.tokens import TokenAuthority
from ..streams.webtransport import WebTransportSession
from ..transport.udp import UDPEndpoint
from .driver import AnyStream, ConnectionDriver

if TYPE_CHECKING:
    from aioquic.quic.configuration import QuicConfiguration

    from ..registry import ConnectionRecord
    from .context import DatagramDiverter, ServerContext

logger = logging.getLogger("quicserve.error")

_now = time.monotonic


class QuicListener:
    """One ``--quic-bind`` address: its UDP endpoint and the QUIC connections behind it."""

    def __init__(
        self, sock: socket.socket, context: ServerContext, configuration: QuicConfiguration
    ) -> None:
        config = context.config
        self.context = context
        self.config = config
        # Workers (and a machine behind a QUIC-LB load balancer) issue CIDs that name them
        # (quic/lb.py); workers also share the token secret, so a Retry token or a
        # stateless reset made by one worker is good in every other. With
        # --quic-secrets-file every process of every machine shares the key ring instead,
        # and session tickets are sealed with it (any process resumes them).
        worker = context.worker
        layout: CidLayout | None = None
        slot = 0
        tokens: TokenAuthority | None = None
        if worker is not None:
            layout, slot, tokens = worker.layout, worker.slot, TokenAuthority(worker.secret)
        elif config.quic_lb_server_id:
            layout = CidLayout.from_hex(config.quic_lb_server_id)
        ring = context.key_ring
        if ring is not None:
            tokens = TokenAuthority(ring=ring)
        cid_length = layout.cid_length if layout is not None else 8
        self.core = EndpointCore(
            supported_versions=list(configuration.supported_versions),
            retry=config.quic_retry,
            retry_threshold=config.quic_retry_threshold,
            max_connections=config.quic_max_connections,
            max_handshakes=config.quic_max_handshakes,
            max_unvalidated_per_address=config.quic_max_handshakes_per_address or None,
            cid_length=cid_length,
            cid_generator=layout.generator(slot) if layout is not None else None,
            tokens=tokens,
            # Retry tokens cross machines (--quic-secrets-file): expiry on the wall clock.
            token_clock=time.time,
        )
        # One configuration (one certificate load) for every listener; each gets its copy
        # with this machine's CID length.
        self.configuration = replace(configuration, connection_id_length=cid_length)
        #: With workers: sends datagrams that belong to another worker there.
        self.router: DatagramDiverter | None = None
        #: Tickets in memory, or sealed with the shared ring (``tickets.py``).
        self.tickets: SessionTicketStore | SealedTickets = (
            SessionTicketStore(config.quic_session_tickets)
            if ring is None
            else SealedTickets(ring, config.quic_session_tickets)
        )
        self._ticket_hooks = self.tickets.hooks()
        self.drivers: dict[Hashable, QuicDriver] = {}
        self.udp = UDPEndpoint(sock, self.drivers, self._on_datagram)
        self._ids = itertools.count(1)
        self._task_group: anyio.abc.TaskGroup | None = None
        self._closing = False
        self.stats = self.udp.stats
        # Connections that ended before their handshake completed; requests on a new path
        # (the ASGI client changed), and 0-RTT requests.
        self.stats.update(
            handshake_failures=0,
            migrations=0,
            early_data_requests=0,
            handshakes=0,
            resumed=0,
            early_data_accepted=0,
            early_data_rejected=0,
            retry_validated=0,
        )

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port)."""
        return self.udp.address

    @property
    def gso_enabled(self) -> bool:
        """Whether datagram runs still go out with UDP segmentation offload."""
        return self.udp.gso_enabled

    @property
    def timer_entries(self) -> int:
        """Entries in the UDP endpoint's timer wheel (a few per connection)."""
        return self.udp.timer_entries

    async def serve(self, task_group: anyio.abc.TaskGroup) -> None:
        """Read datagrams until cancelled or :meth:`stop_reading`; connections run in
        ``task_group``."""
        self._task_group = task_group
        if self.context.worker is not None:
            self.router = self.context.worker.attach(self)
        await self.udp.serve(task_group)

    def use_certificate(self, configuration: QuicConfiguration) -> None:
        """Give connections accepted from now on ``configuration`` (a reloaded certificate);
        open connections keep the configuration they were made with."""
        cid_length = self.configuration.connection_id_length
        self.configuration = replace(configuration, connection_id_length=cid_length)

    def stop_reading(self) -> None:
        """Stop reading the UDP socket (a worker handing its socket to its successor);
        sending, timers and datagrams forwarded to us go on."""
        self.udp.stop_reading()

    def close(self) -> None:
        """Close the UDP socket."""
        self.udp.close()

    def owns(self, dcid: bytes) -> bool:
        """Whether one of our connections has issued ``dcid``."""
        return self.core.lookup(dcid) is not None

    def receive(self, data: bytes, addr: Any) -> None:
        """One datagram from ``addr`` that reached us some other way (forwarded)."""
        self.stats["datagrams_in"] += 1
        try:
            self._datagram_received(data, addr)
        except Exception:
            logger.exception("Unexpected error handling a datagram from %s", addr)

    def _on_datagram(self, data: bytes, addr: Any) -> None:
        router = self.router
        if router is not None and router.divert(data, addr):
            return
        self._datagram_received(data, addr)

    def _datagram_received(self, data: bytes, addr: Any) -> None:
        now = _now()
        decision = self.core.classify(data, addr, now)
        if type(decision) is Route:
            driver = self.drivers.get(decision.key)
            if driver is not None:
                driver.datagram_received(data, addr, now)
        elif type(decision) is Accept:
            self._accept(decision, data, addr, now)
        elif type(decision) is Reply:
            self.udp.sendto(decision.datagram, addr)
            for datagram in decision.more:
                self.udp.sendto(datagram, addr)

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
            **self._ticket_hooks,
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
        record = registry.add("udp", "h3", peer_address(addr), self.address)
        driver = QuicDriver(self, key, quic, record)
        registry.attach(record, driver)
        self.drivers[key] = driver
        core = self.core
        core.register_cid(decision.dcid, key)
        for cid in quic.host_connection_ids():
            core.register_cid(cid, key)
        # Per-address accounting only for addresses Retry validated (a spoofed Initial
        # must not use up someone else's allowance), or for all without Retry.
        if decision.retry_scid is not None:
            self.stats["retry_validated"] += 1
        validated = decision.retry_scid is not None or self.config.quic_retry == "never"
        core.handshake_started(key, peer_address(addr) if validated else None)
        self._task_group.start_soon(driver.run)
        driver.datagram_received(data, addr, now)

    def connection_finished(self, driver: QuicDriver) -> None:
        """A connection is gone: forget its CIDs, timers and slot."""
        self.drivers.pop(driver.key, None)
        if not driver.handshake_reported:
            self.stats["handshake_failures"] += 1
            self.context.registry.handshake_failures["udp"] += 1
        self.core.forget(driver.key)
        self.context.registry.remove(driver.record)

    def shutdown(self) -> None:
        """Stop accepting connections (existing ones drain through the registry)."""
        self._closing = True


class QuicDriver(ConnectionDriver):
    """Drives one QUIC connection: datagrams in, HTTP/3 streams, datagrams out."""

    protocol: DatagramProtocol

    def __init__(
        self,
        listener: QuicListener,
        key: int,
        quic: ServerQuicConnection,
        record: ConnectionRecord,
    ) -> None:
        context = listener.context
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
            default_headers=context.default_headers,
            date_header=context.config.date_header,
            default_names=context.default_names,
        )
        super().__init__(context, info, protocol, record)
        self.listener = listener
        self._udp = listener.udp
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
        self._early_streams: list[AnyStream] = []
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
                self._stop_runners()
        except Exception:
            # A bug while serving one of its streams (the app's own exceptions never get
            # here) must not reach the endpoint's task group and stop every connection:
            # log it and close this connection alone, as the TCP side does.
            self._fail("serving a stream")
        finally:
            self._task_group = None
            self.listener.connection_finished(self)

    # -- from the listener --------------------------------------------------------------

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
            self._udp.arm(self.key, deadline)

    def _after_input(self, now: float) -> None:
        protocol = self.protocol
        core = self.listener.core
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
            stats = self.listener.stats
            stats["handshakes"] += 1
            stats["resumed"] += protocol.session_resumed
            stats["early_data_accepted"] += protocol.early_data_accepted
            stats["early_data_rejected"] += protocol.early_data_rejected
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
        datagrams = self.protocol.datagrams_to_send(now)
        if datagrams:
            self._udp.send_many(datagrams)
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

    # -- ConnectionDriver hooks ---------------------------------------------------------

    def _start_stream(self, request: RequestReceived) -> None:
        # Migration: new requests report the path the connection is on now.
        peer = peer_address(self.quic.peer_address)
        if peer is not None and peer != self._info.client:
            self._info = replace(self._info, client=peer)
            self.listener.stats["migrations"] += 1
        if request.early_data:
            self.listener.stats["early_data_requests"] += 1
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
        elif isinstance(event, SessionUpdated):
            session = self._streams.get(event.session_id)
            if isinstance(session, WebTransportSession):
                session.session_updated()
        elif isinstance(event, SessionStreamReset):
            session = self._streams.get(event.session_id)
            if isinstance(session, WebTransportSession):
                session.stream_reset(event.stream_id, event.code, event.stop_sending)

    def _launch(self, stream: AnyStream) -> None:
        # The stream is registered (its body events are not lost); its task starts
        # once run() has a task group.
        if self._task_group is None:
            self._early_streams.append(stream)
        else:
            super()._launch(stream)

    async def _write_out(self) -> None:
        # The endpoint's flusher sends it, after every stream that is ready in this turn
        # of the event loop has added its data (shared packets, not one per send).
        self._udp.request_transmit(self.key, self)

    async def stream_finished(self, stream_id: int) -> None:
        # What the stream produced leaves now: finishing the last stream after a GOAWAY
        # closes the connection, and aioquic sends nothing but CONNECTION_CLOSE after that.
        if self.protocol.draining:
            self._udp.forget_transmit(self.key)
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
