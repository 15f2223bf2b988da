"""The ``websockets`` engine of ``wsframing.py``: framing by the websockets package's sans-IO
``Protocol`` (16 or later), whose parser unmasks in C (``websockets.speedups``).

quicserve did the handshake, so the protocol starts OPEN on the server side. Frames are
parsed by websockets (``Frame.parse``: opcodes, reserved bits, masking, lengths, control
frame rules, the close code and reason, permessage-deflate with websockets' own extension)
and its ``recv_frame`` keeps the fragment order and answers pings and closes; frames are
written with ``Frame.serialize``.

Rules:

* What websockets leaves to the layer above it is done here, in ``recv_frame``: whole
  messages are assembled, and text is decoded as it arrives, fragment by fragment, so
  invalid UTF-8 fails at the first bad fragment (RFC 6455 §8.1, 1007), through websockets'
  own error path (a ``UnicodeDecodeError`` in the parser is 1007 there). Compressed data
  that does not inflate is 1007 too, as on wsproto (websockets says 1002).
* Two differences from wsproto are left, both with permessage-deflate: websockets also
  refuses (1009) a compressed frame whose compressed size is over ``max_size``, which
  only data that does not compress, within a few bytes of the limit, can reach; and a
  data frame out of order (§5.4) while a compressed message is open, whose payload does
  not inflate either, is a 1002 here (the order, read from the head) and a 1007 on
  wsproto (which inflates first). tests/fuzz/test_fuzz_websocket.py allows no other.
* Frames out: without an extension, text and binary frames get their head from
  :func:`_head` (what ``Frame.serialize`` would write, a fifth of its cost); with
  permessage-deflate, control frames and closes, ``Frame.serialize`` writes them.
* A failure is recorded, not written: ``fail`` (which websockets' parser calls for 1002,
  1007 and 1009) stops the parser and reports :class:`Failed`; the close frame goes out
  when the stream calls ``send_close`` (see ``wsframing.py``).
* At most ``room`` whole messages are parsed per ``next_events``: the bytes are split at
  frame boundaries (read from each frame's first 2-14 bytes, §5.2) before websockets sees
  them, and what is past the last frame allowed waits here, unparsed.
* The same reading of each head refuses, with 1002 and before websockets sees the frame,
  what wsproto refuses from the head alone: a length not in its minimal encoding (§5.2,
  which websockets lets through), reserved bits, a continuation without a message or a
  new message inside one (§5.4), a fragmented or long control frame (§5.5). websockets
  checks these only after the size, so a frame both too big and malformed would be a
  1009 there and a 1002 on wsproto; this way both engines answer alike.
* websockets' own logging is kept to warnings and errors (it logs every closed connection
  at INFO and, at DEBUG, every frame).
"""

from __future__ import annotations

import codecs
import logging
import struct
import sys
import zlib
from collections.abc import Generator
from typing import Any

from websockets.extensions.base import Extension
from websockets.extensions.permessage_deflate import PerMessageDeflate as _Deflate
from websockets.frames import BINARY, CLOSE, CONT, PING, PONG, TEXT, Close, CloseCode, Frame
from websockets.protocol import Protocol, Side, State
from wsproto.extensions import PerMessageDeflate

from .wsframing import Event, Failed, PeerClosed, PongReceived, close_payload

_logger = logging.getLogger("quicserve.error.websockets")
_logger.setLevel(logging.WARNING)

_utf8 = codecs.getincrementaldecoder("utf-8")


