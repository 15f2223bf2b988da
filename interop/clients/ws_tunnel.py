"""The ws-h2 and ws-h3 cases over clientkit's RFC 8441 / RFC 9220 tunnels.

No packaged Python client speaks extended CONNECT on HTTP/2 and HTTP/3, so the ``h2`` and
``aioquic`` adapters open the tunnels of :mod:`clientkit.ws` (the ``h2`` package over
TLS, aioquic's QUIC and HTTP/3; the same tunnels the tests use) and run the ws cases'
script (see :mod:`interop.cases`) with wsproto's client framing on top. Not an adapter
itself: :func:`run` is what those two adapters call from their worker thread.
"""

from __future__ import annotations

import ssl
from typing import Any

import anyio
from wsproto.events import BytesMessage, CloseConnection, Ping, Pong, TextMessage

from clientkit.ws import Tunnel, WSClient, open_h2, open_h3

from ..cases import WS_BINARY, WS_CLOSE_CODE, WS_TEXT, Result, Server, fail, passed


async def _next_message(ws: WSClient) -> Any:
    """The next whole message, a close, or None; pings are answered on the way."""
    while True:
        event = await ws.next_event()
        if isinstance(event, Ping):
            await ws.raw(ws.ws.send(event.response()))
        elif isinstance(event, TextMessage | BytesMessage):
            return event.data
        elif not isinstance(event, Pong):
            return event  # a close, or None when the stream ended without one


async def echo_session(tunnel: Tunnel, what: str, want_version: str) -> Result:
    """proto message, text echo, binary echo, then the server closes with WS_CLOSE_CODE."""
    if tunnel.status != 200:
        return fail(f"extended CONNECT answered {tunnel.status}")
    ws = WSClient(tunnel)
    proto = await _next_message(ws)
    if proto != f"proto:{want_version}":
        return fail(f"first message {proto!r}, wanted 'proto:{want_version}'")
    await ws.send_text(WS_TEXT)
    text = await _next_message(ws)
    await ws.send_bytes(WS_BINARY)
    binary = await _next_message(ws)
    if text != WS_TEXT or binary != WS_BINARY:
        return fail(f"echo mismatch: text {text!r}, binary {str(binary)[:40]}")
    await ws.send_text(f"close:{WS_CLOSE_CODE}")
    closing = await _next_message(ws)
    if not isinstance(closing, CloseConnection) or closing.code != WS_CLOSE_CODE:
        return fail(f"wanted the server's close {WS_CLOSE_CODE}, got {closing!r}")
    await ws.raw(ws.ws.send(closing.response()))
    return passed(
        f"{what}: 200; server says HTTP/{want_version}; text and "
        f"{len(WS_BINARY)}-byte binary echoed byte for byte; server's close code "
        f"{closing.code} seen"
    )


async def _h2(server: Server) -> Result:
    context = ssl.create_default_context(cafile=server.ca_certfile)
    async with open_h2(server.https_port, "/ws", tls=context) as tunnel:
        alpn = getattr(tunnel, "alpn", None)
        if alpn != "h2":
            return fail(f"ALPN selected {alpn!r}, not h2")
        what = "h2 (ALPN h2), SETTINGS_ENABLE_CONNECT_PROTOCOL=1, extended CONNECT"
        return await echo_session(tunnel, what, "2")


async def _h3(server: Server) -> Result:
    from aioquic.h3.connection import Setting

    async with open_h3(server.h3_port, "/ws", cafile=server.ca_certfile) as tunnel:
        settings = tunnel.h3.received_settings or {}
        enabled = settings.get(Setting.ENABLE_CONNECT_PROTOCOL)
        what = f"h3 (QUIC), SETTINGS_ENABLE_CONNECT_PROTOCOL={enabled}, extended CONNECT"
        return await echo_session(tunnel, what, "3")


def run(case: str, server: Server) -> Result:
    """ws-h2 or ws-h3 in a fresh event loop (call from a worker thread)."""

    async def go() -> Result:
        with anyio.fail_after(60):
            return await (_h2(server) if case == "ws-h2" else _h3(server))

    return anyio.run(go)
