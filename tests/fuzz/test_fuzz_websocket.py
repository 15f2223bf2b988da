"""Fuzzing the WebSocket framing quicserve drives (quicserve/streams/websocket.py).

``WebSocketStream`` is run for real (its ``run()``, an echo app, on asyncio) on a fake
connection host that records what the stream writes; the peer's bytes are fed with
``body_received`` exactly as a connection does, cut at random points. Frames are built
from opcode, FIN, RSV bits, mask, length encoding and payload: fragmented messages,
control frames inside fragments, oversized control frames, close frames with any code
and reason, invalid UTF-8, unmasked client frames, messages over ``ws_max_size``. A
second target sends only valid messages (made by a wsproto client) and checks each is
echoed back intact.

Invariants: the stream ends (run() returns) whatever the input, no exception reaches the
app's error log, what the server wrote parses as unmasked server frames, a close it
sends carries a code a server may send, and the queue and fragment buffers stay within
``ws_max_queue`` and ``ws_max_size``. Every target runs on both framing engines
(``--ws-engine`` wsproto and websockets), and a third feeds the same bytes to both and
checks they agree.
"""

from __future__ import annotations

import dataclasses
import logging
import struct
from typing import Any

import anyio
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, TextMessage
from wsproto.extensions import PerMessageDeflate
from wsproto.frame_protocol import FrameProtocol, Opcode, ParseFailed

from clientkit import require
from quicserve.config import Config
from quicserve.connection_info import HTTP2_CAPABILITIES, ConnectionInfo
from quicserve.events import RequestReceived
from quicserve.lowlevel import wakeup_factory
from quicserve.streams.websocket import WebSocketStream
from quicserve.streams.wsframing import negotiate_deflate

from ..helpers import WS_ENGINES
from .support import fuzz_settings, mostly, splits, stat

CONFIG = Config(ws_max_size=2048, ws_max_queue=3, ws_ping_interval=0.0, ws_ping_timeout=0.05)
REQUEST = RequestReceived(
    stream_id=1,
    method=b"CONNECT",
    raw_path=b"/ws",
    headers=[(b"sec-websocket-version", b"13")],
    scheme="https",
    authority=b"example.com",
    protocol="websocket",
)
INFO = ConnectionInfo("2", "https", ("192.0.2.1", 1), ("192.0.2.2", 443), HTTP2_CAPABILITIES)
#: Codes a server may put in a close frame: its own (RFC 6455 §7.4.1; 1005, 1006 and 1015
#: are never sent) and, echoing the peer's close (§5.5.1), the registered and private
#: ranges 3000-4999 (§7.4.2).
SERVER_CLOSE_CODES = {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014}
SERVER_CLOSE_CODES |= set(range(3000, 5000))


class FakeProtocol:
    """Records what the stream writes (the response head, frames, the end)."""

    def __init__(self) -> None:
        self.status: int | None = None
        self.out = bytearray()
        self.ended = False
        self.reset = False

    def send_response(
        self, stream_id: int, status: int, headers: Any, end_stream: bool = False
    ) -> None:
        assert self.status is None, "two responses"
        self.status = status

    def send_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        assert not self.ended, "data after the end of the stream"
        self.out += data
        self.ended = self.ended or end_stream

    def reset_stream(self, stream_id: int) -> None:
        self.reset = True


class FakeHost:
    """The connection side of a stream, in memory."""

    def __init__(self, engine: str) -> None:
        self.config = dataclasses.replace(CONFIG, ws_engine=engine)
        self.protocol = FakeProtocol()
        self.new_wakeup = wakeup_factory()
        self.acked = 0
        self.finished = False
        #: The most messages the stream's queue held (set by run_stream).
        self.peak_queue = 0

    def extensions_for(self, info: ConnectionInfo) -> dict[str, Any]:
        return {}

    async def flush(self, stream_id: int) -> None:
        await anyio.sleep(0)

    def ack_body(self, stream_id: int, amount: int) -> None:
        self.acked += amount

    async def stream_finished(self, stream_id: int) -> None:
        self.finished = True

    def push(self, *args: Any) -> None:
        raise AssertionError("no push on a WebSocket")


