"""HTTP/1.1 server protocol: h11 events in, neutral stream events out.

Sans-IO: the driver feeds bytes with ``receive_data(data, now)`` and writes what
``data_to_send()`` returns. It implements :class:`quicserve.protocol.base.ByteStreamProtocol`.

Rules this module keeps (the checks of a parsed head are ``http1_rules.inspect_request``,
shared with the httptools engine in ``http1_httptools.py``, so both refuse alike):

* One request at a time (h11's model). Pipelined requests wait in h11's buffer and are
  parsed only once the previous response is complete, so they are answered in order.
  Stream ids count requests on the connection from 1.
* Request bodies are read only as fast as the app consumes them: ``wants_read()`` turns
  false while more than ``_READ_AHEAD`` bytes of body are unacknowledged (``ack_body``),
  or while a request is in flight and that much pipelined data is already buffered.
* Framing that allows request smuggling is refused with 400 and a closed connection:
  wherever a front proxy could read a message's bounds differently from us, we refuse
  rather than guess. h11 does most of it; :class:`_StrictConnection` closes the gaps it
  leaves open (see its docstring): bare CR or LF anywhere in a head, chunk line or
  trailer section, obs-fold, chunk lines outside the RFC 9112 §7.1.1 grammar, oversized
  chunk sizes, duplicate or list-valued Content-Length, a final transfer coding other
  than chunked. ``_on_request`` adds both ``Content-Length`` and ``Transfer-Encoding``
  (RFC 9112 §6.1), Transfer-Encoding in HTTP/1.0, zero or several Host fields or an
  invalid one (§3.2), an absolute-form target whose authority is not the Host (§3.2.2),
  a target in no form we serve, an HTTP major version other than 1 (505); trailers with
  framing, routing or connection fields are refused too (RFC 9110 §6.5.1). A framing
  error found inside a body answers 400 if the response has not started, and always
  closes the connection.
* A head larger than ``Config.max_header_bytes`` gets 431 (RFC 6585 §5), measured as on
  HTTP/2 and HTTP/3 (``fields.field_section_size``; the request line counts as the
  ``:method`` and ``:path`` lines). Chunked trailers obey the same limit: 431 if no response
  has started, and the connection closes. h11 also caps the raw bytes of a head (or
  trailer section) that arrives in pieces at the same number.
* ``CONNECT`` gets 501 and a closed connection: its 2xx answer would be a tunnel
  (RFC 9110 §9.3.6), which this module does not offer.
* Timers: a fresh connection or a half-received head must complete within
  ``header_read_timeout``; an idle keep-alive connection closes after
  ``keep_alive_timeout``. No timer runs while a request is in flight.
* ``Upgrade: websocket`` (RFC 6455 §4) is flagged on the request; if the stream type
  answers ``101`` the connection turns into a tunnel: from then on the peer's bytes are
  body events of that request, ``send_data`` writes raw bytes, the end of either side
  closes the connection, and no timer runs.
* ``Upgrade: h2c`` on a cleartext connection (RFC 7540 §3.2; dropped from RFC 9113 but
  still used by clients such as curl ``--http2``) is reported as :class:`H2CUpgrade`; the
  driver answers ``101`` and hands the connection to the HTTP/2 protocol.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import h11
from h11._receivebuffer import ReceiveBuffer
from h11._state import MIGHT_SWITCH_PROTOCOL

from ..config import Config
from ..events import (
    BodyEnded,
    BodyReceived,
    Headers,
    PeerHalfClosed,
    RequestReceived,
    StreamEvent,
)
from .fields import field_section_size
from .http1_rules import (
    BARE_CR_LF,
    CHUNK_LINE,
    FORBIDDEN_TRAILERS,
    FRAMING_FIELD,
    READ_AHEAD,
    REASONS,
    WRITE_APART,
    H2CUpgrade,
    HTTP1Connection,
    RequestHead,
    inspect_request,
    switching_response,
)

__all__ = ["H1Protocol", "H2CUpgrade", "switching_response"]

#: Kept under their old names for the tests that read them.
_READ_AHEAD = READ_AHEAD
_REASONS = REASONS


class _StrictBuffer(ReceiveBuffer):
    """h11's receive buffer, without its leniencies: lines end in CRLF only (h11 takes a
    bare LF), a head or trailer section may not fold lines (RFC 9112 §5.2: h11 unfolds
    them), and every chunk line must match the grammar (h11 takes ``;`` plus anything,
    an unclosed quote included, and 20 hex digits of size).

    It overrides h11 internals (``_data``, ``_extract`` and the two search offsets); an
    h11 upgrade must re-check this class and ``_StrictConnection``.
    """

    def maybe_extract_lines(self) -> list[bytearray] | None:
        data = self._data
        if data[:2] == b"\r\n":
            # An empty section: no trailers (h11 refuses it where a request line is due).
            self._extract(2)
            return []
        start = max(0, self._multiple_lines_search - 3)
        end = data.find(b"\r\n\r\n", start)
        if end < 0:
            limit = len(data) - 1 if data[-1:] == b"\r" else len(data)
        else:
            limit = end + 4
        if BARE_CR_LF.search(data, max(0, start - 1), limit) is not None:
            raise h11.LocalProtocolError("bare CR or LF in a header section")
        if end < 0:
            self._multiple_lines_search = len(data)
            return None
        head = self._extract(end + 4)
        if b"\r\n " in head or b"\r\n\t" in head:
            raise h11.LocalProtocolError("obs-fold in a header section (RFC 9112 §5.2)")
        content_length = False
        for match in FRAMING_FIELD.finditer(head):
            value = head[match.end() : head.index(b"\r\n", match.end())]
            if match[1][0] in b"cC":
                # RFC 9110 §8.6: h11 folds "5, 5" and repeated equal values into one;
                # a proxy may take the first, the last, or refuse. So do we: refuse.
                if content_length or b"," in value:
                    raise h11.LocalProtocolError("several Content-Length values")
                content_length = True
            # RFC 9112 §6.1: chunked must be the final coding, else 400 (h11 says 501
            # for any coding it does not know, "chunked, identity" included).
            elif value.rpartition(b",")[2].strip(b" \t").lower() != b"chunked":
                raise h11.LocalProtocolError("chunked is not the final transfer coding")
        lines = head[:-4].split(b"\r\n")
        return lines

    def maybe_extract_next_line(self) -> bytearray | None:
        # Only h11's chunked reader reads single lines: the chunk-size lines.
        line = super().maybe_extract_next_line()
        if line is not None and CHUNK_LINE.fullmatch(line) is None:
            raise h11.LocalProtocolError("invalid chunk line (RFC 9112 §7.1)")
        return line


class _StrictConnection(h11.Connection):
    """h11's connection reading through :class:`_StrictBuffer`."""

    def __init__(self, max_incomplete_event_size: int) -> None:
        super().__init__(h11.SERVER, max_incomplete_event_size=max_incomplete_event_size)
        assert not self._receive_buffer
        self._receive_buffer = _StrictBuffer()


