"""WebTransportSession: one WebTransport session over HTTP/3 <-> one ASGI app call.

Experimental, behind ``--webtransport``. Every dialect of draft-ietf-webtrans-http3 a
browser speaks (draft-02 for Chromium, draft-13/14 for Safari, draft-15; see
``protocol/webtransport.py``, which also keeps the capsules and session flow control): an
extended CONNECT with ``:protocol`` ``webtransport`` or ``webtransport-h3`` opens the
session, the session's streams start with its id, its datagrams are HTTP Datagrams
(RFC 9297) in QUIC DATAGRAM frames (RFC 9221), and ending the CONNECT stream (or
WT_CLOSE_SESSION, from draft-07 on) ends the session. The ``200`` carries
``sec-webtransport-http3-draft: draft02`` for a draft-02 client only (draft-02 §6).

The ASGI messages follow the prototype in aioquic's example server, so apps written for it
keep working; the additions are marked (+):

* scope ``{"type": "webtransport", "http_version": "3", "scheme": "https", "path", ...,
  "subprotocols" (+), "extensions": {"webtransport": {"dialect"}} (+)}``: ``dialect`` is
  ``"draft02"``, ``"draft07"``, ``"draft14"`` (draft-13/14) or ``"draft15"``;
  ``subprotocols`` are the client's ``WT-Available-Protocols`` (draft-13 on, §3.3).
* receive: ``webtransport.connect``; ``webtransport.datagram.receive {data}``;
  ``webtransport.stream.receive {stream, data, end(+)}``; ``webtransport.stream.reset
  {stream, code} (+)`` and ``webtransport.stream.stop_sending {stream, code} (+)`` (the
  client's RESET_STREAM / STOP_SENDING, with the WebTransport code the HTTP/3 code carries,
  or None); ``webtransport.drain {by} (+)`` (graceful shutdown, or the client's
  WT_DRAIN_SESSION); ``webtransport.disconnect {code, reason} (+)`` once the session is
  over (``code``/``reason`` from the client's WT_CLOSE_SESSION, else 0 and ""); a later
  ``receive`` raises :class:`ClientDisconnected`, so an app that loops on ``receive``
  without knowing ``disconnect`` still ends.
* send: ``webtransport.accept {headers(+), subprotocol(+)}`` (``subprotocol`` becomes
  ``WT-Protocol``); ``webtransport.close {code(+), reason(+)}`` (before accept: 403;
  after: WT_CLOSE_SESSION with them where the dialect has capsules, then FIN);
  ``webtransport.datagram.send {data}``; ``webtransport.stream.open {unidirectional, data,
  end} (+)`` (the new stream's id is put in the message as ``stream``);
  ``webtransport.stream.send {stream, data, end(+)}``; ``webtransport.stream.reset
  {stream, code} (+)``, ``webtransport.stream.stop {stream, code} (+)``. On a
  bidirectional stream, or one the app opened, the data goes on that stream; on a stream
  the client opened unidirectionally, the reply goes on one server-opened unidirectional
  stream per client stream. Sends after the client's STOP_SENDING are dropped.

Limits: stream data is acknowledged into QUIC flow control, and into the session's
WT_MAX_DATA, only as the app receives it; at most ``ws_max_queue`` datagrams wait for the
app (more are dropped: datagrams are unreliable by definition). ``stream.send`` waits while
the client's WT_MAX_DATA or WT_MAX_STREAMS holds it back, as ``stream.open`` waits for
WT_MAX_STREAMS. Reset and STOP_SENDING messages come once per stream and direction, only
for streams the app knows. docs/webtransport-asgi.md is the full message specification.
"""

from __future__ import annotations

import logging
import re
import time
from collections import deque
from typing import Any

from ..connection_info import ConnectionInfo
from ..events import RequestReceived
from ..protocol.base import WebTransportProtocol
from ..protocol.webtransport import DRAFT02, UPGRADE_TOKENS
from ..types import ASGIApp, Message, Scope
from .base import StreamBase, StreamHost, access_logger
from .http import response_headers, upgrade_scope
from .websocket import ClientDisconnected

logger = logging.getLogger("quicserve.error")

_CONNECTING, _OPEN, _CLOSED = range(3)
_NO_RESET = object()  # a queued stream record whose stream was not reset
_DRAFT_HEADER = (b"sec-webtransport-http3-draft", b"draft02")


def is_webtransport_request(request: RequestReceived) -> bool:
    """An extended CONNECT with ``:protocol`` ``webtransport`` or ``webtransport-h3``
    (HTTP/3 only)."""
    return request.method == b"CONNECT" and request.protocol in UPGRADE_TOKENS


