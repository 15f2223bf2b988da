"""An HTTP/3 client on aioquic's own asyncio client, for tests and interop.

aioquic's client runs on asyncio only, so callers run :func:`h3_fetch` in a worker thread
(``anyio.to_thread.run_sync`` in tests, the interop harness's thread): the client gets
its own event loop there, and the server under test keeps running on whichever backend
it uses. Besides responses (1xx, headers, body, trailers, resets) it reports what the
QUIC connection learned: resumption, early data, version, Retry, cipher suite, key
phases, and a hook that can act while the first response arrives or once it is done
(key update, NAT rebinding, :func:`migrate`). :class:`H3Client` also recognises a
stateless reset (RFC 9000 §10.3.1), which aioquic's client does not.
"""

from __future__ import annotations

import asyncio
import inspect
import ssl
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, H3Event, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import ConnectionTerminated, HandshakeCompleted, QuicEvent, StreamReset
from aioquic.quic.packet import QuicErrorCode
from aioquic.tls import CipherSuite, Epoch, SessionTicket

from .net import dual_stack_udp_socket


@dataclass
class H3Response:
    """What came back on one request stream."""

    status: int = 0
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    chunks: list[bytes] = field(default_factory=list, repr=False)
    trailers: list[tuple[bytes, bytes]] = field(default_factory=list)
    informational: list[int] = field(default_factory=list)
    reset: int | None = None


@dataclass
class H3Request:
    """One request to make on the connection."""

    path: str
    method: str = "GET"
    body: bytes = b""
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


@dataclass
class H3Result:
    """The responses, plus what the QUIC connection learned."""

    responses: list[H3Response]
    session_ticket: SessionTicket | None = None
    resumed: bool = False
    early_data_accepted: bool = False
    version: int | None = None
    retry_seen: bool = False
    cipher_suite: int | None = None
    #: 1-RTT key phase before and after ``during_first``, and at the end
    key_phases: list[int] = field(default_factory=list)
    handshake_seconds: float = 0.0  # connect() until the handshake completed
    handshakes: int = 0  # HandshakeCompleted events seen on this connection (1 expected)
    hook_result: Any = None  # what after_first returned (awaited if it was awaitable)


class ConnectionClosed(ConnectionError):
    """The connection ended while a request waited for its response; ``error_code`` is
    the code the server closed with (``H3_NO_ERROR``, 0x100: a graceful close, such as a
    draining server's after its GOAWAY)."""

    def __init__(self, error_code: int, reason: str) -> None:
        super().__init__(f"connection closed: {error_code:#x} {reason}")
        self.error_code = error_code


