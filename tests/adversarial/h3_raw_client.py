"""A raw HTTP/3 client for attacks: we write the QPACK encoder stream and HEADERS frames.

aioquic's client ``QuicConnection`` carries the bytes; nothing of aioquic's H3Connection
runs on this side, so field sections and encoder instructions are whatever the test
builds (``qpack_*`` helpers below: RFC 9204 §4.3, §4.5). The client tells the server its
own table capacity is 0, so the server's answers use the static table only and decode
with a fresh ``pylsqpack.Decoder(0, 0)``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pylsqpack
from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.buffer import Buffer, BufferReadError, encode_uint_var
from aioquic.h3.connection import (
    H3_ALPN,
    FrameType,
    Setting,
    encode_frame,
    encode_settings,
    parse_settings,
)
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import ConnectionTerminated, QuicEvent, StreamDataReceived, StreamReset

# -- QPACK by hand --------------------------------------------------------------------


def qpack_int(first: int, prefix_bits: int, value: int) -> bytes:
    """An N-bit-prefix integer (RFC 7541 §5.1), ``first`` holding the pattern bits."""
    mask = (1 << prefix_bits) - 1
    if value < mask:
        return bytes((first | value,))
    out = bytearray((first | mask,))
    value -= mask
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def qpack_set_capacity(capacity: int) -> bytes:
    """Set Dynamic Table Capacity (RFC 9204 §4.3.1)."""
    return qpack_int(0x20, 5, capacity)


def qpack_insert_literal(name: bytes, value: bytes) -> bytes:
    """Insert with Literal Name (RFC 9204 §4.3.3), no Huffman."""
    return qpack_int(0x40, 5, len(name)) + name + qpack_int(0x00, 7, len(value)) + value


def qpack_prefix(required_insert_count: int, max_entries: int, base_delta: int = 0) -> bytes:
    """Field section prefix (RFC 9204 §4.5.1) with Base = RIC + ``base_delta``."""
    encoded = 0 if required_insert_count == 0 else required_insert_count % (2 * max_entries) + 1
    return qpack_int(0x00, 8, encoded) + qpack_int(0x00, 7, base_delta)


def qpack_indexed_dynamic(relative: int) -> bytes:
    """Indexed field line, dynamic table, relative index (RFC 9204 §4.5.2)."""
    return qpack_int(0x80, 6, relative)


def qpack_literal(name: bytes, value: bytes) -> bytes:
    """Literal field line with literal name (RFC 9204 §4.5.6), no Huffman."""
    return qpack_int(0x20, 3, len(name)) + name + qpack_int(0x00, 7, len(value)) + value


def static_lines(headers: list[tuple[bytes, bytes]]) -> bytes:
    """Field lines for ``headers`` using the static table only (no prefix)."""
    encoder = pylsqpack.Encoder()
    _, block = encoder.encode(0, headers)
    assert block[:2] == b"\x00\x00", block[:2]
    return block[2:]


def request_lines(path: str = "/", method: bytes = b"GET") -> bytes:
    return static_lines(
        [
            (b":method", method),
            (b":scheme", b"https"),
            (b":authority", b"localhost"),
            (b":path", path.encode()),
        ]
    )


# -- the client -------------------------------------------------------------------------


@dataclass
class RawResponse:
    status: int | None = None
    reset: int | None = None
    ended: bool = False


@dataclass
class _Stream:
    buffer: bytes = b""
    response: RawResponse = field(default_factory=RawResponse)


class RawH3(QuicConnectionProtocol):
    """One HTTP/3 connection whose frames the test writes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.streams: dict[int, _Stream] = {}
        self.terminated: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.server_settings: asyncio.Future[dict[int, int]] = (
            asyncio.get_running_loop().create_future()
        )
        self._uni: dict[int, bytes] = {}
        self._decoder = pylsqpack.Decoder(0, 0)
        self._encoder_stream: int | None = None
        self._changed = asyncio.Event()

    def open(self) -> None:
        """Control stream with SETTINGS (our table capacity 0), encoder and decoder streams."""
        quic = self._quic
        control = quic.get_next_available_stream_id(is_unidirectional=True)
        settings = {Setting.QPACK_MAX_TABLE_CAPACITY: 0, Setting.QPACK_BLOCKED_STREAMS: 0}
        quic.send_stream_data(
            control,
            encode_uint_var(0) + encode_frame(FrameType.SETTINGS, encode_settings(settings)),
        )
        self._encoder_stream = quic.get_next_available_stream_id(is_unidirectional=True)
        quic.send_stream_data(self._encoder_stream, encode_uint_var(2))
        decoder = quic.get_next_available_stream_id(is_unidirectional=True)
        quic.send_stream_data(decoder, encode_uint_var(3))
        self.transmit()

    def encoder(self, instructions: bytes) -> None:
        """Bytes on our QPACK encoder stream."""
        assert self._encoder_stream is not None
        self._quic.send_stream_data(self._encoder_stream, instructions)
        self.transmit()

    def request(self, block: bytes, *, end: bool = True, body: bytes = b"") -> int:
        """A HEADERS frame carrying ``block`` (and DATA ``body``) on a new request stream."""
        stream_id = self._quic.get_next_available_stream_id()
        self.streams[stream_id] = _Stream()
        data = encode_frame(FrameType.HEADERS, block)
        if body:
            data += encode_frame(FrameType.DATA, body)
        self._quic.send_stream_data(stream_id, data, end_stream=end)
        self.transmit()
        return stream_id

    def raw_request(self, data: bytes, end: bool = False) -> int:
        """``data`` as it is on a new request stream."""
        stream_id = self._quic.get_next_available_stream_id()
        self.streams[stream_id] = _Stream()
        self.send(stream_id, data, end)
        return stream_id

    def send(self, stream_id: int, data: bytes, end: bool = False) -> None:
        self._quic.send_stream_data(stream_id, data, end_stream=end)
        self.transmit()

    async def wait(self, stream_ids: list[int], timeout: float) -> list[RawResponse]:
        """Until each stream has a status and an end, or a reset (or the connection ended)."""

        def done() -> bool:
            return self.terminated.done() or all(
                self.streams[s].response.reset is not None or self.streams[s].response.ended
                for s in stream_ids
            )

        async with asyncio.timeout(timeout):
            while not done():
                self._changed.clear()
                await self._changed.wait()
        return [self.streams[s].response for s in stream_ids]

    async def wait_closed(self) -> None:
        # CONNECTION_CLOSE is sent by close(); the draining period that follows (3 PTO,
        # RFC 9000 §10.2) only delays the test.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.2):
                await super().wait_closed()

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, ConnectionTerminated):
            if not self.terminated.done():
                self.terminated.set_result(event.error_code)
        elif isinstance(event, StreamReset):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.response.reset = event.error_code
        elif isinstance(event, StreamDataReceived):
            if event.stream_id % 4 == 3:
                self._uni_data(event.stream_id, event.data)
            elif event.stream_id in self.streams:
                self._request_data(self.streams[event.stream_id], event.data, event.end_stream)
        self._changed.set()

    def _uni_data(self, stream_id: int, data: bytes) -> None:
        buffer = self._uni.get(stream_id, b"") + data
        self._uni[stream_id] = buffer
        if self.server_settings.done():
            return
        buf = Buffer(data=buffer)
        try:
            if buf.pull_uint_var() != 0:  # not the control stream
                return
            frame_type, length = buf.pull_uint_var(), buf.pull_uint_var()
            payload = buf.pull_bytes(length)
        except BufferReadError:
            return
        if frame_type == FrameType.SETTINGS:
            self.server_settings.set_result(parse_settings(payload))

    def _request_data(self, stream: _Stream, data: bytes, end: bool) -> None:
        stream.buffer += data
        buf = Buffer(data=stream.buffer)
        consumed = 0
        while not buf.eof():
            try:
                frame_type, length = buf.pull_uint_var(), buf.pull_uint_var()
                payload = buf.pull_bytes(length)
            except BufferReadError:
                break
            consumed = buf.tell()
            if frame_type == FrameType.HEADERS and stream.response.status is None:
                _, headers = self._decoder.feed_header(0, payload)
                stream.response.status = int(dict(headers)[b":status"])
        stream.buffer = stream.buffer[consumed:]
        if end:
            stream.response.ended = True


@asynccontextmanager
async def raw_h3(port: int, cafile: str) -> AsyncIterator[RawH3]:
    """A connected :class:`RawH3` to 127.0.0.1:``port`` (HTTP/3 streams opened)."""
    configuration = QuicConfiguration(
        is_client=True, alpn_protocols=H3_ALPN, server_name="localhost"
    )
    configuration.load_verify_locations(cafile)
    async with connect(
        "127.0.0.1", port, configuration=configuration, create_protocol=RawH3
    ) as client:
        assert isinstance(client, RawH3)
        client.open()
        yield client
        client.close()
