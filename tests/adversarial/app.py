"""The app every adversarial test serves (a subprocess runs it through the real CLI).

Routes, chosen by path:

* ``/``: ``ok`` (what the well-behaved probe asks for);
* ``/big?N``: N bytes of response body, sent in 64 KiB pieces (each ``send`` may wait);
* ``/drip?N``: the same, with a 2 ms pause before each piece, like a streaming response:
  its sends come from the app's own clock, not in answer to what the client sent;
* ``/echo``: reads the whole request body, answers its length;
* ``/hold``: reads nothing, waits up to 30 s for the client to go away (a slow app);
* ``/count``: how many app calls are running right now (``/count`` itself included).
"""

from __future__ import annotations

from typing import Any

import anyio

running = 0
peak = 0

_CHUNK = b"x" * 65536


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    global running, peak
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] == "websocket":
        message = await receive()
        await send({"type": "websocket.accept"})
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            await send({**message, "type": "websocket.send"})
    if scope["type"] != "http":
        return
    running += 1
    peak = max(peak, running)
    try:
        await _http(scope, receive, send)
    finally:
        running -= 1


async def _http(scope: dict[str, Any], receive: Any, send: Any) -> None:
    path = scope["path"]
    if path in ("/big", "/drip"):
        size = int(scope["query_string"] or b"1048576")
        pause = 0.002 if path == "/drip" else 0.0
        await send({"type": "http.response.start", "status": 200, "headers": []})
        while size > 0:
            if pause:
                await anyio.sleep(pause)
            piece = _CHUNK[: min(size, len(_CHUNK))]
            size -= len(piece)
            await send({"type": "http.response.body", "body": piece, "more_body": size > 0})
        return
    if path == "/echo":
        total = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            total += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = str(total).encode()
    elif path == "/hold":
        with anyio.move_on_after(30):
            while (await receive())["type"] != "http.disconnect":
                pass
        return
    elif path == "/count":
        body = f"{running} {peak}".encode()
    else:
        body = b"ok"
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})
