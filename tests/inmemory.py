"""An in-memory harness: quicserve's protocols and stream types against sans-IO clients.

No sockets and no quicserve connection driver. A real sans-IO server protocol (the
HTTP/1.1 engine ``Config.http1_engine`` picks, ``H2Protocol``, or ``H3Protocol`` on a real
``ServerQuicConnection``) is paired with a sans-IO client (an h11 client ``Connection``,
an h2 client ``H2Connection``, aioquic's client ``QuicConnection`` + ``H3Connection``);
bytes or datagrams move between them in memory on an explicit clock. The real
:class:`HTTPStream` and :class:`WebSocketStream` run the app, driven by
:class:`InMemoryHost`, a minimal :class:`~quicserve.streams.http.StreamHost` that
dispatches the protocol's neutral events the way the connection driver does.

Rules:

* Every quicserve stream, protocol and QUIC connection is built in one section below
  ("the one place quicserve objects are built"), so a constructor change is a one-place
  fix here. Nothing imports ``quicserve.connection`` or ``quicserve.transport``.
* Whatever a test asserts is what the *client* observed (:class:`Observed`: status,
  headers, body bytes, trailers, resets, a closed connection), never server internals.
* ``flush`` moves bytes at once (there is no socket to wait for); progress is waited for
  on events the pump sets, never with sleeps, and every wait is bounded.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import anyio
import anyio.abc
import anyio.lowlevel
import h2.config
import h2.connection
import h2.events
import h11
from aioquic.buffer import Buffer  # type: ignore[attr-defined]
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import ConnectionTerminated
from aioquic.quic.events import StreamReset as QuicStreamReset
from aioquic.quic.packet import pull_quic_header
from aioquic.tls import SessionTicket
from wsproto.connection import Connection as WSConnection
from wsproto.connection import ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, TextMessage

from quicserve.certs import DevCertificate
from quicserve.config import Config
from quicserve.connection_info import (
    HTTP1_CAPABILITIES,
    HTTP2_CAPABILITIES,
    HTTP3_CAPABILITIES,
    ConnectionInfo,
)
from quicserve.events import (
    BodyEnded,
    BodyReceived,
    ConnectionClosed,
    Headers,
    RequestReceived,
    StreamReset,
    StreamWritable,
)
from quicserve.lowlevel import Wakeup, wakeup_factory
from quicserve.protocol.engines import new_http1_protocol
from quicserve.protocol.http2 import H2Protocol
from quicserve.protocol.http3 import H3Protocol
from quicserve.quic.compat import ServerQuicConnection
from quicserve.streams.http import HTTPStream, connection_extensions
from quicserve.streams.websocket import WebSocketStream, is_websocket_request
from quicserve.tls import quic_configuration
from quicserve.types import ASGIApp

Proto = Literal["h1", "h2", "h3"]
PROTOCOLS: tuple[Proto, ...] = ("h1", "h2", "h3")

CLIENT_ADDR = ("192.0.2.10", 50000)
SERVER_ADDR = ("203.0.113.1", 443)
AUTHORITY = b"localhost"
#: Every wait for the client to observe something is bounded by this (seconds).
WAIT_LIMIT = 5.0
#: The explicit clock's step per pump round (QUIC ACK delays and loss timers need time).
TICK = 0.005

AnyStream = HTTPStream | WebSocketStream


def make_config(**changes: Any) -> Config:
    """Defaults, without WebSocket keep-alive pings (no timer should run in a test)."""
    return replace(Config(), ws_ping_interval=0.0, **changes)


# -- the one place quicserve objects are built ------------------------------------------


def connection_info(proto: Proto) -> ConnectionInfo:
    """What an accepted TLS connection of ``proto`` tells its streams."""
    version, capabilities = {
        "h1": ("1.1", HTTP1_CAPABILITIES),
        "h2": ("2", HTTP2_CAPABILITIES),
        "h3": ("3", HTTP3_CAPABILITIES),
    }[proto]
    return ConnectionInfo(
        http_version=version,
        scheme="https",
        client=CLIENT_ADDR,
        server=SERVER_ADDR,
        capabilities=capabilities,
    )


def byte_stream_protocol(proto: Proto, config: Config, now: float) -> Any:
    """The server side of an HTTP/1.1 or HTTP/2 connection."""
    if proto == "h1":
        return new_http1_protocol(config, now, allow_h2c=False)
    return H2Protocol(config, now)


class TicketStore:
    """The server's session tickets, for resumption and 0-RTT across connections."""

    def __init__(self) -> None:
        self.tickets: dict[bytes, SessionTicket] = {}

    def add(self, ticket: SessionTicket) -> None:
        self.tickets[ticket.ticket] = ticket

    def pop(self, label: bytes) -> SessionTicket | None:
        return self.tickets.pop(label, None)


