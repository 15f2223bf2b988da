"""HTTP/2 server protocol: h2 events in, neutral stream events out, and back.

:class:`H2Protocol` implements :class:`quicserve.protocol.base.ByteStreamProtocol` on top of
the sans-IO ``h2`` package. The driver feeds bytes with ``receive_data(data, now)``, drains
``next_event()``, writes ``data_to_send()`` and calls ``handle_timer(now)`` when
``get_timer()`` has passed.

Rules of this module:

* Sans-IO and synchronous: no sockets, no ``await``, no clock. Time arrives as ``now``.
* No exception caused by the peer escapes. A connection error queues a GOAWAY with the
  right code, resets every open stream (:class:`StreamReset`) and ends with
  :class:`ConnectionClosed`; the driver flushes ``data_to_send()`` and closes.
* Malformed requests are *stream* errors (RFC 9113 §8.1.1): RST_STREAM PROTOCOL_ERROR on
  that stream, the connection carries on. h2's own inbound header validation turns them
  into connection errors, so it is switched off and ``fields.parse_request_fields`` (shared
  with HTTP/3) does the same checks (RFC 9113 §8.2, §8.3) in one pass.
* ``send_*`` never refuse: what flow control does not let out is kept per stream and sent,
  round-robin between streams, as WINDOW_UPDATE and SETTINGS frames open the windows.
* Request bodies re-open the receive windows only when the app acknowledges them with
  ``ack_body``; bytes the app will never see (padding, reset streams) are credited back to
  the connection window at once, so it never leaks.
* What flow control lets out is framed at once; ``pending()`` says how many framed bytes
  wait for ``data_to_send``, so the driver can hold the app back when the peer does not
  read (flow control alone does not: a peer may open its windows wide and never read).
* Every method is a silent no-op on a stream the peer reset or the stream type finished.
* A stream reset by either side, for any reason, counts against
  ``h2_max_concurrent_streams`` until the stream type is done with it (its app call has
  ended): "rapid reset" (CVE-2023-44487) and "MadeYouReset" (CVE-2025-8671). A client
  that keeps getting streams refused, or keeps provoking stream errors (more than
  ``h2_max_stream_errors``), gets GOAWAY ENHANCE_YOUR_CALM.
* Every use of private h2, hyperframe and hpack members lives in :class:`_H2Connection`
  and the helpers it installs (:class:`_FrameBuffer`, the ``_Received*Frame`` types,
  :class:`_CountingTable` and the caching HPACK coder), so an upgrade of those packages
  has one corner of this module to re-check.
* The hot path skips h2's generic layers, never its rules: response HEADERS and DATA are
  framed here with the same stream and connection state changes and flow-control
  accounting h2 makes (``send_head``, ``send_data_frame``); received HEADERS and DATA are
  read with the same checks and errors as h2's reader. A request's HEADERS frame on a
  new stream and a WINDOW_UPDATE (``_receive_request``, ``_receive_window_update``) are
  taken without frame objects or h2's dispatch, with the state, events and errors h2
  would give them; they decline every frame h2 would refuse before decoding, and the
  differential fuzz target (tests/fuzz) holds them to h2's answers frame for frame. An
  HPACK block is reused only while the table it was coded against is unchanged (RFC 7541
  §2.3.2); a request's checked and split fields only for an identical field list, and
  the app always gets its own header list.
"""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import replace
from typing import TYPE_CHECKING, cast

from h2.config import H2Configuration
from h2.connection import ConnectionInputs, ConnectionState, H2Connection, _decode_headers
from h2.errors import ErrorCodes
from h2.events import ConnectionTerminated as H2ConnectionTerminated
from h2.events import DataReceived as H2DataReceived
from h2.events import Event as H2Event
from h2.events import PingReceived as H2PingReceived
from h2.events import PriorityUpdated as H2PriorityUpdated
from h2.events import RemoteSettingsChanged as H2RemoteSettingsChanged
from h2.events import RequestReceived as H2RequestReceived
from h2.events import StreamEnded as H2StreamEnded
from h2.events import StreamReset as H2StreamReset
from h2.events import TrailersReceived as H2TrailersReceived
from h2.events import UnknownFrameReceived as H2UnknownFrameReceived
from h2.events import WindowUpdated as H2WindowUpdated
from h2.exceptions import (
    DenialOfServiceError,
    FlowControlError,
    FrameDataMissingError,
    FrameTooLargeError,
    H2Error,
    InvalidBodyLengthError,
    ProtocolError,
)
from h2.frame_buffer import FrameBuffer
from h2.settings import ChangedSetting, SettingCodes, Settings
from h2.stream import STREAM_OPEN as _STREAM_OPEN
from h2.stream import (
    H2Stream,
    H2StreamStateMachine,
    StreamClosedBy,
    StreamInputs,
    StreamState,
)
from hpack import Decoder, Encoder, HeaderTuple
from hpack.exceptions import HPACKError
from hpack.struct import Header
from hpack.table import HeaderTable
from hyperframe.exceptions import (
    HyperframeError,
    InvalidDataError,
    InvalidFrameError,
    InvalidPaddingError,
)
from hyperframe.flags import Flags
from hyperframe.frame import ContinuationFrame, DataFrame, Frame, GoAwayFrame, HeadersFrame

if TYPE_CHECKING:
    from h2._typing import Buffer

from ..config import Config
from ..events import (
    BodyEnded,
    BodyReceived,
    ConnectionClosed,
    Headers,
    RequestReceived,
    StreamEvent,
    StreamReset,
    StreamWritable,
)
from .fields import (
    DROPPED_RESPONSE_FIELDS,
    Malformed,
    decode_token,
    field_section_size,
    parse_request_fields,
    parse_trailers,
)

__all__ = ["H2Protocol"]

#: RFC 9113 §6.9.2: the initial window of the connection and of every stream.
_DEFAULT_WINDOW = 65_535


_STATUS_BYTES = {code: b"%d" % code for code in range(100, 600)}

#: Control frames a client may send per stream it opens, on top of --h2-max-control-frames
#: (a browser sends a few PRIORITY and WINDOW_UPDATE frames per stream).
_CONTROL_FRAMES_PER_STREAM = 100
#: What h2 is given to parse at a time, so a flood is cut off after one slice, not after a
#: whole 64 KiB read (a slice of PING frames is about 1,200 of them).
_RECEIVE_SLICE = 16 * 1024

#: The smallest share of the connection window a stream gets per round-robin turn, so
#: that a small WINDOW_UPDATE shared by many streams does not shatter into tiny frames.
_MIN_QUANTUM = 1024

#: A GOAWAY frame header: length 8, type 0x7, no flags, stream 0 (RFC 9113 §6.8).
_GOAWAY_HEADER = b"\x00\x00\x08\x07\x00\x00\x00\x00\x00"
_GOAWAY_BODY = struct.Struct(">II")


#: h2's messages for header blocks that make one request malformed (RFC 9113 §8.1.1) but
#: that it raises as connection errors; see _H2Connection._receive_headers_frame.
_MALFORMED_MESSAGES = (
    "Invalid content-length header",
    "Conflicting content-length headers",
    "Trailers must have END_STREAM set",
)


class _CompressionError(ProtocolError):
    """A header block that does not decode: RFC 9113 §4.3 wants COMPRESSION_ERROR."""

    error_code = ErrorCodes.COMPRESSION_ERROR


def _compression_error(exc: ProtocolError) -> ProtocolError:
    """h2 reports an undecodable header block as PROTOCOL_ERROR; RFC 9113 §4.3 says
    COMPRESSION_ERROR. (An oversized list stays a DoS error.) ``exc`` itself otherwise."""
    if not isinstance(exc, DenialOfServiceError) and isinstance(
        exc.__cause__, HPACKError | IndexError | TypeError | UnicodeDecodeError
    ):
        return _CompressionError(str(exc))
    return exc


def _is_malformed(exc: ProtocolError) -> bool:
    """Whether h2 raised ``exc`` for a header block that makes one request malformed."""
    return type(exc) is ProtocolError and str(exc).startswith(_MALFORMED_MESSAGES)


def _new_flags(valid: set[str]) -> Flags:
    """An empty hyperframe ``Flags`` for a frame type whose flag names are ``valid``,
    without rebuilding that set for every frame (``Flags`` only ever reads it)."""
    flags: Flags = Flags.__new__(Flags)
    flags._valid_flags = valid
    flags._flags = set()
    return flags


_HEADERS_FLAGS = {flag.name for flag in HeadersFrame.defined_flags}
_DATA_FLAGS = {flag.name for flag in DataFrame.defined_flags}


def _flag_sets(frame_type: type[Frame]) -> tuple[frozenset[str], ...]:
    """For each flags octet, the names hyperframe's ``parse_flags`` would set (unknown
    bits are ignored, RFC 9113 §4.1)."""
    return tuple(
        frozenset(flag.name for flag in frame_type.defined_flags if octet & flag.bit)
        for octet in range(256)
    )


