"""Fuzzing quicserve/protocol/http2.py (H2Protocol) with frames built from strategies.

Three targets. ``test_http2_frames``: after a valid client preface, frames built with
hyperframe (HEADERS and CONTINUATION carrying HPACK blocks from hpack's encoder, DATA,
SETTINGS, WINDOW_UPDATE, RST_STREAM, PRIORITY, PING, GOAWAY, PUSH_PROMISE, unknown types)
with random flags, padding, stream ids and a few raw edits of lengths and types, cut at
random points. ``test_http2_client_ops``: a real h2 client does random valid things
(requests, bodies, resets, window updates, settings, pings, GOAWAY), so the server's
output must satisfy that client in full. ``test_http2_request_fast_path_matches_h2``
(differential): the same frames go to a server whose requests' HEADERS frames and
WINDOW_UPDATEs take the fast path and to one where h2 reads every frame; events, bytes and
h2 state must agree.

The app answers every request (sometimes at once, sometimes after the body), with bodies
big enough to meet flow control, acknowledges body bytes, and is done with a stream when
its response is sent or it is reset. Invariants: no exception escapes, every request
ends, the server stays within its stream limit and its buffers stay bounded (tracemalloc
peak per example), and its bytes parse as frames whose header blocks decode.
"""

from __future__ import annotations

import struct
import tracemalloc
from dataclasses import dataclass, field
from typing import Any

import h2.events as h2e
from h2.config import H2Configuration
from h2.connection import ConnectionState, H2Connection
from h2.exceptions import ProtocolError as H2ProtocolError
from hpack import Decoder, Encoder
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    PushPromiseFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)
from hypothesis import example, given
from hypothesis import strategies as st

from quicserve.config import Config
from quicserve.events import (
    BodyEnded,
    BodyReceived,
    ConnectionClosed,
    RequestReceived,
    StreamReset,
    StreamWritable,
)
from quicserve.protocol.http2 import H2Protocol

from .support import fuzz_settings, mostly, mutated, splits, stat

T0 = 1000.0
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
#: Per-example peak of Python allocations while the server runs (tracemalloc): the
#: configured windows (1 MiB connection) and header limit (64 KiB), with room to spare.
MEMORY_BOUND = 8 * 1024 * 1024

# -- frame parts ------------------------------------------------------------------------

stream_ids = mostly(
    st.sampled_from([1, 3, 5, 7, 9]),
    st.sampled_from([0, 2, 4, 11, 101, 2**31 - 1]),
    odds=5,
)

_REQUEST = [
    (b":method", b"GET"),
    (b":scheme", b"https"),
    (b":path", b"/"),
    (b":authority", b"example.com"),
]
#: Regular fields: mostly valid pairs, sometimes anything (RFC 9113 §8.2 checks).
fields = mostly(
    st.sampled_from(
        [
            (b"user-agent", b"fuzz"),
            (b"accept", b"*/*"),
            (b"cookie", b"a=b"),
            (b"te", b"trailers"),
            (b"x-a", b"1"),
        ]
    ),
    st.tuples(
        st.one_of(
            st.sampled_from(
                [b":method", b":path", b":status", b":protocol", b"Upper", b"connection", b""]
            ),
            st.sampled_from([b"content-length", b"te", b"host"]),
            st.binary(max_size=8),
        ),
        st.one_of(
            st.sampled_from([b"0", b"10", b"x", b"1, 1", b"gzip", b"CONNECT"]),
            st.binary(max_size=20),
        ),
    ),
    odds=10,
)


@st.composite
def header_lists(draw: st.DrawFn) -> list[tuple[bytes, bytes]]:
    """A request header list: mostly valid pseudo-headers, then odd fields."""
    pseudo = list(_REQUEST)
    if draw(st.integers(0, 3)) == 0:
        pseudo = [(b":method", b"POST"), *pseudo[1:]]
    if draw(st.integers(0, 6)) == 0:
        pseudo = [(b":method", b"CONNECT"), (b":protocol", b"websocket"), *pseudo[1:]]
    if draw(st.integers(0, 4)) == 0:
        pseudo = draw(st.permutations(pseudo))[: draw(st.integers(0, len(pseudo)))]
    extra = draw(st.lists(fields, max_size=4))
    if draw(st.integers(0, 20)) == 0:
        extra.append((b"x-big", b"v" * draw(st.integers(1000, 70_000))))
    return [*pseudo, *extra]


