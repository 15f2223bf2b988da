"""HTTP/3 field-section limits in memory: H3Protocol and an aioquic client, no sockets.

The client's bytes are written by hand (tests/adversarial/h3_raw_client.py helpers), so
field sections and encoder instructions are exactly what each test says.
"""

from __future__ import annotations

import os
import random
from typing import Any

import aioquic.h3.connection as aioquic_h3
import pytest
from aioquic.buffer import Buffer
from aioquic.h3.connection import (
    H3_ALPN,
    ErrorCode,
    FrameType,
    MessageError,
    Setting,
    encode_frame,
    parse_settings,
)
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import ConnectionTerminated, StreamDataReceived, StreamReset

from quicserve.certs import DevCertificate
from quicserve.config import Config
from quicserve.events import BodyEnded, RequestReceived
from quicserve.events import StreamReset as AppStreamReset
from quicserve.protocol.http3 import H3Protocol
from quicserve.quic import compat
from quicserve.quic.compat import ServerQuicConnection
from quicserve.tls import quic_configuration

from .adversarial.h3_raw_client import (
    qpack_indexed_dynamic,
    qpack_insert_literal,
    qpack_literal,
    qpack_prefix,
    qpack_set_capacity,
    request_lines,
)

CLIENT_ADDR = ("10.0.0.2", 4433)
SERVER_ADDR = ("10.0.0.1", 443)


class Pair:
    """An H3Protocol server and an aioquic client QuicConnection, pumped in memory."""

    def __init__(self, config: Config, tls: DevCertificate) -> None:
        self.now = 1.0
        client_config = QuicConfiguration(
            is_client=True, alpn_protocols=H3_ALPN, server_name="localhost"
        )
        client_config.load_verify_locations(str(tls.ca_certfile))
        self.client = QuicConnection(configuration=client_config)
        self.client.connect(SERVER_ADDR, now=self.now)
        server_config = quic_configuration(config)
        server_config.load_cert_chain(tls.certfile, tls.keyfile)
        quic = ServerQuicConnection(
            configuration=server_config,
            original_destination_connection_id=self.client._peer_cid.cid,
            cid_factory=lambda: (os.urandom(8), os.urandom(16)),
            stream_window=config.quic_stream_window_size,
            max_streams=config.quic_max_streams,
            allow_early_data=False,
        )
        self.server = H3Protocol(quic, config)
        self.app_events: list[Any] = []
        self.client_events: list[Any] = []
        self.pump()
        assert self.server.handshake_complete
        control = self.client.get_next_available_stream_id(is_unidirectional=True)
        self.client.send_stream_data(control, b"\x00" + encode_frame(FrameType.SETTINGS, b""))
        self.encoder = self.client.get_next_available_stream_id(is_unidirectional=True)
        self.client.send_stream_data(self.encoder, b"\x02")
        self.pump()

    def pump(self, rounds: int = 100) -> None:
        # aioquic paces what it sends, so the clock moves while the two sides talk.
        for _ in range(rounds):
            self.now += 0.005
            for data, _ in self.client.datagrams_to_send(self.now):
                self.server.receive_datagram(data, CLIENT_ADDR, self.now)
            for data, _ in self.server.datagrams_to_send(self.now):
                self.client.receive_datagram(data, SERVER_ADDR, self.now)
        while (event := self.server.next_event()) is not None:
            self.app_events.append(event)
        while (event := self.client.next_event()) is not None:
            self.client_events.append(event)

    def close_code(self) -> int | None:
        """The error code the client saw the connection close with (after draining)."""
        for _ in range(50):
            self.now += 0.1
            for side in (self.client, self.server):
                timer = side.get_timer()
                if timer is not None and timer <= self.now:
                    side.handle_timer(self.now)
            self.pump(rounds=3)
        closed = [e for e in self.client_events if isinstance(e, ConnectionTerminated)]
        return closed[0].error_code if closed else None

    def request(self, data: bytes, end: bool = True) -> int:
        stream_id = self.client.get_next_available_stream_id()
        self.client.send_stream_data(stream_id, data, end_stream=end)
        self.pump()
        return stream_id

    def answered(self) -> dict[int, bytes]:
        """Bytes the client received on each request stream."""
        out: dict[int, bytes] = {}
        for event in self.client_events:
            if isinstance(event, StreamDataReceived) and event.stream_id % 4 == 0:
                out[event.stream_id] = out.get(event.stream_id, b"") + event.data
        return out