class _ReceivedHeadersFrame(HeadersFrame):
    """A received HEADERS frame: hyperframe's own type, made without its generic
    constructor chain, and with a repr that costs nothing (h2 formats every received
    frame for its trace log, which is off). Only ever made for a non-zero stream id."""

    flag_sets = _flag_sets(HeadersFrame)

    def __init__(self, stream_id: int) -> None:
        self.stream_id = stream_id
        self.flags = _new_flags(_HEADERS_FLAGS)
        self.body_len = 0
        self.pad_length = 0
        self.depends_on = 0
        self.stream_weight = 0
        self.exclusive = False
        self.data = b""

    def __repr__(self) -> str:
        return f"<HEADERS on stream {self.stream_id}>"


class _ReceivedDataFrame(DataFrame):
    """A received DATA frame, made as cheaply as :class:`_ReceivedHeadersFrame`."""

    flag_sets = _flag_sets(DataFrame)

    def __init__(self, stream_id: int) -> None:
        self.stream_id = stream_id
        self.flags = _new_flags(_DATA_FLAGS)
        self.body_len = 0
        self.pad_length = 0
        self.data = b""

    def __repr__(self) -> str:
        return f"<DATA on stream {self.stream_id}>"


#: Frame types read by the fast path of _FrameBuffer.__next__ (the busy ones).
_FAST_FRAMES: dict[int, type[_ReceivedHeadersFrame] | type[_ReceivedDataFrame]] = {
    0x0: _ReceivedDataFrame,
    0x1: _ReceivedHeadersFrame,
}


class _FrameBuffer(FrameBuffer):
    """h2's frame reader, with the one frame-size rule it reports as PROTOCOL_ERROR, a
    bound on the encoded size of a header block (HEADERS + CONTINUATION), and a fast
    path for HEADERS and DATA frames (the same checks and errors as h2's reader)."""

    #: Encoded header-block octets refused as ENHANCE_YOUR_CALM (set by H2Protocol).
    max_header_block = 1 << 62
    _block_size = 0

    def __next__(self) -> Frame:
        data = self._data
        if len(data) < 9:
            raise StopIteration
        # RFC 9113 §4.2: refuse an oversized frame at its header, before buffering
        # up to 16 MiB of body that h2 would only then check.
        length = int.from_bytes(data[0:3], "big")
        if length > self.max_frame_size:
            raise FrameTooLargeError("frame larger than SETTINGS_MAX_FRAME_SIZE")
        kind = data[3]
        # RFC 9113 §6.5: a SETTINGS frame with ACK set and a payload is a connection
        # error of type FRAME_SIZE_ERROR (h2 would say PROTOCOL_ERROR).
        if kind == 0x4 and data[4] & 0x1 and length:
            raise FrameDataMissingError("SETTINGS with ACK must have no payload")
        make = _FAST_FRAMES.get(kind)
        stream_id = int.from_bytes(data[5:9], "big") & 0x7FFFFFFF
        if make is None or not stream_id:
            return super().__next__()  # h2 raises for stream 0 as it should
        if len(data) < length + 9:
            raise StopIteration
        frame = make(stream_id)
        frame.flags._flags = set(make.flag_sets[data[4]])
        try:
            frame.parse_body(memoryview(data[9 : 9 + length]))
        except InvalidDataError as err:
            raise ProtocolError("Received frame with non-compliant data") from err
        except InvalidFrameError as err:
            raise FrameDataMissingError("Frame data missing or invalid") from err
        del data[: 9 + length]
        new_frame = self._update_header_buffer(frame)
        return new_frame if new_frame is not None else self.__next__()

    def _update_header_buffer(self, f: Frame | None) -> Frame | None:
        if isinstance(f, HeadersFrame | ContinuationFrame):
            # A header block is buffered whole before HPACK decodes it, and decoding costs
            # per encoded octet (Huffman in Python): refuse one that no peer honouring
            # our SETTINGS_MAX_HEADER_LIST_SIZE would send. Encoded field lines are never
            # longer than their decoded size (32 octets a line), RFC 9113 §10.5.1.
            self._block_size += len(f.data)
            if self._block_size > self.max_header_block:
                raise DenialOfServiceError("header block far above SETTINGS_MAX_HEADER_LIST_SIZE")
            if "END_HEADERS" in f.flags:
                self._block_size = 0
        return super()._update_header_buffer(f)


#: A frame header (RFC 9113 §4.1) packed as (length << 8 | type, flags, stream id).
_FRAME_HEADER = struct.Struct(">IBI")
_DATA, _HEADERS, _CONTINUATION = 0x0, 0x1, 0x9
_END_STREAM, _END_HEADERS = 0x1, 0x4
_INITIAL_WINDOW_SIZE = SettingCodes.INITIAL_WINDOW_SIZE
_WINDOW_UPDATE = 0x8
#: RFC 9113 §6.9.1: the largest flow-control window (and WINDOW_UPDATE increment).
_MAX_WINDOW = 2**31 - 1
#: HEADERS flags the request fast path looks at: END_HEADERS, PADDED, PRIORITY.
_FAST_HEADERS_MASK = 0x4 | 0x8 | 0x20
#: Header blocks remembered per connection and direction (see _CountingTable).
_HPACK_CACHE_SIZE = 64


class _CountingTable(HeaderTable):
    """An HPACK dynamic table that counts its changes, so that a header block coded while
    the count stood still can be reused as long as it still stands (RFC 7541 §2.3.2: only
    insertions, evictions and size changes alter what a block means)."""

    generation = 0

    def add(self, name: bytes, value: bytes) -> None:
        self.generation += 1
        super().add(name, value)

    @property
    def maxsize(self) -> int:
        return self._maxsize

    @maxsize.setter
    def maxsize(self, newmax: int) -> None:
        self.generation += 1
        HeaderTable.maxsize.fset(self, newmax)  # type: ignore[attr-defined]


class _CachingEncoder(Encoder):
    """hpack's encoder, remembering the block it made for a header list that changed
    nothing in the table: a repeated response head (all fields indexed once they are in
    the dynamic table) is then one dict lookup instead of a table search per field."""

    def __init__(self) -> None:
        super().__init__()
        self.header_table = _CountingTable()
        self._cache: dict[tuple[tuple[bytes, bytes], ...], tuple[int, bytes]] = {}

    def encode_block(self, headers: list[tuple[bytes, bytes]]) -> bytes:
        table = self.header_table
        assert isinstance(table, _CountingTable)
        key = tuple(headers)
        try:
            hit = self._cache.get(key)
        except TypeError:  # an unhashable name or value (bytearray): code it plainly
            return self.encode(headers)
        if hit is not None and hit[0] == table.generation and not table.resized:
            return hit[1]
        generation = table.generation
        resized = table.resized
        encoded: bytes = self.encode(headers)
        if table.generation == generation and not resized:
            cache = self._cache
            if len(cache) >= _HPACK_CACHE_SIZE:
                cache.clear()
            cache[key] = (generation, encoded)
        return encoded


class _CachingDecoder(Decoder):
    """hpack's decoder, remembering what a block that changed nothing in the table decoded
    to: a client repeating a request sends the same all-indexed block each time."""

    def __init__(self) -> None:
        super().__init__()
        self.header_table = _CountingTable()
        self._cache: dict[bytes, tuple[int, int, list[HeaderTuple]]] = {}

    def decode(self, data: bytes, raw: bool = False) -> list[HeaderTuple]:
        table = self.header_table
        assert isinstance(table, _CountingTable)
        limit = self.max_header_list_size
        hit = self._cache.get(data) if raw else None
        if hit is not None and hit[0] == table.generation and hit[1] == limit:
            return list(hit[2])
        generation = table.generation
        headers = list(super().decode(data, raw))
        if raw and table.generation == generation:
            cache = self._cache
            if len(cache) >= _HPACK_CACHE_SIZE:
                cache.clear()
            cache[bytes(data)] = (generation, limit, list(headers))
        return headers


#: Stream states in which h2's SEND_DATA and SEND_HEADERS keep the state (RFC 9113 §5.1:
#: the sending side of the stream is open), indexed by state.
_CAN_SEND = [False] * len(StreamState)
_CAN_SEND[StreamState.OPEN] = _CAN_SEND[StreamState.HALF_CLOSED_REMOTE] = True


def _send_headers(machine: H2StreamStateMachine) -> None:
    """h2's SEND_HEADERS input: a server's first head on an open or half-closed (remote)
    stream only marks the head sent (h2's response_sent); anything else (trailers, a
    stream that cannot send) goes through h2's state machine."""
    if _CAN_SEND[machine.state] and machine.client is False and not machine.headers_sent:
        machine.headers_sent = True
    else:
        machine.process_input(StreamInputs.SEND_HEADERS)


def _send_end_stream(machine: H2StreamStateMachine) -> None:
    """h2's SEND_END_STREAM input: open -> half-closed (local), half-closed (remote) ->
    closed (closed by SEND_END_STREAM), set directly in those two states (RFC 9113 §5.1);
    in any other, h2's state machine decides (and refuses)."""
    state = machine.state
    if state is StreamState.HALF_CLOSED_REMOTE:
        machine.state = StreamState.CLOSED
        machine.stream_closed_by = StreamClosedBy.SEND_END_STREAM
    elif state is StreamState.OPEN:
        machine.state = StreamState.HALF_CLOSED_LOCAL
    else:
        machine.process_input(StreamInputs.SEND_END_STREAM)


