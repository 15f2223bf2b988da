"""QUIC stream abuse against the real server: HTTP/3 rapid reset and sparse offsets.

The attacker is aioquic's client connection driven by hand over a UDP socket, so it can
reset every request at once and put STREAM frames at any offset it likes. It keeps to the
credit the server grants (MAX_STREAMS, MAX_DATA): the point is what the server grants.

* Rapid reset (issue 9 item 2): HEADERS for ``/hold`` then RESET_STREAM + STOP_SENDING,
  as fast as stream credit allows. The app's peak of concurrent calls stays within
  ``--quic-max-streams`` (main re-issued MAX_STREAMS as soon as QUIC was done with a
  stream, while its app call still ran; here main's whole process died after ~60 such
  streams, on a ValueError from aioquic's ``stop_stream``), and a client that keeps doing
  it is closed with H3_EXCESSIVE_LOAD after ``--quic-max-cancelled-requests``.
* Sparse offsets (issue 9 item 4): on every new stream one byte at the far end of the
  stream window and nothing before it, on four connections. The server keeps what
  arrived, not the gap, and MAX_DATA is not re-granted for bytes that never came (on
  main: MAX_DATA 4 MiB -> 256 MiB on each connection, RSS +310 MiB).
"""

from __future__ import annotations

import socket
import time

import httpx
from aioquic.h3.connection import ErrorCode, H3Connection
from aioquic.quic import events
from aioquic.quic.connection import QuicConnection

from clientkit.h3 import client_configuration
from quicserve.certs import DevCertificate

from ..test_cli import Spawn
from .harness import MAX_RSS_GROWTH_MIB, Prober, Target, serve

MAX_STREAMS = 20
WINDOW = 1024 * 1024  # --quic-stream-window-size (default)
MAX_DATA = 4 * 1024 * 1024  # --quic-max-data (default)


