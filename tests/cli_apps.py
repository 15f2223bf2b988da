"""Small ASGI apps for tests/test_cli.py, served by the real ``quicserve`` command.

They run in the server's own process, so they talk to the test only through HTTP and
stderr: a slow route prints :data:`SLOW_MARKER` when it starts, which is how a test knows
a request is in flight before it sends a signal. Sleeping uses anyio, so the same app
runs on asyncio, uvloop and trio.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import anyio

#: Printed on stderr when a slow request has reached the app.
SLOW_MARKER = "cli_apps: slow request started"
#: The body of a slow response that ran to its end.
SLOW_BODY = b"slow done"
#: The message :func:`startup_failed_app` reports with ``lifespan.startup.failed``.
STARTUP_FAILED_MESSAGE = "database unreachable"

#: Not callable: for ``--factory`` and "not an ASGI app" errors.
NOT_CALLABLE = 42


async def _respond(send: Any, status: int, body: bytes, content_type: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _http(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """``/slow`` (1 s), ``/slow10`` (10 s), ``/scope`` (JSON view), anything else: hello."""
    route = scope["path"][len(scope["root_path"]) :]
    if route in ("/slow", "/slow10"):
        print(SLOW_MARKER, file=sys.stderr, flush=True)
        await anyio.sleep(1 if route == "/slow" else 10)
        await _respond(send, 200, SLOW_BODY, b"text/plain")
    elif route == "/scope":
        view = {
            "path": scope["path"],
            "raw_path": scope["raw_path"].decode("latin-1"),
            "root_path": scope["root_path"],
            "http_version": scope["http_version"],
            "scheme": scope["scheme"],
        }
        await _respond(send, 200, json.dumps(view).encode(), b"application/json")
    else:
        await _respond(send, 200, b"hello", b"text/plain")


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A well-behaved app: implements lifespan and serves the routes of :func:`_http`."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    elif scope["type"] == "http":
        await _http(scope, receive, send)


async def startup_failed_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Reports ``lifespan.startup.failed``: the server must not start."""
    if scope["type"] == "lifespan":
        await receive()
        await send({"type": "lifespan.startup.failed", "message": STARTUP_FAILED_MESSAGE})
    elif scope["type"] == "http":
        await _http(scope, receive, send)


async def lifespan_raises_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Raises on lifespan, like an app that does not implement it; serves HTTP normally."""
    if scope["type"] == "lifespan":
        raise RuntimeError("lifespan is not supported here")
    if scope["type"] == "http":
        await _http(scope, receive, send)
