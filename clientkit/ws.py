"""WebSocket clients for HTTP/1.1, HTTP/2 (RFC 8441) and HTTP/3 (RFC 9220).

The ``websockets`` package is the independent HTTP/1.1 client of the tests; it speaks
neither RFC 8441 nor RFC 9220, and it will not send broken frames on purpose. So this
module opens a WebSocket *tunnel* on each transport, built on the protocol libraries
(h11 for the HTTP/1.1 handshake, the ``h2`` package, aioquic's QUIC and HTTP/3), and
:class:`WSClient` runs wsproto's client framing over any tunnel, plus a raw-frame writer
for the RFC 6455 conformance cases. Everything is anyio, so it runs on every backend the
server is tested on (tests) and under ``anyio.run`` in a worker thread (interop's ws-h2
and ws-h3 cases).
"""

from __future__ import annotations

import base64
import os
import socket
import ssl
import struct
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import anyio.streams.tls
import h2.config
import h2.connection
import h2.events
import h2.settings
import h11
from aioquic.h3.connection import H3_ALPN, FrameType, H3Connection
from aioquic.h3.events import (
    DatagramReceived,
    DataReceived,
    HeadersReceived,
    WebTransportStreamDataReceived,
)
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import ConnectionTerminated, StreamReset
from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, Pong, TextMessage
from wsproto.extensions import Extension, PerMessageDeflate

Headers = list[tuple[bytes, bytes]]


class Tunnel:
    """The byte stream of one accepted (or refused) WebSocket handshake."""

    status: int
    headers: Headers
    body: bytes  # the response body when the handshake was refused

    def __init__(self) -> None:
        self._send, self._receive = anyio.create_memory_object_stream[bytes](1000)
        self.status = 0
        self.headers = []
        self.body = b""
        self.reset: int | None = None

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    async def send(self, data: bytes, end: bool = False) -> None:
        raise NotImplementedError

    async def receive(self) -> bytes:
        """The next bytes from the server; ``b""`` once its side has ended."""
        try:
            return await self._receive.receive()
        except anyio.EndOfStream:
            return b""

    def _deliver(self, data: bytes) -> None:
        try:
            self._send.send_nowait(data)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass

    def _end(self) -> None:
        self._send.close()

    def _dispose(self) -> None:
        self._send.close()
        self._receive.close()


def _handshake_headers(
    extra: Headers, subprotocols: list[str], deflate: bool, version: bytes
) -> Headers:
    headers: Headers = [(b"sec-websocket-version", version)]
    if subprotocols:
        headers.append((b"sec-websocket-protocol", ", ".join(subprotocols).encode()))
    if deflate:
        headers.append((b"sec-websocket-extensions", b"permessage-deflate; client_max_window_bits"))
    return headers + extra


async def _connect(port: int, tls: ssl.SSLContext | None) -> anyio.abc.ByteStream:
    """A TCP connection to 127.0.0.1:``port``, in TLS when ``tls`` is given."""
    if tls is None:
        return await anyio.connect_tcp("127.0.0.1", port)
    return await anyio.connect_tcp(
        "127.0.0.1", port, ssl_context=tls, tls_standard_compatible=False
    )


# -- HTTP/1.1 ------------------------------------------------------------------------


class _H1Tunnel(Tunnel):
    def __init__(self, stream: anyio.abc.ByteStream) -> None:
        super().__init__()
        self.stream = stream

    async def send(self, data: bytes, end: bool = False) -> None:
        if data:
            await self.stream.send(data)
        if end:
            await self.stream.aclose()

    async def pump(self) -> None:
        while True:
            try:
                data = await self.stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                break
            self._deliver(data)
        self._end()


