"""HTTP/3 server protocol: one QUIC connection's aioquic.h3 events in, neutral events out.

Sans-IO like the other protocol modules, but fed datagrams instead of bytes: it
implements :class:`~quicserve.protocol.base.DatagramProtocol` (the QUIC driver calls
``receive_datagram(data, addr, now)``, drains ``next_event()``, sends
``datagrams_to_send(now)`` and honours ``get_timer()``/``handle_timer(now)``). The stream
side is :class:`~quicserve.protocol.base.StreamProtocol`, the same as HTTP/1.1's and
HTTP/2's (``send_response``, ``send_data`` ...), so
:class:`~quicserve.streams.http.HTTPStream` serves HTTP/3 unchanged; WebTransport sessions
also use its :class:`~quicserve.protocol.base.WebTransportProtocol` methods.

Rules:

* Request headers are checked by the rules HTTP/2 shares (``protocol/fields.py``: RFC 9114
  §4.2-§4.3), after aioquic's own checks; a malformed request resets only its own stream
  with H3_MESSAGE_ERROR (§4.1.2), whichever of the two finds it.
* QUIC receive credit (MAX_STREAM_DATA and MAX_DATA) is given back only for bytes nobody
  holds any more: after each batch of QUIC events and on each ``ack_body``, every stream
  reports what aioquic's HTTP/3 layer still buffers plus the body bytes handed to the app
  and not yet consumed (``ServerQuicConnection.credit``); frame overhead and data dropped
  here are credited at once. A stream whose app call is over is released (its leftovers,
  gaps included, are credited, and what arrives later is dropped). So one connection holds
  at most ``--quic-max-data`` bytes the peer sent, each stream ``--quic-stream-window-size``.
* A request stream counts against ``--quic-max-streams`` until its app call ends, even if
  the client reset it at once (HTTP/3 "rapid reset"): MAX_STREAMS grows only at
  ``stream_done``. A client that cancels (RESET_STREAM or STOP_SENDING before the response
  ended) more than ``--quic-max-cancelled-requests`` requests, and more than it let
  complete, is closed with H3_EXCESSIVE_LOAD (RFC 9114 §8.1), as HTTP/2 answers the same
  abuse with ENHANCE_YOUR_CALM.
* Response bytes held by QUIC for a stream are reported by ``buffered_amount`` for the
  app's ``send()`` to wait on.
* A field section is at most ``Config.max_header_bytes`` (name + value + 32 per line, RFC
  9114 §4.2.2), advertised as SETTINGS_MAX_FIELD_SECTION_SIZE. A larger request head gets
  431 and the connection carries on; larger trailers reset their stream with
  H3_EXCESSIVE_LOAD. Sections bounded far above the limit are refused before they are
  decoded (``quic/compat.py`` with ``quic/qpack_guard.py``: the QPACK bomb).
* A request whose STREAM frames arrived in 0-RTT is flagged ``early_data`` (RFC 8470).
* After the peer's STOP_SENDING on a request stream (QUIC resets our side, RFC 9000 §3.5)
  the response methods are silent no-ops, as on HTTP/2; a request whose STOP_SENDING came
  before its HEADERS is cancelled and never reaches the app.
* Graceful shutdown sends an HTTP/3 GOAWAY (§5.2), lets open requests finish, then closes
  the connection with H3_NO_ERROR.
* CID changes are reported through ``issued_cids``/``retired_cids`` for the endpoint's
  routing table.
* WebTransport (``--webtransport``): SETTINGS advertise every dialect
  (``protocol/webtransport.py`` says which and why); an extended CONNECT with
  ``:protocol`` ``webtransport`` or ``webtransport-h3`` gets the dialect its client chose,
  is refused with H3_REQUEST_REJECTED past ``--webtransport-max-sessions`` (the connection
  carries on), and its CONNECT stream's DATA is capsules, read here and never handed to the
  app. Session flow control is kept here (``SessionState``): a client over its limits has
  its session aborted (the CONNECT stream reset with the error code the draft names), and
  WT_MAX_DATA / WT_MAX_STREAMS follow what the app received. A peer's WT_CLOSE_SESSION
  ends our side of the CONNECT stream at once (d15 §6) and is reported as
  ``SessionUpdated``, as is new send credit. A client's RESET_STREAM or STOP_SENDING on a
  session's stream is reported as ``SessionStreamReset`` with the WebTransport code the
  HTTP/3 code carries (8-bit for draft-02, d02 §4.3; 32-bit later, d15 §4.4); writes after
  a STOP_SENDING are dropped. Streams we opened and left unfinished are reset with
  WT_SESSION_GONE when their session ends (d15 §6). Graceful shutdown sends
  WT_DRAIN_SESSION to sessions with capsules (``drain_session``; d15 §4.7) besides the
  GOAWAY.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from aioquic.h3.connection import ErrorCode
from aioquic.h3.events import (
    DatagramReceived,
    DataReceived,
    HeadersReceived,
    WebTransportStreamDataReceived,
)
from aioquic.quic.events import (
    ConnectionIdIssued,
    ConnectionIdRetired,
    ConnectionTerminated,
    HandshakeCompleted,
    StopSendingReceived,
    StreamDataReceived,
)
from aioquic.quic.events import StreamReset as QuicStreamReset

from ..config import Config
from ..events import (
    BodyEnded,
    BodyReceived,
    ConnectionClosed,
    Headers,
    RequestReceived,
    SessionDatagramReceived,
    SessionStreamDataReceived,
    SessionStreamReset,
    SessionUpdated,
    StreamEvent,
    StreamReset,
)
from ..quic.compat import ServerH3Connection, ServerQuicConnection
from .fields import (
    DROPPED_RESPONSE_FIELDS,
    Malformed,
    decode_token,
    field_section_size,
    parse_request_fields,
)
from .webtransport import (
    DRAFT14,
    DRAFT15,
    MAX_CAPSULE,
    UPGRADE_TOKENS,
    WT_BUFFERED_STREAM_REJECTED,
    WT_SESSION_GONE,
    SessionError,
    SessionState,
    StreamRefused,
    choose_dialect,
    close_session_capsule,
    server_settings,
    stream_error_from_h3,
    stream_error_to_h3,
)

_STATUS = {status: str(status).encode() for status in range(100, 600)}


class H3Protocol:
    """HTTP/3 on one :class:`ServerQuicConnection`."""

    http_version = "3"

    def __init__(self, quic: ServerQuicConnection, config: Config) -> None:
        self.quic = quic
        self._config = config
        extra = (
            server_settings(
                config.webtransport_max_sessions,
                config.webtransport_max_data,
                config.webtransport_max_streams,
            )
            if config.webtransport
            else None
        )
        self._h3 = ServerH3Connection(
            quic, config, enable_webtransport=config.webtransport, extra_settings=extra
        )
        # WebTransport: CONNECT stream id -> its session's state; a session's stream ->
        # its session (the client's streams, until they are closed and consumed).
        self._wt: dict[int, SessionState] = {}
        self._wt_streams: dict[int, int] = {}
        # WebTransport CONNECTs that came before the client's SETTINGS (d15 §3.1: not
        # processed until then): stream id -> the request, its end, and its stashed DATA.
        self._deferred: dict[int, tuple[RequestReceived, bool, bytearray]] = {}
        self._events: deque[StreamEvent] = deque()
        # stream id -> True once the request body has ended.
        self._requests: dict[int, bool] = {}
        # Request streams whose response has ended (FIN sent).
        self._responded: set[int] = set()
        # stream id -> body bytes handed to the app and not yet consumed (ack_body).
        self._unacked: dict[int, int] = {}
        # Requests the client cancelled before their response ended, and how many it let
        # complete (the H3_EXCESSIVE_LOAD rule).
        self._cancelled: set[int] = set()
        self._cancel_count = 0
        self._completed = 0
        # Request streams the peer sent STOP_SENDING on: QUIC has reset our side already,
        # so sends on them are dropped (aioquic would raise).
        self._stopped: set[int] = set()
        self._highest_request = -4
        self._goaway_sent = False
        self._terminated = False
        self.handshake_complete = False
        #: From the handshake (for metrics): resumed with a ticket; 0-RTT accepted.
        self.session_resumed = False
        self.early_data_accepted = False
        #: The client offered 0-RTT and it was refused (it sends it again in 1-RTT).
        self.early_data_rejected = False
        self.issued_cids: list[bytes] = []
        self.retired_cids: list[bytes] = []

    # -- the QUIC side ------------------------------------------------------------------

    def receive_datagram(self, data: bytes, addr: Any, now: float) -> None:
        """Feed one UDP datagram from ``addr``."""
        self.quic.receive_datagram(data, addr, now)
        self._process_quic_events()

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Any]]:
        """Datagrams QUIC wants sent now, with their destination."""
        return self.quic.datagrams_to_send(now)

    def get_timer(self) -> float | None:
        """QUIC's next deadline (loss detection, ACK delay, idle)."""
        return self.quic.get_timer()

    def handle_timer(self, now: float) -> None:
        """A deadline passed."""
        self.quic.handle_timer(now)
        self._process_quic_events()

    def _process_quic_events(self) -> None:
        quic = self.quic
        h3 = self._h3
        # Streams whose held bytes may have changed: credited once the batch is processed
        # (before that, the receiver has delivered bytes h3 has not seen yet).
        touched: set[int] = set()
        while True:
            # Any: dispatch is on type(event), which mypy does not narrow.
            event: Any = quic.next_event()
            if event is None:
                break
            cls = type(event)
            if cls is StreamDataReceived:
                touched.add(event.stream_id)
                h3_event: Any
                for h3_event in h3.handle_event(event):
                    touched.add(h3_event.stream_id)
                    self._on_h3_event(h3_event)
                if h3.message_errors:
                    self._on_message_errors()
            elif cls is ConnectionIdIssued:
                self.issued_cids.append(event.connection_id)
            elif cls is ConnectionIdRetired:
                self.retired_cids.append(event.connection_id)
            elif cls is HandshakeCompleted:
                self.handshake_complete = True
                self.session_resumed = event.session_resumed
                self.early_data_accepted = event.early_data_accepted
                self.early_data_rejected = (
                    not event.early_data_accepted and self.quic.early_data_offered
                )
            elif cls is QuicStreamReset or cls is StopSendingReceived:
                h3.handle_event(event)
                touched.add(event.stream_id)
                wt_session = self._wt_session_of(event.stream_id) if self._wt else None
                if cls is StopSendingReceived and event.stream_id % 4 == 0 and wt_session is None:
                    # Also before its request arrived: aioquic puts STOP_SENDING ahead of
                    # STREAM frames in a packet.
                    self._stopped.add(event.stream_id)
                if event.stream_id in self._requests:
                    self._events.append(StreamReset(event.stream_id, event.error_code))
                    self._on_cancel(event.stream_id)
                elif wt_session is not None:
                    self._wt_stream_reset(
                        wt_session, event.stream_id, event.error_code, cls is StopSendingReceived
                    )
                elif cls is QuicStreamReset and event.stream_id in self._deferred:
                    # Cancelled before it was processed: it never reaches the app.
                    del self._deferred[event.stream_id]
                    self._unacked.pop(event.stream_id, None)
                    self._h3.forget(event.stream_id)
                    self.quic.forget_stream(event.stream_id)
            elif cls is ConnectionTerminated:
                self._terminated = True
                for stream_id in self._requests:
                    self._events.append(StreamReset(stream_id, event.error_code))
                self._events.append(ConnectionClosed(event.error_code, event.reason_phrase))
            else:
                # QUIC DATAGRAM frames become HTTP Datagrams (WebTransport); other
                # events produce nothing at the HTTP/3 layer.
                for h3_event in h3.handle_event(event):
                    self._on_h3_event(h3_event)
        if self._deferred and h3.received_settings is not None and not self._terminated:
            touched.update(self._deferred)
            self._release_deferred()
        if not self._terminated:
            unacked = self._unacked
            for stream_id in touched:
                quic.credit(stream_id, h3.held(stream_id) + unacked.get(stream_id, 0))

    def _on_cancel(self, stream_id: int) -> None:
        # "Rapid reset": the stream still counts until its app call ends (MAX_STREAMS is
        # re-issued only then), so this only bounds the churn of short-lived app calls.
        if stream_id in self._responded or stream_id in self._cancelled:
            return
        self._cancelled.add(stream_id)
        self._cancel_count += 1
        limit = self._config.quic_max_cancelled_requests
        if limit and self._cancel_count > limit and self._cancel_count > self._completed:
            self.quic.close(
                error_code=ErrorCode.H3_EXCESSIVE_LOAD, reason_phrase="too many requests cancelled"
            )

    def _hand(self, stream_id: int, event: StreamEvent, size: int) -> None:
        # Body bytes go to the app; they stay uncredited until it consumes them.
        if size:
            self._unacked[stream_id] = self._unacked.get(stream_id, 0) + size
        self._events.append(event)

    def _refuse(self, stream_id: int, error_code: int) -> None:
        # Reset and stop a request no app call will serve; drop what else arrives on it.
        self.quic.reset_stream(stream_id, error_code)
        self.quic.stop_stream(stream_id, error_code)
        self.quic.release_stream(stream_id)
        self._h3.forget(stream_id)

    def _on_message_errors(self) -> None:
        # A malformed message (e.g. trailers with a pseudo-header) on a request the app
        # already has: its stream was reset and stopped (RFC 9114 §4.1.2); the app sees a
        # reset and sends nothing more, and stream_done must not stop the stream again.
        for stream_id, code in self._h3.message_errors:
            if stream_id in self._requests:
                self._requests[stream_id] = True
                self._events.append(StreamReset(stream_id, code))
        self._h3.message_errors.clear()

    def _on_h3_event(self, event: Any) -> None:
        cls = type(event)
        stream_id = event.stream_id
        if cls is DataReceived:
            deferred = self._deferred.get(stream_id)
            if deferred is not None:
                self._stash(stream_id, deferred, event.data, event.stream_ended)
                return
            if self._requests.get(stream_id, True):
                # Not a request, or its body already ended: after trailers only the FIN
                # (and reserved frames) may follow (RFC 9114 §4.1), which must not end the
                # body a second time.
                return
            state = self._wt.get(stream_id)
            if state is not None:
                # The CONNECT stream carries capsules (RFC 9297 §3.2); they are ours, not
                # the app's, and credited at once.
                if event.data:
                    self._feed_capsules(stream_id, state, event.data)
                    if self._requests.get(stream_id, True):
                        return  # aborted
            elif event.data:
                self._hand(stream_id, BodyReceived(stream_id, event.data), len(event.data))
            if event.stream_ended:
                self._requests[stream_id] = True
                self._events.append(BodyEnded(stream_id))
        elif cls is WebTransportStreamDataReceived:
            session = self._wt.get(event.session_id)
            if (
                session is not None
                and event.session_id in self._requests
                and event.session_id not in self._stopped
            ):
                try:
                    session.stream_data(stream_id, len(event.data), event.stream_ended)
                except SessionError as exc:
                    self._abort_session(event.session_id, exc.code)
                    self._drop_stream(stream_id)
                    return
                except StreamRefused:
                    self._drop_stream(stream_id)
                    if stream_id & 2 == 0:  # bidirectional: our side too
                        self.quic.reset_stream(stream_id, WT_BUFFERED_STREAM_REJECTED)
                    return
                self._wt_streams[stream_id] = event.session_id
                self._hand(
                    stream_id,
                    SessionStreamDataReceived(
                        event.session_id, stream_id, event.data, event.stream_ended
                    ),
                    len(event.data),
                )
            else:
                self._drop_stream(stream_id)
        elif cls is DatagramReceived:
            if stream_id in self._requests:
                self._events.append(SessionDatagramReceived(stream_id, event.data))
        elif cls is HeadersReceived:
            too_large = field_section_size(event.headers) > self._config.max_header_bytes
            if stream_id in self._requests:
                if too_large:
                    # The request is the app's already: no 431, the stream is reset
                    # (RFC 9114 §4.2.2 bounds trailers the same way).
                    self._h3.reject(stream_id)
                    self.quic.reset_stream(stream_id, ErrorCode.H3_EXCESSIVE_LOAD)
                    self.quic.stop_stream(stream_id, ErrorCode.H3_EXCESSIVE_LOAD)
                    # Stopped already: stream_done must not send a second STOP_SENDING
                    # (with H3_NO_ERROR) for it.
                    self._requests[stream_id] = True
                    self._events.append(StreamReset(stream_id, ErrorCode.H3_EXCESSIVE_LOAD))
                    return
                # A second HEADERS frame carries trailers and must end the stream.
                if self._requests[stream_id]:
                    return  # the body has ended already: one end only
                self._requests[stream_id] = True
                trailers = [(n, v) for n, v in event.headers if not n.startswith(b":")]
                self._events.append(BodyEnded(stream_id, trailers))
                return
            if stream_id in self._stopped:
                # The client refused the response before sending the request (RFC 9000
                # §3.5 reset our side already): it cancelled the request, so it is not
                # served (RFC 9114 §4.1.1).
                # (No reset: QUIC reset our side in answer to the STOP_SENDING.)
                self._stopped.discard(stream_id)
                self.quic.stop_stream(stream_id, ErrorCode.H3_REQUEST_CANCELLED)
                self.quic.release_stream(stream_id)
                self._h3.forget(stream_id)
                return
            if self._goaway_sent:
                # RFC 9114 §5.2: requests after our GOAWAY are refused.
                self._refuse(stream_id, ErrorCode.H3_REQUEST_REJECTED)
                return
            if too_large:
                # RFC 9114 §4.2.2: a larger section than we accept gets 431 (RFC 6585 §5);
                # the connection carries on. Anything after the HEADERS is ignored.
                self._h3.send_headers(stream_id, [(b":status", b"431")], end_stream=True)
                if not event.stream_ended:
                    self.quic.stop_stream(stream_id, ErrorCode.H3_NO_ERROR)  # §4.1.1
                self.quic.release_stream(stream_id)
                self._h3.forget(stream_id)
                return
            try:
                request = self._parse_request(stream_id, event.headers)
            except Malformed:
                self._refuse(stream_id, ErrorCode.H3_MESSAGE_ERROR)
                return
            if (
                self._config.webtransport
                and request.method == b"CONNECT"
                and request.protocol in UPGRADE_TOKENS
            ):
                if self._h3.received_settings is None:
                    self._defer(stream_id, request, bool(event.stream_ended))
                    return
                if not self._open_session(stream_id, request):
                    return
            self._requests[stream_id] = bool(event.stream_ended)
            self.quic.hold_stream(stream_id)
            self._highest_request = max(self._highest_request, stream_id)
            self._events.append(request)
            if event.stream_ended:
                self._events.append(BodyEnded(stream_id))

    # -- WebTransport sessions (protocol/webtransport.py) --------------------------------

    def _open_session(self, stream_id: int, request: RequestReceived) -> bool:
        # The dialect the client chose; refuse the session past the limit (d14 §5.2: reset
        # with H3_REQUEST_REJECTED, never close the connection).
        config = self._config
        settings = self._h3.received_settings
        dialect = choose_dialect(request.protocol, settings, request.headers)
        if dialect is None:
            return True
        state = SessionState(
            dialect, settings, config.webtransport_max_data, config.webtransport_max_streams
        )
        limit = config.webtransport_max_sessions
        if dialect in (DRAFT14, DRAFT15) and not state.flow_control:
            limit = 1  # d14/d15 §5.1: one session without flow control
        if len(self._wt) >= limit:
            self._refuse(stream_id, ErrorCode.H3_REQUEST_REJECTED)
            return False
        self._wt[stream_id] = state
        return True

    def _defer(self, stream_id: int, request: RequestReceived, ended: bool) -> None:
        # d15 §3.1: no WebTransport request is processed before the client's SETTINGS (its
        # dialect and its flow-control limits are in them). At most as many wait as there
        # may be sessions; more are refused as over the limit.
        if len(self._deferred) >= self._config.webtransport_max_sessions:
            self._refuse(stream_id, ErrorCode.H3_REQUEST_REJECTED)
            return
        self._deferred[stream_id] = (request, ended, bytearray())
        self.quic.hold_stream(stream_id)
        self._highest_request = max(self._highest_request, stream_id)

    def _stash(
        self,
        stream_id: int,
        deferred: tuple[RequestReceived, bool, bytearray],
        data: bytes,
        ended: bool,
    ) -> None:
        # DATA (capsules) of a deferred CONNECT: held, and not credited, until SETTINGS
        # come; at most one capsule's worth (MAX_CAPSULE) per request.
        request, was_ended, stash = deferred
        stash += data
        if data:
            self._unacked[stream_id] = self._unacked.get(stream_id, 0) + len(data)
        if len(stash) > MAX_CAPSULE:
            del self._deferred[stream_id]
            self._unacked.pop(stream_id, None)
            self._refuse(stream_id, ErrorCode.H3_EXCESSIVE_LOAD)
            self.quic.forget_stream(stream_id)
            return
        if ended and not was_ended:
            self._deferred[stream_id] = (request, True, stash)

    def _release_deferred(self) -> None:
        # The client's SETTINGS came: its deferred CONNECTs are processed, in order.
        deferred, self._deferred = self._deferred, {}
        for stream_id, (request, ended, stash) in deferred.items():
            self._unacked.pop(stream_id, None)
            if not self._open_session(stream_id, request):
                self.quic.forget_stream(stream_id)
                continue
            self._requests[stream_id] = False
            self._events.append(request)
            if stash:
                self._feed_capsules(stream_id, self._wt[stream_id], bytes(stash))
            if ended and self._requests.get(stream_id) is False:
                self._requests[stream_id] = True
                self._events.append(BodyEnded(stream_id))

    def _feed_capsules(self, session_id: int, state: SessionState, data: bytes) -> None:
        try:
            changed = state.feed(data)
        except SessionError as exc:
            self._abort_session(session_id, exc.code)
            return
        if state.close is not None and session_id not in self._responded:
            # d15 §6: the recipient of WT_CLOSE_SESSION closes the CONNECT stream.
            if state.accepted and self._can_send(session_id):
                self._h3.send_data(session_id, b"", True)
                self._responded.add(session_id)
        if changed:
            self._events.append(SessionUpdated(session_id))

    def _abort_session(self, session_id: int, code: int) -> None:
        # A session error: the CONNECT stream is reset with the draft's code; the session's
        # app call hears a reset (and its streams are dropped at stream_done).
        if self._requests.get(session_id) is None:
            return
        if not self._terminated:
            self.quic.reset_stream(session_id, code)
            self.quic.stop_stream(session_id, code)
            self._h3.reject(session_id)
        self._requests[session_id] = True
        self._stopped.add(session_id)
        self._events.append(StreamReset(session_id, code))

    def _drop_stream(self, stream_id: int, code: int = WT_BUFFERED_STREAM_REJECTED) -> None:
        # A stream of no live session: nothing is buffered for sessions that do not exist
        # (yet), so it is rejected as a buffer would be when full (d15 §4.6).
        self._wt_streams.pop(stream_id, None)
        if not self.quic.is_released(stream_id):
            self.quic.stop_stream(stream_id, code)
            self.quic.release_stream(stream_id)

    def _wt_replying(self, stream_id: int) -> bool:
        # A bidirectional stream whose sending side (ours) is still open.
        return stream_id & 2 == 0 and self.quic.can_write(stream_id)

    def _wt_session_of(self, stream_id: int) -> int | None:
        # The live session a WebTransport stream belongs to: a client stream still mapped,
        # or one we opened and have not finished (at most --webtransport-max-sessions).
        session_id = self._wt_streams.get(stream_id)
        if session_id is not None:
            return session_id
        if stream_id & 1:
            for session_id, state in self._wt.items():
                if stream_id in state.own_streams:
                    return session_id
        return None

    def _wt_stream_reset(
        self, session_id: int, stream_id: int, h3_code: int, stop_sending: bool
    ) -> None:
        # The client's RESET_STREAM (its side) or STOP_SENDING (ours; QUIC has reset our
        # side already) on a session's stream: the session hears it with the WebTransport
        # code it carries (d02 §4.3, d15 §4.4).
        state = self._wt.get(session_id)
        if state is None:
            return
        if stop_sending:
            state.own_streams.discard(stream_id)
            self._wt_sending_done(stream_id)  # aioquic reset our side (RFC 9000 §3.5)
        elif stream_id in state.streams:
            state.stream_reset(stream_id, held=self._unacked.get(stream_id, 0) > 0)
            if stream_id not in state.streams and not self._wt_replying(stream_id):
                self._wt_streams.pop(stream_id, None)
            self._flush_capsules(session_id, state)
        code = stream_error_from_h3(state.dialect, h3_code)
        self._events.append(SessionStreamReset(session_id, stream_id, code, stop_sending))

    def reset_session_stream(self, session_id: int, stream_id: int, code: int) -> None:
        """Abort our sending side of a session's stream with WebTransport error ``code``
        (RESET_STREAM; d02 §4.3, d15 §4.4). Raises ValueError for a code outside the
        session's dialect."""
        state = self._wt.get(session_id)
        if state is None or self._terminated:
            return
        h3_code = stream_error_to_h3(state.dialect, code)
        state.own_streams.discard(stream_id)
        if self.quic.can_write(stream_id):
            self.quic.reset_stream(stream_id, h3_code)
        self._wt_sending_done(stream_id)

    def _wt_sending_done(self, stream_id: int) -> None:
        # Our side of a WebTransport stream ended: aioquic's HTTP/3 layer forgets the
        # stream once the client's side is over too, and a client stream that is over on
        # both sides no longer maps to its session (until then it does, so a STOP_SENDING
        # still reaches the app).
        self._h3.sending_done(stream_id)
        session_id = self._wt_streams.get(stream_id)
        state = self._wt.get(session_id) if session_id is not None else None
        if state is None or stream_id not in state.streams:
            self._wt_streams.pop(stream_id, None)

    def stop_session_stream(self, session_id: int, stream_id: int, code: int) -> None:
        """Ask the client to stop sending on a session's stream (STOP_SENDING with
        WebTransport error ``code``); what still arrives on it is dropped and credited."""
        state = self._wt.get(session_id)
        if state is None or self._terminated:
            return
        h3_code = stream_error_to_h3(state.dialect, code)
        if not self.quic.is_released(stream_id):
            self.quic.stop_stream(stream_id, h3_code)
            self.quic.release_stream(stream_id)

    def _flush_capsules(self, session_id: int, state: SessionState) -> None:
        if self._can_send(session_id) and session_id not in self._responded:
            data = state.take_output()
            if data:
                self._h3.send_data(session_id, data, False)

    def webtransport_dialect(self, session_id: int) -> str | None:
        """The dialect of the session on ``session_id`` (``protocol/webtransport.py``)."""
        state = self._wt.get(session_id)
        return state.dialect if state is not None else None

    def session_closed_by_peer(self, session_id: int) -> tuple[int, str] | None:
        """The code and message of the client's WT_CLOSE_SESSION, if it sent one."""
        state = self._wt.get(session_id)
        if state is None or state.close is None:
            return None
        return state.close.code, state.close.reason

    def session_send_credit(self, session_id: int) -> int:
        """Bytes the client's WT_MAX_DATA lets us send on the session's streams now."""
        state = self._wt.get(session_id)
        return state.send_credit() if state is not None else 1 << 62

    def session_can_open(self, session_id: int, unidirectional: bool) -> bool:
        """Whether the client's WT_MAX_STREAMS lets us open one more stream."""
        state = self._wt.get(session_id)
        return state is None or state.can_open(unidirectional)

    def session_blocked(self, session_id: int, unidirectional: bool | None) -> None:
        """We are held back by the client's limit: WT_DATA_BLOCKED (``None``) or
        WT_STREAMS_BLOCKED."""
        state = self._wt.get(session_id)
        if state is not None:
            state.blocked(unidirectional)
            self._flush_capsules(session_id, state)

    def drain_session(self, session_id: int) -> None:
        """Graceful shutdown: tell the client with WT_DRAIN_SESSION (d07 §4.6, d15 §4.7);
        a draft-02 client has only the connection's GOAWAY (``shutdown``), which Chromium
        reports to the page as ``WebTransport.draining``."""
        state = self._wt.get(session_id)
        if state is not None and state.drain():
            self._flush_capsules(session_id, state)

    def session_draining(self, session_id: int) -> bool:
        """The client sent WT_DRAIN_SESSION."""
        state = self._wt.get(session_id)
        return state is not None and state.draining

    def close_session(self, session_id: int, code: int, reason: str) -> None:
        """End the session: WT_CLOSE_SESSION with ``code`` and ``reason`` where the dialect
        has capsules (d07 §5, d15 §6), then FIN on the CONNECT stream."""
        state = self._wt.get(session_id)
        if not self._can_send(session_id) or session_id in self._responded:
            return
        data = b""
        if state is not None and state.capsules:
            data = state.take_output() + close_session_capsule(code, reason)
        self._h3.send_data(session_id, data, True)
        self._responded.add(session_id)

    def _parse_request(self, stream_id: int, raw: Headers) -> RequestReceived:
        # RFC 9114 §4.2-§4.3: the same field rules as HTTP/2 (protocol/fields.py).
        method, path, scheme, authority, protocol, headers, _ = parse_request_fields(raw)
        return RequestReceived(
            stream_id=stream_id,
            method=method,
            raw_path=path or b"",
            headers=headers,
            scheme=decode_token(scheme) if scheme is not None else None,
            authority=authority,
            protocol=decode_token(protocol) if protocol is not None else None,
            early_data=stream_id in self.quic.early_streams,
        )

    def next_event(self) -> StreamEvent | None:
        """The next neutral event, or ``None``."""
        return self._events.popleft() if self._events else None

    # -- the response side (the same as HTTP/1.1 and HTTP/2) ---------------------------

    def _can_send(self, stream_id: int) -> bool:
        # Like HTTP/2, sends on a stream the peer stopped (RFC 9000 §3.5: our side is
        # reset in answer to STOP_SENDING) are silent no-ops; the stream type hears of it
        # through StreamReset.
        return (
            stream_id in self._requests and stream_id not in self._stopped and not self._terminated
        )

    def send_response(
        self, stream_id: int, status: int, headers: Headers, end_stream: bool = False
    ) -> None:
        """Response HEADERS (``:status`` first)."""
        if self._can_send(stream_id):
            block = [(b":status", _STATUS[status])]
            block += [f for f in headers if f[0] not in DROPPED_RESPONSE_FIELDS]  # §4.2
            self._h3.send_headers(stream_id, block, end_stream)
            if end_stream:
                self._responded.add(stream_id)
            state = self._wt.get(stream_id)
            if state is not None and 200 <= status < 300 and not end_stream:
                # Capsules may follow now (RFC 9297 §3.2).
                state.accepted = True
                self._flush_capsules(stream_id, state)

    def send_informational(self, stream_id: int, status: int, headers: Headers) -> None:
        """An interim response (100, 103), RFC 9114 §4.1."""
        if self._can_send(stream_id):
            block = [(b":status", _STATUS[status])]
            block += [f for f in headers if f[0] not in DROPPED_RESPONSE_FIELDS]
            self._h3.send_headers(stream_id, block)

    def send_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        """DATA; QUIC holds what flow control does not let out yet."""
        if self._can_send(stream_id):
            self._h3.send_data(stream_id, data, end_stream)
            if end_stream:
                self._responded.add(stream_id)

    def send_trailers(self, stream_id: int, headers: Headers) -> None:
        """Trailing HEADERS, ending the stream."""
        if self._can_send(stream_id):
            trailers = [f for f in headers if f[0] not in DROPPED_RESPONSE_FIELDS]
            self._h3.send_headers(stream_id, trailers, end_stream=True)
            self._responded.add(stream_id)

    # -- WebTransport (draft-ietf-webtrans-http3-02) ------------------------------------

    def send_datagram(self, session_id: int, data: bytes) -> None:
        """An HTTP Datagram for the session on ``session_id``."""
        if session_id in self._requests and not self._terminated:
            self._h3.send_datagram(session_id, data)

    def open_session_stream(self, session_id: int, unidirectional: bool) -> int:
        """A new server-initiated WebTransport stream of the session; its id (the caller
        checked ``session_can_open``)."""
        stream_id = self._h3.create_webtransport_stream(session_id, unidirectional)
        state = self._wt.get(session_id)
        if state is not None:
            state.stream_opened(stream_id, unidirectional)
        return stream_id

    def send_stream_data(
        self,
        stream_id: int,
        data: bytes,
        end_stream: bool = False,
        session_id: int | None = None,
    ) -> None:
        """Data on a WebTransport stream (no HTTP/3 framing: the stream is raw); counted
        against the session's WT_MAX_DATA when ``session_id`` is given."""
        if not self._terminated and self.quic.can_write(stream_id):
            # (Not after the client's STOP_SENDING: the app heard of it, and its later
            # sends on the stream are dropped, as on a stopped request stream.)
            if session_id is not None:
                state = self._wt.get(session_id)
                if state is not None:
                    state.data_sent(len(data))
                    if end_stream:
                        state.own_streams.discard(stream_id)
            self.quic.send_stream_data(stream_id, data, end_stream)
            if end_stream:
                self._wt_sending_done(stream_id)

    def reset_stream(self, stream_id: int) -> None:
        """Abort the response (the app failed after starting it). After a complete
        response only the request body is stopped: ``stream_done`` sends STOP_SENDING
        H3_NO_ERROR, and the response still arrives (RFC 9114 §4.1.1)."""
        if stream_id in self._requests and not self._terminated:
            if stream_id in self._responded:
                return
            self.quic.reset_stream(stream_id, ErrorCode.H3_INTERNAL_ERROR)

    def buffered_amount(self, stream_id: int) -> int:
        """Response bytes QUIC still holds for the stream."""
        return self.quic.buffered(stream_id)

    def ack_body(self, stream_id: int, amount: int) -> None:
        """The app consumed request body bytes: grant the peer that much credit."""
        unacked = self._unacked.get(stream_id, 0) - amount
        if unacked > 0:
            self._unacked[stream_id] = unacked
        else:
            self._unacked.pop(stream_id, None)
            unacked = 0
        if not self._terminated:
            self.quic.credit(stream_id, self._h3.held(stream_id) + unacked)
        session_id = self._wt_streams.get(stream_id)
        if session_id is not None:
            # Session credit follows what the app received (d15 §5.6.4).
            state = self._wt.get(session_id)
            if state is None:
                self._wt_streams.pop(stream_id, None)
                return
            state.stream_consumed(stream_id, amount, unacked == 0)
            if stream_id not in state.streams and not self._wt_replying(stream_id):
                self._wt_streams.pop(stream_id, None)
            self._flush_capsules(session_id, state)

    def stream_done(self, stream_id: int, now: float) -> None:
        """The stream type is finished; stop reading a body nobody will read."""
        body_ended = self._requests.pop(stream_id, None)
        if stream_id in self._responded:
            self._responded.discard(stream_id)
            if stream_id not in self._cancelled:
                self._completed += 1
        self._cancelled.discard(stream_id)
        self._unacked.pop(stream_id, None)
        self._stopped.discard(stream_id)
        session = self._wt.pop(stream_id, None)
        if session is not None:
            # The session is over: the client's streams of it that are still open are
            # stopped with WT_SESSION_GONE (d15 §6), and no longer map to it; ours that
            # are not finished are reset with it.
            if not self._terminated:
                for own in session.own_streams:
                    self.quic.reset_stream(own, WT_SESSION_GONE)
                    self._h3.drop_webtransport_stream(own)
            for wt_stream in [s for s, o in self._wt_streams.items() if o == stream_id]:
                if self._terminated:
                    del self._wt_streams[wt_stream]
                else:
                    if self._wt_replying(wt_stream):
                        self.quic.reset_stream(wt_stream, WT_SESSION_GONE)
                    self._drop_stream(wt_stream, WT_SESSION_GONE)
                    self._h3.drop_webtransport_stream(wt_stream)
        if body_ended is False and not self._terminated:
            # RFC 9114 §4.1.1: the response is complete; the rest of the request body
            # is not wanted.
            self.quic.stop_stream(stream_id, ErrorCode.H3_NO_ERROR)
        if not self._terminated:
            self._h3.forget(stream_id)
        # Releases what the stream holds, and lets the peer open a stream in its place.
        self.quic.forget_stream(stream_id)
        if self._goaway_sent and not self._requests:
            self._close()

    def shutdown(self) -> None:
        """GOAWAY, then close once the requests in flight are done."""
        if self._goaway_sent or self._terminated:
            return
        self._goaway_sent = True
        # The first request id we will not process (RFC 9114 §5.2).
        self._h3.send_goaway(self._highest_request + 4)
        if not self._requests:
            self._close()

    def _close(self) -> None:
        if not self._terminated:
            self.quic.close(error_code=ErrorCode.H3_NO_ERROR, reason_phrase="shutting down")

    @property
    def draining(self) -> bool:
        """GOAWAY was sent: the connection closes when its last request is done."""
        return self._goaway_sent

    @property
    def closed(self) -> bool:
        """True once the QUIC connection has terminated."""
        return self._terminated

    @property
    def open_streams(self) -> int:
        """Requests in flight."""
        return len(self._requests)
