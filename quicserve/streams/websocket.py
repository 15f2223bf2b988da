"""WebSocketStream: one WebSocket <-> one ASGI ``websocket`` scope, on every protocol.

How a WebSocket opens differs per protocol, and only the handshake here knows it:

* HTTP/1.1 (RFC 6455 §4): ``GET`` with ``Upgrade: websocket``, accepted with ``101`` and
  ``Sec-WebSocket-Accept``; the HTTP/1.1 protocol then turns the connection into a tunnel.
* HTTP/2 (RFC 8441) and HTTP/3 (RFC 9220): extended CONNECT with ``:protocol`` websocket,
  accepted with ``200``; the stream's DATA frames carry the WebSocket bytes.

After that the stream is the same everywhere: the peer's bytes arrive as body events
(``body_received``/``body_ended``), frames leave through ``protocol.send_data``, and the
framing is a framer's (``wsframing.py``: wsproto's, or the websockets package's with
``--ws-engine``), the same on every transport.

Rules:

* The ASGI websocket spec (2.4) in full: ``websocket.connect`` first; ``accept`` with a
  subprotocol and headers; text and binary both ways; close codes and reasons both ways;
  ``websocket.http.response`` lets the app deny the handshake with any HTTP response;
  ``websocket.close`` before ``accept`` is a 403. ``send`` on a WebSocket the peer or the
  server closed raises :class:`ClientDisconnected` (an ``OSError``).
* Limits: a message larger than ``ws_max_size`` closes with 1009; at most
  ``ws_max_queue`` messages wait for the app, after which the peer's bytes are neither
  parsed nor acknowledged, so flow control (TCP, HTTP/2, QUIC) stops the peer. With
  permessage-deflate, one read cannot inflate without bound before the size check (the
  framer feeds wsproto ``feed_limit`` bytes at a time; websockets inflates at most up to
  the limit).
* Liveness: a ping after ``ws_ping_interval`` idle seconds; no pong within
  ``ws_ping_timeout`` closes with 1011. A closing handshake the peer does not finish
  within ``ws_ping_timeout`` (or 5 s when that is 0) ends the stream anyway.
* Failures: invalid UTF-8 closes with 1007, protocol errors with 1002 (either engine);
  an app exception closes with 1011 after ``accept`` and is a 500 before it.
* A failure the peer's bytes cause (1002, 1007, 1009) waits for the app to answer what
  came before it: while messages that arrived ahead of the bad frame are queued, or the
  app is still handling the last one it received (it has not called ``receive`` again),
  nothing more is parsed and the close frame is not sent; the app's next ``receive``
  (or ``websocket.close``, or its return) fails the WebSocket, so its replies go out
  first, the same on every backend and however the bytes were split into reads
  (Autobahn's "strict" behaviour, cases 5.x/6.x). An app that stays busy longer than
  ``ws_ping_timeout`` (or 5 s) is not waited for. Whatever
  happens, the stream ends, the app sees ``websocket.disconnect``, and the connection
  and its other streams carry on (HTTP/1.1: the connection was this stream's alone).
* Graceful shutdown closes open WebSockets with 1001 (``server_shutdown``).
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import time
from collections import deque
from typing import Any

import anyio
import anyio.abc
from wsproto.utilities import generate_accept_token, split_comma_header

from ..connection_info import ConnectionInfo
from ..events import Headers, RequestReceived
from ..lowlevel import Wakeup
from ..types import ASGIApp, Message, Scope
from .base import StreamBase, StreamHost, access_logger
from .http import SAFE_METHODS, response_headers, upgrade_scope
from .wsengine import framer_factory
from .wsframing import Failed, Framer, PeerClosed, PongReceived, negotiate_deflate

logger = logging.getLogger("quicserve.error")

# Stream states. RESPONDING: the app is denying the handshake with an HTTP response.
_CONNECTING, _RESPONDING, _OPEN, _CLOSING, _CLOSED = range(5)
_ABNORMAL = 1006


class ClientDisconnected(OSError):
    """``send`` on a WebSocket that is closed (ASGI spec 2.4: a subclass of OSError)."""


def is_websocket_request(request: RequestReceived) -> bool:
    """Whether ``request`` opens a WebSocket: an HTTP/1.1 ``GET`` with ``Upgrade:
    websocket``, or an extended CONNECT with ``:protocol`` websocket (HTTP/2, HTTP/3)."""
    if request.protocol is not None:
        return request.method == b"CONNECT" and request.protocol == "websocket"
    return request.websocket_upgrade and request.method == b"GET"


class WebSocketStream(StreamBase):
    """One WebSocket and the ASGI app call that serves it.

    ``status`` is the handshake's: 101 or 200 once accepted, the denial's status, or 0.
    The bytes it logs are the WebSocket's frames as sent (or the denial's body)."""

    __slots__ = (
        "_app_busy",
        "_app_closed",
        "_backlog",
        "_close_code",
        "_close_deadline",
        "_close_reason",
        "_close_timeout",
        "_connect_delivered",
        "_failure",
        "_failure_deadline",
        "_framer",
        "_inbox",
        "_keeper_wakeup",
        "_last_received",
        "_max_queue",
        "_max_size",
        "_ping_interval",
        "_ping_payload",
        "_ping_sent",
        "_queue",
        "_remote_ended",
        "_response_headers",
        "_state",
        "_task_group",
        "_transport_ended",
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
        config = host.config
        self._max_size = config.ws_max_size
        self._max_queue = max(1, config.ws_max_queue)
        self._ping_interval = config.ws_ping_interval
        self._close_timeout = config.ws_ping_timeout or 5.0
        self._state = _CONNECTING
        self._framer: Framer | None = None
        #: Peer bytes not yet fed to the framer (the queue was full, or before accept).
        self._inbox: deque[bytes] = deque()
        # The framer still holds frames of the last read that were not parsed yet, because
        # the app's queue filled up (they are parsed once it has room again).
        self._backlog = False
        self._queue: deque[Message] = deque()
        self._remote_ended = False
        self._connect_delivered = False
        self._app_closed = False
        self._close_code = _ABNORMAL
        self._close_reason = ""
        self._transport_ended = False
        self._keeper_wakeup: Wakeup | None = None
        self._close_deadline = 0.0
        self._last_received = time.monotonic()
        self._ping_payload: bytes | None = None
        #: A failure the peer's bytes caused, held until the app has answered the
        #: messages before it (see ``_peer_failed``), and the latest time to act on it.
        self._failure: tuple[int, str] | None = None
        self._failure_deadline = 0.0
        #: The app took a message and has not called ``receive`` since.
        self._app_busy = False
        self._ping_sent = 0.0
        self._response_headers: Headers | None = None
        self._task_group: anyio.abc.TaskGroup | None = None

    # -- events from the connection ----------------------------------------------------

    def body_received(self, data: bytes) -> None:
        """WebSocket bytes from the peer (before ``accept`` they wait, unacknowledged)."""
        if self._state == _CLOSED or self._state == _RESPONDING:
            self._host.ack_body(self.stream_id, len(data))
            return
        self._last_received = time.monotonic()
        self._inbox.append(data)
        if self._state != _CONNECTING:
            self._process()

    def body_ended(self) -> None:
        """The peer ended its side (END_STREAM on HTTP/2 and HTTP/3, EOF on HTTP/1.1)."""
        if self._state == _CONNECTING and self.request.websocket_upgrade:
            return  # HTTP/1.1: just the end of the upgrade request itself
        self._remote_ended = True
        if self._state != _CONNECTING:
            self._process()

    def peer_half_closed(self) -> None:
        """HTTP/1.1: the peer sent its FIN right after the upgrade request: once accepted,
        the tunnel has no peer side (the app hears of it as of any EOF)."""
        self._remote_ended = True
        if self._state != _CONNECTING:
            self._process()

    def reset(self) -> None:
        """The stream or the whole connection is gone: no close handshake is possible."""
        if self._state != _CLOSED:
            self._transport_ended = True
            self._finish(_ABNORMAL, "")

    def server_shutdown(self) -> None:
        """Graceful shutdown: start the closing handshake with 1001 (Going Away)."""
        if self._state == _OPEN:
            self._start_close(1001, "server shutting down")

    # -- the WebSocket protocol --------------------------------------------------------

    def _process(self) -> None:
        """Feed queued peer bytes to the framer while the app's queue has room."""
        framer = self._framer
        if framer is None:
            # Refused (an HTTP answer instead of the switch): there is no tunnel, so the
            # peer's end (a FIN after reading the refusal) has nothing to frame.
            return
        inbox = self._inbox
        host = self._host
        queue = self._queue
        max_queue = self._max_queue
        feed_limit = framer.feed_limit
        while (
            (inbox or self._backlog)
            and len(queue) < max_queue
            and self._state in (_OPEN, _CLOSING)
            and self._failure is None
        ):
            if not self._backlog:
                data = inbox.popleft()
                if feed_limit and len(data) > feed_limit:
                    inbox.appendleft(data[feed_limit:])
                    data = data[:feed_limit]
                host.ack_body(self.stream_id, len(data))
                framer.receive_data(data)
            # The framer parses at most as many messages as the queue has room for; the
            # rest of the read waits in it, so --ws-max-queue bounds the messages parsed
            # and queued, not just the reads.
            events, self._backlog = framer.next_events(max_queue - len(queue))
            self._write(framer.data_to_send())  # pongs, the answer to a close
            for event in events:
                cls = type(event)
                if cls is str:
                    queue.append({"type": "websocket.receive", "text": event})
                elif cls is bytes:
                    queue.append({"type": "websocket.receive", "bytes": event})
                else:
                    self._on_event(event)
                    if self._state == _CLOSED or self._failure is not None:
                        break
            if queue:
                self._wake()
        if self._state == _CLOSED:
            self._drop_inbox()
        elif self._remote_ended and not inbox and not self._backlog and self._failure is None:
            # The peer's side ended without a closing handshake (RFC 6455 §7.1.5: 1006).
            self._end_transport()
            self._finish(_ABNORMAL, "")

    def _on_event(self, event: object) -> None:
        cls = type(event)
        if cls is PongReceived:
            assert isinstance(event, PongReceived)
            if event.payload == self._ping_payload:
                self._ping_payload = None
        elif cls is PeerClosed:
            # The peer started the closing handshake (the framer answered it), or answered
            # the close we sent: either way our side ends now.
            assert isinstance(event, PeerClosed)
            self._end_transport()
            self._finish(event.code, event.reason)
        elif cls is Failed:
            assert isinstance(event, Failed)
            self._peer_failed(event.code, event.reason)

    def _peer_failed(self, code: int, reason: str) -> None:
        """The peer's bytes broke the protocol. Fail now, unless the app has messages
        from before the bad frame to answer: then hold the failure (and the rest of the
        peer's bytes) until its next ``receive`` shows it has answered them."""
        if not self._queue and not self._app_busy:
            self._fail(code, reason)
            return
        self._failure = (code, reason)
        self._failure_deadline = time.monotonic() + self._close_timeout
        self._wake_keeper()

    def _fail_held(self) -> bool:
        """Act on a held failure now; whether there was one."""
        failure = self._failure
        if failure is None:
            return False
        self._failure = None
        if self._state == _OPEN or self._state == _CLOSING:
            self._fail(*failure)
        return True

    def _fail(self, code: int, reason: str) -> None:
        """Fail the WebSocket (RFC 6455 §7.1.7): send a close frame, end at once."""
        framer = self._framer
        if framer is not None:
            self._write(framer.send_close(code, reason[:120]))
        self._end_transport()
        self._finish(code, reason)

    def _start_close(self, code: int, reason: str) -> None:
        if self._fail_held():
            return  # the peer broke the protocol: that is the close it gets
        framer = self._framer
        assert framer is not None
        self._write(framer.send_close(code, reason))
        self._state = _CLOSING
        self._close_code, self._close_reason = code, reason
        self._close_deadline = time.monotonic() + self._close_timeout
        self._wake_keeper()

    def _finish(self, code: int, reason: str) -> None:
        """The WebSocket is over: the app sees ``websocket.disconnect`` with ``code``."""
        if self._state == _CLOSED:
            return
        self._state = _CLOSED
        self._close_code, self._close_reason = code, reason
        self._drop_inbox()
        self._wake()
        self._wake_keeper()

    def _drop_inbox(self) -> None:
        for data in self._inbox:
            self._host.ack_body(self.stream_id, len(data))
        self._inbox.clear()

    def _write(self, data: bytes) -> None:
        # The connection writes it out after the current event batch, or the caller
        # flushes (the app's send path).
        if data and not self._transport_ended:
            self._bytes_sent += len(data)
            self._host.protocol.send_data(self.stream_id, data)

    def _end_transport(self) -> None:
        """End our side: END_STREAM on HTTP/2 and HTTP/3, close the HTTP/1.1 connection."""
        if not self._transport_ended:
            self._transport_ended = True
            self._host.protocol.send_data(self.stream_id, b"", True)

    def _wake_keeper(self) -> None:
        if self._keeper_wakeup is not None:
            self._keeper_wakeup.set()
            self._keeper_wakeup = None

    async def _keeper(self) -> None:
        """Pings while idle, and the deadline of a closing handshake."""
        interval = self._ping_interval
        timeout = self._close_timeout
        host = self._host
        while self._state != _CLOSED:
            now = time.monotonic()
            if self._failure is not None:
                deadline = self._failure_deadline
            elif self._state == _CLOSING:
                deadline = self._close_deadline
            elif self._ping_payload is not None:
                deadline = self._ping_sent + timeout
            elif interval > 0:
                deadline = self._last_received + interval
            else:
                deadline = float("inf")
            if now >= deadline:
                if self._fail_held():
                    pass  # the app took too long to answer: fail without waiting more
                elif self._state == _CLOSING:
                    # The peer never answered our close frame.
                    self._end_transport()
                    self._finish(_ABNORMAL, "closing handshake timed out")
                elif self._ping_payload is not None:
                    self._fail(1011, "keepalive ping timeout")
                else:
                    framer = self._framer
                    assert framer is not None
                    self._ping_payload = os.urandom(4)
                    self._ping_sent = now
                    self._write(framer.send_ping(self._ping_payload))
                await host.flush(self.stream_id)
                continue
            wakeup = self._keeper_wakeup = host.new_wakeup()
            with anyio.move_on_after(min(deadline - now, 3600.0)):
                await wakeup.wait()

    # -- the ASGI call -----------------------------------------------------------------

    def build_scope(self) -> Scope:
        """The ASGI ``websocket`` scope."""
        request = self.request
        subprotocols: list[str] = []
        for name, value in request.headers:
            if name == b"sec-websocket-protocol":
                subprotocols.extend(split_comma_header(value))
        scheme = request.scheme or self._info.scheme
        scope = upgrade_scope(
            "websocket",
            request,
            self._info,
            self._host.config.root_path,
            self._lifespan_state,
            "wss" if scheme == "https" else "ws",
            {"websocket.http.response": {}},
        )
        scope["subprotocols"] = subprotocols
        return scope

    async def run(self) -> None:
        """Check the handshake, call the app, close cleanly whatever it does."""
        logged = access_logger.isEnabledFor(logging.INFO)
        started = time.perf_counter() if logged else 0.0
        host = self._host
        try:
            refusal = self._check_handshake()
            if refusal is not None:
                await self._send_http_error(*refusal)
                return
            async with anyio.create_task_group() as tg:
                self._task_group = tg
                try:
                    await self._app(self.build_scope(), self.receive, self.send)
                except ClientDisconnected:
                    pass  # the app sent after the peer left and did not catch it
                except Exception:
                    logger.exception("Exception in ASGI application")
                    await self._after_app(1011)
                else:
                    await self._after_app(1000)
                await self._wait_closed()
                tg.cancel_scope.cancel()
        finally:
            responding = self._state == _RESPONDING
            if self._state != _CLOSED:
                self._finish(_ABNORMAL, "")
            if not self._transport_ended:
                self._transport_ended = True
                if self._status == 0 or responding:
                    host.protocol.reset_stream(self.stream_id)
                else:
                    host.protocol.send_data(self.stream_id, b"", True)
            with anyio.CancelScope(shield=True):
                await host.stream_finished(self.stream_id)
            if logged:
                duration = time.perf_counter() - started
                self._log_access(duration, f" (WebSocket {self._close_code})")

    def _check_handshake(self) -> tuple[int, Headers, bytes] | None:
        request = self.request
        version = key = None
        for name, value in request.headers:
            if name == b"sec-websocket-version":
                version = value.strip()
            elif name == b"sec-websocket-key":
                key = value.strip()
        if version != b"13":
            # RFC 6455 §4.4: say which version we speak.
            return 426, [(b"sec-websocket-version", b"13")], b"WebSocket version 13 required\n"
        if request.websocket_upgrade:
            try:
                valid = key is not None and len(base64.b64decode(key, validate=True)) == 16
            except (binascii.Error, ValueError):
                valid = False
            if not valid:
                return 400, [], b"invalid Sec-WebSocket-Key\n"
        if (
            request.early_data
            and request.method not in SAFE_METHODS
            and not self._host.config.quic_0rtt_unsafe
        ):
            return 425, [], b"Too Early\n"  # RFC 8470: CONNECT is not replay-safe
        return None

    async def _after_app(self, code: int) -> None:
        """The app returned (code 1000) or raised (1011)."""
        state = self._state
        if state == _CONNECTING:
            if code == 1000:
                logger.error("ASGI app returned without accepting or denying the WebSocket")
            await self._send_http_error(500, [], b"Internal Server Error\n")
        elif state == _RESPONDING:
            if code == 1000:
                logger.error("ASGI app returned without completing its denial response")
            self._transport_ended = True
            self._state = _CLOSED
            self._host.protocol.reset_stream(self.stream_id)
            await self._host.flush(self.stream_id)
        elif state == _OPEN:
            self._start_close(code, "")
            await self._host.flush(self.stream_id)

    async def _wait_closed(self) -> None:
        # The keeper task (running since accept) ends a handshake that times out.
        while self._state == _CLOSING:
            await self._arm().wait()

    async def _send_http_error(self, status: int, headers: Headers, body: bytes) -> None:
        """Answer the handshake with an HTTP error instead of a WebSocket."""
        if self._state != _CONNECTING:
            return
        self._state = _CLOSED
        self._status = status
        self._transport_ended = True
        head = response_headers(
            [
                *headers,
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", b"%d" % len(body)),
            ],
            self._info,
        )
        protocol = self._host.protocol
        protocol.send_response(self.stream_id, status, head)
        protocol.send_data(self.stream_id, body, True)
        self._bytes_sent = len(body)
        await self._host.flush(self.stream_id)
        self._wake()

    # -- receive -----------------------------------------------------------------------

    async def receive(self) -> Message:
        """ASGI ``receive``: connect, then messages, then ``websocket.disconnect``."""
        if not self._connect_delivered:
            self._connect_delivered = True
            return {"type": "websocket.connect"}
        self._app_busy = False
        while True:
            queue = self._queue
            if queue:
                message = queue.popleft()
                self._app_busy = True
                if (
                    (self._inbox or self._backlog)
                    and self._state != _CLOSED
                    and self._failure is None
                ):
                    # Room in the queue again: go on with what the peer sent meanwhile.
                    self._process()
                    await self._host.flush(self.stream_id)
                return message
            if self._fail_held():
                # The app has answered everything from before the bad frame.
                await self._host.flush(self.stream_id)
            if self._state == _CLOSED:
                return {
                    "type": "websocket.disconnect",
                    "code": self._close_code,
                    "reason": self._close_reason,
                }
            await self._arm().wait()

    # -- send --------------------------------------------------------------------------

    async def send(self, message: Message) -> None:
        """ASGI ``send``: accept, send, close, or an HTTP denial response."""
        msg_type = message["type"]
        state = self._state
        if msg_type == "websocket.send":
            if state == _OPEN:
                framer = self._framer
                assert framer is not None
                data = message.get("bytes")
                if data is not None:
                    frame = framer.send_bytes(data if type(data) is bytes else bytes(data))
                else:
                    text = message.get("text")
                    if text is None:
                        raise RuntimeError("'websocket.send' needs 'bytes' or 'text'")
                    frame = framer.send_text(text)
                self._write(frame)
                await self._host.flush(self.stream_id)
            elif state == _CONNECTING or state == _RESPONDING:
                raise RuntimeError("'websocket.send' before 'websocket.accept'")
            elif self._app_closed:
                raise RuntimeError("'websocket.send' after 'websocket.close'")
            else:
                raise ClientDisconnected(f"WebSocket closed ({self._close_code})")
        elif msg_type == "websocket.accept":
            if state == _CONNECTING:
                await self._accept(message)
            elif state == _CLOSED and self._status == 0:
                raise ClientDisconnected("the client left before the WebSocket was accepted")
            else:
                raise RuntimeError("'websocket.accept' sent twice or after a response")
        elif msg_type == "websocket.close":
            if state == _CONNECTING:
                # ASGI: a close before accept is an HTTP 403.
                await self._send_http_error(403, [], b"")
            elif state == _OPEN:
                self._app_closed = True
                code = message.get("code")
                reason = message.get("reason") or ""
                self._start_close(1000 if code is None else int(code), str(reason))
                await self._host.flush(self.stream_id)
            # Closing twice, or after the peer closed, is harmless.
        elif msg_type == "websocket.http.response.start":
            if state != _CONNECTING:
                raise RuntimeError(f"{msg_type!r} after the handshake was answered")
            status = message["status"]
            if not isinstance(status, int) or not 100 <= status <= 599 or status == 101:
                raise RuntimeError(f"invalid denial status {status!r}")
            self._state = _RESPONDING
            self._status = status
            self._response_headers = response_headers(message.get("headers", ()), self._info)
        elif msg_type == "websocket.http.response.body":
            if state != _RESPONDING:
                raise RuntimeError(f"{msg_type!r} without 'websocket.http.response.start'")
            await self._send_denial_body(message.get("body", b""), message.get("more_body", False))
        else:
            raise RuntimeError(f"unexpected ASGI message type {msg_type!r}")

    async def _accept(self, message: Message) -> None:
        request = self.request
        headers = response_headers(message.get("headers", ()), self._info)
        subprotocol = message.get("subprotocol")
        if subprotocol:
            headers.append((b"sec-websocket-protocol", str(subprotocol).encode("ascii")))
        config = self._host.config
        deflate = None
        if config.ws_per_message_deflate:
            deflate, value = negotiate_deflate(request.headers)
            if deflate is not None:
                headers.append((b"sec-websocket-extensions", value))
        key = next((v.strip() for n, v in request.headers if n == b"sec-websocket-key"), None)
        if request.websocket_upgrade:
            assert key is not None  # checked in _check_handshake
            headers += [
                (b"upgrade", b"websocket"),
                (b"connection", b"Upgrade"),
                (b"sec-websocket-accept", generate_accept_token(key)),
            ]
            self._status = 101
        else:
            self._status = 200
            if key is not None:
                # RFC 8441 §5 drops the key exchange, but some clients (niquests) send a
                # key over HTTP/2 and HTTP/3 and insist on the answer; it costs nothing.
                headers.append((b"sec-websocket-accept", generate_accept_token(key)))
        self._framer = framer_factory(config.ws_engine)(self._max_size, deflate)
        self._state = _OPEN
        self._host.protocol.send_response(self.stream_id, self._status, headers)
        self._last_received = time.monotonic()
        assert self._task_group is not None
        self._task_group.start_soon(self._keeper)
        if self._inbox or self._remote_ended:
            self._process()  # sent right after the request (HTTP/2, HTTP/3)
        await self._host.flush(self.stream_id)

    async def _send_denial_body(self, body: bytes, more_body: bool) -> None:
        protocol = self._host.protocol
        if self._response_headers is not None:
            head, self._response_headers = self._response_headers, None
            protocol.send_response(self.stream_id, self._status, head)
        self._bytes_sent += len(body)
        protocol.send_data(self.stream_id, bytes(body), not more_body)
        if not more_body:
            self._transport_ended = True
            self._finish(self._close_code, "")
        await self._host.flush(self.stream_id)