def server_quic(
    config: Config, tls: DevCertificate, original_dcid: bytes, tickets: TicketStore
) -> H3Protocol:
    """The server's QUIC connection for a client's first Initial, wrapped in HTTP/3 (as
    ``connection/quic.py`` builds them; the endpoint's CID routing is not involved)."""
    configuration = quic_configuration(config)
    configuration.load_cert_chain(str(tls.certfile), str(tls.keyfile))
    quic = ServerQuicConnection(
        configuration=configuration,
        original_destination_connection_id=original_dcid,
        session_ticket_fetcher=tickets.pop,
        session_ticket_handler=tickets.add,
        cid_factory=lambda: (os.urandom(8), os.urandom(16)),
        stream_window=config.quic_stream_window_size,
        max_streams=config.quic_max_streams,
        max_fragments=config.quic_max_fragments,
        allow_early_data=config.quic_0rtt,
    )
    quic.guard(
        max_crypto_buffer=config.quic_max_crypto_buffer,
        max_ack_frames_per_packet=config.quic_max_ack_frames_per_packet,
    )
    return H3Protocol(quic, config)


def new_stream(
    app: ASGIApp, host: InMemoryHost, info: ConnectionInfo, request: RequestReceived
) -> AnyStream:
    """The stream type the connection driver would pick for ``request``."""
    kind: type[AnyStream] = HTTPStream
    if (request.websocket_upgrade or request.protocol is not None) and is_websocket_request(
        request
    ):
        kind = WebSocketStream
    return kind(app, host, info, request, None)


def extensions(info: ConnectionInfo) -> dict[str, Any]:
    """The connection's base ASGI extensions."""
    return connection_extensions(info)


# -- what the client observed ---------------------------------------------------------


@dataclass
class Observed:
    """Everything the client saw on one request stream."""

    stream_id: int
    informational: list[tuple[int, Headers]] = field(default_factory=list)
    status: int | None = None
    headers: Headers = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)
    trailers: Headers = field(default_factory=list)
    #: The response ended cleanly (END_STREAM, FIN, or h11's EndOfMessage).
    ended: bool = False
    #: The server reset the stream (RST_STREAM / RESET_STREAM error code).
    reset_code: int | None = None

    def header(self, name: bytes) -> bytes | None:
        """The value of response header ``name`` (first one), or ``None``."""
        return next((v for n, v in self.headers if n == name), None)


# -- the clients ----------------------------------------------------------------------


class _Client:
    """What the harness needs from a sans-IO client, whatever its protocol."""

    def __init__(self) -> None:
        self.streams: dict[int, Observed] = {}
        #: The connection is gone (h1: EOF; h2: GOAWAY or EOF; h3: CONNECTION_CLOSE).
        self.closed = False
        #: The error of a connection-level failure the client saw, if any.
        self.close_code: int | None = None

    def observed(self, stream_id: int) -> Observed:
        obs = self.streams.get(stream_id)
        if obs is None:
            obs = self.streams[stream_id] = Observed(stream_id)
        return obs

    def send_request(self, headers: Headers, body: bytes, end: bool) -> int:
        raise NotImplementedError

    def send_body(self, stream_id: int, data: bytes, end: bool) -> None:
        raise NotImplementedError


def _response_head(headers: Headers) -> tuple[int, Headers]:
    status = int(next(v for n, v in headers if n == b":status"))
    return status, [(n, v) for n, v in headers if not n.startswith(b":")]


