"""In-memory tests of ``quicserve.protocol.http2``.

Bytes are pumped between :class:`H2Protocol` and an ``h2`` client connection with an
explicit clock; no sockets. Where the h2 client cannot follow (it stops reading after a
GOAWAY), the server's bytes are parsed frame by frame with ``hyperframe``.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import h2.events as h2e
import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.settings import SettingCodes
from h2.stream import H2StreamStateMachine, StreamClosedBy, StreamInputs, StreamState
from hpack import Decoder
from hyperframe.frame import (
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

import quicserve.protocol.http2 as http2_module
from quicserve.config import Config
from quicserve.events import (
    BodyEnded,
    BodyReceived,
    ConnectionClosed,
    RequestReceived,
    StreamEvent,
    StreamReset,
    StreamWritable,
)
from quicserve.protocol.http2 import H2Protocol

T0 = 1000.0

GET = [
    (b":method", b"GET"),
    (b":scheme", b"https"),
    (b":path", b"/index.html?q=1"),
    (b":authority", b"example.com"),
    (b"user-agent", b"test"),
]


def post_headers(extra: list[tuple[bytes, bytes]] | None = None) -> list[tuple[bytes, bytes]]:
    return [
        (b":method", b"POST"),
        (b":scheme", b"https"),
        (b":path", b"/upload"),
        (b":authority", b"example.com"),
        *(extra or []),
    ]


def parse_frames(data: bytes) -> list[Frame]:
    """Split server output into hyperframe frames (the server sends no magic)."""
    frames: list[Frame] = []
    view = memoryview(data)
    while view:
        frame, length = Frame.parse_frame_header(view[:9])
        frame.parse_body(view[9 : 9 + length])
        frames.append(frame)
        view = view[9 + length :]
    return frames


class Pair:
    """An H2Protocol and an h2 client connected in memory."""

    def __init__(
        self,
        config: Config | None = None,
        client_settings: dict[Any, int] | None = None,
        connect: bool = True,
    ) -> None:
        self.config = config or Config()
        self.now = T0
        self.server = H2Protocol(self.config, self.now)
        self.client = H2Connection(
            H2Configuration(
                client_side=True,
                header_encoding=None,
                validate_outbound_headers=False,
                normalize_outbound_headers=False,
            )
        )
        self.client.initiate_connection()
        if client_settings:
            self.client.update_settings(client_settings)
        self.server_events: list[StreamEvent] = []
        self.client_events: list[h2e.Event] = []
        if connect:
            self.pump()
            self.take()

    def pump(self) -> None:
        """Exchange bytes until both sides are quiet; collect both sides' events."""
        while True:
            out = self.server.data_to_send()
            if out:
                self.client_events += self.client.receive_data(out)
            back = self.client.data_to_send()
            if back:
                self.server.receive_data(back, self.now)
            if not out and not back:
                break
        while (event := self.server.next_event()) is not None:
            self.server_events.append(event)

    def take(self) -> tuple[list[StreamEvent], list[h2e.Event]]:
        """Return and forget the events collected so far."""
        server, client = self.server_events, self.client_events
        self.server_events, self.client_events = [], []
        return server, client

    def request(
        self, headers: list[tuple[bytes, bytes]] | None = None, end_stream: bool = True
    ) -> int:
        stream_id: int = self.client.get_next_available_stream_id()
        self.client.send_headers(stream_id, headers or GET, end_stream=end_stream)
        self.pump()
        return stream_id

    def body(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        """Send ``data`` from the client, split into frames the server accepts."""
        size = self.client.max_outbound_frame_size
        for start in range(0, len(data), size):
            last = end_stream and start + size >= len(data)
            self.client.send_data(stream_id, data[start : start + size], end_stream=last)
        self.pump()

    def server_frames(self) -> list[Frame]:
        return parse_frames(self.server.data_to_send())

    def drain_events(self) -> list[StreamEvent]:
        events: list[StreamEvent] = []
        while (event := self.server.next_event()) is not None:
            events.append(event)
        return events


def of_type(events: list[Any], cls: type) -> list[Any]:
    return [e for e in events if isinstance(e, cls)]


# -- connection start --------------------------------------------------------------------


def test_preface_sends_configured_settings_and_connection_window() -> None:
    config = Config(
        h2_max_concurrent_streams=42,
        h2_stream_window_size=128 * 1024,
        h2_connection_window_size=2 * 1024 * 1024,
        h2_max_frame_size=32 * 1024,
        max_header_bytes=20_000,
    )
    server = H2Protocol(config, T0)
    frames = parse_frames(server.data_to_send())
    assert isinstance(frames[0], SettingsFrame)
    settings = frames[0].settings
    assert settings[SettingCodes.MAX_CONCURRENT_STREAMS] == 42
    assert settings[SettingCodes.INITIAL_WINDOW_SIZE] == 128 * 1024
    assert settings[SettingCodes.MAX_FRAME_SIZE] == 32 * 1024
    assert settings[SettingCodes.MAX_HEADER_LIST_SIZE] == 20_000
    assert settings[SettingCodes.ENABLE_CONNECT_PROTOCOL] == 1
    assert isinstance(frames[1], WindowUpdateFrame)
    assert frames[1].stream_id == 0
    assert frames[1].window_increment == 2 * 1024 * 1024 - 65_535
    assert server.http_version == "2"
    assert not server.closed and server.wants_read() and server.open_streams == 0


def test_client_sees_settings_and_acks() -> None:
    pair = Pair(connect=False)
    pair.pump()
    _, client_events = pair.take()
    changed = of_type(client_events, h2e.RemoteSettingsChanged)[0].changed_settings
    assert changed[SettingCodes.ENABLE_CONNECT_PROTOCOL].new_value == 1
    window = of_type(client_events, h2e.WindowUpdated)[0]
    assert window.stream_id == 0
    assert pair.client.outbound_flow_control_window == Config().h2_connection_window_size
    assert of_type(client_events, h2e.SettingsAcknowledged)


def test_small_stream_window_applies_after_ack() -> None:
    # RFC 9113 §6.9.2: below 65535, the window shrinks only once the client ACKs.
    pair = Pair(Config(h2_stream_window_size=1000), connect=False)
    pair.pump()
    assert pair.client.remote_settings.initial_window_size == 1000
    stream_id = pair.request(post_headers(), end_stream=False)
    assert pair.client.local_flow_control_window(stream_id) == 1000


def test_frames_before_settings_are_a_protocol_error() -> None:
    server = H2Protocol(Config(), T0)
    client = H2Connection(H2Configuration(client_side=True, header_encoding=None))
    # A preface without the SETTINGS frame it must carry (RFC 9113 §3.4).
    server.receive_data(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", T0)
    client.initiate_connection()
    client.clear_outbound_data_buffer()
    client.ping(b"12345678")
    server.receive_data(client.data_to_send(), T0)
    goaway = of_type(parse_frames(server.data_to_send()), GoAwayFrame)
    assert goaway[0].error_code == ErrorCodes.PROTOCOL_ERROR
    assert server.closed


# -- requests ----------------------------------------------------------------------------


def test_simple_get() -> None:
    pair = Pair()
    stream_id = pair.request()
    events, _ = pair.take()
    assert events == [
        RequestReceived(
            stream_id=stream_id,
            method=b"GET",
            raw_path=b"/index.html?q=1",
            headers=[(b"user-agent", b"test")],
            scheme="https",
            authority=b"example.com",
        ),
        BodyEnded(stream_id),
    ]
    assert pair.server.open_streams == 1
    assert pair.server.get_timer() is None  # no keep-alive deadline while in flight


def test_host_header_stands_in_for_authority_and_cookies_are_joined() -> None:
    pair = Pair()
    pair.request(
        [
            (b":method", b"GET"),
            (b":scheme", b"http"),
            (b":path", b"/"),
            (b"host", b"example.org"),
            (b"cookie", b"a=1"),
            (b"accept", b"*/*"),
            (b"cookie", b"b=2"),
        ]
    )
    request = pair.take()[0][0]
    assert isinstance(request, RequestReceived)
    assert request.authority == b"example.org"
    assert request.scheme == "http"
    assert request.headers == [
        (b"host", b"example.org"),
        (b"accept", b"*/*"),
        (b"cookie", b"a=1; b=2"),
    ]


def test_post_body_and_ack_reopens_window() -> None:
    config = Config(h2_stream_window_size=65_535, h2_connection_window_size=65_535)
    pair = Pair(config)
    stream_id = pair.request(post_headers(), end_stream=False)
    pair.body(stream_id, b"x" * 16_000)
    pair.body(stream_id, b"y" * 24_000, end_stream=True)
    events, client_events = pair.take()
    assert isinstance(events[0], RequestReceived)
    bodies = of_type(events, BodyReceived)
    assert b"".join(b.data for b in bodies) == b"x" * 16_000 + b"y" * 24_000
    assert events[-1] == BodyEnded(stream_id)
    # Nothing consumed yet: no WINDOW_UPDATE at all (request-body backpressure).
    assert not of_type(client_events, h2e.WindowUpdated)
    assert pair.client.local_flow_control_window(stream_id) == 65_535 - 40_000

    pair.server.ack_body(stream_id, 40_000)
    pair.pump()
    _, client_events = pair.take()
    updates = {(u.stream_id, u.delta) for u in of_type(client_events, h2e.WindowUpdated)}
    assert (0, 40_000) in updates
    # An ack beyond what was delivered must not inflate the windows.
    pair.server.ack_body(stream_id, 10**6)
    pair.pump()
    assert pair.client.outbound_flow_control_window == 65_535


def test_ack_in_small_steps_updates_only_after_half_window() -> None:
    pair = Pair(Config(h2_stream_window_size=65_535, h2_connection_window_size=65_535))
    stream_id = pair.request(post_headers(), end_stream=False)
    pair.body(stream_id, b"z" * 40_000)
    pair.take()
    pair.server.ack_body(stream_id, 10_000)
    pair.pump()
    assert not of_type(pair.take()[1], h2e.WindowUpdated)
    pair.server.ack_body(stream_id, 30_000)
    pair.pump()
    updates = of_type(pair.take()[1], h2e.WindowUpdated)
    assert {u.stream_id for u in updates} == {0, stream_id}
    assert pair.client.local_flow_control_window(stream_id) == 65_535


def test_padding_is_not_delivered_and_credited_at_once() -> None:
    pair = Pair(Config(h2_connection_window_size=65_535))
    stream_id = pair.request(post_headers(), end_stream=False)
    for _ in range(140):
        pair.client.send_data(stream_id, b"p", pad_length=255)
    pair.pump()
    events, client_events = pair.take()
    assert b"".join(e.data for e in of_type(events, BodyReceived)) == b"p" * 140
    # 140 * 256 bytes of padding exceed half the connection window: credited already.
    assert of_type(client_events, h2e.WindowUpdated)[0].stream_id == 0


def test_request_trailers() -> None:
    pair = Pair()
    stream_id = pair.request(post_headers([(b"te", b"trailers")]), end_stream=False)
    pair.client.send_data(stream_id, b"hello")
    pair.client.send_headers(stream_id, [(b"x-checksum", b"abc")], end_stream=True)
    pair.pump()
    events, _ = pair.take()
    assert events[1:] == [
        BodyReceived(stream_id, b"hello"),
        BodyEnded(stream_id, [(b"x-checksum", b"abc")]),
    ]


def test_extended_connect_is_accepted_and_reported() -> None:
    pair = Pair()
    assert pair.client.remote_settings.enable_connect_protocol == 1
    stream_id = pair.request(
        [
            (b":method", b"CONNECT"),
            (b":protocol", b"websocket"),
            (b":scheme", b"https"),
            (b":path", b"/chat"),
            (b":authority", b"example.com"),
            (b"sec-websocket-version", b"13"),
        ],
        end_stream=False,
    )
    events, client_events = pair.take()
    request = events[0]
    assert isinstance(request, RequestReceived)
    assert (request.stream_id, request.method, request.protocol) == (
        stream_id,
        b"CONNECT",
        "websocket",
    )
    assert request.raw_path == b"/chat"
    assert request.headers == [(b"sec-websocket-version", b"13")]
    assert not of_type(client_events, h2e.StreamReset)


MALFORMED = {
    "missing :path": [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"a")],
    "missing :method": [(b":scheme", b"https"), (b":path", b"/"), (b":authority", b"a")],
    "missing :scheme": [(b":method", b"GET"), (b":path", b"/"), (b":authority", b"a")],
    "empty :path": [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"")],
    "relative :path": [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"x")],
    "duplicate :path": [*GET[:3], (b":path", b"/b")],
    "pseudo after regular": [*GET[:2], (b"accept", b"*/*"), (b":path", b"/")],
    "unknown pseudo": [*GET[:4], (b":foo", b"bar")],
    ":status in request": [*GET[:4], (b":status", b"200")],
    "upper-case name": [*GET, (b"Accept", b"*/*")],
    "space in name": [*GET, (b"acc ept", b"*/*")],
    "colon in name": [*GET, (b"a:b", b"c")],
    "LF in value": [*GET, (b"accept", b"a\nb")],
    "leading space in value": [*GET, (b"accept", b" a")],
    "connection header": [*GET, (b"connection", b"keep-alive")],
    "transfer-encoding": [*GET, (b"transfer-encoding", b"chunked")],
    "te other than trailers": [*GET, (b"te", b"gzip")],
    "two hosts": [*GET[:4], (b"host", b"example.com"), (b"host", b"example.com")],
    "host differs from :authority": [*GET[:4], (b"host", b"other.example")],
    ":protocol without CONNECT": [*GET, (b":protocol", b"websocket")],
    "CONNECT with :path": [
        (b":method", b"CONNECT"),
        (b":authority", b"a:443"),
        (b":path", b"/"),
    ],
    "CONNECT without :authority": [(b":method", b"CONNECT")],
    "extended CONNECT without :path": [
        (b":method", b"CONNECT"),
        (b":protocol", b"websocket"),
        (b":scheme", b"https"),
        (b":authority", b"a"),
    ],
    "content-length but END_STREAM": [*post_headers(), (b"content-length", b"5")],
    "space in :method": [(b":method", b"G T"), *GET[1:]],
}