class _ServerProtocol(Protocol):
    """websockets' connection, server side, open from the start; see the module rules."""

    def __init__(self, max_size: int, extensions: list[Extension]) -> None:
        super().__init__(Side.SERVER, state=State.OPEN, max_size=max_size, logger=_logger)
        self.extensions = extensions
        #: Events parsed and not yet taken by ``next_events``.
        self.out: list[Event] = []
        #: The fragments so far of a fragmented message (decoded, for text).
        self.parts: list[Any] = []
        #: The UTF-8 decoder of a fragmented text message.
        self.decoder: codecs.IncrementalDecoder | None = None
        self.failed = False
        self.max_message = max_size

    def recv_frame(self, frame: Frame) -> None:
        opcode = frame.opcode
        if frame.fin and self.current_size is None and (opcode is BINARY or opcode is TEXT):
            # A whole message in one frame, the common case, where websockets' recv_frame
            # only appends the frame to its events: straight to ours.
            data = frame.data
            if opcode is TEXT:
                self.out.append(str(data, "utf-8"))
            else:
                self.out.append(data if type(data) is bytes else bytes(data))
            return
        if opcode is CLOSE:
            if len(frame.data) >= 2:
                # The code before the reason (websockets decodes the reason first): a
                # close with a bad code and a bad reason is a 1002, as on wsproto.
                Close(int.from_bytes(frame.data[:2], "big"), "").check()
            if self.current_size is not None:
                # RFC 6455 §5.4: control frames may come between fragments. A close ends
                # the message unfinished (websockets alone would fail with 1002).
                self.current_size = None
                self.parts.clear()
                self.decoder = None
        super().recv_frame(frame)  # fragment order; pong and close answers; raises
        self.events.clear()  # (its frames; the events wanted are in self.out)
        if opcode is TEXT:  # the first fragment of a message (a whole one is above)
            self.decoder = _utf8()
            self.parts.append(self.decoder.decode(frame.data))
        elif opcode is BINARY:
            self.decoder = None
            self.parts.append(bytes(frame.data))
        elif opcode is CONT:
            decoder = self.decoder
            parts = self.parts
            if decoder is not None:
                parts.append(decoder.decode(frame.data, frame.fin))
            else:
                parts.append(bytes(frame.data))
            if frame.fin:
                message = ("" if decoder is not None else b"").join(parts)
                parts.clear()
                self.decoder = None
                self.out.append(message)
        elif opcode is PONG:
            self.out.append(PongReceived(bytes(frame.data)))
        elif opcode is CLOSE:
            close = self.close_rcvd
            assert close is not None
            self.out.append(PeerClosed(int(close.code), close.reason))

    def fail(self, code: CloseCode | int, reason: str = "") -> None:
        # Called by websockets' parser for a frame it could not accept: record it; the
        # stream decides when the close frame goes out. Nothing more is parsed.
        if not self.failed:
            self.failed = True
            if code == CloseCode.MESSAGE_TOO_BIG:
                reason = f"message larger than {self.max_message} bytes"
            elif isinstance(getattr(sys.exception(), "__cause__", None), zlib.error):
                # A compressed message that does not inflate: 1007, as wsproto says (the
                # data is not what the message claims), not websockets' 1002.
                code = CloseCode.INVALID_DATA
            self.out.append(Failed(int(code), reason))
        self.parser = self._stopped()
        next(self.parser)

    def _stopped(self) -> Generator[None]:
        while True:
            self.reader.discard()
            yield


#: Heads of unmasked final text and binary frames up to 125 bytes (RFC 6455 §5.2).
_SHORT_HEADS = {first: [bytes((first, length)) for length in range(126)] for first in (0x81, 0x82)}


def _head(first: int, length: int) -> bytes:
    """The head of an unmasked frame whose first byte is ``first`` (FIN and opcode): what
    ``Frame.serialize`` writes without extensions, in a table lookup or one pack."""
    if length < 126:
        return _SHORT_HEADS[first][length]
    if length < 0x10000:
        return struct.pack("!BBH", first, 126, length)
    return struct.pack("!BBQ", first, 127, length)


def _deflate(params: PerMessageDeflate) -> _Deflate:
    """websockets' permessage-deflate with the parameters negotiated (RFC 7692 §7.1)."""
    return _Deflate(
        remote_no_context_takeover=params.client_no_context_takeover,
        local_no_context_takeover=params.server_no_context_takeover,
        remote_max_window_bits=params.client_max_window_bits,
        local_max_window_bits=params.server_max_window_bits,
    )


