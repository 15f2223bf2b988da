"""The one minimal ASGI 3 application that every benchmarked server runs.

Job: give quicserve, Hypercorn and Uvicorn the *same* trivial work, so that a side-by-side run
measures the servers and not the application.

Routes:

* ``GET /`` (and ``HEAD /``): 200, ``text/plain``, the fixed 13-byte body ``Hello, world!``
  with ``content-length`` set. This is the hot path of every trial.
* ``GET /bytes/N``: 200, ``application/octet-stream``, exactly N zero bytes with
  ``content-length: N``, sent in chunks of at most ``CHUNK_SIZE`` bytes (for bulk-transfer
  trials). N must be a decimal integer in ``[0, MAX_BYTES]``, otherwise 400.
* anything else: 404; a method other than GET/HEAD on a known path: 405.
* ``websocket /ws``: accepts, then echoes every message as it came (text as text, bytes as
  bytes) until the client leaves; any other WebSocket path is refused (403).
* ``lifespan``: answers ``lifespan.startup.complete`` and ``lifespan.shutdown.complete``.

Rules:

* No framework, no per-request allocation that a real app would not also do: header lists and
  bodies of fixed responses are built once at import time; each response still gets its own
  fresh message dict, since a server may keep or change what it is sent.
* The request body is never read (GET has none); servers must cope with that, and all three do.
* A WebSocket to any path but ``/ws`` is refused by returning without accepting, which every
  ASGI server turns into a close/403.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

HELLO_BODY = b"Hello, world!"
CHUNK_SIZE = 64 * 1024
MAX_BYTES = 1 << 30  # 1 GiB: large enough for bulk trials, small enough to refuse typos.

_HELLO_HEADERS = [
    (b"content-type", b"text/plain"),
    (b"content-length", str(len(HELLO_BODY)).encode("ascii")),
]
_ZERO_CHUNK = bytes(CHUNK_SIZE)


def _plain(status: int, text: str) -> tuple[dict[str, Any], bytes]:
    """Build the start message and body of a small fixed ``text/plain`` response."""
    body = text.encode("utf-8")
    start: dict[str, Any] = {
        "type": "http.response.start",
        "status": status,
        "headers": [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(body)).encode("ascii")),
        ],
    }
    return start, body


_NOT_FOUND = _plain(404, "Not Found\n")
_NOT_ALLOWED = _plain(405, "Method Not Allowed\n")
_BAD_SIZE = _plain(400, f"N must be an integer in [0, {MAX_BYTES}]\n")


async def _send_fixed(send: Send, response: tuple[dict[str, Any], bytes], head: bool) -> None:
    """Send a prebuilt response; HEAD gets the same headers and no body."""
    start, body = response
    await send(dict(start))
    await send({"type": "http.response.body", "body": b"" if head else body})


async def _send_bytes(send: Send, size: int, head: bool) -> None:
    """Send ``size`` zero bytes in ``CHUNK_SIZE`` pieces with an exact content-length."""
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/octet-stream"),
                (b"content-length", str(size).encode("ascii")),
            ],
        }
    )
    remaining = 0 if head else size
    while remaining > CHUNK_SIZE:
        await send({"type": "http.response.body", "body": _ZERO_CHUNK, "more_body": True})
        remaining -= CHUNK_SIZE
    await send({"type": "http.response.body", "body": _ZERO_CHUNK[:remaining]})


async def _lifespan(receive: Receive, send: Send) -> None:
    """Acknowledge startup and shutdown; there is nothing to set up."""
    while True:
        message = await receive()
        kind = message["type"]
        if kind == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif kind == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _echo(receive: Receive, send: Send) -> None:
    """The WebSocket echo of ``/ws``: every message straight back, same type."""
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] != "websocket.receive":
            return  # websocket.disconnect
        data = message.get("bytes")
        if data is not None:
            await send({"type": "websocket.send", "bytes": data})
        else:
            await send({"type": "websocket.send", "text": message.get("text") or ""})


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """The benchmark application (ASGI 3, single callable)."""
    kind = scope["type"]
    if kind == "lifespan":
        await _lifespan(receive, send)
        return
    if kind == "websocket":
        if scope["path"] == "/ws":
            await _echo(receive, send)
        return  # any other path: refused by not accepting.
    if kind != "http":
        return

    path: str = scope["path"]
    method: str = scope["method"]
    head = method == "HEAD"
    if path == "/":
        if method == "GET" or head:
            # A fresh message dict per response (as a real app makes): a server may consume it.
            await send({"type": "http.response.start", "status": 200, "headers": _HELLO_HEADERS})
            await send({"type": "http.response.body", "body": b"" if head else HELLO_BODY})
        else:
            await _send_fixed(send, _NOT_ALLOWED, head=False)
        return
    if path.startswith("/bytes/"):
        if not (method == "GET" or head):
            await _send_fixed(send, _NOT_ALLOWED, head=False)
            return
        digits = path[len("/bytes/") :]
        if not digits.isdigit() or len(digits) > 10 or int(digits) > MAX_BYTES:
            await _send_fixed(send, _BAD_SIZE, head)
            return
        await _send_bytes(send, int(digits), head)
        return
    await _send_fixed(send, _NOT_FOUND, head)