@pytest.mark.parametrize("headers", list(MALFORMED.values()), ids=list(MALFORMED))
def test_malformed_request_resets_only_that_stream(headers: list[tuple[bytes, bytes]]) -> None:
    pair = Pair()
    bad = pair.request(headers)
    events, client_events = pair.take()
    assert events == []
    resets = of_type(client_events, h2e.StreamReset)
    assert [(r.stream_id, r.error_code) for r in resets] == [(bad, ErrorCodes.PROTOCOL_ERROR)]
    assert not of_type(client_events, h2e.ConnectionTerminated)
    # The connection is still usable.
    good = pair.request()
    events, _ = pair.take()
    assert isinstance(events[0], RequestReceived) and events[0].stream_id == good
    assert not pair.server.closed


def test_body_after_malformed_headers_does_not_leak_connection_window() -> None:
    pair = Pair(Config(h2_connection_window_size=65_535))
    stream_id = pair.client.get_next_available_stream_id()
    pair.client.send_headers(stream_id, MALFORMED["missing :path"][:2] + post_headers()[1:2])
    pair.body(stream_id, b"q" * 40_000)
    events, client_events = pair.take()
    assert events == []
    assert any(u.stream_id == 0 for u in of_type(client_events, h2e.WindowUpdated))


def test_content_length_mismatch_is_a_stream_error() -> None:
    pair = Pair()
    stream_id = pair.request(post_headers([(b"content-length", b"3")]), end_stream=False)
    pair.client.send_data(stream_id, b"12345", end_stream=True)
    pair.pump()
    events, client_events = pair.take()
    assert events[-1] == StreamReset(stream_id, ErrorCodes.PROTOCOL_ERROR)
    assert [(r.stream_id, r.error_code) for r in of_type(client_events, h2e.StreamReset)] == [
        (stream_id, ErrorCodes.PROTOCOL_ERROR)
    ]
    assert not of_type(client_events, h2e.ConnectionTerminated)
    pair.request()
    assert isinstance(pair.take()[0][0], RequestReceived)


