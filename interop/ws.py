"""WebSocket tunnels over HTTP/2 (RFC 8441) and HTTP/3 (RFC 9220), for the ws-h2/ws-h3 cases.

No packaged Python client speaks extended CONNECT on both, so the tunnels are built here on
the protocol libraries (the ``h2`` package over TLS, aioquic's QUIC and HTTP/3), and
wsproto does the client framing on top; the same approach as ``tests/wsclient.py``, written
again for asyncio (``tests/`` is not imported). :func:`echo_session` runs the ws cases'
script over any tunnel (see :mod:`interop.cases`), and :func:`run` does it in a fresh event
loop so an adapter can call it from its worker thread.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, TextMessage

from .cases import WS_BINARY, WS_CLOSE_CODE, WS_TEXT, Result, Server, fail, passed


class Tunnel:
    """The byte stream of one accepted extended CONNECT; ``status`` is the response's."""

    status = 0
    what = ""  # how the tunnel was opened, for the evidence

    def __init__(self) -> None:
        self.inbox: asyncio.Queue[bytes] = asyncio.Queue()

    async def send(self, data: bytes) -> None:
        raise NotImplementedError

    async def aclose(self) -> None:
        """Close the connection under the tunnel (HTTP/3: the exit stack does)."""


def _connect_headers(port: int, path: str) -> list[tuple[bytes, bytes]]:
    return [
        (b":method", b"CONNECT"),
        (b":protocol", b"websocket"),
        (b":scheme", b"https"),
        (b":path", path.encode()),
        (b":authority", b"localhost:%d" % port),
        (b"sec-websocket-version", b"13"),
    ]


# -- HTTP/2 ------------------------------------------------------------------------------


