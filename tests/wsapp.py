"""What the WebSocket tests share: one recording app, a server for it, a tunnel opener.

The clients themselves (RFC 6455 / 8441 / 9220 tunnels, wsproto framing, raw frames) are
in :mod:`clientkit.ws`, shared with ``interop/``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio

from clientkit.ws import Tunnel, open_h1, open_h2, open_h3
from quicserve.certs import DevCertificate

from .helpers import client_ssl_context, running_server


class WSApp:
    """One app for every case, chosen by path; it records what it saw."""

    def __init__(self) -> None:
        self.disconnects: list[tuple[str, int, str]] = []
        self.scopes: list[dict[str, Any]] = []
        self.send_errors: list[str] = []
        self.finished = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"plain http"})
            return
        assert scope["type"] == "websocket"
        self.scopes.append(scope)
        try:
            await self._serve(scope, receive, send)
        finally:
            self.finished += 1

    async def _serve(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope["path"]
        assert (await receive())["type"] == "websocket.connect"
        if path == "/deny":
            await send(
                {
                    "type": "websocket.http.response.start",
                    "status": 401,
                    "headers": [(b"content-type", b"text/plain"), (b"x-why", b"token")],
                }
            )
            await send({"type": "websocket.http.response.body", "body": b"no ", "more_body": True})
            await send({"type": "websocket.http.response.body", "body": b"entry"})
            return
        if path == "/forbid":
            await send({"type": "websocket.close"})
            return
        if path == "/boom-before":
            raise RuntimeError("app fails before accepting")
        subprotocols = scope["subprotocols"]
        await send(
            {
                "type": "websocket.accept",
                "subprotocol": subprotocols[0] if subprotocols else None,
                "headers": [(b"x-accepted", b"yes")],
            }
        )
        if path == "/boom-after":
            raise RuntimeError("app fails after accepting")
        if path == "/scope":
            info = {k: scope[k] for k in ("http_version", "scheme", "path", "query_string")}
            info["query_string"] = info["query_string"].decode()
            info["subprotocols"] = scope["subprotocols"]
            info["extensions"] = sorted(scope["extensions"])
            await send({"type": "websocket.send", "text": json.dumps(info)})
        if path == "/server-close":
            await send({"type": "websocket.close", "code": 4321, "reason": "done here"})
            message = await receive()
            self.disconnects.append((path, message["code"], message.get("reason", "")))
            return
        if path == "/take-one":
            # Takes one message and then works on it for longer than the server waits.
            await receive()
            await anyio.sleep(2)
            message = await receive()
            self.disconnects.append((path, message["code"], message.get("reason", "")))
            return
        if path == "/sleepy":
            # Never receives: the server may queue ws_max_queue messages, no more.
            await anyio.sleep(30)
            return
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                self.disconnects.append((path, message["code"], message.get("reason", "")))
                if path == "/send-after-close":
                    try:
                        await send({"type": "websocket.send", "text": "too late"})
                    except OSError as exc:
                        self.send_errors.append(type(exc).__name__)
                return
            reply = {k: message[k] for k in ("text", "bytes") if message.get(k) is not None}
            if path == "/slow-echo":
                await anyio.sleep(0.3)  # still answering when the next frames arrive
            await send({"type": "websocket.send", **reply})


@asynccontextmanager
async def tunnel_for(
    transport: str, srv: Any, tls: DevCertificate, path: str, **options: Any
) -> AsyncIterator[Tunnel]:
    """A WebSocket handshake to ``path`` on the chosen transport (TLS on all three)."""
    if transport == "h1":
        opener = open_h1(srv.port("https"), path, tls=client_ssl_context(tls), **options)
    elif transport == "h2":
        opener = open_h2(srv.port("https"), path, tls=client_ssl_context(tls), **options)
    else:
        udp = next(a.port for a in srv.addresses if a.transport == "udp")
        opener = open_h3(udp, path, cafile=str(tls.ca_certfile), **options)
    async with opener as tunnel:
        yield tunnel


def serve(app: Any, tls: DevCertificate, **options: Any) -> Any:
    """Serve ``app`` with TLS and a QUIC bind: every WebSocket transport is there."""
    return running_server(app, tls=tls, quic_bind=("127.0.0.1:0",), **options)
