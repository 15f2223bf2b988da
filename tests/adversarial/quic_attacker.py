"""A QUIC client that can also send packets it builds by hand, for attack tests.

:class:`RawQuicClient` is aioquic's client ``QuicConnection`` on a blocking UDP socket,
pumped by hand in the test's thread (no event loop): it completes a real handshake with
the server under test, keeps acknowledging what the server sends, and reports how the
server closed the connection. :meth:`RawQuicClient.send_frames` then puts any frames the
test writes (type and body, nothing checked) into packets protected with the
connection's own keys and packet numbers, so the server takes them as the peer's.

Rules:

* Only loopback; every wait has a deadline; sockets are closed on ``close()``.
* Hand-built packets take their numbers from the connection's counter and advance it,
  so aioquic's own packets never reuse one.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from aioquic import tls
from aioquic.buffer import Buffer  # type: ignore[attr-defined]
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, H3Event, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import ConnectionTerminated, HandshakeCompleted, QuicEvent
from aioquic.quic.packet import QuicFrameType, QuicPacketType
from aioquic.quic.packet_builder import QuicPacketBuilder, QuicPacketBuilderStop

#: A frame to send: its type and its body (everything after the type).
Frame = tuple[int, bytes]

_PACKET_TYPES = {
    tls.Epoch.INITIAL: QuicPacketType.INITIAL,
    tls.Epoch.HANDSHAKE: QuicPacketType.HANDSHAKE,
    tls.Epoch.ONE_RTT: QuicPacketType.ONE_RTT,
}


def varint(value: int) -> bytes:
    """``value`` as a QUIC variable-length integer (RFC 9000 §16)."""
    buf = Buffer(capacity=8)
    buf.push_uint_var(value)
    return bytes(buf.data)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (``/proc/PID/stat``)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    # Fields 14 and 15 (utime, stime) are the 12th and 13th after the command name.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class _AttackerConnection(QuicConnection):
    """aioquic's client, noting the server's CONNECTION_CLOSE when it arrives, and
    taking as many connection IDs as the server sends (to see what it does)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._local_active_connection_id_limit = 10_000
        self.remote_close: ConnectionTerminated | None = None

    def _handle_connection_close_frame(self, context: Any, frame_type: int, buf: Buffer) -> None:
        super()._handle_connection_close_frame(context, frame_type, buf)
        if self.remote_close is None:
            self.remote_close = self._close_event


@dataclass
class H3Answer:
    """A response as it arrives."""

    status: int = 0
    body: bytes = b""
    ended: bool = False


