"""Everything that reaches into aioquic's internals, in one file.

aioquic's public API does not cover six things a production server needs, so this
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
7. **Guards against abusive peers** (the last section of the class): CRYPTO data held
   (RFC 9000 §7.5), ACK frames per packet and ACKs of packets never sent (§21.9, §13.1),
   RETIRE_CONNECTION_ID for CIDs never sent (§19.16); each override says what aioquic
   does and what upstream should change.

Also here: the one place a :class:`QuicConfiguration` is built from :class:`Config`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aioquic import tls
from aioquic.buffer import Buffer  # type: ignore[attr-defined]
from aioquic.h3.connection import H3Connection, H3Stream, MessageError
from aioquic.h3.events import H3Event
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import (
    QuicConnection,
    QuicConnectionError,
    QuicConnectionId,
    QuicReceiveContext,
)
from aioquic.quic.packet import QuicErrorCode, QuicFrameType, QuicProtocolVersion
from aioquic.quic.packet_builder import QuicPacketBuilder
from aioquic.quic.recovery import QuicPacketSpace
from aioquic.quic.stream import QuicStream

from ..config import Config

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

    # -- guards against abusive peers ----------------------------------------------------
    #
    # aioquic 1.7.2 already bounds network paths (8), remote PATH_CHALLENGEs per path (32),
    # ACK ranges it keeps, and pending RETIRE_CONNECTION_IDs. What it leaves open, and
    # what to tell upstream, is noted at each override.

    #: RFC 9000 §7.5: CRYPTO data held before TLS can use it, per epoch (see ``guard``).
    _max_crypto_buffer: int = 16 * 1024
    #: RFC 9000 §21.9: ACK frames one packet may carry (see ``guard``).
    _max_ack_frames: int = 2
    _ack_context: QuicReceiveContext | None = None
    _ack_frames = 0
    #: Highest sequence number of a CID we sent in NEW_CONNECTION_ID (0: the first CID,
    #: which the peer learns from the handshake).
    _cid_seq_sent = 0

    def guard(self, *, max_crypto_buffer: int, max_ack_frames_per_packet: int) -> None:
        """Set the limits below (``--quic-max-crypto-buffer``,
        ``--quic-max-ack-frames-per-packet``)."""
        self._max_crypto_buffer = max_crypto_buffer
        self._max_ack_frames = max_ack_frames_per_packet

    def _handle_ack_frame(
        self, context: QuicReceiveContext, frame_type: int, buf: Buffer
    ) -> None:
        # RFC 9000 §21.9: a packet belongs to one number space, so one ACK frame says all
        # there is to say; more are non-productive work the peer chooses. aioquic copies
        # every unacknowledged packet number into a list for each ACK frame
        # (recovery.py, QuicPacketRecovery.on_ack_received), so hundreds of small ACK
        # frames in one datagram cost hundreds of times that copy: upstream should copy
        # once per packet, or bisect the dict's keys without a copy.
        if context is not self._ack_context:
            self._ack_context = context  # a new QuicReceiveContext per packet
            self._ack_frames = 0
        self._ack_frames += 1
        if self._ack_frames > self._max_ack_frames:
            raise QuicConnectionError(
                error_code=QuicErrorCode.PROTOCOL_VIOLATION,
                frame_type=frame_type,
                reason_phrase="too many ACK frames in one packet",
            )
        # RFC 9000 §13.1: acknowledging a packet never sent SHOULD be a PROTOCOL_VIOLATION.
        # aioquic (connection.py, _handle_ack_frame) takes any Largest Acknowledged and
        # makes it the space's largest_acked_packet, so from then on every packet we send
        # counts as lost by the packet threshold (recovery.py, _detect_loss). Packet
        # numbers are one counter over all spaces here, so ``_packet_number`` (the next
        # one) is a bound no sent packet reaches.
        position = buf.tell()
        largest = buf.pull_uint_var()
        buf.seek(position)
        if largest >= self._packet_number:
            raise QuicConnectionError(
                error_code=QuicErrorCode.PROTOCOL_VIOLATION,
                frame_type=frame_type,
                reason_phrase="ACK of a packet never sent",
            )
        super()._handle_ack_frame(context, frame_type, buf)

    def _handle_crypto_frame(
        self, context: QuicReceiveContext, frame_type: int, buf: Buffer
    ) -> None:
        # RFC 9000 §7.5: buffer at least 4096 bytes of CRYPTO data, and close with
        # CRYPTO_BUFFER_EXCEEDED beyond what we allow. aioquic holds two buffers without a
        # useful bound, and what we count is both:
        # * out of order: up to 512 KiB ahead (connection.py, MAX_PENDING_CRYPTO), and the
        #   receiver zero-fills the gap up to the frame's offset (stream.py,
        #   QuicStreamReceiver.handle_frame): one byte at offset 512 KiB - 1 allocates
        #   512 KiB, in each of three epochs, kept while the connection lives;
        # * in order: TLS reassembles a message until the length its header claims (up to
        #   16 MiB) has arrived, one buffer grown by ``bytes +=`` (tls.py,
        #   Context.handle_message): a ClientHello that claims 16 MiB and keeps coming
        #   holds 16 MiB and costs quadratic copying, ~14,000 Initial packets of it.
        # Upstream: a configurable limit on both (the RFC's 4096 as the floor), buffers
        # that hold what arrived rather than the gap, and a bytearray for reassembly.
        position = buf.tell()
        offset = buf.pull_uint_var()
        length = buf.pull_uint_var()
        buf.seek(position)
        start = self._crypto_streams[context.epoch].receiver.starting_offset()
        reassembling = len(self.tls._receive_buffer)
        if offset + length - start + reassembling > self._max_crypto_buffer:
            raise QuicConnectionError(
                error_code=QuicErrorCode.CRYPTO_BUFFER_EXCEEDED,
                frame_type=frame_type,
                reason_phrase="too much CRYPTO data buffered",
            )
        super()._handle_crypto_frame(context, frame_type, buf)

    def _write_new_connection_id_frame(
        self, builder: QuicPacketBuilder, connection_id: QuicConnectionId
    ) -> None:
        super()._write_new_connection_id_frame(builder, connection_id)
        if connection_id.sequence_number > self._cid_seq_sent:
            self._cid_seq_sent = connection_id.sequence_number

    def _handle_retire_connection_id_frame(
        self, context: QuicReceiveContext, frame_type: int, buf: Buffer
    ) -> None:
        # RFC 9000 §19.16: retiring a sequence number greater than any we sent is a
        # PROTOCOL_VIOLATION. aioquic (connection.py, _handle_retire_connection_id_frame)
        # compares with the next number it will *mint* (``_host_cid_seq``), and mints a
        # replacement at once for every CID retired, so a peer that counts ahead can
        # retire CIDs it never saw, hundreds per packet, each costing us a new CID and
        # its reset token (only the 8 kept are ever sent). With the RFC's check the peer
        # can only retire what reached it: the churn is paced by round trips.
        position = buf.tell()
        sequence_number = buf.pull_uint_var()
        buf.seek(position)
        if sequence_number > self._cid_seq_sent:
            raise QuicConnectionError(
                error_code=QuicErrorCode.PROTOCOL_VIOLATION,
                frame_type=frame_type,
                reason_phrase="Cannot retire a connection ID that was not sent",
            )
        super()._handle_retire_connection_id_frame(context, frame_type, buf)


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


class ServerH3Connection(H3Connection):
    """aioquic's HTTP/3 connection, with malformed requests as *stream* errors.

    aioquic validates request fields itself and closes the whole connection on any
    ``MessageError``. RFC 9114 §4.1.2 makes a malformed request a stream error of type
    H3_MESSAGE_ERROR: here that request's stream is reset and stopped, the rest of its
    frames are ignored, and every other stream carries on.
    """

    def __init__(self, quic: QuicConnection, *, enable_webtransport: bool = False) -> None:
        super().__init__(quic, enable_webtransport=enable_webtransport)
        self._rejected: set[int] = set()

    def _receive_request_or_push_data(
        self, stream: H3Stream, data: bytes, stream_ended: bool
    ) -> list[H3Event]:
        if stream.stream_id in self._rejected:
            return []
        return super()._receive_request_or_push_data(stream, data, stream_ended)

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
            return []


def configure_h3_limits(h3: Any, config: Config) -> None:
    """QPACK limits we advertise and enforce (aioquic keeps them private and builds its
    decoder in ``__init__``, before settings are sent)."""
    import pylsqpack

    h3._max_table_capacity = config.qpack_max_table_capacity
    h3._blocked_streams = config.qpack_blocked_streams
    h3._decoder = pylsqpack.Decoder(config.qpack_max_table_capacity, config.qpack_blocked_streams)


__all__ = [
    "ServerH3Connection",
    "ServerQuicConnection",
    "configure_h3_limits",
    "quic_configuration",
]