@dataclass
class Client:
    """What the fuzzing client keeps between frames: its HPACK encoder and the streams it
    opened, so most frames go to streams that exist (and get past the first checks)."""

    encoder: Encoder = field(default_factory=Encoder)
    opened: list[int] = field(default_factory=list)

    def new_stream(self, draw: st.DrawFn) -> int:
        usual = min(self.opened[-1] + 2, 2**31 - 1) if self.opened else 1
        stream_id = draw(mostly(st.just(usual), stream_ids, odds=6))
        self.opened.append(stream_id)
        return stream_id

    def some_stream(self, draw: st.DrawFn) -> int:
        if not self.opened:
            return draw(stream_ids)
        return draw(mostly(st.sampled_from(self.opened), stream_ids, odds=6))


def _on(frame: Any, stream_id: int) -> Any:
    """``frame`` moved to ``stream_id`` (hyperframe refuses a wrong stream 0 at creation;
    the wire takes anything)."""
    frame.stream_id = stream_id
    return frame


def _padding(draw: st.DrawFn, frame: Any) -> None:
    if draw(st.integers(0, 4)) == 0:
        frame.flags.add("PADDED")
        frame.pad_length = draw(st.integers(0, 40))


@st.composite
def headers_frames(draw: st.DrawFn, client: Client) -> list[Frame]:
    """HEADERS (maybe split into CONTINUATION frames) with an HPACK block."""
    stream_id = client.new_stream(draw) if draw(st.integers(0, 5)) else client.some_stream(draw)
    block = client.encoder.encode(draw(header_lists()), huffman=draw(st.booleans()))
    if draw(st.integers(0, 8)) == 0:
        block = draw(mutated(block))
    pieces = draw(splits(block, max_pieces=4)) if draw(st.integers(0, 3)) == 0 else [block]
    pieces = pieces or [b""]
    first = _on(HeadersFrame(1, data=pieces[0]), stream_id)
    if draw(st.integers(0, 2)) != 0:
        first.flags.add("END_STREAM")
    _padding(draw, first)
    if draw(st.integers(0, 6)) == 0:
        first.flags.add("PRIORITY")
        first.depends_on = draw(mostly(st.just(0), st.just(stream_id), odds=4))
        first.stream_weight = draw(st.integers(0, 255))
        first.exclusive = draw(st.booleans())
    frames: list[Frame] = [first]
    for piece in pieces[1:]:
        sid = stream_id if draw(st.integers(0, 10)) else draw(stream_ids)
        frames.append(_on(ContinuationFrame(1, data=piece), sid))
    if draw(st.integers(0, 12)):  # sometimes the block never ends
        frames[-1].flags.add("END_HEADERS")
    return frames