async def echo_app(scope: Any, receive: Any, send: Any) -> None:
    assert (await receive())["type"] == "websocket.connect"
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        if "text" in message and message["text"] is not None:
            await send({"type": "websocket.send", "text": message["text"]})
        else:
            await send({"type": "websocket.send", "bytes": message["bytes"]})


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def _settle(host: FakeHost, stream: WebSocketStream) -> None:
    """Scheduler turns until nothing has changed for 20 of them (at most 5000)."""
    last: tuple[Any, ...] = ()
    still = 0
    for _ in range(5000):
        await anyio.sleep(0)
        now = (
            len(host.protocol.out),
            len(stream._queue),
            stream._backlog,
            len(stream._inbox),
            stream._state,
            stream._failure,
        )
        still = still + 1 if now == last else 0
        if still >= 20:
            return
        last = now


def run_stream(
    pieces: list[bytes],
    *,
    end: bool,
    engine: str,
    check_queue: bool = True,
    settle: bool = False,
    request: RequestReceived = REQUEST,
) -> tuple[FakeHost, WebSocketStream]:
    """Run a WebSocketStream with an echo app over ``pieces`` on ``engine``; check it ends.

    With ``settle``, each piece is followed by as many scheduler turns as the stream and
    the app need to stop making progress (so how far they got before the next piece, or
    the end, does not depend on how many turns each engine's path takes)."""
    errors = _Errors()
    logger = logging.getLogger("quicserve.error")
    logger.addHandler(errors)
    made: list[tuple[FakeHost, WebSocketStream]] = []
    peak = [0]

    async def scenario() -> None:
        host = FakeHost(engine)  # its wake-ups belong to this event loop
        stream = WebSocketStream(echo_app, host, INFO, request, None)  # type: ignore[arg-type]
        made.append((host, stream))
        async with anyio.create_task_group() as tg:
            tg.start_soon(stream.run)
            for _ in range(50):
                if host.protocol.status is not None:
                    break
                await anyio.sleep(0)
            assert host.protocol.status == 200
            for piece in pieces:
                stream.body_received(piece)
                peak[0] = max(peak[0], len(stream._queue))  # before the app can take any
                for _ in range(5):
                    await anyio.sleep(0)  # let the app take its messages
                if settle:
                    await _settle(host, stream)
                # ws_max_queue is exceeded by the messages of one read (all its events are
                # queued; see test_regressions.py), but never by more.
                peak[0] = max(peak[0], len(stream._queue))
                if check_queue:
                    assert len(stream._queue) <= CONFIG.ws_max_queue + len(piece) // 2
                held = stream._framer.held() if stream._framer is not None else 0
                assert held <= CONFIG.ws_max_size, held
                held += sum(len(m.get("bytes") or m.get("text") or "") for m in stream._queue)
                assert held <= CONFIG.ws_max_size * CONFIG.ws_max_queue, held
            if end:
                stream.body_ended()
            else:
                stream.reset()
            with anyio.fail_after(1):
                while not host.finished:
                    await anyio.sleep(0.001)

    try:
        anyio.run(scenario)
    finally:
        logger.removeHandler(errors)
    host, stream = made[0]
    host.peak_queue = peak[0]
    assert not errors.records, [r.getMessage() for r in errors.records]
    assert host.finished
    if end:  # (after reset() the transport is gone: nothing more is written)
        assert host.protocol.ended or host.protocol.reset, "the stream never ended"
    return host, stream


def server_frames(data: bytes) -> list[Any]:
    """Parse what the server wrote as a client would: unmasked, well-formed frames."""
    parser = FrameProtocol(client=True, extensions=[])
    parser.receive_bytes(bytes(data))
    frames = []
    try:
        for frame in parser.received_frames():
            frames.append(frame)
            if frame.opcode is Opcode.CLOSE:
                code = frame.payload[0] if frame.payload else None
                # (wsproto reads a close frame without a body as 1005, "no status")
                assert code is None or int(code) in {1005, *SERVER_CLOSE_CODES}, code
    except ParseFailed as exc:
        raise AssertionError(f"server output does not parse: {exc}") from exc
    return frames


