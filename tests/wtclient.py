"""A WebTransport client for the tests, in each dialect a browser speaks.

aioquic's H3Connection (QUIC, QPACK, WebTransport streams and datagrams) with the SETTINGS
and request of one dialect, as the browsers send them:

* ``draft02`` (Chromium): SETTINGS_ENABLE_WEBTRANSPORT, ``:protocol`` webtransport and
  ``sec-webtransport-http3-draft02: 1``;
* ``draft07``: WEBTRANSPORT_MAX_SESSIONS (0xc671706a), ``:protocol`` webtransport;
* ``safari`` (draft-13/14): WT_MAX_SESSIONS (0x14e9cd29) and the WT_INITIAL_* settings,
  ``:protocol`` webtransport;
* ``draft15``: WT_ENABLED (0x2c7cf000) and the WT_INITIAL_* settings, ``:protocol``
  webtransport-h3.

The capsule codec here is written from RFC 9297 §3.2 / RFC 9000 §16 on its own, not
imported from quicserve, so the tests do not check the server's codec against itself.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from aioquic.h3.connection import H3_ALPN, H3Connection, Setting
from aioquic.h3.events import H3Event, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import QuicEvent, StopSendingReceived, StreamReset

from clientkit.ws import _H3Tunnel, _UDPSocket

WT_MAX_SESSIONS_07 = 0xC671706A
WT_MAX_SESSIONS = 0x14E9CD29
WT_ENABLED = 0x2C7CF000
WT_INITIAL_MAX_DATA = 0x2B61
WT_INITIAL_MAX_STREAMS_UNI = 0x2B64
WT_INITIAL_MAX_STREAMS_BIDI = 0x2B65
CLOSE_SESSION = 0x2843
MAX_DATA = 0x190B4D3D
MAX_STREAMS_BIDI = 0x190B4D3F
MAX_STREAMS_UNI = 0x190B4D40
DATA_BLOCKED = 0x190B4D41
STREAMS_BLOCKED_UNI = 0x190B4D44
WT_FLOW_CONTROL_ERROR = 0x045D4487
WT_SESSION_GONE = 0x170D7B68
WT_BUFFERED_STREAM_REJECTED = 0x3994BD84
H3_MESSAGE_ERROR = 0x10E
H3_REQUEST_REJECTED = 0x10B

_FLOW = {
    WT_INITIAL_MAX_DATA: 1 << 20,
    WT_INITIAL_MAX_STREAMS_UNI: 10,
    WT_INITIAL_MAX_STREAMS_BIDI: 10,
}

#: dialect -> (client SETTINGS besides aioquic's, :protocol, request headers)
DIALECTS: dict[str, tuple[dict[int, int], bytes, list[tuple[bytes, bytes]]]] = {
    "draft02": (
        {Setting.ENABLE_WEBTRANSPORT: 1},
        b"webtransport",
        [(b"sec-webtransport-http3-draft02", b"1")],
    ),
    "draft07": ({WT_MAX_SESSIONS_07: 1}, b"webtransport", []),
    "safari": ({WT_MAX_SESSIONS: 1, **_FLOW}, b"webtransport", []),
    "draft15": ({WT_ENABLED: 1, **_FLOW}, b"webtransport-h3", []),
}


def varint(value: int) -> bytes:
    for size, prefix in ((1, 0), (2, 0x4000), (4, 0x80000000), (8, 0xC000000000000000)):
        if value < 1 << (8 * size - 2):
            return (value | prefix).to_bytes(size, "big")
    raise ValueError(value)


def capsule(kind: int, value: bytes) -> bytes:
    return varint(kind) + varint(len(value)) + value


def parse_capsules(data: bytes) -> list[tuple[int, bytes]]:
    """Whole capsules in ``data`` (a test reads them only once they have all arrived)."""
    out = []
    pos = 0

    def read() -> int:
        nonlocal pos
        size = 1 << (data[pos] >> 6)
        value = int.from_bytes(data[pos : pos + size], "big") & ((1 << (8 * size - 2)) - 1)
        pos += size
        return value

    while pos < len(data):
        kind = read()
        length = read()
        out.append((kind, data[pos : pos + length]))
        pos += length
    return out


def number(value: bytes) -> int:
    size = 1 << (value[0] >> 6)
    return int.from_bytes(value[:size], "big") & ((1 << (8 * size - 2)) - 1)


class DialectH3(H3Connection):
    """A client H3Connection with one dialect's SETTINGS; it logs what it saw."""

    def __init__(
        self,
        quic: QuicConnection,
        dialect: str,
        settings: dict[int, int] | None = None,
        hold_settings: bool = False,
    ) -> None:
        self._dialect_settings = {**DIALECTS[dialect][0], **(settings or {})}
        self._draft02 = dialect == "draft02"
        self.log: list[Any] = []
        #: with ``hold_settings``, what the control stream would carry, until
        #: ``release_settings`` (a CONNECT that overtakes the client's SETTINGS)
        self._held: list[bytes] | None = [] if hold_settings else None
        super().__init__(quic, enable_webtransport=True)

    def _init_connection(self) -> None:
        held = self._held
        if held is None:
            super()._init_connection()
            return
        quic = self._quic
        send = quic.send_stream_data
        control = quic.get_next_available_stream_id(is_unidirectional=True)

        def hold(stream_id: int, data: bytes, end_stream: bool = False) -> None:
            if stream_id == control:
                send(stream_id, b"")  # the stream exists (the next uni stream is not it)
                held.append(data)
            else:
                send(stream_id, data, end_stream)

        quic.send_stream_data = hold  # type: ignore[method-assign]
        try:
            super()._init_connection()
        finally:
            del quic.send_stream_data  # back to the class's method

    def release_settings(self) -> None:
        """Send the control stream (SETTINGS) held back so far."""
        assert self._held is not None and self._local_control_stream_id is not None
        for data in self._held:
            self._quic.send_stream_data(self._local_control_stream_id, data)
        self._held = None

    def _get_local_settings(self) -> dict[int, int]:
        settings = super()._get_local_settings()
        if not self._draft02:
            settings.pop(Setting.ENABLE_WEBTRANSPORT, None)
        settings.update(self._dialect_settings)
        return settings

    def handle_event(self, event: QuicEvent) -> list[H3Event]:
        out = super().handle_event(event)
        if isinstance(event, StreamReset | StopSendingReceived):
            self.log.append(event)
        self.log.extend(out)
        return out