@st.composite
def other_frames(draw: st.DrawFn, client: Client) -> list[Frame]:
    kind = draw(
        st.sampled_from(
            ["data"] * 4
            + ["settings", "window", "window", "rst", "priority", "ping", "goaway", "push"]
        )
    )
    if kind == "data":
        frame: Any = _on(DataFrame(1, data=draw(st.binary(max_size=300))), client.some_stream(draw))
        if draw(st.integers(0, 20)) == 0:
            frame.data = b"d" * draw(st.integers(10_000, 16_384))
        if draw(st.booleans()):
            frame.flags.add("END_STREAM")
        _padding(draw, frame)
    elif kind == "settings":
        frame = SettingsFrame(0)
        if draw(st.integers(0, 5)) == 0:
            frame.flags.add("ACK")
        else:
            for _ in range(draw(st.integers(0, 4))):
                code = draw(st.sampled_from([1, 2, 3, 4, 5, 6, 8, 9, 0x10, 0xFFFF]))
                value = draw(
                    mostly(
                        st.sampled_from([0, 1, 100, 16_384, 65_535, 100_000]),
                        st.sampled_from([16_383, 2**24 - 1, 2**24, 2**31 - 1, 2**31, 2**32 - 1]),
                        odds=3,
                    )
                )
                frame.settings[code] = value
    elif kind == "window":
        frame = WindowUpdateFrame(
            0,
            window_increment=draw(
                mostly(st.integers(1, 100_000), st.sampled_from([0, 2**31 - 1])),
            ),
        )
        frame.stream_id = 0 if draw(st.booleans()) else client.some_stream(draw)
    elif kind == "rst":
        frame = _on(
            RstStreamFrame(1, error_code=draw(st.integers(0, 15))), client.some_stream(draw)
        )
    elif kind == "priority":
        sid = client.some_stream(draw)
        frame = PriorityFrame(
            1,
            depends_on=draw(mostly(st.sampled_from([0, 1, 3]), st.just(sid), odds=4)),
            stream_weight=draw(st.integers(0, 255)),
            exclusive=draw(st.booleans()),
        )
        frame.stream_id = sid
    elif kind == "ping":
        frame = PingFrame(0, opaque_data=draw(st.binary(min_size=8, max_size=8)))
        if draw(st.integers(0, 4)) == 0:
            frame.flags.add("ACK")
    elif kind == "goaway":
        frame = GoAwayFrame(
            0,
            last_stream_id=draw(st.sampled_from([0, 1, 2, 3, 2**31 - 1])),
            error_code=draw(mostly(st.just(0), st.integers(1, 15))),
            additional_data=draw(st.binary(max_size=10)),
        )
    else:
        frame = PushPromiseFrame(
            1,
            promised_stream_id=draw(st.sampled_from([2, 4])),
            data=client.encoder.encode(list(_REQUEST)),
        )
        frame.flags.add("END_HEADERS")
        frame.stream_id = draw(stream_ids)
    return [frame]


def _raw(frame_type: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))[1:]
        + bytes([frame_type, flags])
        + struct.pack(">I", stream_id)
        + payload
    )


@st.composite
def wire_frames(draw: st.DrawFn, client: Client) -> bytes:
    """One frame (or a HEADERS block) serialized, sometimes edited on the wire."""
    choice = draw(st.integers(0, 20))
    if choice == 0:  # an unknown frame type (RFC 9113 §4.1: ignored)
        return _raw(
            draw(st.integers(0x0A, 0xFF)),
            draw(st.integers(0, 255)),
            draw(stream_ids),
            draw(st.binary(max_size=30)),
        )
    if choice == 1:  # a known type with a random payload and flags
        return _raw(
            draw(st.integers(0, 9)),
            draw(st.integers(0, 255)),
            draw(stream_ids),
            draw(st.binary(max_size=30)),
        )
    frames = draw(headers_frames(client) if choice < 9 else other_frames(client))
    data = b"".join(f.serialize() for f in frames)
    if draw(st.integers(0, 15)) == 0:
        data = draw(mutated(data, max_edits=2))
    return data


@st.composite
def frame_streams(draw: st.DrawFn) -> list[bytes]:
    client = Client()
    settings = SettingsFrame(0)
    if draw(st.integers(0, 4)) == 0:
        settings.settings[4] = draw(st.sampled_from([0, 1, 1000]))  # INITIAL_WINDOW_SIZE
    frames: list[bytes] = []
    if draw(st.integers(0, 3)):  # most connections start with a request
        # (drawn first: the HPACK encoder's table follows the order of the blocks)
        frames.append(b"".join(f.serialize() for f in draw(headers_frames(client))))
    frames += draw(st.lists(wire_frames(client), min_size=1, max_size=14))
    data = PREFACE + settings.serialize() + b"".join(frames)
    if draw(st.integers(0, 3)) == 0:
        return draw(splits(data))
    return [PREFACE + settings.serialize(), *frames]


