"""HTTPStream: one request <-> one ASGI ``http`` scope, for HTTP/1.1, HTTP/2 and HTTP/3.

A stream is driven by neutral events (``body_received``, ``body_ended``, ``reset``) from
the connection it lives on, and answers through that connection's :class:`StreamHost`:
the sans-IO protocol object for the response calls, and ``flush`` to write them out and
wait for flow control. It never looks at a protocol name; what it may offer the app comes
from :class:`~quicserve.connection_info.Capabilities`.

Rules:

* ASGI extensions are advertised only when the connection can honour them.
* The response head is held back until the first body message so head and body leave in
  one write.
* ``send`` waits while the protocol holds more than ``Config.write_buffer_size`` bytes for
  this stream, and while the connection holds more than
  ``Config.connection_write_buffer_size`` for a peer that is not reading (backpressure;
  both in ``StreamHost.flush``); ``receive`` acknowledges body bytes as the app takes
  them, so the peer is only read as fast as the app consumes (request backpressure).
* An app exception before the response starts becomes a 500; after it, the stream is
  reset (HTTP/1.1: the connection is closed). Either way the server keeps serving.
* After a reset, ``receive`` returns ``http.disconnect`` and ``send`` drops messages, as
  Uvicorn and Hypercorn do, so apps need not guard every send.
"""

from __future__ import annotations

import logging
import time
from email.utils import formatdate
from typing import Any
from urllib.parse import unquote

import anyio

from ..connection_info import ConnectionInfo
from ..events import Headers, RequestReceived
from ..types import ASGIApp, Message, Scope
from .base import StreamBase, StreamHost, access_logger

logger = logging.getLogger("quicserve.error")

_NOT_STARTED, _HEAD_PENDING, _STARTED, _COMPLETE = range(4)

_ERROR_BODIES = {
    500: b"Internal Server Error\n",
    413: b"Content Too Large\n",
    425: b"Too Early\n",
    501: b"Not Implemented: unsupported :protocol\n",
    503: b"Service Unavailable\n",
}
# RFC 9110 §9.2.1: methods whose replay is harmless, served from 0-RTT (RFC 8470 §3).
SAFE_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE"})


class _DateCache:
    """The ``date`` header value (RFC 9110 §6.6.1), formatted at most once a second."""

    __slots__ = ("_second", "_value")

    def __init__(self) -> None:
        self._second = -1
        self._value = b""

    def get(self) -> bytes:
        second = int(time.time())
        if second != self._second:
            self._second = second
            self._value = formatdate(second, usegmt=True).encode("ascii")
        return self._value


_date = _DateCache()