class H1Client(_Client):
    """h11's client; after a ``101`` the connection is a raw tunnel for its request."""

    def __init__(self) -> None:
        super().__init__()
        self.conn = h11.Connection(h11.CLIENT)
        self.out = bytearray()
        self._stream_id = 0
        self.tunnel = False

    def send_request(self, headers: Headers, body: bytes, end: bool) -> int:
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
        self._stream_id += 1
        fields = dict(headers[:4])
        rest = [(b"host", fields[b":authority"]), *headers[4:]]
        self.out += self.conn.send(
            h11.Request(method=fields[b":method"], target=fields[b":path"], headers=rest)
        )
        self.observed(self._stream_id)
        self.send_body(self._stream_id, body, end)
        return self._stream_id

    def send_body(self, stream_id: int, data: bytes, end: bool) -> None:
        if self.tunnel:
            self.out += data
            return
        if data:
            self.out += self.conn.send(h11.Data(data=data))
        if end:
            self.out += self.conn.send(h11.EndOfMessage())

    def data_to_send(self) -> bytes:
        data = bytes(self.out)
        self.out.clear()
        return data

    def receive_data(self, data: bytes) -> None:
        obs = self.observed(self._stream_id)
        if self.tunnel:
            if data:
                obs.body += data
            else:
                self.closed = True
            return
        self.conn.receive_data(data)
        while True:
            try:
                event = self.conn.next_event()
            except h11.RemoteProtocolError:
                # EOF in the middle of a response: the server closed the connection.
                self.closed = True
                return
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.InformationalResponse):
                if event.status_code == 101:
                    obs.status = 101
                    obs.headers = list(event.headers)
                    self.tunnel = True
                    obs.body += self.conn.trailing_data[0]
                    return
                obs.informational.append((event.status_code, list(event.headers)))
            elif isinstance(event, h11.Response):
                obs.status = event.status_code
                obs.headers = list(event.headers)
            elif isinstance(event, h11.Data):
                obs.body += event.data
            elif isinstance(event, h11.EndOfMessage):
                obs.trailers = list(event.headers)
                obs.ended = True
            elif isinstance(event, h11.ConnectionClosed):
                self.closed = True
                return


class H2Client(_Client):
    """h2's client; DATA is acknowledged as it arrives."""

    def __init__(self) -> None:
        super().__init__()
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        self.conn.initiate_connection()

    def send_request(self, headers: Headers, body: bytes, end: bool) -> int:
        stream_id: int = self.conn.get_next_available_stream_id()
        self.observed(stream_id)
        self.conn.send_headers(stream_id, headers, end_stream=end and not body)
        if body:
            self.send_body(stream_id, body, end)
        return stream_id

    def send_body(self, stream_id: int, data: bytes, end: bool) -> None:
        if data or end:
            self.conn.send_data(stream_id, data, end_stream=end)

    def data_to_send(self) -> bytes:
        return bytes(self.conn.data_to_send())

    def receive_data(self, data: bytes) -> None:
        if not data:
            self.closed = True
            return
        for event in self.conn.receive_data(data):
            if isinstance(event, h2.events.InformationalResponseReceived):
                status, headers = _response_head(event.headers)
                self.observed(event.stream_id).informational.append((status, headers))
            elif isinstance(event, h2.events.ResponseReceived):
                obs = self.observed(event.stream_id)
                obs.status, obs.headers = _response_head(event.headers)
            elif isinstance(event, h2.events.DataReceived):
                self.observed(event.stream_id).body += event.data
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.TrailersReceived):
                self.observed(event.stream_id).trailers = list(event.headers)
            elif isinstance(event, h2.events.StreamEnded):
                self.observed(event.stream_id).ended = True
            elif isinstance(event, h2.events.StreamReset):
                self.observed(event.stream_id).reset_code = int(event.error_code)
            elif isinstance(event, h2.events.ConnectionTerminated):
                self.closed = True
                self.close_code = int(event.error_code or 0)


class _ClientH3Connection(H3Connection):
    """aioquic's client HTTP/3 layer, told which requests were HEAD.

    aioquic checks a response's Content-Length against its DATA without knowing the
    request method, so a correct answer to HEAD (RFC 9110 §9.3.2: the GET's
    Content-Length, no content) fails its check; the check is skipped for HEAD streams.
    """

    def __init__(self, quic: QuicConnection) -> None:
        super().__init__(quic)
        self.head_streams: set[int] = set()

    def _check_content_length(self, stream: Any) -> None:
        if stream.stream_id not in self.head_streams:
            super()._check_content_length(stream)


