"""HTTP/3 over real UDP sockets, with clients we did not write.

aioquic's client (resumption, 0-RTT, Retry, QUIC v2, NAT rebinding), curl_cffi
(libcurl + ngtcp2 + nghttp3, ``CurlHttpVersion.V3ONLY``) and ``gtlsclient`` (ngtcp2's
GnuTLS example client) against a server running in-process on asyncio, uvloop or trio.
The aioquic and curl_cffi clients run in a worker thread with their own event loop.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import socket
from pathlib import Path
from typing import Any

import anyio
import anyio.to_process
import anyio.to_thread
import httpx
import pytest
from aioquic.quic.packet import QuicProtocolVersion, encode_quic_version_negotiation

from clientkit.h3 import H3Request, H3Result, h3_fetch
from clientkit.net import ipv6_loopback
from quicserve.certs import DevCertificate

from .apps import echo_app, respond
from .helpers import client_ssl_context, curl, running_server

pytestmark = pytest.mark.anyio


def udp_port(srv: Any) -> int:
    return next(a.port for a in srv.addresses if a.transport == "udp")


async def fetch(
    port: int, requests: list[H3Request], tls: DevCertificate, **kwargs: Any
) -> H3Result:
    call = functools.partial(h3_fetch, port, requests, cafile=str(tls.ca_certfile), **kwargs)
    return await anyio.to_thread.run_sync(call)


def quic_server(app: Any, tls: DevCertificate, **options: Any) -> Any:
    return running_server(app, tls=tls, quic_bind=("127.0.0.1:0",), **options)


async def test_requests_scope_and_multiplexing(
    anyio_backend: object, tls_files: DevCertificate
) -> None:
    async with quic_server(echo_app, tls_files) as srv:
        port = udp_port(srv)
        result = await fetch(
            port, [H3Request("/scope"), H3Request("/echo", "POST", b"p" * 300_000)], tls_files
        )
        scope, echo = result.responses
        assert scope.status == 200
        data = __import__("json").loads(scope.body)
        assert data["http_version"] == "3"
        assert data["scheme"] == "https"
        assert data["client"][0] == "127.0.0.1"
        assert "http.response.push" not in data["extensions"]
        assert echo.body == b"p" * 300_000
        many = await fetch(
            port,
            [H3Request("/echo", "POST", b"%d" % i) for i in range(50)],
            tls_files,
            concurrent=True,
        )
        assert sorted(r.body for r in many.responses) == sorted(b"%d" % i for i in range(50))
        stats = srv.server.registry.stats()
        assert stats["accepted"] == 2


async def test_trailers_early_hints_and_errors(
    anyio_backend: object, tls_files: DevCertificate
) -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["path"] == "/error":
            raise RuntimeError("on purpose")
        await send({"type": "http.response.early_hint", "links": [b"</a.css>; rel=preload"]})
        await send({"type": "http.response.start", "status": 200, "headers": [], "trailers": True})
        await send({"type": "http.response.body", "body": b"body"})
        await send({"type": "http.response.trailers", "headers": [(b"x-sum", b"7")]})

    async with quic_server(app, tls_files) as srv:
        result = await fetch(
            udp_port(srv),
            [H3Request("/", headers=[(b"te", b"trailers")]), H3Request("/error"), H3Request("/")],
            tls_files,
        )
        ok, error, again = result.responses
        assert ok.informational == [103]
        assert (ok.status, ok.body, ok.trailers) == (200, b"body", [(b"x-sum", b"7")])
        assert error.status == 500
        assert again.status == 200


async def test_alt_svc_on_tls_only(anyio_backend: object, tls_files: DevCertificate) -> None:
    async with quic_server(echo_app, tls_files) as srv:
        port = udp_port(srv)
        async with httpx.AsyncClient(http2=True, verify=client_ssl_context(tls_files)) as client:
            response = await client.get(srv.url("/", scheme="https"))
            assert response.headers["alt-svc"] == f'h3=":{port}"; ma=86400'
        async with httpx.AsyncClient() as client:
            response = await client.get(srv.url("/", scheme="http"))
            assert "alt-svc" not in response.headers
        result = await fetch(port, [H3Request("/")], tls_files)
        assert b"alt-svc" not in dict(result.responses[0].headers)
    async with quic_server(echo_app, tls_files, alt_svc='h3=":443"; ma=60') as srv:
        async with httpx.AsyncClient(verify=client_ssl_context(tls_files)) as client:
            response = await client.get(srv.url("/", scheme="https"))
            assert response.headers["alt-svc"] == 'h3=":443"; ma=60'


async def test_resumption_without_0rtt_by_default(
    anyio_backend: object, tls_files: DevCertificate
) -> None:
    async with quic_server(echo_app, tls_files) as srv:
        port = udp_port(srv)
        first = await fetch(port, [H3Request("/")], tls_files)
        assert first.session_ticket is not None
        assert first.session_ticket.max_early_data_size is None
        second = await fetch(port, [H3Request("/")], tls_files, session_ticket=first.session_ticket)
        assert second.resumed and not second.early_data_accepted
        assert second.responses[0].body == b"hello"
        # Our tickets carry no 0-RTT permission here, so aioquic's client offers none.
        assert srv.server.quic_stats()["early_data_rejected"] == 0


async def test_resumption_and_0rtt(anyio_backend: object, tls_files: DevCertificate) -> None:
    async with quic_server(echo_app, tls_files, quic_0rtt=True) as srv:
        port = udp_port(srv)
        first = await fetch(port, [H3Request("/")], tls_files)
        assert first.session_ticket is not None and not first.resumed
        # The next connection sends its requests in 0-RTT, before the handshake ends.
        second = await fetch(
            port,
            [H3Request("/scope"), H3Request("/echo", "POST", b"unsafe")],
            tls_files,
            session_ticket=first.session_ticket,
            concurrent=True,
        )
        assert second.resumed and second.early_data_accepted
        stats = srv.server.quic_stats()
        assert (stats["early_data_accepted"], stats["early_data_rejected"]) == (1, 0)
        scope, post = second.responses
        headers = dict(tuple(h) for h in __import__("json").loads(scope.body)["headers"])
        assert headers.get("early-data") == "1"  # RFC 8470 §5.1
        assert post.status == 425  # an unsafe method is not served from 0-RTT
        # A ticket is single-use for 0-RTT: replaying it does not resume.
        replay = await fetch(port, [H3Request("/")], tls_files, session_ticket=first.session_ticket)
        assert not replay.early_data_accepted
        assert replay.responses[0].status == 200
        stats = srv.server.quic_stats()
        assert (stats["early_data_accepted"], stats["early_data_rejected"]) == (1, 1)


async def test_retry_and_quic_v2(anyio_backend: object, tls_files: DevCertificate) -> None:
    async with quic_server(echo_app, tls_files, quic_retry="always") as srv:
        result = await fetch(udp_port(srv), [H3Request("/")], tls_files)
        assert result.retry_seen
        assert result.responses[0].body == b"hello"
        v2 = await fetch(
            udp_port(srv), [H3Request("/")], tls_files, version=QuicProtocolVersion.VERSION_2
        )
        assert v2.version == QuicProtocolVersion.VERSION_2
        assert v2.responses[0].body == b"hello"
        assert srv.server.registry.stats()["accepted"] == 2


class Rebinder:
    """A UDP relay that changes its source port on demand: NAT rebinding (RFC 9000 §9)."""

    def __init__(self, server_port: int) -> None:
        self.server = ("127.0.0.1", server_port)
        self.front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.front.bind(("127.0.0.1", 0))
        self.front.setblocking(False)
        self.back = self._new_back()
        self.client: Any = None
        self.ports: list[int] = [self.back.getsockname()[1]]

    def _new_back(self) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        return sock

    def rebind(self) -> None:
        self.back = self._new_back()
        self.ports.append(self.back.getsockname()[1])

    async def run(self) -> None:
        async def client_to_server() -> None:
            while True:
                await anyio.wait_readable(self.front)
                data, self.client = self.front.recvfrom(65536)
                self.back.sendto(data, self.server)

        async def server_to_client() -> None:
            while True:
                back = self.back
                with anyio.move_on_after(0.05):
                    await anyio.wait_readable(back)
                    data, _ = back.recvfrom(65536)
                    if self.client is not None:
                        self.front.sendto(data, self.client)

        async with anyio.create_task_group() as tg:
            tg.start_soon(client_to_server)
            tg.start_soon(server_to_client)


async def test_nat_rebinding_keeps_the_connection(
    anyio_backend: object, tls_files: DevCertificate
) -> None:
    async with quic_server(echo_app, tls_files) as srv:
        relay = Rebinder(udp_port(srv))
        async with anyio.create_task_group() as tg:
            tg.start_soon(relay.run)
            result = await fetch(
                relay.front.getsockname()[1],
                [H3Request("/scope"), H3Request("/scope"), H3Request("/scope")],
                tls_files,
                after_first=lambda client: relay.rebind(),
            )
            tg.cancel_scope.cancel()
        clients = [__import__("json").loads(r.body)["client"][1] for r in result.responses]
        assert clients[0] == relay.ports[0]
        assert clients[-1] == relay.ports[1]  # the scope follows the validated new path
        assert srv.server.registry.stats()["accepted"] == 1  # one connection throughout


@pytest.mark.client("curl_cffi")
async def test_curl_cffi_http3(anyio_backend: object, tls_files: DevCertificate) -> None:
    from curl_cffi import CurlHttpVersion
    from curl_cffi import requests as curl_requests

    payload = os.urandom(2_000_000)

    def run(port: int) -> list[Any]:
        kwargs = {"http_version": CurlHttpVersion.V3ONLY, "verify": str(tls_files.ca_certfile)}
        base = f"https://localhost:{port}"
        return [
            curl_requests.get(f"{base}/scope", **kwargs),
            curl_requests.post(f"{base}/sha256", data=payload, **kwargs),
            curl_requests.get(f"{base}/bytes/5000000", **kwargs),
        ]

    async with quic_server(echo_app, tls_files) as srv:
        scope, upload, download = await anyio.to_thread.run_sync(run, udp_port(srv))
        assert scope.status_code == 200 and scope.json()["http_version"] == "3"
        assert upload.text == f"{len(payload)} {hashlib.sha256(payload).hexdigest()}"
        assert download.content == b"x" * 5_000_000


@pytest.mark.client("gtlsclient")
async def test_gtlsclient(anyio_backend: object, tls_files: DevCertificate, tmp_path: Path) -> None:
    async with quic_server(echo_app, tls_files) as srv:
        port = udp_port(srv)
        result = await anyio.run_process(
            [
                "gtlsclient",
                "--quiet",
                "--exit-on-all-streams-close",
                f"--download={tmp_path}",
                "127.0.0.1",
                str(port),
                f"https://localhost:{port}/scope",
                f"https://localhost:{port}/bytes/300000",
            ],
            check=False,
        )
        assert result.returncode == 0, result.stderr.decode()[-500:]
        assert __import__("json").loads((tmp_path / "scope").read_bytes())["http_version"] == "3"
        assert (tmp_path / "300000").read_bytes() == b"x" * 300000


def _probe_with_garbage(port: int) -> tuple[list[bytes], bytes]:
    """Blocking socket work, run in a thread so the server's event loop keeps going."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.5)
        garbage = [
            b"",
            b"\x00",
            os.urandom(50),
            os.urandom(1500),
            b"\xc0" + os.urandom(1300),  # long header, nonsense inside
            # An Initial below the 1200-byte minimum (RFC 9000 §14.1).
            bytes([0xC3])
            + b"\x00\x00\x00\x01"
            + b"\x08"
            + os.urandom(8)
            + b"\x00"
            + os.urandom(200),
            encode_quic_version_negotiation(
                source_cid=os.urandom(8), destination_cid=os.urandom(8), supported_versions=[1]
            ),
        ]
        for datagram in garbage * 20:
            sock.sendto(datagram, ("127.0.0.1", port))
        replies = []
        try:
            while True:
                replies.append(sock.recv(65536))
        except (TimeoutError, OSError):
            pass
        # An unknown (reserved) version gets a Version Negotiation packet.
        unknown = bytes([0xC0]) + b"\x1a\x2a\x3a\x4a" + b"\x08" + os.urandom(8) + b"\x08"
        sock.sendto(unknown + os.urandom(8) + os.urandom(1200), ("127.0.0.1", port))
        return replies, sock.recv(65536)