# -- responses ---------------------------------------------------------------------------


def test_simple_response() -> None:
    pair = Pair()
    stream_id = pair.request()
    pair.take()
    pair.server.send_response(
        stream_id,
        200,
        [(b"content-type", b"text/plain"), (b"connection", b"close")],
    )
    pair.server.send_data(stream_id, b"hello", end_stream=True)
    pair.pump()
    _, client_events = pair.take()
    response = of_type(client_events, h2e.ResponseReceived)[0]
    # RFC 9113 §8.2.2: the connection-specific field is dropped.
    assert response.headers == [(b":status", b"200"), (b"content-type", b"text/plain")]
    assert of_type(client_events, h2e.DataReceived)[0].data == b"hello"
    assert of_type(client_events, h2e.StreamEnded)


def test_response_larger_than_client_window() -> None:
    pair = Pair(client_settings={SettingCodes.INITIAL_WINDOW_SIZE: 1000})
    stream_id = pair.request()
    pair.take()
    pair.server.send_response(stream_id, 200, [])
    pair.server.send_data(stream_id, b"a" * 5000, end_stream=True)
    assert pair.server.buffered_amount(stream_id) == 4000
    pair.pump()
    _, client_events = pair.take()
    assert sum(len(d.data) for d in of_type(client_events, h2e.DataReceived)) == 1000
    assert not of_type(client_events, h2e.StreamEnded)

    pair.client.increment_flow_control_window(1500, stream_id)
    pair.pump()
    events, client_events = pair.take()
    assert events == [StreamWritable(stream_id)]
    assert pair.server.buffered_amount(stream_id) == 2500
    assert sum(len(d.data) for d in of_type(client_events, h2e.DataReceived)) == 1500
    assert not of_type(client_events, h2e.StreamEnded)

    pair.client.increment_flow_control_window(10_000, stream_id)
    pair.pump()
    events, client_events = pair.take()
    assert events == [StreamWritable(stream_id)]
    assert pair.server.buffered_amount(stream_id) == 0
    assert sum(len(d.data) for d in of_type(client_events, h2e.DataReceived)) == 2500
    assert of_type(client_events, h2e.StreamEnded)[0].stream_id == stream_id


def test_client_settings_change_lets_buffered_data_out() -> None:
    pair = Pair(client_settings={SettingCodes.INITIAL_WINDOW_SIZE: 100})
    stream_id = pair.request()
    pair.take()
    pair.server.send_response(stream_id, 200, [])
    pair.server.send_data(stream_id, b"b" * 300, end_stream=True)
    pair.pump()
    pair.take()
    pair.client.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: 1000})
    pair.pump()
    events, client_events = pair.take()
    assert StreamWritable(stream_id) in events
    assert sum(len(d.data) for d in of_type(client_events, h2e.DataReceived)) == 200
    assert of_type(client_events, h2e.StreamEnded)


def test_two_streams_share_a_small_connection_window_fairly() -> None:
    # Large stream windows, so that the connection window (65535) is the bottleneck.
    pair = Pair(client_settings={SettingCodes.INITIAL_WINDOW_SIZE: 1 << 20})
    first = pair.request()
    second = pair.request()
    pair.take()
    for stream_id in (first, second):
        pair.server.send_response(stream_id, 200, [])
        pair.server.send_data(stream_id, b"d" * 200_000, end_stream=True)
    pair.pump()
    pair.take()
    assert pair.server.buffered_amount(first) == 200_000 - 65_535
    assert pair.server.buffered_amount(second) == 200_000
    frame = pair.client.max_outbound_frame_size  # our max frame size: the RR quantum
    for _ in range(3):
        pair.client.increment_flow_control_window(4 * frame)
        pair.pump()
        events, client_events = pair.take()
        got = {first: 0, second: 0}
        for data in of_type(client_events, h2e.DataReceived):
            got[data.stream_id] += len(data.data)
        assert got[first] == got[second] == 2 * frame
        assert set(events) == {StreamWritable(first), StreamWritable(second)}
    pair.client.increment_flow_control_window(1 << 20)
    pair.pump()
    assert pair.server.buffered_amount(first) == pair.server.buffered_amount(second) == 0
    ended = {e.stream_id for e in of_type(pair.take()[1], h2e.StreamEnded)}
    assert ended == {first, second}


def test_new_stream_waits_behind_connection_blocked_streams() -> None:
    pair = Pair(client_settings={SettingCodes.INITIAL_WINDOW_SIZE: 1 << 20})
    first = pair.request()
    second = pair.request()
    pair.take()
    pair.server.send_response(first, 200, [])
    pair.server.send_data(first, b"1" * 70_000)
    pair.server.send_response(second, 200, [])
    pair.server.send_data(second, b"2" * 10)  # the connection window is used up
    assert pair.server.buffered_amount(second) == 10
    pair.pump()
    pair.take()
    # The next WINDOW_UPDATE is shared: the late stream is served in the first turn.
    pair.client.increment_flow_control_window(2048)
    pair.pump()
    _, client_events = pair.take()
    got = [(e.stream_id, len(e.data)) for e in of_type(client_events, h2e.DataReceived)]
    assert got == [(first, 1024), (second, 10), (first, 1014)]


