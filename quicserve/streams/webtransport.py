"""WebTransportSession: one WebTransport session over HTTP/3 <-> one ASGI app call.

Experimental, behind ``--webtransport``. The wire protocol is
draft-ietf-webtrans-http3-02, which is what Chromium speaks to a server that advertises
``SETTINGS_ENABLE_WEBTRANSPORT`` (aioquic sends it, with ``SETTINGS_H3_DATAGRAM``, when
the option is on): an extended CONNECT with ``:protocol`` webtransport opens the session,
the ``200`` carries ``sec-webtransport-http3-draft: draft02``, the session's streams start
with its id, its datagrams are HTTP Datagrams (RFC 9297) in QUIC DATAGRAM frames
(RFC 9221), and ending the CONNECT stream ends the session.

The ASGI messages follow the prototype in aioquic's example server, so apps written for it
keep working; the additions are marked (+):

* scope ``{"type": "webtransport", "http_version": "3", "scheme": "https", "path", ...}``
* receive: ``webtransport.connect``; ``webtransport.datagram.receive {data}``;
  ``webtransport.stream.receive {stream, data, end(+)}``; ``webtransport.disconnect (+)``
  once the session is over (a later ``receive`` raises :class:`ClientDisconnected`, so an
  app that loops on ``receive`` without knowing ``disconnect`` still ends).
* send: ``webtransport.accept {headers(+)}``; ``webtransport.close`` (before accept: 403);
  ``webtransport.datagram.send {data}``; ``webtransport.stream.send {stream, data,
  end(+)}``. On a bidirectional stream the data goes back on that stream; on a stream the
  client opened unidirectionally, the reply goes on one server-opened unidirectional
  stream per client stream.

Limits: stream data is acknowledged into QUIC flow control only as the app receives it;
at most ``ws_max_queue`` datagrams wait for the app (more are dropped: datagrams are
unreliable by definition).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Any

from ..connection_info import ConnectionInfo
from ..events import RequestReceived
from ..protocol.base import WebTransportProtocol
from ..types import ASGIApp, Message, Scope
from .base import StreamBase, StreamHost, access_logger
from .http import response_headers, upgrade_scope
from .websocket import ClientDisconnected

logger = logging.getLogger("quicserve.error")

_CONNECTING, _OPEN, _CLOSED = range(3)
_DRAFT_HEADER = (b"sec-webtransport-http3-draft", b"draft02")


def is_webtransport_request(request: RequestReceived) -> bool:
    """An extended CONNECT with ``:protocol`` webtransport (HTTP/3 only)."""
    return request.method == b"CONNECT" and request.protocol == "webtransport"


class WebTransportSession(StreamBase):
    """One session and the ASGI app call that serves it.

    ``status`` is the CONNECT's: 200 once accepted, 403 or 500 if refused, or 0. The bytes
    it logs are the payloads of the datagrams and stream data the app sent."""

    __slots__ = (
        "_connect_delivered",
        "_datagrams",
        "_disconnect_delivered",
        "_max_datagrams",
        "_queue",
        "_reply_streams",
        "_session_protocol",
        "_state",
        "dropped_datagrams",
    )

    def __init__(
        self,
        app: ASGIApp,
        host: StreamHost,
        info: ConnectionInfo,
        request: RequestReceived,
        state: dict[str, Any] | None,
    ) -> None:
        super().__init__(app, host, info, request, state)
        self._state = _CONNECTING
        self._connect_delivered = False
        self._disconnect_delivered = False
        self._queue: deque[Message] = deque()
        self._datagrams = 0
        self._max_datagrams = max(1, host.config.ws_max_queue)
        #: client unidirectional stream -> the server stream its replies go on
        self._reply_streams: dict[int, int] = {}
        self.dropped_datagrams = 0
        # The calls only a protocol that carries WebTransport has (HTTP/3); checked once.
        protocol = host.protocol
        self._session_protocol = protocol if isinstance(protocol, WebTransportProtocol) else None

    # -- events from the connection ----------------------------------------------------

    def body_received(self, data: bytes) -> None:
        """Bytes on the CONNECT stream itself: draft-02 defines none; ignore them."""
        self._host.ack_body(self.stream_id, len(data))

    def body_ended(self) -> None:
        """The client ended the CONNECT stream: the session is over."""
        self._finish()

    def reset(self) -> None:
        """The CONNECT stream was reset or the connection closed."""
        self._finish()

    def server_shutdown(self) -> None:
        """Graceful shutdown: end the session (the app sees ``webtransport.disconnect``)."""
        if self._state == _OPEN:
            self._host.protocol.send_data(self.stream_id, b"", True)
            self._finish()

    def datagram_received(self, data: bytes) -> None:
        if self._state == _CLOSED:
            return
        if self._datagrams >= self._max_datagrams:
            self.dropped_datagrams += 1
            return
        self._datagrams += 1
        self._queue.append({"type": "webtransport.datagram.receive", "data": data})
        self._wake()

    def stream_data_received(self, stream_id: int, data: bytes, ended: bool) -> None:
        if self._state == _CLOSED:
            self._host.ack_body(stream_id, len(data))
            return
        self._queue.append(
            {"type": "webtransport.stream.receive", "stream": stream_id, "data": data, "end": ended}
        )
        self._wake()

    def _finish(self) -> None:
        if self._state != _CLOSED:
            self._state = _CLOSED
            self._wake()

    # -- the ASGI call -----------------------------------------------------------------

    def build_scope(self) -> Scope:
        request = self.request
        scope = upgrade_scope(
            "webtransport",
            request,
            self._info,
            self._host.config.root_path,
            self._lifespan_state,
            request.scheme or self._info.scheme,
            {},
        )
        scope["method"] = "CONNECT"
        return scope

    async def run(self) -> None:
        """Call the app; refuse the session if it neither accepts nor closes it."""
        logged = access_logger.isEnabledFor(logging.INFO)
        started = time.perf_counter() if logged else 0.0
        host = self._host
        try:
            await self._app(self.build_scope(), self.receive, self.send)
        except ClientDisconnected:
            pass  # a receive after the disconnect: the app's loop ends here
        except Exception:
            logger.exception("Exception in ASGI application")
            if self._state == _CONNECTING:
                await self._respond(500)
        else:
            if self._state == _CONNECTING:
                logger.error("ASGI app returned without accepting the WebTransport session")
                await self._respond(500)
        finally:
            if self._state == _OPEN:
                host.protocol.send_data(self.stream_id, b"", True)
            self._state = _CLOSED
            # Credit for stream data the app never took, so the connection is not starved.
            for message in self._queue:
                if message["type"] == "webtransport.stream.receive":
                    host.ack_body(message["stream"], len(message["data"]))
            self._queue.clear()
            await host.stream_finished(self.stream_id)
            if logged:
                self._log_access(time.perf_counter() - started, " (WebTransport)")

    async def _respond(self, status: int) -> None:
        self._status = status
        self._state = _CLOSED
        self._host.protocol.send_response(
            self.stream_id, status, response_headers([(b"content-length", b"0")], self._info), True
        )
        await self._host.flush(self.stream_id)

    async def receive(self) -> Message:
        if not self._connect_delivered:
            self._connect_delivered = True
            return {"type": "webtransport.connect"}
        while True:
            if self._queue:
                message = self._queue.popleft()
                if message["type"] == "webtransport.stream.receive":
                    self._host.ack_body(message["stream"], len(message["data"]))
                else:
                    self._datagrams -= 1
                return message
            if self._state == _CLOSED:
                if self._disconnect_delivered:
                    raise ClientDisconnected("the WebTransport session is over")
                self._disconnect_delivered = True
                return {"type": "webtransport.disconnect"}
            await self._arm().wait()

    async def send(self, message: Message) -> None:
        msg_type = message["type"]
        protocol = self._host.protocol
        if msg_type == "webtransport.accept":
            if self._state != _CONNECTING:
                raise RuntimeError("'webtransport.accept' sent twice or after the session")
            self._state = _OPEN
            self._status = 200
            headers = response_headers(message.get("headers", ()), self._info)
            protocol.send_response(self.stream_id, 200, [*headers, _DRAFT_HEADER])
            await self._host.flush(self.stream_id)
        elif msg_type == "webtransport.close":
            if self._state == _CONNECTING:
                await self._respond(403)
            elif self._state == _OPEN:
                protocol.send_data(self.stream_id, b"", True)
                self._finish()
                await self._host.flush(self.stream_id)
        elif msg_type == "webtransport.datagram.send":
            if self._state != _OPEN:
                raise ClientDisconnected("the WebTransport session is not open")
            data = bytes(message["data"])
            self._bytes_sent += len(data)
            self._extras().send_datagram(self.stream_id, data)
            await self._host.flush(self.stream_id)
        elif msg_type == "webtransport.stream.send":
            if self._state != _OPEN:
                raise ClientDisconnected("the WebTransport session is not open")
            session_protocol = self._extras()
            stream_id = int(message["stream"])
            if stream_id % 4 == 2:
                # The client opened it unidirectionally: reply on a stream of our own.
                reply = self._reply_streams.get(stream_id)
                if reply is None:
                    reply = session_protocol.open_session_stream(self.stream_id, True)
                    self._reply_streams[stream_id] = reply
                stream_id = reply
            data = bytes(message.get("data", b""))
            self._bytes_sent += len(data)
            session_protocol.send_stream_data(stream_id, data, bool(message.get("end", False)))
            await self._host.flush(stream_id)
        else:
            raise RuntimeError(f"unexpected ASGI message type {msg_type!r}")

    def _extras(self) -> WebTransportProtocol:
        session_protocol = self._session_protocol
        if session_protocol is None:
            # An extended CONNECT for webtransport on a protocol without WebTransport
            # (HTTP/2): it can be answered, but carries no datagrams or streams.
            raise RuntimeError("WebTransport datagrams and streams need HTTP/3")
        return session_protocol
