"""Fuzzing quicserve/protocol/http3.py (H3Protocol) through an in-memory QUIC pair.

An aioquic client ``QuicConnection`` completes a real handshake with a
``ServerQuicConnection`` wrapped in an ``H3Protocol`` (datagrams pumped in memory, explicit
clock), then sends fuzzed HTTP/3 on raw QUIC streams: a control stream with SETTINGS (or
something else), a QPACK encoder stream with pylsqpack's instructions (maybe mutated),
request streams carrying HEADERS blocks from pylsqpack's encoder, DATA, reserved and
unknown frame types, wrong frames (SETTINGS, GOAWAY on a request stream), truncated or
oversized lengths, early FIN, RESET_STREAM and STOP_SENDING. The app answers every
request and acknowledges its body.

Invariants: no exception escapes the protocol, every request ends once the client closes
the connection, QUIC stream state stays within the stream limit, a tracemalloc peak bound
per connection, and the server's response frames parse and decode with a QPACK decoder
fed from the server's encoder stream.
"""

from __future__ import annotations

import ssl
import tracemalloc
from pathlib import Path
from typing import Any

import pylsqpack
import pytest
from aioquic.buffer import Buffer, BufferReadError, encode_uint_var  # type: ignore[attr-defined]
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import StreamDataReceived
from hypothesis import given
from hypothesis import strategies as st

from quicserve.certs import DevCertificate, make_test_certificates
from quicserve.config import Config
from quicserve.events import (
    BodyEnded,
    BodyReceived,
    ConnectionClosed,
    RequestReceived,
    StreamReset,
)
from quicserve.protocol.http3 import H3Protocol
from quicserve.quic.compat import ServerQuicConnection
from quicserve.tls import quic_configuration

from .support import fuzz_settings, mostly, mutated, stat

CLIENT = ("192.0.2.7", 50000)
SERVER = ("203.0.113.1", 443)
MEMORY_BOUND = 16 * 1024 * 1024

# HTTP/3 frame and stream types (RFC 9114 §7.2, §6.2; RFC 9204 §4.2).
DATA, HEADERS, SETTINGS, GOAWAY, MAX_PUSH_ID, CANCEL_PUSH, PUSH_PROMISE = 0, 1, 4, 7, 0xD, 3, 5
CONTROL, PUSH, QPACK_ENCODER, QPACK_DECODER = 0, 1, 2, 3

_CERTS: DevCertificate | None = None


def certs(tmp: Path) -> DevCertificate:
    global _CERTS
    if _CERTS is None:
        _CERTS = make_test_certificates(tmp)
    return _CERTS


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> DevCertificate:
    return certs(tmp_path_factory.mktemp("h3fuzz"))


def frame(frame_type: int, payload: bytes) -> bytes:
    return encode_uint_var(frame_type) + encode_uint_var(len(payload)) + payload