class HTTPStream(StreamBase):
    """One HTTP request and its response, run as one ASGI app call."""

    __slots__ = (
        "_body",
        "_body_bytes",
        "_body_ended",
        "_continue_sent",
        "_disconnected",
        "_final_delivered",
        "_head",
        "_peer_half_closed",
        "_pending_headers",
        "_pending_status",
        "_response_state",
        "_too_large",
        "_trailers_expected",
    )

    def __init__(
        self,
        app: ASGIApp,
        host: StreamHost,
        info: ConnectionInfo,
        request: RequestReceived,
        state: dict[str, Any] | None,
    ) -> None:
        # Not super(): on Python 3.11 that builds a super object per request (~0.1 us).
        StreamBase.__init__(self, app, host, info, request, state)
        # A list, not a deque: made for every request, and taken whole by receive().
        self._body: list[bytes] = []
        self._body_bytes = 0
        self._body_ended = False
        self._disconnected = False
        self._peer_half_closed = False
        self._final_delivered = False
        # RFC 9110 §9.3.2: a response to HEAD carries no content, whatever the app sends.
        self._head = request.method == b"HEAD"
        self._too_large = False
        self._continue_sent = False
        self._response_state = _NOT_STARTED
        self._pending_status = 0
        self._pending_headers: Headers = []
        self._trailers_expected = False

    # -- events from the connection ----------------------------------------------------

    def body_received(self, data: bytes) -> None:
        """A chunk of request body arrived."""
        if self._disconnected:
            self._host.ack_body(self.stream_id, len(data))
            return
        self._body.append(data)
        self._body_bytes += len(data)
        limit = self._host.config.max_request_body_size
        if limit and self._body_bytes > limit:
            self._reject_too_large()
        self._wake()

    def body_ended(self) -> None:
        """The request body is complete."""
        self._body_ended = True
        self._wake()

    def reset(self) -> None:
        """The peer went away or reset the stream: the app sees ``http.disconnect``."""
        self._disconnected = True
        self._wake()

    def peer_half_closed(self) -> None:
        """The peer sends no more (FIN after its request): once the body is read,
        ``receive`` says ``http.disconnect``, but the response still goes out."""
        self._peer_half_closed = True
        self._wake()

    def server_shutdown(self) -> None:
        """The server is shutting down: a request simply runs to its end."""

    def _reject_too_large(self) -> None:
        # The rest of the body is unwanted: the app sees a disconnect, the peer a 413 if
        # the response has not started (sent from run(), which owns the send path).
        self._too_large = True
        self._disconnected = True
        for chunk in self._body:
            self._host.ack_body(self.stream_id, len(chunk))
        self._body.clear()

    # -- the ASGI call -----------------------------------------------------------------

    def build_scope(self) -> Scope:
        """The ASGI ``http`` scope for this request."""
        request = self.request
        info = self._info
        host = self._host
        root_path = host.config.root_path
        # split_target, inline: this runs for every request.
        raw_path, _, query = request.raw_path.partition(b"?")
        path = raw_path.decode("latin-1")
        if "%" in path:
            path = unquote(path)
        if root_path:
            path = root_path + path
            raw_path = root_path.encode("latin-1") + raw_path
        extensions = host.extensions_for(info).copy()
        if info.capabilities.trailers and _accepts_trailers(request.headers):
            extensions["http.response.trailers"] = {}
        headers = request.headers
        if request.early_data:
            # RFC 8470 §5.1: tell the app this request arrived in 0-RTT.
            headers = [*headers, (b"early-data", b"1")]
        return {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": info.http_version,
            "method": request.method.decode("ascii"),
            "scheme": request.scheme or info.scheme,
            "path": path,
            "raw_path": raw_path,
            "query_string": query,
            "root_path": root_path,
            "headers": headers,
            "client": info.client,
            "server": info.server,
            "state": self._lifespan_state.copy() if self._lifespan_state is not None else {},
            "extensions": extensions,
        }

    async def run(self) -> None:
        """Call the app, turn its failures into 500s or resets, then release the stream."""
        logged = access_logger.isEnabledFor(logging.INFO)
        started = time.perf_counter() if logged else 0.0
        host = self._host
        try:
            limit = host.config.max_request_body_size
            request = self.request
            if limit and _declared_length(request.headers) > limit:
                await self._send_error(413)
            elif request.protocol is not None:
                # Extended CONNECT (RFC 8441 / RFC 9220) for a protocol we do not serve
                # (WebSocket requests never get here; see streams/websocket.py).
                await self._send_error(501)
            elif (
                request.early_data
                and request.method not in SAFE_METHODS
                and not host.config.quic_0rtt_unsafe
            ):
                # RFC 8470 §5.2: a request that could be replayed is refused until the
                # handshake completes; the client retries it after 1-RTT.
                await self._send_error(425)
            else:
                await self._app(self.build_scope(), self.receive, self.send)
                if self._too_large and not self._status:
                    await self._send_error(413)
                elif self._response_state == _HEAD_PENDING and not self._disconnected:
                    # start without a body message: an empty body ends the response.
                    await self._send_body(b"", False)
                elif self._response_state != _COMPLETE and not self._disconnected:
                    if self._response_state == _NOT_STARTED:
                        logger.error("ASGI app returned without starting a response")
                        await self._send_error(500)
                    else:
                        logger.error("ASGI app returned without completing its response")
                        await self._abort()
        except Exception:
            logger.exception("Exception in ASGI application")
            if self._response_state < _STARTED and not self._disconnected:
                await self._send_error(500)
            else:
                await self._abort()
        finally:
            self._disconnected = True
            await host.stream_finished(self.stream_id)
            if logged:
                self._log_access(time.perf_counter() - started)

    async def _abort(self) -> None:
        self._response_state = _COMPLETE
        self._host.protocol.reset_stream(self.stream_id)
        await self._host.flush(self.stream_id)

    async def _send_error(self, status: int, *extra: tuple[bytes, bytes]) -> None:
        """Answer with a plain-text error instead of (or after failing to start) the app's
        response; a body we refused to read means the stream cannot be kept."""
        body = _ERROR_BODIES.get(status, b"Error\n")
        headers = self._response_headers(
            [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", b"%d" % len(body)),
                *extra,
            ]
        )
        self._response_state = _COMPLETE
        self._status = status
        self._bytes_sent = len(body)
        protocol = self._host.protocol
        protocol.send_response(self.stream_id, status, headers)
        protocol.send_data(self.stream_id, body, True)
        if status == 413:
            # The rest of the body was never read: reset the stream after the response
            # (HTTP/1.1: close the connection once the 413 is written).
            protocol.reset_stream(self.stream_id)
        await self._host.flush(self.stream_id)
        self._wake()

    # -- receive -----------------------------------------------------------------------

    async def receive(self) -> Message:
        """ASGI ``receive``: request body chunks, then ``http.disconnect``."""
        while True:
            if self._body:
                body = self._body
                data = body[0] if len(body) == 1 else b"".join(body)
                body.clear()
                self._host.ack_body(self.stream_id, len(data))
                if self._body_ended:
                    self._final_delivered = True
                return {"type": "http.request", "body": data, "more_body": not self._body_ended}
            if self._disconnected or self._response_state == _COMPLETE:
                return {"type": "http.disconnect"}
            if self._body_ended:
                if not self._final_delivered:
                    self._final_delivered = True
                    return {"type": "http.request", "body": b"", "more_body": False}
                if self._peer_half_closed:
                    return {"type": "http.disconnect"}
            elif (
                self.request.expect_continue
                and not self._continue_sent
                and self._response_state == _NOT_STARTED
            ):
                # RFC 9110 §10.1.1: the client waits for 100 before sending its body.
                self._continue_sent = True
                self._host.protocol.send_informational(self.stream_id, 100, [])
                await self._host.flush(self.stream_id)
                # The peer may have answered the 100 while we were writing it: its body
                # (or a reset) then arrived with no waiter to wake, so look again.
                continue
            # No await between the checks above and installing the waiter: an event that
            # comes in between would find no waiter and its wake-up would be lost.
            await self._arm().wait()

    # -- send --------------------------------------------------------------------------

    async def send(self, message: Message) -> None:
        """ASGI ``send``: response start, body, trailers, early hints, push, pathsend."""
        msg_type = message["type"]
        state = self._response_state
        if self._too_large and not self._status:
            return  # run() answers 413 instead of whatever the app says now
        if msg_type == "http.response.body":
            if state == _HEAD_PENDING:
                await self._send_body(message.get("body", b""), message.get("more_body", False))
            elif state == _STARTED:
                await self._send_body(message.get("body", b""), message.get("more_body", False))
            elif not self._disconnected:
                raise RuntimeError(f"{msg_type!r} sent without or after a response")
        elif msg_type == "http.response.start":
            if state != _NOT_STARTED:
                if self._disconnected:
                    return
                raise RuntimeError("'http.response.start' sent twice")
            status = message["status"]
            if not isinstance(status, int) or not 200 <= status <= 599:
                raise RuntimeError(f"invalid response status {status!r}")
            self._pending_status = status
            self._pending_headers = response_headers(message.get("headers", ()), self._info)
            self._trailers_expected = bool(message.get("trailers", False))
            self._response_state = _HEAD_PENDING
        elif msg_type == "http.response.trailers":
            if state == _HEAD_PENDING:
                await self._send_body(b"", True)
                state = self._response_state
            if state != _STARTED or not self._trailers_expected:
                if self._disconnected:
                    return
                raise RuntimeError("'http.response.trailers' without 'trailers': True")
            if not message.get("more_trailers", False):
                headers = [(bytes(n).lower(), bytes(v)) for n, v in message.get("headers", ())]
                self._response_state = _COMPLETE
                self._wake()
                self._host.protocol.send_trailers(self.stream_id, headers)
                await self._host.flush(self.stream_id)
        elif msg_type == "http.response.early_hint":
            if state == _NOT_STARTED and not self._disconnected:
                links = message.get("links", ())
                headers = [(b"link", bytes(link)) for link in links]
                self._host.protocol.send_informational(self.stream_id, 103, headers)
                await self._host.flush(self.stream_id)
        elif msg_type == "http.response.push":
            if self._info.capabilities.server_push and not self._disconnected:
                path = message["path"]
                path_bytes = path.encode("utf-8") if isinstance(path, str) else bytes(path)
                headers = [(bytes(n).lower(), bytes(v)) for n, v in message.get("headers", ())]
                self._host.push(self.request, path_bytes, headers)
                await self._host.flush(self.stream_id)
        elif msg_type == "http.response.pathsend":
            if state not in (_HEAD_PENDING, _STARTED):
                raise RuntimeError("'http.response.pathsend' sent without a response")
            await self._send_path(message["path"])
        else:
            raise RuntimeError(f"unexpected ASGI message type {msg_type!r}")

    async def _send_body(self, body: bytes, more_body: bool) -> None:
        if self._disconnected:
            # The peer is gone; the app may finish its response into the void.
            if not more_body:
                self._response_state = _COMPLETE
            return
        protocol = self._host.protocol
        if self._head:
            body = b""
        end = not more_body and not self._trailers_expected
        if self._response_state == _HEAD_PENDING:
            self._response_state = _STARTED
            self._status = self._pending_status
            if body or not end:
                protocol.send_response(self.stream_id, self._pending_status, self._pending_headers)
            else:
                protocol.send_response(
                    self.stream_id, self._pending_status, self._pending_headers, True
                )
                self._response_state = _COMPLETE
                self._wake()
                await self._host.flush(self.stream_id)
                return
        if body:
            self._bytes_sent += len(body)
            protocol.send_data(self.stream_id, bytes(body), end)
        elif end:
            protocol.send_data(self.stream_id, b"", True)
        if end:
            self._response_state = _COMPLETE
            self._wake()
        await self._host.flush(self.stream_id)

    async def _send_path(self, path: str) -> None:
        chunk_size = 256 * 1024
        async with await anyio.open_file(path, "rb") as file:
            while True:
                chunk = await file.read(chunk_size)
                if not chunk:
                    break
                await self._send_body(chunk, True)
                if self._disconnected:
                    return
        await self._send_body(b"", False)

    def _response_headers(self, raw: Any) -> Headers:
        return response_headers(raw, self._info)