class H1Protocol(HTTP1Connection):
    """One HTTP/1.1 connection, server side."""

    http_version = "1.1"

    def __init__(self, config: Config, now: float, *, allow_h2c: bool = False) -> None:
        self._config = config
        self._conn = _StrictConnection(max_incomplete_event_size=config.max_header_bytes)
        self._allow_h2c = allow_h2c
        self._events: deque[StreamEvent | H2CUpgrade] = deque()
        self._out: list[bytes] = []
        self._stream_id = 0
        # The request whose response we are producing, if any.
        self._active: int | None = None
        self._head_request = False
        self._response_started = False
        self._response_done = False
        self._stream_finished = False
        self._body_unacked = 0
        self._pipelined = 0
        self._closed = False
        self._upgrading = False
        self._tunnel = False
        #: Tunnel bytes queued and not yet taken by ``data_to_send`` (see ``pending``).
        self._tunnel_out = 0
        self._shutting_down = False
        self._peer_eof = False
        self.split_output = False
        # Fresh connection: the first head must arrive within header_read_timeout.
        self._deadline: float | None = now + config.header_read_timeout
        self._head_deadline_armed = True

    # -- reading ------------------------------------------------------------------------

    def receive_data(self, data: bytes, now: float) -> None:
        """Feed bytes from the peer; ``b""`` means the peer closed its side."""
        if self._closed:
            return
        if self._tunnel:
            assert self._active is not None
            if data:
                self._body_unacked += len(data)
                self._events.append(BodyReceived(self._active, data))
            else:
                self._events.append(BodyEnded(self._active))
            return
        their_state = self._conn.their_state
        if not data:
            # FIN: h11 is never told (it would refuse a head cut short with 400); what is
            # buffered is parsed, and _parse closes where it needs more (_input_exhausted).
            complete = (
                their_state is h11.DONE
                or their_state is h11.MUST_CLOSE
                or their_state is MIGHT_SWITCH_PROTOCOL  # a complete Upgrade request
            )
            self._on_peer_eof(complete)
            if not (self._active is not None and complete):
                self._parse(now)
            return
        if self._active is not None and (their_state is h11.DONE or their_state is h11.MUST_CLOSE):
            if their_state is h11.MUST_CLOSE:
                # RFC 9112 §9.6: after a request that closes the connection (HTTP/1.0,
                # "Connection: close") nothing more is processed; the bytes are dropped.
                return
        if self._active is not None and self._conn.their_state is h11.DONE:
            self._pipelined += len(data)
        self._conn.receive_data(data)
        self._parse(now)

    def _note_next_method(self) -> None:
        # Between requests, the buffer starts with the next request line: an error found
        # before h11 reports the request (a bad head) must still answer HEAD without
        # content (RFC 9110 §9.3.2).
        if self._active is None:
            self._head_request = self._conn.trailing_data[0][:5] == b"HEAD "

    def _parse(self, now: float) -> None:
        conn = self._conn
        while not self._closed and not self._upgrading:
            self._note_next_method()
            if conn.their_state is h11.MUST_CLOSE and self._active is not None:
                # RFC 9112 §9.6: the request closes the connection, so what follows it is
                # not parsed (h11 would call it an error and lose the response).
                return
            try:
                # Any: dispatch is on type(event) (faster than isinstance chains), which
                # mypy does not narrow.
                event: Any = conn.next_event()
            except h11.RemoteProtocolError as exc:
                self._framing_error(exc.error_status_hint)
                return
            if event is h11.NEED_DATA:
                if self._peer_eof:
                    # After the FIN: a request cut short, or none, ends the connection;
                    # a complete one (h11 says NEED_DATA once it is DONE) is answered.
                    if self._active is None or conn.their_state is not h11.DONE:
                        self._input_exhausted()
                    return
                if (
                    self._active is None
                    and not self._head_deadline_armed
                    and conn.their_state is h11.IDLE
                    and self._conn.trailing_data[0]
                ):
                    # Bytes of a new head arrived: it now has header_read_timeout to finish.
                    self._deadline = now + self._config.header_read_timeout
                    self._head_deadline_armed = True
                return
            if event is h11.PAUSED:
                return
            cls = type(event)
            if cls is h11.Request:
                self._on_request(event)
            elif cls is h11.Data:
                if self._active is not None:
                    self._body_unacked += len(event.data)
                    self._events.append(BodyReceived(self._stream_id, event.data))
            elif cls is h11.EndOfMessage:
                if (
                    event.headers
                    and field_section_size(event.headers) > self._config.max_header_bytes
                ):
                    # Chunked trailers (RFC 9112 §7.1.2) obey the same limit as the head:
                    # 431 if the app has not answered yet; the connection closes.
                    self._abort_active()
                    if self._response_started:
                        self._close()
                    else:
                        self._send_error(431)
                    return
                if self._active is not None:
                    trailers = list(event.headers) if event.headers else []
                    if trailers and any(n in FORBIDDEN_TRAILERS for n, _ in trailers):
                        self._framing_error(400)
                        return
                    self._events.append(BodyEnded(self._stream_id, trailers))
                    if self._peer_eof:  # a pipelined request read after the FIN
                        self._events.append(PeerHalfClosed(self._stream_id))
                self._maybe_next_cycle(now)
            elif cls is h11.ConnectionClosed:
                self._abort_active()
                self._close()
                return

    def _on_request(self, event: h11.Request) -> None:
        # Known before any refusal below: an error answer to HEAD has no content.
        self._head_request = event.method == b"HEAD"
        headers: Headers = list(event.headers)
        # h11 refuses most malformed framing itself (and :class:`_StrictConnection` the
        # rest); the rules every engine keeps are in http1_rules.
        head = inspect_request(
            event.method,
            event.target,
            event.http_version,
            headers,
            self._config.max_header_bytes,
            self._allow_h2c,
        )
        if type(head) is not RequestHead:
            assert isinstance(head, int)
            self._send_error(head)
            return
        self._stream_id += 1
        self._active = self._stream_id
        self._response_started = False
        self._response_done = False
        self._stream_finished = False
        self._body_unacked = 0
        self._pipelined = 0
        self._deadline = None
        request = RequestReceived(
            stream_id=self._stream_id,
            method=event.method,
            raw_path=head.target,
            headers=headers,
            scheme=None,
            authority=head.authority,
            expect_continue=head.expect_continue,
            websocket_upgrade=head.websocket,
        )
        if head.h2c_settings is not None:
            self._events.append(H2CUpgrade(request, head.h2c_settings, self._conn.trailing_data[0]))
            # Not "closed": the connection lives on as HTTP/2. Stop parsing and reading
            # until the driver has switched protocols.
            self._upgrading = True
            return
        self._events.append(request)

    def wants_read(self) -> bool:
        """False while we hold enough unconsumed body or pipelined data."""
        if self._closed or self._upgrading:
            return False
        return self._body_unacked < _READ_AHEAD and self._pipelined < _READ_AHEAD

    # -- writing ------------------------------------------------------------------------

    def send_response(
        self, stream_id: int, status: int, headers: Headers, end_stream: bool = False
    ) -> None:
        """Start the response (h11 adds framing headers when the app gave none)."""
        if stream_id != self._active or self._response_started or self._closed:
            return
        if status == 101:
            self._switch_to_tunnel(headers)
            return
        self._response_started = True
        if self._shutting_down:
            headers = [*headers, (b"connection", b"close")]
        try:
            self._out.append(
                self._conn.send(
                    h11.Response(
                        status_code=status, headers=headers, reason=_REASONS.get(status, b"")
                    )
                )
                or b""
            )
        except h11.LocalProtocolError:
            self._abort_active()
            self._close()
            raise
        if end_stream:
            self._end_response()

    def _switch_to_tunnel(self, headers: Headers) -> None:
        # h11 checks that the request asked for an Upgrade and has ended.
        self._out.append(
            self._conn.send(
                h11.InformationalResponse(
                    status_code=101, headers=headers, reason=b"Switching Protocols"
                )
            )
            or b""
        )
        self._tunnel = True
        self._response_started = True
        self._body_unacked = self._pipelined = 0
        trailing, _ = self._conn.trailing_data
        if trailing:
            assert self._active is not None
            self._body_unacked = len(trailing)
            self._events.append(BodyReceived(self._active, bytes(trailing)))

    def send_informational(self, stream_id: int, status: int, headers: Headers) -> None:
        """A 1xx response: 100 Continue, 103 Early Hints."""
        if stream_id != self._active or self._response_started or self._closed:
            return
        self._out.append(
            self._conn.send(h11.InformationalResponse(status_code=status, headers=headers)) or b""
        )

    def send_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        """Body bytes. TCP is the only flow control, so nothing is buffered here."""
        if stream_id != self._active or not self._response_started or self._response_done:
            return
        if self._tunnel:
            if data:
                self._out.append(data)
                self._tunnel_out += len(data)
            if end_stream:
                self._response_done = True
                self._close()
            return
        if data and not self._head_request:
            if len(data) >= WRITE_APART:
                self.split_output = True
            try:
                self._out.append(self._conn.send(h11.Data(data=data)) or b"")
            except h11.LocalProtocolError:
                # More than the declared Content-Length: an app bug we cannot frame.
                self._abort_active()
                self._close()
                raise
        if end_stream:
            self._end_response()

    def _end_response(self, trailers: Headers | None = None) -> None:
        self._response_done = True
        try:
            self._out.append(self._conn.send(h11.EndOfMessage(headers=trailers or [])) or b"")
        except h11.LocalProtocolError:
            # Fewer bytes than the declared Content-Length: the peer cannot find the end
            # of this response, so the connection must go.
            self._abort_active()
            self._close()
            raise

    def _maybe_next_cycle(self, now: float) -> None:
        # The next request is parsed once our response is complete, the stream type is
        # done with it (stream_done) and the peer's request is complete too.
        conn = self._conn
        if not self._stream_finished:
            return
        if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
            if conn.our_state is h11.DONE or conn.our_state is h11.MUST_CLOSE:
                self._close()
            return
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            if self._shutting_down:
                self._close()
                return
            conn.start_next_cycle()
            self._active = None
            self._head_request = False
            self._stream_finished = False
            self._pipelined = 0
            self._head_deadline_armed = False
            self._deadline = now + self._config.keep_alive_timeout
            self._parse(now)

    def data_to_send(self) -> bytes:
        """Bytes to write, clearing the buffer."""
        self._tunnel_out = 0
        if not self._out:
            return b""
        if self.split_output:
            return self._take_out_apart()
        out = self._out[0] if len(self._out) == 1 else b"".join(self._out)
        self._out.clear()
        return out

    # -- timers and closing -------------------------------------------------------------

    def handle_timer(self, now: float) -> None:
        """Close an idle connection, or answer 408 to a head that never completed."""
        if self._closed or self._active is not None:
            return
        if self._deadline is None or now < self._deadline:
            return
        if self._conn.trailing_data[0]:
            self._send_error(408)
        else:
            self._close()