@asynccontextmanager
async def open_h1(
    port: int,
    path: str = "/",
    *,
    tls: ssl.SSLContext | None = None,
    headers: Headers | None = None,
    subprotocols: list[str] | None = None,
    deflate: bool = False,
    version: bytes = b"13",
) -> AsyncIterator[Tunnel]:
    """An RFC 6455 handshake on a fresh TCP (or TLS) connection."""
    stream = await _connect(port, tls)
    key = base64.b64encode(os.urandom(16))
    request_headers = [
        (b"host", b"localhost:%d" % port),
        (b"upgrade", b"websocket"),
        (b"connection", b"Upgrade"),
        (b"sec-websocket-key", key),
        *_handshake_headers(headers or [], subprotocols or [], deflate, version),
    ]
    client = h11.Connection(h11.CLIENT)
    await stream.send(client.send(h11.Request(method="GET", target=path, headers=request_headers)))
    await stream.send(client.send(h11.EndOfMessage()))
    tunnel = _H1Tunnel(stream)
    while True:
        event = client.next_event()
        if event is h11.NEED_DATA:
            client.receive_data(await stream.receive())
            continue
        if isinstance(event, h11.InformationalResponse) and event.status_code == 101:
            tunnel.status = 101
            tunnel.headers = [(n.lower(), v) for n, v in event.headers]
            trailing, _ = client.trailing_data
            if trailing:
                tunnel._deliver(bytes(trailing))
            break
        if isinstance(event, h11.Response):
            tunnel.status = event.status_code
            tunnel.headers = [(n.lower(), v) for n, v in event.headers]
            continue
        if isinstance(event, h11.Data):
            tunnel.body += event.data
            continue
        if isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
            break
    async with anyio.create_task_group() as tg:
        if tunnel.status == 101:
            tg.start_soon(tunnel.pump)
        try:
            yield tunnel
        finally:
            tg.cancel_scope.cancel()
    tunnel._dispose()
    await stream.aclose()


# -- HTTP/2 (RFC 8441) ---------------------------------------------------------------


class _H2Tunnel(Tunnel):
    def __init__(self, stream: anyio.abc.ByteStream, conn: h2.connection.H2Connection) -> None:
        super().__init__()
        self.stream = stream
        self.conn = conn
        self.stream_id = 0
        self.settings_seen = anyio.Event()
        self.response_seen = anyio.Event()
        self.connect_protocol_enabled = False
        self.lock = anyio.Lock()
        self.goaway_seen = False
        self.alpn: str | None = None  # what TLS negotiated (None on h2c)
        self._pending = bytearray()

    async def flush(self) -> None:
        async with self.lock:
            data = self.conn.data_to_send()
            if data:
                await self.stream.send(data)

    async def send(self, data: bytes, end: bool = False) -> None:
        # Respect the server's flow control windows, as a real client must.
        view = memoryview(data)
        while view or end:
            window = self.conn.local_flow_control_window(self.stream_id)
            size = min(len(view), window, self.conn.max_outbound_frame_size)
            if view and size <= 0:
                await anyio.sleep(0.005)
                continue
            last = end and size == len(view)
            self.conn.send_data(self.stream_id, bytes(view[:size]), end_stream=last)
            view = view[size:]
            await self.flush()
            if last:
                break

    def _strip_goaway(self, data: bytes) -> bytes:
        # The h2 package's client state machine treats a received GOAWAY as the end of
        # the connection and rejects frames of the streams still open, which RFC 9113
        # §6.8 lets finish. Note GOAWAY here and keep it from h2.
        self._pending += data
        out = bytearray()
        while len(self._pending) >= 9:
            length = int.from_bytes(self._pending[:3], "big")
            if len(self._pending) < 9 + length:
                break
            frame = self._pending[: 9 + length]
            del self._pending[: 9 + length]
            if frame[3] == 0x7:
                self.goaway_seen = True
            else:
                out += frame
        return bytes(out)

    async def pump(self) -> None:
        while True:
            try:
                data = await self.stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                break
            for event in self.conn.receive_data(self._strip_goaway(data)):
                if isinstance(event, h2.events.RemoteSettingsChanged):
                    setting = event.changed_settings.get(
                        h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL
                    )
                    if setting is not None:
                        self.connect_protocol_enabled = setting.new_value == 1
                    self.settings_seen.set()
                elif isinstance(event, h2.events.ResponseReceived):
                    self.status = int(dict(event.headers)[b":status"])
                    self.headers = [(n, v) for n, v in event.headers if not n.startswith(b":")]
                    self.response_seen.set()
                elif isinstance(event, h2.events.DataReceived):
                    self.conn.acknowledge_received_data(
                        event.flow_controlled_length, event.stream_id
                    )
                    if self.status == 200:
                        self._deliver(event.data)
                    else:
                        self.body += event.data
                elif isinstance(event, h2.events.StreamEnded):
                    self._end()
                    self.response_seen.set()
                elif isinstance(event, h2.events.StreamReset):
                    self.reset = event.error_code
                    self._end()
                    self.response_seen.set()
            await self.flush()
        self._end()
        self.response_seen.set()
        self.settings_seen.set()


