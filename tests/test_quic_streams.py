"""QUIC stream credit and receive buffers, in memory with an explicit clock.

A real aioquic client connection and :class:`H3Protocol` on a real
:class:`ServerQuicConnection` exchange datagrams through :class:`Pair`; the test plays the
dispatcher (an "app call" runs from ``RequestReceived`` until the test calls
``stream_done``). The attacks are the ones of issue 9: HTTP/3 rapid reset (MAX_STREAMS
re-issued while app calls still run) and sparse stream offsets (the gap up to one far
byte allocated, and MAX_DATA re-granted by highest offset).
"""

from __future__ import annotations

import os
import random
import ssl
import tracemalloc
from dataclasses import replace

import pytest
from aioquic.buffer import Buffer  # type: ignore[attr-defined]
from aioquic.h3.connection import ErrorCode, H3Connection
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet import QuicErrorCode, QuicStreamFrame, pull_quic_header
from aioquic.quic.stream import FinalSizeError, QuicStreamReceiver

from quicserve.certs import DevCertificate
from quicserve.config import Config
from quicserve.events import BodyReceived, RequestReceived, StreamReset
from quicserve.protocol.http3 import H3Protocol
from quicserve.quic.compat import ServerQuicConnection
from quicserve.tls import quic_configuration

CLIENT = ("192.0.2.10", 50000)
SERVER = ("203.0.113.1", 443)
MiB = 1024 * 1024


class Pair:
    """An aioquic HTTP/3 client and quicserve's HTTP/3 server, wired in memory."""

    def __init__(self, tls: DevCertificate, config: Config) -> None:
        self.now = 0.0
        self.config = config
        client_config = QuicConfiguration(
            is_client=True, alpn_protocols=["h3"], server_name="localhost"
        )
        client_config.verify_mode = ssl.CERT_NONE
        self.client = QuicConnection(configuration=client_config)
        self.client.connect(SERVER, now=self.now)
        self.client_h3 = H3Connection(self.client)
        initial = [data for data, _ in self.client.datagrams_to_send(self.now)]
        header = pull_quic_header(Buffer(data=initial[0]), host_cid_length=8)
        server_config = quic_configuration(config)
        server_config.load_cert_chain(str(tls.certfile), str(tls.keyfile))
        self.quic = ServerQuicConnection(
            configuration=server_config,
            original_destination_connection_id=header.destination_cid,
            cid_factory=lambda: (os.urandom(8), os.urandom(16)),
            stream_window=config.quic_stream_window_size,
            max_streams=config.quic_max_streams,
            allow_early_data=False,
            **_fragments(config),
        )
        self.server = H3Protocol(self.quic, config)
        self.requests: list[int] = []  # request streams whose "app call" runs
        self.bodies: dict[int, bytearray] = {}
        self.resets: list[int] = []
        self.close_code: int | None = None
        for data in initial:
            self.server.receive_datagram(data, CLIENT, self.now)
        self.pump()
        assert self.server.handshake_complete

    def pump(self, rounds: int = 200) -> None:
        """Exchange datagrams (and fire timers) until both sides are quiet."""
        for _ in range(rounds):
            self.now += 0.005
            moved = False
            for conn in (self.client, self.quic):
                timer = conn.get_timer()
                if timer is not None and timer <= self.now:
                    if conn is self.quic:
                        self.server.handle_timer(self.now)
                    else:
                        conn.handle_timer(self.now)
            for data, _ in self.client.datagrams_to_send(self.now):
                self.server.receive_datagram(data, CLIENT, self.now)
                moved = True
            self._server_events()
            for data, _ in self.server.datagrams_to_send(self.now):
                self.client.receive_datagram(data, SERVER, self.now)
                moved = True
            self._client_events()
            if not moved:
                return

    def wait_close(self) -> None:
        """Let time pass (a closed client drains, RFC 9000 §10.2.2) until the client
        reports how the connection closed."""
        for _ in range(100):
            if self.close_code is not None:
                return
            self.now += 0.05
            self.pump()

    def _server_events(self) -> None:
        while (event := self.server.next_event()) is not None:
            if isinstance(event, RequestReceived):
                self.requests.append(event.stream_id)
                self.bodies[event.stream_id] = bytearray()
            elif isinstance(event, BodyReceived):
                self.bodies[event.stream_id] += event.data
            elif isinstance(event, StreamReset):
                self.resets.append(event.stream_id)

    def _client_events(self) -> None:
        while (event := self.client.next_event()) is not None:
            if isinstance(event, events.ConnectionTerminated):
                self.close_code = event.error_code
            self.client_h3.handle_event(event)

    def request(self, path: str = "/", end_stream: bool = True) -> int:
        stream_id = self.client.get_next_available_stream_id()
        self.client_h3.send_headers(
            stream_id,
            [
                (b":method", b"POST" if not end_stream else b"GET"),
                (b":scheme", b"https"),
                (b":authority", b"localhost"),
                (b":path", path.encode()),
            ],
            end_stream=end_stream,
        )
        return stream_id

    def raw(self, stream_id: int, offset: int, data: bytes, fin: bool = False) -> None:
        """A STREAM frame at ``offset`` and nothing before it (aioquic's client sends
        what its sender buffer holds from ``_buffer_start``)."""
        sender = self.client._get_or_create_stream_for_send(stream_id).sender
        sender._buffer_start = sender._buffer_stop = offset
        sender._buffer = bytearray()
        sender._buffer_fin = None
        sender.write(data, end_stream=fin)

    def finish(self, stream_id: int) -> None:
        """The stream's app call is over."""
        self.requests.remove(stream_id)
        self.server.stream_done(stream_id, self.now)

    @property
    def max_streams_seen(self) -> int:
        """MAX_STREAMS (bidirectional) as the client knows it."""
        return int(self.client._remote_max_streams_bidi)

    @property
    def max_data_seen(self) -> int:
        """MAX_DATA as the client knows it."""
        return int(self.client._remote_max_data)