# -- raw frames -------------------------------------------------------------------------

opcodes = mostly(
    st.sampled_from([0x1, 0x2, 0x9, 0xA]),
    st.sampled_from([0x0, 0x8, 0x3, 0x7, 0xB, 0xF]),  # continuation, close, reserved
    odds=6,
)
payloads = st.one_of(
    st.binary(max_size=40),
    st.text(max_size=20).map(str.encode),
    st.sampled_from([b"\xff\xfe", b"\xce\xba\xe1", b"\xed\xa0\x80", b"\xf4\x90\x80\x80"]),
    st.integers(100, 3000).map(lambda n: b"a" * n),
)


#: Close codes in frames: any, and for the engines to agree on, all but 1014 (Bad Gateway),
#: which IANA registered after RFC 6455 and wsproto 1.3 does not know (it fails such a
#: close with 1002; websockets, rightly, takes it as a close).
any_codes = st.integers(0, 5000)
agreed_codes = any_codes.filter(lambda code: code != 1014)


@st.composite
def raw_frame(draw: st.DrawFn, codes: st.SearchStrategy[int] = any_codes) -> bytes:
    opcode = draw(opcodes)
    payload = draw(payloads)
    if opcode == 0x8 and draw(st.booleans()):
        code = draw(mostly(st.sampled_from([1000, 1001, 3000, 4999]), codes))
        payload = struct.pack("!H", code) + draw(payloads)[:30]
    fin = draw(mostly(st.just(True), st.just(False), odds=5))
    rsv = draw(mostly(st.just(0), st.integers(1, 7), odds=12))
    masked = draw(mostly(st.just(True), st.just(False), odds=12))
    head = bytes([(0x80 if fin else 0) | rsv << 4 | opcode])
    size = len(payload)
    encoding = draw(mostly(st.just("minimal"), st.sampled_from(["16", "64"]), odds=6))
    if size < 126 and encoding == "minimal":
        head += bytes([(0x80 if masked else 0) | size])
    elif size < 0x10000 and encoding != "64":
        head += bytes([(0x80 if masked else 0) | 126]) + struct.pack("!H", size)
    else:
        head += bytes([(0x80 if masked else 0) | 127]) + struct.pack("!Q", size)
    if masked:
        key = draw(st.binary(min_size=4, max_size=4))
        head += key
        payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return head + payload


@st.composite
def fragmented(draw: st.DrawFn, codes: st.SearchStrategy[int] = any_codes) -> bytes:
    """A message in fragments (a control frame maybe in between), as a client sends it."""
    client = Connection(ConnectionType.CLIENT)
    text = draw(st.booleans())
    parts = draw(st.lists(payloads, min_size=1, max_size=4))
    out = b""
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if text:
            event: Any = TextMessage(data=part.decode("utf-8", "replace"), message_finished=last)
        else:
            event = BytesMessage(data=part, message_finished=last)
        out += client.send(event)
        if not last and draw(st.integers(0, 3)) == 0:
            out += draw(raw_frame(codes))
    return out


@st.composite
def raw_streams(draw: st.DrawFn, codes: st.SearchStrategy[int] = any_codes) -> list[bytes]:
    frames = draw(st.lists(st.one_of(raw_frame(codes), fragmented(codes)), min_size=1, max_size=8))
    return draw(splits(b"".join(frames), max_pieces=10))


@pytest.mark.parametrize("engine", WS_ENGINES)
@fuzz_settings(120)
@example(pieces=[b"\x81\x80\x00\x00\x00\x00\x88\x82\x00\x00\x00\x00\x0b\xb8"], end=False)
@given(pieces=raw_streams(), end=st.booleans())
def test_websocket_raw_frames(engine: str, pieces: list[bytes], end: bool) -> None:
    host, stream = run_stream(pieces, end=end, engine=engine)
    frames = server_frames(host.protocol.out)
    stat(f"close: {stream._close_code}")
    stat(f"frames out: {min(len(frames), 3)}")