async def test_bad_datagrams_never_stop_the_endpoint(
    anyio_backend: object, tls_files: DevCertificate
) -> None:
    async with quic_server(echo_app, tls_files, quic_retry="never") as srv:
        port = udp_port(srv)
        replies, vn = await anyio.to_thread.run_sync(_probe_with_garbage, port)
        # Answers (stateless resets, VN) are always smaller than what triggered them:
        # the endpoint cannot be used to amplify traffic.
        assert all(len(reply) < 1500 for reply in replies)
        # A VN packet is never answered with one (RFC 9000 §6.1), nor a short Initial: at
        # most the three random datagrams of each round get a reply.
        assert len(replies) <= 3 * 20
        assert vn[1:5] == b"\x00\x00\x00\x00"
        assert QuicProtocolVersion.VERSION_1.to_bytes(4, "big") in vn
        # ... and the endpoint still serves.
        result = await fetch(port, [H3Request("/")], tls_files)
        assert result.responses[0].body == b"hello"


async def test_graceful_shutdown_finishes_in_flight_request(
    anyio_backend: object, tls_files: DevCertificate
) -> None:
    started = anyio.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        started.set()
        await anyio.sleep(0.5)
        await respond(send, 200, b"done")

    async with quic_server(app, tls_files) as srv:
        async with anyio.create_task_group() as tg:
            box: dict[str, H3Result] = {}

            async def client() -> None:
                box["r"] = await fetch(udp_port(srv), [H3Request("/")], tls_files)

            tg.start_soon(client)
            await started.wait()
            srv.server.shutdown()
        assert box["r"].responses[0].body == b"done"


