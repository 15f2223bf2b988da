"""A tiny raw-frame HTTP/2 client for conformance tests, in the manner of h2spec.

It puts exactly the bytes a test wants on the wire, valid or not, and checks what the
server answers. It is deliberately *not* an HTTP/2 implementation: it keeps no stream
state, never refuses to send, and enforces nothing.

* :func:`connect` opens cleartext TCP to the server (h2c with prior knowledge) and, by
  default, runs :meth:`RawH2Client.handshake`: the client preface plus a SETTINGS frame,
  then wait until the server's SETTINGS has arrived (and been acknowledged) and ours has
  been acknowledged (RFC 9113 §3.4, §6.5.3).
* ``send_*`` build frames with ``hyperframe`` and header blocks with one ``hpack``
  encoder per connection, so the dynamic table carries across blocks like a real
  client's. :func:`raw_frame` builds what ``hyperframe`` refuses to (a PING on stream 1,
  a short RST_STREAM, duplicate settings) for the negative cases.
* ``expect_*`` read frames until a verdict or a deadline (``timeout``, default
  :data:`H2_TIMEOUT`) and raise ``AssertionError`` with everything received so far.
  They follow h2spec's verdicts, made strict about codes: a *connection error* is a
  GOAWAY with one of the expected codes, or the TCP connection closing (the server may
  close without a GOAWAY); a *stream error* is additionally allowed to be a RST_STREAM
  with one of the expected codes on that stream (RFC 9113 §5.4.2 lets any stream error
  be escalated). A GOAWAY or RST_STREAM with a *different* code fails at once.

Rules: no sleeps, every wait has a deadline; frames from the server are parsed with
``hyperframe`` and their header blocks decoded in order by one ``hpack`` decoder, so the
server's dynamic table is tracked correctly; a non-ACK SETTINGS from the server is
acknowledged at once, as RFC 9113 §6.5.3 requires of any client.
"""

from __future__ import annotations

import itertools
import os
import struct
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager
from enum import IntEnum

import anyio
import anyio.abc
from hpack import Decoder, Encoder
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

__all__ = [
    "ACK",
    "END_HEADERS",
    "END_STREAM",
    "H2_TIMEOUT",
    "PADDED",
    "PREFACE",
    "PRIORITY",
    "ErrorCode",
    "FrameType",
    "RawH2Client",
    "Setting",
    "connect",
    "raw_frame",
    "settings_payload",
]

#: RFC 9113 §3.4: the client connection preface.
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

#: How long an ``expect_*`` waits for its verdict. The server answers in milliseconds;
#: this only bounds how long a *failing* case takes. Override with the environment
#: variable ``H2_CONFORMANCE_TIMEOUT`` on a slow machine.
H2_TIMEOUT = float(os.environ.get("H2_CONFORMANCE_TIMEOUT", "1.5"))

#: Frame flags (RFC 9113 §6): the same bit means different things per frame type.
END_STREAM = 0x1
ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY = 0x20


class ErrorCode(IntEnum):
    """RFC 9113 §7 error codes."""

    NO_ERROR = 0x0
    PROTOCOL_ERROR = 0x1
    INTERNAL_ERROR = 0x2
    FLOW_CONTROL_ERROR = 0x3
    SETTINGS_TIMEOUT = 0x4
    STREAM_CLOSED = 0x5
    FRAME_SIZE_ERROR = 0x6
    REFUSED_STREAM = 0x7
    CANCEL = 0x8
    COMPRESSION_ERROR = 0x9
    CONNECT_ERROR = 0xA
    ENHANCE_YOUR_CALM = 0xB
    INADEQUATE_SECURITY = 0xC
    HTTP_1_1_REQUIRED = 0xD


class FrameType(IntEnum):
    """RFC 9113 §6 frame types."""

    DATA = 0x0
    HEADERS = 0x1
    PRIORITY = 0x2
    RST_STREAM = 0x3
    SETTINGS = 0x4
    PUSH_PROMISE = 0x5
    PING = 0x6
    GOAWAY = 0x7
    WINDOW_UPDATE = 0x8
    CONTINUATION = 0x9