class RawQuicClient:
    """One QUIC connection to ``127.0.0.1:port`` that the test can make misbehave."""

    def __init__(
        self,
        port: int,
        cafile: str,
        *,
        session_ticket: tls.SessionTicket | None = None,
        max_datagram_size: int = 1350,
        host: str = "127.0.0.1",
    ) -> None:
        configuration = QuicConfiguration(
            is_client=True,
            alpn_protocols=H3_ALPN,
            server_name="localhost",
            max_datagram_size=max_datagram_size,
            session_ticket=session_ticket,
        )
        configuration.load_verify_locations(cafile)
        self.tickets: list[tls.SessionTicket] = []
        self.quic = _AttackerConnection(
            configuration=configuration, session_ticket_handler=self.tickets.append
        )
        self.h3: H3Connection | None = None
        self.addr = ("127.0.0.1", port)
        self.sock = self.new_socket(host)
        self.events: list[QuicEvent] = []
        self.datagrams_in = 0
        self.bytes_in = 0
        self.terminated: ConnectionTerminated | None = None
        self.responses: dict[int, H3Answer] = {}
        #: The connection ended without a CONNECTION_CLOSE from the server.
        self.closed_by_us = False

    @staticmethod
    def new_socket(host: str = "127.0.0.1") -> socket.socket:
        """A UDP socket on ``host`` (any 127.x.y.z address is loopback on Linux: a
        different one keeps an attacker's per-address accounting apart from the
        prober's)."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((host, 0))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        return sock

    # -- the well-behaved part ------------------------------------------------------------

    def connect(self, timeout: float = 5.0) -> None:
        """Complete the handshake (raises ``TimeoutError`` if the server does not)."""
        self.quic.connect(self.addr, now=time.monotonic())
        self.h3 = H3Connection(self.quic)
        self.flush()
        self.wait_handshake(timeout)

    def wait_handshake(self, timeout: float = 5.0) -> bool:
        """Pump until the handshake completes (True) or the server closes (False);
        raises ``TimeoutError`` if neither happens in time."""
        self.pump_until(
            lambda: self.terminated is not None
            or any(isinstance(e, HandshakeCompleted) for e in self.events),
            timeout,
        )
        return self.terminated is None

    def flush(self) -> None:
        """Send what aioquic has to send (ACKs, retransmissions, requests)."""
        for data, _ in self.quic.datagrams_to_send(now=time.monotonic()):
            self.sock.sendto(data, self.addr)

    def pump(self, duration: float) -> None:
        """Receive, acknowledge and handle timers for ``duration`` seconds."""
        self.pump_until(lambda: False, duration, raise_on_timeout=False)

    def pump_until(
        self, condition: Any, timeout: float, *, raise_on_timeout: bool = True
    ) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            now = time.monotonic()
            if now >= deadline:
                if raise_on_timeout:
                    raise TimeoutError("the server did not answer in time")
                return
            timer = self.quic.get_timer()
            wait = deadline - now if timer is None else max(0.0, min(deadline, timer) - now)
            self.sock.settimeout(max(wait, 0.001))
            try:
                data, _ = self.sock.recvfrom(65536)
            except (TimeoutError, BlockingIOError):
                pass
            except OSError:
                pass
            else:
                self.datagrams_in += 1
                self.bytes_in += len(data)
                self.quic.receive_datagram(data, self.addr, now=time.monotonic())
            now = time.monotonic()
            timer = self.quic.get_timer()
            if timer is not None and timer <= now:
                self.quic.handle_timer(now)
            self._drain_events()
            self.flush()

    def _drain_events(self) -> None:
        # aioquic reports ConnectionTerminated only after the draining period (3 PTO);
        # the close the server sent is known at once.
        if self.terminated is None and self.quic.remote_close is not None:
            self.terminated = self.quic.remote_close
        while (event := self.quic.next_event()) is not None:
            self.events.append(event)
            if isinstance(event, ConnectionTerminated) and self.terminated is None:
                self.terminated = event
                self.closed_by_us = self.quic.remote_close is None
            if self.h3 is not None:
                for h3_event in self.h3.handle_event(event):
                    self._h3_event(h3_event)

    def _h3_event(self, event: H3Event) -> None:
        if isinstance(event, HeadersReceived):
            status = dict(event.headers).get(b":status", b"0")
            self.responses.setdefault(event.stream_id, H3Answer()).status = int(status)
        elif isinstance(event, DataReceived):
            self.responses.setdefault(event.stream_id, H3Answer()).body += event.data
        else:
            return
        if event.stream_ended:
            self.responses[event.stream_id].ended = True

    def request(self, path: str, method: str = "GET", body: bytes = b"") -> int:
        """Send a request for ``path``; returns its stream id (see ``fetch``)."""
        if self.h3 is None:
            self.h3 = H3Connection(self.quic)
        stream_id = self.quic.get_next_available_stream_id()
        self.h3.send_headers(
            stream_id,
            [
                (b":method", method.encode()),
                (b":scheme", b"https"),
                (b":authority", b"localhost"),
                (b":path", path.encode()),
            ],
            end_stream=not body,
        )
        if body:
            self.h3.send_data(stream_id, body, end_stream=True)
        self.flush()
        return stream_id

    def fetch(self, path: str, timeout: float = 3.0) -> H3Answer:
        """GET ``path`` and wait for the whole response."""
        stream_id = self.request(path)
        return self.answer(stream_id, timeout)

    def answer(self, stream_id: int, timeout: float = 3.0) -> H3Answer:
        """The response on ``stream_id``, once it has ended."""
        self.pump_until(
            lambda: stream_id in self.responses and self.responses[stream_id].ended, timeout
        )
        return self.responses[stream_id]

    def wait_closed(self, timeout: float = 3.0) -> int | None:
        """The error code the server closed the connection with (None: still open)."""
        try:
            self.pump_until(lambda: self.terminated is not None, timeout)
        except TimeoutError:
            return None
        assert self.terminated is not None
        assert not self.closed_by_us, f"the attacker's end failed: {self.terminated}"
        return self.terminated.error_code

    def close(self) -> None:
        """Close the connection (if the server has not) and the socket."""
        if self.terminated is None:
            self.quic.close()
            try:
                self.flush()
            except OSError:
                pass
        self.sock.close()

    # -- the misbehaving part ----------------------------------------------------------------

    def send_frames(
        self,
        frames: Iterable[Frame],
        *,
        epoch: tls.Epoch = tls.Epoch.ONE_RTT,
        sock: socket.socket | None = None,
        per_packet: int | None = None,
    ) -> int:
        """Send ``frames`` in as few packets of ``epoch`` as they fit in (at most
        ``per_packet`` frames each), from ``sock`` (default: our socket); returns the
        number of datagrams sent."""
        quic: Any = self.quic
        crypto = quic._cryptos[epoch]
        sent = 0

        def new_builder() -> QuicPacketBuilder:
            builder = QuicPacketBuilder(
                host_cid=quic.host_cid,
                peer_cid=quic._peer_cid.cid,
                version=quic._version,
                is_client=True,
                max_datagram_size=quic._max_datagram_size,
                packet_number=quic._packet_number,
                peer_token=quic._peer_token,
            )
            builder.start_packet(_PACKET_TYPES[epoch], crypto)
            return builder

        def send(builder: QuicPacketBuilder) -> None:
            nonlocal sent
            datagrams, _ = builder.flush()
            quic._packet_number = builder.packet_number
            for data in datagrams:
                (sock or self.sock).sendto(data, self.addr)
                sent += 1

        builder = new_builder()
        in_packet = 0
        for frame_type, body in frames:
            if per_packet is not None and in_packet >= per_packet:
                send(builder)
                builder, in_packet = new_builder(), 0
            try:
                buf = builder.start_frame(frame_type, capacity=len(body))
            except QuicPacketBuilderStop:
                send(builder)
                builder, in_packet = new_builder(), 0
                buf = builder.start_frame(frame_type, capacity=len(body))
            buf.push_bytes(body)
            in_packet += 1
        if in_packet:
            send(builder)
        return sent


def ack_frame(largest: int, ranges: int = 0, first_range: int = 0) -> Frame:
    """An ACK frame for ``largest`` (and ``first_range`` below it), then ``ranges``
    ranges of one packet each with gaps of one (RFC 9000 §19.3)."""
    body = varint(largest) + varint(0) + varint(ranges) + varint(first_range)
    body += (varint(0) + varint(0)) * ranges
    return QuicFrameType.ACK, body


__all__ = ["Frame", "H3Answer", "RawQuicClient", "ack_frame", "cpu_seconds", "varint"]