class Pair:
    """A client QuicConnection and the server H3Protocol, pumped in memory."""

    def __init__(self, tls: DevCertificate, config: Config) -> None:
        self.now = 1.0
        self.config = config
        client_conf = QuicConfiguration(is_client=True, alpn_protocols=["h3"])
        client_conf.verify_mode = ssl.CERT_NONE
        client_conf.server_name = "localhost"
        self.client = QuicConnection(configuration=client_conf)
        self.client.connect(SERVER, now=self.now)
        server_conf = quic_configuration(config)
        server_conf.load_cert_chain(str(tls.certfile), str(tls.keyfile))
        initial = self.client.datagrams_to_send(self.now)
        counter = iter(range(1, 1 << 30))

        def cid_factory() -> tuple[bytes, bytes]:
            n = next(counter)
            return n.to_bytes(8, "big"), n.to_bytes(16, "big")

        dcid = initial[0][0][6 : 6 + initial[0][0][5]]
        quic = ServerQuicConnection(
            configuration=server_conf,
            original_destination_connection_id=dcid,
            cid_factory=cid_factory,
            stream_window=config.quic_stream_window_size,
            max_streams=config.quic_max_streams,
            allow_early_data=False,
        )
        self.proto = H3Protocol(quic, config)
        self.started: dict[int, RequestReceived] = {}
        self.ended: set[int] = set()
        self.reset: set[int] = set()
        self.closed = False
        #: Bytes the server sent on each stream, as the client received them.
        self.received: dict[int, bytearray] = {}
        self.client_closed = False
        for data, _ in initial:
            self.proto.receive_datagram(data, CLIENT, self.now)
        self.pump()
        assert self.proto.handshake_complete

    def app(self) -> None:
        proto = self.proto
        while (event := proto.next_event()) is not None:
            assert not self.closed, f"{event!r} after ConnectionClosed"
            if isinstance(event, RequestReceived):
                sid = event.stream_id
                assert sid not in self.started, f"stream {sid} started twice"
                self.started[sid] = event
            elif isinstance(event, BodyReceived):
                assert event.stream_id in self.started and event.stream_id not in self.ended
                proto.ack_body(event.stream_id, len(event.data))
            elif isinstance(event, BodyEnded | StreamReset):
                sid = event.stream_id
                assert sid in self.started, f"{event!r} for a stream never started"
                # A reset may follow the end of the body (the peer abandons the response),
                # nothing else may follow a reset, and the body ends once.
                assert sid not in self.reset, f"{event!r} after StreamReset"
                if isinstance(event, BodyEnded):
                    assert sid not in self.ended, f"body ended twice: {event!r}"
                else:
                    self.reset.add(sid)
                self.ended.add(sid)
                if isinstance(event, BodyEnded):
                    # (a reset after it finds the stream done: stream_done is idempotent)
                    body = b"ok %d" % sid
                    proto.send_response(sid, 200, [(b"content-length", b"%d" % len(body))])
                    proto.send_data(sid, body, end_stream=True)
                proto.stream_done(sid, self.now)
            elif isinstance(event, ConnectionClosed):
                self.closed = True
                stat(f"closed: {event.error_code:#x} {event.reason[:30]}")

    def pump(self, rounds: int = 40) -> None:
        for _ in range(rounds):
            self.now += 0.005
            moved = False
            for data, _ in self.client.datagrams_to_send(self.now):
                self.proto.receive_datagram(data, CLIENT, self.now)
                moved = True
            self.app()
            for data, _ in self.proto.datagrams_to_send(self.now):
                self.client.receive_datagram(data, SERVER, self.now)
                moved = True
            while (event := self.client.next_event()) is not None:
                if isinstance(event, StreamDataReceived):
                    self.received.setdefault(event.stream_id, bytearray()).extend(event.data)
            for conn in (self.client, self.proto):
                timer = conn.get_timer()
                if timer is not None and timer <= self.now:
                    conn.handle_timer(self.now)
                    moved = True
            self.app()
            if not moved:
                return


# -- inputs -----------------------------------------------------------------------------

