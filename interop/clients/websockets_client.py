"""The ``websockets`` package (sync client): WebSocket over HTTP/1.1 on the TLS port.

Its client speaks only the RFC 6455 Upgrade, so ws-h2 and ws-h3 are n/a here.
"""

from __future__ import annotations

import ssl

from ..cases import WS_BINARY, WS_CLOSE_CODE, WS_TEXT, Result, Server, fail, passed

NAME = "websockets"
CASES = {"ws-h1"}
UNSUPPORTED = "the websockets package speaks only HTTP/1.1"


def available() -> str | None:
    try:
        import websockets.sync.client  # noqa: F401
    except ImportError:
        return "pip install websockets"
    return None


def supports(case: str) -> bool:
    return case in CASES


def run(case: str, server: Server) -> Result:
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    context = ssl.create_default_context(cafile=server.ca_certfile)
    url = f"wss://localhost:{server.https_port}/ws"
    with connect(url, ssl=context, compression=None, open_timeout=10) as ws:
        status = ws.response.status_code if ws.response is not None else 0
        proto = ws.recv(timeout=10)
        if proto != "proto:1.1":
            return fail(f"first message {proto!r}, wanted 'proto:1.1'")
        ws.send(WS_TEXT)
        text = ws.recv(timeout=10)
        ws.send(WS_BINARY)
        binary = ws.recv(timeout=10)
        if text != WS_TEXT or binary != WS_BINARY:
            return fail(f"echo mismatch: text {text!r}, binary {str(binary)[:40]}")
        ws.send(f"close:{WS_CLOSE_CODE}")
        try:
            extra = ws.recv(timeout=10)
            return fail(f"wanted the server's close, got a message {extra!r}")
        except ConnectionClosed as closed:
            code = closed.rcvd.code if closed.rcvd is not None else None
    if code != WS_CLOSE_CODE:
        return fail(f"server's close code {code}, wanted {WS_CLOSE_CODE}")
    return passed(
        f"wss:// Upgrade answered {status}; server says HTTP/1.1; text and {len(WS_BINARY)}-byte"
        f" binary echoed byte for byte; server's close code {code} received"
    )
