"""``--metrics-bind``: Prometheus text over a separate plain-HTTP listener.

In-process servers on asyncio, uvloop and trio serve HTTP/1.1 (httpx), HTTP/2 (curl over
TLS) and HTTP/3 (aioquic's client); the scrape must count exactly those connections,
requests, statuses and bytes. The real command is started once per backend to show the
flag works end to end, and its mistakes are one-line errors.
"""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from quicserve import metrics
from quicserve.certs import DevCertificate

from . import test_cli as cli
from .apps import echo_app
from .helpers import curl, running_server
from .test_http3_e2e import H3Request, fetch, udp_port

env = cli.env
spawn = cli.spawn
backend = cli.backend


def parse(text: str) -> dict[str, float]:
    """``{"name{labels}": value}``, read by the Prometheus project's own parser (which
    raises on anything that is not the text exposition format)."""
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            text_labels = ",".join(f'{k}="{v}"' for k, v in sample.labels.items())
            samples[sample.name + (f"{{{text_labels}}}" if text_labels else "")] = sample.value
    return samples


async def scrape(url: str) -> dict[str, int]:
    async with httpx.AsyncClient() as client:
        response = await client.get(url)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    return parse(response.text)


@pytest.mark.client("curl")
@pytest.mark.anyio
async def test_counts_every_protocol(anyio_backend: object, tls_files: DevCertificate) -> None:
    async with running_server(
        echo_app, tls=tls_files, quic_bind=("127.0.0.1:0",), metrics_bind="127.0.0.1:0"
    ) as srv:
        assert srv.server.metrics is not None
        url = srv.server.metrics.url()
        before = await scrape(url)
        assert not any(k.startswith("quicserve_responses_total") for k in before)

        async with httpx.AsyncClient() as client:  # HTTP/1.1: one connection, 3 requests
            for path in ("/", "/echo", "/error"):
                await client.post(srv.url(path, scheme="http"), content=b"x" * 1000)
        tls_url = srv.url("/", scheme="https").replace("127.0.0.1", "localhost")
        code, _, err = await curl("--http2", "--cacert", str(tls_files.ca_certfile), tls_url)
        assert code == 0, err
        result = await fetch(udp_port(srv), [H3Request("/"), H3Request("/nope")], tls_files)
        assert [r.status for r in result.responses] == [200, 200]

        after = await scrape(url)
    assert after['quicserve_requests_total{protocol="http/1.1"}'] == 3
    assert after['quicserve_requests_total{protocol="h2"}'] == 1
    assert after['quicserve_requests_total{protocol="h3"}'] == 2
    assert after['quicserve_responses_total{code="200"}'] == 5
    assert after['quicserve_responses_total{code="500"}'] == 1
    assert after['quicserve_connections_total{protocol="h2"}'] == 1
    assert after['quicserve_connections_total{protocol="h3"}'] == 1
    # httpx may still hold its keep-alive connection: open now or closed, counted once.
    assert after['quicserve_connections_total{protocol="http/1.1"}'] == 1
    # Three bodies of 1000 bytes and their heads, the first one included (it is read
    # before the protocol is known, while the server tells HTTP/1.1 from HTTP/2).
    assert after['quicserve_received_bytes_total{protocol="http/1.1"}'] > 3000
    assert after['quicserve_sent_bytes_total{protocol="h3"}'] > 0
    assert after["quicserve_quic_datagrams_received_total"] > 0
    assert after['quicserve_handshake_failures_total{transport="tcp"}'] == 0
    assert after["quicserve_worker_restarts_total"] == 0


@pytest.mark.client("curl")
@pytest.mark.anyio
async def test_handshake_failures_and_other_paths(
    anyio_backend: object, tls_files: DevCertificate
) -> None:
    async with running_server(echo_app, tls=tls_files, metrics_bind="127.0.0.1:0") as srv:
        assert srv.server.metrics is not None
        # Plain HTTP to the TLS port: the TLS handshake fails.
        code, _, _ = await curl("--http1.1", srv.url("/", scheme="https").replace("https", "http"))
        assert code != 0
        base = srv.server.metrics.url().removesuffix("/metrics")
        async with httpx.AsyncClient() as client:
            assert (await client.get(base + "/other")).status_code == 404
            assert (await client.post(base + "/metrics")).status_code == 405
            text = (await client.get(base + "/metrics")).text
    assert parse(text)['quicserve_handshake_failures_total{transport="tcp"}'] == 1


def test_worker_restart_and_unresponsive_hooks() -> None:
    # The supervisor's events, exported by the supervisor's endpoint.
    saved = dict(metrics._process_counters)
    try:
        metrics.count_worker_restart()
        metrics.count_worker_unresponsive()
        metrics.count_worker_unresponsive()
        assert metrics._process_counters == {
            "worker_restarts": saved["worker_restarts"] + 1,
            "worker_unresponsive": saved["worker_unresponsive"] + 2,
        }
    finally:
        metrics._process_counters.update(saved)


def test_cli_metrics_bind(spawn: cli.Spawn, backend: str) -> None:
    server = spawn(
        cli.APP,
        "--backend",
        backend,
        "--insecure-bind",
        "127.0.0.1:0",
        "--metrics-bind",
        "127.0.0.1:0",
    )
    port = server.port()
    metrics_url = server.wait_for(r"Metrics on (http://127\.0\.0\.1:\d+/metrics)")[1]
    assert httpx.get(cli.local_url(port, "/hello")).status_code == 200
    samples = parse(httpx.get(metrics_url).text)
    assert samples['quicserve_responses_total{code="200"}'] == 1
    assert samples['quicserve_requests_total{protocol="http/1.1"}'] == 1
    cli.stop_and_read_stderr(server)


def test_cli_metrics_bind_errors(env: dict[str, str], busy_port: int) -> None:
    result = cli.run_cli(env, cli.APP, "--metrics-bind", "nowhere")
    cli.assert_one_line_error(result, "--metrics-bind")
    result = cli.run_cli(
        env, cli.APP, "--insecure-bind", "127.0.0.1:0", "--metrics-bind", f"127.0.0.1:{busy_port}"
    )
    cli.assert_one_line_error(result, "address already in use")


busy_port = cli.busy_port