def _sf_strings(value: bytes) -> list[str]:
    # The strings of a Structured Field List (RFC 9651 §3.1), e.g. WT-Available-Protocols;
    # other members are skipped.
    out: list[str] = []
    for member in re.findall(rb'"((?:[^"\\]|\\.)*)"', value):
        out.append(re.sub(rb"\\(.)", rb"\1", member).decode("ascii", "replace"))
    return out


class WebTransportSession(StreamBase):
    """One session and the ASGI app call that serves it.

    ``status`` is the CONNECT's: 200 once accepted, 403 or 500 if refused, or 0. The bytes
    it logs are the payloads of the datagrams and stream data the app sent."""

    __slots__ = (
        "_connect_delivered",
        "_credit_waiter",
        "_datagrams",
        "_dialect",
        "_disconnect_delivered",
        "_drain_delivered",
        "_max_datagrams",
        "_max_stop_reported",
        "_own_streams",
        "_pending",
        "_queue",
        "_reply_streams",
        "_seen",
        "_session_protocol",
        "_state",
        "_stop_reported",
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
        self._drain_delivered = False
        self._queue: deque[Message] = deque()
        #: stream id -> [stream id, chunks, ended] of its message still in the queue
        self._pending: dict[int, list[Any]] = {}
        self._datagrams = 0
        self._max_datagrams = max(1, host.config.ws_max_queue)
        #: client unidirectional stream -> the server stream its replies go on
        self._reply_streams: dict[int, int] = {}
        #: streams the server opened for this session whose send side is still open (the
        #: client's WT_MAX_STREAMS bounds them, where it has flow control)
        self._own_streams: set[int] = set()
        #: client streams the app received from and has not seen the end of (a reset is
        #: reported only for these; bounded by the session's stream limits)
        self._seen: set[int] = set()
        #: streams whose STOP_SENDING the app heard of, newest last: only to report a
        #: repeated STOP_SENDING once, so the oldest are forgotten past a bound
        self._stop_reported: dict[int, None] = {}
        self._max_stop_reported = 4 * max(1, host.config.webtransport_max_streams)
        self.dropped_datagrams = 0
        self._dialect: str | None = None
        self._credit_waiter: Any = None
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
        """Graceful shutdown: the client gets WT_DRAIN_SESSION (draft-07 on; a draft-02
        client has the connection's GOAWAY) and the app ``webtransport.drain``; the
        session goes on until either ends it or the graceful timeout does."""
        if self._state == _OPEN:
            if self._session_protocol is not None:
                self._session_protocol.drain_session(self.stream_id)
            self._drain("server")

    def _drain(self, by: str) -> None:
        if not self._drain_delivered and self._state != _CLOSED:
            self._drain_delivered = True
            self._queue.append({"type": "webtransport.drain", "by": by})
            self._wake()

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
        pending = self._pending.get(stream_id)
        if pending is not None:
            # Still queued: the new bytes join it. One message per stream at most waits, so
            # a client sending one-byte STREAM frames cannot grow the queue (its bytes are
            # bounded by QUIC credit, its streams by --webtransport-max-streams).
            pending[1].append(data)
            pending[2] = ended
            return
        record: list[Any] = [stream_id, [data], ended, _NO_RESET]
        self._pending[stream_id] = record
        self._queue.append({"type": "webtransport.stream.receive", "_record": record})
        self._wake()

    def stream_reset(self, stream_id: int, code: int | None, stop_sending: bool) -> None:
        """The client reset its side of ``stream_id`` or, with ``stop_sending``, asked us
        to stop sending on it. Reported once per stream and direction, and only for
        streams the app knows (it received from them, or opened them): a client cannot
        grow the queue with resets of streams the app never heard of."""
        if self._state == _CLOSED:
            return
        if stop_sending:
            client_stream = next(
                (c for c, r in self._reply_streams.items() if r == stream_id), None
            )
            # The app knows the stream: it opened it, or it is a client bidirectional one
            # (the protocol reports those only while their data is the app's or its reply
            # is open).
            known = (
                client_stream is not None
                or stream_id in self._own_streams
                or stream_id in self._seen
                or stream_id % 4 == 0
            )
            if not known or stream_id in self._stop_reported:
                return  # (QUIC may repeat a STOP_SENDING: reported once)
            self._stop_reported[stream_id] = None
            if len(self._stop_reported) > self._max_stop_reported:
                del self._stop_reported[next(iter(self._stop_reported))]
            # (Still the app's to send on: its sends are dropped from now on, not refused,
            # since one may be under way when this arrives.)
            self._queue.append(
                {
                    "type": "webtransport.stream.stop_sending",
                    "stream": stream_id if client_stream is None else client_stream,
                    "code": code,
                }
            )
            self._wake()
            return
        pending = self._pending.get(stream_id)
        if pending is not None:
            pending[3] = code  # delivered right after the data already queued
            return
        if stream_id not in self._seen:
            return
        self._seen.discard(stream_id)
        self._queue.append({"type": "webtransport.stream.reset", "stream": stream_id, "code": code})
        self._wake()

    def session_updated(self) -> None:
        """The client sent new credit, WT_CLOSE_SESSION or WT_DRAIN_SESSION."""
        session_protocol = self._session_protocol
        if session_protocol is not None:
            if session_protocol.session_closed_by_peer(self.stream_id):
                self._finish()
            elif self._state == _OPEN and session_protocol.session_draining(self.stream_id):
                self._drain("client")
        self._wake_sender()

    def _wake_sender(self) -> None:
        waiter = self._credit_waiter
        if waiter is not None:
            self._credit_waiter = None
            waiter.set()

    def _finish(self) -> None:
        if self._state != _CLOSED:
            self._state = _CLOSED
            self._wake()
            self._wake_sender()

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
        session_protocol = self._session_protocol
        if session_protocol is not None:
            self._dialect = session_protocol.webtransport_dialect(self.stream_id)
        scope["extensions"]["webtransport"] = {"dialect": self._dialect or DRAFT02}
        subprotocols: list[str] = []
        for name, value in request.headers:
            if name == b"wt-available-protocols":
                subprotocols += _sf_strings(value)
        scope["subprotocols"] = subprotocols
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
            for stream_id, chunks, _ in self._pending.values():
                host.ack_body(stream_id, sum(map(len, chunks)))
            self._pending.clear()
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
                kind = message["type"]
                if kind == "webtransport.stream.receive":
                    stream_id, chunks, ended, reset = message.pop("_record")
                    del self._pending[stream_id]
                    data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                    self._host.ack_body(stream_id, len(data))
                    message.update(stream=stream_id, data=data, end=ended)
                    if reset is not _NO_RESET:
                        self._queue.appendleft(
                            {
                                "type": "webtransport.stream.reset",
                                "stream": stream_id,
                                "code": reset,
                            }
                        )
                    elif not ended:
                        self._seen.add(stream_id)
                    if ended or reset is not _NO_RESET:
                        self._seen.discard(stream_id)
                elif kind == "webtransport.datagram.receive":
                    self._datagrams -= 1
                return message
            if self._state == _CLOSED:
                if self._disconnect_delivered:
                    raise ClientDisconnected("the WebTransport session is over")
                self._disconnect_delivered = True
                closed = None
                if self._session_protocol is not None:
                    closed = self._session_protocol.session_closed_by_peer(self.stream_id)
                code, reason = closed or (0, "")
                return {"type": "webtransport.disconnect", "code": code, "reason": reason}
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
            if self._dialect in (None, DRAFT02):
                headers.append(_DRAFT_HEADER)
            subprotocol = message.get("subprotocol")
            if subprotocol is not None:
                # WT-Protocol is a Structured Field String (draft-13 on, §3.3).
                quoted = str(subprotocol).replace("\\", "\\\\").replace('"', '\\"')
                headers.append((b"wt-protocol", f'"{quoted}"'.encode()))
            protocol.send_response(self.stream_id, 200, headers)
            await self._host.flush(self.stream_id)
        elif msg_type == "webtransport.close":
            if self._state == _CONNECTING:
                await self._respond(403)
            elif self._state == _OPEN:
                code = int(message.get("code", 0))
                reason = str(message.get("reason", ""))
                if self._session_protocol is not None:
                    self._session_protocol.close_session(self.stream_id, code, reason)
                else:
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
        elif msg_type == "webtransport.stream.open":
            # (+) A stream the app opens first; its id goes back in the message.
            if self._state != _OPEN:
                raise ClientDisconnected("the WebTransport session is not open")
            session_protocol = self._extras()
            unidirectional = bool(message.get("unidirectional", False))
            stream_id = await self._open_stream(session_protocol, unidirectional)
            message["stream"] = stream_id
            data = bytes(message.get("data", b""))
            end = bool(message.get("end", False))
            if data or end:
                await self._write(session_protocol, stream_id, data, end)
            else:
                await self._host.flush(stream_id)
        elif msg_type == "webtransport.stream.send":
            if self._state != _OPEN:
                raise ClientDisconnected("the WebTransport session is not open")
            session_protocol = self._extras()
            asked = int(message["stream"])
            stream_id = asked
            if asked % 4 == 2:
                # The client opened it unidirectionally: reply on a stream of our own.
                reply = self._reply_streams.get(asked)
                if reply is None:
                    reply = await self._open_stream(session_protocol, True)
                    self._reply_streams[asked] = reply
                stream_id = reply
            elif asked & 1:
                # A stream we opened: only this session's, and only while its send side
                # is open (a wrong id must not write raw bytes into another stream).
                if asked not in self._own_streams:
                    raise RuntimeError(f"stream {asked} is not an open stream of this session")
            elif asked == self.stream_id:
                raise RuntimeError("the CONNECT stream is not a WebTransport stream")
            data = bytes(message.get("data", b""))
            end = bool(message.get("end", False))
            if end and stream_id != asked:
                # Our reply stream is finished: forget it (a long session sees many).
                self._reply_streams.pop(asked, None)
            await self._write(session_protocol, stream_id, data, end)
        elif msg_type in ("webtransport.stream.reset", "webtransport.stream.stop"):
            # (+) Abort our sending side (RESET_STREAM) or ask the client to stop
            # (STOP_SENDING), with a WebTransport application error code.
            if self._state != _OPEN:
                raise ClientDisconnected("the WebTransport session is not open")
            session_protocol = self._extras()
            asked = int(message["stream"])
            code = int(message.get("code", 0))
            if asked == self.stream_id:
                raise RuntimeError("the CONNECT stream is not a WebTransport stream")
            if msg_type == "webtransport.stream.reset":
                target = self._reply_streams.pop(asked, None) if asked % 4 == 2 else asked
                if asked & 1 and asked not in self._own_streams:
                    raise RuntimeError(f"stream {asked} is not an open stream of this session")
                if target is not None:
                    session_protocol.reset_session_stream(self.stream_id, target, code)
                    self._own_streams.discard(target)
            else:
                if asked % 4 == 3:
                    raise RuntimeError("a server unidirectional stream has no receiving side")
                session_protocol.stop_session_stream(self.stream_id, asked, code)
                self._seen.discard(asked)
            await self._host.flush(self.stream_id)
        else:
            raise RuntimeError(f"unexpected ASGI message type {msg_type!r}")

    async def _open_stream(
        self, session_protocol: WebTransportProtocol, unidirectional: bool
    ) -> int:
        # Within the client's WT_MAX_STREAMS (d15 §5.6.2): wait for it, saying so.
        while not session_protocol.session_can_open(self.stream_id, unidirectional):
            session_protocol.session_blocked(self.stream_id, unidirectional)
            await self._host.flush(self.stream_id)
            await self._wait_for_credit()
        stream_id = session_protocol.open_session_stream(self.stream_id, unidirectional)
        self._own_streams.add(stream_id)
        return stream_id

    async def _write(
        self, session_protocol: WebTransportProtocol, stream_id: int, data: bytes, end: bool
    ) -> None:
        self._bytes_sent += len(data)
        if end:
            self._own_streams.discard(stream_id)
            self._stop_reported.pop(stream_id, None)
        while True:
            # The client's WT_MAX_DATA bounds what all the session's streams carry.
            credit = session_protocol.session_send_credit(self.stream_id)
            if credit >= len(data):
                session_protocol.send_stream_data(stream_id, data, end, self.stream_id)
                break
            if credit:
                session_protocol.send_stream_data(stream_id, data[:credit], False, self.stream_id)
                data = data[credit:]
            session_protocol.session_blocked(self.stream_id, None)
            await self._host.flush(stream_id)
            await self._wait_for_credit()
        await self._host.flush(stream_id)

    async def _wait_for_credit(self) -> None:
        # Until the client grants more (SessionUpdated) or the session ends.
        if self._state != _OPEN:
            raise ClientDisconnected("the WebTransport session is not open")
        # One wake-up shared by every send waiting (an app may send from several tasks).
        waiter = self._credit_waiter
        if waiter is None:
            waiter = self._credit_waiter = self._host.new_wakeup()
        await waiter.wait()
        if self._state != _OPEN:
            raise ClientDisconnected("the WebTransport session is not open")

    def _extras(self) -> WebTransportProtocol:
        session_protocol = self._session_protocol
        if session_protocol is None:
            # An extended CONNECT for webtransport on a protocol without WebTransport
            # (HTTP/2): it can be answered, but carries no datagrams or streams.
            raise RuntimeError("WebTransport datagrams and streams need HTTP/3")
        return session_protocol