@pytest.fixture
def pair(tls_files: DevCertificate) -> Pair:
    return Pair(Config(max_header_bytes=4000), tls_files)


def headers(block: bytes) -> bytes:
    return encode_frame(FrameType.HEADERS, block)


def sized(size: int) -> bytes:
    """A request section (static-only request lines plus a literal pad), ``size`` octets."""
    base = (7 + 3 + 32) + (7 + 5 + 32) + (10 + 9 + 32) + (5 + 1 + 32)
    pad = b"p" * (size - base - 5 - 32)
    return qpack_prefix(0, 128) + request_lines("/") + qpack_literal(b"x-pad", pad)


def test_settings_carry_the_limits(tls_files: DevCertificate) -> None:
    config = Config(max_header_bytes=5000, qpack_max_table_capacity=1024, qpack_blocked_streams=3)
    pair = Pair(config, tls_files)
    control = next(
        e.data for e in pair.client_events if isinstance(e, StreamDataReceived) and e.stream_id == 3
    )
    buf = Buffer(data=control)
    assert buf.pull_uint_var() == 0  # control stream
    assert buf.pull_uint_var() == FrameType.SETTINGS
    settings = parse_settings(buf.pull_bytes(buf.pull_uint_var()))
    # RFC 9114 §7.2.4.1; and our QPACK limits, not aioquic's defaults.
    assert settings[Setting.MAX_FIELD_SECTION_SIZE] == 5000
    assert settings[Setting.QPACK_MAX_TABLE_CAPACITY] == 1024
    assert settings[Setting.QPACK_BLOCKED_STREAMS] == 3


def test_past_the_limit_is_431_and_forgotten(pair: Pair) -> None:
    served = pair.request(headers(sized(4000)))
    refused = [pair.request(headers(sized(4001)), end=i % 2 == 0) for i in range(6)]
    assert [e.stream_id for e in pair.app_events if isinstance(e, RequestReceived)] == [served]
    answers = pair.answered()
    for stream_id in refused:
        # HEADERS frame, then the static-only section for ":status: 431".
        assert answers[stream_id].startswith(b"\x01"), answers.get(stream_id)
    h3 = pair.server._h3
    # Streams the peer ended (FIN, or RESET_STREAM after our STOP_SENDING) leave no state.
    for stream_id in refused[1::2]:
        pair.client.reset_stream(stream_id, ErrorCode.H3_REQUEST_CANCELLED)
    pair.pump()
    assert all(stream_id not in h3._stream for stream_id in refused)
    # Nothing holds them: released (bytes credited back, what arrives dropped) or gone.
    quic = pair.server.quic
    assert all(quic.is_released(s) or s not in quic._streams for s in refused)


def test_trailers_past_the_limit_reset_the_request(pair: Pair) -> None:
    post = qpack_prefix(0, 128) + request_lines("/", method=b"POST")
    stream_id = pair.request(headers(post), end=False)
    pad = qpack_prefix(0, 128) + qpack_literal(b"x-pad", b"p" * (4001 - 37))
    pair.client.send_stream_data(
        stream_id, encode_frame(FrameType.DATA, b"hi") + headers(pad), end_stream=True
    )
    pair.pump()
    assert AppStreamReset(stream_id, ErrorCode.H3_EXCESSIVE_LOAD) in pair.app_events
    assert not [e for e in pair.app_events if isinstance(e, BodyEnded)]
    resets = [e for e in pair.client_events if isinstance(e, StreamReset)]
    assert [(e.stream_id, e.error_code) for e in resets] == [
        (stream_id, ErrorCode.H3_EXCESSIVE_LOAD)
    ]
    pair.server.stream_done(stream_id, pair.now)  # the app call ends: no STOP_SENDING again


