"""``--metrics-bind`` for a whole fleet: one endpoint whose numbers add up over workers.

The aggregation is plain data (``quicserve.stats``) and is tested without sockets. The
real command then runs with ``--workers 1`` (one process serves the endpoint) and
``--workers 4`` (the supervisor asks every worker and sums), on asyncio and trio: HTTP/1.1,
HTTP/2 and HTTP/3 requests spread over the workers must add up exactly, per protocol, in
the request counters and in the OpenTelemetry-named histogram; a SIGKILLed worker, a
reload of every worker (SIGHUP) and a removed one (SIGTTOU) must not make a counter go
backwards. Every scrape is read by the Prometheus project's own parser. The supervisor's
listener keeps the single-process bounds (8 KiB heads, 4 scrapes, 5 s to send a head)
and does not wait for a worker that does not answer (SIGSTOP) for more than a second.
"""

from __future__ import annotations

import contextlib
import os
import re
import selectors
import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as ws_connect

from quicserve import metrics
from quicserve.certs import DevCertificate
from quicserve.stats import (
    HTTP,
    REQUEST_BUCKETS,
    WEBSOCKET,
    FleetTotals,
    RequestStats,
    Snapshot,
    method_label,
    render,
)

from . import test_cli
from .helpers import client_ssl_context
from .test_cli import CLIServer, Spawn, app_args
from .test_workers import APP, H3Clients, h3_clients, slot_pids, wait_until

env = test_cli.env
spawn = test_cli.spawn
__all__ = ["h3_clients"]  # a fixture, used by name

DURATION = "http_server_request_duration_seconds"


# -- the aggregation, without sockets -------------------------------------------------------


def families(text: str) -> dict[str, Any]:
    """The exposition, parsed by prometheus_client (which raises on a bad line)."""
    return {family.name: family for family in text_string_to_metric_families(text)}


def test_request_stats_buckets_methods_and_active() -> None:
    stats = RequestStats()
    first = stats.start(HTTP, "2", b"GET")
    second = stats.start(HTTP, "2", b"BREW")
    assert stats.active == {(HTTP, "2", "GET"): 1, (HTTP, "2", "_OTHER"): 1}
    # 0.3 s ago: the 0.5 bucket (le is inclusive, 0.25 is too small).
    stats.finish((first[0] - 0.3, first[1]), 200)
    stats.finish(second, 0)  # no response
    stats.finish(stats.start(WEBSOCKET, "1.1", b"GET"), 101)
    assert stats.active == {
        (HTTP, "2", "GET"): 0,
        (HTTP, "2", "_OTHER"): 0,
        (WEBSOCKET, "1.1", "GET"): 0,
    }
    row = stats.rows[(HTTP, "2", "GET", 200)]
    assert len(row) == len(REQUEST_BUCKETS) + 2
    assert row[REQUEST_BUCKETS.index(0.5)] == 1 and sum(row[:-1]) == 1
    assert 0.3 <= row[-1] < 0.5
    assert [method_label(m) for m in (b"GET", b"get", b"PATCH", b"X" * 100)] == [
        "GET",
        "_OTHER",
        "PATCH",
        "_OTHER",
    ]

    snapshot = Snapshot()
    stats.fill(snapshot)
    parsed = families(render(snapshot, {}))
    duration = {
        (s.name, s.labels.get("le"), s.labels.get("http_response_status_code")): s.value
        for s in parsed[DURATION].samples
    }
    assert parsed[DURATION].type == "histogram"
    assert duration[(DURATION + "_bucket", "0.25", "200")] == 0
    assert duration[(DURATION + "_bucket", "0.5", "200")] == 1
    assert duration[(DURATION + "_bucket", "+Inf", "200")] == 1
    assert duration[(DURATION + "_count", None, "200")] == 1
    # The request without a response has no status code but an error type.
    nostatus = [
        s
        for s in parsed[DURATION].samples
        if s.name.endswith("_count") and "http_response_status_code" not in s.labels
    ]
    assert [s.labels["error_type"] for s in nostatus] == ["_OTHER"]
    ws = parsed["quicserve_websocket_sessions"]
    assert ws.type == "counter"
    assert [(s.labels, s.value) for s in ws.samples if s.name.endswith("_total")] == [
        ({"network_protocol_version": "1.1", "http_response_status_code": "101"}, 1)
    ]


def _counter(name: str, value: int, gauge: int = 0) -> Snapshot:
    snapshot = Snapshot()
    snapshot.counters[name] = value
    snapshot.gauges["open"] = gauge
    snapshot.histograms[DURATION + '{v="1"}'] = [value, 0, 0.5 * value]
    return snapshot


