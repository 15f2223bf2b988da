"""An ASGI app for tests/test_flags.py (the operator flags), served by the real command.

* ``/id``: JSON with the serving process's pid, uid, gid, supplementary groups, whether
  it could become root again, and ``GREETING`` as the environment had it when this module
  was imported (``--env-file`` must be loaded before).
* ``/hold``: prints :data:`HOLD_MARKER` on stderr, then waits until the file named by
  ``FLAGS_APP_RELEASE`` exists (polled, at most 60 s): requests in flight the test ends.
* ``/app-headers``: a response that sets ``server``, ``x-team`` and ``date`` itself.
* WebSocket: accepted, says "hi", closes. WebTransport: accepted, held until the client
  leaves.

When the file named by ``FLAGS_APP_BREAK`` exists, importing this module fails: a worker
started after that (a respawn) cannot boot.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import anyio

#: Printed on stderr when a held request reached the app.
HOLD_MARKER = "flags_app: holding"

_break = os.environ.get("FLAGS_APP_BREAK")
if _break and os.path.exists(_break):
    raise RuntimeError("flags_app is broken on purpose")

#: ``GREETING`` at import time.
GREETING_AT_IMPORT = os.environ.get("GREETING")


def _can_become_root() -> bool:
    try:
        os.setuid(0)
    except PermissionError:
        return False
    return True


async def _respond(send: Any, status: int, body: bytes, headers: list[Any]) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """See the module docstring."""
    if scope["type"] == "websocket":
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": "hi"})
        await send({"type": "websocket.close", "code": 1000})
        return
    if scope["type"] == "webtransport":
        await receive()
        await send({"type": "webtransport.accept"})
        await receive()  # until the client leaves
        return
    if scope["type"] != "http":
        return
    path = scope["path"]
    if path == "/id":
        view = {
            "pid": os.getpid(),
            "uid": os.getuid(),
            "gid": os.getgid(),
            "groups": os.getgroups(),
            "root_again": _can_become_root() if os.getuid() != 0 else True,
            "greeting": GREETING_AT_IMPORT,
            "quoted": os.environ.get("QUOTED"),
        }
        await _respond(send, 200, json.dumps(view).encode(), [(b"content-type", b"text/json")])
    elif path == "/hold":
        print(HOLD_MARKER, file=sys.stderr, flush=True)
        release = os.environ["FLAGS_APP_RELEASE"]
        with anyio.move_on_after(60):
            while not os.path.exists(release):
                await anyio.sleep(0.02)
        await _respond(send, 200, b"released", [])
    elif path == "/app-headers":
        headers = [(b"server", b"app"), (b"x-team", b"app"), (b"date", b"app-date")]
        await _respond(send, 200, b"mine", headers)
    else:
        await _respond(send, 200, b"hello", [])