def test_response_trailers_after_buffered_data() -> None:
    pair = Pair(client_settings={SettingCodes.INITIAL_WINDOW_SIZE: 10})
    stream_id = pair.request()
    pair.take()
    pair.server.send_response(stream_id, 200, [(b"trailer", b"x-sum")])
    pair.server.send_data(stream_id, b"0123456789abcdef")
    pair.server.send_trailers(stream_id, [(b"x-sum", b"42")])
    pair.server.send_data(stream_id, b"ignored after trailers")
    pair.pump()
    _, client_events = pair.take()
    assert not of_type(client_events, h2e.TrailersReceived)
    pair.client.increment_flow_control_window(100, stream_id)
    pair.pump()
    _, client_events = pair.take()
    assert of_type(client_events, h2e.DataReceived)[0].data == b"abcdef"
    trailers = of_type(client_events, h2e.TrailersReceived)[0]
    assert trailers.headers == [(b"x-sum", b"42")]
    assert of_type(client_events, h2e.StreamEnded)


def test_informational_then_final_response() -> None:
    pair = Pair()
    stream_id = pair.request()
    pair.take()
    pair.server.send_informational(stream_id, 103, [(b"link", b"</a.css>; rel=preload")])
    pair.server.send_response(stream_id, 204, [], end_stream=True)
    pair.pump()
    _, client_events = pair.take()
    info = of_type(client_events, h2e.InformationalResponseReceived)[0]
    assert info.headers == [(b":status", b"103"), (b"link", b"</a.css>; rel=preload")]
    final = of_type(client_events, h2e.ResponseReceived)[0]
    assert final.headers == [(b":status", b"204")]
    assert of_type(client_events, h2e.StreamEnded)


def test_reset_stream() -> None:
    pair = Pair(client_settings={SettingCodes.INITIAL_WINDOW_SIZE: 10})
    stream_id = pair.request()
    pair.take()
    pair.server.send_response(stream_id, 200, [])
    pair.server.send_data(stream_id, b"x" * 100)
    pair.server.reset_stream(stream_id)
    assert pair.server.buffered_amount(stream_id) == 0
    pair.pump()
    events, client_events = pair.take()
    assert events == []  # our own reset is not reported back
    resets = of_type(client_events, h2e.StreamReset)
    assert [(r.stream_id, r.error_code) for r in resets] == [(stream_id, ErrorCodes.INTERNAL_ERROR)]
    pair.server.send_data(stream_id, b"more", end_stream=True)
    pair.server.reset_stream(stream_id)
    assert pair.server.data_to_send() == b""
    pair.server.stream_done(stream_id, pair.now)
    assert pair.server.open_streams == 0


def test_peer_reset_reports_and_later_calls_are_no_ops() -> None:
    pair = Pair(Config(h2_connection_window_size=65_535))
    stream_id = pair.request(post_headers(), end_stream=False)
    pair.body(stream_id, b"u" * 40_000)
    pair.client.reset_stream(stream_id, ErrorCodes.CANCEL)
    pair.pump()
    events, client_events = pair.take()
    assert events[-1] == StreamReset(stream_id, ErrorCodes.CANCEL)
    # The unread body was credited back to the connection window.
    assert [(u.stream_id, u.delta) for u in of_type(client_events, h2e.WindowUpdated)] == [
        (0, 40_000)
    ]
    server = pair.server
    server.send_response(stream_id, 200, [])
    server.send_informational(stream_id, 100, [])
    server.send_data(stream_id, b"x", end_stream=True)
    server.send_trailers(stream_id, [(b"a", b"b")])
    server.reset_stream(stream_id)
    server.ack_body(stream_id, 40_000)
    assert server.push_promise(stream_id, b"/x", []) is None
    assert server.buffered_amount(stream_id) == 0
    assert server.data_to_send() == b""
    server.stream_done(stream_id, pair.now)
    server.stream_done(stream_id, pair.now)
    assert server.open_streams == 0 and server.next_event() is None


def test_unread_body_after_a_complete_response_is_discarded_then_reset() -> None:
    """RFC 9113 §8.1: a 413 answered before the body. Up to 64 KiB more of the body is
    read and discarded (credited back), so a client still uploading can read the 413;
    the stream goes when the body ends, with no RST_STREAM."""
    pair = Pair()
    stream_id = pair.request(post_headers(), end_stream=False)
    pair.take()
    pair.server.send_response(stream_id, 413, [], end_stream=True)
    pair.server.stream_done(stream_id, pair.now)
    frames = pair.server_frames()
    assert len(frames) == 1
    assert isinstance(frames[0], HeadersFrame) and "END_STREAM" in frames[0].flags
    pair.body(stream_id, b"b" * 30_000, end_stream=True)
    events, client_events = pair.take()
    assert events == []  # nothing reaches the (finished) stream type
    assert of_type(client_events, h2e.StreamReset) == []
    assert pair.server.open_streams == 0


def test_unread_body_beyond_the_linger_budget_gets_rst_no_error() -> None:
    pair = Pair()
    stream_id = pair.request(post_headers(), end_stream=False)
    pair.take()
    pair.server.send_response(stream_id, 413, [], end_stream=True)
    pair.server.stream_done(stream_id, pair.now)
    pair.pump()
    pair.body(stream_id, b"b" * 70_000)  # more than the 64 KiB budget, and no end
    _, client_events = pair.take()
    resets = of_type(client_events, h2e.StreamReset)
    assert [r.error_code for r in resets] == [ErrorCodes.NO_ERROR]
    assert pair.server.open_streams == 0


def test_stream_done_keeps_stream_until_buffer_drains() -> None:
    pair = Pair(client_settings={SettingCodes.INITIAL_WINDOW_SIZE: 10})
    stream_id = pair.request()
    pair.take()
    pair.server.send_response(stream_id, 200, [])
    pair.server.send_data(stream_id, b"y" * 30, end_stream=True)
    pair.server.stream_done(stream_id, pair.now)
    assert pair.server.open_streams == 1
    pair.pump()
    pair.client.increment_flow_control_window(100, stream_id)
    pair.pump()
    events, client_events = pair.take()
    assert events == []  # the stream type is gone: no StreamWritable
    assert of_type(client_events, h2e.StreamEnded)
    assert pair.server.open_streams == 0


# -- errors ------------------------------------------------------------------------------


def test_garbage_bytes_give_goaway_protocol_error() -> None:
    server = H2Protocol(Config(), T0)
    server.data_to_send()
    server.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", T0)
    goaways = of_type(parse_frames(server.data_to_send()), GoAwayFrame)
    assert [g.error_code for g in goaways] == [ErrorCodes.PROTOCOL_ERROR]
    events = []
    while (event := server.next_event()) is not None:
        events.append(event)
    assert len(events) == 1
    assert isinstance(events[0], ConnectionClosed)
    assert events[0].error_code == ErrorCodes.PROTOCOL_ERROR
    assert server.closed and not server.wants_read()
    server.receive_data(b"more garbage", T0)  # ignored, still no exception
    assert server.next_event() is None


def test_invalid_frame_mid_connection_resets_open_streams() -> None:
    pair = Pair()
    stream_id = pair.request()
    pair.take()
    # A WINDOW_UPDATE on stream 0 with a zero increment is a connection error.
    pair.server.receive_data(b"\x00\x00\x04\x08\x00\x00\x00\x00\x00\x00\x00\x00\x00", T0)
    events = pair.drain_events()
    assert events[0] == StreamReset(stream_id, ErrorCodes.PROTOCOL_ERROR)
    assert isinstance(events[1], ConnectionClosed)
    goaway = of_type(pair.server_frames(), GoAwayFrame)[0]
    assert goaway.error_code == ErrorCodes.PROTOCOL_ERROR
    assert goaway.last_stream_id == stream_id
    assert pair.server.open_streams == 0


