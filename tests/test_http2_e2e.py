"""HTTP/2 over real sockets: curl, httpx, h2load and an h2-package client.

Covers ALPN h2 over TLS, prior-knowledge h2c and ``Upgrade: h2c`` on cleartext, flow
control both ways, trailers, push, early hints, GOAWAY on graceful shutdown. Every test
runs on asyncio, uvloop and trio.
"""

from __future__ import annotations

import hashlib
import ssl
from typing import Any

import anyio
import h2.config
import h2.connection
import h2.events
import h2.settings
import httpx
import pytest

from quicserve.certs import DevCertificate

from .apps import echo_app, respond
from .helpers import client_ssl_context, curl, running_server

pytestmark = pytest.mark.anyio


class H2Client:
    """A minimal HTTP/2 client on the ``h2`` package, for what curl and httpx hide."""

    def __init__(self, stream: Any, settings: dict[int, int] | None = None) -> None:
        self.stream = stream
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        self.conn.initiate_connection()
        if settings:
            self.conn.update_settings(settings)
        self.events: list[Any] = []

    @classmethod
    async def connect(
        cls, port: int, tls: DevCertificate | None = None, settings: dict[int, int] | None = None
    ) -> H2Client:
        stream: Any = await anyio.connect_tcp("127.0.0.1", port)
        if tls is not None:
            context = client_ssl_context(tls)
            context.set_alpn_protocols(["h2"])
            stream = await anyio.streams.tls.TLSStream.wrap(
                stream, hostname="localhost", ssl_context=context
            )
        client = cls(stream, settings)
        await client.flush()
        return client

    async def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            await self.stream.send(data)

    async def pump(self) -> list[Any]:
        """Read once and return the h2 events it produced."""
        data = await self.stream.receive()
        events = self.conn.receive_data(data)
        await self.flush()
        self.events.extend(events)
        return events

    async def request(
        self,
        path: str,
        method: str = "GET",
        body: bytes = b"",
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> int:
        stream_id = self.conn.get_next_available_stream_id()
        self.conn.send_headers(
            stream_id,
            [
                (b":method", method.encode()),
                (b":path", path.encode()),
                (b":scheme", b"https"),
                (b":authority", b"localhost"),
                *(headers or []),
            ],
            end_stream=not body,
        )
        if body:
            self.conn.send_data(stream_id, body, end_stream=True)
        await self.flush()
        return stream_id

    async def response(self, stream_id: int) -> tuple[list[tuple[bytes, bytes]], bytes, list[Any]]:
        """Collect headers, body and trailers of ``stream_id`` until it ends."""
        headers: list[tuple[bytes, bytes]] = []
        body = bytearray()
        trailers: list[Any] = []
        with anyio.fail_after(10):
            while True:
                for event in await self.pump():
                    if getattr(event, "stream_id", None) != stream_id:
                        continue
                    if isinstance(event, h2.events.ResponseReceived):
                        headers = event.headers
                    elif isinstance(event, h2.events.DataReceived):
                        body += event.data
                        self.conn.acknowledge_received_data(event.flow_controlled_length, stream_id)
                    elif isinstance(event, h2.events.TrailersReceived):
                        trailers = event.headers
                    elif isinstance(event, h2.events.StreamEnded | h2.events.StreamReset):
                        await self.flush()
                        return headers, bytes(body), trailers
                await self.flush()


@pytest.mark.client("curl")
async def test_curl_http2_over_tls(anyio_backend: object, tls_files: DevCertificate) -> None:
    async with running_server(echo_app, tls=tls_files) as srv:
        code, out, err = await curl(
            "--http2", "--cacert", str(tls_files.ca_certfile), "-i", srv.url("/", scheme="https")
        )
        assert code == 0, err
        assert out.startswith(b"HTTP/2 200")
        assert out.endswith(b"hello")
        code, out, err = await curl(
            "--http2",
            "--cacert",
            str(tls_files.ca_certfile),
            "--data-binary",
            "abc" * 1000,
            srv.url("/echo", scheme="https"),
        )
        assert (code, out) == (0, b"abc" * 1000), err


@pytest.mark.client("curl")
async def test_curl_h2c_prior_knowledge_and_upgrade(anyio_backend: object, h1_engine: str) -> None:
    # The Upgrade: h2c request is read by the HTTP/1.1 engine: each of them.
    async with running_server(echo_app, http1_engine=h1_engine) as srv:
        code, out, err = await curl("--http2-prior-knowledge", "-i", srv.url("/scope"))
        assert code == 0, err
        assert out.startswith(b"HTTP/2 200")
        assert b'"http_version": "2"' in out
        # curl --http2 on cleartext sends "Upgrade: h2c" (RFC 7540 §3.2).
        code, out, err = await curl("--http2", "-v", srv.url("/scope"))
        assert code == 0, err
        assert b"101 Switching Protocols" in err
        assert b'"http_version": "2"' in out
        # A request with a body is served over HTTP/1.1 instead of upgrading.
        code, out, err = await curl("--http2", "--data-binary", "xyz", srv.url("/echo"))
        assert (code, out) == (0, b"xyz"), err


async def test_httpx_http2_scope_and_multiplexing(
    anyio_backend: object, tls_files: DevCertificate
) -> None:
    async with running_server(echo_app, tls=tls_files) as srv:
        async with httpx.AsyncClient(http2=True, verify=client_ssl_context(tls_files)) as client:
            results: list[httpx.Response] = []

            async def one(i: int) -> None:
                results.append(
                    await client.post(srv.url("/echo", scheme="https"), content=b"%d" % i)
                )

            async with anyio.create_task_group() as tg:
                for i in range(50):
                    tg.start_soon(one, i)
            assert sorted(r.content for r in results) == sorted(b"%d" % i for i in range(50))
            assert {r.http_version for r in results} == {"HTTP/2"}
            scope = (await client.get(srv.url("/scope", scheme="https"))).json()
            assert scope["http_version"] == "2"
            assert scope["scheme"] == "https"
            assert "http.response.push" in scope["extensions"]
        # All 51 requests shared one connection.
        assert srv.server.registry.total_accepted == 1


async def test_large_transfers_with_flow_control(
    anyio_backend: object, tls_files: DevCertificate
) -> None:
    async with running_server(echo_app, tls=tls_files) as srv:
        async with httpx.AsyncClient(
            http2=True, verify=client_ssl_context(tls_files), timeout=30
        ) as client:
            size = 8 * 1024 * 1024
            response = await client.get(srv.url(f"/bytes/{size}", scheme="https"))
            assert response.http_version == "HTTP/2"
            assert response.content == b"x" * size
            payload = bytes(range(256)) * (size // 256)
            response = await client.post(srv.url("/sha256", scheme="https"), content=payload)
            assert response.text == f"{size} {hashlib.sha256(payload).hexdigest()}"


@pytest.mark.client("curl")
async def test_upload_to_a_slow_app_reopens_the_window(
    anyio_backend: object, tmp_path: Any
) -> None:
    """The app reads slower than curl sends: once the 64 KiB window is used up, only our
    WINDOW_UPDATEs let the upload go on (they used to wait for an unrelated write, and
    the upload hung)."""

    async def slow_app(scope: Any, receive: Any, send: Any) -> None:
        received = 0
        while True:
            message = await receive()
            received += len(message.get("body", b""))
            await anyio.sleep(0.001)
            if not message.get("more_body"):
                break
        await respond(send, 200, b"%d" % received)

    body = tmp_path / "upload.bin"
    body.write_bytes(b"u" * (3 * 1024 * 1024))
    async with running_server(slow_app) as srv:
        code, out, err = await curl(
            "--http2-prior-knowledge", "--data-binary", f"@{body}", srv.url("/")
        )
    assert code == 0, err
    assert out == b"%d" % (3 * 1024 * 1024)


async def test_slow_reader_gets_backpressure(anyio_backend: object) -> None:
    """A client that never opens its window stalls the app's send(), not server memory."""
    progress: dict[str, int] = {"sent": 0}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        chunk = b"y" * 16384
        for _ in range(1000):  # 16 MiB if nobody stopped us
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            progress["sent"] += len(chunk)
        await send({"type": "http.response.body", "body": b""})

    async with running_server(app) as srv:
        client = await H2Client.connect(srv.port())
        await client.request("/")
        with anyio.move_on_after(1.0):
            while True:
                await client.pump()  # read, but never acknowledge: the window stays shut
        # 64 KiB default window + our per-stream buffer (64 KiB) + one chunk at most.
        assert progress["sent"] <= 65535 + 65536 + 16384
        await client.stream.aclose()


async def test_trailers_and_early_hints(anyio_backend: object) -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send(
            {"type": "http.response.early_hint", "links": [b"</style.css>; rel=preload; as=style"]}
        )
        await send({"type": "http.response.start", "status": 200, "headers": [], "trailers": True})
        await send({"type": "http.response.body", "body": b"data"})
        await send({"type": "http.response.trailers", "headers": [(b"x-digest", b"abc")]})

    async with running_server(app) as srv:
        client = await H2Client.connect(srv.port())
        stream_id = await client.request("/", headers=[(b"te", b"trailers")])
        headers, body, trailers = await client.response(stream_id)
        assert dict(headers)[b":status"] == b"200"
        assert body == b"data"
        assert (b"x-digest", b"abc") in trailers
        informational = [
            e for e in client.events if isinstance(e, h2.events.InformationalResponseReceived)
        ]
        assert informational and dict(informational[0].headers)[b":status"] == b"103"
        await client.stream.aclose()


async def test_server_push(anyio_backend: object) -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["path"] == "/":
            await send({"type": "http.response.push", "path": "/style.css", "headers": []})
            await respond(send, 200, b"page")
        else:
            await respond(send, 200, b"pushed " + scope["path"].encode())

    async with running_server(app) as srv:
        client = await H2Client.connect(srv.port())
        stream_id = await client.request("/")
        _, body, _ = await client.response(stream_id)
        assert body == b"page"
        promised = [e for e in client.events if isinstance(e, h2.events.PushedStreamReceived)]
        assert len(promised) == 1
        pushed_id = promised[0].pushed_stream_id
        if not any(
            isinstance(e, h2.events.StreamEnded) and e.stream_id == pushed_id for e in client.events
        ):
            await client.response(pushed_id)
        data = b"".join(
            e.data
            for e in client.events
            if isinstance(e, h2.events.DataReceived) and e.stream_id == pushed_id
        )
        assert data == b"pushed /style.css"
        await client.stream.aclose()


async def test_app_error_resets_only_its_stream(anyio_backend: object) -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["path"] == "/before":
            raise RuntimeError("before start (on purpose)")
        if scope["path"] == "/after":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"part", "more_body": True})
            raise RuntimeError("after start (on purpose)")
        await respond(send, 200, b"fine")

    async with running_server(app) as srv:
        client = await H2Client.connect(srv.port())
        before = await client.request("/before")
        headers, _, _ = await client.response(before)
        assert dict(headers)[b":status"] == b"500"
        after = await client.request("/after")
        await client.response(after)
        assert any(
            isinstance(e, h2.events.StreamReset) and e.stream_id == after for e in client.events
        )
        fine = await client.request("/fine")
        _, body, _ = await client.response(fine)
        assert body == b"fine"
        await client.stream.aclose()