class RawClient:
    """One QUIC connection driven by hand: aioquic's state machine, our own packets' timing
    and our own frames."""

    def __init__(self, target: Target) -> None:
        self.quic = QuicConnection(configuration=client_configuration(str(target.tls.ca_certfile)))
        self.h3 = H3Connection(self.quic)
        self.addr = ("127.0.0.1", target.quic)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.connect(self.addr)
        self.close_code: int | None = None
        self.connected = False
        self.quic.connect(self.addr, now=time.monotonic())
        self.flush()
        deadline = time.monotonic() + 5
        while not self.connected and time.monotonic() < deadline:
            self.poll(0.01)
        assert self.connected, "no handshake"

    def flush(self) -> None:
        for data, _ in self.quic.datagrams_to_send(time.monotonic()):
            self.sock.send(data)

    def poll(self, duration: float) -> None:
        """Take in what the server sent, waiting up to ``duration`` seconds for more
        (timers fired, events handled)."""
        end = time.monotonic() + duration
        while True:
            now = time.monotonic()
            timer = self.quic.get_timer()
            if timer is not None and timer <= now:
                self.quic.handle_timer(now)
            self.sock.settimeout(min(0.005, max(end - now, 0.0005)))
            try:
                data = self.sock.recv(65536)
            except (TimeoutError, BlockingIOError, ConnectionRefusedError):
                data = b""
            if data:
                self.quic.receive_datagram(data, self.addr, time.monotonic())
            while (event := self.quic.next_event()) is not None:
                if isinstance(event, events.HandshakeCompleted):
                    self.connected = True
                elif isinstance(event, events.ConnectionTerminated):
                    self.close_code = event.error_code
                self.h3.handle_event(event)
            self.flush()
            if self.close_code is not None or (not data and time.monotonic() >= end):
                return

    @property
    def stream_credit(self) -> int:
        """Request streams the server lets us open now."""
        quic = self.quic
        return int(quic._remote_max_streams_bidi - quic._local_next_stream_id_bidi // 4)

    @property
    def max_data(self) -> int:
        """MAX_DATA the server has granted us."""
        return int(self.quic._remote_max_data)

    def request(self, path: str) -> int:
        stream_id = self.quic.get_next_available_stream_id()
        self.h3.send_headers(
            stream_id,
            [
                (b":method", b"POST"),
                (b":scheme", b"https"),
                (b":authority", b"localhost"),
                (b":path", path.encode()),
            ],
            end_stream=False,
        )
        return stream_id

    def far_byte(self, stream_id: int, offset: int) -> None:
        """One STREAM frame at ``offset`` with nothing before it: aioquic's sender sends
        what its buffer holds from ``_buffer_start``, so move the start there."""
        sender = self.quic._streams[stream_id].sender
        if not sender.buffer_is_empty:
            return  # the HEADERS wait for flow control: the far byte would be garbled
        sender._buffer_start = sender._buffer_stop = offset
        sender._buffer = bytearray()
        sender.write(b"x")

    def close(self) -> None:
        self.quic.close()
        self.flush()
        self.sock.close()


def running_peak(target: Target) -> int:
    """The app's peak of concurrent calls so far (asked over HTTP/1.1, so the answer does
    not depend on the QUIC endpoint under attack)."""
    response = httpx.get(f"http://127.0.0.1:{target.http}/count", timeout=30)
    return int(response.content.split()[1])


def test_rapid_reset_stays_within_max_streams(
    spawn: Spawn, backend: str, tls_files: DevCertificate
) -> None:
    with (
        serve(spawn, backend, tls_files, "--quic-max-streams", str(MAX_STREAMS)) as target,
        Prober(target) as prober,
    ):
        attacker = RawClient(target)
        opened = 0
        deadline = time.monotonic() + 8
        while attacker.close_code is None and time.monotonic() < deadline and opened < 5000:
            batch = [attacker.request("/hold") for _ in range(attacker.stream_credit)]
            attacker.flush()  # the HEADERS leave first (aioquic sends no data after a reset)
            for stream_id in batch:
                attacker.quic.reset_stream(stream_id, ErrorCode.H3_REQUEST_CANCELLED)
                attacker.quic.stop_stream(stream_id, ErrorCode.H3_REQUEST_CANCELLED)
            opened += len(batch)
            attacker.flush()
            attacker.poll(0.002)
        if attacker.close_code is None:
            attacker.poll(1.0)  # the close may still be on its way
        attacker.close()
        peak = running_peak(target)
    prober.check()
    # The attacker's streams never ran more app calls than the limit (the probes and
    # /count itself add a few of their own).
    assert peak <= MAX_STREAMS + 4, f"{peak} app calls at once ({opened} streams opened)"
    # Default --quic-max-cancelled-requests: it is closed after 1000 cancels.
    assert attacker.close_code == ErrorCode.H3_EXCESSIVE_LOAD, (attacker.close_code, opened)
    assert opened < 1200
    assert target.rss_growth_mib() < MAX_RSS_GROWTH_MIB


def test_sparse_offsets_cost_what_was_sent(
    spawn: Spawn, backend: str, tls_files: DevCertificate
) -> None:
    with serve(spawn, backend, tls_files) as target, Prober(target) as prober:
        attackers = [RawClient(target) for _ in range(4)]
        granted: list[int] = []
        for attacker in attackers:
            # Every stream the server allows, each with one byte at the end of its window.
            for _ in range(attacker.stream_credit):
                stream_id = attacker.request("/hold")
                attacker.flush()
                attacker.far_byte(stream_id, WINDOW - 16)
                attacker.flush()
                attacker.poll(0)  # take in whatever credit the server grants
            attacker.poll(0.3)
            granted.append(attacker.max_data)
            assert attacker.close_code is None, target.server.stderr[-3000:]
        for attacker in attackers:
            attacker.close()
    prober.check()
    # MAX_DATA grew by the HEADERS frames the server parsed, not by the gaps (on main it
    # doubled to 256 MiB), and the gaps cost no memory (on main, 1 MiB each).
    assert all(value < MAX_DATA + 64 * 1024 for value in granted), granted
    assert target.rss_growth_mib() < MAX_RSS_GROWTH_MIB
