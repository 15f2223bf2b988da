"""Everything that reaches into aioquic's internals, in one file.

aioquic's public API does not cover seven things a production server needs, so this
module subclasses :class:`aioquic.quic.connection.QuicConnection` for them. An aioquic
upgrade should touch only this file; ``tests/test_quic_compat.py`` pins each hook.

1. **Connection IDs** come from the endpoint (``EndpointCore.new_connection_id``), so
   stateless-reset tokens are derived from the CID (RFC 9000 §10.3.2) and, later, the CID
   can carry a worker id. aioquic draws them from ``os.urandom`` in ``__init__`` and
   ``_replenish_connection_ids``.
2. **Request-body backpressure.** aioquic doubles a stream's receive credit
   (MAX_STREAM_DATA) whenever half of it has arrived, whether or not anyone read the
   data. Here credit follows what the app consumed: ``consume(stream_id, n)`` moves the
   limit to ``consumed + window``, so a slow app stalls the peer, not our memory.
3. **0-RTT requests.** STREAM frames that arrive in 0-RTT packets are noted, so HTTP/3
   can flag requests received as early data (RFC 8470).
4. **0-RTT permission.** aioquic's server puts 0-RTT permission in every session ticket;
   without ``--quic-0rtt`` ours carry none.
6. **Malformed requests are stream errors** (:class:`ServerH3Connection`), not the
   connection errors aioquic makes of them.
5. **Send-side accounting.** ``buffered(stream_id)`` says how many response bytes aioquic
   holds for a stream (unsent or unacknowledged), for the app's ``send()`` to wait on.
7. **Field-section limits** (:class:`ServerH3Connection`, :class:`GuardedDecoder`): our
   SETTINGS carry SETTINGS_MAX_FIELD_SECTION_SIZE and our QPACK limits, oversized HEADERS
   frames are refused at their header, and every field section is bounded by
   ``protocol/qpack_guard.py`` before pylsqpack may expand it (the QPACK bomb).

Also here: the one place a :class:`QuicConfiguration` is built from :class:`Config`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pylsqpack
from aioquic import tls
from aioquic.buffer import Buffer  # type: ignore[attr-defined]
from aioquic.h3.connection import (
    ErrorCode,
    FrameType,
    H3Connection,
    H3Stream,
    MessageError,
    ProtocolError,
    Setting,
)
from aioquic.h3.events import H3Event
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import (
    QuicConnection,
    QuicConnectionId,
    QuicReceiveContext,
)
from aioquic.quic.packet import QuicFrameType, QuicProtocolVersion
from aioquic.quic.packet_builder import QuicPacketBuilder
from aioquic.quic.recovery import QuicPacketSpace
from aioquic.quic.stream import QuicStream

from ..config import Config
from ..protocol.qpack_guard import (
    QpackEncoderError,
    QpackGuard,
    QpackLoadError,
    QpackSectionError,
)

CidFactory = Callable[[], tuple[bytes, bytes]]

# RFC 9000 §19.10: type (1 byte) + stream id + maximum, both up to 8-byte varints.
_MAX_STREAM_DATA_CAPACITY = 1 + 8 + 8


class ServerQuicConnection(QuicConnection):
    """aioquic's connection with quicserve's CIDs, credit policy and 0-RTT marking."""

    def __init__(
        self,
        *,
        cid_factory: CidFactory,
        stream_window: int,
        max_streams: int,
        allow_early_data: bool,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._allow_early_data = allow_early_data
        self._cid_factory = cid_factory
        # Concurrent request streams the peer may open (initial_max_streams_bidi).
        self._local_max_streams_bidi.value = self._local_max_streams_bidi.sent = max_streams
        self._stream_window = stream_window
        self._consumed: dict[int, int] = {}
        self.early_streams: set[int] = set()
        # Replace the CID aioquic drew in __init__ before anything was sent with it.
        cid, token = cid_factory()
        first = self._host_cids[0]
        self._host_cids[0] = QuicConnectionId(
            cid=cid,
            sequence_number=first.sequence_number,
            stateless_reset_token=token,
            was_sent=first.was_sent,
        )
        self.host_cid = cid
        self._local_initial_source_connection_id = cid

    def _initialize(self, peer_cid: bytes) -> None:
        super()._initialize(peer_cid)
        if not self._allow_early_data:
            # aioquic's server lets every session ticket carry 0-RTT permission. Without
            # --quic-0rtt our tickets carry none, so clients resume in 1-RTT only.
            self.tls._max_early_data = None

    # -- 1. connection ids --------------------------------------------------------------

    def _replenish_connection_ids(self) -> None:
        while len(self._host_cids) < min(8, self._remote_active_connection_id_limit):
            cid, token = self._cid_factory()
            self._host_cids.append(
                QuicConnectionId(
                    cid=cid, sequence_number=self._host_cid_seq, stateless_reset_token=token
                )
            )
            self._host_cid_seq += 1

    def host_connection_ids(self) -> list[bytes]:
        """Every CID this connection has issued and not retired."""
        return [c.cid for c in self._host_cids]

    # -- 2. receive credit follows consumption ----------------------------------------

    def consume(self, stream_id: int, amount: int) -> None:
        """The app consumed ``amount`` bytes of ``stream_id``: grant that much credit."""
        consumed = self._consumed.get(stream_id, 0) + amount
        self._consumed[stream_id] = consumed
        stream = self._streams.get(stream_id)
        if stream is not None and stream.max_stream_data_local:
            target = consumed + self._stream_window
            if target > stream.max_stream_data_local:
                stream.max_stream_data_local = target

    def forget_stream(self, stream_id: int) -> None:
        """Drop per-stream bookkeeping once a stream is finished."""
        self._consumed.pop(stream_id, None)
        self.early_streams.discard(stream_id)

    def _write_stream_limits(
        self, builder: QuicPacketBuilder, space: QuicPacketSpace, stream: QuicStream
    ) -> None:
        # Same frame as aioquic writes, without its "double when half full" growth:
        # the limit only moves in consume().
        if stream.max_stream_data_local_sent != stream.max_stream_data_local:
            buf = builder.start_frame(
                QuicFrameType.MAX_STREAM_DATA,
                capacity=_MAX_STREAM_DATA_CAPACITY,
                handler=self._on_max_stream_data_delivery,
                handler_args=(stream,),
            )
            buf.push_uint_var(stream.stream_id)  # type: ignore[arg-type]
            buf.push_uint_var(stream.max_stream_data_local)
            stream.max_stream_data_local_sent = stream.max_stream_data_local

    # -- 3. 0-RTT ----------------------------------------------------------------------

    def _handle_stream_frame(
        self, context: QuicReceiveContext, frame_type: int, buf: Buffer
    ) -> None:
        if context.epoch == tls.Epoch.ZERO_RTT:
            position = buf.tell()
            self.early_streams.add(buf.pull_uint_var())
            buf.seek(position)
        super()._handle_stream_frame(context, frame_type, buf)

    # -- 4. send accounting -------------------------------------------------------------

    def buffered(self, stream_id: int) -> int:
        """Response bytes aioquic still holds for ``stream_id`` (unsent or unacked)."""
        stream = self._streams.get(stream_id)
        if stream is None:
            return 0
        sender = stream.sender
        return int(sender._buffer_stop - sender._buffer_start)

    def can_send(self) -> bool:
        """False once the connection is closing (no new data will leave)."""
        return self._close_event is None and self._state.name not in (
            "CLOSING",
            "DRAINING",
            "TERMINATED",
        )

    @property
    def handshake_complete(self) -> bool:
        """The TLS handshake has completed."""
        return bool(self._handshake_complete)

    @property
    def peer_address(self) -> Any:
        """The validated network path's address (follows migration)."""
        for path in self._network_paths:
            if path.is_validated:
                return path.addr
        return self._network_paths[0].addr if self._network_paths else None