class WebsocketsFramer:
    """Framing by ``websockets.protocol.Protocol``."""

    __slots__ = ("_extensions", "_fragmented", "_left", "_pending", "_proto", "feed_limit")

    def __init__(self, max_size: int, deflate: PerMessageDeflate | None) -> None:
        self._extensions: list[Extension] = [_deflate(deflate)] if deflate is not None else []
        self._proto = _ServerProtocol(max_size, self._extensions)
        self.feed_limit = 0  # websockets inflates at most the bytes left under max_size
        #: Bytes not given to websockets yet: past the ``room`` of the last call, or the
        #: start of a frame head.
        self._pending = b""
        #: Bytes still to come of the last frame given to websockets.
        self._left = 0
        #: The frames given to websockets so far leave a fragmented message open.
        self._fragmented = False

    def receive_data(self, data: bytes) -> None:
        self._pending = self._pending + data if self._pending else data

    def next_events(self, room: int) -> tuple[list[Event], bool]:
        buf = self._pending
        if not buf:
            return [], False
        n = len(buf)
        pos = self._left
        more = False
        bad = ""  # why the frame at ``pos`` fails, read from its head
        if pos >= n:
            self._left = pos - n  # all of it is the rest of a frame begun before
            pos = n
        else:
            self._left = 0
            fragmented = self._fragmented
            rsv_allowed = 0x40 if self._extensions else 0  # RSV1: compressed (RFC 7692 §6)
            # Find the end of each frame from its head (RFC 6455 §5.2), counting the frames
            # that end a message (FIN set, opcode 0-2), until ``room`` of them.
            while pos + 2 <= n:
                b0 = buf[pos]
                b1 = buf[pos + 1]
                length = b1 & 0x7F
                if length < 126:
                    head = 2
                elif length == 126:
                    if pos + 4 > n:
                        break
                    length = buf[pos + 2] << 8 | buf[pos + 3]
                    head = 4
                    if length < 126:
                        bad = "length not in its minimal encoding"
                        break
                else:
                    if pos + 10 > n:
                        break
                    length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                    head = 10
                    if length < 0x10000 or length >> 63:
                        bad = "length not in its minimal encoding, or over 2**63"
                        break
                # The rules of §5.2, §5.4 and §5.5 that websockets checks only after the
                # size (so a frame breaking one of them and the size limit would get 1009
                # there, 1002 from wsproto): checked here first, as wsproto does.
                opcode = b0 & 0x0F
                if opcode == 0:
                    if not fragmented:
                        bad = "continuation frame without a message to continue"
                        break
                    if b0 & 0x70:
                        bad = "reserved bits set"
                        break
                    if b0 & 0x80:
                        fragmented = False
                elif opcode < 3:
                    if fragmented:
                        bad = "a new message inside a fragmented one"
                        break
                    if b0 & 0x70 & ~rsv_allowed:
                        bad = "reserved bits set"
                        break
                    if not b0 & 0x80:
                        fragmented = True
                elif 8 <= opcode <= 10:
                    if not b0 & 0x80 or length > 125:
                        bad = "control frame fragmented or longer than 125 bytes"
                        break
                    if b0 & 0x70:
                        bad = "reserved bits set"
                        break
                # (a reserved opcode is websockets' first check: 1002 there)
                if b1 & 0x80:
                    head += 4  # the masking key
                pos += head + length
                if b0 & 0x80 and opcode < 3:
                    room -= 1
                    if room <= 0:
                        more = pos < n
                        break
            self._fragmented = fragmented
            if pos > n:
                self._left = pos - n
                pos = n
        if pos == n:
            chunk, self._pending = buf, b""
        else:
            chunk, self._pending = buf[:pos], buf[pos:]
        proto = self._proto
        if chunk:
            proto.receive_data(chunk)
        if bad and not proto.failed and proto.close_rcvd is None:
            proto.fail(CloseCode.PROTOCOL_ERROR, bad)
        events, proto.out = proto.out, []
        if proto.failed or proto.close_rcvd is not None:
            self._pending = b""  # nothing after a failure or a close is parsed
            more = False
        return events, more

    def data_to_send(self) -> bytes:
        writes = self._proto.data_to_send()
        return b"".join(writes) if writes else b""

    def send_text(self, text: str) -> bytes:
        data = text.encode("utf-8")
        if self._extensions:
            return Frame(TEXT, data).serialize(mask=False, extensions=self._extensions)
        return _head(0x81, len(data)) + data

    def send_bytes(self, data: bytes) -> bytes:
        if self._extensions:
            return Frame(BINARY, data).serialize(mask=False, extensions=self._extensions)
        return _head(0x82, len(data)) + data

    def send_ping(self, payload: bytes) -> bytes:
        return Frame(PING, payload).serialize(mask=False)

    def send_close(self, code: int, reason: str) -> bytes:
        proto = self._proto
        if proto.state is not State.OPEN:
            return b""
        # As websockets' send_close does, but the body written the same as wsproto's (an
        # app's code is not second-guessed), see wsframing.close_payload.
        proto.close_sent = Close(code, reason)
        proto.state = State.CLOSING
        return Frame(CLOSE, close_payload(code, reason)).serialize(mask=False)

    def held(self) -> int:
        return self._proto.current_size or 0