# -- the app and the checks ---------------------------------------------------------------


@dataclass
class Run:
    started: dict[int, RequestReceived] = field(default_factory=dict)
    ended: set[int] = field(default_factory=set)
    reset: set[int] = field(default_factory=set)
    closed: bool = False
    output: list[bytes] = field(default_factory=list)
    max_streams: int = 0
    #: The largest SETTINGS_MAX_FRAME_SIZE / SETTINGS_HEADER_TABLE_SIZE the client set.
    max_frame: int = 16_384
    max_table: int = 4096


class App:
    """A well-behaved app and stream type on top of one H2Protocol."""

    def __init__(self, proto: H2Protocol, *, respond_early: bool, body_size: int) -> None:
        self.proto = proto
        self.respond_early = respond_early
        self.body_size = body_size
        self.run = Run()
        self.now = T0

    def answer(self, stream_id: int) -> None:
        proto = self.proto
        body = bytes([stream_id & 0xFF]) * self.body_size
        proto.send_response(stream_id, 200, [(b"content-length", b"%d" % len(body))])
        proto.send_data(stream_id, body, end_stream=True)
        proto.stream_done(stream_id, self.now)

    def pump(self) -> None:
        proto, run = self.proto, self.run
        while (event := proto.next_event()) is not None:
            assert not run.closed, f"{event!r} after ConnectionClosed"
            if isinstance(event, RequestReceived):
                sid = event.stream_id
                assert sid not in run.started, f"stream {sid} started twice"
                run.started[sid] = event
                if self.respond_early:
                    self.answer(sid)
            elif isinstance(event, BodyReceived):
                assert event.stream_id in run.started
                assert event.stream_id not in run.ended and event.stream_id not in run.reset
                proto.ack_body(event.stream_id, len(event.data))
            elif isinstance(event, BodyEnded | StreamReset):
                sid = event.stream_id
                assert sid in run.started, f"{event!r} for a stream never started"
                # A reset may follow the end of the body (the peer abandons the response),
                # nothing else may follow a reset, and the body ends once.
                assert sid not in run.reset, f"{event!r} after StreamReset"
                if isinstance(event, BodyEnded):
                    assert sid not in run.ended, f"body ended twice: {event!r}"
                else:
                    run.reset.add(sid)
                run.ended.add(sid)
                if isinstance(event, StreamReset):
                    proto.stream_done(sid, self.now)
                elif not self.respond_early:
                    self.answer(sid)
            elif isinstance(event, StreamWritable):
                pass
            else:
                assert isinstance(event, ConnectionClosed), event
                run.closed = True
                stat(f"closed: {event.error_code} {event.reason[:50]}")
        run.max_streams = max(run.max_streams, proto.open_streams)
        remote = proto._conn.remote_settings
        run.max_frame = max(run.max_frame, remote.max_frame_size)
        run.max_table = max(run.max_table, remote.header_table_size)
        run.output.append(proto.data_to_send())


def check_output(data: bytes, max_frame: int = 16_384, max_table: int = 4096) -> list[Frame]:
    """The server's bytes are whole frames no larger than the client allowed, header
    blocks decode with the table size it allowed, GOAWAY never grows."""
    frames: list[Frame] = []
    decoder = Decoder()
    decoder.max_allowed_table_size = max_table
    view = memoryview(data)
    last_goaway: int | None = None
    block = b""
    while view:
        assert len(view) >= 9, "a truncated frame header"
        frame, length = Frame.parse_frame_header(view[:9])
        assert len(view) >= 9 + length, "a truncated frame"
        assert length <= max_frame, f"a {length}-byte frame, larger than SETTINGS_MAX_FRAME_SIZE"
        frame.parse_body(view[9 : 9 + length])
        view = view[9 + length :]
        frames.append(frame)
        if isinstance(frame, HeadersFrame | PushPromiseFrame | ContinuationFrame):
            block += frame.data
            if "END_HEADERS" in frame.flags:
                decoder.decode(block, raw=True)
                block = b""
        elif isinstance(frame, GoAwayFrame):
            if last_goaway is not None:
                assert frame.last_stream_id <= last_goaway, "GOAWAY raised its last stream"
            last_goaway = frame.last_stream_id
    return frames