@asynccontextmanager
async def open_h2(
    port: int,
    path: str = "/",
    *,
    tls: ssl.SSLContext | None = None,
    headers: Headers | None = None,
    subprotocols: list[str] | None = None,
    deflate: bool = False,
    protocol: bytes = b"websocket",
    version: bytes = b"13",
) -> AsyncIterator[Tunnel]:
    """An RFC 8441 extended CONNECT on a fresh HTTP/2 connection (TLS with ALPN h2, or
    prior-knowledge h2c)."""
    if tls is not None:
        tls.set_alpn_protocols(["h2"])
    stream = await _connect(port, tls)
    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding=None)
    )
    conn.initiate_connection()
    tunnel = _H2Tunnel(stream, conn)
    if tls is not None:
        tunnel.alpn = stream.extra(anyio.streams.tls.TLSAttribute.alpn_protocol, None)
    async with anyio.create_task_group() as tg:
        tg.start_soon(tunnel.pump)
        try:
            await tunnel.flush()
            with anyio.fail_after(10):
                await tunnel.settings_seen.wait()
            assert tunnel.connect_protocol_enabled, "no SETTINGS_ENABLE_CONNECT_PROTOCOL"
            tunnel.stream_id = conn.get_next_available_stream_id()
            request = [
                (b":method", b"CONNECT"),
                (b":protocol", protocol),
                (b":scheme", b"https" if tls is not None else b"http"),
                (b":path", path.encode()),
                (b":authority", b"localhost:%d" % port),
                *_handshake_headers(headers or [], subprotocols or [], deflate, version),
            ]
            conn.send_headers(tunnel.stream_id, request)
            await tunnel.flush()
            with anyio.fail_after(10):
                await tunnel.response_seen.wait()
            yield tunnel
        finally:
            tg.cancel_scope.cancel()
    tunnel._dispose()
    await stream.aclose()


# -- HTTP/3 (RFC 9220) ---------------------------------------------------------------


class _UDPSocket:
    """A connected UDP socket read straight from the kernel's buffer, as the server reads.

    anyio's asyncio UDP socket keeps at most 100 datagrams between reads and drops the
    rest silently; a 128 KiB WebSocket echo is about 100 datagrams, so under load the
    client lost the tail of a burst and waited a whole PTO (seconds, with the RTT the
    load inflates) before the server resent it (seen in tests/test_soak.py)."""

    def __init__(self, port: int) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        self._sock.setblocking(False)
        self._sock.connect(("127.0.0.1", port))

    async def send(self, data: bytes) -> None:
        try:
            try:
                self._sock.send(data)
            except BlockingIOError:
                await anyio.wait_writable(self._sock)
                self._sock.send(data)
        except ConnectionRefusedError:
            pass  # the server has shut down: the datagram is lost, as UDP may lose it
        await anyio.lowlevel.checkpoint()

    async def receive(self) -> bytes:
        while True:
            try:
                return self._sock.recv(65536)
            except BlockingIOError:
                await anyio.wait_readable(self._sock)

    def __aiter__(self) -> _UDPSocket:
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self.receive()
        except ConnectionRefusedError:
            # The server's port is closed (an ICMP port unreachable came back on this
            # connected socket): it has shut down, nothing more will arrive.
            raise StopAsyncIteration from None

    async def aclose(self) -> None:
        self._sock.close()


