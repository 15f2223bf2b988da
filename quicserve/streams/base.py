"""StreamBase: what every stream type shares, and the one access-log line they all write.

:class:`~quicserve.streams.http.HTTPStream`,
:class:`~quicserve.streams.websocket.WebSocketStream` and
:class:`~quicserve.streams.webtransport.WebTransportSession` are one ASGI app call each,
driven by the same connection through the same :class:`StreamHost`. What they share lives
here:

* the constructor plumbing: ``(app, host, info, request, state)``, which is how the
  connection makes every stream type;
* the app's one-shot wake-up: a stream that must wait calls :meth:`StreamBase._arm` and
  awaits the wake-up it returns; an event from the connection calls
  :meth:`StreamBase._wake`;
* the access log: :meth:`StreamBase._log_access` writes one line per app call, from the
  request, the status and the bytes sent, in ``--access-log-format`` when one is set.

Rules:

* No ``await`` between a stream's check of its state and ``_arm()``: an event that came in
  between would find no wake-up to set, and the app would wait for nothing.
* The status logged is what the peer got: the response's status; for a WebSocket, 101
  (HTTP/1.1) or 200 (extended CONNECT) once accepted, else the refusal's (403 for a
  close before accept, 4xx for a bad handshake, 500 for an app error); for a WebTransport
  session, 200, 403 or 500; 0 if nothing was sent. The bytes are what the server sent on
  the stream after the head: the response body, the WebSocket's frames (or the refusal's
  body), the WebTransport session's datagram and stream payloads.
* Without ``--access-log-format`` the line is ``DEFAULT_FORMAT`` (``accesslog.py``) with
  logging's lazy arguments; a WebSocket adds its close code, ``(WebSocket 1000)``, and a
  WebTransport session ``(WebTransport)``. With a format, the format is the whole line.
* Stream types keep ``__slots__``: one HTTPStream is made per request.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

from ..accesslog import render
from ..config import Config
from ..connection_info import ConnectionInfo
from ..events import Headers, RequestReceived
from ..lowlevel import Wakeup
from ..protocol.base import StreamProtocol
from ..types import ASGIApp

access_logger = logging.getLogger("quicserve.access")


class StreamHost(Protocol):
    """What a stream needs from the connection it lives on (TCP or QUIC)."""

    config: Config

    @property
    def protocol(self) -> StreamProtocol:
        """The sans-IO protocol object whose ``send_*`` methods produce the response (its
        stream side; a WebTransport session also checks for the HTTP/3 extras)."""

    #: Makes the one-shot wake-ups a stream waits on (see ``quicserve.lowlevel``).
    new_wakeup: Callable[[], Wakeup]

    def extensions_for(self, info: ConnectionInfo) -> dict[str, Any]:
        """The connection's base ASGI extensions (built once per connection info)."""

    async def flush(self, stream_id: int) -> None:
        """Write what the protocol produced; wait while ``stream_id`` is over its buffer
        or the connection is over its write budget."""

    def ack_body(self, stream_id: int, amount: int) -> None:
        """The app consumed ``amount`` request body bytes."""

    async def stream_finished(self, stream_id: int) -> None:
        """The stream is done with the connection."""

    def push(self, parent: RequestReceived, path: bytes, headers: Headers) -> None:
        """Start a server-pushed request (HTTP/2 only)."""


class StreamBase:
    """One ASGI app call for one request: the part every stream type shares.

    A connection drives a stream with ``body_received``, ``body_ended``, ``reset`` and
    ``server_shutdown``, runs ``run()`` once, and reads ``status`` when it is over."""

    __slots__ = (
        "_app",
        "_bytes_sent",
        "_host",
        "_info",
        "_lifespan_state",
        "_status",
        "_waiter",
        "request",
        "stream_id",
    )

    def __init__(
        self,
        app: ASGIApp,
        host: StreamHost,
        info: ConnectionInfo,
        request: RequestReceived,
        state: dict[str, Any] | None,
    ) -> None:
        self._app = app
        self._host = host
        self._info = info
        self.request = request
        self.stream_id = request.stream_id
        #: The lifespan state, copied into each scope.
        self._lifespan_state = state
        self._waiter: Wakeup | None = None
        #: What the access log reports: the status sent (0: none) and the bytes after it.
        self._status = 0
        self._bytes_sent = 0

    @property
    def status(self) -> int:
        """The status sent so far (0 before, or without, a response)."""
        return self._status

    # -- what the connection calls ------------------------------------------------------

    def body_received(self, data: bytes) -> None:
        """Bytes of the request body (or of the tunnel) arrived."""
        raise NotImplementedError

    def body_ended(self) -> None:
        """The peer ended its side of the stream."""
        raise NotImplementedError

    def reset(self) -> None:
        """The stream or the whole connection is gone."""
        raise NotImplementedError

    def peer_half_closed(self) -> None:
        """HTTP/1.1: the peer sends no more but may still read (see ``PeerHalfClosed``);
        request and WebSocket streams act on it, others need not."""

    def server_shutdown(self) -> None:
        """Graceful shutdown reached the stream's connection."""
        raise NotImplementedError

    async def run(self) -> None:
        """The app call, from start to the stream's release."""
        raise NotImplementedError

    # -- the app's wake-up --------------------------------------------------------------

    def _wake(self) -> None:
        """Wake the app's pending ``receive`` (or other wait), if any."""
        if self._waiter is not None:
            self._waiter.set()
            self._waiter = None

    def _arm(self) -> Wakeup:
        """A fresh wake-up that the next :meth:`_wake` sets; await it."""
        waiter = self._waiter = self._host.new_wakeup()
        return waiter

    # -- the access log -----------------------------------------------------------------

    def _log_access(self, duration: float, note: str = "") -> None:
        """The one access-log line of this app call, ``duration`` seconds long; ``note``
        ends the built-in line (never a custom format's)."""
        request = self.request
        info = self._info
        fmt = self._host.config.access_log_format
        if fmt is not None:
            line = render(fmt, request, info, self._status, self._bytes_sent, duration)
            access_logger.info("%s", line)
            return
        client = info.client
        access_logger.info(
            '%s - "%s %s HTTP/%s" %d %d %.1fms%s',
            f"{client[0]}:{client[1]}" if client else "-",
            request.method.decode("ascii", "replace"),
            request.raw_path.decode("latin-1"),
            info.http_version,
            self._status,
            self._bytes_sent,
            duration * 1000,
            note,
        )
