"""Small ASGI apps the tests serve."""

from __future__ import annotations

import hashlib
from typing import Any


async def read_body(receive: Any) -> bytes:
    """Read a whole request body (empty if the client disconnects)."""
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return bytes(body)
        body += message.get("body", b"")
        if not message.get("more_body", False):
            return bytes(body)


async def respond(
    send: Any, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    """Send a complete response with content-length."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-length", str(len(body)).encode()), *(headers or [])],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def echo_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """``/echo`` echoes the body, ``/sha256`` answers its digest, ``/bytes/N`` sends N bytes,
    ``/scope`` describes the scope, ``/error`` raises, anything else says hello."""
    if scope["type"] != "http":
        return
    path = scope["path"][len(scope.get("root_path", "")) :]
    if path == "/echo":
        await respond(send, 200, await read_body(receive))
    elif path == "/sha256":
        digest = hashlib.sha256()
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            digest.update(message.get("body", b""))
            size += len(message.get("body", b""))
            if not message.get("more_body", False):
                break
        await respond(send, 200, f"{size} {digest.hexdigest()}".encode())
    elif path.startswith("/bytes/"):
        size = int(path.rsplit("/", 1)[1])
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", str(size).encode())],
            }
        )
        chunk = b"x" * 65536
        sent = 0
        while sent < size:
            piece = chunk[: min(65536, size - sent)]
            sent += len(piece)
            await send({"type": "http.response.body", "body": piece, "more_body": sent < size})
    elif path == "/scope":
        import json

        view = {
            k: (v.decode("latin-1") if isinstance(v, bytes) else v)
            for k, v in scope.items()
            if k
            in (
                "http_version",
                "method",
                "scheme",
                "path",
                "raw_path",
                "query_string",
                "root_path",
                "client",
                "server",
                "type",
            )
        }
        view["headers"] = [[n.decode(), v.decode()] for n, v in scope["headers"]]
        view["extensions"] = sorted(scope.get("extensions", {}))
        view["state"] = scope.get("state")
        tls = scope.get("extensions", {}).get("tls")
        if tls:
            view["tls"] = {k: v for k, v in tls.items() if k != "server_cert"}
        await respond(
            send, 200, json.dumps(view).encode(), [(b"content-type", b"application/json")]
        )
    elif path == "/error":
        raise RuntimeError("boom (raised on purpose by the test app)")
    else:
        await read_body(receive)
        await respond(send, 200, b"hello", [(b"content-type", b"text/plain")])