class _H3Tunnel(Tunnel):
    def __init__(
        self,
        sock: Any,
        quic: QuicConnection,
        port: int,
        webtransport: bool = False,
        h3: H3Connection | None = None,
    ) -> None:
        super().__init__()
        self.sock = sock
        self.address = ("127.0.0.1", port)
        self.quic = quic
        # ``h3``: a client H3Connection of the caller's (e.g. one that sends other SETTINGS).
        self.h3 = h3 if h3 is not None else H3Connection(quic, enable_webtransport=webtransport)
        #: WebTransport: datagrams, and stream id -> (data, ended)
        self.datagrams: list[bytes] = []
        self.wt_streams: dict[int, tuple[bytes, bool]] = {}
        self.stream_id = 0
        self.response_seen = anyio.Event()
        self.handshake_done = anyio.Event()
        self.terminated = False
        self._lock = anyio.Lock()

    async def transmit(self) -> None:
        async with self._lock:
            for data, _ in self.quic.datagrams_to_send(time.monotonic()):
                await self.sock.send(data)

    async def send(self, data: bytes, end: bool = False) -> None:
        self.h3.send_data(self.stream_id, data, end)
        await self.transmit()
        # aioquic buffers without limit; like a real client, wait while more than 1 MiB
        # is unacknowledged (the server's flow control holds it back).
        stream = self.quic._streams.get(self.stream_id)
        while stream is not None and len(stream.sender._buffer) > 1024 * 1024:
            if self.terminated:
                return
            await anyio.sleep(0.005)

    async def pump(self) -> None:
        # Datagrams and QUIC's timers in two tasks. One loop that read only until the
        # next timer starved: a timer that stays due (an ACK the congestion window holds
        # back) cancelled every read at once, so the ACKs that would open the window were
        # never read, and the tunnel stalled for good (seen in tests/test_soak.py).
        quic = self.quic
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._run_timers, tg.cancel_scope)
            async for data in self.sock:
                quic.receive_datagram(data, self.address, time.monotonic())
                self._process()
                await self.transmit()
                if self.terminated:
                    break
            tg.cancel_scope.cancel()
        self._end()
        self.response_seen.set()

    async def _run_timers(self, scope: anyio.CancelScope) -> None:
        quic = self.quic
        while not self.terminated:
            timer = quic.get_timer()
            delay = 0.05 if timer is None else timer - time.monotonic()
            await anyio.sleep(min(max(delay, 0.001), 0.05))
            timer = quic.get_timer()
            if timer is not None and time.monotonic() >= timer:
                quic.handle_timer(time.monotonic())
            self._process()
            await self.transmit()
        scope.cancel()

    def _process(self) -> None:
        while True:
            event = self.quic.next_event()
            if event is None:
                return
            if type(event).__name__ == "HandshakeCompleted":
                self.handshake_done.set()
            if isinstance(event, ConnectionTerminated):
                self.terminated = True
                self.handshake_done.set()
            if isinstance(event, StreamReset) and event.stream_id == self.stream_id:
                self.reset = event.error_code
                self._end()
                self.response_seen.set()
            for h3_event in self.h3.handle_event(event):
                if isinstance(h3_event, DatagramReceived):
                    self.datagrams.append(h3_event.data)
                elif isinstance(h3_event, WebTransportStreamDataReceived):
                    data, _ = self.wt_streams.get(h3_event.stream_id, (b"", False))
                    self.wt_streams[h3_event.stream_id] = (
                        data + h3_event.data,
                        h3_event.stream_ended,
                    )
                elif isinstance(h3_event, HeadersReceived) and h3_event.stream_id == self.stream_id:
                    if not self.status:
                        self.status = int(dict(h3_event.headers)[b":status"])
                        self.headers = [
                            (n, v) for n, v in h3_event.headers if not n.startswith(b":")
                        ]
                        self.response_seen.set()
                    if h3_event.stream_ended:
                        self._end()
                elif isinstance(h3_event, DataReceived) and h3_event.stream_id == self.stream_id:
                    if self.status == 200:
                        if h3_event.data:
                            self._deliver(h3_event.data)
                    else:
                        self.body += h3_event.data
                    if h3_event.stream_ended:
                        self._end()
                        self.response_seen.set()


def open_wt_stream(h3: H3Connection, session_id: int, unidirectional: bool = False) -> int:
    """A client WebTransport stream of ``session_id``; its id. aioquic's client would
    parse the server's bytes on a bidirectional one as HTTP/3 frames, so its H3 stream is
    marked as raw WebTransport data of the session (draft-ietf-webtrans-http3 §4.3: only
    the opener sends the signal)."""
    stream_id = h3.create_webtransport_stream(session_id, is_unidirectional=unidirectional)
    if not unidirectional:
        with h3._get_or_create_stream(stream_id) as stream:
            stream.frame_type = FrameType.WEBTRANSPORT_STREAM
            stream.session_id = session_id
    return stream_id


@asynccontextmanager
async def open_h3(
    port: int,
    path: str = "/",
    *,
    cafile: str,
    headers: Headers | None = None,
    subprotocols: list[str] | None = None,
    deflate: bool = False,
    protocol: bytes = b"websocket",
    version: bytes = b"13",
    webtransport: bool = False,
) -> AsyncIterator[Any]:
    """An RFC 9220 extended CONNECT on a fresh QUIC connection (aioquic's QUIC and H3);
    with ``webtransport``, a draft-02 WebTransport CONNECT instead."""
    configuration = QuicConfiguration(
        is_client=True,
        alpn_protocols=H3_ALPN,
        max_datagram_frame_size=65536 if webtransport else None,
    )
    configuration.load_verify_locations(cafile)
    configuration.server_name = "localhost"
    quic = QuicConnection(configuration=configuration)
    sock = _UDPSocket(port)
    quic.connect(("127.0.0.1", port), time.monotonic())
    tunnel = _H3Tunnel(sock, quic, port, webtransport)
    async with anyio.create_task_group() as tg:
        tg.start_soon(tunnel.pump)
        try:
            await tunnel.transmit()
            with anyio.fail_after(10):
                await tunnel.handshake_done.wait()
            assert not tunnel.terminated, "QUIC handshake failed"
            tunnel.stream_id = quic.get_next_available_stream_id()
            request = [
                (b":method", b"CONNECT"),
                (b":protocol", protocol),
                (b":scheme", b"https"),
                (b":path", path.encode()),
                (b":authority", b"localhost:%d" % port),
                *(
                    [(b"sec-webtransport-http3-draft02", b"1"), *(headers or [])]
                    if webtransport
                    else _handshake_headers(headers or [], subprotocols or [], deflate, version)
                ),
            ]
            if webtransport:
                with anyio.fail_after(10):
                    while tunnel.h3._received_settings is None:  # the server's SETTINGS
                        await anyio.sleep(0.01)
            tunnel.h3.send_headers(tunnel.stream_id, request)
            await tunnel.transmit()
            with anyio.fail_after(10):
                await tunnel.response_seen.wait()
            yield tunnel
        finally:
            if not tunnel.terminated:
                quic.close()
                await tunnel.transmit()
            tg.cancel_scope.cancel()
    tunnel._dispose()
    await sock.aclose()


