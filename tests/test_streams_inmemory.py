"""``HTTPStream`` and ``WebSocketStream`` over HTTP/1.1, HTTP/2 and HTTP/3, in memory.

One parametrized file for the three protocols (``tests/inmemory.py`` pairs each real
sans-IO server protocol with a sans-IO client; no sockets). Every test asserts what the
client observed. A case a protocol cannot have is left out of that test's ``PROTOCOLS``
list with a comment saying why, never skipped:

* 425 Too Early needs 0-RTT early data, which only QUIC carries (quicserve's TLS over TCP
  takes no early data): HTTP/3 only.
* Everything else runs on all three: HTTP/1.1 sends trailers in the last chunk (RFC 9112
  §7.1.2) and 103 as an interim response; its "reset" is a closed connection.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aioquic.h3.connection import ErrorCode as H3ErrorCode
from h2.errors import ErrorCodes as H2ErrorCode

from quicserve.certs import DevCertificate
from quicserve.types import Message, Receive, Scope, Send

from .inmemory import PROTOCOLS, Proto, TicketStore, make_config, serve

pytestmark = pytest.mark.anyio

LIMIT = 1000


async def read_body(receive: Receive) -> tuple[bytes, bool]:
    """The whole request body, and whether the app saw ``http.disconnect`` instead."""
    body = b""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return body, True
        body += message.get("body", b"")
        if not message.get("more_body", False):
            return body, False


async def start(send: Send, status: int = 200, headers: Any = (), **extra: Any) -> None:
    await send({"type": "http.response.start", "status": status, "headers": list(headers), **extra})


async def echo_app(scope: Scope, receive: Receive, send: Send) -> None:
    body, _ = await read_body(receive)
    await start(send, headers=[(b"x-method", scope["method"].encode())])
    await send({"type": "http.response.body", "body": b"echo:" + body})


# -- a plain request ----------------------------------------------------------------------


@pytest.mark.parametrize("proto", PROTOCOLS)
async def test_get_and_post(anyio_backend: object, proto: Proto, tls_files: DevCertificate) -> None:
    async with serve(proto, echo_app, tls=tls_files) as host:
        get = await host.request(b"GET", b"/a?b=1")
        post = await host.request(b"POST", b"/upload", [(b"content-length", b"5")], b"hello")
    assert (get.status, bytes(get.body), get.ended) == (200, b"echo:", True)
    assert get.header(b"x-method") == b"GET"
    assert get.header(b"date") is not None
    assert (post.status, bytes(post.body), post.ended) == (200, b"echo:hello", True)
    assert post.header(b"x-method") == b"POST"


# -- 413: a body over Config.max_request_body_size ------------------------------------------


@pytest.mark.parametrize("proto", PROTOCOLS)
async def test_413_for_a_declared_length_over_the_limit(
    anyio_backend: object, proto: Proto, tls_files: DevCertificate
) -> None:
    called = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        called.append(scope["path"])
        await echo_app(scope, receive, send)

    config = make_config(max_request_body_size=LIMIT)
    body = b"x" * (LIMIT + 1)
    async with serve(proto, app, config, tls_files) as host:
        response = await host.request(b"POST", b"/", [(b"content-length", b"%d" % len(body))], body)
        assert (response.status, bytes(response.body)) == (413, b"Content Too Large\n")
        assert called == []  # refused before the app was called
        if proto == "h1":
            # The unread body cannot be skipped: the connection closes after the 413.
            assert host.client.closed
        else:
            # HTTP/2: RST_STREAM NO_ERROR after the response (RFC 9113 §8.1) at most;
            # HTTP/3: STOP_SENDING. Either way the response itself arrived whole.
            assert response.ended
            assert response.reset_code in (None, 0)
            again = await host.request(b"GET", b"/next")
            assert (again.status, bytes(again.body)) == (200, b"echo:")


@pytest.mark.parametrize("proto", PROTOCOLS)
async def test_413_for_a_streamed_body_over_the_limit(
    anyio_backend: object, proto: Proto, tls_files: DevCertificate
) -> None:
    seen: list[tuple[bytes, bool]] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(await read_body(receive))

    config = make_config(max_request_body_size=LIMIT)
    # No Content-Length: HTTP/1.1 sends it chunked; the limit is found while reading.
    headers = [(b"transfer-encoding", b"chunked")] if proto == "h1" else []
    async with serve(proto, app, config, tls_files) as host:
        stream_id = host.start_request(b"POST", b"/", headers, b"x" * 600, end=False)
        host.send_body(stream_id, b"y" * 600, end=True)
        response = host.client.observed(stream_id)
        await host.wait_for(lambda: response.status is not None and not host.streams)
    assert (response.status, bytes(response.body)) == (413, b"Content Too Large\n")
    # The app saw at most the bytes under the limit, then a disconnect.
    assert len(seen) == 1 and seen[0][1] is True and len(seen[0][0]) <= LIMIT


# -- trailers -------------------------------------------------------------------------------


@pytest.mark.parametrize("proto", PROTOCOLS)
async def test_response_trailers(
    anyio_backend: object, proto: Proto, tls_files: DevCertificate
) -> None:
    advertised: list[bool] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await read_body(receive)
        offered = "http.response.trailers" in scope["extensions"]
        advertised.append(offered)
        await start(send, trailers=offered)
        await send({"type": "http.response.body", "body": b"data", "more_body": True})
        await send({"type": "http.response.body", "body": b"!"})
        if offered:
            await send({"type": "http.response.trailers", "headers": [(b"x-checksum", b"42")]})

    async with serve(proto, app, tls=tls_files) as host:
        with_te = await host.request(b"GET", b"/", [(b"te", b"trailers")])
        without = await host.request(b"GET", b"/")
    # Offered only to a client that said it reads trailers (RFC 9110 §10.1.4).
    assert advertised == [True, False]
    assert (with_te.status, bytes(with_te.body), with_te.ended) == (200, b"data!", True)
    assert with_te.trailers == [(b"x-checksum", b"42")]
    assert (bytes(without.body), without.trailers, without.ended) == (b"data!", [], True)


# -- early hints ----------------------------------------------------------------------------


@pytest.mark.parametrize("proto", PROTOCOLS)
async def test_early_hints(anyio_backend: object, proto: Proto, tls_files: DevCertificate) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        assert "http.response.early_hint" in scope["extensions"]
        links = [b"</style.css>; rel=preload; as=style", b"</app.js>; rel=preload; as=script"]
        await send({"type": "http.response.early_hint", "links": links})
        await start(send)
        await send({"type": "http.response.body", "body": b"page"})

    async with serve(proto, app, tls=tls_files) as host:
        response = await host.request(b"GET", b"/")
    assert [status for status, _ in response.informational] == [103]
    assert [v for n, v in response.informational[0][1] if n == b"link"] == [
        b"</style.css>; rel=preload; as=style",
        b"</app.js>; rel=preload; as=script",
    ]
    assert (response.status, bytes(response.body)) == (200, b"page")


# -- http.response.pathsend -----------------------------------------------------------------


@pytest.mark.parametrize("proto", PROTOCOLS)
async def test_pathsend_sends_the_file(
    anyio_backend: object, proto: Proto, tls_files: DevCertificate, tmp_path: Path
) -> None:
    # More than one 256 KiB read, and more than every initial flow-control window (the
    # client's credit comes back within the pump, so the file crosses several windows).
    content = bytes(range(256)) * 1500 + b"tail"
    path = tmp_path / "file.bin"
    path.write_bytes(content)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        assert "http.response.pathsend" in scope["extensions"]
        await read_body(receive)
        await start(send, headers=[(b"content-length", b"%d" % len(content))])
        await send({"type": "http.response.pathsend", "path": str(path)})

    async with serve(proto, app, tls=tls_files) as host:
        response = await host.request(b"GET", b"/file.bin")
    assert (response.status, response.ended) == (200, True)
    assert response.header(b"content-length") == b"%d" % len(content)
    assert bytes(response.body) == content


# -- 425 Too Early --------------------------------------------------------------------------


# HTTP/3 only: h1 and h2 have no early data (see the module docstring).
@pytest.mark.parametrize("proto", ["h3"])
async def test_425_for_an_unsafe_method_in_0rtt(
    anyio_backend: object, proto: Proto, tls_files: DevCertificate
) -> None:
    seen: list[tuple[str, str | None]] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        early = dict(scope["headers"]).get(b"early-data")
        seen.append((scope["method"], early.decode() if early else None))
        await echo_app(scope, receive, send)

    config = make_config(quic_0rtt=True)
    tickets = TicketStore()
    async with serve(proto, app, config, tls_files, tickets=tickets) as first:
        await first.request(b"GET", b"/")
        assert first.quic_pair is not None and first.quic_pair.client.tickets
        ticket = first.quic_pair.client.tickets[-1]
    seen.clear()
    early = [(b"POST", b"/unsafe"), (b"GET", b"/safe")]
    async with serve(
        proto, app, config, tls_files, tickets=tickets, session_ticket=ticket, early_requests=early
    ) as second:
        assert second.quic_pair is not None and second.quic_pair.client.early_data_accepted
        post_id, get_id = second.early_stream_ids
        post = second.client.observed(post_id)
        get = second.client.observed(get_id)
        await second.wait_for(lambda: post.ended and get.ended and not second.streams)
        late_post = await second.request(b"POST", b"/after", [(b"content-length", b"1")], b"!")
    # RFC 8470 §5.2: refused without calling the app; the client retries after 1-RTT.
    assert (post.status, bytes(post.body)) == (425, b"Too Early\n")
    # A safe method is served, and the app is told it arrived early (§5.1).
    assert (get.status, bytes(get.body)) == (200, b"echo:")
    assert ("GET", "1") in seen and all(method != "POST" or early is None for method, early in seen)
    # After the handshake the same request is served.
    assert (late_post.status, bytes(late_post.body)) == (200, b"echo:!")


# -- HEAD -----------------------------------------------------------------------------------


@pytest.mark.parametrize("proto", PROTOCOLS)
async def test_head_sends_no_body_but_keeps_content_length(
    anyio_backend: object, proto: Proto, tls_files: DevCertificate
) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await start(send, headers=[(b"content-length", b"11"), (b"content-type", b"text/plain")])
        await send({"type": "http.response.body", "body": b"hello world"})

    async with serve(proto, app, tls=tls_files) as host:
        head = await host.request(b"HEAD", b"/")
        get = await host.request(b"GET", b"/")
    assert (head.status, head.ended, bytes(head.body)) == (200, True, b"")
    assert head.header(b"content-length") == b"11"  # RFC 9110 §9.3.2: as for GET
    assert (get.status, bytes(get.body)) == (200, b"hello world")


# -- app exceptions -------------------------------------------------------------------------


@pytest.mark.parametrize("proto", PROTOCOLS)
async def test_exception_before_the_response_is_a_500(
    anyio_backend: object, proto: Proto, tls_files: DevCertificate
) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] == "/boom":
            raise RuntimeError("on purpose")
        await echo_app(scope, receive, send)

    async with serve(proto, app, tls=tls_files) as host:
        error = await host.request(b"GET", b"/boom")
        again = await host.request(b"GET", b"/")
    assert (error.status, bytes(error.body), error.ended) == (500, b"Internal Server Error\n", True)
    assert error.reset_code is None
    # The connection carries on.
    assert not host.client.closed
    assert (again.status, bytes(again.body)) == (200, b"echo:")


#: How each protocol aborts a response already under way.
_ABORT_CODES: dict[str, int] = {
    "h2": int(H2ErrorCode.INTERNAL_ERROR),  # RST_STREAM (RFC 9113 §8.1)
    "h3": int(H3ErrorCode.H3_INTERNAL_ERROR),  # RESET_STREAM (RFC 9114 §4.1.1)
}


@pytest.mark.parametrize("proto", PROTOCOLS)
async def test_exception_after_the_response_started_resets_the_stream(
    anyio_backend: object, proto: Proto, tls_files: DevCertificate
) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] == "/boom":
            await start(send)
            await send({"type": "http.response.body", "body": b"partial", "more_body": True})
            raise RuntimeError("on purpose")
        await echo_app(scope, receive, send)

    async with serve(proto, app, tls=tls_files) as host:
        broken = await host.request(b"GET", b"/boom")
        assert broken.status == 200
        assert not broken.ended  # the client can tell the body is incomplete
        if proto == "h1":
            # HTTP/1.1 cannot reset one response: the connection is closed.
            assert host.client.closed
        else:
            assert broken.reset_code == _ABORT_CODES[proto]
            assert not host.client.closed
            again = await host.request(b"GET", b"/")
            assert (again.status, bytes(again.body)) == (200, b"echo:")


# -- WebSocket ------------------------------------------------------------------------------

#: The handshake's success status: 101 on HTTP/1.1 (RFC 6455), 200 on extended CONNECT
#: (RFC 8441 over HTTP/2, RFC 9220 over HTTP/3).
_ACCEPTED = {"h1": 101, "h2": 200, "h3": 200}


def ws_echo_app(events: list[Message]) -> Any:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "websocket"
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept", "subprotocol": None})
        while True:
            message = await receive()
            events.append(message)
            if message["type"] == "websocket.disconnect":
                return
            if message.get("text") == "close please":
                await send({"type": "websocket.close", "code": 4321, "reason": "asked"})
                return
            await send(
                {"type": "websocket.send", **{k: v for k, v in message.items() if k != "type"}}
            )

    return app


@pytest.mark.parametrize("proto", PROTOCOLS)
async def test_websocket_echo_and_server_close(
    anyio_backend: object, proto: Proto, tls_files: DevCertificate
) -> None:
    events: list[Message] = []
    async with serve(proto, ws_echo_app(events), tls=tls_files) as host:
        ws = await host.websocket()
        assert ws.status == _ACCEPTED[proto]
        ws.send("héllo")
        assert await ws.receive() == "héllo"
        ws.send(b"\x00\x01\xff")
        assert await ws.receive() == b"\x00\x01\xff"
        ws.send("close please")
        assert await ws.wait_closed() == 4321
    assert [e.get("text", e.get("bytes")) for e in events] == [
        "héllo",
        b"\x00\x01\xff",
        "close please",
    ]


@pytest.mark.parametrize("proto", PROTOCOLS)
async def test_websocket_client_close_code_reaches_the_app(
    anyio_backend: object, proto: Proto, tls_files: DevCertificate
) -> None:
    events: list[Message] = []
    async with serve(proto, ws_echo_app(events), tls=tls_files) as host:
        ws = await host.websocket()
        ws.send("ping")
        assert await ws.receive() == "ping"
        ws.close(4002, "bye")
        assert await ws.wait_closed() == 4002  # the server echoes the code (RFC 6455 §5.5.1)
    assert events[-1] == {"type": "websocket.disconnect", "code": 4002, "reason": "bye"}


@pytest.mark.parametrize("proto", PROTOCOLS)
async def test_websocket_close_before_accept_is_403(
    anyio_backend: object, proto: Proto, tls_files: DevCertificate
) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await echo_app(scope, receive, send)
            return
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.close"})

    async with serve(proto, app, tls=tls_files) as host:
        ws = await host.websocket()
        await host.wait_for(lambda: ws.observed.ended or host.client.closed)
        await host.idle()
        # ASGI: a close before accept is an HTTP 403, with no WebSocket behind it.
        assert (ws.status, ws.observed.ended, bytes(ws.observed.body)) == (403, True, b"")
        assert ws.observed.header(b"content-length") == b"0"
        assert ws.observed.header(b"sec-websocket-accept") is None
        # The connection carries on (HTTP/1.1 stayed plain HTTP: no 101 was sent).
        assert not host.client.closed
        again = await host.request(b"GET", b"/")
        assert (again.status, bytes(again.body)) == (200, b"echo:")