class Setting(IntEnum):
    """RFC 9113 §6.5.2 setting identifiers."""

    HEADER_TABLE_SIZE = 0x1
    ENABLE_PUSH = 0x2
    MAX_CONCURRENT_STREAMS = 0x3
    INITIAL_WINDOW_SIZE = 0x4
    MAX_FRAME_SIZE = 0x5
    MAX_HEADER_LIST_SIZE = 0x6


def raw_frame(
    frame_type: int, flags: int, stream_id: int, payload: bytes = b"", *, length: int | None = None
) -> bytes:
    """A frame built by hand (RFC 9113 §4.1), for frames ``hyperframe`` will not build.

    ``stream_id`` is written as all 32 bits, so the reserved bit can be set;
    ``length`` overrides the length field (default: ``len(payload)``).
    """
    size = len(payload) if length is None else length
    return (
        struct.pack(">I", size)[1:]
        + bytes((frame_type, flags))
        + struct.pack(">I", stream_id)
        + payload
    )


def settings_payload(*pairs: tuple[int, int]) -> bytes:
    """A SETTINGS payload with ``(identifier, value)`` pairs in order, duplicates kept."""
    return b"".join(struct.pack(">HI", ident, value) for ident, value in pairs)


def _code_name(code: int) -> str:
    try:
        return ErrorCode(code).name
    except ValueError:
        return hex(code)


def _describe(frame: Frame) -> str:
    if isinstance(frame, GoAwayFrame):
        return f"GOAWAY(last_stream_id={frame.last_stream_id}, {_code_name(frame.error_code)})"
    if isinstance(frame, RstStreamFrame):
        return f"RST_STREAM(stream {frame.stream_id}, {_code_name(frame.error_code)})"
    if isinstance(frame, DataFrame):
        return (
            f"DATA(stream {frame.stream_id}, {len(frame.data)} bytes, flags={sorted(frame.flags)})"
        )
    text = repr(frame)
    return text if len(text) <= 160 else text[:157] + "..."


_ping_counter = itertools.count(1)

#: What a read or write on a connection the server has closed (or reset) raises.
_CLOSED_ERRORS = (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError)


