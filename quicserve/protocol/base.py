"""The typed interfaces of the protocol modules: one for the streams, one per input side.

A protocol object is used from two sides, and each side sees only its part:

* :class:`StreamProtocol`, the **stream side**: what the stream types
  (``quicserve/streams/``) call through ``StreamHost.protocol`` to answer a request, and
  what the connection calls on their behalf (body credit, the end of a stream). It is the
  same for HTTP/1.1, HTTP/2 and HTTP/3, so one stream type serves all three.
  :class:`WebTransportProtocol` adds the calls only an HTTP/3 WebTransport session makes.
* The **input side**, which differs with what feeds the protocol: bytes for HTTP/1.1 and
  HTTP/2 (:class:`ByteStreamProtocol`), datagrams for HTTP/3 over QUIC
  (:class:`DatagramProtocol`). Both share :class:`ServerProtocol`: events out, one timer,
  graceful shutdown.

The shape is aioquic's: the driver feeds what the transport read (``receive_data`` or
``receive_datagram``), drains ``next_event()`` until it returns ``None``, writes what the
protocol produced (``data_to_send()`` or ``datagrams_to_send(now)``), and calls
``handle_timer(now)`` once ``get_timer()`` has passed. Time is always an argument (seconds
on the driver's monotonic clock) so tests can run a protocol in memory with an explicit
clock. An alternative engine (another parser, another QUIC stack) is one more
implementation of these interfaces.

Response side rules, the same on every protocol:

* ``send_response`` may be followed by ``send_data`` calls; the last body call passes
  ``end_stream=True`` or is followed by ``send_trailers`` (which ends the stream).
* ``send_data`` never refuses data: what flow control does not let out yet is kept per
  stream, and ``buffered_amount(stream_id)`` says how much. The driver makes the app's
  ``send()`` wait while that is above ``Config.write_buffer_size`` and re-checks after
  every :class:`~quicserve.events.StreamWritable` event (QUIC: after every ACK). What
  flow control let out is framed at once; a byte-stream driver bounds it per connection
  (``connection_write_buffer_size``) with ``pending()``, the bytes not yet taken by
  ``data_to_send``.
* ``ack_body(stream_id, n)`` tells the protocol the app consumed ``n`` request body bytes,
  so HTTP/2 and QUIC can re-open their receive windows; request bodies are thus read from
  the peer only as fast as the app receives them.
* ``stream_done(stream_id, now)`` tells the protocol the stream type has finished with a
  stream (after a response end or a reset), so per-stream state can be dropped.
* ``shutdown()`` starts a graceful close: GOAWAY on HTTP/2 and HTTP/3, HTTP/1.1 closes once
  idle.
* ``receive_data(b"")`` means the peer closed its side.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from ..events import Headers, StreamEvent

if TYPE_CHECKING:
    from .http1 import H2CUpgrade


class StreamProtocol(Protocol):
    """The stream side: what a stream's response, and its end, need from the protocol."""

    def send_response(
        self, stream_id: int, status: int, headers: Headers, end_stream: bool = False
    ) -> None:
        """Start the response on ``stream_id`` (HTTP/1.1: a ``101`` turns the connection
        into a tunnel for the stream's body bytes)."""

    def send_informational(self, stream_id: int, status: int, headers: Headers) -> None:
        """Send a 1xx response (100 Continue, 103 Early Hints)."""

    def send_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        """Queue response body bytes; see the module docstring for flow control."""

    def send_trailers(self, stream_id: int, headers: Headers) -> None:
        """Send response trailers and end the stream."""

    def reset_stream(self, stream_id: int) -> None:
        """Abort a stream (HTTP/1.1: the whole connection) after an app failure."""

    def buffered_amount(self, stream_id: int) -> int:
        """Response bytes queued on ``stream_id`` that flow control has not let out."""

    def ack_body(self, stream_id: int, amount: int) -> None:
        """The app consumed ``amount`` bytes of request body on ``stream_id``."""

    def stream_done(self, stream_id: int, now: float) -> None:
        """The stream type has finished with ``stream_id`` (its response is complete or it
        was reset). HTTP/1.1 moves on to the next request here; the keep-alive clock starts
        when the last open stream is done."""