def test_peer_eof() -> None:
    pair = Pair()
    stream_id = pair.request()
    pair.take()
    pair.server.receive_data(b"", pair.now)
    events = pair.drain_events()
    assert events == [
        StreamReset(stream_id, ErrorCodes.CANCEL),
        ConnectionClosed(0, "peer closed the connection"),
    ]
    assert pair.server.closed and not pair.server.wants_read()
    assert pair.server.get_timer() is None


def test_peer_goaway_lets_streams_in_flight_finish() -> None:
    pair = Pair()
    stream_id = pair.request()
    pair.take()
    pair.client.close_connection()  # GOAWAY NO_ERROR
    pair.server.receive_data(pair.client.data_to_send(), pair.now)
    assert pair.drain_events() == []
    assert not pair.server.closed
    pair.server.send_response(stream_id, 200, [], end_stream=True)
    frames = pair.server_frames()
    assert isinstance(frames[0], HeadersFrame) and frames[0].stream_id == stream_id
    pair.server.stream_done(stream_id, pair.now)
    assert pair.server.closed
    assert isinstance(pair.server.next_event(), ConnectionClosed)


def test_peer_goaway_with_error_closes() -> None:
    pair = Pair()
    stream_id = pair.request()
    pair.take()
    pair.client.close_connection(ErrorCodes.INTERNAL_ERROR)
    pair.server.receive_data(pair.client.data_to_send(), pair.now)
    events = pair.drain_events()
    assert events[0] == StreamReset(stream_id, ErrorCodes.INTERNAL_ERROR)
    assert isinstance(events[1], ConnectionClosed) and events[1].error_code == 2
    assert pair.server.closed


# -- shutdown and timers -----------------------------------------------------------------


def test_shutdown_refuses_new_streams_and_closes_when_drained() -> None:
    pair = Pair()
    in_flight = pair.request()
    pair.take()
    pair.server.shutdown()
    pair.server.shutdown()  # once only
    # The client opens a stream before it has read the GOAWAY.
    late = pair.client.get_next_available_stream_id()
    pair.client.send_headers(late, GET, end_stream=True)
    pair.server.receive_data(pair.client.data_to_send(), pair.now)
    assert pair.drain_events() == []
    frames = pair.server_frames()
    goaways = of_type(frames, GoAwayFrame)
    assert [(g.last_stream_id, g.error_code) for g in goaways] == [(in_flight, 0)]
    resets = of_type(frames, RstStreamFrame)
    assert [(r.stream_id, r.error_code) for r in resets] == [(late, ErrorCodes.REFUSED_STREAM)]
    assert not pair.server.closed and pair.server.open_streams == 1
    # The stream in flight still completes.
    pair.server.send_response(in_flight, 200, [])
    pair.server.send_data(in_flight, b"bye", end_stream=True)
    frames = pair.server_frames()
    assert of_type(frames, DataFrame)[0].data == b"bye"
    assert not pair.server.closed
    pair.server.stream_done(in_flight, pair.now)
    assert pair.server.closed
    assert pair.drain_events() == [ConnectionClosed(0, "drained")]


def test_shutdown_when_idle_closes_at_once() -> None:
    pair = Pair()
    pair.server.shutdown()
    goaway = of_type(pair.server_frames(), GoAwayFrame)[0]
    assert (goaway.last_stream_id, goaway.error_code) == (0, 0)
    assert pair.server.closed
    assert isinstance(pair.server.next_event(), ConnectionClosed)


def test_keep_alive_timer() -> None:
    config = Config(keep_alive_timeout=5.0, header_read_timeout=30.0)
    pair = Pair(config)
    assert pair.server.get_timer() == T0 + 5.0
    stream_id = pair.request()
    pair.take()
    assert pair.server.get_timer() is None
    pair.server.send_response(stream_id, 200, [], end_stream=True)
    pair.server.stream_done(stream_id, T0 + 2.0)
    # The keep-alive clock starts when the last stream is done.
    assert pair.server.get_timer() == T0 + 7.0
    pair.server.handle_timer(T0 + 6.9)
    assert not pair.server.closed
    pair.server.handle_timer(T0 + 7.0)
    assert pair.server.closed
    assert isinstance(pair.server.next_event(), ConnectionClosed)
    goaway = of_type(pair.server_frames(), GoAwayFrame)[0]
    assert (goaway.last_stream_id, goaway.error_code) == (stream_id, 0)
    assert pair.server.get_timer() is None


def test_received_data_while_idle_does_not_extend_keep_alive() -> None:
    pair = Pair(Config(keep_alive_timeout=5.0))
    pair.now = T0 + 4.0
    pair.client.ping(b"pingpong")
    pair.pump()
    assert pair.server.get_timer() == T0 + 5.0


def test_preface_timeout() -> None:
    server = H2Protocol(Config(header_read_timeout=3.0, keep_alive_timeout=60.0), T0)
    server.data_to_send()
    assert server.get_timer() == T0 + 3.0
    server.handle_timer(T0 + 3.0)
    assert server.closed
    goaway = of_type(parse_frames(server.data_to_send()), GoAwayFrame)[0]
    assert goaway.error_code == ErrorCodes.SETTINGS_TIMEOUT


# -- h2c and push ------------------------------------------------------------------------


def test_h2c_upgrade() -> None:
    client = H2Connection(H2Configuration(client_side=True, header_encoding=None))
    settings_header = client.initiate_upgrade_connection()
    assert settings_header is not None
    request = RequestReceived(
        stream_id=0,
        method=b"GET",
        raw_path=b"/",
        headers=[(b"host", b"example.com")],
        scheme="http",
        authority=b"example.com",
    )
    server = H2Protocol.from_h2c_upgrade(Config(), T0, settings_header, request)
    events = []
    while (event := server.next_event()) is not None:
        events.append(event)
    assert events == [
        RequestReceived(
            stream_id=1,
            method=b"GET",
            raw_path=b"/",
            headers=[(b"host", b"example.com")],
            scheme="http",
            authority=b"example.com",
        ),
        BodyEnded(1),
    ]
    assert server.open_streams == 1
    preface = server.data_to_send()
    assert isinstance(parse_frames(preface)[0], SettingsFrame)
    client.receive_data(preface)
    server.receive_data(client.data_to_send(), T0)
    server.send_response(1, 200, [], end_stream=True)
    client_events = client.receive_data(server.data_to_send())
    response = of_type(client_events, h2e.ResponseReceived)[0]
    assert (response.stream_id, response.headers) == (1, [(b":status", b"200")])


def test_h2c_upgrade_with_bad_settings_raises_value_error() -> None:
    request = RequestReceived(stream_id=0, method=b"GET", raw_path=b"/", headers=[])
    with pytest.raises(ValueError, match="HTTP2-Settings"):
        H2Protocol.from_h2c_upgrade(Config(), T0, b"AAM", request)


