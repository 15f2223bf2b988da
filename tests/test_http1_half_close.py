"""HTTP/1.1: a client that half-closes (FIN) after its request still gets the answer.

RFC 9112 §9.6 ("Tear-down"): a client may close its sending side once its request is
sent and read the response; the server answers what it received in full (every
pipelined request, in order, §9.3.2) and then closes. A FIN in the middle of a request
ends the connection with no response (no 400: nothing was malformed, the peer left).
Real sockets on every backend and HTTP/1.1 engine (asyncio and uvloop run the callback
driver, trio the stream driver).
"""

from __future__ import annotations

import logging
from typing import Any

import anyio
import pytest

from .apps import echo_app, read_body, respond
from .helpers import running_server

pytestmark = pytest.mark.anyio


async def _send_then_fin(port: int, data: bytes, read_timeout: float = 5.0) -> tuple[bytes, bool]:
    """Send ``data``, half-close, read to the server's close; (bytes, whether it closed)."""
    chunks: list[bytes] = []
    closed = False
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        await stream.send(data)
        await stream.send_eof()
        with anyio.move_on_after(read_timeout):
            while True:
                try:
                    chunks.append(await stream.receive())
                except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                    closed = True
                    break
    return b"".join(chunks), closed


async def _slow_echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    # Answers after a pause: the FIN has long been read when the response is ready.
    if scope["type"] != "http":
        return
    body = await read_body(receive)
    await anyio.sleep(0.05)
    await respond(send, 200, b"slow:" + body)


@pytest.mark.parametrize("app", [echo_app, _slow_echo], ids=["at-once", "after-a-pause"])
async def test_request_then_fin_is_answered_then_closed(
    anyio_backend: object, h1_engine: str, app: Any
) -> None:
    async with running_server(app, http1_engine=h1_engine) as srv:
        reply, closed = await _send_then_fin(
            srv.port(), b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
        )
        assert reply.startswith(b"HTTP/1.1 200 OK\r\n"), reply
        assert reply.endswith(b"\r\n\r\nabc") or reply.endswith(b"\r\n\r\nslow:abc"), reply
        assert reply.count(b"HTTP/1.1 ") == 1
        assert closed


async def test_pipelined_requests_then_fin_are_all_answered_in_order(
    anyio_backend: object, h1_engine: str
) -> None:
    async with running_server(_slow_echo, http1_engine=h1_engine) as srv:
        requests = b"".join(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n%02d" % i for i in range(5)
        ) + (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        reply, closed = await _send_then_fin(srv.port(), requests)
        bodies = [part.split(b"\r\n\r\n", 1)[1] for part in reply.split(b"HTTP/1.1 200 OK")[1:]]
        assert bodies == [b"slow:%02d" % i for i in range(5)] + [b"slow:"], reply
        assert closed


@pytest.mark.parametrize(
    "partial",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\n",  # a head cut short
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc",  # a body cut short
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HT",  # a whole request, then half of one
    ],
    ids=["head", "body", "second-head"],
)
async def test_fin_inside_a_request_closes_without_an_error_response(
    anyio_backend: object, h1_engine: str, partial: bytes
) -> None:
    async with running_server(echo_app, http1_engine=h1_engine) as srv:
        reply, closed = await _send_then_fin(srv.port(), partial)
        assert closed
        # Only the complete request (if any) is answered: no 400 for the cut one.
        assert reply.count(b"HTTP/1.1 ") == partial.count(b"\r\n\r\n") - partial.count(
            b"Content-Length: 10\r\n\r\n"
        ), reply
        assert b" 400 " not in reply


async def test_websocket_upgrade_then_fin_ends_the_tunnel(
    anyio_backend: object, h1_engine: str
) -> None:
    # The FIN came before the 101: after the switch the app must hear the peer is gone,
    # not wait on a tunnel nobody can write to.
    seen: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            return
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        seen.append((await receive())["type"])

    upgrade = (
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    async with running_server(app, http1_engine=h1_engine) as srv:
        reply, closed = await _send_then_fin(srv.port(), upgrade)
        assert reply.startswith(b"HTTP/1.1 101 "), reply
        assert closed
        with anyio.fail_after(5):
            while not seen:
                await anyio.sleep(0.01)
    assert seen == ["websocket.disconnect"]


async def test_fin_after_a_refused_websocket_is_a_plain_close(
    anyio_backend: object, h1_engine: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The app refuses the upgrade (403); the client reads that answer, then half-closes.
    # There is no tunnel: the FIN must end the connection quietly (it reached the refused
    # stream's framer, which does not exist, and failed the connection with an
    # AssertionError logged as "Unexpected error on connection").
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close"})
            # Still running when the FIN arrives. A sleep, because nothing can be awaited:
            # the server neither closes nor tells the app before the app call ends.
            await anyio.sleep(0.5)

    upgrade = (
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    async with running_server(app, http1_engine=h1_engine) as srv:
        async with await anyio.connect_tcp("127.0.0.1", srv.port()) as stream:
            await stream.send(upgrade)
            reply = b""
            with anyio.fail_after(5):
                while b"\r\n\r\n" not in reply:
                    reply += await stream.receive()
            assert reply.startswith(b"HTTP/1.1 403 "), reply
            await stream.send_eof()
            with anyio.fail_after(5):
                try:
                    while True:
                        await stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                    pass
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