# -- valid messages: each is echoed intact -------------------------------------------------

messages = st.lists(
    st.one_of(
        st.text(max_size=60).map(lambda t: TextMessage(data=t)),
        st.binary(max_size=60).map(lambda b: BytesMessage(data=b)),
    ),
    min_size=1,
    max_size=6,
)


@pytest.mark.parametrize("engine", WS_ENGINES)
@fuzz_settings(80)
@given(msgs=messages, close=st.booleans(), data=st.data())
def test_websocket_valid_messages_echo(
    engine: str, msgs: list[Any], close: bool, data: st.DataObject
) -> None:
    client = Connection(ConnectionType.CLIENT)
    wire = b"".join(client.send(m) for m in msgs)
    if close:
        wire += client.send(CloseConnection(code=1000, reason="bye"))
    pieces = data.draw(splits(wire, max_pieces=8))
    host, stream = run_stream(pieces, end=True, engine=engine)
    echoed = Connection(ConnectionType.CLIENT)
    echoed.receive_data(bytes(host.protocol.out))
    got = [e for e in echoed.events() if isinstance(e, TextMessage | BytesMessage)]
    # Messages that arrive in the same read as the close (or the end of the stream) may
    # lose their echo: the server answers the close first (RFC 6455 §5.5.1 then forbids
    # data frames). What is echoed is a prefix, intact and in order.
    sent = [(type(m), m.data) for m in msgs]
    assert [(type(m), m.data) for m in got] == sent[: len(got)]
    stat(f"echoed all: {len(got) == len(msgs)}")
    assert stream._close_code == (1000 if close else 1006)


# -- the two engines agree ----------------------------------------------------------------


def _outcome(host: FakeHost, stream: WebSocketStream) -> tuple[Any, ...]:
    """What a peer can see of a run: the frames the server wrote (a close frame by its
    code alone: the reason's words are each engine's own) and the code the app heard."""
    seen: list[Any] = []
    for frame in server_frames(host.protocol.out):
        if frame.opcode is Opcode.CLOSE:
            seen.append(("close", int(frame.payload[0]) if frame.payload else 1005))
        else:
            payload = frame.payload
            seen.append(
                (frame.opcode.name, payload if isinstance(payload, str) else bytes(payload))
            )
    return tuple(seen), stream._close_code, host.protocol.ended


@fuzz_settings(120)
@example(pieces=[b"\x88\x83\x00\x00\x00\x00\xce\xba\xe1"], end=False)  # bad code and reason
@given(pieces=raw_streams(agreed_codes), end=st.booleans())
def test_websocket_engines_agree(pieces: list[bytes], end: bool) -> None:
    """The same bytes, cut the same way, on wsproto and on websockets: the same frames
    come back and the app hears the same close code (each piece is let settle first: how
    many echoes make it out before an abrupt end is a matter of scheduling)."""
    require("websockets")
    runs = [
        _outcome(*run_stream(pieces, end=end, engine=engine, settle=True))
        for engine in ("wsproto", "websockets")
    ]
    wsproto_run, websockets_run = runs
    assert wsproto_run == websockets_run


# -- the two engines agree with permessage-deflate (RFC 7692) ------------------------------

#: The same request offering permessage-deflate, and what the server accepts of it (one
#: negotiation for both engines).
REQUEST_DEFLATE = dataclasses.replace(
    REQUEST,
    headers=[
        *REQUEST.headers,
        (b"sec-websocket-extensions", b"permessage-deflate; client_max_window_bits"),
    ],
)
ACCEPTED = negotiate_deflate(REQUEST_DEFLATE.headers)[1].decode()


def _deflate_client() -> Connection:
    extension = PerMessageDeflate()
    extension.finalize(ACCEPTED)
    return Connection(ConnectionType.CLIENT, [extension])