def test_fleet_totals_never_go_backwards() -> None:
    totals = FleetTotals()
    a, b, c = object(), object(), object()
    totals.update(a, _counter("requests", 5, gauge=2))
    totals.update(b, _counter("requests", 7, gauge=1))
    assert totals.total().counters == {"requests": 12}
    assert totals.total().gauges == {"open": 3}
    # a is killed: its last numbers stay, its open connections do not.
    totals.gone(a)
    assert totals.total().counters == {"requests": 12}
    assert totals.total().gauges == {"open": 1}
    assert totals.total().histograms[DURATION + '{v="1"}'] == [12, 0, 6.0]
    # Its replacement starts from zero; b goes on counting; the sum only grows.
    totals.update(c, _counter("requests", 0))
    totals.update(b, _counter("requests", 9))
    assert totals.total().counters == {"requests": 14}
    totals.gone(b)
    totals.gone(b)  # twice: nothing more
    totals.gone(c)
    assert totals.total().counters == {"requests": 14}
    assert totals.total().gauges == {}


def test_snapshot_survives_the_link_and_drops_malformed_series() -> None:
    snapshot = _counter("requests", 3, gauge=1)
    assert Snapshot.from_json(snapshot.to_json()) == snapshot
    bad = {"c": {"x": "1", "y": 2, 3: 4}, "g": [], "h": {"z": ["a"], "w": [1, 2.5]}}
    assert Snapshot.from_json(bad) == Snapshot(counters={"y": 2}, histograms={"w": [1, 2.5]})
    assert Snapshot.from_json("nonsense") == Snapshot()


class FakeWorker:
    """What FleetEndpoint sees of a worker: ``ready`` and the messages sent to it."""

    def __init__(self) -> None:
        self.ready = True
        self.sent: list[dict[str, Any]] = []

    def send(self, **message: Any) -> None:
        self.sent.append(message)


def test_a_round_ends_when_the_last_worker_answers_or_exits() -> None:
    """The supervisor's endpoint driven by hand, as its selectors loop would: a scrape asks
    both workers; one answers, the other exits instead; the scrape gets both workers'
    counts (the gone one's from its earlier answer) at once, without waiting for 1 s."""
    selector = selectors.DefaultSelector()
    answering, exiting = FakeWorker(), FakeWorker()
    endpoint = metrics.FleetEndpoint("127.0.0.1:0", selector, lambda: [answering, exiting])

    def step() -> None:
        for key, events in selector.select(0.05):
            key.data(events)
        endpoint.tick()

    try:
        endpoint.snapshot_received(exiting, {"snapshot": 0, "metrics": _counter("r", 4).to_json()})
        client = socket.create_connection(endpoint.address, timeout=5)
        client.sendall(b"GET /metrics HTTP/1.1\r\n\r\n")
        for _ in range(100):
            if answering.sent:
                break
            step()
        assert answering.sent == exiting.sent == [{"scrape": 1}]
        began = time.monotonic()
        endpoint.snapshot_received(
            answering, {"snapshot": 1, "metrics": _counter("r", 3).to_json()}
        )
        endpoint.worker_gone(exiting)  # the round ends here: nobody left to wait for
        client.setblocking(False)
        answer = b""
        while b"r 7" not in answer and time.monotonic() - began < 2:
            step()
            with contextlib.suppress(BlockingIOError):
                answer += client.recv(65536)
        client.close()
        assert answer.startswith(b"HTTP/1.1 200 OK")
        parsed = families(answer.split(b"\r\n\r\n", 1)[1].decode())
        assert parsed["r"].samples[0].value == 7
        assert parsed["quicserve_metrics_stale_workers"].samples[0].value == 0
        assert time.monotonic() - began < metrics.WORKER_TIMEOUT
    finally:
        endpoint.close()
        selector.close()


# -- the real command ----------------------------------------------------------------------