def _fragments(config: Config) -> dict[str, int]:
    # The field is new with this fix; on older code the pair is built without it.
    value = getattr(config, "quic_max_fragments", None)
    return {} if value is None else {"max_fragments": value}


def make_config(**changes: int) -> Config:
    return replace(Config(), **changes)  # type: ignore[arg-type]


# -- rapid reset ---------------------------------------------------------------------------


def test_reset_streams_count_until_their_app_call_ends(tls_files: DevCertificate) -> None:
    pair = Pair(tls_files, make_config(quic_max_streams=4))
    assert pair.max_streams_seen == 4
    # HEADERS, then RESET_STREAM + STOP_SENDING at once: the classic rapid reset.
    first = [pair.request(end_stream=False) for _ in range(4)]
    pair.pump()
    for stream_id in first:
        pair.client.reset_stream(stream_id, ErrorCode.H3_REQUEST_CANCELLED)
        pair.client.stop_stream(stream_id, ErrorCode.H3_REQUEST_CANCELLED)
    pair.pump()
    assert sorted(set(pair.resets)) == first
    assert len(pair.requests) == 4
    # QUIC is done with the four streams, but their app calls run: no new credit.
    assert pair.max_streams_seen == 4
    waiting = pair.request()  # the client holds it back (STREAMS_BLOCKED)
    pair.pump()
    assert waiting not in pair.requests
    # Two app calls end: two streams may open, and the one waiting does.
    pair.finish(first[0])
    pair.finish(first[1])
    pair.pump()
    assert pair.max_streams_seen == 6
    assert waiting in pair.requests
    assert pair.close_code is None