class WTSession(_H3Tunnel):
    """One session (the first CONNECT), plus helpers for more CONNECTs on the same
    connection and for the CONNECT stream's capsules."""

    h3: DialectH3

    def __init__(
        self,
        sock: Any,
        quic: QuicConnection,
        port: int,
        dialect: str,
        settings: dict[int, int] | None = None,
        hold_settings: bool = False,
    ) -> None:
        h3 = DialectH3(quic, dialect, settings, hold_settings)
        super().__init__(sock, quic, port, True, h3)
        self.dialect = dialect
        self.connect_data = b""

    def _deliver(self, data: bytes) -> None:
        self.connect_data += data

    def request(self, path: str) -> list[tuple[bytes, bytes]]:
        _, protocol, headers = DIALECTS[self.dialect]
        return [
            (b":method", b"CONNECT"),
            (b":protocol", protocol),
            (b":scheme", b"https"),
            (b":path", path.encode()),
            (b":authority", b"localhost:%d" % self.address[1]),
            (b"origin", b"https://localhost"),
            *headers,
        ]

    async def connect(self, path: str) -> int:
        """Another CONNECT on this connection; its stream id."""
        stream_id = self.quic.get_next_available_stream_id()
        self.h3.send_headers(stream_id, self.request(path))
        await self.transmit()
        return stream_id

    async def outcome(self, stream_id: int) -> int:
        """The status of a CONNECT, or minus the error code it was reset with."""
        with anyio.fail_after(10):
            while True:
                for event in self.h3.log:
                    if isinstance(event, HeadersReceived) and event.stream_id == stream_id:
                        return int(dict(event.headers)[b":status"])
                    if isinstance(event, StreamReset) and event.stream_id == stream_id:
                        return -event.error_code
                await anyio.sleep(0.01)

    async def send_capsule(self, kind: int, value: bytes, end: bool = False) -> None:
        self.h3.send_data(self.stream_id, capsule(kind, value), end)
        await self.transmit()

    def capsules(self) -> list[tuple[int, bytes]]:
        return parse_capsules(self.connect_data)

    def granted(self, kind: int, initial: int) -> int:
        """The highest value of the server's ``kind`` capsules (WT_MAX_*), or ``initial``."""
        values = [number(v) for k, v in self.capsules() if k == kind]
        return max([initial, *values])

    async def send_datagram(self, data: bytes) -> bytes:
        """Send until an answer comes (datagrams may be lost, even on loopback)."""
        for _ in range(20):
            self.h3.send_datagram(self.stream_id, data)
            await self.transmit()
            with anyio.move_on_after(0.2):
                while not self.datagrams:
                    await anyio.sleep(0.005)
            if self.datagrams:
                return self.datagrams.pop(0)
        raise AssertionError("no datagram came back")

    async def wait(self, condition: Any, timeout: float = 10) -> None:
        with anyio.fail_after(timeout):
            while not condition():
                await anyio.sleep(0.005)


@asynccontextmanager
async def open_wt(
    port: int,
    path: str,
    *,
    cafile: str,
    dialect: str,
    settings: dict[int, int] | None = None,
    settings_after: float | None = None,
) -> AsyncIterator[WTSession]:
    """A QUIC connection speaking ``dialect`` with one WebTransport CONNECT to ``path``
    (``settings`` replace some of the dialect's client SETTINGS; with ``settings_after``,
    the client's SETTINGS leave that many seconds after the CONNECT)."""
    configuration = QuicConfiguration(
        is_client=True, alpn_protocols=H3_ALPN, max_datagram_frame_size=65536
    )
    configuration.load_verify_locations(cafile)
    configuration.server_name = "localhost"
    quic = QuicConnection(configuration=configuration)
    sock = _UDPSocket(port)
    quic.connect(("127.0.0.1", port), time.monotonic())
    session = WTSession(sock, quic, port, dialect, settings, settings_after is not None)
    async with anyio.create_task_group() as tg:
        tg.start_soon(session.pump)
        try:
            await session.transmit()
            with anyio.fail_after(10):
                await session.handshake_done.wait()
            assert not session.terminated, "QUIC handshake failed"
            # A browser opens no session before the server's SETTINGS (d15 §3.1).
            await session.wait(lambda: session.h3.received_settings is not None)
            session.stream_id = quic.get_next_available_stream_id()
            session.h3.send_headers(session.stream_id, session.request(path))
            await session.transmit()
            if settings_after is not None:
                await anyio.sleep(settings_after)
                session.h3.release_settings()
                await session.transmit()
            with anyio.fail_after(10):
                await session.response_seen.wait()
            yield session
        finally:
            if not session.terminated:
                quic.close()
                await session.transmit()
            tg.cancel_scope.cancel()
    session._dispose()
    await sock.aclose()
