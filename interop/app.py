"""The ASGI app quicserve serves during an interop run.

Every answer is something a client can check on its own, so a case is judged from what
came back, never from the absence of errors:

- ``GET /files/<size>``: ``size`` bytes of deterministic content (:func:`file_body`), so
  the client can compare the sha256 of what it got with :func:`file_sha256`.
- ``POST /sha256``: the body is read as it streams in and answered with
  ``"<length> <sha256 hex>"``.
- ``GET /proto``: the ``http_version`` the server saw (``1.1``, ``2`` or ``3``).
- ``GET /client``: JSON ``{"client": [host, port], "http_version": ...}``: the peer
  address as the server sees it now (it follows NAT rebinding).
- ``GET /early``: ``1`` when quicserve marked the request as received in 0-RTT
  (``early-data: 1``, RFC 8470 §5.1), else ``0``.
- ``GET /page``: an HTML page for browsers that fetches ``/proto`` until it reads ``3``.
- anything else: ``ok``.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from typing import Any

_BLOCK = hashlib.sha256(b"quicserve interop").digest() * 2048  # 64 KiB, never all one byte

PAGE = b"""<!doctype html><html><body><pre id="out">loading</pre><script>
async function go() {
  const seen = [];
  for (let i = 0; i < 300; i++) {
    const response = await fetch('/proto?i=' + i, {cache: 'no-store'});
    seen.push(await response.text());
    if (seen[seen.length - 1] === '3') break;
    await new Promise(resolve => setTimeout(resolve, 20));
  }
  document.getElementById('out').textContent = 'protocols:' + seen.join(',');
}
go();
</script></body></html>"""

MAX_FILE = 200 * 1024 * 1024


def file_body(size: int) -> bytes:
    """The content of ``/files/<size>``: a repeating 64 KiB block, cut to ``size``."""
    whole, rest = divmod(size, len(_BLOCK))
    return _BLOCK * whole + _BLOCK[:rest]


@lru_cache(maxsize=32)
def file_sha256(size: int) -> str:
    """The sha256 (hex) a client must find for ``/files/<size>``."""
    return hashlib.sha256(file_body(size)).hexdigest()


async def _respond(send: Any, status: int, body: bytes, kind: bytes = b"text/plain") -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", kind), (b"content-length", b"%d" % len(body))],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The interop app (see the module docstring for its routes)."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    path: str = scope["path"]
    if path.startswith("/files/"):
        try:
            size = int(path.removeprefix("/files/"))
        except ValueError:
            size = -1
        if not 0 <= size <= MAX_FILE:
            await _respond(send, 404, b"no such file")
            return
        # Sent in 1 MiB pieces so big files also exercise flow control on the way out.
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/octet-stream"),
                    (b"content-length", b"%d" % size),
                ],
            }
        )
        body = file_body(size)
        step = 1024 * 1024
        for start in range(0, max(size, 1), step):
            piece = body[start : start + step]
            await send(
                {"type": "http.response.body", "body": piece, "more_body": start + step < size}
            )
        return
    if path == "/sha256":
        digest = hashlib.sha256()
        length = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            digest.update(chunk)
            length += len(chunk)
            if not message.get("more_body", False):
                break
        await _respond(send, 200, f"{length} {digest.hexdigest()}".encode())
        return
    if path == "/proto":
        await _respond(send, 200, scope["http_version"].encode())
        return
    if path == "/client":
        client = list(scope.get("client") or ("", 0))
        body = json.dumps({"client": client, "http_version": scope["http_version"]})
        await _respond(send, 200, body.encode(), b"application/json")
        return
    if path == "/early":
        early = (b"early-data", b"1") in [tuple(h) for h in scope["headers"]]
        await _respond(send, 200, b"1" if early else b"0")
        return
    if path == "/page":
        await _respond(send, 200, PAGE, b"text/html")
        return
    await _respond(send, 200, b"ok")