def _transfer_100mib(port: int, cafile: str) -> tuple[int, bytes, str, str]:
    """Download and upload 100 MiB with aioquic's client, in a process of its own so the
    client's Python does not share a core with the server's; returns what arrived as sizes
    and digests (not 200 MiB back through a pipe)."""
    size = 100 * 1024 * 1024
    payload = os.urandom(1024 * 1024) * 100
    result = h3_fetch(
        port,
        [H3Request(f"/bytes/{size}"), H3Request("/sha256", "POST", payload)],
        cafile=cafile,
        timeout=240,
    )
    download, upload = result.responses
    digest = hashlib.sha256(download.body).digest()
    return len(download.body), digest, upload.body.decode(), hashlib.sha256(payload).hexdigest()


@pytest.mark.timeout(240)
@pytest.mark.parametrize("anyio_backend", [("asyncio", {}), ("trio", {})], ids=["asyncio", "trio"])
async def test_100mib_download_and_upload_intact(
    anyio_backend: object, tls_files: DevCertificate
) -> None:
    size = 100 * 1024 * 1024
    async with quic_server(echo_app, tls_files) as srv:
        length, digest, answer, sent = await anyio.to_process.run_sync(
            _transfer_100mib, udp_port(srv), str(tls_files.ca_certfile), cancellable=True
        )
        # The download left in runs of one sendmsg each (UDP GSO) where the kernel can.
        endpoint_stats = srv.server.quic_stats()
        assert endpoint_stats["gso_sends"] > 0 or not endpoint_stats["gso_enabled"]
    assert length == size
    assert digest == hashlib.sha256(b"x" * size).digest()
    assert answer == f"{size} {sent}"


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback on this machine")
async def test_ipv6_quic_bind(anyio_backend: object, tls_files: DevCertificate) -> None:
    async with running_server(
        echo_app, tls=tls_files, quic_bind=("[::1]:0",), bind=("[::1]:0",), insecure_bind=()
    ) as srv:
        udp = next(a for a in srv.addresses if a.transport == "udp")
        assert udp.host == "::1"
        result = await fetch(udp.port, [H3Request("/scope")], tls_files, host="::1")
        assert __import__("json").loads(result.responses[0].body)["client"][0] == "::1"


