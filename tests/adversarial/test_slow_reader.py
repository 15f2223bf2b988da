"""Slow readers: a peer that asks for a lot and never reads it must not cost memory.

Issue 9, attack 3: HTTP/2 over TLS, 64 streams of 8 MiB with every HTTP/2 window opened
wide, the socket never read: the server framed everything h2 let it frame and queued it
for the socket (RSS +1.5 GiB). Here every protocol is driven that way (HTTP/2 with open
windows; PINGs and WebSocket messages whose answers are never read; HTTP/3 with credit
granted but nothing acknowledged; HTTP/1.1 pipelining and WebSocket echoes) and the
server must hold at most ``--connection-write-buffer-size`` per connection: RSS stays
flat, other clients are answered, and once the attacker goes away every app call ends.

The WebSocket attacks run on both framing engines (``--ws-engine`` wsproto and websockets).
The two HTTP/1.1 tests pass on the code before the budget too (there a second writer
waits for the first, so one write is all a connection holds); they keep it that way.
"""

from __future__ import annotations

import base64
import os
import socket
import ssl
import time
from collections.abc import Iterator
from contextlib import contextmanager

import h2.config
import h2.connection
import h2.events
import h2.settings
import httpx
import hyperframe.frame
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import HandshakeCompleted

from quicserve.certs import DevCertificate

from ..helpers import H1_WITH_WS
from ..test_cli import Spawn
from .harness import MAX_RSS_GROWTH_MIB, Prober, Target, serve

BIG = 8 * 1024 * 1024
#: How long each attack keeps the server's output piling up.
ATTACK_SECONDS = 2.0


def _tiny_receive_buffer(sock: socket.socket) -> None:
    # Set before connect, so the advertised TCP window is small too: the kernel then
    # buffers little, and what piles up is the server's.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)


@contextmanager
def _connect(
    target: Target, *, tls: bool, alpn: list[str] | None = None
) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    _tiny_receive_buffer(sock)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", target.https if tls else target.http))
    if tls:
        context = target.client_context(alpn or ["http/1.1"])
        sock = context.wrap_socket(sock, server_hostname="localhost")
    try:
        yield sock
    finally:
        sock.close()


def _running_app_calls(target: Target) -> int:
    response = httpx.get(f"http://127.0.0.1:{target.http}/count", timeout=5)
    return int(response.text.split()[0]) - 1  # not counting this /count call


def _wait_for_app_calls_to_end(target: Target, timeout: float = 10.0) -> None:
    """After the attacker left, every app call it started ends (nothing is stuck)."""
    deadline = time.monotonic() + timeout
    running = _running_app_calls(target)
    while running and time.monotonic() < deadline:
        time.sleep(0.1)
        running = _running_app_calls(target)
    assert running == 0, f"{running} app calls still running after the attacker left"


def _hold(target: Target, seconds: float = ATTACK_SECONDS) -> None:
    """Let the server's output pile up (it would, without a budget)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert target.alive()
        time.sleep(0.1)


def _first_round(prober: Prober) -> None:
    """Attack once the prober's first round is done: its first HTTP/3 probe pays for a
    new process's first QUIC handshake (0.3-0.8 s on a loaded 2-core machine) and would
    cross the 1 s bar for reasons of its own when it meets the attack's first burst.
    (``Prober.__enter__`` now waits for that round itself; this checks it did.)"""
    assert len(prober.results) >= len(prober.protocols)


def _check_rss(target: Target) -> None:
    growth = target.rss_growth_mib()
    assert growth < MAX_RSS_GROWTH_MIB, f"RSS grew by {growth:.1f} MiB"


def _h2_attacker(sock: socket.socket) -> h2.connection.H2Connection:
    """An h2 client on ``sock`` that has sent its preface with every window wide open."""
    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(
            client_side=True, header_encoding=None, validate_outbound_headers=False
        )
    )
    conn.initiate_connection()
    # Every window as wide as RFC 9113 §6.9.1 allows: flow control lets it all out.
    conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 2**31 - 1})
    conn.increment_flow_control_window(2**31 - 1 - 65535)
    sock.sendall(conn.data_to_send())
    return conn


def _h2_get(conn: h2.connection.H2Connection, path: bytes) -> None:
    conn.send_headers(
        conn.get_next_available_stream_id(),
        [
            (b":method", b"GET"),
            (b":path", path),
            (b":scheme", b"https"),
            (b":authority", b"localhost"),
        ],
        end_stream=True,
    )


def test_http2_open_windows_socket_never_read(
    spawn: Spawn, backend: str, tls_files: DevCertificate
) -> None:
    with serve(spawn, backend, tls_files) as target, Prober(target) as prober:
        _first_round(prober)
        with _connect(target, tls=True, alpn=["h2"]) as sock:
            assert isinstance(sock, ssl.SSLSocket) and sock.selected_alpn_protocol() == "h2"
            conn = _h2_attacker(sock)
            for _ in range(64):
                _h2_get(conn, b"/big?%d" % BIG)
            sock.sendall(conn.data_to_send())
            _hold(target)
            assert _running_app_calls(target) == 64  # all waiting in send(), none done
        _wait_for_app_calls_to_end(target)
    prober.check()
    _check_rss(target)


def _flood(sock: socket.socket, data: bytes, seconds: float) -> int:
    """Send ``data`` over and over for ``seconds`` (sends that block are retried); returns
    the bytes the server's side took in the last second."""
    sock.settimeout(0.05)
    view = memoryview(data)
    sent = 0
    marks: list[tuple[float, int]] = []
    deadline = time.monotonic() + seconds
    while (now := time.monotonic()) < deadline:
        marks.append((now, sent))
        try:
            sent += sock.send(view[sent % len(data) :])
        except TimeoutError:
            pass
    sock.settimeout(10)
    before = next(n for t, n in reversed(marks) if t <= deadline - 1.0)
    return sent - before