def scrape(url: str) -> dict[str, float]:
    """``{"name{labels}": value}`` (labels in exposition order), via prometheus_client."""
    response = httpx.get(url, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            text = ",".join(f'{k}="{v}"' for k, v in sample.labels.items())
            samples[sample.name + (f"{{{text}}}" if text else "")] = sample.value
    return samples


def by_version(samples: dict[str, float], suffix: str = "_count") -> dict[str, float]:
    """The histogram's request counts summed per ``network_protocol_version``."""
    totals: dict[str, float] = {}
    for key, value in samples.items():
        if key.startswith(DURATION + suffix + "{"):
            version = re.search(r'network_protocol_version="([^"]+)"', key)
            assert version is not None
            totals[version[1]] = totals.get(version[1], 0) + value
    return totals


def requests_by_protocol(samples: dict[str, float]) -> dict[str, float]:
    return {
        match[1]: value
        for key, value in samples.items()
        if (match := re.fullmatch(r'quicserve_requests_total\{protocol="([^"]+)"\}', key))
    }


def start(
    spawn: Spawn, backend: str, tls: DevCertificate, workers: int, *extra: str
) -> tuple[CLIServer, int, int, str]:
    """The test app on TLS TCP and QUIC with --metrics-bind: (server, tcp, udp, url)."""
    server = spawn(
        APP,
        *app_args(backend, tls, workers=workers),
        *("--bind", "127.0.0.1:0", "--metrics-bind", "127.0.0.1:0"),
        *extra,
    )
    if workers > 1:
        server.wait_for(r"All \d+ workers ready", timeout=30)
    url = server.wait_for(r"Metrics on (http://127\.0\.0\.1:\d+/metrics)", timeout=30)[1]
    udp = int(server.wait_for(r"Listening on https://127\.0\.0\.1:(\d+) \(UDP\)", timeout=30)[1])
    tcp = int(server.wait_for(r"Listening on https://127\.0\.0\.1:(\d+) \(TCP\)", timeout=30)[1])
    return server, tcp, udp, url


def load(tcp: int, udp: int, tls: DevCertificate, h3: H3Clients) -> tuple[dict[str, int], set[int]]:
    """Requests over new connections on every protocol: (count per HTTP version, pids)."""
    context = client_ssl_context(tls)
    base = f"https://localhost:{tcp}"
    pids: set[int] = set()
    for method in ["GET"] * 10 + ["POST", "BREW"]:  # 12 HTTP/1.1 connections
        response = httpx.request(method, base + "/pid", verify=context)
        assert response.status_code == 200 and response.http_version == "HTTP/1.1"
        pids.add(response.json()["pid"])
    for _ in range(4):  # 4 HTTP/2 connections, 3 requests each
        with httpx.Client(http2=True, verify=context) as client:
            for _ in range(3):
                response = client.get(base + "/pid")
                assert response.http_version == "HTTP/2"
                pids.add(response.json()["pid"])
    sessions = h3.run(h3.load(8, 2, 0))  # 8 HTTP/3 connections, 2 requests each
    pids |= {answer["pid"] for answers in sessions for answer in answers}
    # A WebSocket the app neither accepts nor denies: refused with 500.
    # (A context of its own: httpx set ALPN h2 on the other one.)
    with pytest.raises(InvalidStatus):
        ws_connect(f"wss://localhost:{tcp}/ws", ssl=client_ssl_context(tls), open_timeout=10)
    return {"1.1": 12, "2": 12, "3": 16}, pids


@pytest.mark.parametrize("workers", [1, 4])
@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_one_endpoint_adds_up_over_workers(
    spawn: Spawn,
    backend: str,
    workers: int,
    tls_files: DevCertificate,
    h3_clients: list[H3Clients],
) -> None:
    # Every QUIC connection proves its address with a Retry first (counted both ways).
    server, tcp, udp, url = start(spawn, backend, tls_files, workers, "--quic-retry", "always")
    h3 = H3Clients(udp, tls_files)
    h3_clients.append(h3)
    expected, pids = load(tcp, udp, tls_files, h3)

    # A request is counted when its app call is over, just after its response left.
    wait_until(lambda: by_version(scrape(url)) == expected, 10)
    samples = scrape(url)
    assert by_version(samples) == expected
    assert requests_by_protocol(samples) == {"http/1.1": 13, "h2": 12, "h3": 16}  # + the ws
    assert by_version(samples, "_bucket") != {}  # buckets are there; the parser checked them
    method_counts = {
        m: sum(v for k, v in samples.items() if k.startswith(DURATION + "_count") and m in k)
        for m in ('"POST"', '"_OTHER"')
    }
    assert method_counts == {'"POST"': 1, '"_OTHER"': 1}
    assert (
        samples[
            'quicserve_websocket_sessions_total{network_protocol_version="1.1",'
            'http_response_status_code="500"}'
        ]
        == 1
    )
    assert samples["quicserve_quic_handshakes_total"] == 8
    assert samples["quicserve_quic_retry_sent_total"] == 8
    assert samples["quicserve_quic_retry_validated_total"] == 8
    assert all(v == 0 for k, v in samples.items() if k.startswith("http_server_active_requests"))
    if workers == 1:
        assert len(pids) == 1
        test_cli.stop_and_read_stderr(server)
        return
    assert len(pids) > 1, "the requests did not spread over the workers"
    assert samples["quicserve_workers"] == 4
    assert samples["quicserve_metrics_stale_workers"] == 0
    assert samples["quicserve_worker_restarts_total"] == 0

    # A worker killed outright: what it counted stays, the restart is counted.
    victim = slot_pids(server)[0]
    server_pids = set(slot_pids(server).values())
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: scrape(url)["quicserve_worker_restarts_total"] == 1, 15)
    wait_until(lambda: len(set(slot_pids(server).values()) - server_pids) == 1, 30)
    samples = scrape(url)
    assert by_version(samples) == expected
    assert samples["quicserve_workers"] == 4

    # Every worker replaced (SIGHUP): each old one drains, sends its final numbers, exits.
    server.signal(signal.SIGHUP)
    wait_until(lambda: server.stderr.count("finished draining") == 4, 60)
    samples = scrape(url)
    assert by_version(samples) == expected
    assert samples["quicserve_workers"] == 4

    # One slot less (SIGTTOU): the worker drains, sends its final numbers and exits.
    server.signal(signal.SIGTTOU)
    server.wait_for(r"Worker 3 removed \(now 3\)", timeout=30)
    samples = scrape(url)
    assert by_version(samples) == expected
    assert requests_by_protocol(samples) == {"http/1.1": 13, "h2": 12, "h3": 16}
    assert samples["quicserve_workers"] == 3
    stderr = test_cli.stop_and_read_stderr(server)
    assert "Traceback" not in stderr, stderr[stderr.find("Traceback") - 300 :]