class H3Client(QuicConnectionProtocol):
    """aioquic's connection protocol with an H3 connection and one response per stream."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.h3 = H3Connection(self._quic)
        self.waiters: dict[int, asyncio.Future[None]] = {}
        self.responses: dict[int, H3Response] = {}
        #: called once, when the next DATA arrives (then cleared)
        self.on_data: Callable[[], None] | None = None
        self.handshakes = 0
        #: monotonic time a stateless reset from the server ended the connection
        self.stateless_reset_at: float | None = None

    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        if isinstance(data, bytes) and self._is_stateless_reset(data):
            # RFC 9000 §10.3.1: the connection ends at once, without sending anything more
            # (draining). aioquic's client would drop the datagram and wait for the idle
            # timeout, so the end is made here from its own close events.
            self.stateless_reset_at = time.monotonic()
            quic = self._quic
            quic._close_event = ConnectionTerminated(
                error_code=QuicErrorCode.NO_ERROR, frame_type=None, reason_phrase="stateless reset"
            )
            quic._close_end()
            self._process_events()
            self._fail_waiters(ConnectionError("stateless reset"))
            return
        super().datagram_received(data, addr)

    def _is_stateless_reset(self, data: bytes) -> bool:
        """RFC 9000 §10.3.1: a short-header-looking datagram of at least 21 bytes ending in
        the stateless reset token of one of the server's connection IDs we have."""
        if len(data) < 21 or data[0] & 0x80 or not data[0] & 0x40:
            return False
        quic = self._quic
        tokens = {cid.stateless_reset_token for cid in (quic._peer_cid, *quic._peer_cid_available)}
        tokens.discard(b"")
        return data[-16:] in tokens

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, HandshakeCompleted):
            self.handshakes += 1
        if isinstance(event, StreamReset) and event.stream_id in self.responses:
            self.responses[event.stream_id].reset = event.error_code
            self._done(event.stream_id)
        if isinstance(event, ConnectionTerminated):
            # Requests still waiting will never be answered: fail them now, as a real
            # client does (a closed connection was a 30 s wait_for timeout, naming nothing).
            self._fail_waiters(ConnectionClosed(event.error_code, event.reason_phrase))
        for h3_event in self.h3.handle_event(event):
            self._h3_event(h3_event)

    def _h3_event(self, event: H3Event) -> None:
        stream_id: int = getattr(event, "stream_id", -1)
        response = self.responses.get(stream_id)
        if response is None:
            return
        if isinstance(event, HeadersReceived):
            status = dict(event.headers).get(b":status")
            if status is not None and status.startswith(b"1"):
                response.informational.append(int(status))
            elif status is not None:
                response.status = int(status)
                response.headers = [(n, v) for n, v in event.headers if not n.startswith(b":")]
            else:
                response.trailers = list(event.headers)
        elif isinstance(event, DataReceived):
            response.chunks.append(event.data)  # joined once at the end: += is quadratic
            if self.on_data is not None:
                hook, self.on_data = self.on_data, None
                hook()
        if getattr(event, "stream_ended", False):
            self._done(stream_id)

    def _fail_waiters(self, error: Exception) -> None:
        """Requests in flight end with ``error`` (the connection is gone)."""
        for waiter in self.waiters.values():
            if not waiter.done():
                waiter.set_exception(error)

    def _done(self, stream_id: int) -> None:
        response = self.responses.get(stream_id)
        if response is not None and response.chunks:
            response.body += b"".join(response.chunks)
            response.chunks.clear()
        waiter = self.waiters.get(stream_id)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def request(self, request: H3Request, authority: str) -> H3Response:
        """Send ``request`` on a new stream and wait for its whole response."""
        stream_id = self._quic.get_next_available_stream_id()
        self.responses[stream_id] = response = H3Response()
        self.waiters[stream_id] = asyncio.get_running_loop().create_future()
        self.h3.send_headers(
            stream_id,
            [
                (b":method", request.method.encode()),
                (b":scheme", b"https"),
                (b":authority", authority.encode()),
                (b":path", request.path.encode()),
                *request.headers,
            ],
            end_stream=not request.body,
        )
        if request.body:
            self.h3.send_data(stream_id, request.body, end_stream=True)
        self.transmit()
        await self.waiters[stream_id]
        return response


def client_configuration(
    cafile: str | None = None,
    *,
    session_ticket: SessionTicket | None = None,
    version: int | None = None,
    cipher_suites: list[CipherSuite] | None = None,
) -> QuicConfiguration:
    """A client configuration that trusts ``cafile`` (or nothing, if None)."""
    configuration = QuicConfiguration(
        is_client=True, alpn_protocols=H3_ALPN, server_name="localhost"
    )
    if cafile:
        configuration.load_verify_locations(cafile)
        configuration.verify_mode = ssl.CERT_REQUIRED
    else:
        configuration.verify_mode = ssl.CERT_NONE
    configuration.session_ticket = session_ticket
    if version is not None:
        configuration.supported_versions = [version]
        configuration.original_version = version
    if cipher_suites is not None:
        configuration.cipher_suites = cipher_suites
    return configuration


def _key_phase(client: H3Client) -> int:
    return int(client._quic._cryptos[Epoch.ONE_RTT].key_phase)


@asynccontextmanager
async def connect_from(
    ipv4: str, port: int, cafile: str | None = None, *, host: str = "127.0.0.1"
) -> AsyncIterator[H3Client]:
    """An :class:`H3Client` connected to ``host:port`` from the local IPv4 address ``ipv4``
    (aioquic's ``connect`` always binds every address): a balancer that hashes the client
    address sees a client of its own per ``127.0.0.N``."""
    loop = asyncio.get_running_loop()
    connection = QuicConnection(configuration=client_configuration(cafile))
    sock = dual_stack_udp_socket(ipv4)
    transport, protocol = await loop.create_datagram_endpoint(
        lambda: H3Client(connection), sock=sock
    )
    assert isinstance(protocol, H3Client)
    try:
        protocol.connect(("::ffff:" + host, port, 0, 0))
        await protocol.wait_connected()
        yield protocol
    finally:
        protocol.close()
        await protocol.wait_closed()
        transport.close()
        if protocol._transport is not None:  # the migrated-to socket, if any
            protocol._transport.close()


