"""A real browser: headless Chromium (Debian package ``chromium``) against quicserve.

1. With QUIC forced to the test origin, a page loads over HTTP/3.
2. With QUIC forced only to a dummy origin, the first navigation goes over HTTP/2 and a
   later request switches to HTTP/3 by itself, through the ``alt-svc`` header.

What counts is what the server saw (``http_version`` of each request), not what the page
says. Chromium trusts the test certificate through ``--ignore-certificate-errors-spki-list``
(the SPKI hash of the leaf). Skipped, with the reason, only where chromium is not installed;
``.ci/run`` installs it.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import anyio
import pytest

from quicserve.certs import DevCertificate, spki_sha256_base64

from .helpers import running_server

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(
        shutil.which("chromium") is None, reason="chromium not installed (apt-get install chromium)"
    ),
    pytest.mark.timeout(120),
]

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


class RecordingApp:
    """Serves PAGE at / and the request's http_version at /proto, and remembers both."""

    def __init__(self) -> None:
        self.versions: list[tuple[str, str]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        self.versions.append((scope["path"], scope["http_version"]))
        if scope["path"] == "/proto":
            body, kind = scope["http_version"].encode(), b"text/plain"
        else:
            body, kind = PAGE, b"text/html"
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", kind), (b"content-length", b"%d" % len(body))],
            }
        )
        await send({"type": "http.response.body", "body": body})


async def run_chromium(url: str, tls: DevCertificate, profile: Path, *flags: str) -> str:
    """Load ``url`` headless and return the DOM after the page's script ran."""
    command = [
        "chromium",
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--enable-quic",
        f"--ignore-certificate-errors-spki-list={spki_sha256_base64(tls.certfile)}",
        "--host-resolver-rules=MAP localhost 127.0.0.1",
        "--virtual-time-budget=20000",
        *flags,
        "--dump-dom",
        url,
    ]
    with anyio.fail_after(90):
        result = await anyio.run_process(command, check=False)
    return result.stdout.decode(errors="replace")


async def test_page_loads_over_http3(
    anyio_backend: object, tls_files: DevCertificate, tmp_path: Path
) -> None:
    app = RecordingApp()
    async with running_server(app, tls=tls_files, quic_bind=("127.0.0.1:0",)) as srv:
        port = next(a.port for a in srv.addresses if a.transport == "udp")
        dom = await run_chromium(
            f"https://localhost:{port}/",
            tls_files,
            tmp_path,
            f"--origin-to-force-quic-on=localhost:{port}",
        )
    assert 'id="out">protocols:3<' in dom, dom[-500:]
    assert app.versions[0] == ("/", "3")  # the navigation itself came over HTTP/3


async def test_alt_svc_moves_chromium_from_h2_to_h3(
    anyio_backend: object, tls_files: DevCertificate, tmp_path: Path
) -> None:
    app = RecordingApp()
    async with running_server(app, tls=tls_files, quic_bind=("127.0.0.1:0",)) as srv:
        port = srv.port("https")
        dom = await run_chromium(
            f"https://localhost:{port}/",
            tls_files,
            tmp_path,
            "--origin-to-force-quic-on=localhost:9",  # QUIC allowed, but nothing forced here
        )
    assert app.versions[0] == ("/", "2"), app.versions[:3]  # first navigation: h2 over TCP
    later = [version for _, version in app.versions[1:]]
    assert "3" in later, (app.versions[:5], dom[-300:])  # ... then HTTP/3 via alt-svc
    # The page's own fetches end on h3. Its first fetch may already be h3: Chromium starts
    # the QUIC handshake as soon as it reads alt-svc on the navigation, and on a fast
    # loopback that can finish before the script's first fetch (seen in CI).
    shown = dom.split('id="out">', 1)[1].split("<", 1)[0]
    assert shown.startswith("protocols:") and shown.endswith("3"), shown


WS_PAGE = b"""<!doctype html><html><body><pre id="out">loading</pre><script>
const show = text => { document.getElementById('out').textContent = text; };
const ws = new WebSocket('wss://' + location.host + '/echo');
let result = '';
ws.onopen = () => ws.send('hello from chromium');
ws.onmessage = event => { result = 'echo:' + event.data; ws.close(1000, 'done'); };
ws.onerror = () => { result = 'error'; };
ws.onclose = async event => {
  const after = await (await fetch('/proto', {cache: 'no-store'})).text();
  show(result + ' close:' + event.code + ' after:' + after);
};
</script></body></html>"""


class WebSocketPageApp(RecordingApp):
    """Serves WS_PAGE at /, echoes WebSocket messages with the scope's http_version."""

    def __init__(self) -> None:
        super().__init__()
        self.websockets: list[str] = []
        self.disconnects: list[int] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/":
            self.versions.append(("/", scope["http_version"]))
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"text/html")],
                }
            )
            await send({"type": "http.response.body", "body": WS_PAGE})
            return
        if scope["type"] != "websocket":
            await super().__call__(scope, receive, send)
            return
        self.websockets.append(scope["http_version"])
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                self.disconnects.append(message["code"])
                return
            text = f"{message['text']} over HTTP/{scope['http_version']}"
            await send({"type": "websocket.send", "text": text})


async def test_websocket_over_http2(
    anyio_backend: object, tls_files: DevCertificate, tmp_path: Path
) -> None:
    """Chromium's default: a WebSocket rides the page's HTTP/2 connection (RFC 8441)."""
    app = WebSocketPageApp()
    async with running_server(app, tls=tls_files) as srv:
        port = srv.port("https")
        dom = await run_chromium(f"https://localhost:{port}/", tls_files, tmp_path)
        assert srv.server.registry.total_accepted == 1  # page and WebSocket: one connection
    shown = dom.split('id="out">', 1)[1].split("<", 1)[0]
    assert shown == "echo:hello from chromium over HTTP/2 close:1000 after:2", dom[-400:]
    assert app.websockets == ["2"]
    assert app.disconnects == [1000]


async def test_websocket_over_http3_then_more_http3(
    anyio_backend: object, tls_files: DevCertificate, tmp_path: Path
) -> None:
    """With EnableWebsocketsOverHttp3 and QUIC forced, the WebSocket is an RFC 9220
    extended CONNECT; afterwards the same QUIC endpoint still serves HTTP/3 (the page's
    fetch, then a second page load on a fresh browser)."""
    app = WebSocketPageApp()
    async with running_server(app, tls=tls_files, quic_bind=("127.0.0.1:0",)) as srv:
        port = next(a.port for a in srv.addresses if a.transport == "udp")
        flags = (
            f"--origin-to-force-quic-on=localhost:{port}",
            "--enable-features=EnableWebsocketsOverHttp3",
        )
        dom = await run_chromium(f"https://localhost:{port}/", tls_files, tmp_path, *flags)
        again = await run_chromium(
            f"https://localhost:{port}/", tls_files, tmp_path / "second", *flags
        )
    for page in (dom, again):
        shown = page.split('id="out">', 1)[1].split("<", 1)[0]
        assert shown == "echo:hello from chromium over HTTP/3 close:1000 after:3", page[-400:]
    assert app.websockets == ["3", "3"]
    assert app.disconnects == [1000, 1000]
    assert app.versions[0] == ("/", "3")