class _FastRequest(H2Event):
    """What ``_H2Connection._receive_request`` reports for a request's HEADERS frame in
    place of h2's RequestReceived (and StreamEnded when ``stream_ended``): the same
    facts in one object instead of two dataclass events."""

    __slots__ = ("headers", "stream_ended", "stream_id")

    def __init__(self, stream_id: int, headers: list[Header], stream_ended: bool) -> None:
        self.stream_id = stream_id
        self.headers = headers
        self.stream_ended = stream_ended


class _H2Connection(H2Connection):
    """h2's connection with four behaviours brought in line with RFC 9113, and the size
    of its outgoing buffer (``pending_output``), which h2 does not expose.

    They use private h2 members; they are kept here so that an h2 upgrade only has this
    class (and _FrameBuffer) to re-check.
    """

    def __init__(self, config: H2Configuration) -> None:
        super().__init__(config)
        buffer = _FrameBuffer(server=True)
        buffer.max_frame_size = self.incoming_buffer.max_frame_size
        self.incoming_buffer = buffer
        # The fast reader's frame types are dispatched as their hyperframe bases.
        table = self._frame_dispatch_table
        table[_ReceivedHeadersFrame] = table[HeadersFrame]
        table[_ReceivedDataFrame] = table[DataFrame]
        # Same fresh HPACK contexts, with block caches (nothing was coded yet).
        self.encoder = _CachingEncoder()
        decoder = _CachingDecoder()
        decoder.max_header_list_size = self.decoder.max_header_list_size
        decoder.max_allowed_table_size = self.decoder.max_allowed_table_size
        self.decoder = decoder
        #: What HPACK may decode of one header block before the connection fails (set by
        #: H2Protocol); blocks between SETTINGS_MAX_HEADER_LIST_SIZE and this get 431.
        self.max_decoded_block = self.decoder.max_header_list_size
        #: Whether ``receive_data`` takes requests' HEADERS frames and WINDOW_UPDATEs
        #: the short way: only when h2 would hand a decoded header list over untouched
        #: (no inbound header validation, normalisation or decoding), as H2Protocol
        #: configures it. (Off, h2 reads every frame: the differential fuzz target.)
        self.fast_frames = not (
            config.validate_inbound_headers
            or config.normalize_inbound_headers
            or config.header_encoding
        )

    def _local_settings_acked(self) -> dict[SettingCodes | int, ChangedSetting]:
        changes = super()._local_settings_acked()
        # h2 sets the HPACK bound to our SETTINGS_MAX_HEADER_LIST_SIZE on ACK; a block
        # just over it is decoded and answered with 431 instead (H2Protocol).
        self.decoder.max_header_list_size = self.max_decoded_block
        return changes

    def pending_output(self) -> int:
        """Bytes h2 has framed that ``data_to_send`` has not handed out yet."""
        return len(self._data_to_send)

    def send_head(
        self, stream_id: int, block: list[tuple[bytes, bytes]], end_stream: bool, final: bool
    ) -> None:
        """``send_headers`` for a response head (``final``) or a 1xx one: the same stream
        and connection state changes, HPACK coding and HEADERS/CONTINUATION frames
        (RFC 9113 §6.2, §6.10) as h2 makes, without its generic header handling (the
        block is bytes, lower-case, connection-specific fields dropped) or hyperframe
        objects. Raises ProtocolError as h2 does on a stream that cannot send."""
        if end_stream and not final:
            raise ProtocolError("Cannot set END_STREAM on informational responses.")
        stream = self._get_stream_by_id(stream_id)
        if self.state_machine.state is not ConnectionState.SERVER_OPEN:
            # SERVER_OPEN stays SERVER_OPEN on SEND_HEADERS; any other state decides.
            self.state_machine.process_input(ConnectionInputs.SEND_HEADERS)
        machine = stream.state_machine
        if final:
            _send_headers(machine)
        else:
            machine.process_input(StreamInputs.SEND_INFORMATIONAL_HEADERS)
        encoder = self.encoder
        assert isinstance(encoder, _CachingEncoder)
        encoded = encoder.encode_block(block)
        flags = _END_HEADERS
        if end_stream:
            _send_end_stream(machine)
            flags |= _END_STREAM
        out = self._data_to_send
        size = len(encoded)
        limit = self.max_outbound_frame_size
        if size <= limit:
            out += _FRAME_HEADER.pack(size << 8 | _HEADERS, flags, stream_id)
            out += encoded
            return
        # END_STREAM stays on the HEADERS frame; END_HEADERS moves to the last fragment.
        out += _FRAME_HEADER.pack(limit << 8 | _HEADERS, flags & _END_STREAM, stream_id)
        out += encoded[:limit]
        for start in range(limit, size, limit):
            piece = encoded[start : start + limit]
            last = start + limit >= size
            head = len(piece) << 8 | _CONTINUATION
            out += _FRAME_HEADER.pack(head, _END_HEADERS if last else 0, stream_id)
            out += piece

    def fits(self, stream_id: int, size: int) -> bool:
        """Whether a ``size``-byte DATA frame on ``stream_id`` fits the frame size and both
        flow-control windows now (False for a stream that can no longer send)."""
        stream = self.streams.get(stream_id)
        return (
            stream is not None
            and size <= self.max_outbound_frame_size
            and size <= stream.outbound_flow_control_window
            and size <= self.outbound_flow_control_window
        )

    def send_data_frame(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        """``send_data`` without padding: the same flow-control and state changes and the
        same DATA frame (RFC 9113 §6.1), without hyperframe objects. Raises ProtocolError
        (FlowControlError, FrameTooLargeError, StreamClosedError) as h2 does."""
        stream = self._get_stream_by_id(stream_id)
        size = len(data)
        if size > stream.outbound_flow_control_window or size > self.outbound_flow_control_window:
            raise FlowControlError(f"cannot send {size} bytes: flow control window")
        if size > self.max_outbound_frame_size:
            raise FrameTooLargeError(f"cannot send a {size}-byte frame")
        if self.state_machine.state is not ConnectionState.SERVER_OPEN:
            self.state_machine.process_input(ConnectionInputs.SEND_DATA)  # as above
        machine = stream.state_machine
        if not _CAN_SEND[machine.state]:
            machine.process_input(StreamInputs.SEND_DATA)  # h2 decides (and refuses)
        flags = 0
        if end_stream:
            _send_end_stream(machine)
            flags = _END_STREAM
        stream.outbound_flow_control_window -= size
        self.outbound_flow_control_window -= size
        out = self._data_to_send
        out += _FRAME_HEADER.pack(size << 8 | _DATA, flags, stream_id)
        if size:
            out += data

    def receive_data(self, data: Buffer) -> list[H2Event]:
        """h2's ``receive_data``, with the same errors and the same connection
        termination, where a request's HEADERS frame (the frame every request starts
        with) and a WINDOW_UPDATE take a short way (``_receive_request``,
        ``_receive_window_update``) and every other frame h2's."""
        events: list[H2Event] = []
        buffer = self.incoming_buffer
        assert isinstance(buffer, _FrameBuffer)
        buffer.add_data(data)
        buffer.max_frame_size = self.max_inbound_frame_size
        fast = self.fast_frames
        try:
            while True:
                if fast and len(buffer._data) >= 9:
                    kind = buffer._data[3]
                    if kind == _HEADERS and self._receive_request(buffer, events):
                        continue
                    if kind == _WINDOW_UPDATE and self._receive_window_update(buffer, events):
                        continue
                try:
                    frame = next(buffer)
                except StopIteration:
                    break
                events.extend(self._receive_frame(frame))
        except InvalidPaddingError as exc:
            self._terminate_connection(ErrorCodes.PROTOCOL_ERROR)
            raise ProtocolError("Received frame with invalid padding.") from exc
        except ProtocolError as exc:
            self._terminate_connection(exc.error_code)
            raise
        return events

    def _receive_request(self, buffer: _FrameBuffer, events: list[H2Event]) -> bool:
        """Take the next frame if it is a whole HEADERS frame that opens a new client
        stream with a complete header block (END_HEADERS, no PADDED, no PRIORITY) on an
        open server connection under the stream limit; return whether it did.

        It makes the state changes and events h2's reader, ``_receive_headers_frame``
        and ``H2Stream.receive_headers`` make for that frame (RFC 9113 §5.1: idle to
        open, to half-closed (remote) with END_STREAM), without the frame object, the
        generic dispatch and the per-input state-machine lookups. Anything else, and
        every case in which h2 would refuse the frame before decoding it, is left to
        h2 (``False``); errors found after decoding are raised or turned into stream
        errors exactly as ``_receive_headers_frame`` does.
        """
        data = buffer._data
        flags = data[4]
        if flags & _FAST_HEADERS_MASK != _END_HEADERS:
            return False
        length = data[0] << 16 | data[1] << 8 | data[2]
        end = 9 + length
        stream_id = int.from_bytes(data[5:9], "big") & 0x7FFFFFFF
        if (
            len(data) < end
            or length > buffer.max_frame_size  # h2: FrameTooLargeError
            or length > buffer.max_header_block  # _FrameBuffer: DenialOfServiceError
            or buffer._headers_buffer  # h2: a HEADERS inside another header block
            or buffer._block_size
            or not stream_id & 1  # h2: not a client stream id
            or stream_id <= self.highest_inbound_stream_id  # h2: StreamIDTooLowError
            or stream_id in self.streams
            or self.state_machine.state is not ConnectionState.SERVER_OPEN
            # h2: TooManyStreamsError.
            or self._open_client_streams() >= self.local_settings.max_concurrent_streams
        ):
            return False
        block = bytes(data[9:end])
        del data[:end]
        try:
            headers = cast("list[Header]", _decode_headers(self.decoder, block))
        except ProtocolError as exc:
            converted = _compression_error(exc)
            if converted is not exc:
                raise converted from exc
            raise
        # h2's _begin_new_stream, its debug logging aside (SERVER_OPEN stays SERVER_OPEN
        # on RECV_HEADERS, so the connection state machine has nothing to do).
        stream = H2Stream(
            stream_id,
            config=self.config,
            # The windows in force, read as Settings.__getitem__ reads them (this
            # setting always has a value), without its two Python-level calls.
            inbound_window_size=self.local_settings._settings[_INITIAL_WINDOW_SIZE][0],
            outbound_window_size=self.remote_settings._settings[_INITIAL_WINDOW_SIZE][0],
        )
        stream.max_outbound_frame_size = self.max_outbound_frame_size
        self.streams[stream_id] = stream
        self.highest_inbound_stream_id = stream_id
        end_stream = bool(flags & _END_STREAM)
        if headers and headers[0][0] == b":status":
            # Maybe an informational response (which h2 refuses from a client): h2's
            # own stream code decides, with the same errors.
            try:
                frames, stream_events = stream.receive_headers(headers, end_stream, None)
            except ProtocolError as exc:
                if not _is_malformed(exc):
                    raise
                frames, stream_events = self._malformed_request(stream)
            self._prepare_for_sending(frames)
            events += stream_events
            return True
        # H2Stream.receive_headers: idle -> open on HEADERS (request_received), then
        # -> half-closed (remote) on END_STREAM (stream_half_closed), RFC 9113 §5.1.
        machine = stream.state_machine
        machine.client = False
        machine.headers_received = True
        machine.state = StreamState.HALF_CLOSED_REMOTE if end_stream else StreamState.OPEN
        try:
            stream._initialize_content_length(headers)
        except ProtocolError as exc:
            if not _is_malformed(exc):  # pragma: no cover - h2 raises only those
                raise
            frames, stream_events = self._malformed_request(stream)
            self._prepare_for_sending(frames)
            events += stream_events
            return True
        # With inbound validation and normalisation off and no header encoding, h2's
        # _process_received_headers is list(headers): the decoder's list is fresh.
        # One record stands for h2's RequestReceived and, with END_STREAM, StreamEnded.
        events.append(_FastRequest(stream_id, headers, end_stream))
        return True

    def _receive_window_update(self, buffer: _FrameBuffer, events: list[H2Event]) -> bool:
        """Take the next frame if it is a whole WINDOW_UPDATE (RFC 9113 §6.9) with a valid
        increment, for the connection or for a stream open in either direction, that
        keeps the window within 2^31-1; return whether it did. The window grows and
        h2's WindowUpdated event is reported as h2's ``_receive_window_update_frame``
        does; every other case (a bad length or increment, an overflow, a closed or
        unknown stream, a header block in progress) is left to h2 and its errors."""
        data = buffer._data
        if (
            len(data) < 13
            or data[0]
            or data[1]
            or data[2] != 4
            or buffer._headers_buffer  # h2: a frame inside a header block
            or self.state_machine.state is not ConnectionState.SERVER_OPEN
        ):
            return False
        increment = int.from_bytes(data[9:13], "big")
        if not 1 <= increment <= _MAX_WINDOW:  # hyperframe: InvalidDataError
            return False
        stream_id = int.from_bytes(data[5:9], "big") & 0x7FFFFFFF
        if stream_id:
            stream = self.streams.get(stream_id)
            # Open or half-closed: h2's window_updated, the state unchanged.
            if stream is None or not _STREAM_OPEN[stream.state_machine.state]:
                return False
            window = stream.outbound_flow_control_window + increment
            if window > _MAX_WINDOW:  # h2: a stream FLOW_CONTROL_ERROR
                return False
            del data[:13]
            stream.outbound_flow_control_window = window
        else:
            window = self.outbound_flow_control_window + increment
            if window > _MAX_WINDOW:  # h2: a connection FLOW_CONTROL_ERROR
                return False
            del data[:13]
            self.outbound_flow_control_window = window
        events.append(H2WindowUpdated(stream_id=stream_id, delta=increment))
        return True

    def _open_client_streams(self) -> int:
        """h2's ``open_inbound_streams`` on a server (``_open_streams(1)``): the client
        streams open or half-closed; closed streams leave ``streams`` for
        ``_closed_streams`` on the way, as they do on every count h2 makes. Reads each
        stream's state once instead of through two properties."""
        count = 0
        closed: list[int] | None = None
        for stream_id, stream in self.streams.items():
            state = stream.state_machine.state
            if _STREAM_OPEN[state] and stream_id & 1:
                count += 1
            elif state is StreamState.CLOSED:
                if closed is None:
                    closed = [stream_id]
                else:
                    closed.append(stream_id)
        if closed is not None:
            streams = self.streams
            gone = self._closed_streams
            for stream_id in closed:
                gone[stream_id] = streams.pop(stream_id).closed_by
        return count

    def _receive_headers_frame(self, frame: HeadersFrame) -> tuple[list[Frame], list[H2Event]]:
        try:
            return super()._receive_headers_frame(frame)
        except ProtocolError as exc:
            # h2 reports an undecodable header block as PROTOCOL_ERROR; RFC 9113 §4.3
            # says COMPRESSION_ERROR. (An oversized list stays a DoS error.)
            converted = _compression_error(exc)
            if converted is not exc:
                raise converted from exc
            stream = self.streams.get(frame.stream_id)
            if stream is not None and _is_malformed(exc):
                return self._malformed_request(stream)
            raise

    def _malformed_request(self, stream: H2Stream) -> tuple[list[Frame], list[H2Event]]:
        """RFC 9113 §8.1.1: a bad content-length, or trailers without END_STREAM
        (§8.1), make the *request* malformed: a stream error. h2 raises after decoding
        the block (HPACK state stays in step) and opening the stream, so only that
        stream is reset and the connection carries on."""
        frames: list[Frame] = stream.reset_stream(ErrorCodes.PROTOCOL_ERROR)
        event = H2StreamReset(
            stream_id=stream.stream_id,
            error_code=ErrorCodes.PROTOCOL_ERROR,
            remote_reset=False,
        )
        return frames, [event]

    def _receive_data_frame(self, frame: DataFrame) -> tuple[list[Frame], list[H2Event]]:
        try:
            return super()._receive_data_frame(frame)
        except InvalidBodyLengthError:
            # RFC 9113 §8.1.1: DATA that disagrees with content-length makes the request
            # malformed, a *stream* error; h2 would tear the connection down.
            stream = self.streams[frame.stream_id]
            frames: list[Frame] = stream.reset_stream(ErrorCodes.PROTOCOL_ERROR)
            # The frame's bytes will never reach the app: credit the connection window
            # (the stream is closed now, so only the connection level is updated).
            self.acknowledge_received_data(frame.flow_controlled_length, frame.stream_id)
            event = H2StreamReset(
                stream_id=frame.stream_id,
                error_code=ErrorCodes.PROTOCOL_ERROR,
                remote_reset=False,
            )
            return frames, [event]

    def _receive_goaway_frame(self, frame: GoAwayFrame) -> tuple[list[Frame], list[H2Event]]:
        # h2 moves to CLOSED and drops queued output on any GOAWAY, which would forbid
        # finishing the requests in flight. RFC 9113 §6.8 lets them complete, so only
        # report the frame; H2Protocol decides what a GOAWAY means.
        event = H2ConnectionTerminated()
        event.error_code = frame.error_code
        event.last_stream_id = frame.last_stream_id
        event.additional_data = frame.additional_data or None
        return [], [event]


#: What ``parse_request_fields`` returns.
_Parsed = tuple[bytes, bytes | None, bytes | None, bytes | None, bytes | None, Headers, int | None]
#: Distinct request header lists remembered per connection, parsed.
_PARSED_CACHE_SIZE = 32

#: Streams refused for being over the concurrency limit before the connection is closed
#: with ENHANCE_YOUR_CALM (a client that keeps resetting and reopening).
_MAX_REFUSED = 1000
#: Request body read and discarded after a complete response, before RST_STREAM.
_LINGER_BYTES = 64 * 1024


class _Stream:
    """Per-stream bookkeeping: the outgoing buffer and what each side has done."""

    __slots__ = (
        "authority",
        "buffered",
        "chunks",
        "done",
        "end_pending",
        "linger",
        "local_ended",
        "offset",
        "remote_ended",
        "request_trailers",
        "reset",
        "scheme",
        "sent_end",
        "stream_id",
        "trailers",
        "unacked",
    )

    def __init__(self, stream_id: int) -> None:
        self.stream_id = stream_id
        #: Response bytes not yet sent: ``chunks[0][offset:]`` then the other chunks.
        self.chunks: deque[bytes] | None = None
        self.offset = 0
        self.buffered = 0
        #: The response asked to end once the buffer drains (END_STREAM or trailers).
        self.end_pending = False
        #: After a complete response, request body bytes still read and discarded
        #: before RST_STREAM (-1: not lingering); see ``_maybe_remove``.
        self.linger = -1
        self.trailers: Headers | None = None
        #: No more ``send_*`` calls are accepted (END_STREAM asked for, or reset).
        self.local_ended = False
        #: END_STREAM (or trailers) is actually on its way to the peer.
        self.sent_end = False
        self.remote_ended = False
        self.reset = False
        #: ``stream_done`` was called; the entry lives on only to drain the buffer.
        self.done = False
        #: Request body bytes handed to the app and not yet acknowledged.
        self.unacked = 0
        self.request_trailers: Headers | None = None
        self.scheme: bytes | None = None
        self.authority: bytes | None = None


class H2Protocol:
    """An HTTP/2 server connection, sans-IO, implementing ``ByteStreamProtocol``.

    ``H2Protocol(config, now)`` queues the server preface (SETTINGS from ``config`` and a
    connection WINDOW_UPDATE) at once; write ``data_to_send()`` before reading.
    """

    http_version = "2"
    #: ``data_to_send`` always hands out all the output (``ByteStreamProtocol``).
    split_output = False

    def __init__(self, config: Config, now: float) -> None:
        self._setup(config, now)
        self._conn.initiate_connection()
        self._after_preface()

    @classmethod
    def from_h2c_upgrade(
        cls, config: Config, now: float, settings_header: bytes, request: RequestReceived
    ) -> H2Protocol:
        """Continue an HTTP/1.1 connection upgraded with ``Upgrade: h2c`` (RFC 7540 §3.2).

        ``settings_header`` is the ``HTTP2-Settings`` value, ``request`` the upgrading
        request: it becomes stream 1 and is queued at once with its :class:`BodyEnded`.
        The caller writes ``101 Switching Protocols`` and then ``data_to_send()`` (the
        server preface). Raises ``ValueError`` for an invalid ``HTTP2-Settings`` value, so
        the caller can answer over HTTP/1.1 instead.
        """
        proto = cls.__new__(cls)
        proto._setup(config, now)
        try:
            proto._conn.initiate_upgrade_connection(settings_header)
        except (ValueError, H2Error, HyperframeError) as exc:
            raise ValueError(f"invalid HTTP2-Settings header: {exc}") from exc
        proto._after_preface()
        stream = _Stream(1)
        stream.remote_ended = True
        stream.scheme = request.scheme.encode("ascii") if request.scheme else b"http"
        stream.authority = request.authority
        proto._streams[1] = stream
        proto._client_streams += 1
        proto._events.append(replace(request, stream_id=1))
        proto._events.append(BodyEnded(1))
        return proto

    # -- set-up ---------------------------------------------------------------------------

    def _setup(self, config: Config, now: float) -> None:
        self._config = config
        # Client-initiated streams we hold (a reset one stays until its app call ends),
        # and new streams refused because of them.
        self._client_streams = 0
        self._refused = 0
        # Streams we reset because of the client's frames ("MadeYouReset").
        self._provoked = 0
        # Control frames received (the flood rule in _control_flood) and what earns more:
        # streams opened and DATA frames sent (each may draw a WINDOW_UPDATE or two).
        self._control_frames = 0
        self._streams_opened = 0
        self._data_frames_sent = 0
        conn = _H2Connection(
            H2Configuration(
                client_side=False,
                header_encoding=None,
                # We build response headers ourselves, lower-case and without
                # connection-specific fields: skip h2's per-header generators.
                validate_outbound_headers=False,
                normalize_outbound_headers=False,
                # Inbound validation is done by _parse_request_headers, as stream errors.
                validate_inbound_headers=False,
                normalize_inbound_headers=False,
            )
        )
        # RFC 9113 §6.9.2: until the client acknowledges our SETTINGS it may use the
        # default 65535-byte stream window, so a smaller window is applied only on ACK
        # (see _after_preface); a larger one is safe at once.
        self._small_stream_window = config.h2_stream_window_size < _DEFAULT_WINDOW
        conn.local_settings = Settings(
            client=False,
            initial_values={
                SettingCodes.MAX_CONCURRENT_STREAMS: config.h2_max_concurrent_streams,
                SettingCodes.INITIAL_WINDOW_SIZE: max(
                    config.h2_stream_window_size, _DEFAULT_WINDOW
                ),
                SettingCodes.MAX_FRAME_SIZE: config.h2_max_frame_size,
                SettingCodes.MAX_HEADER_LIST_SIZE: config.max_header_bytes,
                # RFC 8441 §3: extended CONNECT, for WebSockets over HTTP/2.
                SettingCodes.ENABLE_CONNECT_PROTOCOL: 1,
            },
        )
        # h2 copies these when the connection is created, before our settings exist.
        conn.max_inbound_frame_size = config.h2_max_frame_size
        # RFC 9113 §10.5.1: a header section over max_header_bytes (HPACK's size: name +
        # value + 32 a line) gets 431 (trailers: RST_STREAM); HPACK stops decoding, and
        # the connection fails with ENHANCE_YOUR_CALM, only at twice that, which no peer
        # honouring our SETTINGS_MAX_HEADER_LIST_SIZE reaches.
        conn.max_decoded_block = 2 * config.max_header_bytes
        conn.decoder.max_header_list_size = conn.max_decoded_block
        assert isinstance(conn.incoming_buffer, _FrameBuffer)
        conn.incoming_buffer.max_header_block = 2 * config.max_header_bytes
        self._conn = conn
        self._events: deque[StreamEvent] = deque()
        self._streams: dict[int, _Stream] = {}
        #: Streams with buffered response data, in round-robin order (dict = ordered set).
        self._blocked: dict[int, _Stream] = {}
        #: Frames of ours that must precede h2's next output (our graceful GOAWAY).
        self._extra_out = b""
        self._closed = False
        #: No new streams: we sent GOAWAY or the peer did; close once streams finish.
        self._draining = False
        #: The last stream id our GOAWAY announced (RFC 9113 §6.8); ``None`` before it.
        self._last_stream_id: int | None = None
        #: Request header blocks already checked and split (see ``_on_request``).
        self._parsed: dict[tuple[tuple[bytes, bytes], ...], _Parsed] = {}
        self._preface_received = False
        self._preface_deadline = now + config.header_read_timeout
        #: When the last stream went (or the connection started): the keep-alive clock.
        self._idle_since = now
        #: The latest time a caller told us about.
        self._now = now

    def _after_preface(self) -> None:
        config = self._config
        if self._small_stream_window:
            # Takes effect when the client ACKs this second SETTINGS frame.
            self._conn.update_settings(
                {SettingCodes.INITIAL_WINDOW_SIZE: config.h2_stream_window_size}
            )
        # RFC 9113 §6.9.2: the connection window only grows by WINDOW_UPDATE on stream 0.
        delta = config.h2_connection_window_size - _DEFAULT_WINDOW
        if delta > 0:
            self._conn.increment_flow_control_window(delta)

    # -- receiving ------------------------------------------------------------------------

    def receive_data(self, data: bytes, now: float) -> None:
        """Feed bytes read from the peer (``b""`` = the peer closed its side)."""
        self._now = now
        if self._closed:
            return
        if not data:
            self._fail(ErrorCodes.NO_ERROR, "peer closed the connection", send_goaway=False)
            return
        for start in range(0, len(data), _RECEIVE_SLICE):
            piece = data if len(data) <= _RECEIVE_SLICE else data[start : start + _RECEIVE_SLICE]
            try:
                h2_events = self._conn.receive_data(piece)
            except ProtocolError as exc:
                self._fail(exc.error_code, str(exc) or type(exc).__name__)
                return
            except Exception as exc:  # any h2 failure on peer input: never crash the driver
                self._fail(ErrorCodes.INTERNAL_ERROR, f"h2 failed: {exc!r}")
                return
            self._handle_h2_events(h2_events)
            if self._closed:
                return
        if self._draining and not self._streams and not self._closed:
            self._finish("drained")

    def _handle_h2_events(self, h2_events: list[H2Event]) -> None:
        streams = self._streams
        flush_all = False
        touched: list[int] | None = None
        for ev in h2_events:
            if self._closed:
                return  # a connection error (ours) ends what this read brought
            cls = type(ev)
            if not self._preface_received:
                # RFC 9113 §3.4: the client preface ends with a SETTINGS frame.
                if cls is not H2RemoteSettingsChanged:
                    self._fail(ErrorCodes.PROTOCOL_ERROR, "preface not followed by SETTINGS")
                    return
                self._preface_received = True
            if cls is H2DataReceived:
                assert isinstance(ev, H2DataReceived)
                if not ev.flow_controlled_length and ev.stream_ended is None:
                    # An empty DATA frame that does not end the stream (CVE-2019-9518).
                    if self._control_flood():
                        return
                self._on_data(ev)
            elif cls is H2RequestReceived:
                assert isinstance(ev, H2RequestReceived)
                self._on_request(ev.stream_id, ev.headers, ev.stream_ended is not None)
            elif cls is _FastRequest:
                assert isinstance(ev, _FastRequest)
                ended = ev.stream_ended
                self._on_request(ev.stream_id, ev.headers, ended)
                if ended and not self._closed:
                    self._on_stream_ended(ev.stream_id)
            elif cls is H2StreamEnded:
                assert isinstance(ev, H2StreamEnded)
                self._on_stream_ended(ev.stream_id)
            elif cls is H2WindowUpdated:
                assert isinstance(ev, H2WindowUpdated)
                if self._control_flood():
                    return
                if ev.stream_id == 0:
                    flush_all = True
                elif ev.stream_id in self._blocked:
                    if touched is None:
                        touched = [ev.stream_id]
                    else:
                        touched.append(ev.stream_id)
            elif cls is H2TrailersReceived:
                assert isinstance(ev, H2TrailersReceived)
                stream = streams.get(ev.stream_id)
                if stream is not None and not stream.reset:
                    if field_section_size(ev.headers) > self._config.max_header_bytes:
                        # The request is the app's already: no 431 (RFC 9113 §10.5.1).
                        self._reset(stream, ErrorCodes.ENHANCE_YOUR_CALM, notify=True)
                        continue
                    try:
                        stream.request_trailers = parse_trailers(ev.headers)
                    except Malformed:
                        self._reset(stream, ErrorCodes.PROTOCOL_ERROR, notify=True)
                        self._provoked_reset()
            elif cls is H2StreamReset:
                assert isinstance(ev, H2StreamReset)
                if not ev.remote_reset:
                    # h2 (or _H2Connection) reset the stream for a frame of the client's:
                    # a flow-control overflow, a frame on a half-closed stream, a body
                    # that disagrees with content-length.
                    self._provoked_reset()
                    if self._closed:
                        return
                stream = streams.get(ev.stream_id)
                if stream is not None and not stream.reset:
                    self._reset(stream, None, notify=True, error_code=int(ev.error_code))
            elif cls is H2RemoteSettingsChanged:
                assert isinstance(ev, H2RemoteSettingsChanged)
                if self._control_flood():
                    return
                if SettingCodes.INITIAL_WINDOW_SIZE in ev.changed_settings:
                    flush_all = True  # §6.9.2: every stream window moved by the delta
            elif cls is H2ConnectionTerminated:
                assert isinstance(ev, H2ConnectionTerminated)
                self._on_goaway(ev)
                if self._closed:
                    return
            elif cls is H2PingReceived or cls is H2PriorityUpdated or cls is H2UnknownFrameReceived:
                # h2 answers a PING itself; PRIORITY and unknown frames need nothing, but
                # each costs as much to parse as a request's worth of work.
                if self._control_flood():
                    return
            # SETTINGS and PING ACKs: nothing to do.
        if flush_all:
            self._flush_all()
        elif touched is not None:
            for stream_id in touched:
                stream = self._blocked.get(stream_id)
                if stream is not None:
                    if self._send_buffered(stream, None):
                        self._writable(stream)
                    self._after_send(stream)

    def _on_stream_ended(self, stream_id: int) -> None:
        stream = self._streams.get(stream_id)
        if stream is not None and not stream.reset:
            stream.remote_ended = True
            trailers = stream.request_trailers
            stream.request_trailers = None
            if not stream.done:
                self._events.append(BodyEnded(stream_id, trailers or []))
            else:
                self._maybe_remove(stream)  # the end of a lingering body

    def _on_request(self, stream_id: int, raw: list[Header], ended: bool) -> None:
        """A request's header section on a new stream (``ended``: with END_STREAM)."""
        if self._draining:
            # RFC 9113 §6.8: streams opened after our GOAWAY (or the peer's) are not
            # processed; REFUSED_STREAM tells the client it may retry them elsewhere.
            self._h2_reset(stream_id, ErrorCodes.REFUSED_STREAM)
            return
        try:
            # A client repeating a request sends the same fields (the same all-indexed
            # HPACK block): its checks and split are reused; the header list is copied.
            key = tuple(raw)
            parsed = self._parsed.get(key)
        except TypeError:  # pragma: no cover - h2 always gives tuples of bytes
            key, parsed = None, None
        if parsed is None:
            if field_section_size(raw) > self._config.max_header_bytes:
                # RFC 9113 §10.5.1: a larger header section than we accept gets 431 (RFC
                # 6585 §5); the stream never reaches the app and the connection carries on.
                self._conn.send_headers(stream_id, [(b":status", b"431")], end_stream=True)
                if not ended:
                    # §8.1: the response is complete; the request body is not wanted.
                    self._h2_reset(stream_id, ErrorCodes.NO_ERROR)
                return
        try:
            if parsed is None:
                parsed = parse_request_fields(raw)
                if key is not None:
                    if len(self._parsed) >= _PARSED_CACHE_SIZE:
                        self._parsed.clear()
                    self._parsed[key] = parsed
            method, path, scheme, authority, protocol, headers, length = parsed
            headers = headers.copy()  # the app's own list, never the cached one
            if length and ended:
                # §8.1.1: content-length says a body follows, END_STREAM says none does.
                raise Malformed("content-length without DATA")
            request = RequestReceived(
                stream_id=stream_id,
                method=method,
                raw_path=path if path is not None else b"",
                headers=headers,
                scheme=decode_token(scheme) if scheme is not None else None,
                authority=authority,
                protocol=decode_token(protocol) if protocol is not None else None,
            )
        except Malformed:
            self._h2_reset(stream_id, ErrorCodes.PROTOCOL_ERROR)  # RFC 9113 §8.1.1
            self._provoked_reset()
            return
        if self._client_streams >= self._config.h2_max_concurrent_streams:
            # "Rapid reset" (CVE-2023-44487): h2 stops counting a stream once the client
            # resets it, but its app call runs on. Here a stream counts until the stream
            # type is done with it, so resetting at once cannot start unbounded app calls.
            self._h2_reset(stream_id, ErrorCodes.REFUSED_STREAM)
            self._refused += 1
            if self._refused > _MAX_REFUSED:
                self._fail(ErrorCodes.ENHANCE_YOUR_CALM, "too many streams refused")
            return
        self._client_streams += 1
        self._streams_opened += 1
        stream = _Stream(stream_id)
        stream.scheme = scheme
        stream.authority = authority
        self._streams[stream_id] = stream
        self._events.append(request)

    def _provoked_reset(self) -> None:
        """Count a stream we reset because of a client frame (a stream error).

        "MadeYouReset" (CVE-2025-8671): such a stream, like one the client resets,
        keeps its place in the concurrency count until its app call ends (``_remove``),
        so it cannot start unbounded app calls; but a client could still make us open
        and reset streams without end. Past ``h2_max_stream_errors`` on a connection it
        gets GOAWAY ENHANCE_YOUR_CALM (RFC 9113 §5.4.1, §7).
        """
        self._provoked += 1
        if self._provoked > self._config.h2_max_stream_errors:
            self._fail(ErrorCodes.ENHANCE_YOUR_CALM, "too many stream errors provoked")

    def _on_data(self, ev: H2DataReceived) -> None:
        stream = self._streams.get(ev.stream_id)
        if stream is None or stream.reset or stream.done:
            # Bytes for a stream we dropped never reach the app: credit them at once so
            # the connection window cannot leak.
            self._ack(ev.flow_controlled_length, ev.stream_id)
            if stream is not None and stream.linger >= 0 and not stream.reset:
                stream.linger -= ev.flow_controlled_length
                if stream.linger < 0:
                    self._reset(stream, ErrorCodes.NO_ERROR, notify=False)
            return
        data = ev.data
        size = len(data)
        if ev.flow_controlled_length != size:
            self._ack(ev.flow_controlled_length - size, ev.stream_id)  # padding (§6.1)
        if size:
            stream.unacked += size
            self._events.append(BodyReceived(ev.stream_id, data))

    def _on_goaway(self, ev: H2ConnectionTerminated) -> None:
        code = int(ev.error_code or 0)
        if code != ErrorCodes.NO_ERROR:
            # The peer hit an error: nothing more will be processed on this connection.
            self._fail(code, f"peer sent GOAWAY with error {code:#x}", send_goaway=False)
            return
        # RFC 9113 §6.8: graceful. Our pushed streams above last_stream_id will not be
        # processed by the client; its own requests in flight complete as usual.
        last = ev.last_stream_id or 0
        for stream in list(self._streams.values()):
            if stream.stream_id % 2 == 0 and stream.stream_id > last and not stream.reset:
                self._reset(stream, None, notify=True, error_code=ErrorCodes.REFUSED_STREAM)
        self._draining = True

    # -- outgoing -------------------------------------------------------------------------

    def next_event(self) -> StreamEvent | None:
        """The next event the received bytes (or timers) produced, or ``None``."""
        events = self._events
        return events.popleft() if events else None

    def data_to_send(self) -> bytes:
        """Bytes to write to the peer, clearing the outgoing buffer."""
        if self._extra_out:
            out = self._extra_out + self._conn.data_to_send()
            self._extra_out = b""
            return out
        return self._conn.data_to_send()

    def pending(self) -> int:
        """Bytes framed for the peer and not yet taken by ``data_to_send``: what the
        driver weighs against its per-connection write budget (flow control does not
        bound them when the peer opens its windows wide and then stops reading)."""
        return len(self._extra_out) + self._conn.pending_output()

    def wants_read(self) -> bool:
        """Always read while open: h2 flow control bounds what the peer may send."""
        return not self._closed

    def send_response(
        self, stream_id: int, status: int, headers: Headers, end_stream: bool = False
    ) -> None:
        """Send the response head (``:status`` and ``headers``) on ``stream_id``.

        ``headers`` names must be lower-case; connection-specific fields are dropped
        (RFC 9113 §8.2.2).
        """
        stream = self._streams.get(stream_id)
        if stream is None or stream.local_ended or self._closed:
            return
        block: Headers = [(b":status", _STATUS_BYTES.get(status) or b"%d" % status)]
        block += [f for f in headers if f[0] not in DROPPED_RESPONSE_FIELDS]
        if end_stream:
            stream.local_ended = stream.sent_end = True
        try:
            self._conn.send_head(stream_id, block, end_stream, not 100 <= status < 200)
        except ProtocolError:
            self._drop_output(stream)

    def send_informational(self, stream_id: int, status: int, headers: Headers) -> None:
        """Send a 1xx response (RFC 9113 §8.1: HEADERS without END_STREAM)."""
        stream = self._streams.get(stream_id)
        if stream is None or stream.local_ended or self._closed or not 100 <= status < 200:
            return
        block: Headers = [(b":status", _STATUS_BYTES[status])]
        block += [f for f in headers if f[0] not in DROPPED_RESPONSE_FIELDS]
        try:
            self._conn.send_head(stream_id, block, False, False)
        except ProtocolError:
            self._drop_output(stream)

    def send_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        """Queue response body bytes; never refuses (see ``buffered_amount``)."""
        stream = self._streams.get(stream_id)
        if stream is None or stream.local_ended or self._closed:
            return
        if not data and not end_stream:
            return
        if end_stream:
            stream.local_ended = True
        conn = self._conn
        if not stream.buffered and stream_id not in self._blocked:
            # Nothing waits before it: frame it now if the windows allow (the usual case),
            # exactly as the buffered path would, without buffering it first.
            if type(data) is not bytes:
                data = bytes(data)
            if conn.fits(stream_id, len(data)):
                try:
                    conn.send_data_frame(stream_id, data, end_stream)
                except ProtocolError:
                    self._drop_output(stream)
                    return
                if data:
                    self._data_frames_sent += 1
                if end_stream:
                    stream.end_pending = stream.sent_end = True
                if stream.done:
                    self._maybe_remove(stream)
                return
        if data:
            if type(data) is not bytes:
                data = bytes(data)  # keep no view of a buffer the caller may reuse
            if stream.chunks is None:
                stream.chunks = deque((data,))
            else:
                stream.chunks.append(data)
            stream.buffered += len(data)
        if end_stream:
            stream.end_pending = True
        if stream.stream_id in self._blocked:
            return  # already waiting for window: keep the order, and keep it fair
        self._send_buffered(stream, None)
        self._after_send(stream)

    def send_trailers(self, stream_id: int, headers: Headers) -> None:
        """Send response trailers and end the stream, after any buffered data."""
        stream = self._streams.get(stream_id)
        if stream is None or stream.local_ended or self._closed:
            return
        stream.local_ended = stream.end_pending = True
        stream.trailers = [f for f in headers if f[0] not in DROPPED_RESPONSE_FIELDS]
        if stream.stream_id in self._blocked:
            return
        self._send_buffered(stream, None)
        self._after_send(stream)

    def reset_stream(self, stream_id: int) -> None:
        """Abort ``stream_id`` with RST_STREAM INTERNAL_ERROR; buffered data is dropped.
        After a complete response only the request body is stopped (see below)."""
        stream = self._streams.get(stream_id)
        if stream is None or stream.reset or self._closed:
            return
        if stream.local_ended:
            # The response is complete (a 413 before the body was read): it must still
            # reach the client, so ``stream_done`` sends RST_STREAM NO_ERROR once it is
            # out (RFC 9113 §8.1), which also stops the request body.
            return
        self._reset(stream, ErrorCodes.INTERNAL_ERROR, notify=False)

    def buffered_amount(self, stream_id: int) -> int:
        """Response bytes queued on ``stream_id`` that flow control has not let out."""
        stream = self._streams.get(stream_id)
        return 0 if stream is None else stream.buffered

    def ack_body(self, stream_id: int, amount: int) -> None:
        """The app consumed ``amount`` request body bytes: re-open the receive windows.

        h2 sends WINDOW_UPDATE frames once enough has been consumed (half a window), for
        the connection and, while the stream is open, for the stream.
        """
        stream = self._streams.get(stream_id)
        if stream is None or amount <= 0:
            return
        # Never credit more than was handed out: a late or doubled ack must not grow the
        # windows beyond what Config allows.
        if amount > stream.unacked:
            amount = stream.unacked
            if not amount:
                return
        stream.unacked -= amount
        self._ack(amount, stream_id)

    def push_promise(self, stream_id: int, path: bytes, headers: Headers) -> int | None:
        """Promise a pushed ``GET path`` on ``stream_id`` (RFC 9113 §8.4).

        The promised request has the parent's ``:scheme`` and ``:authority`` plus
        ``headers``. Returns the new (even) stream id, on which the driver then sends the
        response, or ``None`` when the client disabled push (SETTINGS_ENABLE_PUSH = 0),
        its concurrency limit is reached, or the parent stream can no longer carry a
        PUSH_PROMISE. Emits no event.
        """
        parent = self._streams.get(stream_id)
        conn = self._conn
        if (
            parent is None
            or parent.sent_end  # §8.4: only before the parent's END_STREAM
            or parent.reset
            or parent.authority is None  # §8.4.1: the promise must name an authority
            or stream_id % 2 == 0  # §8.4: never push on a pushed stream
            or self._draining
            or self._closed
            or not conn.remote_settings.enable_push
            or conn.open_outbound_streams >= conn.remote_settings.max_concurrent_streams
        ):
            return None
        promised_id: int = conn.get_next_available_stream_id()
        request: Headers = [
            (b":method", b"GET"),
            (b":path", path),
            (b":scheme", parent.scheme or b"https"),
            (b":authority", parent.authority),
        ]
        request += headers
        try:
            conn.push_stream(stream_id, promised_id, request)
        except ProtocolError:
            return None
        stream = _Stream(promised_id)
        stream.remote_ended = True  # a pushed "request" has no body
        stream.scheme = parent.scheme
        stream.authority = parent.authority
        self._streams[promised_id] = stream
        return promised_id

    def stream_done(self, stream_id: int, now: float) -> None:
        """The stream type has finished with ``stream_id``; drop it once drained.

        When the last stream goes, the keep-alive clock starts at ``now``.
        """
        self._now = now
        stream = self._streams.get(stream_id)
        if stream is None or stream.done:
            return
        stream.done = True
        if not stream.local_ended and not stream.reset and not self._closed:
            # The response was abandoned without an end: tell the peer.
            self._reset(stream, ErrorCodes.CANCEL, notify=False)
        self._maybe_remove(stream)

    def shutdown(self) -> None:
        """Begin a graceful close: GOAWAY(NO_ERROR, last processed stream), once.

        Streams opened after it are refused with REFUSED_STREAM; ``closed`` turns true
        (and :class:`ConnectionClosed` is queued) when the streams in flight are done.
        """
        if self._closed or self._last_stream_id is not None:
            return
        last = self._conn.highest_inbound_stream_id
        self._last_stream_id = last
        self._draining = True
        # h2's close_connection() would also stop us sending on the streams in flight,
        # so the frame is written here, behind what h2 has queued so far.
        self._extra_out += (
            self._conn.data_to_send()
            + _GOAWAY_HEADER
            + _GOAWAY_BODY.pack(last, ErrorCodes.NO_ERROR)
        )
        if not self._streams:
            self._finish("shutdown")

    # -- timers ---------------------------------------------------------------------------

    def get_timer(self) -> float | None:
        """The next deadline: the client preface, or the keep-alive while idle."""
        if self._closed:
            return None
        deadline: float | None = None
        if not self._preface_received:
            deadline = self._preface_deadline
        if not self._streams:
            # Only the time since the last stream counts: bytes that open no stream
            # (PING, SETTINGS, WINDOW_UPDATE) do not keep an idle connection alive.
            at = self._idle_since + self._config.keep_alive_timeout
            if deadline is None or at < deadline:
                deadline = at
        return deadline

    def handle_timer(self, now: float) -> None:
        """Close the connection if the preface or keep-alive deadline has passed."""
        self._now = now
        if self._closed:
            return
        if not self._preface_received and now >= self._preface_deadline:
            # The client's SETTINGS never came: RFC 9113 §6.5.3 SETTINGS_TIMEOUT.
            self._fail(ErrorCodes.SETTINGS_TIMEOUT, "no client preface in time")
            return
        if not self._streams and now >= self._idle_since + self._config.keep_alive_timeout:
            self._goaway(ErrorCodes.NO_ERROR)
            self._finish("keep-alive timeout")

    # -- state ----------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once the connection must be closed after ``data_to_send`` is written."""
        return self._closed

    @property
    def open_streams(self) -> int:
        """Streams in flight, including finished ones whose response is still draining."""
        return len(self._streams)

    # -- internals ------------------------------------------------------------------------

    def _ack(self, amount: int, stream_id: int) -> None:
        if self._closed:
            return
        try:
            self._conn.acknowledge_received_data(amount, stream_id)
        except ProtocolError:
            pass

    def _control_flood(self) -> bool:
        """Count one control frame (PING, SETTINGS, PRIORITY, WINDOW_UPDATE, an empty DATA
        frame, an unknown frame type). A client may send ``--h2-max-control-frames`` of them,
        plus 100 per stream it opened and two per DATA frame we sent (the WINDOW_UPDATEs
        a download draws); past that it is flooding (CVE-2019-9512, -9515, -9518: each
        costs us as much as it costs the client to send) and gets GOAWAY ENHANCE_YOUR_CALM.
        Returns whether the connection was closed."""
        self._control_frames += 1
        if self._control_frames <= self._config.h2_max_control_frames:
            return False
        allowed = (
            self._config.h2_max_control_frames
            + _CONTROL_FRAMES_PER_STREAM * self._streams_opened
            + 2 * self._data_frames_sent
        )
        if self._control_frames <= allowed:
            return False
        self._fail(ErrorCodes.ENHANCE_YOUR_CALM, "control frame flood")
        return True

    def _h2_reset(self, stream_id: int, code: int) -> None:
        try:
            self._conn.reset_stream(stream_id, code)
        except ProtocolError:
            pass

    def _send_buffered(self, stream: _Stream, limit: int | None) -> bool:
        """Send what the windows allow, at most ``limit`` bytes (``None``: no limit).

        Sends END_STREAM or the trailers once the buffer is empty. Returns whether any
        data left the buffer.
        """
        conn = self._conn
        stream_id = stream.stream_id
        chunks = stream.chunks
        sent = False
        try:
            while stream.buffered:
                window = conn.local_flow_control_window(stream_id)
                if window <= 0:
                    return sent
                size = min(window, conn.max_outbound_frame_size, stream.buffered)
                if limit is not None:
                    if limit <= 0:
                        return sent
                    if size > limit:
                        size = limit
                    limit -= size
                assert chunks is not None
                head = chunks[0]
                offset = stream.offset
                if len(head) - offset > size:
                    piece = head[offset : offset + size]
                    stream.offset = offset + size
                else:
                    # The frame takes the rest of the head chunk, maybe more chunks.
                    chunks.popleft()
                    stream.offset = 0
                    piece = head[offset:] if offset else head
                    if len(piece) < size:
                        parts = [piece]
                        need = size - len(piece)
                        while need:
                            head = chunks[0]
                            if len(head) > need:
                                parts.append(head[:need])
                                stream.offset = need
                                break
                            chunks.popleft()
                            parts.append(head)
                            need -= len(head)
                        piece = b"".join(parts)
                stream.buffered -= size
                last = not stream.buffered and stream.end_pending and stream.trailers is None
                if last:
                    stream.sent_end = True
                conn.send_data_frame(stream_id, piece, last)
                self._data_frames_sent += 1
                sent = True
            if stream.end_pending and not stream.sent_end:
                stream.sent_end = True
                if stream.trailers is not None:
                    conn.send_headers(stream_id, stream.trailers, end_stream=True)
                else:
                    conn.send_data_frame(stream_id, b"", True)
        except ProtocolError:
            # The stream closed under us (h2 refuses): nothing more can be sent on it.
            self._drop_output(stream)
        return sent

    def _after_send(self, stream: _Stream) -> None:
        """Track ``stream`` in the round-robin set while it has buffered data."""
        if stream.buffered:
            self._blocked.setdefault(stream.stream_id, stream)
        else:
            self._blocked.pop(stream.stream_id, None)
            if stream.done:
                self._maybe_remove(stream)

    def _flush_all(self) -> None:
        """Drain buffers round-robin while the windows allow.

        Each turn gives every waiting stream an equal share of the connection window
        (at least ``_MIN_QUANTUM`` bytes, at most one frame), so no stream starves
        another when the connection window is the bottleneck.
        """
        blocked = self._blocked
        conn = self._conn
        progressed: dict[int, _Stream] = {}
        while blocked and conn.outbound_flow_control_window > 0:
            moved = False
            quantum = min(
                max(conn.outbound_flow_control_window // len(blocked), _MIN_QUANTUM),
                conn.max_outbound_frame_size,
            )
            for stream in list(blocked.values()):
                if self._send_buffered(stream, quantum):
                    moved = True
                    progressed[stream.stream_id] = stream
                blocked.pop(stream.stream_id, None)
                if stream.buffered and not stream.reset:
                    blocked[stream.stream_id] = stream  # to the back of the queue
                if conn.outbound_flow_control_window <= 0:
                    break
            if not moved:
                break
        for stream in progressed.values():
            self._writable(stream)
            if not stream.buffered and stream.done:
                self._maybe_remove(stream)

    def _writable(self, stream: _Stream) -> None:
        if not stream.done and not stream.reset:
            self._events.append(StreamWritable(stream.stream_id))

    def _drop_output(self, stream: _Stream) -> None:
        stream.local_ended = stream.sent_end = True
        stream.chunks = None
        stream.offset = stream.buffered = 0
        stream.trailers = None
        self._blocked.pop(stream.stream_id, None)

    def _reset(
        self,
        stream: _Stream,
        send_code: int | None,
        *,
        notify: bool,
        error_code: int | None = None,
    ) -> None:
        """Abandon ``stream``: send RST_STREAM ``send_code`` (unless ``None``), drop its
        output, credit its unread body to the connection window and, with ``notify``,
        queue :class:`StreamReset` (with ``error_code``, default ``send_code``)."""
        stream.reset = True
        self._drop_output(stream)
        if send_code is not None:
            self._h2_reset(stream.stream_id, send_code)
        if stream.unacked:
            # The stream is closed in h2 now, so this credits the connection only.
            self._ack(stream.unacked, stream.stream_id)
            stream.unacked = 0
        if stream.done:
            self._remove(stream)
        elif notify:
            code = send_code if error_code is None else error_code
            self._events.append(StreamReset(stream.stream_id, int(code or 0)))

    def _maybe_remove(self, stream: _Stream) -> None:
        """Forget a stream the stream type is done with, once its output is out."""
        if not stream.done or stream.buffered:
            return
        if stream.reset:
            self._remove(stream)
        elif stream.sent_end and not stream.remote_ended:
            # RFC 9113 §8.1: the response is complete but the request body is not.
            # A little more of it is read and discarded, so a client still uploading
            # (a 413 answered before the body) gets to read the response; past
            # _LINGER_BYTES, RST_STREAM NO_ERROR asks it to stop (some clients, curl
            # among them, report that reset as an error while they are sending).
            if stream.linger < 0:
                stream.linger = _LINGER_BYTES
                if stream.unacked:
                    self._ack(stream.unacked, stream.stream_id)
                    stream.unacked = 0
        else:
            if stream.unacked:
                self._ack(stream.unacked, stream.stream_id)
                stream.unacked = 0
            self._remove(stream)

    def _remove(self, stream: _Stream) -> None:
        if self._streams.pop(stream.stream_id, None) is None:
            return
        if stream.stream_id % 2:
            self._client_streams -= 1
        self._blocked.pop(stream.stream_id, None)
        if not self._streams and not self._closed:
            if self._draining:
                self._finish("drained")
            else:
                self._idle_since = self._now

    def _goaway(self, code: int) -> None:
        """Queue GOAWAY ``code`` unless h2 already has (it does on its own errors)."""
        conn = self._conn
        if conn.state_machine.state is not ConnectionState.CLOSED:
            try:
                # §6.8: a later GOAWAY must not raise the last stream id of an earlier one.
                conn.close_connection(code, last_stream_id=self._last_stream_id)
            except ProtocolError:
                pass

    def _finish(self, reason: str) -> None:
        """A clean end: the connection closes after the current output."""
        self._closed = True
        self._events.append(ConnectionClosed(0, reason))

    def _fail(self, code: int, reason: str, *, send_goaway: bool = True) -> None:
        """A connection error (RFC 9113 §5.4.1): GOAWAY ``code`` if h2 has not queued one,
        StreamReset for every stream in flight, then ConnectionClosed."""
        if send_goaway:
            self._goaway(code)
        stream_code = int(code) or int(ErrorCodes.CANCEL)
        for stream in self._streams.values():
            stream.chunks = None
            if not stream.reset and not stream.done:
                self._events.append(StreamReset(stream.stream_id, stream_code))
        self._streams.clear()
        self._blocked.clear()
        self._closed = True
        self._events.append(ConnectionClosed(int(code), reason))