def drive(pieces: list[bytes], config: Config, *, respond_early: bool, body_size: int) -> Run:
    proto = H2Protocol(config, T0)
    app = App(proto, respond_early=respond_early, body_size=body_size)
    app.pump()
    for piece in pieces:
        if app.run.closed:
            break
        proto.receive_data(piece, T0)
        app.pump()
        buffered = len(proto._conn.incoming_buffer._data)
        assert buffered <= 9 + config.h2_max_frame_size + len(piece), buffered
        assert proto._client_streams <= config.h2_max_concurrent_streams
        # h2 keeps closed streams until it next counts open ones: bounded all the same.
        assert len(proto._conn.streams) <= 2 * config.h2_max_concurrent_streams + 16
    if not app.run.closed:
        proto.receive_data(b"", T0)  # the peer closes
        app.pump()
    run = app.run
    for sid in run.started:
        assert sid in run.ended or run.closed, f"stream {sid} never ended"
    assert run.closed
    stat(f"requests: {min(len(run.started), 3)}")
    return run


CONFIGS = {
    "default": Config(),
    "tight": Config(h2_max_concurrent_streams=2, max_header_bytes=2000, h2_stream_window_size=1000),
}
configs = st.sampled_from(sorted(CONFIGS))


@fuzz_settings(250)
# Inputs that once failed the harness itself (the client raised SETTINGS_MAX_FRAME_SIZE,
# then SETTINGS_HEADER_TABLE_SIZE, and the checks assumed the defaults).
@example(
    pieces=[
        PREFACE + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
        b"\x00\x00-\x01\x04\x00\x00\x00\x01B\x07CONNECT@\t:protocol\twebsocket\x87\x84A\x0b"
        b"example.com\x00\x00\x06\x04\x00\x00\x00\x00\x00\x00\x05\x00\x00\xff\xff"
    ],
    config="default",
    respond_early=True,
    body_size=70_000,
)
@example(
    pieces=[
        PREFACE + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
        b"\x00\x00-\x01\x04\x00\x00\x00\x01B\x07CONNECT@\t:protocol\twebsocket\x87\x84A\x0b"
        b"example.com\x00\x00\x06\x04\x00\x00\x00\x00\x00\x00\x01\x00\x00?\xff"
    ],
    config="default",
    respond_early=True,
    body_size=0,
)
@given(
    pieces=frame_streams(),
    config=configs,
    respond_early=st.booleans(),
    body_size=st.sampled_from([0, 10, 70_000]),
)
def test_http2_frames(
    pieces: list[bytes], config: str, respond_early: bool, body_size: int
) -> None:
    tracemalloc.start()
    try:
        run = drive(pieces, CONFIGS[config], respond_early=respond_early, body_size=body_size)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < MEMORY_BOUND, f"peak {peak} bytes"
    check_output(b"".join(run.output), run.max_frame, run.max_table)


# -- a real client doing random valid things ----------------------------------------------

_request_op = st.tuples(st.just("request"), st.booleans(), st.integers(0, 4))
client_ops = st.builds(
    lambda first, rest: [first, *rest],
    _request_op,
    st.lists(
        st.one_of(
            _request_op,
            _request_op,
            st.tuples(st.just("data"), st.integers(0, 3), st.integers(0, 40_000), st.booleans()),
            st.tuples(st.just("reset"), st.integers(0, 3), st.integers(0, 13)),
            st.tuples(st.just("window"), st.integers(-1, 3), st.integers(1, 200_000)),
            # (h2's client fails on its own if a stream window it grew passes 2**31 - 1)
            st.tuples(st.just("settings"), st.integers(65_535, 2**30), st.booleans()),
            st.tuples(st.just("ping")),
            st.tuples(st.just("goaway")),
            st.tuples(st.just("deliver"), st.booleans()),
        ),
        max_size=25,
    ),
)