class RawH2Client:
    """One HTTP/2 connection driven frame by frame; see the module docstring."""

    def __init__(self, stream: anyio.abc.ByteStream, port: int) -> None:
        self.stream = stream
        self.port = port
        self.encoder = Encoder()
        self.decoder = Decoder()
        #: Settings the server announced (RFC 9113 §6.5.2), latest value per identifier.
        self.server_settings: dict[int, int] = {}
        #: The first frame the server sent (RFC 9113 §3.4: must be a non-ACK SETTINGS).
        self.first_frame: Frame | None = None
        #: Decoded header blocks the server sent, per stream, in order.
        self.header_blocks: dict[int, list[list[tuple[bytes, bytes]]]] = {}
        self.closed = False
        self.timeout = H2_TIMEOUT
        self._buffer = bytearray()
        self._block: tuple[int, bytearray] | None = None
        self._log: list[str] = []

    # -- sending --------------------------------------------------------------------------

    async def send(self, data: bytes) -> None:
        """Write raw bytes; a write to a connection the server already closed is ignored
        (the read side reports the close, which is what the tests look at)."""
        try:
            await self.stream.send(data)
        except _CLOSED_ERRORS:
            pass

    async def send_frame(self, *frames: Frame) -> None:
        """Serialize and write ``frames`` in one write."""
        await self.send(b"".join(frame.serialize() for frame in frames))

    def request(
        self,
        method: str = "GET",
        path: str = "/",
        extra: Iterable[tuple[str, str]] = (),
    ) -> list[tuple[str, str]]:
        """A valid request header list (h2spec's ``CommonHeaders``) plus ``extra``."""
        return [
            (":method", method),
            (":scheme", "http"),
            (":path", path),
            (":authority", f"127.0.0.1:{self.port}"),
            *extra,
        ]

    def encode(self, headers: Iterable[tuple[str, str]]) -> bytes:
        """An HPACK block from the connection's encoder (its dynamic table carries on)."""
        return self.encoder.encode(list(headers))

    async def send_headers(
        self,
        stream_id: int,
        headers: Iterable[tuple[str, str]] | None = None,
        *,
        block: bytes | None = None,
        end_stream: bool = True,
        end_headers: bool = True,
        pad_length: int | None = None,
        priority: tuple[int, int, bool] | None = None,
    ) -> None:
        """HEADERS with ``headers`` (default: a GET for ``/``) or a ready ``block``.

        ``priority`` is ``(depends_on, weight_byte, exclusive)`` (RFC 9113 §6.2).
        """
        if block is None:
            block = self.encode(self.request() if headers is None else headers)
        flags = set()
        options: dict[str, object] = {}
        if end_stream:
            flags.add("END_STREAM")
        if end_headers:
            flags.add("END_HEADERS")
        if pad_length is not None:
            flags.add("PADDED")
            options["pad_length"] = pad_length
        if priority is not None:
            flags.add("PRIORITY")
            options.update(depends_on=priority[0], stream_weight=priority[1], exclusive=priority[2])
        await self.send_frame(HeadersFrame(stream_id, block, flags=flags, **options))

    async def send_continuation(
        self, stream_id: int, block: bytes, *, end_headers: bool = True
    ) -> None:
        """CONTINUATION carrying ``block`` (RFC 9113 §6.10); built by hand because
        ``hyperframe`` refuses stream 0, which a negative case needs."""
        flags = END_HEADERS if end_headers else 0
        await self.send(raw_frame(FrameType.CONTINUATION, flags, stream_id, block))

    async def send_data(
        self, stream_id: int, data: bytes, *, end_stream: bool = True, pad_length: int | None = None
    ) -> None:
        """DATA (RFC 9113 §6.1); stream 0 is allowed, for the negative cases."""
        flags = (END_STREAM if end_stream else 0) | (PADDED if pad_length is not None else 0)
        payload = data if pad_length is None else bytes((pad_length,)) + data + b"\0" * pad_length
        await self.send(raw_frame(FrameType.DATA, flags, stream_id, payload))

    async def send_priority(
        self, stream_id: int, *, depends_on: int = 0, weight: int = 255, exclusive: bool = False
    ) -> None:
        """PRIORITY (RFC 9113 §6.3; deprecated signal, still a frame to parse)."""
        payload = struct.pack(">IB", depends_on | (0x80000000 if exclusive else 0), weight)
        await self.send(raw_frame(FrameType.PRIORITY, 0, stream_id, payload))

    async def send_rst_stream(self, stream_id: int, code: int) -> None:
        """RST_STREAM with ``code`` (RFC 9113 §6.4); stream 0 allowed."""
        await self.send(raw_frame(FrameType.RST_STREAM, 0, stream_id, struct.pack(">I", code)))

    async def send_settings(self, *pairs: tuple[int, int], ack: bool = False) -> None:
        """SETTINGS with ``pairs`` in order (duplicates kept), or an empty ACK."""
        await self.send(
            raw_frame(FrameType.SETTINGS, ACK if ack else 0, 0, settings_payload(*pairs))
        )

    async def send_ping(self, data: bytes = b"\0" * 8, *, ack: bool = False) -> None:
        """PING with an 8-byte payload (RFC 9113 §6.7)."""
        await self.send_frame(PingFrame(0, data, flags={"ACK"} if ack else set()))

    async def send_goaway(self, last_stream_id: int = 0, code: int = 0, debug: bytes = b"") -> None:
        """GOAWAY (RFC 9113 §6.8)."""
        await self.send_frame(
            GoAwayFrame(0, last_stream_id=last_stream_id, error_code=code, additional_data=debug)
        )

    async def send_window_update(self, stream_id: int, increment: int) -> None:
        """WINDOW_UPDATE (RFC 9113 §6.9); an increment of 0 is allowed, for the negative cases."""
        await self.send_frame(WindowUpdateFrame(stream_id, window_increment=increment))

    # -- the handshake --------------------------------------------------------------------

    async def handshake(self, *pairs: tuple[int, int]) -> None:
        """Preface + SETTINGS (default: INITIAL_WINDOW_SIZE 65535, as h2spec sends), then
        wait for the server's SETTINGS and for the ACK of ours."""
        settings = pairs or ((Setting.INITIAL_WINDOW_SIZE, 65_535),)
        await self.send(PREFACE + raw_frame(FrameType.SETTINGS, 0, 0, settings_payload(*settings)))
        got_settings = got_ack = False
        with self._within("the server's SETTINGS and the ACK of ours", None):
            while not (got_settings and got_ack):
                frame = await self.read_frame()
                if frame is None:
                    raise AssertionError(f"connection closed during the handshake; {self.log()}")
                if isinstance(frame, SettingsFrame):
                    if "ACK" in frame.flags:
                        got_ack = True
                    else:
                        got_settings = True

    # -- reading --------------------------------------------------------------------------

    def log(self) -> str:
        """Everything received so far, for assertion messages."""
        return "received: " + (", ".join(self._log) or "nothing")

    async def read_frame(self) -> Frame | None:
        """The next frame from the server, or ``None`` once it closed the connection.

        Waits without a deadline; callers bound it (see :meth:`_within`).
        """
        while True:
            frame = self._parse_one()
            if frame is not None:
                if isinstance(frame, SettingsFrame) and "ACK" not in frame.flags:
                    await self.send_settings(ack=True)  # RFC 9113 §6.5.3
                return frame
            if self.closed:
                return None
            try:
                chunk = await self.stream.receive(65536)
            except _CLOSED_ERRORS:
                chunk = b""
            if not chunk:
                self.closed = True
                self._log.append("<connection closed>")
            else:
                self._buffer += chunk

    def _parse_one(self) -> Frame | None:
        buffer = self._buffer
        if len(buffer) < 9:
            return None
        frame, length = Frame.parse_frame_header(memoryview(bytes(buffer[:9])))
        if len(buffer) < 9 + length:
            return None
        body = bytes(buffer[9 : 9 + length])
        del buffer[: 9 + length]
        frame.parse_body(memoryview(body))
        self._track(frame)
        return frame

    def _track(self, frame: Frame) -> None:
        self._log.append(_describe(frame))
        if self.first_frame is None:
            self.first_frame = frame
        if isinstance(frame, SettingsFrame) and "ACK" not in frame.flags:
            self.server_settings.update(frame.settings)
        elif isinstance(frame, HeadersFrame):
            self._block = (frame.stream_id, bytearray(frame.data))
        elif isinstance(frame, ContinuationFrame) and self._block is not None:
            self._block[1].extend(frame.data)
        else:
            return
        if "END_HEADERS" in frame.flags and self._block is not None:
            stream_id, block = self._block
            self._block = None
            decoded = [(bytes(n), bytes(v)) for n, v in self.decoder.decode(bytes(block), raw=True)]
            self.header_blocks.setdefault(stream_id, []).append(decoded)

    @contextmanager
    def _within(self, what: str, timeout: float | None) -> Iterator[None]:
        """Bound a wait; on timeout, fail with ``what`` and everything received."""
        limit = self.timeout if timeout is None else timeout
        with anyio.move_on_after(limit) as scope:
            yield
        if scope.cancelled_caught:
            raise AssertionError(f"no {what} within {limit:g} s; {self.log()}")

    async def expect(
        self,
        what: str,
        match: Callable[[Frame], bool],
        *,
        fail: Callable[[Frame], bool] | None = None,
        timeout: float | None = None,
    ) -> Frame:
        """Read until a frame for which ``match`` is true and return it.

        Fails if the connection closes first, if ``fail`` is true for a frame on the way,
        or on timeout.
        """
        with self._within(what, timeout):
            while True:
                frame = await self.read_frame()
                if frame is None:
                    raise AssertionError(f"connection closed before {what}; {self.log()}")
                if match(frame):
                    return frame
                if fail is not None and fail(frame):
                    raise AssertionError(f"expected {what}, got {_describe(frame)}; {self.log()}")
        raise AssertionError("unreachable")  # pragma: no cover

    async def expect_goaway(self, *codes: int, timeout: float | None = None) -> GoAwayFrame:
        """A GOAWAY whose code is one of ``codes`` (other frames are skipped)."""
        names = "/".join(_code_name(c) for c in codes)
        frame = await self.expect(
            f"GOAWAY({names})",
            lambda f: isinstance(f, GoAwayFrame) and f.error_code in codes,
            fail=lambda f: isinstance(f, GoAwayFrame),
            timeout=timeout,
        )
        assert isinstance(frame, GoAwayFrame)
        return frame

    async def expect_rst_stream(
        self, stream_id: int, *codes: int, timeout: float | None = None
    ) -> RstStreamFrame:
        """A RST_STREAM on ``stream_id`` whose code is one of ``codes``; a GOAWAY, or a
        RST_STREAM on that stream with another code, fails."""
        names = "/".join(_code_name(c) for c in codes)
        frame = await self.expect(
            f"RST_STREAM(stream {stream_id}, {names})",
            lambda f: (
                isinstance(f, RstStreamFrame) and f.stream_id == stream_id and f.error_code in codes
            ),
            fail=lambda f: (
                isinstance(f, GoAwayFrame)
                or (isinstance(f, RstStreamFrame) and f.stream_id == stream_id)
            ),
            timeout=timeout,
        )
        assert isinstance(frame, RstStreamFrame)
        return frame

    async def expect_connection_error(self, *codes: int, timeout: float | None = None) -> None:
        """RFC 9113 §5.4.1: a GOAWAY with one of ``codes``, or the connection closing.

        Frames before it are skipped; a GOAWAY with another code fails.
        """
        names = "/".join(_code_name(c) for c in codes)
        with self._within(f"connection error (GOAWAY {names} or close)", timeout):
            while True:
                frame = await self.read_frame()
                if frame is None:
                    return
                if isinstance(frame, GoAwayFrame):
                    assert frame.error_code in codes, (
                        f"expected a connection error {names}, got {_describe(frame)}; {self.log()}"
                    )
                    return

    async def expect_stream_error(
        self, stream_id: int, *codes: int, timeout: float | None = None
    ) -> None:
        """RFC 9113 §5.4.2: a RST_STREAM on ``stream_id`` with one of ``codes``; a
        connection error with one of ``codes`` (GOAWAY or close) is accepted too.

        Frames before it are skipped; a RST_STREAM on that stream or a GOAWAY with
        another code fails.
        """
        names = "/".join(_code_name(c) for c in codes)
        with self._within(f"stream error on stream {stream_id} ({names})", timeout):
            while True:
                frame = await self.read_frame()
                if frame is None:
                    return
                if isinstance(frame, GoAwayFrame) or (
                    isinstance(frame, RstStreamFrame) and frame.stream_id == stream_id
                ):
                    assert frame.error_code in codes, (
                        f"expected a stream error {names} on stream {stream_id}, "
                        f"got {_describe(frame)}; {self.log()}"
                    )
                    return

    async def expect_connection_closed(self, timeout: float | None = None) -> None:
        """The server closes the TCP connection (frames before it are skipped)."""
        with self._within("connection close", timeout):
            while await self.read_frame() is not None:
                pass

    async def expect_raw_close(self, timeout: float | None = None) -> bytes:
        """The server closes the connection; returns the bytes it sent first, unparsed
        (before a preface has been accepted they need not be HTTP/2 frames)."""
        data = bytes(self._buffer)
        self._buffer.clear()
        with self._within("connection close", timeout):
            while True:
                try:
                    chunk = await self.stream.receive(65536)
                except _CLOSED_ERRORS:
                    chunk = b""
                if not chunk:
                    self.closed = True
                    return data
                data += chunk
        raise AssertionError("unreachable")  # pragma: no cover

    async def expect_headers(self, stream_id: int, timeout: float | None = None) -> HeadersFrame:
        """A HEADERS frame on ``stream_id`` (the response); a RST_STREAM on that stream or
        a GOAWAY with an error code fails."""
        frame = await self.expect(
            f"HEADERS on stream {stream_id}",
            lambda f: isinstance(f, HeadersFrame) and f.stream_id == stream_id,
            fail=lambda f: (
                (isinstance(f, RstStreamFrame) and f.stream_id == stream_id)
                or (isinstance(f, GoAwayFrame) and f.error_code != ErrorCode.NO_ERROR)
            ),
            timeout=timeout,
        )
        assert isinstance(frame, HeadersFrame)
        return frame

    async def expect_response(self, stream_id: int, timeout: float | None = None) -> int:
        """A response on ``stream_id``; returns its ``:status``."""
        await self.expect_headers(stream_id, timeout)
        # The block may end in CONTINUATION frames; read on until it is decoded.
        with self._within(f"the end of the header block on stream {stream_id}", timeout):
            while not self.header_blocks.get(stream_id):
                if await self.read_frame() is None:
                    raise AssertionError(f"connection closed mid header block; {self.log()}")
        fields = dict(self.header_blocks[stream_id][0])
        return int(fields[b":status"])

    async def expect_stream_end(self, stream_id: int, timeout: float | None = None) -> Frame:
        """DATA or HEADERS with END_STREAM on ``stream_id`` (h2spec's VerifyStreamClose)."""
        return await self.expect(
            f"END_STREAM on stream {stream_id}",
            lambda f: (
                isinstance(f, DataFrame | HeadersFrame)
                and f.stream_id == stream_id
                and "END_STREAM" in f.flags
            ),
            fail=lambda f: (
                (isinstance(f, RstStreamFrame) and f.stream_id == stream_id)
                or isinstance(f, GoAwayFrame)
            ),
            timeout=timeout,
        )

    async def expect_data(self, stream_id: int, timeout: float | None = None) -> DataFrame:
        """The next DATA frame on ``stream_id``."""
        frame = await self.expect(
            f"DATA on stream {stream_id}",
            lambda f: isinstance(f, DataFrame) and f.stream_id == stream_id,
            fail=lambda f: (
                (isinstance(f, RstStreamFrame) and f.stream_id == stream_id)
                or isinstance(f, GoAwayFrame)
            ),
            timeout=timeout,
        )
        assert isinstance(frame, DataFrame)
        return frame

    async def expect_settings_ack(self, timeout: float | None = None) -> None:
        """A SETTINGS frame with ACK (RFC 9113 §6.5.3)."""
        await self.expect(
            "SETTINGS with ACK",
            lambda f: isinstance(f, SettingsFrame) and "ACK" in f.flags,
            fail=lambda f: isinstance(f, GoAwayFrame),
            timeout=timeout,
        )

    async def expect_ping_ack(self, data: bytes, timeout: float | None = None) -> list[Frame]:
        """A PING ACK echoing ``data`` (RFC 9113 §6.7); returns the frames before it."""
        before: list[Frame] = []

        def match(frame: Frame) -> bool:
            if isinstance(frame, PingFrame) and "ACK" in frame.flags and frame.opaque_data == data:
                return True
            before.append(frame)
            return False

        await self.expect(
            f"PING ACK {data!r}",
            match,
            fail=lambda f: isinstance(f, GoAwayFrame),
            timeout=timeout,
        )
        return before

    async def round_trip(self, timeout: float | None = None) -> list[Frame]:
        """Send a PING with a fresh payload and wait for its ACK: proof the connection is
        alive and everything the server had to say about earlier frames has arrived (it
        answers in order). Returns the frames received before the ACK."""
        data = struct.pack(">Q", next(_ping_counter) | 0x5A5A000000000000)
        await self.send_ping(data)
        return await self.expect_ping_ack(data, timeout)


@asynccontextmanager
async def connect(port: int, *, handshake: bool = True) -> AsyncIterator[RawH2Client]:
    """A :class:`RawH2Client` on ``127.0.0.1:port``, handshaken unless told otherwise."""
    stream = await anyio.connect_tcp("127.0.0.1", port)
    async with stream:
        client = RawH2Client(stream, port)
        if handshake:
            await client.handshake()
        yield client