class H3Client(_Client):
    """aioquic's client QUIC connection and HTTP/3 layer, verifying the test CA."""

    def __init__(
        self, tls: DevCertificate, now: float, session_ticket: SessionTicket | None = None
    ) -> None:
        super().__init__()
        configuration = QuicConfiguration(
            is_client=True, alpn_protocols=H3_ALPN, server_name="localhost"
        )
        configuration.load_verify_locations(cafile=str(tls.ca_certfile))
        configuration.session_ticket = session_ticket
        self.tickets: list[SessionTicket] = []
        self.quic = QuicConnection(
            configuration=configuration, session_ticket_handler=self.tickets.append
        )
        self.quic.connect(SERVER_ADDR, now=now)
        self.h3 = _ClientH3Connection(self.quic)

    def send_request(self, headers: Headers, body: bytes, end: bool) -> int:
        stream_id: int = self.quic.get_next_available_stream_id()
        self.observed(stream_id)
        if (b":method", b"HEAD") in headers:
            self.h3.head_streams.add(stream_id)
        self.h3.send_headers(stream_id, headers, end_stream=end and not body)
        if body:
            self.send_body(stream_id, body, end)
        return stream_id

    def send_body(self, stream_id: int, data: bytes, end: bool) -> None:
        if data or end:
            self.h3.send_data(stream_id, data, end_stream=end)

    @property
    def early_data_accepted(self) -> bool:
        return bool(self.quic.tls.early_data_accepted)

    def process_events(self) -> None:
        if self.quic._close_event is not None and not self.closed:
            # The client closed the connection itself (it found the server's answer
            # malformed): report it now rather than after the draining period.
            self.closed = True
            self.close_code = self.quic._close_event.error_code
        while (event := self.quic.next_event()) is not None:
            if isinstance(event, ConnectionTerminated):
                self.closed = True
                self.close_code = event.error_code
            elif isinstance(event, QuicStreamReset):
                self.observed(event.stream_id).reset_code = event.error_code
            h3_event: Any
            for h3_event in self.h3.handle_event(event):
                obs = self.observed(h3_event.stream_id)
                if isinstance(h3_event, HeadersReceived):
                    if obs.status is None:
                        status, headers = _response_head(h3_event.headers)
                        if 100 <= status < 200:
                            obs.informational.append((status, headers))
                        else:
                            obs.status, obs.headers = status, headers
                    else:
                        obs.trailers = list(h3_event.headers)
                elif isinstance(h3_event, DataReceived):
                    obs.body += h3_event.data
                if getattr(h3_event, "stream_ended", False):
                    obs.ended = True


def request_head(
    method: bytes, path: bytes, headers: Headers | None = None, protocol: bytes | None = None
) -> Headers:
    """A request's field section, pseudo-headers first (HTTP/1.1 takes them apart)."""
    head: Headers = [
        (b":method", method),
        (b":scheme", b"https"),
        (b":authority", AUTHORITY),
        (b":path", path),
    ]
    if protocol is not None:
        head.append((b":protocol", protocol))
    return head + list(headers or [])


class QuicPair:
    """An :class:`H3Client` and the server's :class:`H3Protocol`, exchanging datagrams in
    memory on an explicit clock (``now``); synchronous, so protocol tests use it alone.

    ``on_server_input`` runs after every datagram or timer the server handled (the host
    dispatches the protocol's events there). Requests in ``early_requests`` (method, path)
    are sent before the client's first flight: with a ``session_ticket`` allowing it they
    travel in 0-RTT (their stream ids: ``early_stream_ids``).
    """

    def __init__(
        self,
        config: Config,
        tls: DevCertificate,
        now: float,
        *,
        tickets: TicketStore | None = None,
        session_ticket: SessionTicket | None = None,
        early_requests: Sequence[tuple[bytes, bytes]] = (),
        on_server_input: Callable[[], None] = lambda: None,
    ) -> None:
        self.now = now
        self.client = H3Client(tls, now, session_ticket)
        self.early_stream_ids = [
            self.client.send_request(request_head(method, path), b"", True)
            for method, path in early_requests
        ]
        self._initial = self.client.quic.datagrams_to_send(now)
        header = pull_quic_header(Buffer(data=self._initial[0][0]), host_cid_length=8)
        self.server = server_quic(
            config, tls, header.destination_cid, tickets if tickets is not None else TicketStore()
        )
        self.on_server_input = on_server_input

    def handshake(self) -> None:
        """Send the client's first flight and pump until the handshake is done."""
        for data, _ in self._initial:
            self.server.receive_datagram(data, CLIENT_ADDR, self.now)
        self._initial = []
        self.on_server_input()
        self.pump()
        assert self.server.handshake_complete, "the QUIC handshake did not complete"

    def pump(self, settle: bool = False) -> None:
        """Exchange datagrams (and fire due timers) until both sides are quiet; with
        ``settle``, also jump the clock to ACK-delay and loss timers due within 0.5 s."""
        client, server = self.client, self.server
        client_quic, server_quic = client.quic, server.quic
        for _ in range(1000):
            self.now += TICK
            timer = server_quic.get_timer()
            if timer is not None and timer <= self.now:
                server.handle_timer(self.now)
                self.on_server_input()
            timer = client_quic.get_timer()
            if timer is not None and timer <= self.now:
                client_quic.handle_timer(self.now)
            moved = False
            for data, _ in client_quic.datagrams_to_send(self.now):
                server.receive_datagram(data, CLIENT_ADDR, self.now)
                moved = True
            self.on_server_input()
            for data, _ in server.datagrams_to_send(self.now):
                client_quic.receive_datagram(data, SERVER_ADDR, self.now)
                moved = True
            client.process_events()
            if not moved:
                if not settle:
                    return
                timers = [t for t in (client_quic.get_timer(), server_quic.get_timer()) if t]
                if not timers or min(timers) > self.now + 0.5:
                    return
                self.now = max(self.now, min(timers))
        raise AssertionError("the QUIC pair never went quiet")