def test_app_call_ending_after_quic_discarded_the_stream(tls_files: DevCertificate) -> None:
    # On main, stream_done's STOP_SENDING raised ValueError for a stream aioquic had
    # discarded, and the exception took the whole server process down.
    pair = Pair(tls_files, Config())
    stream_id = pair.request(end_stream=False)
    pair.pump()
    pair.client.reset_stream(stream_id, ErrorCode.H3_REQUEST_CANCELLED)
    pair.client.stop_stream(stream_id, ErrorCode.H3_REQUEST_CANCELLED)
    pair.pump()
    assert stream_id not in pair.quic._streams  # QUIC is done with it
    pair.server.reset_stream(stream_id)  # the app failed late, say
    pair.finish(stream_id)
    pair.pump()
    assert pair.close_code is None


def test_peer_opening_beyond_advertised_max_streams_is_closed(tls_files: DevCertificate) -> None:
    pair = Pair(tls_files, make_config(quic_max_streams=4))
    opened = [pair.request(end_stream=False) for _ in range(4)]
    pair.pump()
    for stream_id in opened:
        pair.client.reset_stream(stream_id, ErrorCode.H3_REQUEST_CANCELLED)
        pair.client.stop_stream(stream_id, ErrorCode.H3_REQUEST_CANCELLED)
    pair.pump()
    assert pair.max_streams_seen == 4 and len(pair.requests) == 4
    # A client that ignores the limit we sent (aioquic's internal one is higher by now).
    pair.client._remote_max_streams_bidi = 100
    pair.request()
    pair.pump()
    pair.wait_close()
    assert pair.close_code == QuicErrorCode.STREAM_LIMIT_ERROR
    assert len(pair.requests) == 4


def test_client_that_keeps_cancelling_gets_excessive_load(tls_files: DevCertificate) -> None:
    pair = Pair(tls_files, make_config(quic_max_streams=5, quic_max_cancelled_requests=20))
    for _ in range(10):
        batch = [pair.request(end_stream=False) for _ in range(5)]
        pair.pump()
        for stream_id in batch:
            pair.client.reset_stream(stream_id, ErrorCode.H3_REQUEST_CANCELLED)
            pair.client.stop_stream(stream_id, ErrorCode.H3_REQUEST_CANCELLED)
        pair.pump()
        for stream_id in list(pair.requests):
            pair.finish(stream_id)
        pair.pump()
        if pair.quic._close_event is not None:
            break
    pair.wait_close()
    assert pair.close_code == ErrorCode.H3_EXCESSIVE_LOAD
    assert len(set(pair.resets)) <= 25


def test_cancelling_now_and_then_is_fine(tls_files: DevCertificate) -> None:
    # More cancels than the limit, but fewer than the requests that complete.
    pair = Pair(tls_files, make_config(quic_max_streams=10, quic_max_cancelled_requests=3))
    for _ in range(6):
        kept = [pair.request(), pair.request()]
        cancelled = pair.request(end_stream=False)
        pair.pump()
        pair.client.reset_stream(cancelled, ErrorCode.H3_REQUEST_CANCELLED)
        pair.client.stop_stream(cancelled, ErrorCode.H3_REQUEST_CANCELLED)
        pair.pump()
        for stream_id in kept:
            pair.server.send_response(stream_id, 200, [], end_stream=True)
            pair.finish(stream_id)
        pair.finish(cancelled)
        pair.pump()
    assert pair.close_code is None and pair.quic._close_event is None
    assert len(set(pair.resets)) == 6


# -- sparse offsets and connection credit -------------------------------------------------


def test_sparse_offsets_hold_only_what_arrived(tls_files: DevCertificate) -> None:
    config = Config()
    pair = Pair(tls_files, config)
    window = config.quic_stream_window_size
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(40):
            stream_id = pair.request(end_stream=False)
            pair.pump()
            # One byte at the far end of the stream's window, nothing before it.
            pair.raw(stream_id, window - 16, b"x")
            pair.pump()
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    # The gaps are not memory (aioquic zero-filled each: 40 MiB), and MAX_DATA was never
    # re-granted for bytes that did not arrive (aioquic doubled it by highest offset):
    # it grew by the HEADERS frames only.
    assert peak < 4 * MiB, peak
    assert pair.max_data_seen < config.quic_max_data + 64 * 1024
    assert pair.close_code is None