class RefusedStream(HTTPStream):
    """A request over ``--limit-concurrency``: 503 without calling the app (whatever the
    request was: plain, WebSocket or WebTransport), and its body is discarded as it comes.

    ``connection: close`` ends an HTTP/1.1 connection after the 503 (RFC 9110 §7.6.1), so
    a client does not queue more requests behind it; HTTP/2 and HTTP/3 drop that field
    (RFC 9113 §8.2.2, RFC 9114 §4.2) and keep the connection, as only the stream failed."""

    __slots__ = ()

    def body_received(self, data: bytes) -> None:
        self._host.ack_body(self.stream_id, len(data))

    async def run(self) -> None:
        logged = access_logger.isEnabledFor(logging.INFO)
        started = time.perf_counter() if logged else 0.0
        try:
            if not self._disconnected:
                await self._send_error(503, (b"connection", b"close"))
        finally:
            self._disconnected = True
            await self._host.stream_finished(self.stream_id)
            if logged:
                self._log_access(time.perf_counter() - started, " (--limit-concurrency)")


def split_target(target: bytes, root_path: str) -> tuple[str, bytes, bytes]:
    """``(path, raw_path, query_string)`` for the ASGI scope from a request target."""
    raw_path, _, query = target.partition(b"?")
    path = raw_path.decode("latin-1")
    if "%" in path:
        path = unquote(path)
    if root_path:
        path = root_path + path
        raw_path = root_path.encode("latin-1") + raw_path
    return path, raw_path, query


