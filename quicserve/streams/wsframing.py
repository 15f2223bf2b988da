"""WebSocket framing engines: one sans-IO interface, wsproto's or the websockets package's.

:class:`~quicserve.streams.websocket.WebSocketStream` does the handshake, the ASGI side,
the limits and the timers; a *framer* turns the peer's bytes into whole messages and the
app's messages into frames (RFC 6455 §5). Two engines, chosen by ``--ws-engine``:

* ``wsproto`` (:class:`WsprotoFramer`): ``wsproto.connection.Connection``, pure Python,
  always installed; the framing quicserve has always had.
* ``websockets`` (:class:`WebsocketsFramer`): the ``websockets`` package's sans-IO
  ``Protocol`` (16 or later, with its C speedups for unmasking): what Uvicorn runs by
  default, about three times cheaper per frame. Installed with ``quicserve[fast]``.
* ``auto`` (the default): websockets when it is importable with its C speedups, else wsproto.

Rules:

* Sans-IO: bytes in, events and bytes out. No anyio, no ``await``, no clock.
* ``next_events(room)`` parses at most ``room`` whole messages (then it stops and says there
  may be more), so ``--ws-max-queue`` bounds what is parsed, not just what is queued. The
  events: ``str`` (a text message), ``bytes`` (a binary message), :class:`PongReceived`,
  :class:`PeerClosed` (the peer's close frame; the answer, if one is due, is already in
  ``data_to_send()``) and :class:`Failed` (the peer broke the protocol). After a
  :class:`PeerClosed` or :class:`Failed` nothing more is parsed.
* A failure is reported, not acted on: no close frame is written until the stream calls
  ``send_close`` (it may first let the app answer the messages before the bad frame).
  Codes: 1002 protocol error (RFC 6455 §7.4.1), 1007 invalid UTF-8 in a text message or a
  close reason (§8.1, fail-fast per fragment), 1009 a message over ``max_size`` bytes.
* Engine-neutral on the wire: a close frame the app asks for is written the same by both
  (1005, 1006 and 1015 as 1000, the reason cut to 123 bytes of UTF-8);
  a close frame inside a fragmented message ends the message and starts the closing
  handshake (§5.4: control frames may be interleaved), on both.
* permessage-deflate (RFC 7692) is negotiated once, by :func:`negotiate_deflate` (wsproto's
  negotiation: the response header is the same whichever engine frames); each engine then
  runs its own deflate with those parameters. Inflating is bounded before the size check:
  wsproto is fed ``feed_limit`` bytes at a time, websockets inflates at most the bytes left
  under ``max_size``.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any, Protocol

from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, Pong, TextMessage
from wsproto.extensions import PerMessageDeflate
from wsproto.utilities import split_comma_header

from ..events import Headers

#: With permessage-deflate, compressed bytes are fed to wsproto in slices this large, so
#: one read inflates to at most about 1000x this before the size check (zlib's limit).
INFLATE_SLICE = 4096


class PongReceived:
    """A pong frame from the peer (RFC 6455 §5.5.3)."""

    __slots__ = ("payload",)

    def __init__(self, payload: bytes) -> None:
        self.payload = payload


class PeerClosed:
    """The peer's close frame (§5.5.1): it started the closing handshake (its close is
    echoed in ``data_to_send()``) or answered ours. 1005 when it carried no code."""

    __slots__ = ("code", "reason")

    def __init__(self, code: int, reason: str) -> None:
        self.code = code
        self.reason = reason


class Failed:
    """The peer's bytes broke the protocol: fail the WebSocket with ``code`` (§7.1.7)."""

    __slots__ = ("code", "reason")

    def __init__(self, code: int, reason: str) -> None:
        self.code = code
        self.reason = reason


#: What ``next_events`` returns: messages and the three kinds above.
Event = str | bytes | PongReceived | PeerClosed | Failed


class Framer(Protocol):
    """One WebSocket's framing, server side, after the handshake."""

    #: > 0: feed ``receive_data`` at most this many bytes at a time (the inflate bound).
    feed_limit: int

    def receive_data(self, data: bytes) -> None:
        """Bytes from the peer (not parsed until ``next_events``)."""

    def next_events(self, room: int) -> tuple[list[Event], bool]:
        """Parse until ``room`` whole messages or the bytes run out; the events and whether
        it stopped for lack of room (bytes may be left)."""

    def data_to_send(self) -> bytes:
        """Frames the framer wrote by itself while parsing: pongs, the close echo."""

    def send_text(self, text: str) -> bytes:
        """A text message as frames."""

    def send_bytes(self, data: bytes) -> bytes:
        """A binary message as frames."""

    def send_ping(self, payload: bytes) -> bytes:
        """A ping frame."""

    def send_close(self, code: int, reason: str) -> bytes:
        """Our close frame; ``b""`` when a close was sent or received already."""

    def held(self) -> int:
        """Bytes of a fragmented message held until its last fragment."""


FramerFactory = Callable[[int, PerMessageDeflate | None], Framer]


# -- permessage-deflate negotiation (RFC 7692) --------------------------------------------