_REQUEST = [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/"), (b":authority", b"a")]
field_lists = st.builds(
    lambda pseudo, extra: [*pseudo, *extra],
    mostly(
        st.sampled_from([_REQUEST, [(b":method", b"POST"), *_REQUEST[1:]]]),
        st.permutations(_REQUEST).flatmap(lambda p: st.integers(0, 4).map(lambda n: p[:n])),
        odds=5,
    ),
    st.lists(
        st.tuples(
            mostly(
                st.sampled_from([b"x-a", b"content-length", b"te", b"cookie"]),
                st.sampled_from([b":path", b"Upper", b"connection", b"x y", b":bad"]),
                odds=4,
            ),
            mostly(st.sampled_from([b"1", b"v", b"trailers"]), st.binary(max_size=8), odds=4),
        ),
        max_size=4,
    ),
)
frame_types = mostly(
    st.sampled_from([DATA, DATA, HEADERS, 0x21, 0x2F]),  # 0x21 + 0x1F * N: reserved
    st.sampled_from([SETTINGS, GOAWAY, MAX_PUSH_ID, CANCEL_PUSH, PUSH_PROMISE, 0x2, 0x6]),
    odds=12,
)


@st.composite
def request_stream(draw: st.DrawFn, encoder: pylsqpack.Encoder, stream_id: int) -> dict[str, Any]:
    """Frames for one request stream: HEADERS, DATA, odd frames, maybe trailers, FIN."""
    encoder_data, block = encoder.encode(stream_id, draw(field_lists))
    frames = [frame(HEADERS, block)]
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(frame_types)
        payload = draw(st.binary(max_size=40))
        if kind == HEADERS:
            enc, payload = encoder.encode(stream_id, [(b"x-trailer", b"1")])
            encoder_data += enc
        frames.append(frame(kind, payload))
    data = b"".join(frames)
    edit = draw(st.integers(0, 15))
    if edit == 0:
        data = draw(mutated(data, max_edits=3))
    elif edit == 1:
        data = data[: draw(st.integers(0, len(data)))]
    elif edit == 2:  # a frame that claims more than will ever come
        data += encode_uint_var(DATA) + encode_uint_var(draw(st.sampled_from([100, 2**20, 2**40])))
    return {
        "data": data,
        "fin": draw(mostly(st.just(True), st.just(False))),
        "reset": draw(mostly(st.just(None), st.integers(0, 0x110))),
        "stop": draw(mostly(st.just(None), st.integers(0, 0x110))),
        "encoder": encoder_data,
    }


@st.composite
def scripts(draw: st.DrawFn) -> dict[str, Any]:
    encoder = pylsqpack.Encoder()
    use_table = draw(st.booleans())
    settings = b""
    table_setup = b""
    if use_table:
        # The server advertises qpack_max_table_capacity 4096 (Config default); the
        # encoder's first instruction sets the table capacity.
        table_setup = encoder.apply_settings(4096, 16)
    control = encode_uint_var(CONTROL) + frame(
        SETTINGS,
        draw(
            mostly(
                st.just(settings),
                st.sampled_from(
                    [
                        encode_uint_var(0x06) + encode_uint_var(1000),
                        encode_uint_var(0x02) + encode_uint_var(1),  # HTTP/2 setting: error
                        encode_uint_var(0x21) + encode_uint_var(7),  # reserved: ignored
                        encode_uint_var(0x08) + encode_uint_var(1),
                        b"\x01",
                    ]
                ),
            )
        ),
    )
    control = draw(mostly(st.just(control), st.just(control + frame(draw(frame_types), b"x"))))
    requests = [draw(request_stream(encoder, 4 * i)) for i in range(draw(st.integers(0, 4)))]
    encoder_stream = table_setup + b"".join(r["encoder"] for r in requests)
    if encoder_stream and draw(st.integers(0, 6)) == 0:
        encoder_stream = draw(mutated(encoder_stream))
    extra_uni = draw(
        mostly(
            st.just([]),
            st.lists(
                st.tuples(
                    st.sampled_from([PUSH, QPACK_DECODER, CONTROL, 0x21, 0x54]),
                    st.binary(max_size=20),
                ),
                max_size=2,
            ),
        )
    )
    return {
        "control": draw(mostly(st.just(control), st.just(b""), odds=12)),
        "encoder_stream": (encode_uint_var(QPACK_ENCODER) + encoder_stream) if use_table else b"",
        "requests": requests,
        "extra_uni": extra_uni,
    }


def check_output(pair: Pair) -> None:
    """Server stream data parses as HTTP/3 frames, header blocks decode (QPACK)."""
    decoder = pylsqpack.Decoder(4096, 16)
    for stream_id in sorted(pair.received, key=lambda s: (s & 2 == 0, s)):
        buf = Buffer(data=bytes(pair.received[stream_id]))
        if stream_id & 2:  # a server unidirectional stream: its type, then its content
            kind = buf.pull_uint_var()
            if kind == QPACK_ENCODER:
                decoder.feed_encoder(buf.pull_bytes(buf.capacity - buf.tell()))
                continue
            if kind != CONTROL:
                continue
        while not buf.eof():
            try:
                frame_type = buf.pull_uint_var()
                payload = buf.pull_bytes(buf.pull_uint_var())
            except BufferReadError:
                # A response cut short by a reset is fine; the frame header was sane.
                break
            if frame_type == HEADERS:
                decoder.feed_header(stream_id, payload)


@fuzz_settings(60)
@given(script=scripts(), pump_between=st.booleans(), close=st.sampled_from(["client", "timeout"]))
def test_http3_frames(
    tls: DevCertificate, script: dict[str, Any], pump_between: bool, close: str
) -> None:
    config = Config(quic_max_streams=3)
    pair = Pair(tls, config)
    client = pair.client
    tracemalloc.start()
    try:
        if script["control"]:
            client.send_stream_data(client.get_next_available_stream_id(True), script["control"])
        if script["encoder_stream"]:
            client.send_stream_data(
                client.get_next_available_stream_id(True), script["encoder_stream"]
            )
        for kind, data in script["extra_uni"]:
            client.send_stream_data(
                client.get_next_available_stream_id(True), encode_uint_var(kind) + data
            )
        for request in script["requests"]:
            sid = client.get_next_available_stream_id()
            client.send_stream_data(sid, request["data"], end_stream=request["fin"])
            if pump_between:
                pair.pump()
            try:
                if request["reset"] is not None:
                    client.reset_stream(sid, request["reset"])
                if request["stop"] is not None:
                    client.stop_stream(sid, request["stop"])
            except ValueError:
                pass  # the client already forgot a finished stream
        pair.pump()
        assert len(pair.proto.quic._streams) <= 2 * config.quic_max_streams + 8
        if close == "client":
            client.close(error_code=0x100)  # H3_NO_ERROR
            pair.pump()
        # Either way the server's idle timer must end the connection.
        pair.now += config.quic_idle_timeout + 60
        pair.pump()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < MEMORY_BOUND, f"peak {peak} bytes"
    assert pair.closed, "the connection never closed"
    for sid in pair.started:
        assert sid in pair.ended, f"stream {sid} never ended"
    stat(f"requests: {len(pair.started)}")
    check_output(pair)
