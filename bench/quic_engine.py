"""The QUIC engine alone: server CPU per MiB of a download, with no sockets and no event loop.

Job: tell how much of an HTTP/3 download's server CPU is the QUIC engine (aioquic through
``quicserve.quic.compat.ServerQuicConnection``: building, encrypting and registering packets,
and handling the ACKs that come back), apart from syscalls, the event loop, the driver and
the app. A server connection sends ``--mib`` MiB on one stream to an aioquic client in
memory; the client ACKs every ``--ack-every`` packets (gtlsclient acks every 5-8 under
load). Only the server's calls are timed (``time.process_time``), so the numbers are the
engine's cost per MiB and per packet, which ``bench.run``'s h3bulk CPU ms / MiB can be
set against (what is left over there is ours: sockets, loop, driver, app).

Rules:

* Nothing but the server connection's own calls is timed; the client's work, the clock and
  the bookkeeping here are outside the measured spans.
* The clock is explicit and advances 0.2 ms per round, so pacing and timers behave as on a
  fast path; the app keeps at most 1 MiB buffered, as the QUIC driver lets it.
* Each size is measured ``--repeats`` times and the lowest is reported (the least disturbed
  by other work on a shared machine), with every run listed.

Run from the repository root: ``python bench/quic_engine.py`` or
``python bench/quic_engine.py --mib 16 --datagram-sizes 1350,1452,4000``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aioquic.h3.connection import H3_ALPN
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import HandshakeCompleted, StreamDataReceived

from quicserve.certs import make_test_certificates
from quicserve.config import Config
from quicserve.quic.compat import ServerQuicConnection
from quicserve.tls import quic_configuration

MIB = 1024 * 1024
_CLIENT = ("10.0.0.2", 4433)
_SERVER = ("10.0.0.1", 443)
_STEP = 0.0002  # seconds per round
_APP_BUFFER = MIB


@dataclass(frozen=True, slots=True)
class EngineRun:
    """One download through the engine."""

    ms_per_mib: float
    packets: int
    empty_call_us: float  # one datagrams_to_send() with nothing to send

    def us_per_packet(self, mib: int) -> float:
        return self.ms_per_mib * mib * 1000 / max(1, self.packets)


class _Clock:
    def __init__(self) -> None:
        self.cpu = 0.0

    def timed(self, call: object, *args: object, **kwargs: object) -> object:
        start = time.process_time()
        try:
            return call(*args, **kwargs)  # type: ignore[operator]
        finally:
            self.cpu += time.process_time() - start


def measure(certs: Path, *, mib: int, datagram_size: int, ack_every: int) -> EngineRun:
    """Send ``mib`` MiB from a server connection to a client in memory; time the server."""
    config = Config(app="bench.app:app")
    now = 1.0
    client_config = QuicConfiguration(
        is_client=True,
        alpn_protocols=H3_ALPN,
        server_name="localhost",
        max_data=1 << 40,
        max_stream_data=1 << 40,
    )
    client_config.load_verify_locations(str(certs / "ca.pem"))
    client = QuicConnection(configuration=client_config)
    client.connect(_SERVER, now=now)
    server_config = quic_configuration(config, max_datagram_size=datagram_size)
    server_config.load_cert_chain(str(certs / "localhost.pem"), str(certs / "localhost-key.pem"))
    server = ServerQuicConnection(
        configuration=server_config,
        original_destination_connection_id=client._peer_cid.cid,
        cid_factory=lambda: (os.urandom(8), os.urandom(16)),
        stream_window=config.quic_stream_window_size,
        max_streams=config.quic_max_streams,
        allow_early_data=False,
    )
    stream_id = client.get_next_available_stream_id()
    requested = arrived = False
    for _ in range(100):  # handshake and the request, untimed
        now += 0.001
        for data, _ in client.datagrams_to_send(now):
            server.receive_datagram(data, _CLIENT, now)
        for data, _ in server.datagrams_to_send(now):
            client.receive_datagram(data, _SERVER, now)
        while (event := client.next_event()) is not None:
            if isinstance(event, HandshakeCompleted) and not requested:
                client.send_stream_data(stream_id, b"GET", end_stream=True)
                requested = True
        while (event := server.next_event()) is not None:
            arrived = arrived or isinstance(event, StreamDataReceived)
        if arrived:
            break
    else:
        raise RuntimeError("no handshake or request in memory")

    clock = _Clock()
    total, sent, packets = mib * MIB, 0, 0
    chunk = bytes(64 * 1024)
    for _ in range(100 * total // datagram_size + 10_000):
        while sent < total and server.buffered(stream_id) < _APP_BUFFER:
            piece = chunk[: min(len(chunk), total - sent)]
            sent += len(piece)
            clock.timed(server.send_stream_data, stream_id, piece, sent == total)
        out: list[tuple[bytes, object]] = clock.timed(server.datagrams_to_send, now)  # type: ignore[assignment]
        packets += len(out)
        if not out:
            if sent == total and server.buffered(stream_id) == 0:
                break
            timer = clock.timed(server.get_timer)
            if isinstance(timer, float) and timer <= now:
                clock.timed(server.handle_timer, now)
        for index, (data, _) in enumerate(out):
            client.receive_datagram(data, _SERVER, now)
            if (index + 1) % ack_every == 0 or index == len(out) - 1:
                for ack, _ in client.datagrams_to_send(now):
                    clock.timed(server.receive_datagram, ack, _CLIENT, now)
        while client.next_event() is not None:
            pass
        now += _STEP
    else:
        raise RuntimeError("the download did not finish")
    start = time.process_time()
    for _ in range(1000):
        server.datagrams_to_send(now)
    empty = (time.process_time() - start) / 1000 * 1e6
    return EngineRun(ms_per_mib=clock.cpu * 1000 / mib, packets=packets, empty_call_us=empty)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=8, help="MiB per download (default 8)")
    parser.add_argument(
        "--datagram-sizes", default="1350", help="comma-separated max datagram sizes"
    )
    parser.add_argument("--ack-every", type=int, default=7, help="packets per client ACK")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    sizes = [int(size) for size in args.datagram_sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="quicserve-engine-") as directory:
        certs = Path(directory)
        make_test_certificates(certs)
        print("| datagram | engine CPU ms / MiB | runs | packets / MiB | µs / packet | empty µs |")
        print("|--:|--:|--:|--:|--:|--:|")
        for size in sizes:
            runs = [
                measure(certs, mib=args.mib, datagram_size=size, ack_every=args.ack_every)
                for _ in range(max(1, args.repeats))
            ]
            best = min(runs, key=lambda run: run.ms_per_mib)
            listed = ", ".join(f"{run.ms_per_mib:.1f}" for run in runs)
            print(
                f"| {size} | {best.ms_per_mib:.2f} | {listed} | {best.packets / args.mib:.0f} "
                f"| {best.us_per_packet(args.mib):.1f} | {best.empty_call_us:.1f} |"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