@fuzz_settings(200)
@given(
    ops=client_ops,
    config=configs,
    respond_early=st.booleans(),
    body_size=st.sampled_from([0, 70_000]),
)
def test_http2_client_ops(
    ops: list[tuple[Any, ...]], config: str, respond_early: bool, body_size: int
) -> None:
    proto = H2Protocol(CONFIGS[config], T0)
    app = App(proto, respond_early=respond_early, body_size=body_size)
    client = H2Connection(
        H2Configuration(client_side=True, header_encoding=None, validate_inbound_headers=True)
    )
    client.initiate_connection()
    opened: list[int] = []
    sending: list[int] = []
    answered: set[int] = set()
    held: list[bytes] = []  # server bytes the client has not read yet

    def deliver() -> None:
        data = b"".join(held)
        held.clear()
        if data and client.state_machine.state is not ConnectionState.CLOSED:
            for ev in client.receive_data(data):
                if isinstance(ev, h2e.ResponseReceived | h2e.StreamReset):
                    answered.add(ev.stream_id)

    def to_server() -> bool:
        data = client.data_to_send()
        if data and not app.run.closed:
            proto.receive_data(data, T0)
        app.pump()
        out = [o for o in app.run.output if o]
        held.extend(out)
        app.run.output.clear()
        return bool(data or out)

    window = 65_535
    app.pump()
    held.extend(app.run.output)
    app.run.output.clear()
    to_server()
    deliver()  # the client knows the server's SETTINGS (its stream limit) before it starts
    for op in ops:
        if app.run.closed:
            break
        try:
            if op[0] == "request":
                sid = client.get_next_available_stream_id()
                headers = [(b":method", b"POST" if not op[1] else b"GET"), *_REQUEST[1:]]
                headers += [(b"x-n", b"%d" % i) for i in range(op[2])]
                client.send_headers(sid, headers, end_stream=op[1])
                opened.append(sid)
                if not op[1]:
                    sending.append(sid)
            elif op[0] == "data" and sending:
                # (h2 closes a stream for good when asked to send on it after its end.)
                sid = sending[op[1] % len(sending)]
                size = min(op[2], client.local_flow_control_window(sid))
                size = min(size, client.max_outbound_frame_size)
                client.send_data(sid, b"u" * size, end_stream=op[3])
                if op[3]:
                    sending.remove(sid)
            elif op[0] == "reset" and opened:
                sid = opened[op[1] % len(opened)]
                client.reset_stream(sid, op[2])
                opened.remove(sid)
                if sid in sending:
                    sending.remove(sid)
            elif op[0] == "window":
                sid = 0 if op[1] < 0 or not opened else opened[op[1] % len(opened)]
                client.increment_flow_control_window(op[2], stream_id=sid or None)
            elif op[0] == "settings":
                # Only growing windows: h2's client cannot take a window made negative
                # by its own SETTINGS (RFC 9113 §6.9.2 allows it); the raw-frame target
                # covers shrinking.
                window = max(window, op[1])
                client.update_settings({4: window, 2: 0} if op[2] else {4: window})
            elif op[0] == "ping":
                client.ping(b"12345678")
            elif op[0] == "goaway":
                client.close_connection()
        except (H2ProtocolError, KeyError):
            continue  # the client refuses an op in its current state: skip it
        if op[0] == "deliver":
            deliver()  # the server's bytes: any client error here is a failure
        to_server()
        if op[0] == "deliver" and op[1]:
            to_server()
    # Let everything flow until both sides are quiet.
    for _ in range(200):
        deliver()
        if not to_server():
            break
    else:
        raise AssertionError("client and server never went quiet")
    if not app.run.closed:
        proto.receive_data(b"", T0)  # the client goes away
        app.pump()
    run = app.run
    for sid in run.started:
        assert sid in run.ended or run.closed, f"stream {sid} never ended"
    stat(f"answered: {min(len(answered), 3)}")


# -- the request fast path against h2's own reader ----------------------------------------