async def test_qlog_keylog_and_encrypted_key(
    anyio_backend: object, tls_files: DevCertificate, tmp_path: Path
) -> None:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(tls_files.keyfile.read_bytes(), password=None)
    encrypted = tmp_path / "encrypted-key.pem"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"s3cret"),
        )
    )
    keylog = tmp_path / "keys.log"
    qlog = tmp_path / "qlog"
    async with running_server(
        echo_app,
        tls=tls_files,
        quic_bind=("127.0.0.1:0",),
        keyfile=str(encrypted),
        keyfile_password="s3cret",
        ssl_keylog_file=str(keylog),
        quic_qlog_dir=str(qlog),
    ) as srv:
        result = await fetch(udp_port(srv), [H3Request("/")], tls_files)
        assert result.responses[0].body == b"hello"
        async with httpx.AsyncClient(verify=client_ssl_context(tls_files)) as client:
            assert (await client.get(srv.url("/", scheme="https"))).status_code == 200
    lines = keylog.read_text().splitlines()
    assert any(line.startswith("CLIENT_HANDSHAKE_TRAFFIC_SECRET") for line in lines)
    assert (
        len({line.split()[1] for line in lines if line.startswith("SERVER_TRAFFIC_SECRET_0")}) >= 2
    )
    qlogs = list(qlog.iterdir())
    assert qlogs and qlogs[0].stat().st_size > 0


