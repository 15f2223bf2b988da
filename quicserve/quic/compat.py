"""Everything that reaches into aioquic's internals, in one file.

aioquic's public API does not cover several things a production server needs, so this
module subclasses :class:`aioquic.quic.connection.QuicConnection` for them. An aioquic
upgrade should touch only this file.

1. **Connection IDs** come from the endpoint (``EndpointCore.new_connection_id``), so
   stateless-reset tokens are derived from the CID (RFC 9000 §10.3.2) and, later, the CID
   can carry a worker id. aioquic draws them from ``os.urandom`` in ``__init__`` and
   ``_replenish_connection_ids``.
2. **Receive credit follows what was consumed, never the highest offset.** aioquic doubles
   a stream's MAX_STREAM_DATA when half of it has arrived, and the connection's MAX_DATA
   when half of *the sum of highest offsets* has, whether or not anyone read the data.
   Here the HTTP/3 layer reports, per stream, how many delivered bytes it and the app
   still hold (``credit(stream_id, held)``); everything else is credited back, to the
   stream (``credited + --quic-stream-window-size``) and to the connection
   (``--quic-max-data + credited``). A stream nobody reads any more (``release_stream``)
   credits everything up to its highest offset, gaps included, and keeps nothing.
   So the bytes a peer can make us hold on one connection never exceed ``--quic-max-data``.
3. **What a stream buffers is what arrived** (RFC 9000 §21.10). aioquic's receiver
   zero-fills the gap up to an out-of-order frame (one byte at the far end of the window
   costs the whole window). :class:`ChunkedStreamReceiver` keeps out-of-order data as the
   chunks that arrived, at most ``--quic-max-fragments`` of them per connection (more
   closes it with H3_EXCESSIVE_LOAD), with aioquic's final-size and duplicate rules.
4. **Streams count until their app call ends.** aioquic lets the peer open a new stream as
   soon as one is finished at the QUIC level, even if the app still serves it (HTTP/3
   "rapid reset"). Streams held by ``hold_stream`` are not re-credited in MAX_STREAMS
   until ``forget_stream``, and a peer that opens more streams than we advertised is
   closed with STREAM_LIMIT_ERROR (aioquic checks only its internal limit).
5. **0-RTT requests.** STREAM frames that arrive in 0-RTT packets are noted, so HTTP/3
   can flag requests received as early data (RFC 8470).
6. **0-RTT permission.** aioquic's server puts 0-RTT permission in every session ticket;
   without ``--quic-0rtt`` ours carry none. And aioquic's server accepts early data from
   any ClientHello that asks for it with a ticket it resumes, whatever the ticket or the
   server allows (``tls.Context._server_handle_hello``); a client could send 0-RTT with a
   ticket that never permitted it, and with ``--quic-secrets-file`` a ticket issued by a
   server with ``--quic-0rtt`` could bring 0-RTT to one without it. So the resumed ticket
   is noted, and when TLS installs the 0-RTT key (before it writes EncryptedExtensions)
   the key is refused and ``early_data_accepted`` cleared unless this server has
   ``--quic-0rtt`` and the ticket carries a ``max_early_data_size``: the client learns
   that early data was rejected and sends it again in 1-RTT (RFC 8446 §4.2.10).
7. **Send-side accounting.** ``buffered(stream_id)`` says how many response bytes aioquic
   holds for a stream (unsent or unacknowledged), for the app's ``send()`` to wait on.
8. **Malformed requests are stream errors** (:class:`ServerH3Connection`), not the
   connection errors aioquic makes of them; it also drops what arrives on released
   streams, reports what it buffers per stream (``held``), and sends GOAWAY
   (``send_goaway``: aioquic keeps its control stream's id private and has no call for it).
9. **Field-section limits** (:class:`ServerH3Connection`, :class:`GuardedDecoder`): our
   SETTINGS carry SETTINGS_MAX_FIELD_SECTION_SIZE and our QPACK limits (and the settings
   of extensions aioquic does not know, given as ``extra_settings``: WebTransport's later
   drafts, from ``protocol/webtransport.py``), oversized HEADERS
   frames are refused at their header, and every field section is bounded by
   ``quic/qpack_guard.py`` before pylsqpack may expand it (the QPACK bomb).
10. **Guards against abusive peers** (the last section of the class): CRYPTO data held
    (RFC 9000 §7.5), ACK frames per packet and ACKs of packets never sent (§21.9, §13.1),
    RETIRE_CONNECTION_ID for CIDs never sent (§19.16); each override says what aioquic
    does and what upstream should change.
11. **The connection's send budget.** ``held_bytes()`` is that sum over the whole
    connection, plus DATAGRAM payloads not yet sent: aioquic keeps every byte until it
    is acknowledged, so a peer that grants credit and then stops acknowledging would
    otherwise make it hold (streams x per-stream buffer) bytes.

12. **Field validation without a Python loop per byte.** aioquic checks every request's
    field names and values byte by byte in Python (``validate_header_name``,
    ``validate_header_value`` in ``aioquic/h3/connection.py``), ~0.5 µs a field, a few
    µs of every request. ``install_fast_field_checks`` replaces those two module
    functions (aioquic calls them through its module globals; there is no per-connection
    hook) with checks that scan in C (``bytes.translate``, ``in``) and hand any field they
    flag to aioquic's own function, which raises the very ``MessageError`` it always did.
    So what is accepted or refused, and the error, stay aioquic's; upstream could do the
    same scan. It is installed when this module is imported.

13. **Sealed session tickets** (``--quic-secrets-file``). aioquic's server makes a ticket's
    label 64 random bytes and pushes its NewSessionTicket onto the wire *before* it tells
    ``session_ticket_handler`` about the ticket (``tls.Context._server_handle_finished``),
    so a label the handler chooses never reaches the client. With ``ticket_sealer`` the
    connection's TLS context becomes a :class:`_SealingContext`, whose
    ``_new_session_ticket`` attribute is a property: when aioquic stores the new
    NewSessionTicket (just before pushing it) the property builds the SessionTicket with
    aioquic's own ``_build_session_ticket`` (the resumption secret from the key schedule,
    which the push does not change) and puts the sealed label into the message. Upstream
    could let the handler return the label.

14. **0-RTT offered.** aioquic reports whether early data was accepted, not whether the
    client offered it, so a rejected 0-RTT attempt (no ``--quic-0rtt``, a ticket already
    used, from an unknown key) is invisible. Every server connection's TLS context is a
    :class:`_ServerContext`, which reads the ClientHello's ``early_data`` extension
    (RFC 8446 §4.2.10) once more before aioquic parses it: ``early_data_offered``. One
    extra parse per handshake, a few µs next to its key exchange. Upstream could keep
    the parsed ClientHello.

Also here: the one place a :class:`QuicConfiguration` is built from :class:`Config`.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable
from typing import Any

import aioquic.h3.connection as _aioquic_h3
import pylsqpack
from aioquic import tls
from aioquic.buffer import Buffer, encode_uint_var  # type: ignore[attr-defined]
from aioquic.h3.connection import (
    ErrorCode,
    FrameType,
    H3Connection,
    H3Stream,
    MessageError,
    ProtocolError,
    Setting,
    encode_frame,
)
from aioquic.h3.events import H3Event
from aioquic.quic import events
from aioquic.quic.connection import (
    CONNECTION_LIMIT_FRAME_CAPACITY,
    Limit,
    QuicConnection,
    QuicConnectionError,
    QuicConnectionId,
    QuicReceiveContext,
    stream_is_client_initiated,
    stream_is_unidirectional,
)
from aioquic.quic.packet import QuicErrorCode, QuicFrameType, QuicStreamFrame
from aioquic.quic.packet_builder import QuicPacketBuilder
from aioquic.quic.recovery import QuicPacketSpace
from aioquic.quic.stream import FinalSizeError, QuicStream, QuicStreamReceiver

from ..config import Config
from .qpack_guard import (
    QpackEncoderError,
    QpackGuard,
    QpackLoadError,
    QpackSectionError,
)

CidFactory = Callable[[], tuple[bytes, bytes]]
TicketSealer = Callable[[tls.SessionTicket], bytes]

# RFC 9000 §19.10: type (1 byte) + stream id + maximum, both up to 8-byte varints.
_MAX_STREAM_DATA_CAPACITY = 1 + 8 + 8


# -- 12. field validation ---------------------------------------------------------------

#: aioquic's own checks, which the fast ones defer to for anything they flag.
aioquic_validate_header_name: Callable[[bytes], None] = _aioquic_h3.validate_header_name
aioquic_validate_header_value: Callable[[bytes, bytes], None] = _aioquic_h3.validate_header_value
# RFC 9113 §8.2.1 as aioquic applies it: a name is visible ASCII without uppercase letters
# (a colon only first: pseudo-fields); a value holds no NUL, LF or CR and neither starts
# nor ends with a space or tab.
_NAME_BYTES = bytes(c for c in range(0x21, 0x7F) if not 0x41 <= c <= 0x5A)
_EDGE_WHITESPACE = (0x20, 0x09)


def validate_header_name(key: bytes) -> None:
    """aioquic's ``validate_header_name``, scanning in C; a flagged name goes to aioquic's
    check, which raises its ``MessageError``."""
    if key.translate(None, _NAME_BYTES) or key.find(b":", 1) >= 0:
        aioquic_validate_header_name(key)


def validate_header_value(key: bytes, value: bytes) -> None:
    """aioquic's ``validate_header_value``, scanning in C; a flagged value goes to aioquic's
    check, which raises its ``MessageError``."""
    if (
        b"\0" in value
        or b"\n" in value
        or b"\r" in value
        or (value and (value[0] in _EDGE_WHITESPACE or value[-1] in _EDGE_WHITESPACE))
    ):
        aioquic_validate_header_value(key, value)


def install_fast_field_checks() -> None:
    """Make aioquic's HTTP/3 layer use the two checks above (idempotent)."""
    _aioquic_h3.validate_header_name = validate_header_name
    _aioquic_h3.validate_header_value = validate_header_value


