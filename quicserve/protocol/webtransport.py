"""WebTransport over HTTP/3: dialects, SETTINGS, capsules and session flow control.

Sans-IO: :class:`~quicserve.protocol.http3.H3Protocol` feeds it and writes what it returns.
Browsers speak different drafts of draft-ietf-webtrans-http3 (cited "d02", "d07", "d14",
"d15" below, with the section), all on the same stream formats (unidirectional stream type
0x54, bidirectional signal 0x41, the session id after either) and the same datagrams
(RFC 9297 §2.1, the quarter stream id). What differs is how support is signalled, the
upgrade token, the response header and whether the CONNECT stream carries capsules:

======== ============================== ================ ===================================
dialect  server SETTINGS (client picks) ``:protocol``    on the CONNECT stream
======== ============================== ================ ===================================
draft02  ENABLE_WEBTRANSPORT 0x2b603742 webtransport     nothing; the 200 carries
         (d02 §8.2)                                      ``sec-webtransport-http3-draft:
                                                         draft02`` (d02 §6)
draft07  WEBTRANSPORT_MAX_SESSIONS      webtransport     capsules (RFC 9297 §3.2):
         0xc671706a (d07 §8.2; kept                      CLOSE 0x2843 (§5), DRAIN 0x78ae;
         until d12)                                      flow control too from a d09-d12
                                                         client (it sends WT_INITIAL_*)
draft14  WT_MAX_SESSIONS 0x14e9cd29     webtransport     + flow control capsules (d14 §5.6)
         (d13/d14 §9.2)
draft15  WT_ENABLED 0x2c7cf000          webtransport-h3  the same as draft14 (d15 §5.6)
         (d15 §9.2)
======== ============================== ================ ===================================

Every server setting above is sent, with SETTINGS_H3_DATAGRAM (RFC 9297 §2.1.1) and the
WT_INITIAL_* flow-control settings (d14/d15 §5.5: 0x2b61 data, 0x2b64 uni, 0x2b65 bidi);
each client announces its own and, for draft versions, "the highest version supported by
both endpoints is selected" (d14 §7.1, d15 §7.1). :func:`choose_dialect` makes that choice
per request from the client's SETTINGS and headers. Safari (26.4 on) speaks draft-14 with
``:protocol`` webtransport, and refuses a server without WT_MAX_SESSIONS >= 1 and the
WT_INITIAL_* settings; Chromium still chooses draft-02.

Rules:

* Sessions on one connection are bounded by ``--webtransport-max-sessions``; a CONNECT over
  the limit is reset with H3_REQUEST_REJECTED and the connection carries on (d14 §5.2 "MUST
  NOT close the connection"). A draft-14/15 client without flow control gets one session
  (d14/d15 §5.1).
* Flow control (d14/d15 §5.1) is on when the client sent a non-zero WT_INITIAL_* setting
  (or WT_MAX_SESSIONS > 1, d14 §5.1), in any dialect but draft-02; we always send non-zero
  ones. Then the client may open ``--webtransport-max-streams`` streams of each kind and
  send ``--webtransport-max-data`` bytes beyond what the app has received; a stream closed
  or data received grants more (WT_MAX_STREAMS, WT_MAX_DATA, sent once half the window is
  used). A client that exceeds either has its session aborted with WT_FLOW_CONTROL_ERROR
  (d15 §5.6.2, §5.6.4). What we send is bounded the same way by the client's limits
  (:meth:`SessionState.send_credit`, :meth:`SessionState.can_open`), and WT_DATA_BLOCKED /
  WT_STREAMS_BLOCKED say when it stops us (d15 §5.6.3, §5.6.5). Without flow control its
  capsules are ignored (d15 §5.1), and a client stream beyond
  ``--webtransport-max-streams`` of a kind open or not yet received by the app is refused
  alone (WT_BUFFERED_STREAM_REJECTED): a draft-02 client cannot grow the app's queue one
  empty stream at a time.
* Capsules (RFC 9297 §3.2) are parsed with a bounded buffer: a known capsule longer than
  its format allows is malformed (the session is aborted with H3_MESSAGE_ERROR), an unknown
  one is skipped without being held (RFC 9297 §3.2: unknown types are ignored), so a peer
  can make us hold at most :data:`MAX_CAPSULE` bytes per session. WT_MAX_STREAM_DATA and
  WT_STREAM_DATA_BLOCKED are a session error (d15 §5.4). WT_MAX_DATA / WT_MAX_STREAMS that
  go down are a WT_FLOW_CONTROL_ERROR (d15 §5.6.2, §5.6.4); Maximum Streams above 2^60 is
  H3_DATAGRAM_ERROR (d15 §5.6.2).
* WT_CLOSE_SESSION carries a 32-bit code and a UTF-8 message of at most 1024 bytes (d15 §6);
  after it nothing more may come on the CONNECT stream (else H3_MESSAGE_ERROR).
  WT_DRAIN_SESSION is sent once (``drain``).
* Stream error codes map into the HTTP/3 range WebTransport reserves, skipping HTTP/3's
  reserved codepoints: 0-255 for draft-02 (d02 §4.3), 32 bits from draft-07 on (d07 §4.3,
  d15 §4.4); a code the range does not carry is reported as none.
* A client stream that is reset keeps its slot until the app has taken what it holds of
  it (``stream_reset(held=...)``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

# -- codepoints ----------------------------------------------------------------------

SETTINGS_ENABLE_CONNECT_PROTOCOL = 0x08  # RFC 9220 §3
SETTINGS_H3_DATAGRAM = 0x33  # RFC 9297 §2.1.1
SETTINGS_ENABLE_WEBTRANSPORT = 0x2B603742  # d02 §8.2
SETTINGS_WEBTRANSPORT_MAX_SESSIONS_07 = 0xC671706A  # d07 §8.2 (and d08-d12)
SETTINGS_WT_MAX_SESSIONS = 0x14E9CD29  # d13/d14 §9.2
SETTINGS_WT_ENABLED = 0x2C7CF000  # d15 §9.2
SETTINGS_WT_INITIAL_MAX_DATA = 0x2B61  # d14/d15 §5.5.3
SETTINGS_WT_INITIAL_MAX_STREAMS_UNI = 0x2B64  # d14/d15 §5.5.1
SETTINGS_WT_INITIAL_MAX_STREAMS_BIDI = 0x2B65  # d14/d15 §5.5.2

CAPSULE_CLOSE_SESSION = 0x2843  # d07 §5, d15 §6
CAPSULE_DRAIN_SESSION = 0x78AE  # d07 §4.6, d15 §4.7
CAPSULE_MAX_DATA = 0x190B4D3D  # d15 §5.6.4
CAPSULE_MAX_STREAM_DATA = 0x190B4D3E  # WebTransport over HTTP/2 only (d15 §5.4)
CAPSULE_MAX_STREAMS_BIDI = 0x190B4D3F  # d15 §5.6.2
CAPSULE_MAX_STREAMS_UNI = 0x190B4D40
CAPSULE_DATA_BLOCKED = 0x190B4D41  # d15 §5.6.5
CAPSULE_STREAM_DATA_BLOCKED = 0x190B4D42  # WebTransport over HTTP/2 only (d15 §5.4)
CAPSULE_STREAMS_BLOCKED_BIDI = 0x190B4D43  # d15 §5.6.3
CAPSULE_STREAMS_BLOCKED_UNI = 0x190B4D44

# HTTP/3 error codes (d15 §9.5).
WT_BUFFERED_STREAM_REJECTED = 0x3994BD84
WT_SESSION_GONE = 0x170D7B68
WT_FLOW_CONTROL_ERROR = 0x045D4487
H3_MESSAGE_ERROR = 0x10E
H3_DATAGRAM_ERROR = 0x33

#: WebTransport application error codes on streams live in this HTTP/3 range, skipping its
#: reserved codepoints 0x1f * N + 0x21 (d02 §4.3, d07 §4.3, d15 §4.4).
WT_APPLICATION_ERROR_FIRST = 0x52E4A40FA8DB
WT_APPLICATION_ERROR_LAST = 0x52E5AC983162

DRAFT02, DRAFT07, DRAFT14, DRAFT15 = "draft02", "draft07", "draft14", "draft15"
#: The ``:protocol`` values that open a WebTransport session: d02-d14, then d15 §3.2.
UPGRADE_TOKENS = frozenset({"webtransport", "webtransport-h3"})

MAX_CLOSE_MESSAGE = 1024  # d15 §6
#: The longest capsule we hold: WT_CLOSE_SESSION's value plus its type and length.
MAX_CAPSULE = 4 + MAX_CLOSE_MESSAGE + 16
MAX_STREAMS_VALUE = 1 << 60  # d15 §5.6.2
_VARINT_MAX = (1 << 62) - 1


def server_settings(max_sessions: int, max_data: int, max_streams: int) -> dict[int, int]:
    """Our SETTINGS for every dialect (besides what aioquic sends: H3_DATAGRAM,
    ENABLE_WEBTRANSPORT, ENABLE_CONNECT_PROTOCOL)."""
    return {
        SETTINGS_WEBTRANSPORT_MAX_SESSIONS_07: max_sessions,
        SETTINGS_WT_MAX_SESSIONS: max_sessions,
        SETTINGS_WT_ENABLED: 1,
        SETTINGS_WT_INITIAL_MAX_DATA: max_data,
        SETTINGS_WT_INITIAL_MAX_STREAMS_UNI: max_streams,
        SETTINGS_WT_INITIAL_MAX_STREAMS_BIDI: max_streams,
    }


def choose_dialect(
    protocol: str | None,
    client_settings: Mapping[int, int] | None,
    headers: Iterable[tuple[bytes, bytes]],
) -> str | None:
    """The dialect of one extended CONNECT, or ``None`` if it is not WebTransport.

    ``webtransport-h3`` is draft-15's token (d15 §3.2). For ``webtransport``: a draft-02
    client says so in a header (``sec-webtransport-http3-draft02: 1``, d02 §6); otherwise
    the newest draft whose setting the client sent (d14 §7.1: the highest version both
    support). A client whose SETTINGS have not arrived yet is taken for draft-02, the
    dialect that needs nothing from them."""
    if protocol == "webtransport-h3":
        return DRAFT15
    if protocol != "webtransport":
        return None
    for name, value in headers:
        if name == b"sec-webtransport-http3-draft02" or (
            name == b"sec-webtransport-http3-draft" and value.strip() == b"draft02"
        ):
            return DRAFT02
    settings = client_settings or {}
    if settings.get(SETTINGS_WT_MAX_SESSIONS, 0) > 0:
        return DRAFT14
    if settings.get(SETTINGS_WEBTRANSPORT_MAX_SESSIONS_07, 0) > 0:
        return DRAFT07
    if _declares_flow_control(settings):
        # Flow-control settings exist from draft-09 on: a newer client than draft-07,
        # whatever else it left out (d14 §3.1 wants WT_MAX_SESSIONS from it too).
        return DRAFT14
    return DRAFT02


def _declares_flow_control(settings: Mapping[int, int]) -> bool:
    return (
        settings.get(SETTINGS_WT_INITIAL_MAX_DATA, 0) > 0
        or settings.get(SETTINGS_WT_INITIAL_MAX_STREAMS_UNI, 0) > 0
        or settings.get(SETTINGS_WT_INITIAL_MAX_STREAMS_BIDI, 0) > 0
    )


def flow_control_enabled(dialect: str, client_settings: Mapping[int, int] | None) -> bool:
    """d14/d15 §5.1: both endpoints declared flow control (we always do). Draft-02 has
    none; a client on the draft-07 codepoint has it when it sends the WT_INITIAL_*
    settings (the codepoint lasted until draft-12, flow control came in draft-09)."""
    if dialect == DRAFT02:
        return False
    settings = client_settings or {}
    return _declares_flow_control(settings) or (
        dialect == DRAFT14 and settings.get(SETTINGS_WT_MAX_SESSIONS, 0) > 1
    )


# -- stream error codes ---------------------------------------------------------------


def max_stream_error(dialect: str) -> int:
    """The largest application error code a stream reset or STOP_SENDING can carry:
    draft-02 limits them to 8 bits (d02 §4.3: 0x00-0xff), later drafts to 32 bits (d07
    §4.3, d15 §4.4)."""
    return 0xFF if dialect == DRAFT02 else 0xFFFFFFFF


def stream_error_to_h3(dialect: str, code: int) -> int:
    """The HTTP/3 error code that carries application error ``code`` (d15 §4.4,
    ``webtransport_code_to_http_code``: the same mapping in every draft, over the
    dialect's range). Raises ValueError outside that range."""
    if not 0 <= code <= max_stream_error(dialect):
        raise ValueError(f"a {dialect} stream error code is 0 to {max_stream_error(dialect)}")
    return WT_APPLICATION_ERROR_FIRST + code + code // 0x1E


def stream_error_from_h3(dialect: str, h3_code: int) -> int | None:
    """The application error code an HTTP/3 error code carries, or ``None`` when it
    carries none (outside the range, a reserved codepoint, or beyond the dialect's
    range): d15 §4.4 ``http_code_to_webtransport_code``."""
    if not WT_APPLICATION_ERROR_FIRST <= h3_code <= WT_APPLICATION_ERROR_LAST:
        return None
    if (h3_code - 0x21) % 0x1F == 0:
        return None
    shifted = h3_code - WT_APPLICATION_ERROR_FIRST
    code = shifted - shifted // 0x1F
    return code if code <= max_stream_error(dialect) else None


# -- capsules (RFC 9297 §3.2) ---------------------------------------------------------


def encode_varint(value: int) -> bytes:
    """RFC 9000 §16."""
    if value < 0x40:
        return bytes((value,))
    if value < 0x4000:
        return (value | 0x4000).to_bytes(2, "big")
    if value < 0x40000000:
        return (value | 0x80000000).to_bytes(4, "big")
    if value <= _VARINT_MAX:
        return (value | 0xC000000000000000).to_bytes(8, "big")
    raise ValueError("integer too large for a QUIC varint")


def _read_varint(data: bytes | bytearray, pos: int) -> tuple[int, int] | None:
    # (value, next position), or None when the integer is not complete yet.
    if pos >= len(data):
        return None
    length = 1 << (data[pos] >> 6)
    if pos + length > len(data):
        return None
    value = data[pos] & 0x3F
    for i in range(1, length):
        value = (value << 8) | data[pos + i]
    return value, pos + length


def encode_capsule(capsule_type: int, value: bytes) -> bytes:
    """Capsule {Type (i), Length (i), Value (..)} (RFC 9297 §3.2)."""
    return encode_varint(capsule_type) + encode_varint(len(value)) + value


def close_session_capsule(code: int, reason: str) -> bytes:
    """WT_CLOSE_SESSION (d15 §6): a 32-bit code, then the message (cut to 1024 bytes, on a
    character boundary)."""
    message = reason.encode("utf-8")
    if len(message) > MAX_CLOSE_MESSAGE:
        message = message[:MAX_CLOSE_MESSAGE].decode("utf-8", "ignore").encode("utf-8")
    return encode_capsule(CAPSULE_CLOSE_SESSION, (code & 0xFFFFFFFF).to_bytes(4, "big") + message)


class SessionError(Exception):
    """The peer broke a rule of the session: abort it (reset the CONNECT stream) with
    ``code``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code


class StreamRefused(Exception):
    """A client stream over the limit of a session without flow control: refuse that
    stream (WT_BUFFERED_STREAM_REJECTED), not the session."""


@dataclass(slots=True)
class Closed:
    """The peer's WT_CLOSE_SESSION."""

    code: int
    reason: str


#: Capsules whose value is one varint.
_VARINT_CAPSULES = frozenset(
    {
        CAPSULE_MAX_DATA,
        CAPSULE_MAX_STREAMS_BIDI,
        CAPSULE_MAX_STREAMS_UNI,
        CAPSULE_DATA_BLOCKED,
        CAPSULE_STREAMS_BLOCKED_BIDI,
        CAPSULE_STREAMS_BLOCKED_UNI,
    }
)


class SessionState:
    """One session's dialect, capsule parser and flow-control books.

    Receive side (what the client sends us): ``max_data`` is the credit we granted,
    ``received`` what arrived on the session's streams, ``consumed`` what the app took;
    ``max_streams[bidi]`` what we allow, ``opened[bidi]`` what the client opened,
    ``closed[bidi]`` what it finished. Send side: ``peer_max_data`` / ``sent`` and
    ``peer_max_streams[bidi]`` / ``we_opened[bidi]``."""

    __slots__ = (
        "_blocked_sent",
        "_buffer",
        "_skip",
        "_stream_window",
        "_window",
        "accepted",
        "close",
        "closed",
        "consumed",
        "dialect",
        "drain_sent",
        "draining",
        "flow_control",
        "max_data",
        "max_streams",
        "opened",
        "out",
        "own_streams",
        "peer_max_data",
        "peer_max_streams",
        "received",
        "sent",
        "streams",
        "we_opened",
    )

    def __init__(
        self,
        dialect: str,
        client_settings: Mapping[int, int] | None,
        max_data: int,
        max_streams: int,
    ) -> None:
        settings = client_settings or {}
        self.dialect = dialect
        self.flow_control = flow_control_enabled(dialect, settings)
        self.accepted = False
        self._window = max_data
        self._stream_window = max_streams
        self.max_data = max_data
        self.received = 0
        self.consumed = 0
        # index: 0 unidirectional, 1 bidirectional
        self.max_streams = [max_streams, max_streams]
        self.opened = [0, 0]
        self.closed = [0, 0]
        self.peer_max_data = settings.get(SETTINGS_WT_INITIAL_MAX_DATA, 0)
        self.peer_max_streams = [
            settings.get(SETTINGS_WT_INITIAL_MAX_STREAMS_UNI, 0),
            settings.get(SETTINGS_WT_INITIAL_MAX_STREAMS_BIDI, 0),
        ]
        self.sent = 0
        self.we_opened = [0, 0]
        #: the streams we opened whose send side is still open (reset with
        #: WT_SESSION_GONE when the session ends, d15 §6)
        self.own_streams: set[int] = set()
        #: the client's streams of this session still open: stream id -> receive side ended
        self.streams: dict[int, bool] = {}
        #: capsules for the CONNECT stream, written once the session is accepted
        self.out = bytearray()
        self.close: Closed | None = None
        self.draining = False
        self.drain_sent = False
        self._buffer = bytearray()
        self._skip = 0
        self._blocked_sent: dict[int, int] = {}

    @property
    def capsules(self) -> bool:
        """The CONNECT stream carries capsules (d07 on; draft-02 has none)."""
        return self.dialect != DRAFT02

    # -- the CONNECT stream ---------------------------------------------------------

    def feed(self, data: bytes) -> bool:
        """Bytes of the CONNECT stream's DATA frames. True when the peer's state changed in
        a way the app's send side must hear of (credit, close, drain). Raises
        :class:`SessionError`."""
        if not self.capsules:
            return False  # draft-02 defines nothing there
        changed = False
        pos = 0
        if self._skip:
            step = min(self._skip, len(data))
            self._skip -= step
            pos = step
        if self.close is not None and pos < len(data):
            raise SessionError(H3_MESSAGE_ERROR, "data after WT_CLOSE_SESSION")  # d15 §6
        buffer = self._buffer
        buffer += data[pos:]
        start = 0
        while start < len(buffer):
            head = _read_varint(buffer, start)
            if head is None:
                break
            capsule_type, pos = head
            length_read = _read_varint(buffer, pos)
            if length_read is None:
                break
            length, pos = length_read
            if capsule_type == CAPSULE_CLOSE_SESSION:
                limit = 4 + MAX_CLOSE_MESSAGE
            elif capsule_type in _VARINT_CAPSULES:
                limit = 8
            elif capsule_type == CAPSULE_DRAIN_SESSION:
                limit = 0
            elif capsule_type in (CAPSULE_MAX_STREAM_DATA, CAPSULE_STREAM_DATA_BLOCKED):
                raise SessionError(H3_MESSAGE_ERROR, "a WebTransport over HTTP/2 capsule")
            else:
                # Unknown (RFC 9297 §3.2): skipped, never held.
                available = len(buffer) - pos
                if length <= available:
                    start = pos + length
                    continue
                self._skip = length - available
                start = len(buffer)
                break
            if length > limit:
                raise SessionError(H3_MESSAGE_ERROR, "malformed capsule")
            if pos + length > len(buffer):
                break
            value = bytes(buffer[pos : pos + length])
            start = pos + length
            changed |= self._on_capsule(capsule_type, value)
            if self.close is not None and start < len(buffer):
                raise SessionError(H3_MESSAGE_ERROR, "data after WT_CLOSE_SESSION")
        del buffer[:start]
        if len(buffer) > MAX_CAPSULE:  # cannot happen with the limits above; a backstop
            raise SessionError(H3_MESSAGE_ERROR, "capsule too large")
        return changed

    def _on_capsule(self, capsule_type: int, value: bytes) -> bool:
        if capsule_type == CAPSULE_CLOSE_SESSION:
            if len(value) < 4:
                raise SessionError(H3_MESSAGE_ERROR, "malformed WT_CLOSE_SESSION")
            code = int.from_bytes(value[:4], "big")
            self.close = Closed(code, value[4:].decode("utf-8", "replace"))
            return True
        if capsule_type == CAPSULE_DRAIN_SESSION:
            self.draining = True
            return True
        read = _read_varint(value, 0)
        if read is None or read[1] != len(value):
            raise SessionError(H3_MESSAGE_ERROR, "malformed capsule")
        number = read[0]
        if not self.flow_control:
            return False  # d15 §5.1: ignored without flow control
        if capsule_type == CAPSULE_MAX_DATA:
            if number < self.peer_max_data:
                raise SessionError(WT_FLOW_CONTROL_ERROR, "WT_MAX_DATA went down")
            self.peer_max_data = number
            return True
        if capsule_type in (CAPSULE_MAX_STREAMS_BIDI, CAPSULE_MAX_STREAMS_UNI):
            if number > MAX_STREAMS_VALUE:
                raise SessionError(H3_DATAGRAM_ERROR, "WT_MAX_STREAMS above 2^60")
            bidi = int(capsule_type == CAPSULE_MAX_STREAMS_BIDI)
            if number < self.peer_max_streams[bidi]:
                raise SessionError(WT_FLOW_CONTROL_ERROR, "WT_MAX_STREAMS went down")
            self.peer_max_streams[bidi] = number
            return True
        # WT_DATA_BLOCKED, WT_STREAMS_BLOCKED: information only (d15 §5.6.3, §5.6.5).
        return False

    # -- the client's streams (receive side) ----------------------------------------

    def stream_data(self, stream_id: int, size: int, ended: bool) -> None:
        """Data on one of the client's or our streams of the session. Raises
        :class:`SessionError` when the client exceeds our limits (d15 §5.6.2, §5.6.4), and
        :class:`StreamRefused` for one stream too many without flow control."""
        if stream_id not in self.streams and stream_id & 1 == 0:
            # A stream the client opened (client-initiated ids are even).
            bidi = int(stream_id & 2 == 0)
            if not self.flow_control and self.opened[bidi] - self.closed[bidi] >= (
                self._stream_window
            ):
                # No WT_MAX_STREAMS to hold the client back (draft-02/07): the streams it
                # has open, or finished but not yet received by the app, are still bounded.
                raise StreamRefused
            self.opened[bidi] += 1
            if self.flow_control and self.opened[bidi] > self.max_streams[bidi]:
                raise SessionError(WT_FLOW_CONTROL_ERROR, "too many streams")
            self.streams[stream_id] = False
        self.received += size
        if self.flow_control and self.received > self.max_data:
            raise SessionError(WT_FLOW_CONTROL_ERROR, "data beyond WT_MAX_DATA")
        if ended and stream_id in self.streams:
            self.streams[stream_id] = True

    def stream_reset(self, stream_id: int, held: bool) -> None:
        """The client reset one of its streams: it no longer counts as open once the app
        has taken what it holds of it (``held``: bytes handed to the app and not yet
        consumed). Freeing the slot at once would let a client that opens, writes one byte
        and resets, again and again, grow the app's queue past the stream limit."""
        if self.streams.get(stream_id) is False:
            self.streams[stream_id] = True
        if not held:
            self._maybe_close(stream_id)

    def stream_consumed(self, stream_id: int, size: int, done: bool) -> None:
        """The app took ``size`` bytes of ``stream_id`` (``done``: nothing more is held for
        it): grant credit for them once half the window is used (d15 §5.6.4)."""
        self.consumed += size
        if self.flow_control and self.max_data - self.consumed < self._window // 2:
            self.max_data = self.consumed + self._window
            self._queue(CAPSULE_MAX_DATA, self.max_data)
        if done:
            self._maybe_close(stream_id)

    def _maybe_close(self, stream_id: int) -> None:
        if self.streams.get(stream_id) is not True:
            return
        del self.streams[stream_id]
        bidi = int(stream_id & 2 == 0)
        self.closed[bidi] += 1
        if not self.flow_control:
            return
        # d15 §5.6.2: the limit is cumulative; raise it as the client's streams finish.
        window = self._stream_window
        if self.max_streams[bidi] - self.closed[bidi] < window - window // 2:
            self.max_streams[bidi] = self.closed[bidi] + window
            kind = CAPSULE_MAX_STREAMS_BIDI if bidi else CAPSULE_MAX_STREAMS_UNI
            self._queue(kind, self.max_streams[bidi])

    def _queue(self, capsule_type: int, number: int) -> None:
        self.out += encode_capsule(capsule_type, encode_varint(number))

    # -- our side (send) ------------------------------------------------------------

    def send_credit(self) -> int:
        """Bytes we may still send on the session's streams (d15 §5.6.4); unbounded
        without flow control."""
        if not self.flow_control:
            return _VARINT_MAX
        return max(0, self.peer_max_data - self.sent)

    def can_open(self, unidirectional: bool) -> bool:
        """Whether the client's WT_MAX_STREAMS lets us open one more stream."""
        if not self.flow_control:
            return True
        bidi = int(not unidirectional)
        return self.we_opened[bidi] < self.peer_max_streams[bidi]

    def data_sent(self, size: int) -> None:
        self.sent += size

    def stream_opened(self, stream_id: int, unidirectional: bool) -> None:
        self.we_opened[int(not unidirectional)] += 1
        self.own_streams.add(stream_id)

    def blocked(self, unidirectional: bool | None) -> None:
        """We want to send (``None``) or open a stream but the client's limit stops us:
        WT_DATA_BLOCKED / WT_STREAMS_BLOCKED, once per limit (d15 §5.6.3, §5.6.5)."""
        if not self.flow_control:
            return
        if unidirectional is None:
            kind, limit = CAPSULE_DATA_BLOCKED, self.peer_max_data
        else:
            bidi = int(not unidirectional)
            kind = CAPSULE_STREAMS_BLOCKED_BIDI if bidi else CAPSULE_STREAMS_BLOCKED_UNI
            limit = self.peer_max_streams[bidi]
        if self._blocked_sent.get(kind) != limit:
            self._blocked_sent[kind] = limit
            self._queue(kind, limit)

    def drain(self) -> bool:
        """We are going away (graceful shutdown): WT_DRAIN_SESSION (d07 §4.6, d15 §4.7),
        once, where the dialect has capsules. True when one was queued."""
        if not self.capsules or self.drain_sent:
            return False
        self.drain_sent = True
        self.out += encode_capsule(CAPSULE_DRAIN_SESSION, b"")
        return True

    def take_output(self) -> bytes:
        """Capsules to write on the CONNECT stream now (none before the session is
        accepted: capsules follow the 2xx, RFC 9297 §3.2)."""
        if not self.accepted or not self.out:
            return b""
        data = bytes(self.out)
        self.out.clear()
        return data