# -- the host: a minimal StreamHost and event dispatcher ----------------------------------


class InMemoryHost:
    """One server connection, its client, and the streams serving it.

    Implements :class:`~quicserve.streams.http.StreamHost`: ``flush`` pumps bytes (or
    datagrams) to the client and back at once; the protocol's events are dispatched to
    streams as the connection driver does; each stream runs in the host's task group.
    """

    def __init__(
        self,
        proto: Proto,
        app: ASGIApp,
        config: Config,
        client: _Client,
        protocol: Any,
        now: float,
    ) -> None:
        self.proto = proto
        self.app = app
        self.config = config
        self.client = client
        self.protocol = protocol
        self.now = now
        self.info = connection_info(proto)
        self.new_wakeup: Callable[[], Wakeup] = wakeup_factory()
        self.streams: dict[int, AnyStream] = {}
        #: Requests the server handed to a stream type (what the app was asked to serve).
        self.requests: list[RequestReceived] = []
        #: HTTP/3: the requests the client sent in 0-RTT (see :func:`serve`).
        self.early_stream_ids: list[int] = []
        #: HTTP/3: the datagram pump (``None`` on HTTP/1.1 and HTTP/2).
        self.quic_pair: QuicPair | None = None
        self._extensions = extensions(self.info)
        self._writable: dict[int, Wakeup] = {}
        self._task_group: anyio.abc.TaskGroup | None = None
        self._changed = anyio.Event()
        self._eof_sent = False
        self._inbound = bytearray()

    # -- StreamHost -------------------------------------------------------------------

    def extensions_for(self, info: ConnectionInfo) -> dict[str, Any]:
        return self._extensions

    async def flush(self, stream_id: int) -> None:
        self.pump()
        while (
            self.protocol.buffered_amount(stream_id) > self.config.write_buffer_size
            and not self.protocol.closed
        ):
            # Flow control holds data: let the client's credit (or QUIC's ACKs) arrive.
            waiter = self._writable[stream_id] = self.new_wakeup()
            self.pump(settle=True)
            with anyio.fail_after(WAIT_LIMIT):
                await waiter.wait()
        await anyio.lowlevel.checkpoint()

    def ack_body(self, stream_id: int, amount: int) -> None:
        self.protocol.ack_body(stream_id, amount)

    async def stream_finished(self, stream_id: int) -> None:
        self.streams.pop(stream_id, None)
        self._writable.pop(stream_id, None)
        self.protocol.stream_done(stream_id, self.now)
        self.pump()

    def push(self, parent: RequestReceived, path: bytes, headers: Headers) -> None:
        """Not exercised here (HTTP/2 push has its own end-to-end tests)."""

    # -- moving bytes ---------------------------------------------------------------------

    def pump(self, settle: bool = False) -> None:
        """Move everything both ways until neither side has more to say."""
        if self.proto == "h3":
            self._pump_datagrams(settle)
        else:
            self.now += TICK
            self._pump_bytes()
        self._changed.set()

    def _pump_bytes(self) -> None:
        client = self.client
        assert isinstance(client, H1Client | H2Client)
        protocol = self.protocol
        while True:
            moved = False
            self._inbound += client.data_to_send()
            if self._inbound and protocol.wants_read() and not protocol.closed:
                data = bytes(self._inbound)
                self._inbound.clear()
                protocol.receive_data(data, self.now)
                self._dispatch()
                moved = True
            out = protocol.data_to_send()
            if out:
                client.receive_data(out)
                moved = True
            if protocol.closed and not self._eof_sent:
                self._eof_sent = True
                client.receive_data(b"")
                moved = True
            if not moved:
                return

    def _pump_datagrams(self, settle: bool) -> None:
        assert self.quic_pair is not None
        self.quic_pair.pump(settle)
        self.now = self.quic_pair.now

    def _dispatch(self) -> None:
        protocol = self.protocol
        while (event := protocol.next_event()) is not None:
            if isinstance(event, RequestReceived):
                self.requests.append(event)
                stream = new_stream(self.app, self, self.info, event)
                self.streams[event.stream_id] = stream
                assert self._task_group is not None
                self._task_group.start_soon(stream.run)
            elif isinstance(event, BodyReceived):
                target = self.streams.get(event.stream_id)
                if target is not None:
                    target.body_received(event.data)
                else:
                    protocol.ack_body(event.stream_id, len(event.data))
            elif isinstance(event, BodyEnded):
                target = self.streams.get(event.stream_id)
                if target is not None:
                    target.body_ended()
            elif isinstance(event, StreamReset):
                target = self.streams.get(event.stream_id)
                if target is not None:
                    target.reset()
                self._wake_writer(event.stream_id)
            elif isinstance(event, StreamWritable):
                self._wake_writer(event.stream_id)
            elif isinstance(event, ConnectionClosed):
                for target in list(self.streams.values()):
                    target.reset()
                for stream_id in list(self._writable):
                    self._wake_writer(stream_id)

    def _wake_writer(self, stream_id: int) -> None:
        waiter = self._writable.pop(stream_id, None)
        if waiter is not None:
            waiter.set()

    # -- what tests call --------------------------------------------------------------

    async def wait_for(self, condition: Callable[[], bool]) -> None:
        """Until ``condition()`` holds for what the client observed (bounded)."""
        with anyio.fail_after(WAIT_LIMIT):
            while True:
                self.pump()
                if condition():
                    return
                self._changed = anyio.Event()
                await self._changed.wait()

    async def idle(self) -> None:
        """Until every app call on this connection has ended."""
        await self.wait_for(lambda: not self.streams)

    def start_request(
        self,
        method: bytes,
        path: bytes = b"/",
        headers: Headers | None = None,
        body: bytes = b"",
        *,
        end: bool = True,
        protocol: bytes | None = None,
    ) -> int:
        """Send a request (``:protocol`` for an extended CONNECT); its stream id."""
        head = request_head(method, path, headers, protocol)
        stream_id = self.client.send_request(head, body, end)
        self.pump()
        return stream_id

    def send_body(self, stream_id: int, data: bytes, end: bool = False) -> None:
        """More request body (or WebSocket bytes) on ``stream_id``."""
        self.client.send_body(stream_id, data, end)
        self.pump()

    async def request(
        self,
        method: bytes,
        path: bytes = b"/",
        headers: Headers | None = None,
        body: bytes = b"",
    ) -> Observed:
        """One whole request; what the client saw once the response ended, was reset, or
        the connection closed, and the app call is over."""
        stream_id = self.start_request(method, path, headers, body)
        obs = self.client.observed(stream_id)
        await self.wait_for(
            lambda: (
                (obs.ended or obs.reset_code is not None or self.client.closed)
                and stream_id not in self.streams
            )
        )
        return obs

    async def websocket(self, path: bytes = b"/ws", headers: Headers | None = None) -> WSClient:
        """Open a WebSocket the way ``proto`` does (RFC 6455 / 8441 / 9220) and wait for
        the handshake's answer."""
        ws_headers: Headers = [(b"sec-websocket-version", b"13"), *(headers or [])]
        if self.proto == "h1":
            ws_headers += [
                (b"upgrade", b"websocket"),
                (b"connection", b"Upgrade"),
                (b"sec-websocket-key", b"dGhlIHNhbXBsZSBub25jZQ=="),
            ]
            stream_id = self.start_request(b"GET", path, ws_headers)
        else:
            stream_id = self.start_request(
                b"CONNECT", path, ws_headers, end=False, protocol=b"websocket"
            )
        obs = self.client.observed(stream_id)
        await self.wait_for(
            lambda: obs.status is not None or obs.reset_code is not None or self.client.closed
        )
        return WSClient(self, stream_id, obs)