install_fast_field_checks()


class TooFragmented(Exception):
    """A connection holds more out-of-order chunks than ``--quic-max-fragments``."""


class FragmentBudget:
    """Out-of-order chunks held by all the streams of one connection."""

    __slots__ = ("count", "limit")

    def __init__(self, limit: int) -> None:
        self.count = 0
        self.limit = limit


class ChunkedStreamReceiver(QuicStreamReceiver):
    """The receive side of a peer's stream, holding only bytes that arrived.

    In-order data is delivered at once, as aioquic does. Data beyond a gap is kept as the
    chunks that arrived (sorted, disjoint; a chunk that continues the previous one is
    appended to it), never as a zero-filled buffer up to the highest offset (RFC 9000
    §21.10). Final-size checks (§4.5) and duplicate handling are aioquic's: data below
    the delivered offset, or already held, is ignored.

    ``credited`` is how many bytes of the stream the connection has credited back to the
    peer (see :meth:`ServerQuicConnection.credit`). Once ``released``, nothing is kept and
    the stream is over as soon as its final size is known.
    """

    def __init__(self, stream_id: int, budget: FragmentBudget) -> None:
        super().__init__(stream_id=stream_id, readable=True)
        self._id = stream_id
        self._starts: list[int] = []
        self._chunks: list[bytearray] = []
        self._budget = budget
        self._was_reset = False
        self.credited = 0
        self.released = False

    @property
    def settled(self) -> int:
        """Offset below which every byte was delivered or never will be (a reset)."""
        if self._was_reset and self._final_size is not None:
            return self._final_size
        return self._buffer_start

    @property
    def buffered(self) -> int:
        """Out-of-order bytes held."""
        return sum(len(chunk) for chunk in self._chunks)

    @property
    def fragments(self) -> int:
        """Out-of-order chunks held."""
        return len(self._chunks)

    def handle_frame(self, frame: QuicStreamFrame) -> events.StreamDataReceived | None:
        data = frame.data
        offset = frame.offset
        end = offset + len(data)
        # RFC 9000 §4.5: the final size never changes and no data lies beyond it.
        final_size = self._final_size
        if final_size is not None:
            if end > final_size:
                raise FinalSizeError("Data received beyond final size")
            if frame.fin and end != final_size:
                raise FinalSizeError("Cannot change final size")
        if frame.fin:
            if end < self.highest_offset:
                raise FinalSizeError("Data received beyond final size")
            self._final_size = end
        if end > self.highest_offset:
            self.highest_offset = end
        if self.is_finished:
            return None  # a duplicate, or data after a reset
        if self.released:
            if self._final_size is None:
                return None
            self.is_finished = True
            return events.StreamDataReceived(data=b"", end_stream=True, stream_id=self._id)

        start = self._buffer_start
        out = b""
        if data and end > start:
            if offset < start:
                data = data[start - offset :]
                offset = start
            starts = self._starts
            if offset == start and (not starts or starts[0] >= end):
                # In order, and nothing held overlaps it: deliver as it is.
                self._buffer_start = end
                out = data + self._pull() if starts and starts[0] == end else data
            else:
                self._insert(offset, data)
                if starts[0] == start:
                    out = self._pull()
        end_stream = self._buffer_start == self._final_size
        if end_stream:
            self.is_finished = True
        if out or end_stream:
            return events.StreamDataReceived(data=out, end_stream=end_stream, stream_id=self._id)
        return None

    def handle_reset(
        self, *, final_size: int, error_code: int = QuicErrorCode.NO_ERROR
    ) -> events.StreamReset | None:
        event = super().handle_reset(final_size=final_size, error_code=error_code)
        if event is not None:
            self._was_reset = True
            self._drop()
        return event

    def release(self) -> None:
        """Nobody will read the stream any more: keep nothing from now on."""
        self.released = True
        self._drop()
        if self._final_size is not None:
            self.is_finished = True

    def _drop(self) -> None:
        self._budget.count -= len(self._chunks)
        self._starts.clear()
        self._chunks.clear()

    def _insert(self, offset: int, data: bytes) -> None:
        # Store the parts of [offset, offset + len(data)) that no chunk covers yet.
        starts, chunks, budget = self._starts, self._chunks, self._budget
        end = offset + len(data)
        i = bisect_right(starts, offset)
        position = offset
        if i and starts[i - 1] + len(chunks[i - 1]) > position:
            position = starts[i - 1] + len(chunks[i - 1])
        while position < end:
            stop = starts[i] if i < len(starts) and starts[i] < end else end
            if position < stop:
                piece = data[position - offset : stop - offset]
                if i and starts[i - 1] + len(chunks[i - 1]) == position:
                    chunks[i - 1] += piece  # continues the previous chunk
                else:
                    starts.insert(i, position)
                    chunks.insert(i, bytearray(piece))
                    budget.count += 1
                    i += 1
            if stop == end:
                break
            position = starts[i] + len(chunks[i])  # skip the chunk already held
            i += 1
        if budget.count > budget.limit:
            raise TooFragmented

    def _pull(self) -> bytes:
        # Deliver the chunks that continue the delivered offset.
        starts, chunks = self._starts, self._chunks
        position = self._buffer_start
        count = 0
        while count < len(starts) and starts[count] == position:
            position += len(chunks[count])
            count += 1
        data = b"".join(chunks[:count])
        del starts[:count]
        del chunks[:count]
        self._budget.count -= count
        self._buffer_start = position
        return data