@runtime_checkable
class WebTransportProtocol(StreamProtocol, Protocol):
    """The stream side of a protocol that carries WebTransport sessions (HTTP/3, every
    dialect of ``protocol/webtransport.py``):
    a session's datagrams and the streams it owns besides its CONNECT stream."""

    def send_datagram(self, session_id: int, data: bytes) -> None:
        """An HTTP Datagram (RFC 9297) for the session on ``session_id``."""

    def open_session_stream(self, session_id: int, unidirectional: bool) -> int:
        """A new server-initiated stream of the session; its id."""

    def send_stream_data(
        self,
        stream_id: int,
        data: bytes,
        end_stream: bool = False,
        session_id: int | None = None,
    ) -> None:
        """Raw data on one of a session's streams (no HTTP framing), counted against the
        session's send credit when ``session_id`` is given."""

    def webtransport_dialect(self, session_id: int) -> str | None:
        """The draft the session's client speaks (``protocol/webtransport.py``)."""

    def session_closed_by_peer(self, session_id: int) -> tuple[int, str] | None:
        """The code and reason of the client's WT_CLOSE_SESSION, if any."""

    def session_send_credit(self, session_id: int) -> int:
        """Bytes the session may send on its streams now (the client's WT_MAX_DATA)."""

    def session_can_open(self, session_id: int, unidirectional: bool) -> bool:
        """Whether the client's WT_MAX_STREAMS lets the session open one more stream."""

    def session_blocked(self, session_id: int, unidirectional: bool | None) -> None:
        """Tell the client its limit holds us back (WT_DATA_BLOCKED for ``None``, else
        WT_STREAMS_BLOCKED)."""

    def close_session(self, session_id: int, code: int, reason: str) -> None:
        """End the session with WT_CLOSE_SESSION (where the dialect has it) and FIN."""

    def drain_session(self, session_id: int) -> None:
        """We are going away: WT_DRAIN_SESSION where the dialect has it."""

    def session_draining(self, session_id: int) -> bool:
        """Whether the client sent WT_DRAIN_SESSION."""

    def reset_session_stream(self, session_id: int, stream_id: int, code: int) -> None:
        """RESET_STREAM on our side of a session's stream, with WebTransport error
        ``code`` (ValueError outside the dialect's range)."""

    def stop_session_stream(self, session_id: int, stream_id: int, code: int) -> None:
        """STOP_SENDING on a session's stream, with WebTransport error ``code``."""


@runtime_checkable
class PushProtocol(StreamProtocol, Protocol):
    """A protocol that can push (HTTP/2, RFC 9113 §8.4)."""

    def push_promise(self, stream_id: int, path: bytes, headers: Headers) -> int | None:
        """Promise a pushed ``GET path`` on ``stream_id``; the promised stream's id, or
        ``None`` when the client disabled push."""


class ServerProtocol(StreamProtocol, Protocol):
    """What every connection driver needs from its protocol, whatever feeds it."""

    #: ``"1.1"``, ``"2"`` or ``"3"``: copied into the ASGI scope's ``http_version``.
    http_version: str

    def next_event(self) -> object | None:
        """The next event the input produced, or ``None``: a
        :data:`~quicserve.events.StreamEvent`, or an event only the protocol's own driver
        knows (the input sides below say which)."""

    def get_timer(self) -> float | None:
        """When ``handle_timer`` must be called next, or ``None`` for no deadline."""

    def handle_timer(self, now: float) -> None:
        """A deadline passed (header-read or keep-alive timeout; QUIC loss, ACK, idle)."""

    def shutdown(self) -> None:
        """Begin a graceful close (GOAWAY on HTTP/2 and HTTP/3; close when idle on
        HTTP/1.1)."""

    @property
    def closed(self) -> bool:
        """True once the connection must be closed after what is pending is written."""

    @property
    def open_streams(self) -> int:
        """Requests currently in flight on this connection."""


class ByteStreamProtocol(ServerProtocol, Protocol):
    """The input side of HTTP/1.1 and HTTP/2: bytes in, bytes out."""

    #: ``data_to_send`` handed out only part of the output: call it again while this is
    #: true (HTTP/1.1 keeps a large body piece apart from its head so it is not copied;
    #: always false on HTTP/2).
    split_output: bool

    def receive_data(self, data: bytes, now: float) -> None:
        """Feed bytes read from the peer (``b""`` = the peer closed its side)."""

    def next_event(self) -> StreamEvent | H2CUpgrade | None:
        """The next event, or ``None``; :class:`~quicserve.protocol.http1.H2CUpgrade` asks
        the driver to switch to HTTP/2 (``Upgrade: h2c``, HTTP/1.1 only)."""

    def data_to_send(self) -> bytes:
        """Bytes to write to the peer, clearing the protocol's outgoing buffer."""

    def pending(self) -> int:
        """Bytes ``data_to_send`` would return now (HTTP/1.1 counts only a tunnel's: its
        driver never lets output gather otherwise)."""

    def wants_read(self) -> bool:
        """Whether the driver should read more bytes now (HTTP/1.1 pauses while a
        request is in flight and enough data is buffered)."""


class DatagramProtocol(ServerProtocol, Protocol):
    """The input side of HTTP/3: one QUIC connection's datagrams in and out, and what the
    endpoint must learn from them (the connection IDs to route by, the handshake's end).
    QUIC flow control is the protocol's own, so there is no read pausing and no byte
    output: everything leaves as datagrams."""

    #: Connection IDs issued (to route to this connection) and retired since the driver
    #: last emptied these lists.
    issued_cids: list[bytes]
    retired_cids: list[bytes]
    #: The QUIC handshake has completed.
    handshake_complete: bool
    #: Once it has: it resumed a session ticket; its 0-RTT data was accepted; the client
    #: offered 0-RTT and it was refused.
    session_resumed: bool
    early_data_accepted: bool
    early_data_rejected: bool

    def receive_datagram(self, data: bytes, addr: Any, now: float) -> None:
        """Feed one UDP datagram from ``addr`` (a socket address)."""

    def next_event(self) -> StreamEvent | None:
        """The next neutral event, or ``None``."""

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Any]]:
        """Datagrams to send now, each with its destination address."""

    @property
    def draining(self) -> bool:
        """GOAWAY was sent: the connection closes when its last request is done."""