async def test_vanished_client_is_dropped_after_idle_timeout(
    anyio_backend: object, tls_files: DevCertificate
) -> None:
    from aioquic.quic.connection import QuicConnection

    from clientkit.h3 import client_configuration

    async with quic_server(echo_app, tls_files, quic_idle_timeout=0.5) as srv:
        port = udp_port(srv)
        client = QuicConnection(configuration=client_configuration(str(tls_files.ca_certfile)))
        client.connect(("127.0.0.1", port), now=0.0)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for datagram, _ in client.datagrams_to_send(now=0.0):
                sock.sendto(datagram, ("127.0.0.1", port))
            # The client sends its Initial and is never heard from again.
            with anyio.fail_after(5):
                while not srv.server.registry.stats()["by_transport"].get("udp"):
                    await anyio.sleep(0.02)
            with anyio.fail_after(5):
                while srv.server.registry.stats()["by_transport"].get("udp"):
                    await anyio.sleep(0.1)
        assert len(srv.server.registry) == 0


async def test_timer_wheel_holds_a_few_entries_per_connection(
    anyio_backend: object, tls_files: DevCertificate
) -> None:
    # Every PING makes the connection's deadline move from the idle timeout to the ACK
    # timer and back. Entries must be reused, not left behind: before, each cycle left
    # one in the wheel for a whole idle timeout (600 PINGs, 600 entries).
    from aioquic.quic.packet import QuicFrameType

    from .adversarial.quic_attacker import RawQuicClient

    async with quic_server(echo_app, tls_files) as srv:
        listener = srv.server._quic_listeners[0]

        def pings() -> None:
            clients = [RawQuicClient(udp_port(srv), str(tls_files.ca_certfile)) for _ in range(3)]
            for client in clients:
                client.connect()
            for _ in range(200):
                for client in clients:
                    client.send_frames([(QuicFrameType.PING, b"")])
                    client.pump(0.002)
            for client in clients:
                assert client.terminated is None
                client.close()

        await anyio.to_thread.run_sync(pings)
        assert listener.timer_entries <= 3 * 3, listener.timer_entries