def test_http2_ping_flood_while_not_reading(
    spawn: Spawn, backend: str, tls_files: DevCertificate
) -> None:
    # A streaming response fills the socket (its app, not the reader, is the one blocked
    # writing), then PINGs: each makes the server queue a PING ACK (RFC 9113 §6.7) that
    # the attacker never reads. The server must stop reading.
    ping = hyperframe.frame.PingFrame(0)
    ping.opaque_data = b"12345678"
    pings = ping.serialize() * 4096
    with serve(spawn, backend, tls_files) as target, Prober(target) as prober:
        _first_round(prober)
        with _connect(target, tls=True, alpn=["h2"]) as sock:
            conn = _h2_attacker(sock)
            _h2_get(conn, b"/drip?%d" % BIG)
            sock.sendall(conn.data_to_send())
            time.sleep(0.5)  # the socket fills
            last_second = _flood(sock, pings, ATTACK_SECONDS + 1)
        _wait_for_app_calls_to_end(target)
    prober.check()
    _check_rss(target)
    # Once the PING ACKs it owes are over its limit the server reads no more (the
    # kernel's buffers fill, and then take nothing).
    assert last_second < 64 * 1024, f"the server still reads: {last_second} bytes in 1 s"


def test_http1_pipelined_requests_never_read(
    spawn: Spawn, backend: str, h1_engine: str, tls_files: DevCertificate
) -> None:
    request = b"GET /big?%d HTTP/1.1\r\nHost: localhost\r\n\r\n" % BIG
    with (
        serve(spawn, backend, tls_files, "--http1-engine", h1_engine) as target,
        Prober(target) as prober,
    ):
        _first_round(prober)
        with _connect(target, tls=False) as sock:
            # As many pipelined requests as the server takes in before it stops reading.
            sock.settimeout(0.5)
            sent = 0
            try:
                while sent < 4096:
                    sock.sendall(request * 16)
                    sent += 16
            except TimeoutError:
                pass
            _hold(target)
            assert _running_app_calls(target) == 1  # HTTP/1.1: one request at a time
        _wait_for_app_calls_to_end(target)
    prober.check()
    _check_rss(target)


def _websocket_frames(count: int, size: int) -> bytes:
    from wsproto.connection import Connection, ConnectionType
    from wsproto.events import BytesMessage

    ws = Connection(ConnectionType.CLIENT)
    payload = os.urandom(size)  # incompressible; and no permessage-deflate offered
    return b"".join(ws.send(BytesMessage(data=payload)) for _ in range(count))


def test_websocket_echoes_never_read(
    spawn: Spawn, backend: str, ws_engine: str, tls_files: DevCertificate
) -> None:
    key = base64.b64encode(os.urandom(16))
    handshake = (
        b"GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
        b"Sec-WebSocket-Key: " + key + b"\r\n\r\n"
    )
    burst = _websocket_frames(16, 64 * 1024)
    with (
        serve(
            spawn,
            backend,
            tls_files,
            "--ws-engine",
            ws_engine,
            "--http1-engine",
            H1_WITH_WS[ws_engine],
        ) as target,
        Prober(target) as prober,
    ):
        _first_round(prober)
        with _connect(target, tls=True) as sock:
            sock.sendall(handshake)
            # Messages to echo until the server stops taking them in (it must, once its
            # echoes are not read); the 101 and every echo stay unread.
            sock.settimeout(0.5)
            sent = 0
            try:
                while sent < 64 * 1024 * 1024:
                    sock.sendall(burst)
                    sent += len(burst)
            except TimeoutError:
                pass
            _hold(target)
        _wait_for_app_calls_to_end(target)
    prober.check()
    _check_rss(target)


