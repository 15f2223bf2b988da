"""WebSockets over real sockets on HTTP/1.1, HTTP/2 (RFC 8441) and HTTP/3 (RFC 9220).

The independent client is the ``websockets`` package (HTTP/1.1, with and without
permessage-deflate). For HTTP/2 and HTTP/3, which no packaged Python client speaks, the
tunnels of ``clientkit/ws.py`` (on the h2 package and on aioquic) carry wsproto's client
framing; the same cases run over all three transports, on asyncio, uvloop and trio, and
on both framing engines (``--ws-engine`` wsproto and websockets; the HTTP/1.1 cases pair
them with the matching HTTP/1.1 engine, h11 with wsproto as a pure-Python install runs,
httptools with websockets as ``quicserve[fast]`` does):
echo, subprotocols, scope, close codes both ways, oversized messages (1009), invalid UTF-8
(1007), permessage-deflate and a deflate bomb (1009), denial responses, app errors, abrupt
disconnects, keepalive pings, backpressure and graceful shutdown (1001).
"""

from __future__ import annotations

import json
import zlib
from typing import Any

import anyio
import pytest

from clientkit.ws import WSClient, open_h2, open_h3, raw_frame
from quicserve.certs import DevCertificate

from .helpers import H1_WITH_WS, client_ssl_context, wait_for
from .wsapp import WSApp, serve, tunnel_for

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

TRANSPORTS = ["h1", "h2", "h3"]


# -- the same cases on every transport -------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_echo_subprotocol_and_scope(
    anyio_backend: object, ws_engine: str, transport: str, tls_files: DevCertificate
) -> None:
    app = WSApp()
    async with serve(app, tls_files, ws_engine=ws_engine) as srv:
        async with tunnel_for(
            transport, srv, tls_files, "/scope?room=7", subprotocols=["chat.v2", "chat.v1"]
        ) as tunnel:
            assert tunnel.status == (101 if transport == "h1" else 200)
            assert tunnel.header(b"sec-websocket-protocol") == b"chat.v2"
            assert tunnel.header(b"x-accepted") == b"yes"
            client = WSClient(tunnel)
            info = json.loads(await client.receive_message())
            await client.send_text("héllo")
            assert await client.receive_message() == "héllo"
            payload = bytes(range(256)) * 1024
            await client.send_bytes(payload)
            assert await client.receive_message() == payload
            await client.close(4000, "client says bye")
            assert await client.expect_close() == (4000, "client says bye")
        await wait_for(lambda: app.disconnects)
    assert info == {
        "http_version": {"h1": "1.1", "h2": "2", "h3": "3"}[transport],
        "scheme": "wss",
        "path": "/scope",
        "query_string": "room=7",
        "subprotocols": ["chat.v2", "chat.v1"],
        "extensions": ["tls", "websocket.http.response"],
    }
    assert app.disconnects == [("/scope", 4000, "client says bye")]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_server_close_code_and_reason(
    anyio_backend: object, ws_engine: str, transport: str, tls_files: DevCertificate
) -> None:
    app = WSApp()
    async with serve(app, tls_files, ws_engine=ws_engine) as srv:
        async with tunnel_for(transport, srv, tls_files, "/server-close") as tunnel:
            client = WSClient(tunnel)
            assert await client.expect_close() == (4321, "done here")
            await client.close(4321, "done here")  # complete the handshake
            assert await client.next_event() is None  # then the server ends the stream
        await wait_for(lambda: app.disconnects)
    assert app.disconnects == [("/server-close", 4321, "done here")]