def test_max_data_follows_what_the_app_consumed(tls_files: DevCertificate) -> None:
    config = Config()
    pair = Pair(tls_files, config)
    streams = [pair.request("/upload", end_stream=False) for _ in range(3)]
    pair.pump()
    body = os.urandom(MiB - 64)
    for stream_id in streams:
        pair.client_h3.send_data(stream_id, body, end_stream=False)
    pair.pump()
    # 3 MiB arrived and nobody read it: no new connection credit beyond the HEADERS and
    # DATA frame headers (aioquic doubled it).
    assert all(len(pair.bodies[s]) == len(body) for s in streams)
    assert pair.max_data_seen < config.quic_max_data + 1024
    # The app consumes one body: that much credit comes back, no more.
    pair.server.ack_body(streams[0], len(body))
    pair.pump()
    assert config.quic_max_data + len(body) <= pair.max_data_seen
    assert pair.max_data_seen <= config.quic_max_data + MiB + 1024
    # Stream credit too: the consumed stream may send a window more, the others not.
    assert pair.quic._streams[streams[0]].max_stream_data_local >= len(body) + MiB
    assert pair.quic._streams[streams[1]].max_stream_data_local < MiB + 1024


def test_finished_request_gives_back_what_it_held(tls_files: DevCertificate) -> None:
    config = Config()
    pair = Pair(tls_files, config)
    stream_id = pair.request("/upload", end_stream=False)
    pair.pump()
    pair.client_h3.send_data(stream_id, b"y" * 1000, end_stream=False)
    pair.raw(stream_id, MiB - 100, b"z")  # a far byte: its gap counts as used
    pair.pump()
    assert pair.quic._local_max_data.value < config.quic_max_data + 1024
    # The app never read the body; its call ends: everything the stream held returns.
    pair.finish(stream_id)
    pair.pump()
    credit = pair.quic._local_max_data.value - config.quic_max_data
    assert credit >= MiB - 99
    # and the connection still serves full-size uploads
    other = pair.request("/upload", end_stream=False)
    pair.pump()
    pair.client_h3.send_data(other, b"w" * (MiB - 64), end_stream=True)
    pair.pump()
    assert len(pair.bodies[other]) == MiB - 64


def test_too_fragmented_stream_data_closes_the_connection(tls_files: DevCertificate) -> None:
    pair = Pair(tls_files, make_config(quic_max_fragments=64))
    stream_id = pair.request(end_stream=False)
    pair.pump()
    for offset in range(1000, 1000 + 2 * 100, 2):  # 100 one-byte islands
        pair.raw(stream_id, offset, b"x")
        pair.pump()
        if pair.quic._close_event is not None:
            break
    pair.wait_close()
    assert pair.close_code == ErrorCode.H3_EXCESSIVE_LOAD


def test_out_of_order_body_arrives_intact(tls_files: DevCertificate) -> None:
    pair = Pair(tls_files, Config())
    stream_id = pair.request("/upload", end_stream=False)
    pair.pump()
    # DATA frame header, then the payload in pieces sent last-first, with overlaps.
    payload = os.urandom(50_000)
    frame = b"\x00" + _varint(len(payload)) + payload
    base = pair.client._streams[stream_id].sender._buffer_stop
    pieces = [(i, frame[i : i + 3000]) for i in range(0, len(frame), 2500)]
    for i, piece in reversed(pieces):
        pair.raw(stream_id, base + i, piece, fin=i + len(piece) == len(frame))
        pair.pump()
    assert bytes(pair.bodies[stream_id]) == payload


def _varint(value: int) -> bytes:
    buf = Buffer(capacity=8)
    buf.push_uint_var(value)
    return bytes(buf.data)


# -- the receiver against aioquic's ---------------------------------------------------------