async def test_a_failing_connection_is_closed_alone_and_logged(
    anyio_backend: object,
    tls_files: DevCertificate,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from quicserve.protocol import http3

    original = http3.H3Protocol._parse_request

    def explode_on_marker(self: Any, stream_id: int, raw: Any) -> Any:
        if (b"x-explode", b"1") in raw:
            raise RuntimeError("a bug in the server, simulated")
        return original(self, stream_id, raw)

    monkeypatch.setattr(http3.H3Protocol, "_parse_request", explode_on_marker)
    async with quic_server(echo_app, tls_files) as srv:
        port = udp_port(srv)
        with pytest.raises((TimeoutError, ConnectionError)):
            await fetch(
                port, [H3Request("/", headers=[(b"x-explode", b"1")])], tls_files, timeout=3
            )
        # The endpoint and other connections are unaffected.
        result = await fetch(port, [H3Request("/")], tls_files)
        assert result.responses[0].body == b"hello"
    assert any("Unexpected error" in r.getMessage() for r in caplog.records)


async def test_a_server_bug_after_a_request_closes_only_its_connection(
    anyio_backend: object,
    tls_files: DevCertificate,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An exception in the server's own code after the app call (here: releasing the
    stream) closes that connection and is logged; the endpoint keeps serving."""
    from quicserve.protocol import http3

    original = http3.H3Protocol.stream_done
    exploded: list[int] = []

    def explode_once(self: Any, stream_id: int, now: float) -> None:
        if not exploded:
            exploded.append(stream_id)
            raise RuntimeError("a bug in the server, simulated")
        original(self, stream_id, now)

    monkeypatch.setattr(http3.H3Protocol, "stream_done", explode_once)
    async with quic_server(echo_app, tls_files) as srv:
        port = udp_port(srv)
        # The first response is complete before the bug strikes; the second request may
        # or may not make it before the connection is closed.
        with contextlib.suppress(TimeoutError, ConnectionError):
            await fetch(port, [H3Request("/"), H3Request("/")], tls_files, timeout=3)
        # Before the fix the exception stopped the whole endpoint: nothing answered here.
        result = await fetch(port, [H3Request("/")], tls_files)
        assert result.responses[0].body == b"hello"
    assert exploded
    assert any("Unexpected error serving a stream" in r.getMessage() for r in caplog.records)


@pytest.mark.client("curl", "curl_cffi")
async def test_head_has_no_body_on_every_protocol(
    anyio_backend: object, tls_files: DevCertificate
) -> None:
    async with quic_server(echo_app, tls_files) as srv:
        for flag in ("--http1.1", "--http2"):
            result = await anyio.run_process(
                [
                    "curl",
                    "-sS",
                    "-I",
                    flag,
                    "--cacert",
                    str(tls_files.ca_certfile),
                    srv.url("/", scheme="https"),
                ],
                check=False,
            )
            assert result.returncode == 0, result.stderr
            assert b" 200" in result.stdout.splitlines()[0]
            assert b"content-length: 5" in result.stdout.lower()  # the GET length, no body
        # HTTP/3 through libcurl: aioquic's client checks content-length against the body
        # without knowing the request was HEAD, so it cannot judge this case.
        from curl_cffi import CurlHttpVersion
        from curl_cffi import requests as curl_requests

        def head_then_get(port: int) -> tuple[Any, Any]:
            kwargs = {"http_version": CurlHttpVersion.V3ONLY, "verify": str(tls_files.ca_certfile)}
            url = f"https://localhost:{port}/"
            return curl_requests.head(url, **kwargs), curl_requests.get(url, **kwargs)

        head, get = await anyio.to_thread.run_sync(head_then_get, udp_port(srv))
        assert (head.status_code, head.content, head.headers["content-length"]) == (200, b"", "5")
        assert get.content == b"hello"


async def test_malformed_request_resets_only_its_stream(
    anyio_backend: object, tls_files: DevCertificate
) -> None:
    async with quic_server(echo_app, tls_files) as srv:
        result = await fetch(
            udp_port(srv),
            [
                # RFC 9114 §4.2 / RFC 9113 §8.2.1: no leading whitespace in a field value.
                H3Request("/", headers=[(b"x-bad", b" leading space")]),
                H3Request("/", headers=[(b"connection", b"keep-alive")]),  # §4.2
                H3Request("/"),
            ],
            tls_files,
        )
        bad_value, connection_field, ok = result.responses
        assert bad_value.reset == 0x10E  # H3_MESSAGE_ERROR, that stream only
        assert connection_field.reset == 0x10E
        assert ok.body == b"hello"  # same connection, still serving
        assert srv.server.registry.stats()["accepted"] == 1


@pytest.mark.client("curl")
async def test_connection_specific_response_fields_are_not_sent(
    anyio_backend: object, tls_files: DevCertificate
) -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        # Written for HTTP/1.1; HTTP/2 and HTTP/3 must not carry these (RFC 9114 §4.2).
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "trailers": True,
                "headers": [(b"connection", b"close"), (b"keep-alive", b"5"), (b"x-ok", b"1")],
            }
        )
        await send({"type": "http.response.body", "body": b"body"})
        await send(
            {"type": "http.response.trailers", "headers": [(b"connection", b"x"), (b"x-t", b"2")]}
        )

    async with quic_server(app, tls_files) as srv:
        # aioquic's client treats a Connection field as malformed, so a clean answer shows
        # it was dropped.
        result = await fetch(
            udp_port(srv), [H3Request("/", headers=[(b"te", b"trailers")])], tls_files
        )
        response = result.responses[0]
        assert (response.status, response.body) == (200, b"body")
        assert dict(response.headers).get(b"x-ok") == b"1"
        assert b"connection" not in dict(response.headers)
        assert response.trailers == [(b"x-t", b"2")]
        code, out, err = await curl(
            "--http2",
            "-sS",
            "-i",
            "--cacert",
            str(tls_files.ca_certfile),
            srv.url("/", scheme="https"),
        )
        assert code == 0, err
        assert b"x-ok: 1" in out and b"connection:" not in out.lower()


async def test_the_certificate_and_key_log_are_loaded_once(
    anyio_backend: object,
    tls_files: DevCertificate,
    tmp_path: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # TCP and two QUIC listeners share one TLS setup: the certificate used to be read for
    # the TLS context, once more to check it, and once per QUIC listener; the key log was
    # opened once per QUIC configuration.
    from aioquic.quic.configuration import QuicConfiguration

    loads: list[str] = []
    original = QuicConfiguration.load_cert_chain

    def counting(self: QuicConfiguration, *args: Any, **kwargs: Any) -> None:
        loads.append(str(args[0]))
        original(self, *args, **kwargs)

    monkeypatch.setattr(QuicConfiguration, "load_cert_chain", counting)
    keylog = tmp_path / "keys.log"
    async with running_server(
        echo_app,
        tls=tls_files,
        quic_bind=("127.0.0.1:0", "127.0.0.1:0"),
        ssl_keylog_file=str(keylog),
    ) as srv:
        ports = [a.port for a in srv.addresses if a.transport == "udp"]
        assert len(ports) == 2
        for port in ports:
            result = await fetch(port, [H3Request("/scope")], tls_files)
            assert result.responses[0].status == 200
        configurations = {id(listener.configuration) for listener in srv.server._quic_listeners}
        files = {
            id(listener.configuration.secrets_log_file) for listener in srv.server._quic_listeners
        }
    assert loads == [str(tls_files.certfile)]
    assert len(configurations) == 2 and len(files) == 1
    # Both connections' secrets went to the one file.
    assert keylog.read_text().count("CLIENT_HANDSHAKE_TRAFFIC_SECRET") == 2