def test_websocket_over_http2_echoes_never_read(
    spawn: Spawn, backend: str, ws_engine: str, tls_files: DevCertificate
) -> None:
    # RFC 8441: a WebSocket is one HTTP/2 stream, next to a streaming response that
    # fills the socket. Then the attacker stops reading and sends messages blind (it
    # cannot see the WINDOW_UPDATEs any more), at a pace the server keeps up with,
    # counting on the echo app's consumption re-opening the windows (it does).
    message = _websocket_frames(1, 16000)  # one DATA frame (<= 16384, RFC 9113 §4.2)
    with (
        serve(spawn, backend, tls_files, "--ws-engine", ws_engine) as target,
        Prober(target) as prober,
    ):
        _first_round(prober)
        with _connect(target, tls=True, alpn=["h2"]) as sock:
            conn = _h2_attacker(sock)
            conn.send_headers(
                1,
                [
                    (b":method", b"CONNECT"),
                    (b":protocol", b"websocket"),
                    (b":scheme", b"https"),
                    (b":path", b"/ws"),
                    (b":authority", b"localhost"),
                    (b"sec-websocket-version", b"13"),
                ],
            )
            sock.sendall(conn.data_to_send())
            accepted = False
            while not accepted:  # the last bytes the attacker reads: the 200
                for event in conn.receive_data(sock.recv(65536)):
                    accepted = accepted or isinstance(event, h2.events.ResponseReceived)
            _h2_get(conn, b"/drip?%d" % BIG)
            sock.sendall(conn.data_to_send())
            time.sleep(0.5)  # the socket fills: the /drip app is blocked writing
            frame = hyperframe.frame.DataFrame(1, data=message).serialize()
            sock.settimeout(0.5)
            deadline = time.monotonic() + ATTACK_SECONDS
            try:
                while time.monotonic() < deadline:
                    sock.sendall(frame * 4)
                    time.sleep(0.002)
            except TimeoutError:
                pass  # the server stopped reading
        _wait_for_app_calls_to_end(target)
    prober.check()
    _check_rss(target)


def test_http3_credit_granted_never_acknowledged(
    spawn: Spawn, backend: str, tls_files: DevCertificate
) -> None:
    # The client grants huge credit (MAX_DATA, MAX_STREAM_DATA), asks for 100 big
    # responses and then acknowledges nothing: aioquic keeps every byte the app sent
    # until it is acknowledged, so only the server's own budget bounds it.
    configuration = QuicConfiguration(
        is_client=True,
        alpn_protocols=H3_ALPN,
        server_name="localhost",
        max_data=1 << 40,
        max_stream_data=1 << 40,
    )
    configuration.load_verify_locations(str(tls_files.ca_certfile))
    with serve(spawn, backend, tls_files) as target, Prober(target) as prober:
        _first_round(prober)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.settimeout(0.1)
        server = ("127.0.0.1", target.quic)
        quic = QuicConnection(configuration=configuration)
        quic.connect(server, now=time.monotonic())

        def transmit() -> None:
            for data, addr in quic.datagrams_to_send(now=time.monotonic()):
                sock.sendto(data, addr)

        try:
            transmit()
            deadline = time.monotonic() + 5
            handshake_done = False
            while not handshake_done:
                assert time.monotonic() < deadline, "no QUIC handshake"
                try:
                    data, addr = sock.recvfrom(65536)
                except TimeoutError:
                    quic.handle_timer(now=time.monotonic())
                else:
                    quic.receive_datagram(data, addr, now=time.monotonic())
                transmit()
                while (event := quic.next_event()) is not None:
                    handshake_done = handshake_done or isinstance(event, HandshakeCompleted)
            h3 = H3Connection(quic)
            for _ in range(100):
                stream_id = quic.get_next_available_stream_id()
                h3.send_headers(
                    stream_id,
                    [
                        (b":method", b"GET"),
                        (b":scheme", b"https"),
                        (b":authority", b"localhost"),
                        (b":path", b"/big?%d" % BIG),
                    ],
                    end_stream=True,
                )
            transmit()
            # From now on nothing the server sends is processed: no ACK ever goes back.
            _hold(target)
            assert _running_app_calls(target) == 100  # all waiting in send(), none done
            # STOP_SENDING on every stream (RFC 9000 §19.5), still acknowledging nothing:
            # the sends waiting on the connection's budget end, and so do the app calls.
            quic._loss._cc.bytes_in_flight = 0  # our own congestion window: let it go
            for stream_id in range(0, 400, 4):
                quic.stop_stream(stream_id, 0x10C)  # H3_REQUEST_CANCELLED
            transmit()
            _wait_for_app_calls_to_end(target)
            quic.close(error_code=0)
            transmit()
        finally:
            sock.close()
    prober.check()
    _check_rss(target)