@pytest.mark.client("curl")
async def test_graceful_shutdown_sends_goaway_and_finishes_in_flight(anyio_backend: object) -> None:
    started = anyio.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        started.set()
        await anyio.sleep(0.5)
        await respond(send, 200, b"finished")

    async with running_server(app) as srv:
        idle = await H2Client.connect(srv.port())
        result: dict[str, Any] = {}

        async def slow_request() -> None:
            result["curl"] = await curl("--http2-prior-knowledge", srv.url("/"))

        async with anyio.create_task_group() as tg:
            tg.start_soon(slow_request)
            await started.wait()
            srv.server.shutdown()
            # The idle connection is told to go away, with NO_ERROR (RFC 9113 §6.8)...
            goaways: list[Any] = []
            with anyio.fail_after(5):
                while not goaways:
                    goaways = [
                        e
                        for e in await idle.pump()
                        if isinstance(e, h2.events.ConnectionTerminated)
                    ]
            assert goaways[0].error_code == 0
        # ... while the request in flight still completes.
        code, out, err = result["curl"]
        assert (code, out) == (0, b"finished"), err
        await idle.stream.aclose()


@pytest.mark.client("h2load")
async def test_h2load_smoke(anyio_backend: object, tls_files: DevCertificate) -> None:
    async with running_server(echo_app, tls=tls_files) as srv:
        result = await anyio.run_process(
            ["h2load", "-n", "2000", "-c", "10", "-m", "10", srv.url("/", scheme="https")],
            check=False,
        )
        out = result.stdout.decode()
        assert "2000 succeeded, 0 failed, 0 errored" in out, out