def test_push_promise() -> None:
    pair = Pair()
    stream_id = pair.request()
    pair.take()
    promised = pair.server.push_promise(stream_id, b"/style.css", [(b"accept", b"text/css")])
    assert promised == 2
    assert pair.server.next_event() is None
    assert pair.server.open_streams == 2
    pair.server.send_response(promised, 200, [(b"content-type", b"text/css")])
    pair.server.send_data(promised, b"body{}", end_stream=True)
    pair.server.send_response(stream_id, 200, [], end_stream=True)
    pair.pump()
    _, client_events = pair.take()
    push = of_type(client_events, h2e.PushedStreamReceived)[0]
    assert (push.parent_stream_id, push.pushed_stream_id) == (stream_id, promised)
    assert push.headers == [
        (b":method", b"GET"),
        (b":path", b"/style.css"),
        (b":scheme", b"https"),
        (b":authority", b"example.com"),
        (b"accept", b"text/css"),
    ]
    data = of_type(client_events, h2e.DataReceived)
    assert [(d.stream_id, d.data) for d in data] == [(promised, b"body{}")]
    # No push once the parent's response has ended.
    assert pair.server.push_promise(stream_id, b"/late.css", []) is None


def test_push_promise_disabled_by_client() -> None:
    pair = Pair(client_settings={SettingCodes.ENABLE_PUSH: 0})
    stream_id = pair.request()
    pair.take()
    assert pair.server.push_promise(stream_id, b"/style.css", []) is None
    assert pair.server.push_promise(99, b"/style.css", []) is None
    assert pair.server.data_to_send() == b""


# -- house rules -------------------------------------------------------------------------