def negotiate_deflate(headers: Headers) -> tuple[PerMessageDeflate | None, bytes]:
    """permessage-deflate for the first acceptable offer, if any: the accepted parameters
    and the ``Sec-WebSocket-Extensions`` response value."""
    for name, value in headers:
        if name != b"sec-websocket-extensions":
            continue
        for offer in split_comma_header(value):
            if offer.split(";", 1)[0].strip() != "permessage-deflate":
                continue
            extension = PerMessageDeflate()
            try:
                accepted = extension.accept(offer)
            except ValueError:
                continue  # a malformed parameter: not this offer
            if accepted is None or accepted is False:
                continue
            params = "" if accepted is True else str(accepted)
            text = "permessage-deflate" + (f"; {params}" if params else "")
            return extension, text.encode("ascii")
    return None, b""


def close_payload(code: int, reason: str) -> bytes:
    """The body of a close frame the server sends (RFC 6455 §5.5.1), as wsproto writes it
    for the stream's codes: the local-only codes 1005, 1006 and 1015 (§7.4.1, never sent)
    as 1000, the reason cut to the 123 bytes a control frame has room for, on a whole
    character."""
    if code == 1005 or code == 1006 or code == 1015:
        code = 1000
    raw = reason.encode("utf-8")
    if len(raw) > 123:
        raw = raw[:123].decode("utf-8", "ignore").encode("utf-8")
    return struct.pack("!H", code) + raw


# -- wsproto ------------------------------------------------------------------------------


class WsprotoFramer:
    """Framing by ``wsproto.connection.Connection`` (pure Python)."""

    __slots__ = ("_fragment_size", "_fragments", "_max_size", "_out", "_ws", "feed_limit")

    def __init__(self, max_size: int, deflate: PerMessageDeflate | None) -> None:
        self._ws = Connection(ConnectionType.SERVER, [deflate] if deflate is not None else [])
        self._max_size = max_size
        self.feed_limit = INFLATE_SLICE if deflate is not None else 0
        self._fragments: list[Any] = []
        self._fragment_size = 0
        self._out: list[bytes] = []

    def receive_data(self, data: bytes) -> None:
        self._ws.receive_data(data)

    def next_events(self, room: int) -> tuple[list[Event], bool]:
        ws = self._ws
        events: list[Event] = []
        event: Any
        # wsproto parses one frame per event: stop when ``room`` messages are out, and the
        # rest waits in wsproto.
        for event in ws.events():
            cls = type(event)
            if cls is TextMessage or cls is BytesMessage:
                data = event.data
                # --ws-max-size counts bytes (as the websockets engine does): a text
                # fragment's UTF-8 length, not its characters (isascii() is O(1)).
                self._fragment_size += (
                    len(data) if cls is BytesMessage or data.isascii() else len(data.encode())
                )
                if self._fragment_size > self._max_size:
                    # The message fails: nothing of it is kept (held() is 0 from here).
                    self._fragments.clear()
                    self._fragment_size = 0
                    events.append(Failed(1009, f"message larger than {self._max_size} bytes"))
                    return events, False
                if not event.message_finished:
                    self._fragments.append(data)
                    continue
                if self._fragments:
                    self._fragments.append(data)
                    data = ("" if cls is TextMessage else b"").join(self._fragments)
                    self._fragments.clear()
                self._fragment_size = 0
                if cls is BytesMessage and type(data) is not bytes:
                    data = bytes(data)
                events.append(data)
                room -= 1
                if room <= 0:
                    return events, True
            elif cls is Ping:
                self._out.append(ws.send(event.response()))
            elif cls is Pong:
                events.append(PongReceived(bytes(event.payload)))
            elif cls is CloseConnection:
                state = ws.state
                if state is ConnectionState.REMOTE_CLOSING:
                    # The peer started the closing handshake: answer it.
                    self._out.append(ws.send(event.response()))
                    events.append(PeerClosed(event.code, event.reason or ""))
                elif state is ConnectionState.CLOSED:
                    events.append(PeerClosed(event.code, event.reason or ""))  # our close's answer
                else:
                    # wsproto reports a frame it could not accept as a close with the code
                    # to fail with (1002 protocol error, 1007 invalid UTF-8, ...).
                    events.append(Failed(int(event.code), event.reason or ""))
                return events, False
        return events, False

    def data_to_send(self) -> bytes:
        if not self._out:
            return b""
        out = b"".join(self._out)
        self._out.clear()
        return out

    # (wsproto writes a bytearray: passed on as it is, as before the framers, no copy)

    def send_text(self, text: str) -> bytes:
        frame: bytes = self._ws.send(TextMessage(data=text))
        return frame

    def send_bytes(self, data: bytes) -> bytes:
        frame: bytes = self._ws.send(BytesMessage(data=data))
        return frame

    def send_ping(self, payload: bytes) -> bytes:
        frame: bytes = self._ws.send(Ping(payload=payload))
        return frame

    def send_close(self, code: int, reason: str) -> bytes:
        if self._ws.state is not ConnectionState.OPEN:
            return b""
        frame: bytes = self._ws.send(CloseConnection(code=code, reason=reason))
        return frame

    def held(self) -> int:
        # The bytes of the fragments held (text counted in UTF-8, as for the limit).
        return self._fragment_size if self._fragments else 0
