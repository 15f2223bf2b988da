"""The app every adversarial test serves (a subprocess runs it through the real CLI).

Routes, chosen by path:

* ``/``: ``ok`` (what the well-behaved probe asks for);
* ``/big?N``: N bytes of response body, sent in 64 KiB pieces (each ``send`` may wait);
* ``/drip?N``: the same, with a 2 ms pause before each piece, like a streaming response:
  its sends come from the app's own clock, not in answer to what the client sent;
* ``/echo``: reads the whole request body, answers its length;
* ``/hold``: waits up to 30 s for the client to go away (reading, and dropping, any body);
* ``/stall?S``: ignores the client altogether (never calls ``receive``) and answers
  after S seconds (default 2, at most 30): an app call that outlives a reset stream;
* ``/count``: how many app calls are running right now (``/count`` itself included) and
  the peak, as ``running peak``; ``/count?/hold`` says ``running peak calls`` for the
  calls to one path (``calls``: how many there were in all).
* ``/early``: ``1`` or ``-`` (whether this request came as 0-RTT early data, the
  ``early-data`` header of RFC 8470), then how many early requests the app has seen.
"""

from __future__ import annotations

from typing import Any

import anyio

running = 0
peak = 0
#: Per path: [running, peak, calls].
by_path: dict[str, list[int]] = {}
early = 0

_CHUNK = b"x" * 65536


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    global running, peak, early
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
    counts = by_path.setdefault(scope["path"], [0, 0, 0])
    counts[0] += 1
    counts[2] += 1
    counts[1] = max(counts[1], counts[0])
    if (b"early-data", b"1") in scope["headers"]:
        early += 1
    try:
        await _http(scope, receive, send)
    finally:
        running -= 1
        counts[0] -= 1


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
    elif path == "/stall":
        await anyio.sleep(min(float(scope["query_string"] or b"2"), 30.0))
        body = b"late"
    elif path == "/count":
        which = scope["query_string"].decode()
        counts = by_path.get(which, [0, 0, 0]) if which else [running, peak]
        body = " ".join(map(str, counts)).encode()
    elif path == "/early":
        mark = "1" if (b"early-data", b"1") in scope["headers"] else "-"
        body = f"{mark} {early}".encode()
    else:
        body = b"ok"
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})