class _ServerContext(tls.Context):
    """aioquic's TLS context that notes whether the ClientHello offered 0-RTT (14.)."""

    early_data_offered = False

    def _server_handle_hello(
        self, input_buf: Buffer, initial_buf: Buffer, handshake_buf: Buffer
    ) -> None:
        start = input_buf.tell()
        try:
            self.early_data_offered = tls.pull_client_hello(input_buf).early_data
        except Exception:
            pass  # aioquic's own parse, next, raises the right alert
        input_buf.seek(start)
        super()._server_handle_hello(input_buf, initial_buf, handshake_buf)


class _SealingContext(_ServerContext):
    """aioquic's TLS context whose NewSessionTicket carries a sealed label (13.)."""

    _ticket_sealer: TicketSealer | None = None

    @property
    def _new_session_ticket(self) -> tls.NewSessionTicket | None:
        ticket: tls.NewSessionTicket | None = self.__dict__.get("_sealed_new_ticket")
        return ticket

    @_new_session_ticket.setter
    def _new_session_ticket(self, message: tls.NewSessionTicket | None) -> None:
        if message is not None and self._ticket_sealer is not None:
            ticket = self._build_session_ticket(message, self.handshake_extensions)
            message.ticket = self._ticket_sealer(ticket)
        self.__dict__["_sealed_new_ticket"] = message