async def h3_fetch_async(
    port: int,
    requests: list[H3Request],
    *,
    cafile: str | None = None,
    host: str = "127.0.0.1",
    session_ticket: SessionTicket | None = None,
    version: int | None = None,
    cipher_suites: list[CipherSuite] | None = None,
    concurrent: bool = False,
    during_first: Callable[[H3Client], None] | None = None,
    after_first: Callable[[H3Client], Any] | None = None,
    timeout: float = 20.0,
) -> H3Result:
    """Open one HTTP/3 connection, make ``requests`` (in order, or all at once), close.

    ``during_first(client)`` runs when the first response's first data arrives;
    ``after_first(client)`` once the first response is complete (sequential mode only);
    if it returns an awaitable, that is awaited before the next request.
    """
    configuration = client_configuration(
        cafile, session_ticket=session_ticket, version=version, cipher_suites=cipher_suites
    )
    tickets: list[SessionTicket] = []
    result = H3Result(responses=[])
    started = time.monotonic()
    async with asyncio.timeout(timeout):
        async with connect(
            host,
            port,
            configuration=configuration,
            create_protocol=H3Client,
            session_ticket_handler=tickets.append,
            wait_connected=session_ticket is None,
        ) as client:
            assert isinstance(client, H3Client)
            result.handshake_seconds = time.monotonic() - started
            if during_first is not None:
                hook_during = during_first

                def hook() -> None:
                    result.key_phases.append(_key_phase(client))
                    hook_during(client)
                    result.key_phases.append(_key_phase(client))

                client.on_data = hook
            if concurrent:
                result.responses = list(
                    await asyncio.gather(*(client.request(r, "localhost") for r in requests))
                )
            else:
                for i, request in enumerate(requests):
                    result.responses.append(await client.request(request, "localhost"))
                    if after_first is not None and i == 0:
                        returned = after_first(client)
                        if inspect.isawaitable(returned):
                            returned = await returned
                        result.hook_result = returned
            quic = client._quic
            if during_first is not None:
                result.key_phases.append(_key_phase(client))
            result.resumed = bool(quic.tls.session_resumed)
            result.early_data_accepted = bool(quic.tls.early_data_accepted)
            result.version = quic._version
            result.retry_seen = quic._retry_source_connection_id is not None
            schedule = quic.tls.key_schedule
            result.cipher_suite = schedule.cipher_suite if schedule is not None else None
            result.handshakes = client.handshakes
            client.close()
            await client.wait_closed()
            if client._transport is not None:  # the migrated-to socket, if any
                client._transport.close()
    result.session_ticket = tickets[-1] if tickets else None
    return result


def h3_fetch(port: int, requests: list[H3Request], **kwargs: Any) -> H3Result:
    """:func:`h3_fetch_async` in a fresh event loop (call it from a worker thread)."""
    return asyncio.run(h3_fetch_async(port, requests, **kwargs))


class _Forward(asyncio.DatagramProtocol):
    """Hands what a migrated-to socket receives to the QUIC protocol."""

    def __init__(self, client: QuicConnectionProtocol) -> None:
        self.client = client

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.client.datagram_received(data, addr)


async def migrate(client: QuicConnectionProtocol, ipv4: str | None = None) -> dict[str, Any]:
    """Actively migrate ``client`` (RFC 9000 §9.2): new peer connection ID, new local port
    (on the local IPv4 address ``ipv4`` if given, a move to another address).

    The asyncio client sends through ``client._transport``; a new UDP socket (dual-stack,
    like the one aioquic's ``connect`` made, as the peer address is IPv4-mapped) replaces
    it, the old one is closed so nothing more leaves from the old port, and the new
    socket's datagrams are fed to the same QuicConnection. The server must validate the
    new path and answer there. Whoever made the connection closes the new transport
    (:func:`h3_fetch_async` does). Returns the old and new peer CIDs and the new local port.
    """
    quic = client._quic
    old_cid = quic._peer_cid.cid.hex()
    quic.change_connection_id()  # RFC 9000 §9.5: a new CID on the new path
    sock = dual_stack_udp_socket(ipv4)
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(lambda: _Forward(client), sock=sock)
    old_transport = client._transport
    client._transport = transport
    if old_transport is not None:
        old_transport.close()
    client.transmit()
    return {
        "old_cid": old_cid,
        "new_cid": quic._peer_cid.cid.hex(),
        "port": sock.getsockname()[1],
    }
