"""Neutral stream events: what every protocol module reports about its streams.

The protocol modules (``quicserve/protocol/http1.py``, ``http2.py``, ``http3.py``) turn
h11, h2 and aioquic.h3 events into these, so that the stream types in
``quicserve/streams/`` never see a protocol library. Rules:

* Events are frozen, slotted dataclasses named in the past tense, like aioquic's.
* Headers are lists of ``(name, value)`` byte pairs, names lower-cased, exactly as ASGI
  wants them; HTTP/2 and HTTP/3 pseudo-headers are already taken apart into fields.
* ``stream_id`` is the protocol's own stream number (HTTP/1.1 counts requests from 1).
* Nothing here carries an ``http_version`` string: behaviour that differs between
  protocols is described by :class:`quicserve.connection_info.Capabilities`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

Headers = list[tuple[bytes, bytes]]

#: What each field line counts besides its name and value when a field section is sized
#: (RFC 9113 §6.5.2, RFC 9114 §4.2.2), and what a QPACK table entry counts besides its
#: name and value (RFC 9204 §3.2.1): 32 octets. Here, on the ground floor, because both the
#: request field rules (``protocol/fields.py``) and the QPACK guard (``quic/qpack_guard.py``)
#: use it, and ``quic/`` is below ``protocol/``.
FIELD_LINE_OVERHEAD = 32


@dataclass(frozen=True, slots=True)
class RequestReceived:
    """A request head arrived; the body (if any) follows as :class:`BodyReceived`.

    ``raw_path`` is the request target as sent (path and query). ``authority`` is the
    Host header or ``:authority``. ``early_data`` is true for a request that arrived in
    QUIC 0-RTT (RFC 8470). ``protocol`` is the extended CONNECT ``:protocol`` value
    (RFC 8441 / RFC 9220), or ``None``.
    """

    stream_id: int
    method: bytes
    raw_path: bytes
    headers: Headers
    scheme: str | None = None
    authority: bytes | None = None
    protocol: str | None = None
    early_data: bool = False
    #: HTTP/1.1 only: the request wants ``100 Continue`` before it sends its body.
    expect_continue: bool = False
    #: HTTP/1.1 only: the request asked to switch to WebSocket (RFC 6455 Upgrade).
    websocket_upgrade: bool = False


@dataclass(frozen=True, slots=True)
class BodyReceived:
    """A chunk of request body. The stream must call ``ack_body`` once it is consumed."""

    stream_id: int
    data: bytes


@dataclass(frozen=True, slots=True)
class BodyEnded:
    """The request body is complete; ``trailers`` holds request trailers, if any."""

    stream_id: int
    trailers: Headers = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class StreamReset:
    """The peer abandoned the stream (RST_STREAM, STOP_SENDING, or a lost connection)."""

    stream_id: int
    error_code: int = 0


@dataclass(frozen=True, slots=True)
class PeerHalfClosed:
    """HTTP/1.1: the peer closed its sending side (FIN) after this complete request
    (RFC 9112 §9.6). It sends nothing more, but it may still read: the response goes
    out; once the body is read, ``receive`` says ``http.disconnect``."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class StreamWritable:
    """Flow-control credit arrived: buffered response data may now drain further."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The connection is finished: the transport should flush what is left and close."""

    error_code: int = 0
    reason: str = ""


@dataclass(frozen=True, slots=True)
class SessionDatagramReceived:
    """HTTP/3 only: an HTTP Datagram (RFC 9297) for the WebTransport session whose CONNECT
    stream is ``session_id``."""

    session_id: int
    data: bytes


@dataclass(frozen=True, slots=True)
class SessionStreamDataReceived:
    """HTTP/3 only: data on a WebTransport stream ``stream_id`` of session ``session_id``
    (``ended``: the peer finished that stream)."""

    session_id: int
    stream_id: int
    data: bytes
    ended: bool


@dataclass(frozen=True, slots=True)
class SessionUpdated:
    """HTTP/3 only: the client changed what the WebTransport session on ``session_id`` may
    do (new send credit, WT_CLOSE_SESSION, WT_DRAIN_SESSION): its app call should look."""

    session_id: int


@dataclass(frozen=True, slots=True)
class SessionStreamReset:
    """HTTP/3 only: the client abandoned a direction of WebTransport stream ``stream_id``
    of session ``session_id``: its sending side (RESET_STREAM) or, with
    ``stop_sending``, ours (STOP_SENDING). ``code`` is the WebTransport application error
    code the HTTP/3 error code carried, or ``None`` when it carried none."""

    session_id: int
    stream_id: int
    code: int | None
    stop_sending: bool = False


StreamEvent = (
    RequestReceived
    | BodyReceived
    | BodyEnded
    | StreamReset
    | PeerHalfClosed
    | StreamWritable
    | ConnectionClosed
    | SessionDatagramReceived
    | SessionStreamDataReceived
    | SessionUpdated
    | SessionStreamReset
)