def test_module_does_no_io() -> None:
    tree = ast.parse(Path(http2_module.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            imported.add(node.module.split(".")[0])
        assert not isinstance(node, ast.Await | ast.AsyncFunctionDef)
    assert not imported & {"anyio", "asyncio", "trio", "socket", "time", "select", "ssl"}


def test_decoder_helper_roundtrip() -> None:
    # Sanity check of the test helper itself: HEADERS parsed by hand decode properly.
    pair = Pair()
    stream_id = pair.request()
    pair.take()
    pair.server.send_response(stream_id, 404, [(b"x", b"y")], end_stream=True)
    headers = of_type(pair.server_frames(), HeadersFrame)[0]
    decoded = list(Decoder().decode(headers.data, raw=True))
    assert decoded[0] == (b":status", b"404")


# -- rapid reset (CVE-2023-44487) ---------------------------------------------------------


def test_reset_streams_count_until_their_app_call_ends() -> None:
    """A client that resets each stream at once cannot start more app calls than
    SETTINGS_MAX_CONCURRENT_STREAMS: a reset stream counts until ``stream_done``."""
    pair = Pair(Config(h2_max_concurrent_streams=3))
    started = []
    for _ in range(3):
        stream_id = pair.request()
        pair.client.reset_stream(stream_id, ErrorCodes.CANCEL)
        pair.pump()
        started.append(stream_id)
    events, _ = pair.take()
    assert len(of_type(events, RequestReceived)) == 3
    # Three app calls still run: the fourth stream is refused, not started.
    refused = pair.request()
    events, client_events = pair.take()
    assert of_type(events, RequestReceived) == []
    resets = of_type(client_events, h2e.StreamReset)
    assert [(r.stream_id, r.error_code) for r in resets] == [(refused, ErrorCodes.REFUSED_STREAM)]
    # One app call ends: room for one more.
    pair.server.stream_done(started[0], pair.now)
    pair.request()
    events, _ = pair.take()
    assert len(of_type(events, RequestReceived)) == 1


def test_endless_refused_streams_end_the_connection() -> None:
    pair = Pair(Config(h2_max_concurrent_streams=1))
    first = pair.request()  # its app call never ends
    pair.client.reset_stream(first, ErrorCodes.CANCEL)
    pair.pump()
    pair.take()
    for _ in range(http2_module._MAX_REFUSED + 1):
        stream_id = pair.client.get_next_available_stream_id()
        pair.client.send_headers(stream_id, GET, end_stream=True)
        pair.client.reset_stream(stream_id, ErrorCodes.CANCEL)
        pair.pump()
        if pair.server.closed:
            break
    assert pair.server.closed
    _, client_events = pair.take()
    goaways = of_type(client_events, h2e.ConnectionTerminated)
    assert [g.error_code for g in goaways] == [ErrorCodes.ENHANCE_YOUR_CALM]


# -- MadeYouReset (CVE-2025-8671) ---------------------------------------------------------


def _overflow_window(pair: Pair, stream_id: int) -> None:
    """A WINDOW_UPDATE that overflows the stream's send window (RFC 9113 §6.9.1): h2
    resets the stream with FLOW_CONTROL_ERROR, a stream error the client provoked."""
    frame = WindowUpdateFrame(stream_id)
    frame.window_increment = 2**31 - 1
    pair.server.receive_data(frame.serialize(), pair.now)
    pair.pump()


def test_a_stream_the_server_resets_counts_until_its_app_call_ends() -> None:
    pair = Pair(Config(h2_max_concurrent_streams=2))
    started = []
    for _ in range(2):
        stream_id = pair.request()
        _overflow_window(pair, stream_id)
        started.append(stream_id)
    events, _ = pair.take()
    assert len(of_type(events, RequestReceived)) == 2
    assert [e.error_code for e in of_type(events, StreamReset)] == [
        ErrorCodes.FLOW_CONTROL_ERROR
    ] * 2
    # Both app calls still run: the third stream is refused.
    pair.request()
    events, _ = pair.take()
    assert of_type(events, RequestReceived) == []
    pair.server.stream_done(started[0], pair.now)
    pair.request()
    events, _ = pair.take()
    assert len(of_type(events, RequestReceived)) == 1


def test_provoked_stream_errors_end_in_enhance_your_calm() -> None:
    pair = Pair(Config(h2_max_stream_errors=3))
    for count in range(4):
        assert not pair.server.closed
        stream_id = pair.request(
            [*GET[:4], (b"te", b"gzip")] if count % 2 else None  # malformed / overflow
        )
        if count % 2 == 0:
            _overflow_window(pair, stream_id)
        pair.server.stream_done(stream_id, pair.now)  # the app call ends at once
        pair.pump()
    assert pair.server.closed
    _, client_events = pair.take()
    goaways = of_type(client_events, h2e.ConnectionTerminated)
    assert [g.error_code for g in goaways] == [ErrorCodes.ENHANCE_YOUR_CALM]


# -- the field-section limit (Config.max_header_bytes) ---------------------------------


def _sized(size: int, base: list[tuple[bytes, bytes]] = GET) -> list[tuple[bytes, bytes]]:
    """``base`` plus an ``x-pad`` field, exactly ``size`` by RFC 9113 §6.5.2."""
    used = sum(len(n) + len(v) + 32 for n, v in base) + 5 + 32
    return [*base, (b"x-pad", b"p" * (size - used))]


def test_header_list_at_the_limit_is_served_and_past_it_gets_431() -> None:
    pair = Pair(Config(max_header_bytes=4000))
    served = pair.request(_sized(4000))
    refused = pair.request(_sized(4001))
    after = pair.request()
    server_events, client_events = pair.take()
    started = [e.stream_id for e in server_events if isinstance(e, RequestReceived)]
    assert started == [served, after]
    answers = {
        e.stream_id: dict(e.headers)[b":status"]
        for e in of_type(client_events, h2e.ResponseReceived)
    }
    assert answers == {refused: b"431"}
    assert not of_type(client_events, h2e.ConnectionTerminated)


def test_limit_survives_the_settings_ack() -> None:
    # h2 resets HPACK's bound to SETTINGS_MAX_HEADER_LIST_SIZE on ACK; ours stays 2x.
    pair = Pair(Config(max_header_bytes=4000))
    pair.pump()
    assert pair.server._conn.decoder.max_header_list_size == 8000
    refused = pair.request(_sized(7000))
    _, client_events = pair.take()
    answers = {
        e.stream_id: dict(e.headers)[b":status"]
        for e in of_type(client_events, h2e.ResponseReceived)
    }
    assert answers == {refused: b"431"}


def test_far_past_the_limit_is_enhance_your_calm() -> None:
    pair = Pair(Config(max_header_bytes=4000))
    pair.request(_sized(8100))
    _, client_events = pair.take()
    (terminated,) = of_type(client_events, h2e.ConnectionTerminated)
    assert terminated.error_code == ErrorCodes.ENHANCE_YOUR_CALM
    assert pair.server.closed


def test_encoded_header_block_is_bounded_across_continuation() -> None:
    # 9000 octets of header block in HEADERS + CONTINUATION frames: refused when the
    # block passes twice the limit, before HPACK decodes it. The block is not even valid
    # HPACK (its value announces 9086 octets and has 9000), so ENHANCE_YOUR_CALM rather
    # than COMPRESSION_ERROR shows that HPACK never ran.
    server = H2Protocol(Config(max_header_bytes=4000), T0)
    server.data_to_send()
    block = b"\x00\x05x-pad" + b"\x7f" + bytes((0xFF, 0x45)) + b"p" * 9000
    frames = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
    pieces = [block[i : i + 4000] for i in range(0, len(block), 4000)]
    for i, piece in enumerate(pieces):
        kind, flags = (1, 0) if i == 0 else (9, 0)
        if i == len(pieces) - 1:
            flags = 4
        frames += len(piece).to_bytes(3, "big") + bytes((kind, flags)) + b"\x00\x00\x00\x01" + piece
    server.receive_data(frames, T0)
    goaway = of_type(parse_frames(server.data_to_send()), GoAwayFrame)
    assert goaway and goaway[0].error_code == ErrorCodes.ENHANCE_YOUR_CALM


def test_trailers_past_the_limit_reset_the_stream() -> None:
    pair = Pair(Config(max_header_bytes=4000))
    ok = pair.request(post_headers(), end_stream=False)
    pair.body(ok, b"hi")
    pair.client.send_headers(ok, _sized(4000, []), end_stream=True)
    bad = pair.request(post_headers(), end_stream=False)
    pair.body(bad, b"hi")
    pair.client.send_headers(bad, _sized(4001, []), end_stream=True)
    pair.pump()
    server_events, client_events = pair.take()
    assert BodyEnded(ok, _sized(4000, [])) in server_events
    assert StreamReset(bad, ErrorCodes.ENHANCE_YOUR_CALM) in server_events
    resets = {e.stream_id: e.error_code for e in of_type(client_events, h2e.StreamReset)}
    assert resets == {bad: ErrorCodes.ENHANCE_YOUR_CALM}
    assert not of_type(client_events, h2e.ConnectionTerminated)


# -- control-frame floods (CVE-2019-9512, -9515, -9518) -----------------------------------


def test_a_ping_flood_ends_in_enhance_your_calm_and_is_cut_short() -> None:
    pair = Pair(Config(h2_max_control_frames=50))
    flood = PingFrame(0, b"12345678").serialize() * 20_000  # one read of 340 KB
    pair.server.receive_data(flood, pair.now)
    assert pair.server.closed
    answer = parse_frames(pair.server.data_to_send())
    pings = [f for f in answer if isinstance(f, PingFrame)]
    # Cut off after the slice that passed the budget, not after all 20,000.
    assert 50 <= len(pings) < 1500, len(pings)
    goaways = [f for f in answer if isinstance(f, GoAwayFrame)]
    assert [g.error_code for g in goaways] == [ErrorCodes.ENHANCE_YOUR_CALM]


def test_empty_data_frames_count_as_a_flood() -> None:
    pair = Pair(Config(h2_max_control_frames=50))
    stream_id = pair.request(post_headers(), end_stream=False)
    pair.server.receive_data(DataFrame(stream_id, b"").serialize() * 300, pair.now)
    pair.pump()
    assert pair.server.closed
    _, client_events = pair.take()
    goaways = of_type(client_events, h2e.ConnectionTerminated)
    assert [g.error_code for g in goaways] == [ErrorCodes.ENHANCE_YOUR_CALM]


def test_streams_and_downloads_earn_control_frames() -> None:
    """A client's ordinary control frames never trip the rule: per stream it opens, and
    per DATA frame it is sent (the WINDOW_UPDATEs a download draws)."""
    pair = Pair(Config(h2_max_control_frames=10))
    for _ in range(5):
        stream_id = pair.request()
        for _ in range(20):  # PRIORITY frames, as some browsers send
            pair.client.prioritize(stream_id, weight=16)
        pair.pump()
        pair.server.send_response(stream_id, 200, [])
        pair.server.send_data(stream_id, b"x" * 200_000, end_stream=True)
        for _ in range(40):
            pair.pump()
            for event in pair.client_events:
                if isinstance(event, h2e.DataReceived) and event.flow_controlled_length:
                    # A WINDOW_UPDATE per DATA frame, stream and connection.
                    pair.client.acknowledge_received_data(event.flow_controlled_length, stream_id)
            pair.client_events.clear()
        pair.server.stream_done(stream_id, pair.now)
    assert not pair.server.closed


# -- direct framing and HPACK block caches (issue 11) -------------------------------------


def test_repeated_requests_and_responses_decode_the_same_through_the_block_caches() -> None:
    # From the second time on a head is all indexed: the same bytes, from the caches. A
    # response with a new field shifts the dynamic indices (RFC 7541 §2.3.3), so the
    # cached block of the earlier head must not be reused after it.
    pair = Pair()
    sent = [
        [(b"date", b"Mon, 1"), (b"x-n", b"1")],
        [(b"date", b"Mon, 1"), (b"x-n", b"1")],
        [(b"date", b"Mon, 1"), (b"x-n", b"1")],
        [(b"date", b"Tue, 2"), (b"x-m", b"2")],
        [(b"date", b"Mon, 1"), (b"x-n", b"1")],
    ]
    for headers in sent:
        stream_id = pair.request()
        (request,) = of_type(pair.take()[0], RequestReceived)
        assert (request.method, request.raw_path, request.headers) == (
            b"GET",
            b"/index.html?q=1",
            [(b"user-agent", b"test")],
        )
        pair.server.send_response(stream_id, 200, headers)
        pair.server.send_data(stream_id, b"ok", end_stream=True)
        pair.server.stream_done(stream_id, pair.now)
        pair.pump()
        (response,) = of_type(pair.take()[1], h2e.ResponseReceived)
        assert response.headers == [(b":status", b"200"), *headers]


def test_a_cached_request_block_is_not_reused_after_the_table_changes() -> None:
    # RFC 7541 §2.3.3: dynamic index 62 is the newest entry. The same bytes name another
    # field once a later block has inserted one, so a cached decoding must not be reused.
    pair = Pair()
    # :method GET, :scheme https, :path / (static), :authority as a literal not indexed.
    base = b"\x82\x87\x84" + b"\x01\x0bexample.com"
    first = base + b"\x40\x03x-a\x011"  # inserts x-a: 1 at index 62
    indexed = base + b"\xbe"  # index 62
    heads = [first, indexed, indexed]
    heads.append(base + b"\x40\x03x-b\x012")  # x-b: 2 is now index 62
    heads.append(indexed)  # the same bytes as before: now x-b: 2
    got: list[list[tuple[bytes, bytes]]] = []
    for n, block in enumerate(heads):
        stream_id = 1 + 2 * n
        frame = HeadersFrame(stream_id, data=block, flags=["END_HEADERS", "END_STREAM"])
        pair.server.receive_data(frame.serialize(), pair.now)
        (request,) = of_type(pair.drain_events(), RequestReceived)
        got.append(request.headers)
    assert got == [[(b"x-a", b"1")]] * 3 + [[(b"x-b", b"2")]] * 2


def test_a_response_head_larger_than_a_frame_goes_out_in_continuation_frames() -> None:
    pair = Pair()
    stream_id = pair.request()
    pair.take()
    big = [(b"x-%d" % i, b"v" * 1000) for i in range(40)]  # ~40 KB: HEADERS + 2 CONTINUATION
    pair.server.send_response(stream_id, 200, big, end_stream=True)
    frames = pair.server_frames()
    assert [type(f).__name__ for f in frames] == [
        "HeadersFrame",
        "ContinuationFrame",
        "ContinuationFrame",
    ]
    assert frames[0].flags == {"END_STREAM"}
    assert frames[-1].flags == {"END_HEADERS"}
    decoded = Decoder().decode(b"".join(f.data for f in frames), raw=True)
    assert decoded == [(b":status", b"200"), *big]


def test_a_repeated_request_gets_its_own_header_list_and_its_own_checks() -> None:
    # The parse of a repeated header block is reused; each request still gets a list of
    # its own, and the END_STREAM-dependent check runs every time (RFC 9113 §8.1.1).
    pair = Pair()
    pair.request()
    (first,) = of_type(pair.take()[0], RequestReceived)
    first.headers.append((b"x-added", b"by the app"))
    pair.request()
    (second,) = of_type(pair.take()[0], RequestReceived)
    assert second.headers == [(b"user-agent", b"test")]
    with_length = post_headers([(b"content-length", b"5")])
    pair.request(with_length, end_stream=False)
    assert of_type(pair.take()[0], RequestReceived)
    stream_id = pair.request(with_length, end_stream=True)  # no body can follow: malformed
    server_events, client_events = pair.take()
    assert not of_type(server_events, RequestReceived)
    (reset,) = of_type(client_events, h2e.StreamReset)
    assert (reset.stream_id, reset.error_code) == (stream_id, ErrorCodes.PROTOCOL_ERROR)


def test_requests_after_the_first_take_the_fast_path_and_are_served_alike(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The first request opens the connection through h2 (idle to open); the later ones,
    # whole HEADERS frames on new streams, skip h2's frame reader. Either way the app
    # sees the same request, body end and response. (That both ways agree frame for
    # frame is the differential fuzz target's job.)
    frames_read: list[str] = []
    receive_frame = http2_module._H2Connection._receive_frame

    def counting(self: Any, frame: Frame) -> Any:
        frames_read.append(type(frame).__name__)
        return receive_frame(self, frame)

    monkeypatch.setattr(http2_module._H2Connection, "_receive_frame", counting)
    pair = Pair()
    frames_read.clear()
    post = post_headers([(b"content-length", b"2")])
    for headers, end_stream in [(GET, True), (GET, True), (post, False), (GET, True)]:
        stream_id = pair.request(headers, end_stream=end_stream)
        if not end_stream:
            pair.body(stream_id, b"hi", end_stream=True)
        events = pair.take()[0]
        (request,) = of_type(events, RequestReceived)
        assert (request.stream_id, request.method) == (stream_id, headers[0][1])
        assert of_type(events, BodyEnded) == [BodyEnded(stream_id, [])]
        pair.server.send_response(stream_id, 200, [(b"content-length", b"2")])
        pair.server.send_data(stream_id, b"ok", end_stream=True)
        pair.server.stream_done(stream_id, pair.now)
        pair.pump()
        client_events = pair.take()[1]
        assert of_type(client_events, h2e.StreamEnded)[0].stream_id == stream_id
    # Only the first HEADERS (and the POST's DATA and the client's acks) went through h2.
    assert frames_read.count("_ReceivedHeadersFrame") == 1
    assert frames_read.count("_ReceivedDataFrame") == 1


def _machine_outcome(machine: Any, step: Any) -> tuple[Any, ...]:
    try:
        step(machine)
        error = None
    except Exception as exc:  # the same refusal either way
        error = type(exc)
    return (
        machine.state,
        machine.stream_closed_by,
        machine.headers_sent,
        machine.trailers_sent,
        error,
    )


@pytest.mark.parametrize("state", list(StreamState))
@pytest.mark.parametrize("client", [None, False, True])
@pytest.mark.parametrize("headers_sent", [None, True])
def test_send_side_state_shortcuts_match_h2s_state_machine(
    state: StreamState, client: bool | None, headers_sent: bool | None
) -> None:
    # send_head and send_data_frame set the stream state directly where h2's transition
    # is fixed; from every state, the result (or the refusal) must be h2's own.
    def machine() -> H2StreamStateMachine:
        m = H2StreamStateMachine(1)
        m.state, m.client, m.headers_sent = state, client, headers_sent
        return m

    def shortcut_data(m: H2StreamStateMachine) -> None:
        if not http2_module._CAN_SEND[m.state]:
            m.process_input(StreamInputs.SEND_DATA)

    pairs = [
        (http2_module._send_headers, lambda m: m.process_input(StreamInputs.SEND_HEADERS)),
        (http2_module._send_end_stream, lambda m: m.process_input(StreamInputs.SEND_END_STREAM)),
        (shortcut_data, lambda m: m.process_input(StreamInputs.SEND_DATA)),
    ]
    for fast, slow in pairs:
        assert _machine_outcome(machine(), fast) == _machine_outcome(machine(), slow)


def test_send_head_takes_the_shortcut_only_for_a_first_final_head() -> None:
    pair = Pair()
    stream_id = pair.request()
    pair.take()
    machine = pair.server._conn.streams[stream_id].state_machine
    assert (machine.state, machine.headers_sent) == (StreamState.HALF_CLOSED_REMOTE, None)
    pair.server.send_informational(stream_id, 103, [(b"link", b"</a>")])
    pair.server.send_response(stream_id, 200, [], end_stream=False)
    assert machine.headers_sent and not machine.trailers_sent
    pair.server.send_trailers(stream_id, [(b"x-t", b"1")])
    assert machine.trailers_sent
    assert (machine.state, machine.stream_closed_by) == (
        StreamState.CLOSED,
        StreamClosedBy.SEND_END_STREAM,
    )
    pair.pump()
    _, client_events = pair.take()
    assert [type(e) for e in client_events if not isinstance(e, h2e.WindowUpdated)] == [
        h2e.InformationalResponseReceived,
        h2e.ResponseReceived,
        h2e.TrailersReceived,
        h2e.StreamEnded,
    ]