async def test_ws_max_size_counts_bytes_of_multibyte_text(
    anyio_backend: object, ws_engine: str, tls_files: DevCertificate
) -> None:
    """--ws-max-size is bytes, text or binary, on both engines: UTF-8 text of exactly the
    limit is echoed, one byte more (half as many characters) is 1009."""
    app = WSApp()
    limit = 4096
    async with serve(app, tls_files, ws_engine=ws_engine, ws_max_size=limit) as srv:
        async with tunnel_for("h1", srv, tls_files, "/echo") as tunnel:
            client = WSClient(tunnel)
            at_limit = "é" * (limit // 2)
            await client.send_text(at_limit)
            assert await client.receive_message() == at_limit
            await client.send_text(at_limit + "a")  # 2049 characters, 4097 bytes
            code, _ = await client.expect_close()
            assert code == 1009
        await wait_for(lambda: app.disconnects)
    assert app.disconnects[0][:2] == ("/echo", 1009)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_oversized_message_closes_1009(
    anyio_backend: object, ws_engine: str, transport: str, tls_files: DevCertificate
) -> None:
    app = WSApp()
    async with serve(app, tls_files, ws_engine=ws_engine, ws_max_size=64 * 1024) as srv:
        async with tunnel_for(transport, srv, tls_files, "/echo") as tunnel:
            client = WSClient(tunnel)
            await client.send_bytes(b"x" * (64 * 1024))  # exactly the limit: fine
            assert len(await client.receive_message()) == 64 * 1024
            await client.send_bytes(b"y" * (64 * 1024 + 1))
            code, _ = await client.expect_close()
            assert code == 1009
        await wait_for(lambda: app.disconnects)
        # The server is unharmed: a new WebSocket on the same server works.
        async with tunnel_for(transport, srv, tls_files, "/echo") as tunnel:
            client = WSClient(tunnel)
            await client.send_text("still here")
            assert await client.receive_message() == "still here"
    assert app.disconnects[0][:2] == ("/echo", 1009)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_permessage_deflate_echo_and_bomb(
    anyio_backend: object, ws_engine: str, transport: str, tls_files: DevCertificate
) -> None:
    """permessage-deflate (RFC 7692) both ways, with the same negotiated parameters on
    either engine; a compressed message that inflates past --ws-max-size is a 1009, not
    a megabyte in memory."""
    app = WSApp()
    async with serve(app, tls_files, ws_engine=ws_engine, ws_max_size=64 * 1024) as srv:
        async with tunnel_for(transport, srv, tls_files, "/echo", deflate=True) as tunnel:
            assert tunnel.header(b"sec-websocket-extensions") == (
                b"permessage-deflate; client_max_window_bits=15"
            )
            client = WSClient(tunnel, deflate=True)
            text = "déjà vu " * 4000  # 36 KB of UTF-8, a few hundred bytes compressed
            for _ in range(2):  # the second rides on the context the first left
                await client.send_text(text)
                assert await client.receive_message() == text
                await client.send_bytes(bytes(range(256)) * 200)
                assert await client.receive_message() == bytes(range(256)) * 200
            compressor = zlib.compressobj(wbits=-15)
            bomb = compressor.compress(b"\0" * (1024 * 1024)) + compressor.flush(zlib.Z_SYNC_FLUSH)
            assert len(bomb) < 2048
            await client.raw(raw_frame(0x2, bomb[:-4], rsv=4))  # RSV1: compressed
            code, _ = await client.expect_close()
            assert code == 1009
        await wait_for(lambda: app.disconnects)
    assert app.disconnects[0][:2] == ("/echo", 1009)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_invalid_utf8_closes_1007(
    anyio_backend: object, ws_engine: str, transport: str, tls_files: DevCertificate
) -> None:
    app = WSApp()
    async with serve(app, tls_files, ws_engine=ws_engine) as srv:
        async with tunnel_for(transport, srv, tls_files, "/echo") as tunnel:
            client = WSClient(tunnel)
            await client.raw(raw_frame(0x1, b"ok \xff\xfe"))
            code, _ = await client.expect_close()
            assert code == 1007
        await wait_for(lambda: app.disconnects)
    assert app.disconnects[0][:2] == ("/echo", 1007)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_abrupt_disconnect_leaves_nothing_behind(
    anyio_backend: object, ws_engine: str, transport: str, tls_files: DevCertificate
) -> None:
    app = WSApp()
    async with serve(app, tls_files, ws_engine=ws_engine) as srv:
        async with tunnel_for(transport, srv, tls_files, "/send-after-close") as tunnel:
            client = WSClient(tunnel)
            await client.send_text("one")
            assert await client.receive_message() == "one"
        # The client vanished without a close frame: the app hears 1006, its send after
        # that raises an OSError, and the stream and its tasks are gone.
        await wait_for(lambda: app.finished == 1)
        assert app.disconnects == [("/send-after-close", 1006, "")]
        assert app.send_errors == ["ClientDisconnected"]
        await wait_for(lambda: all(c["open_streams"] == 0 for c in srv.server.registry.snapshot()))
        async with tunnel_for(transport, srv, tls_files, "/echo") as tunnel:
            client = WSClient(tunnel)
            await client.send_text("next")
            assert await client.receive_message() == "next"


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_denial_response_and_403(
    anyio_backend: object, ws_engine: str, transport: str, tls_files: DevCertificate
) -> None:
    app = WSApp()
    async with serve(app, tls_files, ws_engine=ws_engine) as srv:
        async with tunnel_for(transport, srv, tls_files, "/deny") as tunnel:
            await wait_for(lambda: tunnel.body == b"no entry")
            assert tunnel.status == 401
            assert tunnel.header(b"x-why") == b"token"
        async with tunnel_for(transport, srv, tls_files, "/forbid") as tunnel:
            assert tunnel.status == 403
        async with tunnel_for(transport, srv, tls_files, "/boom-before") as tunnel:
            assert tunnel.status == 500
        async with tunnel_for(transport, srv, tls_files, "/boom-after") as tunnel:
            code, _ = await WSClient(tunnel).expect_close()
            assert code == 1011


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_ping_pong_and_keepalive_timeout(
    anyio_backend: object, ws_engine: str, transport: str, tls_files: DevCertificate
) -> None:
    app = WSApp()
    async with serve(
        app, tls_files, ws_engine=ws_engine, ws_ping_interval=0.3, ws_ping_timeout=0.3
    ) as srv:
        async with tunnel_for(transport, srv, tls_files, "/echo") as tunnel:
            client = WSClient(tunnel)
            await client.ping(b"are you there")
            assert await client.pong() == b"are you there"
            # Now stay silent: the server pings after 0.3 s idle; we never answer, so
            # 0.3 s later it closes with 1011.
            ping = await client.next_event()
            assert type(ping).__name__ == "Ping"
            code, reason = await client.expect_close()
            assert (code, reason) == (1011, "keepalive ping timeout")
        await wait_for(lambda: app.disconnects)
    assert app.disconnects[0][:2] == ("/echo", 1011)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_graceful_shutdown_closes_1001(
    anyio_backend: object, ws_engine: str, transport: str, tls_files: DevCertificate
) -> None:
    app = WSApp()
    async with serve(app, tls_files, ws_engine=ws_engine, graceful_timeout=5) as srv:
        async with tunnel_for(transport, srv, tls_files, "/echo") as tunnel:
            client = WSClient(tunnel)
            await client.send_text("before")
            assert await client.receive_message() == "before"
            srv.server.shutdown()
            code, _ = await client.expect_close()
            assert code == 1001
            await client.close(1001)
            with anyio.fail_after(5):
                await wait_for(lambda: app.disconnects)
    assert app.disconnects[0][:2] == ("/echo", 1001)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_queue_is_bounded_when_the_app_does_not_read(
    anyio_backend: object, ws_engine: str, transport: str, tls_files: DevCertificate
) -> None:
    """An app that never receives: the server parses at most ws_max_queue messages and
    then stops acknowledging, so the peer's flow control (TCP, HTTP/2, QUIC) pushes back
    instead of the server buffering without bound."""
    app = WSApp()
    # The app never returns by itself: a short grace period ends it at shutdown.
    async with serve(
        app, tls_files, ws_engine=ws_engine, ws_max_queue=4, graceful_timeout=0.3
    ) as srv:
        async with tunnel_for(transport, srv, tls_files, "/sleepy") as tunnel:
            client = WSClient(tunnel)
            sent = 0
            chunk = b"z" * 65536
            stalled = False
            with anyio.fail_after(20):
                while sent < 256 * 1024 * 1024 and not stalled:
                    with anyio.move_on_after(0.5) as scope:
                        await client.send_bytes(chunk)
                        sent += len(chunk)
                    stalled = scope.cancelled_caught
            # A send blocked for 0.5 s: the server stopped reading, after taking in no
            # more than the queue, the windows and the socket buffers.
            assert stalled and sent < 64 * 1024 * 1024, sent
            stream = next(iter(srv.server.registry.snapshot()))
            assert stream["open_streams"] == 1


async def test_unknown_connect_protocol_gets_501(
    anyio_backend: object, ws_engine: str, tls_files: DevCertificate
) -> None:
    app = WSApp()
    async with serve(app, tls_files, ws_engine=ws_engine) as srv:
        async with open_h2(
            srv.port("https"), "/", tls=client_ssl_context(tls_files), protocol=b"chat"
        ) as tunnel:
            assert tunnel.status == 501
        udp = next(a.port for a in srv.addresses if a.transport == "udp")
        async with open_h3(udp, "/", cafile=str(tls_files.ca_certfile), protocol=b"chat") as t3:
            assert t3.status == 501
    assert app.scopes == []


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_wrong_version_gets_426(
    anyio_backend: object, ws_engine: str, transport: str, tls_files: DevCertificate
) -> None:
    app = WSApp()
    async with serve(app, tls_files, ws_engine=ws_engine) as srv:
        async with tunnel_for(transport, srv, tls_files, "/echo", version=b"8") as tunnel:
            assert tunnel.status == 426
            assert tunnel.header(b"sec-websocket-version") == b"13"
    assert app.scopes == []


# -- the independent client: the websockets package (HTTP/1.1) -------------------------


@pytest.mark.client("websockets")
@pytest.mark.parametrize("compression", [None, "deflate"])
async def test_websockets_client(
    anyio_backend: object, ws_engine: str, tls_files: DevCertificate, compression: str | None
) -> None:
    app = WSApp()

    def client_session() -> tuple[Any, ...]:
        import asyncio

        from websockets.asyncio.client import connect as ws_connect

        async def main() -> tuple[Any, ...]:
            url = f"wss://localhost:{port}/echo"
            async with ws_connect(
                url,
                ssl=client_ssl_context(tls_files),
                subprotocols=["proto-a"],  # type: ignore[list-item]
                compression=compression,
                max_size=None,
            ) as ws:
                await ws.send("text ✓")
                text = await ws.recv()
                big = bytes(range(256)) * 4096  # 1 MiB, compressible
                await ws.send(big)
                echoed = await ws.recv()
                latency = await ws.ping()
                await latency
                extensions = ws.response.headers.get("sec-websocket-extensions")
                await ws.close(4100, "bye")
                return text, echoed == big, ws.subprotocol, extensions, ws.close_code

        return asyncio.run(main())

    async with serve(
        app, tls_files, ws_engine=ws_engine, http1_engine=H1_WITH_WS[ws_engine]
    ) as srv:
        port = srv.port("https")
        text, big_ok, subprotocol, extensions, close_code = await anyio.to_thread.run_sync(
            client_session
        )
        await wait_for(lambda: app.disconnects)
    assert text == "text ✓" and big_ok and subprotocol == "proto-a"
    assert (extensions is not None) == (compression == "deflate")
    assert close_code == 4100
    assert app.disconnects == [("/echo", 4100, "bye")]


@pytest.mark.client("websockets")
async def test_websockets_client_sees_1009_and_plain_http_still_works(
    anyio_backend: object, ws_engine: str, tls_files: DevCertificate
) -> None:
    app = WSApp()

    def client_session() -> int | None:
        import asyncio

        import websockets
        from websockets.asyncio.client import connect as ws_connect

        async def main() -> int | None:
            async with ws_connect(
                f"wss://localhost:{port}/echo", ssl=client_ssl_context(tls_files)
            ) as ws:
                await ws.send(b"q" * 20000)
                try:
                    await ws.recv()
                except websockets.ConnectionClosed as exc:
                    return exc.rcvd.code if exc.rcvd else None
                return None

        return asyncio.run(main())

    async with serve(
        app, tls_files, ws_engine=ws_engine, http1_engine=H1_WITH_WS[ws_engine], ws_max_size=10000
    ) as srv:
        port = srv.port("https")
        assert await anyio.to_thread.run_sync(client_session) == 1009