def quic_configuration(
    config: Config, *, max_datagram_size: int | None = None
) -> QuicConfiguration:
    """The server's :class:`QuicConfiguration` for HTTP/3."""
    configuration = QuicConfiguration(
        is_client=False,
        alpn_protocols=["h3"],
        idle_timeout=config.quic_idle_timeout,
        max_datagram_size=max_datagram_size or config.quic_max_datagram_size,
        congestion_control_algorithm=config.quic_congestion_control,
        supported_versions=[QuicProtocolVersion.VERSION_1, QuicProtocolVersion.VERSION_2],
        max_data=config.quic_max_data,
        max_stream_data=config.quic_stream_window_size,
    )
    if config.webtransport:
        # QUIC DATAGRAM frames (RFC 9221) carry WebTransport's HTTP Datagrams.
        configuration.max_datagram_frame_size = 65536
    return configuration


class ExcessiveLoad(ProtocolError):
    """RFC 9114 §8.1 / §10.5: the peer makes us do far more work than it should."""

    error_code = ErrorCode.H3_EXCESSIVE_LOAD


class GuardedDecoder:
    """pylsqpack's QPACK decoder, behind a :class:`QpackGuard` (the QPACK bomb).

    pylsqpack cannot stop half-way through a field section, so before each section is
    decoded the guard bounds what it may expand to. A section whose bound is above
    ``refuse_above`` is a connection error of type H3_EXCESSIVE_LOAD and is never
    decoded: a peer that honours our SETTINGS_MAX_FIELD_SECTION_SIZE never sends one
    (RFC 9114 §4.2.2 lets it be refused; the bound is at most 8/5 of the real size for any
    encoder that uses Huffman only where it is shorter). The guard reads the encoder stream
    before the decoder does, so both see the same table. Same interface as
    ``pylsqpack.Decoder``, which is what :class:`H3Connection` calls.
    """

    def __init__(self, max_table_capacity: int, blocked_streams: int, refuse_above: int) -> None:
        self._decoder = pylsqpack.Decoder(max_table_capacity, blocked_streams)
        self.guard = QpackGuard(max_table_capacity)
        self._refuse_above = refuse_above
        #: Sections waiting for inserts (RFC 9204 §2.1.2), bounded when they resume.
        self._blocked: dict[int, bytes] = {}

    def feed_encoder(self, data: bytes) -> list[int]:
        try:
            self.guard.feed_encoder(data)
        except QpackEncoderError as exc:
            raise pylsqpack.EncoderStreamError(str(exc)) from exc
        except QpackLoadError as exc:
            raise ExcessiveLoad(str(exc)) from exc
        return self._decoder.feed_encoder(data)

    def feed_header(self, stream_id: int, data: bytes) -> tuple[bytes, list[tuple[bytes, bytes]]]:
        self.guard.section_started()
        self._check(data)
        try:
            return self._decoder.feed_header(stream_id, data)
        except pylsqpack.StreamBlocked:
            self._blocked[stream_id] = data
            raise

    def resume_header(self, stream_id: int) -> tuple[bytes, list[tuple[bytes, bytes]]]:
        data = self._blocked.pop(stream_id, None)
        if data is not None:
            self._check(data)
        try:
            return self._decoder.resume_header(stream_id)
        except pylsqpack.StreamBlocked:
            if data is not None:
                self._blocked[stream_id] = data
            raise

    def cancel_stream(self, stream_id: int) -> bytes:
        self._blocked.pop(stream_id, None)
        return self._decoder.cancel_stream(stream_id)

    def _check(self, data: bytes) -> None:
        try:
            bound = self.guard.section_bound(data, self._refuse_above)
        except QpackSectionError as exc:
            raise pylsqpack.DecompressionFailed(str(exc)) from exc
        if bound is not None and bound > self._refuse_above:
            raise ExcessiveLoad("field section far above SETTINGS_MAX_FIELD_SECTION_SIZE")


