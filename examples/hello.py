"""The example app: ``quicserve examples.hello:app``.

A plain ASGI 3 app with no framework, so it shows exactly what the server hands over:
``/`` greets and reports the protocol the request came in on (to a browser, as a page
whose script asks ``/protocol`` until the browser has moved to HTTP/3 through alt-svc),
``/echo`` streams the request body back, ``/stream`` sends a chunked response,
``/trailers`` sends trailers when the client accepts them.
"""

from __future__ import annotations

from typing import Any

#: What a browser gets at ``/``: the protocol of the page, then of each later request.
PAGE = b"""<!doctype html><html><head><meta charset="utf-8"><title>quicserve</title></head>
<body><h1>Hello from quicserve</h1>
<p>This page came over <b>HTTP/{version}</b>.</p><p id="now"></p>
<script>
(async () => {
  const now = document.getElementById('now');
  for (let i = 0; i < 40; i++) {
    const version = await (await fetch('/protocol', {cache: 'no-store'})).text();
    now.textContent = 'Requests from this page now go over HTTP/' + version + '.';
    if (version === '3') return;
    await new Promise(resolve => setTimeout(resolve, 250));
  }
  now.textContent += ' (No HTTP/3: see "HTTP/3 in a browser" in certs/README.md.)';
})();
</script></body></html>
"""


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Route the few example endpoints."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                scope["state"]["started"] = True
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    path = scope["path"]
    if path == "/echo":
        body = b""
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
        await _respond(send, 200, body, b"application/octet-stream")
    elif path == "/stream":
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/plain")],
            }
        )
        for i in range(5):
            await send({"type": "http.response.body", "body": b"chunk %d\n" % i, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    elif path == "/trailers" and "http.response.trailers" in scope["extensions"]:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "trailers": True,
                "headers": [(b"content-type", b"text/plain")],
            }
        )
        await send({"type": "http.response.body", "body": b"body with trailers\n"})
        await send({"type": "http.response.trailers", "headers": [(b"x-checksum", b"42")]})
    elif path == "/protocol":
        await _respond(send, 200, scope["http_version"].encode(), b"text/plain")
    elif path == "/" and b"text/html" in dict(scope["headers"]).get(b"accept", b""):
        page = PAGE.replace(b"{version}", scope["http_version"].encode())
        await _respond(send, 200, page, b"text/html; charset=utf-8")
    else:
        text = (
            f"Hello from quicserve over HTTP/{scope['http_version']} "
            f"({scope['scheme']}) at {scope['path']}\n"
        )
        await _respond(send, 200, text.encode(), b"text/plain; charset=utf-8")


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
