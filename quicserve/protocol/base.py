"""The interface every byte-stream protocol module offers to the connection driver.

The shape is aioquic's: the driver feeds what the transport read with ``receive_data``,
drains ``next_event()`` until it returns ``None``, writes ``data_to_send()`` to the
transport, and calls ``handle_timer(now)`` once ``get_timer()`` has passed. Time is always
an argument (seconds on the driver's monotonic clock) so tests can run a protocol in memory
with an explicit clock.

Response side rules, shared by HTTP/1.1 and HTTP/2 (and mirrored by HTTP/3):

* ``send_response`` may be followed by ``send_data`` calls; the last body call passes
  ``end_stream=True`` or is followed by ``send_trailers`` (which ends the stream).
* ``send_data`` never refuses data: what flow control does not let out yet is kept per
  stream, and ``buffered_amount(stream_id)`` says how much. The driver makes the app's
  ``send()`` wait while that is above ``Config.write_buffer_size`` and re-checks after
  every :class:`~quicserve.events.StreamWritable` event. What flow control let out is
  framed at once; the driver bounds it per connection (``connection_write_buffer_size``)
  with ``pending()``, the bytes not yet taken by ``data_to_send``.
* ``ack_body(stream_id, n)`` tells the protocol the app consumed ``n`` request body bytes,
  so HTTP/2 can re-open its receive window; request bodies are thus read from the peer only
  as fast as the app receives them.
* ``stream_done(stream_id, now)`` tells the protocol the stream type has finished with a stream
  (after a response end or a reset), so per-stream state can be dropped.
* ``shutdown()`` starts a graceful close: HTTP/2 sends GOAWAY, HTTP/1.1 closes once idle.
* ``receive_data(b"")`` means the peer closed its side.
"""

from __future__ import annotations

from typing import Protocol

from ..events import Headers, StreamEvent


class ServerProtocol(Protocol):
    """What the TCP connection driver needs from a protocol module."""

    #: ``"1.1"`` or ``"2"``: copied into the ASGI scope's ``http_version``.
    http_version: str

    def receive_data(self, data: bytes, now: float) -> None:
        """Feed bytes read from the peer (``b""`` = the peer closed its side)."""

    def next_event(self) -> StreamEvent | None:
        """The next event the received bytes produced, or ``None``."""

    def data_to_send(self) -> bytes:
        """Bytes to write to the peer, clearing the protocol's outgoing buffer."""

    def pending(self) -> int:
        """Bytes ``data_to_send`` would return now (HTTP/1.1 counts only a tunnel's: its
        driver never lets output gather otherwise)."""

    def get_timer(self) -> float | None:
        """When ``handle_timer`` must be called next, or ``None`` for no deadline."""

    def handle_timer(self, now: float) -> None:
        """A deadline passed: header-read or keep-alive timeout."""

    def wants_read(self) -> bool:
        """Whether the driver should read more bytes now (HTTP/1.1 pauses while a
        request is in flight and enough data is buffered)."""

    def send_response(
        self, stream_id: int, status: int, headers: Headers, end_stream: bool = False
    ) -> None:
        """Start the response on ``stream_id``."""

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

    def shutdown(self) -> None:
        """Begin a graceful close (GOAWAY on HTTP/2; close when idle on HTTP/1.1)."""

    @property
    def closed(self) -> bool:
        """True once the connection must be closed after ``data_to_send`` is written."""

    @property
    def open_streams(self) -> int:
        """Requests currently in flight on this connection."""