def upgrade_scope(
    scope_type: str,
    request: RequestReceived,
    info: ConnectionInfo,
    root_path: str,
    state: dict[str, Any] | None,
    scheme: str,
    extensions: dict[str, Any],
) -> Scope:
    """The scope keys a ``websocket`` or ``webtransport`` app call shares with ``http``
    (the per-request ``http`` scope is built inline in :meth:`HTTPStream.build_scope`,
    which is on every request's path). ``tls`` is added to ``extensions`` when present."""
    path, raw_path, query = split_target(request.raw_path, root_path)
    if info.tls is not None:
        extensions["tls"] = info.tls
    return {
        "type": scope_type,
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": info.http_version,
        "scheme": scheme,
        "path": path,
        "raw_path": raw_path,
        "query_string": query,
        "root_path": root_path,
        "headers": request.headers,
        "client": info.client,
        "server": info.server,
        "state": state.copy() if state is not None else {},
        "extensions": extensions,
    }


def response_headers(raw: Any, info: ConnectionInfo) -> Headers:
    """The app's response headers as lower-case byte pairs, plus the server's defaults
    (``--header``, ``server``) and ``date`` (``--date-header``) for each name the app did
    not set, and ``alt-svc`` (when the connection advertises HTTP/3)."""
    # Fields a protocol may not send (Connection on HTTP/2 and HTTP/3) are dropped by
    # that protocol module, which knows its own rules.
    headers: Headers = [(bytes(name).lower(), bytes(value)) for name, value in raw]
    defaults = info.default_headers
    if defaults:
        # One pass, no set: an app rarely sets a name the server would add.
        names = info.default_names
        seen: list[bytes] | None = None
        for name, _ in headers:
            if name in names:
                if seen is None:
                    seen = [name]
                else:
                    seen.append(name)
        if seen is None:
            headers += defaults
            if info.date_header:
                headers.append((b"date", _date.get()))
        else:
            headers += [pair for pair in defaults if pair[0] not in seen]
            if info.date_header and b"date" not in seen:
                headers.append((b"date", _date.get()))
    elif info.date_header:
        for name, _ in headers:
            if name == b"date":
                break
        else:
            headers.append((b"date", _date.get()))
    if info.alt_svc is not None:
        headers.append((b"alt-svc", info.alt_svc))
    return headers


def connection_extensions(info: ConnectionInfo) -> dict[str, Any]:
    """The ASGI extensions every request on a connection gets; each request's scope gets
    a shallow copy (plus ``http.response.trailers`` when that request can have them)."""
    extensions: dict[str, Any] = {"http.response.pathsend": {}}
    caps = info.capabilities
    if caps.early_hints:
        extensions["http.response.early_hint"] = {}
    if caps.server_push:
        extensions["http.response.push"] = {}
    if info.tls is not None:
        extensions["tls"] = info.tls
    return extensions


def _accepts_trailers(headers: Headers) -> bool:
    # Trailers are only worth sending to a client that said it reads them (RFC 9110
    # §10.1.4 "TE: trailers"); HTTP/1.1 cannot frame them otherwise anyway.
    for name, value in headers:
        if name == b"te" and b"trailers" in value.lower():
            return True
    return False


def _declared_length(headers: Headers) -> int:
    for name, value in headers:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return 0
    return 0