class ServerH3Connection(H3Connection):
    """aioquic's HTTP/3 connection with quicserve's limits.

    * Malformed requests are *stream* errors. aioquic validates request fields itself and
      closes the whole connection on any ``MessageError``. RFC 9114 §4.1.2 makes a
      malformed request a stream error of type H3_MESSAGE_ERROR: here that request's
      stream is reset and stopped, the rest of its frames are ignored, and every other
      stream carries on.
    * Field sections are bounded (RFC 9114 §4.2.2, §7.2.4.1): SETTINGS carry
      SETTINGS_MAX_FIELD_SECTION_SIZE = ``max_header_bytes`` and our QPACK limits
      (aioquic sends its own defaults from ``__init__``); a HEADERS frame longer than
      twice that, or a section the guard bounds above twice that
      (:class:`GuardedDecoder`), is a connection error of type H3_EXCESSIVE_LOAD before it
      is buffered or decoded. Whether a decoded section is within the limit is the HTTP/3
      protocol's call (431).
    """

    def __init__(
        self, quic: QuicConnection, config: Config, *, enable_webtransport: bool = False
    ) -> None:
        # Read by _get_local_settings, which H3Connection.__init__ calls.
        self._limits = config
        super().__init__(quic, enable_webtransport=enable_webtransport)
        self._rejected: set[int] = set()
        #: Streams reset here for a malformed message, with the error code, for the HTTP/3
        #: protocol to take (a request already handed to the app must learn it).
        self.message_errors: list[tuple[int, int]] = []
        self._refuse_above = 2 * config.max_header_bytes
        # Nothing has been decoded yet: the decoder aioquic made can be replaced (by a
        # wrapper: pylsqpack's Decoder cannot be subclassed).
        self._decoder = GuardedDecoder(  # type: ignore[assignment]
            config.qpack_max_table_capacity, config.qpack_blocked_streams, self._refuse_above
        )

    def _get_local_settings(self) -> dict[int, int]:
        config = self._limits
        self._max_table_capacity = config.qpack_max_table_capacity
        self._blocked_streams = config.qpack_blocked_streams
        settings = super()._get_local_settings()
        settings[Setting.MAX_FIELD_SECTION_SIZE] = config.max_header_bytes
        return settings

    def reject(self, stream_id: int) -> None:
        """Ignore whatever else arrives on ``stream_id`` (the caller answered or reset
        it); its state goes once the peer's side has ended too."""
        stream = self._stream.get(stream_id)
        if stream is None:
            return
        stream.sending_ended = True
        if stream.receiving_ended:
            del self._stream[stream_id]
        else:
            self._rejected.add(stream_id)

    def _receive_stream_reset(self, stream_id: int) -> None:
        self._rejected.discard(stream_id)  # nothing more comes in on it
        super()._receive_stream_reset(stream_id)

    def _settle_rejected(self, stream: H3Stream) -> None:
        # Nothing more goes out on a rejected stream; once nothing more comes in either,
        # aioquic's stream context forgets it, and so do we.
        stream.sending_ended = True
        if stream.receiving_ended:
            self._rejected.discard(stream.stream_id)

    def _check_request_or_push_frame_type(self, frame_type: int, stream: H3Stream) -> None:
        super()._check_request_or_push_frame_type(frame_type, stream)
        # aioquic buffers a whole HEADERS frame before decoding it: refuse it at its
        # header. Encoded field lines are never longer than their decoded size (32
        # octets a line), so this is only ever a peer that ignores our SETTINGS.
        if (
            frame_type == FrameType.HEADERS
            and stream.frame_size is not None
            and stream.frame_size > self._refuse_above
        ):
            raise ExcessiveLoad("HEADERS frame far above SETTINGS_MAX_FIELD_SECTION_SIZE")

    def _receive_request_or_push_data(
        self, stream: H3Stream, data: bytes, stream_ended: bool
    ) -> list[H3Event]:
        if stream.stream_id in self._rejected:
            if stream_ended:
                stream.receiving_ended = True
                self._settle_rejected(stream)
            return []
        events = super()._receive_request_or_push_data(stream, data, stream_ended)
        if stream.stream_id in self._rejected:
            self._settle_rejected(stream)  # rejected by a malformed frame of this batch
        return events

    def _handle_request_or_push_frame(
        self, frame_type: int, frame_data: bytes | None, stream: H3Stream, stream_ended: bool
    ) -> list[H3Event]:
        if stream.stream_id in self._rejected:
            return []  # frames of the same batch after the malformed HEADERS
        try:
            return super()._handle_request_or_push_frame(
                frame_type, frame_data, stream, stream_ended
            )
        except MessageError as exc:
            if self._is_client or stream.push_id is not None:
                raise
            self._rejected.add(stream.stream_id)
            self._quic.reset_stream(stream.stream_id, exc.error_code)
            self._quic.stop_stream(stream.stream_id, exc.error_code)
            self.message_errors.append((stream.stream_id, exc.error_code))
            return []


__all__ = [
    "ExcessiveLoad",
    "GuardedDecoder",
    "ServerH3Connection",
    "ServerQuicConnection",
    "quic_configuration",
]