class H2Tunnel(Tunnel):
    """RFC 8441 on a fresh TLS connection (ALPN h2), with the h2 package."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        import h2.config
        import h2.connection

        super().__init__()
        self.reader, self.writer = reader, writer
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        self.stream_id = 0
        self.connect_enabled: bool | None = None
        self.settings = asyncio.Event()
        self.response = asyncio.Event()
        self.pump_task: asyncio.Task[None] | None = None

    async def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.writer.write(data)
            await self.writer.drain()

    async def pump(self) -> None:
        import h2.events
        import h2.settings

        while True:
            data = await self.reader.read(65536)
            if not data:
                break
            for event in self.conn.receive_data(data):
                if isinstance(event, h2.events.RemoteSettingsChanged):
                    code = h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL
                    if code in event.changed_settings:
                        self.connect_enabled = event.changed_settings[code].new_value == 1
                    self.settings.set()
                elif isinstance(event, h2.events.ResponseReceived):
                    self.status = int(dict(event.headers)[b":status"])
                    self.response.set()
                elif isinstance(event, h2.events.DataReceived):
                    self.conn.acknowledge_received_data(
                        event.flow_controlled_length, event.stream_id
                    )
                    self.inbox.put_nowait(event.data)
                elif isinstance(event, h2.events.StreamEnded | h2.events.StreamReset):
                    self.inbox.put_nowait(b"")
                    self.response.set()
            await self.flush()
        self.inbox.put_nowait(b"")
        self.settings.set()
        self.response.set()

    async def send(self, data: bytes) -> None:
        self.conn.send_data(self.stream_id, data)
        await self.flush()

    async def aclose(self) -> None:
        if self.pump_task is not None:
            self.pump_task.cancel()
        self.writer.close()


async def open_h2(port: int, cafile: str, path: str) -> H2Tunnel:
    context = ssl.create_default_context(cafile=cafile)
    context.set_alpn_protocols(["h2"])
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=context, server_hostname="localhost"
    )
    alpn = writer.get_extra_info("ssl_object").selected_alpn_protocol()
    if alpn != "h2":
        raise RuntimeError(f"ALPN selected {alpn!r}, not h2")
    tunnel = H2Tunnel(reader, writer)
    tunnel.conn.initiate_connection()
    await tunnel.flush()
    tunnel.pump_task = asyncio.create_task(tunnel.pump())
    await asyncio.wait_for(tunnel.settings.wait(), 10)
    if not tunnel.connect_enabled:
        raise RuntimeError("server SETTINGS lack SETTINGS_ENABLE_CONNECT_PROTOCOL = 1")
    tunnel.stream_id = tunnel.conn.get_next_available_stream_id()
    tunnel.conn.send_headers(tunnel.stream_id, _connect_headers(port, path))
    await tunnel.flush()
    await asyncio.wait_for(tunnel.response.wait(), 10)
    tunnel.what = "h2 (ALPN h2), SETTINGS_ENABLE_CONNECT_PROTOCOL=1, extended CONNECT"
    return tunnel


# -- HTTP/3 ------------------------------------------------------------------------------


async def open_h3(port: int, cafile: str, path: str, stack: Any) -> Tunnel:
    """RFC 9220 on a fresh QUIC connection; ``stack`` (an AsyncExitStack) owns it."""
    from aioquic.asyncio.client import connect
    from aioquic.asyncio.protocol import QuicConnectionProtocol
    from aioquic.h3.connection import H3_ALPN, H3Connection, Setting
    from aioquic.h3.events import DataReceived, HeadersReceived
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.events import QuicEvent, StreamReset

    class H3Tunnel(Tunnel, QuicConnectionProtocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            QuicConnectionProtocol.__init__(self, *args, **kwargs)
            Tunnel.__init__(self)
            self.h3 = H3Connection(self._quic)
            self.stream_id = -1
            self.response = asyncio.Event()

        def quic_event_received(self, event: QuicEvent) -> None:
            if isinstance(event, StreamReset) and event.stream_id == self.stream_id:
                self.inbox.put_nowait(b"")
                self.response.set()
            for h3_event in self.h3.handle_event(event):
                if getattr(h3_event, "stream_id", None) != self.stream_id:
                    continue
                if isinstance(h3_event, HeadersReceived) and not self.status:
                    self.status = int(dict(h3_event.headers)[b":status"])
                    self.response.set()
                elif isinstance(h3_event, DataReceived) and h3_event.data:
                    self.inbox.put_nowait(h3_event.data)
                if getattr(h3_event, "stream_ended", False):
                    self.inbox.put_nowait(b"")

        async def send(self, data: bytes) -> None:
            self.h3.send_data(self.stream_id, data, end_stream=False)
            self.transmit()

    configuration = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN)
    configuration.load_verify_locations(cafile)
    configuration.server_name = "localhost"
    tunnel = await stack.enter_async_context(
        connect("127.0.0.1", port, configuration=configuration, create_protocol=H3Tunnel)
    )
    assert isinstance(tunnel, H3Tunnel)
    tunnel.stream_id = tunnel._quic.get_next_available_stream_id()
    tunnel.h3.send_headers(tunnel.stream_id, _connect_headers(port, path))
    tunnel.transmit()
    await asyncio.wait_for(tunnel.response.wait(), 10)
    settings = tunnel.h3.received_settings or {}
    enabled = settings.get(Setting.ENABLE_CONNECT_PROTOCOL)
    tunnel.what = f"h3 (QUIC), SETTINGS_ENABLE_CONNECT_PROTOCOL={enabled}, extended CONNECT"
    return tunnel


# -- the ws case's script ------------------------------------------------------------------


async def echo_session(tunnel: Tunnel, want_version: str) -> Result:
    """proto message, text echo, binary echo, then the server closes with WS_CLOSE_CODE."""
    if tunnel.status != 200:
        return fail(f"extended CONNECT answered {tunnel.status}")
    ws = Connection(ConnectionType.CLIENT)

    async def next_message() -> Any:
        parts: list[Any] = []
        while True:
            for event in ws.events():
                if isinstance(event, Ping):
                    await tunnel.send(ws.send(event.response()))
                elif isinstance(event, TextMessage | BytesMessage):
                    parts.append(event.data)
                    if event.message_finished:
                        return ("" if isinstance(event, TextMessage) else b"").join(parts)
                elif isinstance(event, CloseConnection):
                    return event
            data = await asyncio.wait_for(tunnel.inbox.get(), 10)
            if not data:
                return None
            ws.receive_data(data)

    proto = await next_message()
    if proto != f"proto:{want_version}":
        return fail(f"first message {proto!r}, wanted 'proto:{want_version}'")
    await tunnel.send(ws.send(TextMessage(data=WS_TEXT)))
    text = await next_message()
    await tunnel.send(ws.send(BytesMessage(data=WS_BINARY)))
    binary = await next_message()
    if text != WS_TEXT or binary != WS_BINARY:
        return fail(f"echo mismatch: text {text!r}, binary {str(binary)[:40]}")
    await tunnel.send(ws.send(TextMessage(data=f"close:{WS_CLOSE_CODE}")))
    closing = await next_message()
    if not isinstance(closing, CloseConnection) or closing.code != WS_CLOSE_CODE:
        return fail(f"wanted the server's close {WS_CLOSE_CODE}, got {closing!r}")
    await tunnel.send(ws.send(closing.response()))
    return passed(
        f"{tunnel.what}: 200; server says HTTP/{want_version}; text and "
        f"{len(WS_BINARY)}-byte binary echoed byte for byte; server's close code "
        f"{closing.code} seen"
    )


def run(case: str, server: Server) -> Result:
    """ws-h2 or ws-h3 in a fresh event loop (call from a worker thread)."""
    from contextlib import AsyncExitStack

    async def go() -> Result:
        async with AsyncExitStack() as stack:
            if case == "ws-h2":
                tunnel: Tunnel = await open_h2(server.https_port, server.ca_certfile, "/ws")
                stack.push_async_callback(tunnel.aclose)
                return await echo_session(tunnel, "2")
            tunnel = await open_h3(server.h3_port, server.ca_certfile, "/ws", stack)
            return await echo_session(tunnel, "3")

    return asyncio.run(asyncio.wait_for(go(), 60))