class ServerQuicConnection(QuicConnection):
    """aioquic's connection with quicserve's CIDs, credit policy and 0-RTT marking."""

    def __init__(
        self,
        *,
        cid_factory: CidFactory,
        stream_window: int,
        max_streams: int,
        allow_early_data: bool,
        max_fragments: int = 4096,
        ticket_sealer: TicketSealer | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._allow_early_data = allow_early_data
        self._ticket_sealer = ticket_sealer
        # 6. the ticket TLS resumes, to check its 0-RTT permission.
        self._resumed_ticket: tls.SessionTicket | None = None
        fetcher = self._session_ticket_fetcher
        if fetcher is not None:

            def fetch(label: bytes) -> tls.SessionTicket | None:
                self._resumed_ticket = ticket = fetcher(label)
                return ticket

            self._session_ticket_fetcher = fetch
        self._cid_factory = cid_factory
        # Concurrent request streams the peer may open (initial_max_streams_bidi).
        self._local_max_streams_bidi.value = self._local_max_streams_bidi.sent = max_streams
        # The highest stream count we ever advertised, per direction (uni = True).
        self._advertised = {False: max_streams, True: self._local_max_streams_uni.value}
        self._stream_window = stream_window
        self._max_data_window = self._local_max_data.value
        self._credited = 0
        self._receivers: dict[int, ChunkedStreamReceiver] = {}
        self._fragments = FragmentBudget(max_fragments)
        # Peer streams whose app call runs (hold_stream .. forget_stream).
        self._app_streams: set[int] = set()
        self._held_key = (-1, -1)
        self._held_version = 0
        self._held_discarded = 0
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
        if self._ticket_sealer is not None:
            # 13. the label on the wire is the sealed ticket.
            self.tls.__class__ = _SealingContext
            self.tls._ticket_sealer = self._ticket_sealer  # type: ignore[attr-defined]
        else:
            self.tls.__class__ = _ServerContext  # 14.

    @property
    def early_data_offered(self) -> bool:
        """The client's ClientHello asked for 0-RTT (14.), accepted or not."""
        return bool(getattr(self.tls, "early_data_offered", False))

    def _update_traffic_key(
        self,
        direction: tls.Direction,
        epoch: tls.Epoch,
        cipher_suite: tls.CipherSuite,
        secret: bytes,
    ) -> None:
        if epoch == tls.Epoch.ZERO_RTT and direction == tls.Direction.DECRYPT:
            ticket = self._resumed_ticket
            if not (
                self._allow_early_data
                and ticket is not None
                and ticket.max_early_data_size is not None
            ):
                # 6. early data this server or this ticket does not allow: rejected.
                self.tls.early_data_accepted = False
                return
        super()._update_traffic_key(direction, epoch, cipher_suite, secret)

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

    # -- 2. and 3. receive credit follows consumption; buffers hold what arrived -------

    def credit(self, stream_id: int, held: int) -> None:
        """Of the bytes ``stream_id`` delivered, ``held`` are still held above QUIC (in
        HTTP/3 framing or by the app): credit the rest back to the stream and the
        connection."""
        receiver = self._receivers.get(stream_id)
        if receiver is not None:
            target = receiver.highest_offset if receiver.released else receiver.settled - held
            self._credit(stream_id, receiver, target)

    def release_stream(self, stream_id: int) -> None:
        """Nothing more on ``stream_id`` will be read: drop what it holds and credit all
        of it (gaps included), now and as more arrives."""
        receiver = self._receivers.get(stream_id)
        if receiver is not None and not receiver.released:
            receiver.release()
            self._credit(stream_id, receiver, receiver.highest_offset)

    def is_released(self, stream_id: int) -> bool:
        """``release_stream`` was called for this (still known) stream."""
        receiver = self._receivers.get(stream_id)
        return receiver is not None and receiver.released

    def _credit(self, stream_id: int, receiver: ChunkedStreamReceiver, target: int) -> None:
        if target > receiver.credited:
            self._credited += target - receiver.credited
            receiver.credited = target
            # aioquic checks the peer against .value; _write_connection_limits sends it.
            self._local_max_data.value = self._max_data_window + self._credited
            if not receiver.released and not receiver.is_finished:
                stream = self._streams.get(stream_id)
                if stream is not None:
                    limit = target + self._stream_window
                    if limit > stream.max_stream_data_local:
                        stream.max_stream_data_local = limit
        if receiver.is_finished and receiver.credited >= receiver.highest_offset:
            del self._receivers[stream_id]  # nothing more can arrive or be credited

    def _own_receiver(self, stream: QuicStream) -> None:
        assert stream.stream_id is not None
        receiver = ChunkedStreamReceiver(stream.stream_id, self._fragments)
        stream.receiver = receiver
        self._receivers[stream.stream_id] = receiver

    def _get_or_create_stream(self, frame_type: int, stream_id: int) -> QuicStream:
        stream = self._streams.get(stream_id)
        if stream is not None:
            return stream
        if stream_is_client_initiated(stream_id) == self._is_client:
            return super()._get_or_create_stream(frame_type, stream_id)  # aioquic's errors
        limit = self._stream_limit(stream_id)
        first = limit.used
        if (
            stream_id // 4 >= first
            and stream_id // 4 >= self._advertised[stream_is_unidirectional(stream_id)]
        ):
            # RFC 9000 §4.6: a stream beyond the limit we advertised. aioquic compares
            # with its own limit, which runs ahead of ours while app calls hold streams.
            raise QuicConnectionError(
                error_code=QuicErrorCode.STREAM_LIMIT_ERROR,
                frame_type=frame_type,
                reason_phrase="Too many streams open",
            )
        stream = super()._get_or_create_stream(frame_type, stream_id)
        for new_id in range(first * 4 + stream_id % 4, stream_id + 4, 4):
            self._own_receiver(self._streams[new_id])
        return stream

    def _get_or_create_stream_for_send(self, stream_id: int) -> QuicStream:
        known = stream_id in self._streams
        stream = super()._get_or_create_stream_for_send(stream_id)
        if not known and not stream_is_unidirectional(stream_id):
            self._own_receiver(stream)  # our bidirectional streams receive too
        return stream

    def _handle_stream_frame(
        self, context: QuicReceiveContext, frame_type: int, buf: Buffer
    ) -> None:
        position = buf.tell()
        stream_id = buf.pull_uint_var()
        buf.seek(position)
        if context.epoch == tls.Epoch.ZERO_RTT:
            self.early_streams.add(stream_id)  # 5. 0-RTT
        try:
            super()._handle_stream_frame(context, frame_type, buf)
        except TooFragmented:
            self.close(
                error_code=ErrorCode.H3_EXCESSIVE_LOAD,
                reason_phrase="stream data too fragmented",
            )
            return
        self._credit_released(stream_id)

    def _handle_reset_stream_frame(
        self, context: QuicReceiveContext, frame_type: int, buf: Buffer
    ) -> None:
        position = buf.tell()
        stream_id = buf.pull_uint_var()
        buf.seek(position)
        super()._handle_reset_stream_frame(context, frame_type, buf)
        self._credit_released(stream_id)

    def _credit_released(self, stream_id: int) -> None:
        receiver = self._receivers.get(stream_id)
        if receiver is not None and receiver.released:
            self._credit(stream_id, receiver, receiver.highest_offset)

    def _write_stream_limits(
        self, builder: QuicPacketBuilder, space: QuicPacketSpace, stream: QuicStream
    ) -> None:
        # Same frame as aioquic writes, without its "double when half full" growth:
        # the limit only moves in _credit().
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

    def stop_stream(self, stream_id: int, error_code: int) -> None:
        """STOP_SENDING, unless the stream's receiving part is already over. aioquic
        raises ValueError for a stream it has discarded, which a client makes happen at
        will (RESET_STREAM + STOP_SENDING, then wait for the app call to end)."""
        stream = self._streams.get(stream_id)
        if stream is not None and not stream.receiver.is_finished:
            super().stop_stream(stream_id, error_code)

    def can_write(self, stream_id: int) -> bool:
        """Whether our sending part of ``stream_id`` still takes data: not finished, not
        reset (by us, or by aioquic in answer to the peer's STOP_SENDING, RFC 9000 §3.5),
        not discarded. aioquic raises on a write to any of those."""
        stream = self._streams.get(stream_id)
        if stream is None:
            return not self._stream_is_discarded(stream_id)
        sender = stream.sender
        return sender._reset_error_code is None and sender._buffer_fin is None

    def reset_stream(self, stream_id: int, error_code: int) -> None:
        """RESET_STREAM, unless aioquic has discarded the stream (both sides over)."""
        if not self._stream_is_discarded(stream_id):
            super().reset_stream(stream_id, error_code)

    # -- 4. streams count until their app call ends ------------------------------------

    def hold_stream(self, stream_id: int) -> None:
        """An app call serves ``stream_id``: it counts against MAX_STREAMS until
        ``forget_stream``, even once QUIC is done with it."""
        self._app_streams.add(stream_id)
        self._held_version += 1

    def forget_stream(self, stream_id: int) -> None:
        """The stream's app call is over: release it, drop per-stream bookkeeping, and
        let the peer open another stream in its place."""
        self.release_stream(stream_id)
        if stream_id in self._app_streams:
            self._app_streams.discard(stream_id)
            self._held_version += 1
        self.early_streams.discard(stream_id)

    def _streams_held(self) -> int:
        # Held streams that aioquic discarded (and so already re-credited in .value).
        # aioquic raises .value by one per discard, so the key changes whenever this can.
        key = (self._local_max_streams_bidi.value, self._held_version)
        if key != self._held_key:
            self._held_key = key
            streams = self._streams
            self._held_discarded = sum(1 for s in self._app_streams if s not in streams)
        return self._held_discarded

    def _write_connection_limits(self, builder: QuicPacketBuilder, space: QuicPacketSpace) -> None:
        # MAX_DATA: the window plus what was credited (never "double when half used").
        # Sent once the peer has less than half a window left, or to repeat a lost one.
        max_data = self._local_max_data
        if max_data.value != max_data.sent and (
            (max_data.sent - max_data.used) * 2 <= self._max_data_window
        ):
            self._write_limit(builder, max_data, max_data.value)
        # MAX_STREAMS: aioquic's count minus the streams app calls still hold, batched
        # as aioquic does (once the peer has fewer left than the update grants).
        for limit, unidirectional in (
            (self._local_max_streams_bidi, False),
            (self._local_max_streams_uni, True),
        ):
            value = limit.value if unidirectional else limit.value - self._streams_held()
            if value == limit.sent or limit.sent - limit.used >= value - limit.sent:
                continue
            self._write_limit(builder, limit, value)
            if value > self._advertised[unidirectional]:
                self._advertised[unidirectional] = value

    def _write_limit(self, builder: QuicPacketBuilder, limit: Limit, value: int) -> None:
        buf = builder.start_frame(
            limit.frame_type,
            capacity=CONNECTION_LIMIT_FRAME_CAPACITY,
            handler=self._on_connection_limit_delivery,
            handler_args=(limit,),
        )
        buf.push_uint_var(value)
        limit.sent = value
        frames = builder.quic_logger_frames
        if self._quic_logger is not None and frames is not None:
            frames.append(
                self._quic_logger.encode_connection_limit_frame(
                    frame_type=limit.frame_type, maximum=value
                )
            )

    # -- 7. send accounting -------------------------------------------------------------

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

    # -- 11. the connection's send budget (connection/quic.py waits on it) ----------------

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

    # -- 10. guards against abusive peers ------------------------------------------------
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

    def _handle_ack_frame(self, context: QuicReceiveContext, frame_type: int, buf: Buffer) -> None:
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
      stream is reset, stopped and released, the rest of its frames are ignored, and
      every other stream carries on; ``message_errors`` tells the HTTP/3 protocol, whose
      app call (if it has one) must learn of the reset.
    * Field sections are bounded (RFC 9114 §4.2.2, §7.2.4.1): SETTINGS carry
      SETTINGS_MAX_FIELD_SECTION_SIZE = ``max_header_bytes`` and our QPACK limits
      (aioquic sends its own defaults from ``__init__``); a HEADERS frame longer than
      twice that, or a section the guard bounds above twice that
      (:class:`GuardedDecoder`), is a connection error of type H3_EXCESSIVE_LOAD before it
      is buffered or decoded. Whether a decoded section is within the limit is the HTTP/3
      protocol's call (431).

    Data on a released stream (``ServerQuicConnection.release_stream``) is dropped before
    aioquic buffers any of it; ``held(stream_id)`` is what aioquic buffers for a stream
    (a partial frame, or a HEADERS block waiting on the QPACK encoder stream).
    """

    def __init__(
        self,
        quic: ServerQuicConnection,
        config: Config,
        *,
        enable_webtransport: bool = False,
        extra_settings: dict[int, int] | None = None,
    ) -> None:
        # Read by _get_local_settings, which H3Connection.__init__ calls.
        self._limits = config
        self._extra_settings = extra_settings or {}
        super().__init__(quic, enable_webtransport=enable_webtransport)
        self._server_quic = quic
        #: Streams reset here for a malformed message, with the error code, for the HTTP/3
        #: protocol to take (a request already handed to the app must learn it).
        self.message_errors: list[tuple[int, int]] = []
        self._refuse_above = 2 * config.max_header_bytes
        # Streams whose request was malformed (reset here), until the peer's side ends.
        # Not the same as released: a stream whose FIN came in the same packet is already
        # forgotten by the QUIC layer, while its later frames are still being parsed.
        self._rejected: set[int] = set()
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
        # Settings of extensions aioquic does not know (WebTransport's later drafts, from
        # protocol/webtransport.py).
        settings.update(self._extra_settings)
        return settings

    def held(self, stream_id: int) -> int:
        """Bytes of ``stream_id`` aioquic's HTTP/3 layer holds, not yet parsed."""
        stream = self._stream.get(stream_id)
        if stream is None:
            return 0
        blocked = (stream.blocked_frame_size or 0) if stream.blocked else 0
        return len(stream.buffer) + blocked

    def forget(self, stream_id: int) -> None:
        """The app is done with the request stream: stop reading it. RFC 9204 §4.4.2:
        abandoning a stream's field sections is a Stream Cancellation (aioquic sends it
        as for a reset)."""
        self._rejected.discard(stream_id)
        stream = self._stream.get(stream_id)
        if stream is None:
            return
        if not stream.receiving_ended or stream.blocked:
            super()._receive_stream_reset(stream_id)
        self._stream.pop(stream_id, None)

    def sending_done(self, stream_id: int) -> None:
        """Our side of a WebTransport stream is over (FIN or reset, written raw on QUIC,
        which aioquic's HTTP/3 layer never sees): the stream is forgotten here once the
        peer's side is over too, as aioquic does for a request. Without this every
        bidirectional WebTransport stream stays in aioquic's table for good."""
        stream = self._stream.get(stream_id)
        if stream is not None:
            stream.sending_ended = True
            if stream.is_ended():
                del self._stream[stream_id]

    def drop_webtransport_stream(self, stream_id: int) -> None:
        """Forget a WebTransport stream whose session is over (it carries no field
        sections, so unlike ``forget`` no QPACK Stream Cancellation is sent)."""
        self._stream.pop(stream_id, None)

    def send_goaway(self, first_refused: int) -> None:
        """Send a GOAWAY frame (RFC 9114 §5.2) on our control stream: requests from stream
        ``first_refused`` on will not be processed. aioquic has no public call for it (its
        control stream id is internal)."""
        control = self._local_control_stream_id
        if control is not None:
            frame = encode_frame(FrameType.GOAWAY, encode_uint_var(first_refused))
            self._server_quic.send_stream_data(control, frame)

    def reject(self, stream_id: int) -> None:
        """Ignore whatever else arrives on ``stream_id`` (the caller reset it): its data is
        dropped and credited (``release_stream``) and nothing more is sent on it."""
        stream = self._stream.get(stream_id)
        if stream is not None:
            stream.sending_ended = True
        self._server_quic.release_stream(stream_id)

    def create_webtransport_stream(self, session_id: int, is_unidirectional: bool = False) -> int:
        """A server-initiated WebTransport stream of ``session_id``; its id. On a
        bidirectional one, aioquic would parse what the peer sends back as HTTP/3 frames:
        the peer's side carries no signal (it is raw session data from its first byte,
        draft-ietf-webtrans-http3-15 §4.3), so the stream is marked as a WebTransport
        stream of the session before anything arrives."""
        stream_id = super().create_webtransport_stream(session_id, is_unidirectional)
        if not is_unidirectional:
            with self._get_or_create_stream(stream_id) as stream:
                stream.frame_type = FrameType.WEBTRANSPORT_STREAM
                stream.session_id = session_id
        return stream_id

    def _receive_stream_data(self, event: events.StreamDataReceived) -> list[H3Event]:
        stream_id = event.stream_id
        if not self._server_quic.is_released(stream_id) and stream_id not in self._rejected:
            h3_events = super()._receive_stream_data(event)
            if stream_id in self._rejected and event.end_stream:
                # Rejected in this batch and nothing more comes in: forget it.
                self._rejected.discard(stream_id)
                self._stream.pop(stream_id, None)
            return h3_events
        if event.end_stream:
            self._rejected.discard(stream_id)
        stream = self._stream.get(event.stream_id)
        if stream is not None:
            stream.buffer = b""
            if event.end_stream:
                stream.receiving_ended = True
                if stream.is_ended():
                    del self._stream[event.stream_id]
        return []

    def _receive_stream_reset(self, stream_id: int) -> None:
        self._rejected.discard(stream_id)
        if self._server_quic.is_released(stream_id) and stream_id not in self._stream:
            return  # forgotten: nothing left to clean, nothing to answer
        super()._receive_stream_reset(stream_id)

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
        if self._server_quic.is_released(stream.stream_id) or stream.stream_id in self._rejected:
            return []
        return super()._receive_request_or_push_data(stream, data, stream_ended)

    def _handle_request_or_push_frame(
        self, frame_type: int, frame_data: bytes | None, stream: H3Stream, stream_ended: bool
    ) -> list[H3Event]:
        if self._server_quic.is_released(stream.stream_id) or stream.stream_id in self._rejected:
            return []  # frames of the same batch after the malformed HEADERS
        try:
            return super()._handle_request_or_push_frame(
                frame_type, frame_data, stream, stream_ended
            )
        except MessageError as exc:
            if self._is_client or stream.push_id is not None:
                raise
            quic = self._server_quic
            quic.reset_stream(stream.stream_id, exc.error_code)
            quic.stop_stream(stream.stream_id, exc.error_code)
            quic.release_stream(stream.stream_id)
            stream.sending_ended = True  # reset: nothing more is sent on it
            self._rejected.add(stream.stream_id)
            self.message_errors.append((stream.stream_id, exc.error_code))
            return []


__all__ = [
    "ChunkedStreamReceiver",
    "ExcessiveLoad",
    "FragmentBudget",
    "GuardedDecoder",
    "ServerH3Connection",
    "ServerQuicConnection",
    "aioquic_validate_header_name",
    "aioquic_validate_header_value",
    "install_fast_field_checks",
    "validate_header_name",
    "validate_header_value",
]
