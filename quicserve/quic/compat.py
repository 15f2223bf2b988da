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
7. **The connection's send budget.** ``held_bytes()`` is that sum over the whole
   connection, plus DATAGRAM payloads not yet sent: aioquic keeps every byte until it
   is acknowledged, so a peer that grants credit and then stops acknowledging would
   otherwise make it hold (streams x per-stream buffer) bytes.

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
    QuicConnectionId,
    QuicReceiveContext,
)
from aioquic.quic.packet import QuicFrameType, QuicProtocolVersion
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
        """Response bytes aioquic still holds for ``stream_id`` (unsent or unacked);
        0 once the stream is reset, as nothing of it will be sent any more (a send
        waiting for it to drain would wait for ever)."""
        stream = self._streams.get(stream_id)
        if stream is None:
            return 0
        sender = stream.sender
        if sender._reset_error_code is not None:
            return 0
        return int(sender._buffer_stop - sender._buffer_start)

    def can_send(self) -> bool:
        """False once the connection is closing (no new data will leave)."""
        return self._close_event is None and self._state.name not in (
            "CLOSING",
            "DRAINING",
            "TERMINATED",
        )

    # -- 7. the connection's send budget (transport/quic.py waits on it) -----------------

    def held_bytes(self) -> int:
        """Bytes aioquic holds for the peer on the whole connection: every stream's
        unsent or unacknowledged data, and DATAGRAM payloads waiting to be sent."""
        total = 0
        for stream in self._streams.values():
            sender = stream.sender
            total += sender._buffer_stop - sender._buffer_start
        for datagram in self._datagrams_pending:
            total += len(datagram)
        return int(total)

    def datagrams_pending(self) -> bool:
        """Whether DATAGRAM payloads wait for the congestion window."""
        return bool(self._datagrams_pending)

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