def _head(port: int, data: bytes, timeout: float = 5) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        answer = b""
        # Until the server closes (connection: close); unread input makes that a reset.
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                answer += chunk
        return answer


def test_supervisor_endpoint_keeps_its_bounds(spawn: Spawn, tls_files: DevCertificate) -> None:
    """Heads past 8 KiB get 400, other paths and methods their errors; a worker that does
    not answer (stopped) delays a scrape by about 1 s and is reported; at most 4 scrapes
    run at once and each must send its head within 5 s."""
    server, _, _, url = start(spawn, "asyncio", tls_files, 2)
    port = int(url.split(":")[2].split("/")[0])
    assert _head(port, b"GET /metrics HTTP/1.1\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n").startswith(
        b"HTTP/1.1 400"
    )
    assert _head(port, b"GET /other HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 404")
    assert _head(port, b"POST /metrics HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 405")
    head = _head(port, b"HEAD /metrics HTTP/1.1\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and head.endswith(b"\r\n\r\n")

    stopped = slot_pids(server)[1]
    os.kill(stopped, signal.SIGSTOP)
    try:
        began = time.monotonic()
        samples = scrape(url)
        waited = time.monotonic() - began
    finally:
        os.kill(stopped, signal.SIGCONT)
    assert 0.9 < waited < 3.0, waited
    assert samples["quicserve_metrics_stale_workers"] == 1
    assert samples["quicserve_metrics_worker_timeouts_total"] == 1
    wait_until(lambda: scrape(url)["quicserve_metrics_stale_workers"] == 0, 10)

    slow = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(4)]
    for sock in slow:
        sock.sendall(b"GET /metrics HTTP/1.1\r\n")
    with ThreadPoolExecutor(1) as pool:
        began = time.monotonic()
        queued = pool.submit(httpx.get, url, timeout=10)
        # Meanwhile the supervisor's loop goes on: a signal is handled at once.
        server.signal(signal.SIGTTIN)
        server.wait_for(r"SIGTTIN: added worker 2 \(now 3\)", timeout=1)
        assert time.monotonic() - began < 2
        response = queued.result()
        waited = time.monotonic() - began
    answers = [sock.recv(100) for sock in slow]
    for sock in slow:
        sock.close()
    assert response.status_code == 200 and "quicserve_workers 3" in response.text
    assert 3.0 < waited < 7.0, waited  # queued behind the 4 slow heads until their timeout
    assert all(answer.startswith(b"HTTP/1.1 400") for answer in answers), answers
    stderr = test_cli.stop_and_read_stderr(server)
    assert "did not answer within 1 s" in stderr
    assert "Traceback" not in stderr, stderr[stderr.find("Traceback") - 300 :]
