"""An ASGI app for tests/test_workers.py: every response says which worker process served it.

``/pid`` answers ``{"pid": ..., "client": [host, port], "early": ...}`` (``early``: the
request came in 0-RTT, the ``early-data: 1`` header RFC 8470 has the server add);
``/slow`` does the same after ``SLOW_SECONDS`` (a request in flight across a reload).
Sleeping uses anyio, so the app runs on asyncio, uvloop and trio. ``/block`` is the bad
app a liveness check is for: it wedges the worker's event loop with ``time.sleep`` for
``BLOCK_SECONDS`` (bounded, so a test that fails leaves nothing running for long) and
never answers in time; it says so on stderr first, so a test knows the loop is wedged.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import anyio

SLOW_SECONDS = 1.5
BLOCK_SECONDS = 30.0
#: Printed on stderr (the supervisor's) when ``/block`` starts blocking.
BLOCK_MARKER = "worker_apps: blocking the event loop"


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """See the module docstring."""
    if scope["type"] != "http":
        return
    if scope["path"] == "/slow":
        await anyio.sleep(SLOW_SECONDS)
    elif scope["path"] == "/block":
        print(f"{BLOCK_MARKER} (pid {os.getpid()})", file=sys.stderr, flush=True)
        time.sleep(BLOCK_SECONDS)  # blocks the whole event loop, on purpose
    early = (b"early-data", b"1") in scope["headers"]
    body = json.dumps({"pid": os.getpid(), "client": scope.get("client"), "early": early}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})