class WSClient:
    """wsproto's client framing over one WebSocket stream of an :class:`InMemoryHost`."""

    def __init__(self, host: InMemoryHost, stream_id: int, observed: Observed) -> None:
        self.host = host
        self.stream_id = stream_id
        self.observed = observed
        self.ws = WSConnection(ConnectionType.CLIENT)
        self._fed = 0
        self.messages: list[str | bytes] = []
        self.close_code: int | None = None

    @property
    def status(self) -> int | None:
        return self.observed.status

    def _receive(self) -> bool:
        """Parse what arrived; always ``False`` (so ``wait_for`` conditions can chain)."""
        body = self.observed.body
        if len(body) > self._fed:
            self.ws.receive_data(bytes(body[self._fed :]))
            self._fed = len(body)
        for event in self.ws.events():
            if isinstance(event, TextMessage):
                self.messages.append(event.data)
            elif isinstance(event, BytesMessage):
                self.messages.append(bytes(event.data))
            elif isinstance(event, CloseConnection):
                self.close_code = event.code
                if self.ws.state.name == "REMOTE_CLOSING":
                    self.host.send_body(self.stream_id, self.ws.send(event.response()))
            elif isinstance(event, Ping):
                self.host.send_body(self.stream_id, self.ws.send(event.response()))
        return False

    def send(self, message: str | bytes) -> None:
        """One text (``str``) or binary (``bytes``) message."""
        event = TextMessage(data=message) if isinstance(message, str) else BytesMessage(message)
        self.host.send_body(self.stream_id, self.ws.send(event))

    async def receive(self) -> str | bytes:
        """The next message from the server."""
        await self.host.wait_for(lambda: self._receive() or bool(self.messages))
        return self.messages.pop(0)

    def close(self, code: int, reason: str = "") -> None:
        """Start the closing handshake."""
        self.host.send_body(self.stream_id, self.ws.send(CloseConnection(code, reason)))

    async def wait_closed(self) -> int:
        """Until the server's close frame arrived and the app call ended; its code."""
        await self.host.wait_for(
            lambda: (
                (self._receive() or self.close_code is not None)
                and self.stream_id not in self.host.streams
            )
        )
        assert self.close_code is not None
        return self.close_code