async def test_tls_client_certificate_reaches_scope(
    anyio_backend: object, tls_files: DevCertificate, tmp_path: Any
) -> None:
    from quicserve.certs import make_client_certificate

    client_cert, client_key = make_client_certificate(tls_files, tmp_path, common_name="alice")
    async with running_server(
        echo_app, tls=tls_files, ca_certs=str(tls_files.ca_certfile), verify_mode="required"
    ) as srv:
        context = client_ssl_context(tls_files)
        context.load_cert_chain(str(client_cert), str(client_key))
        async with httpx.AsyncClient(http2=True, verify=context) as client:
            scope = (await client.get(srv.url("/scope", scheme="https"))).json()
        assert scope["tls"]["client_cert_name"].startswith("CN=alice")
        assert scope["tls"]["client_cert_chain"][0].startswith("-----BEGIN CERTIFICATE-----")
        # Without a client certificate the handshake is refused.
        async with httpx.AsyncClient(verify=client_ssl_context(tls_files)) as client:
            with pytest.raises(
                (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError, ssl.SSLError)
            ):
                await client.get(srv.url("/scope", scheme="https"))


async def test_rapid_reset_cannot_outrun_the_stream_limit(anyio_backend: object) -> None:
    """CVE-2023-44487: 300 streams opened and reset at once start at most
    h2_max_concurrent_streams app calls while those calls run; the connection is then
    still usable once they end."""
    running = 0
    peak = 0
    calls = 0
    release = anyio.Event()

    async def slow_app(scope: Any, receive: Any, send: Any) -> None:
        nonlocal running, peak, calls
        calls += 1
        running += 1
        peak = max(peak, running)
        try:
            await release.wait()
            await respond(send, 200, b"late")
        finally:
            running -= 1

    async with running_server(slow_app, h2_max_concurrent_streams=10) as srv:
        client = await H2Client.connect(srv.port("http"))
        for _ in range(300):
            stream_id = await client.request("/")
            client.conn.reset_stream(stream_id)
        await client.flush()
        with anyio.move_on_after(1):
            while True:
                await client.pump()
        # The other 290 were refused (REFUSED_STREAM; h2's client drops those resets
        # for streams it already reset itself, so count app calls instead).
        assert (calls, peak) == (10, 10)
        release.set()
        with anyio.fail_after(5):
            while running:
                await anyio.sleep(0.01)
        stream_id = await client.request("/")
        _, body, _ = await client.response(stream_id)
        assert body == b"late" and calls == 11
        await client.stream.aclose()