def _feed(receiver: QuicStreamReceiver, frames: list[QuicStreamFrame]) -> tuple[bytes, bool]:
    out = bytearray()
    ended = False
    for frame in frames:
        event = receiver.handle_frame(
            QuicStreamFrame(data=frame.data, offset=frame.offset, fin=frame.fin)
        )
        if event is not None:
            out += event.data
            ended = ended or event.end_stream
    return bytes(out), ended


@pytest.mark.parametrize("seed", range(40))
def test_chunked_receiver_delivers_what_aioquic_delivers(seed: int) -> None:
    from quicserve.quic.compat import ChunkedStreamReceiver, FragmentBudget

    rng = random.Random(seed)
    data = rng.randbytes(rng.randrange(1, 20_000))
    frames = []
    for _ in range(rng.randrange(1, 60)):
        start = rng.randrange(0, len(data))
        stop = min(len(data), start + rng.randrange(1, 4000))
        frames.append(QuicStreamFrame(data=data[start:stop], offset=start, fin=stop == len(data)))
    # every byte at least once, in a random order, with duplicates
    frames += [
        QuicStreamFrame(data=data[i : i + 1500], offset=i, fin=i + 1500 >= len(data))
        for i in range(0, len(data), 1500)
    ]
    # and empty frames anywhere (a FIN-less empty frame beyond the delivered offset)
    frames += [QuicStreamFrame(data=b"", offset=rng.randrange(0, len(data))) for _ in range(5)]
    rng.shuffle(frames)
    budget = FragmentBudget(10_000)
    ours = ChunkedStreamReceiver(0, budget)
    theirs = QuicStreamReceiver(0, readable=True)
    assert _feed(ours, frames) == _feed(theirs, frames) == (data, True)
    assert ours.is_finished and ours.buffered == 0 and budget.count == 0


def test_chunked_receiver_final_size_rules_are_aioquic_s() -> None:
    from quicserve.quic.compat import ChunkedStreamReceiver, FragmentBudget

    def theirs() -> QuicStreamReceiver:
        return QuicStreamReceiver(0, readable=True)

    def ours() -> QuicStreamReceiver:
        return ChunkedStreamReceiver(0, FragmentBudget(100))

    for make in (theirs, ours):
        receiver = make()
        receiver.handle_frame(QuicStreamFrame(data=b"abc", offset=10, fin=True))
        with pytest.raises(FinalSizeError):
            receiver.handle_frame(QuicStreamFrame(data=b"abcd", offset=10))
        with pytest.raises(FinalSizeError):
            receiver.handle_frame(QuicStreamFrame(data=b"a", offset=0, fin=True))
        with pytest.raises(FinalSizeError):
            receiver.handle_reset(final_size=12)
        receiver = make()
        receiver.handle_frame(QuicStreamFrame(data=b"abc", offset=10))
        with pytest.raises(FinalSizeError):
            receiver.handle_frame(QuicStreamFrame(data=b"a", offset=0, fin=True))
        assert receiver.handle_reset(final_size=13) is not None
        assert receiver.handle_frame(QuicStreamFrame(data=b"abc", offset=0)) is None


def test_chunked_receiver_keeps_only_bytes_that_arrived() -> None:
    from quicserve.quic.compat import ChunkedStreamReceiver, FragmentBudget

    budget = FragmentBudget(100)
    receiver = ChunkedStreamReceiver(0, budget)
    assert receiver.handle_frame(QuicStreamFrame(data=b"x", offset=MiB - 16)) is None
    assert receiver.buffered == 1 and budget.count == 1
    # a run that continues a chunk extends it instead of adding one
    receiver.handle_frame(QuicStreamFrame(data=b"yz", offset=MiB - 15))
    assert receiver.buffered == 3 and receiver.fragments == 1
    receiver.handle_reset(final_size=MiB)
    assert receiver.buffered == 0 and budget.count == 0
    assert receiver.settled == MiB