@asynccontextmanager
async def serve(
    proto: Proto,
    app: ASGIApp,
    config: Config | None = None,
    tls: DevCertificate | None = None,
    *,
    tickets: TicketStore | None = None,
    session_ticket: SessionTicket | None = None,
    early_requests: Sequence[tuple[bytes, bytes]] = (),
) -> AsyncIterator[InMemoryHost]:
    """A connected client and server for ``proto`` serving ``app``.

    HTTP/3 needs ``tls`` (its handshake is real). With ``session_ticket`` the client
    resumes, and ``early_requests`` (method, path) are sent before its first flight, so
    they travel in 0-RTT; their stream ids are ``host.early_stream_ids``."""
    config = config or make_config()
    now = 1000.0
    client: _Client
    quic_pair: QuicPair | None = None
    if proto == "h3":
        assert tls is not None, "HTTP/3 needs a certificate"
        quic_pair = QuicPair(
            config,
            tls,
            now,
            tickets=tickets,
            session_ticket=session_ticket,
            early_requests=early_requests,
        )
        client, protocol = quic_pair.client, quic_pair.server
    else:
        client = H1Client() if proto == "h1" else H2Client()
        protocol = byte_stream_protocol(proto, config, now)
    host = InMemoryHost(proto, app, config, client, protocol, now)
    async with anyio.create_task_group() as tg:
        host._task_group = tg
        if quic_pair is not None:
            host.quic_pair = quic_pair
            host.early_stream_ids = quic_pair.early_stream_ids
            quic_pair.on_server_input = host._dispatch
            quic_pair.handshake()
        host.pump()
        try:
            yield host
            await host.idle()
        finally:
            tg.cancel_scope.cancel()