def _h2_state(proto: H2Protocol) -> tuple[Any, ...]:
    """What h2 knows of the connection and its streams, for comparing two runs."""
    conn = proto._conn
    streams = {
        sid: (
            s.state_machine.state,
            s.state_machine.client,
            s.state_machine.headers_received,
            s.state_machine.trailers_received,
            s.closed_by,
            s._expected_content_length,
            s._actual_content_length,
            s.inbound_flow_control_window,
            s.outbound_flow_control_window,
            s.max_outbound_frame_size,
        )
        for sid, s in conn.streams.items()
    }
    return (
        conn.state_machine.state,
        conn.highest_inbound_stream_id,
        conn.inbound_flow_control_window,
        conn.outbound_flow_control_window,
        dict(conn._closed_streams),
        streams,
        list(conn.decoder.header_table.dynamic_entries),
        conn.decoder.header_table.maxsize,
        bytes(conn.incoming_buffer._data),
        len(conn.incoming_buffer._headers_buffer),
    )


def _record(
    pieces: list[bytes], config: Config, *, fast: bool, respond_early: bool, body_size: int
) -> list[tuple[Any, ...]]:
    """Drive one server through ``pieces`` with the request fast path on or off; after
    each piece, the events it produced, the bytes it wrote and h2's state."""
    proto = H2Protocol(config, T0)
    proto._conn.fast_frames = fast
    app = App(proto, respond_early=respond_early, body_size=body_size)
    seen: list[Any] = []
    next_event = proto.next_event

    def recording() -> Any:
        event = next_event()
        if event is not None:
            seen.append(event)
        return event

    proto.next_event = recording  # type: ignore[method-assign]
    app.pump()
    steps: list[tuple[Any, ...]] = []
    for piece in pieces:
        if app.run.closed:
            break
        proto.receive_data(piece, T0)
        app.pump()
        steps.append((list(seen), app.run.output[-1], _h2_state(proto), proto.closed))
        seen.clear()
    return steps


@st.composite
def request_streams(draw: st.DrawFn) -> list[bytes]:
    """Like ``frame_streams`` with requests in the majority (the fast path's frames, and
    the near misses the strategies make of them), so a connection gets past its first
    request (which opens it the slow way) more often than random frames let it."""
    client = Client()
    frames = [PREFACE + SettingsFrame(0).serialize()]
    for _ in range(draw(st.integers(2, 16))):
        if draw(st.integers(0, 4)):
            frames.append(b"".join(f.serialize() for f in draw(headers_frames(client))))
        else:
            frames.append(draw(wire_frames(client)))
    if draw(st.integers(0, 3)) == 0:
        return draw(splits(b"".join(frames)))
    return frames


def _requests(*blocks: tuple[int, int, list[tuple[bytes, bytes]]]) -> list[bytes]:
    """A preface, then one read per ``(stream id, flags, header list)`` HEADERS frame."""
    encoder = Encoder()
    pieces = [PREFACE + SettingsFrame(0).serialize()]
    for stream_id, flags, headers in blocks:
        pieces.append(_raw(0x1, flags, stream_id, encoder.encode(headers)))
    return pieces


_GET = list(_REQUEST)
_POST = [(b":method", b"POST"), *_REQUEST[1:]]


def _window_updates(*updates: tuple[int, int]) -> list[bytes]:
    """A GET on stream 1 (answered and closed), a POST left open on stream 3, then one
    read per ``(stream id, increment)`` WINDOW_UPDATE. The client's windows start at
    65,535 (RFC 9113 §6.9.2)."""
    return [
        *_requests((1, 0x5, _GET), (3, 0x4, _POST)),
        *(_raw(0x8, 0, sid, struct.pack(">I", increment)) for sid, increment in updates),
    ]


_TO_LIMIT = 2**31 - 1 - 65_535