@st.composite
def deflated_streams(draw: st.DrawFn) -> list[bytes]:
    """Messages a deflating client sends (whole or in fragments, some inflating past
    ws_max_size), with now and then a raw frame (reserved bits, bad data, control frames)
    between them, cut at random points."""
    client = _deflate_client()
    wire = b""
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.integers(0, 5))
        if kind == 0:
            wire += draw(raw_frame(agreed_codes))
            continue
        data: Any = draw(
            st.one_of(
                st.text(max_size=40),
                st.binary(max_size=40),
                st.integers(100, 3000).map(lambda n: "a" * n),
                st.integers(100, 3000).map(lambda n: b"\x00" * n),
            )
        )
        cut = draw(st.integers(0, len(data)))
        parts = [data[:cut], data[cut:]] if kind == 1 else [data]
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if isinstance(part, str):
                event: Any = TextMessage(data=part, message_finished=last)
            else:
                event = BytesMessage(data=part, message_finished=last)
            wire += client.send(event)
    return draw(splits(wire, max_pieces=8))


def _decoded(host: FakeHost, stream: WebSocketStream) -> tuple[Any, ...]:
    """What a deflating client reads from the server's output, and the app's close code."""
    reader = _deflate_client()
    reader.receive_data(bytes(host.protocol.out))
    seen: list[Any] = []
    parts: list[Any] = []
    for event in reader.events():
        if isinstance(event, TextMessage | BytesMessage):
            parts.append(event.data)
            if event.message_finished:
                seen.append("".join(parts) if isinstance(event, TextMessage) else b"".join(parts))
                parts = []
        elif isinstance(event, CloseConnection):
            seen.append(("close", int(event.code)))
        else:
            seen.append((type(event).__name__, bytes(getattr(event, "payload", b""))))
    return tuple(seen), stream._close_code, host.protocol.ended, stream._close_reason


#: The reasons a data frame out of its message's order gets (RFC 6455 §5.4), from the
#: websockets engine's head check and from websockets itself.
SEQUENCE_FAULTS = {
    "a new message inside a fragmented one",
    "continuation frame without a message to continue",
    "expected a continuation frame",
    "unexpected continuation frame",
}


@fuzz_settings(80)
@example(pieces=[b"A\x81\x00\x00\x00\x00\x00\xc1\x81\xc1\xbb\xe5R\xc1"], end=False)  # wrong twice
@given(pieces=deflated_streams(), end=st.booleans())
def test_websocket_engines_agree_with_deflate(pieces: list[bytes], end: bool) -> None:
    """permessage-deflate both ways on both engines: the same messages come back (each
    engine compresses its own way; what is compared is what a client inflates), and the
    same close codes: 1009 past ws_max_size after inflation, 1007 for data that does not
    inflate, 1002 for RSV1 where it may not be."""
    require("websockets")
    runs = [
        _decoded(*run_stream(pieces, end=end, engine=e, settle=True, request=REQUEST_DEFLATE))
        for e in ("wsproto", "websockets")
    ]
    wsproto_run, websockets_run = runs
    if wsproto_run[:3] != websockets_run[:3]:
        # The one difference allowed, a frame wrong twice: a data frame out of order
        # (§5.4) while a compressed message is open, whose payload does not inflate.
        # websockets' engine answers the order (1002, read from the head); wsproto
        # inflates the payload first and answers that (1007, "error in extension").
        assert wsproto_run[3] == "error in extension", runs
        assert websockets_run[3] in SEQUENCE_FAULTS, runs
        as_1002 = tuple(("close", 1002) if x == ("close", 1007) else x for x in wsproto_run[0])
        assert (as_1002, 1002, wsproto_run[2]) == websockets_run[:3], runs
        stat("a frame wrong twice: 1007 on wsproto, 1002 on websockets")
    stat(f"close: {runs[0][1]}")
    stat(f"messages back: {min(sum(not isinstance(x, tuple) for x in runs[0][0]), 3)}")