def test_qpack_bomb_closes_the_connection(pair: Pair) -> None:
    pair.client.send_stream_data(
        pair.encoder, qpack_set_capacity(4096) + qpack_insert_literal(b"x", b"v" * 4063)
    )
    pair.request(
        headers(qpack_prefix(1, 128) + request_lines("/") + qpack_indexed_dynamic(0) * 100)
    )
    assert pair.close_code() == ErrorCode.H3_EXCESSIVE_LOAD
    assert not [e for e in pair.app_events if isinstance(e, RequestReceived)]


def test_a_bomb_blocked_on_the_encoder_stream_is_refused_when_it_resumes(pair: Pair) -> None:
    # The section arrives first (Required Insert Count 1, nothing inserted yet), so it is
    # blocked (RFC 9204 §2.1.2); the insert that unblocks it makes it a bomb.
    pair.client.send_stream_data(pair.encoder, qpack_set_capacity(4096))
    pair.request(
        headers(qpack_prefix(1, 128) + request_lines("/") + qpack_indexed_dynamic(0) * 100)
    )
    assert not [e for e in pair.client_events if isinstance(e, ConnectionTerminated)]
    pair.client.send_stream_data(pair.encoder, qpack_insert_literal(b"x", b"v" * 4063))
    pair.pump()
    assert pair.close_code() == ErrorCode.H3_EXCESSIVE_LOAD


def test_headers_frame_past_twice_the_limit_is_refused_at_its_header(pair: Pair) -> None:
    pair.request(b"\x01\x80\x00\x20\x00" + b"\x00" * 100, end=False)  # announces 8192
    assert pair.close_code() == ErrorCode.H3_EXCESSIVE_LOAD


# -- aioquic's field checks, scanned in C (quic/compat.py item 12) ----------------------


def _outcome(check: Any, *args: bytes) -> str | None:
    try:
        check(*args)
    except MessageError as exc:
        return str(exc)
    return None


def test_fast_field_checks_are_installed_and_agree_with_aioquic() -> None:
    """Every name and value the C-speed checks see gets aioquic's verdict and message:
    all single bytes, every byte before and after the interesting ones, and seeded
    random fields drawn mostly from the bytes the rules single out."""
    assert aioquic_h3.validate_header_name is compat.validate_header_name
    assert aioquic_h3.validate_header_value is compat.validate_header_value
    special = [0x00, 0x09, 0x0A, 0x0D, 0x20, 0x21, 0x3A, 0x40, 0x41, 0x5A, 0x5B, 0x61, 0x7E, 0x7F]
    fields = [b"", b":path", b"::", b"a:b", b"content-length", b"x-Upper", b" a", b"a "]
    fields += [bytes([a]) for a in range(256)]
    fields += [bytes([a, b]) for a in range(256) for b in special]
    fields += [bytes([b, a]) for a in range(256) for b in special]
    rng = random.Random(11)
    pool = [*special, 0x30, 0x62, 0x7A, 0x80, 0xFF]
    fields += [bytes(rng.choice(pool) for _ in range(rng.randrange(1, 12))) for _ in range(5000)]
    refused = 0
    for field in fields:
        name = _outcome(compat.validate_header_name, field)
        assert name == _outcome(compat.aioquic_validate_header_name, field), field
        value = _outcome(compat.validate_header_value, b"k", field)
        assert value == _outcome(compat.aioquic_validate_header_value, b"k", field), field
        refused += (name is not None) + (value is not None)
    assert refused > len(fields) // 2  # the refusing branches ran, not only the fast path
