"""Request bodies sent to an app that never reads them: what the server buffers is
bounded by flow control on every protocol, not by what the client sends.

* HTTP/1.1: each connection reads ahead a bounded amount, then TCP holds the client back.
* HTTP/2: ``--h2-stream-window-size`` per stream and ``--h2-connection-window-size`` per
  connection; credit comes back only as the app consumes.
* HTTP/3: ``--quic-stream-window-size`` per stream and ``--quic-max-data`` per connection,
  likewise (aioquic alone doubles MAX_DATA when half of it has arrived, read or not).

The app's ``/stall`` route never calls ``receive()``.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from typing import Any

import h2.config
import h2.connection
import h2.events
from aioquic.asyncio import connect
from aioquic.h3.connection import H3Connection
from aioquic.quic.configuration import QuicConfiguration

from quicserve.certs import DevCertificate

from ..test_cli import Spawn
from .harness import MAX_RSS_GROWTH_MIB, Prober, Target, serve

ATTACK_SECONDS = 2.0
CHUNK = b"u" * 65536


async def h1_uploads(target: Target, connections: int, tls: bool = False) -> int:
    """``connections`` POSTs of 1 GiB to /stall (over TLS: ``tls``), written as fast as
    TCP takes them; the bytes TCP took."""
    sent = 0
    context = target.client_context(["http/1.1"]) if tls else None

    async def one() -> None:
        nonlocal sent
        if context is None:
            _, writer = await asyncio.open_connection("127.0.0.1", target.http)
        else:
            _, writer = await asyncio.open_connection(
                "127.0.0.1", target.https, ssl=context, server_hostname="localhost"
            )
        writer.write(b"POST /stall?10 HTTP/1.1\r\nHost: x\r\nContent-Length: 1073741824\r\n\r\n")
        deadline = time.monotonic() + ATTACK_SECONDS
        try:
            while time.monotonic() < deadline:
                writer.write(CHUNK)
                try:
                    async with asyncio.timeout(deadline - time.monotonic()):
                        await writer.drain()
                except TimeoutError:
                    break
                sent += len(CHUNK)
        finally:
            writer.transport.abort()

    await asyncio.gather(*(one() for _ in range(connections)))
    return sent


async def _h2_uploads(target: Target, streams: int) -> int:
    """One TLS connection, ``streams`` uploads to /stall, DATA sent whenever h2 allows."""
    context = target.client_context(["h2"])
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", target.https, ssl=context, server_hostname="localhost"
    )
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    ids = []
    for _ in range(streams):
        stream_id = conn.get_next_available_stream_id()
        conn.send_headers(
            stream_id,
            [
                (":method", "POST"),
                (":path", "/stall?10"),
                (":scheme", "https"),
                (":authority", "x"),
            ],
        )
        ids.append(stream_id)
    writer.write(conn.data_to_send())
    sent = 0
    deadline = time.monotonic() + ATTACK_SECONDS
    try:
        while time.monotonic() < deadline:
            for stream_id in ids:
                try:
                    window = min(conn.local_flow_control_window(stream_id), len(CHUNK))
                except Exception:
                    continue
                window = min(window, conn.max_outbound_frame_size)
                if window > 0:
                    conn.send_data(stream_id, CHUNK[:window])
                    sent += window
            writer.write(conn.data_to_send())
            await writer.drain()
            try:
                async with asyncio.timeout(0.05):
                    data = await reader.read(65536)
            except TimeoutError:
                continue
            if not data:
                break
            conn.receive_data(data)
            writer.write(conn.data_to_send())
    finally:
        writer.transport.abort()
    return sent


async def _h3_uploads(target: Target, streams: int) -> int:
    """One QUIC connection, ``streams`` uploads to /stall, as much as QUIC lets out."""
    configuration = QuicConfiguration(
        is_client=True, alpn_protocols=["h3"], verify_mode=ssl.CERT_NONE, server_name="localhost"
    )
    async with connect("127.0.0.1", target.quic, configuration=configuration) as client:
        quic: Any = client._quic
        h3 = H3Connection(quic)
        ids = []
        for _ in range(streams):
            stream_id = quic.get_next_available_stream_id()
            h3.send_headers(
                stream_id,
                [
                    (b":method", b"POST"),
                    (b":scheme", b"https"),
                    (b":authority", b"x"),
                    (b":path", b"/stall?10"),
                ],
            )
            ids.append(stream_id)
        sent = 0
        deadline = time.monotonic() + ATTACK_SECONDS
        while time.monotonic() < deadline:
            for stream_id in ids:
                stream = quic._streams.get(stream_id)
                # Queue only what the peer's credit lets out, so this client's memory
                # stays small: the question is what the *server* holds.
                if stream is not None and stream.sender.buffer_is_empty:
                    h3.send_data(stream_id, CHUNK[:16384], end_stream=False)
                    sent += 16384
            client.transmit()
            await asyncio.sleep(0.01)
        return int(quic._remote_max_data)


def test_unread_uploads_are_held_back_by_flow_control(
    spawn: Spawn, backend: str, tls_files: DevCertificate
) -> None:
    with serve(spawn, backend, tls_files) as target, Prober(target) as prober:
        h1_sent = asyncio.run(h1_uploads(target, 50))
        h2_sent = asyncio.run(_h2_uploads(target, 100))
        h3_max_data = asyncio.run(_h3_uploads(target, 100))
    prober.check()
    # HTTP/2: at most the connection window (1 MiB) before the app reads.
    assert h2_sent <= 1024 * 1024, h2_sent
    # HTTP/3: the connection's credit grew past --quic-max-data (4 MiB) only by the
    # request heads the server parsed (credited as consumed), not by body it holds.
    assert h3_max_data <= 4 * 1024 * 1024 + 64 * 1024, h3_max_data
    # HTTP/1.1: the 50 connections got nowhere near 1 GiB each.
    assert h1_sent < 50 * 8 * 1024 * 1024, h1_sent
    assert target.rss_growth_mib() < MAX_RSS_GROWTH_MIB
