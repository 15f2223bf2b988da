"""Connections and handshakes a single client can make the server hold.

* Slow heads (slowloris) on HTTP/1.1 and on TLS: ``--header-read-timeout`` closes them, and
  while they are open everybody else is served.
* Connections that never finish a TLS handshake count against the same timeout.
* ``--max-connections`` (TCP) and ``--quic-max-connections`` (QUIC) are hard ceilings: a
  client that fills them is refused or waits, and the server serves again as soon as it
  lets go; memory stays bounded meanwhile.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time

import pytest
from aioquic.asyncio import connect
from aioquic.quic.configuration import QuicConfiguration

from quicserve.certs import DevCertificate

from ..test_cli import Spawn
from .harness import MAX_RSS_GROWTH_MIB, Prober, probe_h1, probe_h3, serve

# Each connection is held open by a real socket in this process.
SLOW_CLIENTS = 200


def _slow_sockets(port: int, count: int) -> list[socket.socket]:
    socks = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        socks.append(sock)
    return socks


def _closed_by_peer(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except BlockingIOError:
        return False
    except OSError:
        return True


def test_slow_heads_are_timed_out_while_others_are_served(
    spawn: Spawn, backend: str, h1_engine: str, tls_files: DevCertificate
) -> None:
    with (
        serve(
            spawn, backend, tls_files, "--http1-engine", h1_engine, "--header-read-timeout", "2"
        ) as target,
        Prober(target) as prober,
    ):
        plain = _slow_sockets(target.http, SLOW_CLIENTS // 2)
        # TLS connections that never send a ClientHello, and HTTP/1.1 heads that trickle
        # in one byte at a time.
        tls = _slow_sockets(target.https, SLOW_CLIENTS // 2)
        started = time.monotonic()
        for sock in plain:
            sock.sendall(b"GET / HTTP/1.1\r\n")
        while time.monotonic() - started < 4.0:
            for sock in plain:
                try:
                    sock.send(b"X")
                except OSError:
                    pass
            time.sleep(0.5)
        closed = sum(_closed_by_peer(s) for s in plain + tls)
        for sock in plain + tls:
            sock.close()
    assert closed == SLOW_CLIENTS, f"only {closed} of {SLOW_CLIENTS} slow connections closed"
    prober.check()
    assert target.rss_growth_mib() < MAX_RSS_GROWTH_MIB


def test_tcp_connection_ceiling_waits_and_recovers(
    spawn: Spawn, backend: str, tls_files: DevCertificate
) -> None:
    limit = 50
    with serve(spawn, backend, tls_files, "--max-connections", str(limit)) as target:
        # The warm-up connections are gone once their responses are read; hold every slot.
        held = _slow_sockets(target.http, limit)
        for sock in held:
            sock.sendall(b"GET /hold HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.5)
        with pytest.raises(Exception):  # noqa: B017  (timeout or reset: not served)
            probe_h1(target, timeout=1.0)
        # QUIC slots are counted by the same registry: HTTP/3 waits too (it is refused).
        for sock in held:
            sock.close()
        deadline = time.monotonic() + 5
        while True:
            try:
                probe_h1(target, timeout=1.0)
                break
            except Exception:
                assert time.monotonic() < deadline, "not served after the slots were freed"
        probe_h3(target)
    assert target.rss_growth_mib() < MAX_RSS_GROWTH_MIB


async def _open_quic(port: int, count: int) -> tuple[int, list[str]]:
    configuration = QuicConfiguration(
        is_client=True, alpn_protocols=["h3"], verify_mode=ssl.CERT_NONE, server_name="localhost"
    )
    errors: list[str] = []
    managers = []

    async def attempt() -> bool:
        manager = connect("127.0.0.1", port, configuration=configuration)
        try:
            async with asyncio.timeout(2):
                await manager.__aenter__()
        except Exception as exc:
            errors.append(type(exc).__name__)
            return False
        managers.append(manager)
        return True

    for tried in range(1, count + 1):
        if not await attempt():
            # Past the ceiling: the rest are tried at once (each waits out its 2 s).
            await asyncio.gather(*(attempt() for _ in range(count - tried)))
            break
    for manager in managers:
        await manager.__aexit__(None, None, None)
    return len(managers), errors


def test_quic_connection_ceiling_refuses_and_recovers(
    spawn: Spawn, backend: str, tls_files: DevCertificate
) -> None:
    limit = 20
    with (
        serve(spawn, backend, tls_files, "--quic-max-connections", str(limit)) as target,
        Prober(target, protocols=("h1", "h2")) as prober,
    ):
        opened, errors = asyncio.run(_open_quic(target.quic, limit + 10))
    # The warm-up connection may still be closing, so one fewer may fit.
    assert limit - 1 <= opened <= limit, (opened, errors)
    assert len(errors) == limit + 10 - opened
    prober.check()
    probe_h3(target)  # the attacker's connections are closed: HTTP/3 serves again
    assert target.rss_growth_mib() < MAX_RSS_GROWTH_MIB


def test_session_ticket_store_is_bounded_and_single_use(
    spawn: Spawn, backend: str, tls_files: DevCertificate
) -> None:
    """A client that collects tickets cannot grow the store past --quic-session-tickets:
    the oldest ticket is forgotten (its resumption is a full handshake), and a ticket
    resumes at most once."""
    from clientkit.h3 import H3Request, h3_fetch

    capacity = 3
    cafile = str(tls_files.ca_certfile)
    with serve(spawn, backend, tls_files, "--quic-session-tickets", str(capacity)) as target:
        tickets = []
        for _ in range(capacity + 1):
            result = h3_fetch(target.quic, [H3Request("/")], cafile=cafile)
            assert result.session_ticket is not None
            tickets.append(result.session_ticket)
        # The newest ticket is still kept, the first one was pushed out (the warm-up
        # connection's ticket went before it).
        newest = h3_fetch(target.quic, [H3Request("/")], cafile=cafile, session_ticket=tickets[-1])
        oldest = h3_fetch(target.quic, [H3Request("/")], cafile=cafile, session_ticket=tickets[0])
        replay = h3_fetch(target.quic, [H3Request("/")], cafile=cafile, session_ticket=tickets[-1])
    assert newest.resumed and newest.responses[0].status == 200
    assert not oldest.resumed and oldest.responses[0].status == 200
    assert not replay.resumed and replay.responses[0].status == 200


def test_metrics_listener_bounds_heads_and_scrapes(
    spawn: Spawn, backend: str, tls_files: DevCertificate
) -> None:
    """The --metrics-bind listener: heads past 8 KiB get 400, at most 4 scrapes run at
    once and each must send its head within 5 s, so slow scrapers delay a scrape by at
    most that long, and never touch the app's listeners."""
    import httpx

    with (
        serve(spawn, backend, tls_files, "--metrics-bind", "127.0.0.1:0") as target,
        Prober(target) as prober,
    ):
        port = int(target.server.wait_for(r"Metrics on http://127\.0\.0\.1:(\d+)/metrics")[1])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"GET /metrics HTTP/1.1\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n")
            assert sock.recv(100).startswith(b"HTTP/1.1 400")
        slow = _slow_sockets(port, 4)
        for sock in slow:
            sock.sendall(b"GET /metrics HTTP/1.1\r\n")
        started = time.monotonic()
        response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
        waited = time.monotonic() - started
        for sock in slow:
            sock.close()
    assert response.status_code == 200 and "quicserve_connections_open" in response.text
    assert 3.0 < waited < 7.0, waited  # queued behind the 4 slow heads until their timeout
    prober.check()