@fuzz_settings(250)
# Requests past the first (which opens the connection h2's way) that the fast path takes
# or refuses: a bad and a conflicting content-length (stream errors), a :status field
# first (h2 refuses an informational "request"), a body announced and END_STREAM set,
# an old stream id, an even one, more streams than the tight config allows.
@example(
    pieces=_requests(
        (1, 0x5, _GET),
        (3, 0x5, [*_GET, (b"content-length", b"x")]),
        (5, 0x4, [*_POST, (b"content-length", b"1"), (b"content-length", b"2")]),
        (7, 0x5, [(b":status", b"200"), *_GET]),
        (9, 0x5, [*_POST, (b"content-length", b"3")]),
        (11, 0x4, _POST),
        (13, 0x5, [(b":status", b"103"), *_GET]),
    ),
    config="default",
    respond_early=True,
    body_size=10,
)
@example(
    pieces=_requests((1, 0x5, _GET), (3, 0x4, _POST), (5, 0x4, _POST), (7, 0x4, _POST)),
    config="tight",
    respond_early=False,
    body_size=0,
)
@example(  # a stream window up to 2^31-1, then past it: a stream error (§6.9.1)
    pieces=_window_updates((0, 1000), (3, 1000), (3, _TO_LIMIT - 1000), (3, 1), (1, 5)),
    config="default",
    respond_early=False,
    body_size=10,
)
@example(  # the connection window (less stream 1's 10 bytes) to 2^31-1, then past it
    pieces=_window_updates((0, _TO_LIMIT + 10), (3, 7), (0, 1)),
    config="default",
    respond_early=False,
    body_size=10,
)
@example(  # an increment of 0, or with the reserved bit: PROTOCOL_ERROR (§6.9)
    pieces=_window_updates((3, 0)),
    config="default",
    respond_early=False,
    body_size=10,
)
@example(
    pieces=_window_updates((0, 2**31 + 5)),
    config="default",
    respond_early=False,
    body_size=10,
)
@example(  # a stream never opened
    pieces=_window_updates((9, 5)),
    config="default",
    respond_early=False,
    body_size=10,
)
@example(  # inside a header block (HEADERS without END_HEADERS): PROTOCOL_ERROR
    pieces=[
        *_requests((1, 0x5, _GET)),
        _raw(0x1, 0x1, 3, Encoder().encode(_GET)),
        _raw(0x8, 0, 0, struct.pack(">I", 9)),
    ],
    config="default",
    respond_early=True,
    body_size=0,
)
@example(  # a bad length
    pieces=[*_requests((1, 0x5, _GET)), _raw(0x8, 0, 0, b"\x00\x00\x00\x01\x00")],
    config="default",
    respond_early=True,
    body_size=0,
)
@example(
    pieces=_requests((1, 0x5, _GET), (3, 0x5, _GET), (3, 0x5, _GET)),
    config="default",
    respond_early=True,
    body_size=0,
)
@example(
    pieces=_requests((1, 0x5, _GET), (3, 0x5, _GET), (4, 0x5, _GET), (5, 0x5, _GET)),
    config="default",
    respond_early=True,
    body_size=0,
)
@given(
    pieces=st.one_of(request_streams(), frame_streams()),
    config=configs,
    respond_early=st.booleans(),
    body_size=st.sampled_from([0, 10]),
)
def test_http2_request_fast_path_matches_h2(
    pieces: list[bytes], config: str, respond_early: bool, body_size: int
) -> None:
    """The fast paths (``_H2Connection._receive_request``, ``_receive_window_update``)
    must accept exactly what h2 accepts and refuse the rest the same way: the same
    frames fed to a server with them and to one without them give the same events, the
    same bytes on the wire (errors and GOAWAY codes included) and the same h2 stream and
    HPACK state."""
    kwargs: dict[str, Any] = {"respond_early": respond_early, "body_size": body_size}
    fast = _record(pieces, CONFIGS[config], fast=True, **kwargs)
    slow = _record(pieces, CONFIGS[config], fast=False, **kwargs)
    assert len(fast) == len(slow)
    for step, (got, want) in enumerate(zip(fast, slow, strict=True)):
        assert got == want, f"piece {step} differs"