# -- WebSocket framing over any tunnel -----------------------------------------------


def raw_frame(
    opcode: int, payload: bytes = b"", *, fin: bool = True, rsv: int = 0, mask: bool = True
) -> bytes:
    """One client frame exactly as given (RFC 6455 §5.2), for frames wsproto won't make."""
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    length = len(payload)
    mask_bit = 0x80 if mask else 0
    if length < 126:
        head = struct.pack("!BB", first, mask_bit | length)
    elif length < 65536:
        head = struct.pack("!BBH", first, mask_bit | 126, length)
    else:
        head = struct.pack("!BBQ", first, mask_bit | 127, length)
    if not mask:
        return head + payload
    key = os.urandom(4)
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return head + key + masked


class WSClient:
    """wsproto client framing over a :class:`Tunnel`: messages, pings, closes."""

    def __init__(self, tunnel: Tunnel, deflate: bool = False) -> None:
        self.tunnel = tunnel
        extensions: list[Extension] = []
        offered = tunnel.header(b"sec-websocket-extensions")
        if deflate and offered:
            extension = PerMessageDeflate()
            extension.finalize(offered.decode())
            extensions.append(extension)
        self.ws = Connection(ConnectionType.CLIENT, extensions)
        self.ended = False
        self._fragments: list[Any] = []

    async def send_text(self, text: str) -> None:
        await self.tunnel.send(self.ws.send(TextMessage(data=text)))

    async def send_bytes(self, data: bytes) -> None:
        await self.tunnel.send(self.ws.send(BytesMessage(data=data)))

    async def ping(self, payload: bytes = b"") -> None:
        await self.tunnel.send(self.ws.send(Ping(payload=payload)))

    async def close(self, code: int = 1000, reason: str = "") -> None:
        await self.tunnel.send(self.ws.send(CloseConnection(code=code, reason=reason)))

    async def raw(self, data: bytes) -> None:
        await self.tunnel.send(data)

    async def next_event(self, timeout: float = 10) -> Any:
        """The next wsproto event (whole messages joined); ``None`` once the server's
        side ended without one."""
        with anyio.fail_after(timeout):
            while True:
                for event in self.ws.events():
                    if isinstance(event, TextMessage | BytesMessage):
                        self._fragments.append(event.data)
                        if not event.message_finished:
                            continue
                        fragments, self._fragments = self._fragments, []
                        if isinstance(event, TextMessage):
                            return TextMessage(data="".join(fragments))
                        return BytesMessage(data=b"".join(fragments))
                    return event
                if self.ended:
                    return None
                data = await self.tunnel.receive()
                if not data:
                    self.ended = True
                    continue
                self.ws.receive_data(data)

    async def receive_message(self, timeout: float = 10) -> str | bytes:
        """The next data message (answering nothing: pongs are returned as events)."""
        event = await self.next_event(timeout)
        assert isinstance(event, TextMessage | BytesMessage), event
        data = event.data
        return data if isinstance(data, str) else bytes(data)

    async def expect_close(self, timeout: float = 10) -> tuple[int, str]:
        """Read until the server's close frame; return its code and reason."""
        while True:
            event = await self.next_event(timeout)
            assert event is not None, "the server ended the stream without a close frame"
            if isinstance(event, CloseConnection):
                return int(event.code), event.reason or ""

    async def pong(self, timeout: float = 10) -> bytes:
        event = await self.next_event(timeout)
        assert isinstance(event, Pong), event
        return bytes(event.payload)
