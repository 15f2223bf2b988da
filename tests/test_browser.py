"""A real browser: headless Chromium (Debian package ``chromium``) against quicserve.

1. With QUIC forced to the test origin, a page loads over HTTP/3.
2. With QUIC forced only to a dummy origin, the first navigation goes over HTTP/2 and a
   later request switches to HTTP/3 by itself, through the ``alt-svc`` header.

What counts is what the server saw (``http_version`` of each request), not what the page
says. Chromium trusts the test certificate through ``--ignore-certificate-errors-spki-list``
(the SPKI hash of the leaf). The command line, the launch helpers and the page are
:mod:`clientkit.chromium`'s, shared with ``interop/``. Needs ``chromium``
(``@pytest.mark.client``: skipped where it is missing, a failure in CI, which installs it).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest

from clientkit import chromium, wtpage
from quicserve.certs import DevCertificate, spki_sha256_base64

from .helpers import running_server, wait_for

pytestmark = [pytest.mark.anyio, pytest.mark.client("chromium"), pytest.mark.timeout(120)]


class RecordingApp:
    """Serves chromium.PROTO_PAGE at / and the request's http_version at /proto, and
    remembers both."""

    def __init__(self) -> None:
        self.versions: list[tuple[str, str]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        self.versions.append((scope["path"], scope["http_version"]))
        if scope["path"] == "/proto":
            body, kind = scope["http_version"].encode(), b"text/plain"
        else:
            body, kind = chromium.PROTO_PAGE, b"text/html"
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", kind), (b"content-length", b"%d" % len(body))],
            }
        )
        await send({"type": "http.response.body", "body": body})


async def read_body(receive: Any) -> str:
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body.decode()


async def run_chromium_until(
    reported: anyio.Event, url: str, tls: DevCertificate, profile: Path, *flags: str
) -> None:
    """Chromium on ``url`` until the page reports to the app (``reported`` is set); for
    pages whose work --dump-dom's virtual time would not wait for (WebSockets,
    WebTransport)."""
    spki = spki_sha256_base64(tls.certfile)
    await chromium.run_until(reported, url, spki, profile, *flags)


async def run_chromium(url: str, tls: DevCertificate, profile: Path, *flags: str) -> str:
    """Load ``url`` headless and return the DOM after the page's script ran."""
    spki = spki_sha256_base64(tls.certfile)
    load = functools.partial(chromium.dump_dom, url, spki, profile, *flags, timeout=90)
    return await anyio.to_thread.run_sync(load)


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
            chromium.force_quic(port),
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
            chromium.QUIC_ALLOWED,  # QUIC allowed, but nothing forced here
        )
    assert app.versions[0] == ("/", "2"), app.versions[:3]  # first navigation: h2 over TCP
    later = [version for _, version in app.versions[1:]]
    assert "3" in later, (app.versions[:5], dom[-300:])  # ... then HTTP/3 via alt-svc
    # The page's own fetches end on h3. Its first fetch may already be h3: Chromium starts
    # the QUIC handshake as soon as it reads alt-svc on the navigation, and on a fast
    # loopback that can finish before the script's first fetch (seen in CI).
    shown = chromium.shown(dom) or ""
    assert shown.startswith("protocols:") and shown.endswith("3"), shown


WS_PAGE = b"""<!doctype html><html><body><pre id="out">loading</pre><script>
const show = text => { document.getElementById('out').textContent = text; };
function open(attempt) {
  const ws = new WebSocket('wss://' + location.host + '/echo');
  let result = '';
  ws.onopen = () => ws.send('hello from chromium');
  ws.onmessage = event => { result = 'echo:' + event.data; ws.close(1000, 'done'); };
  ws.onerror = () => { result = 'error'; };
  ws.onclose = async event => {
    // One more try if Chromium put this one on a fresh HTTP/1.1 connection (see the test).
    if (attempt === 0 && result.endsWith('HTTP/1.1') && location.search === '?retry') {
      open(1);
      return;
    }
    const after = await (await fetch('/proto', {cache: 'no-store'})).text();
    // Virtual time (--dump-dom) does not wait for WebSockets: report to the server.
    const text = result + ' close:' + event.code + ' after:' + after;
    await fetch('/report', {method: 'POST', body: text});
  };
}
open(0);
</script></body></html>"""


class WebSocketPageApp(RecordingApp):
    """Serves WS_PAGE at /, echoes WebSocket messages with the scope's http_version."""

    def __init__(self) -> None:
        super().__init__()
        self.websockets: list[str] = []
        self.disconnects: list[int] = []
        self.reports: list[str] = []
        self.reported = anyio.Event()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/report":
            self.reports.append(await read_body(receive))
            self.reported.set()
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
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
    # Chromium puts a WebSocket on HTTP/2 only while the page's HTTP/2 connection is open;
    # a new connection for a WebSocket is always HTTP/1.1. In one CI run the script ran more
    # than the default 5 s keep-alive after the page arrived, the server closed the idle
    # connection, and the WebSocket came over HTTP/1.1 (reproduced by delaying the script
    # 0.5 s with keep_alive_timeout=0.05). This test is about RFC 8441: keep it open.
    # Even so, twice in full-suite runs on a loaded machine Chromium opened the WebSocket on a
    # fresh HTTP/1.1 connection with the page's HTTP/2 connection still open (cause inside
    # Chromium's session pool, not found; never reproduced alone). The page then tries once
    # more, and the test requires that the WebSocket it reports came over HTTP/2.
    async with running_server(app, tls=tls_files, keep_alive_timeout=120.0) as srv:
        port = srv.port("https")
        url = f"https://localhost:{port}/?retry"
        await run_chromium_until(app.reported, url, tls_files, tmp_path)
    seen = (app.versions, app.websockets)
    assert app.versions[0] == ("/", "2"), seen
    assert app.reports == ["echo:hello from chromium over HTTP/2 close:1000 after:2"], seen
    assert app.websockets[-1] == "2" and app.websockets in (["2"], ["1.1", "2"]), seen
    assert app.disconnects in ([1000], [1000, 1000]), seen


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
            chromium.force_quic(port),
            chromium.WEBSOCKETS_OVER_HTTP3,
        )
        url = f"https://localhost:{port}/"
        await run_chromium_until(app.reported, url, tls_files, tmp_path, *flags)
        app.reported = anyio.Event()
        await run_chromium_until(app.reported, url, tls_files, tmp_path / "second", *flags)
    expected = "echo:hello from chromium over HTTP/3 close:1000 after:3"
    assert app.reports == [expected, expected]
    assert app.websockets == ["3", "3"]
    assert app.disconnects == [1000, 1000]
    assert app.versions[0] == ("/", "3")


WT_PAGE = (
    b"<!doctype html><html><body><script>"
    + wtpage.WT_SCRIPT.encode()
    + b"""
// Virtual time (--dump-dom) does not wait for WebTransport: report to the server instead.
webtransportBothWays('https://' + location.host + '/wt', 'chromium')
  .catch(error => ({error: String(error)}))
  .then(out => fetch('/report', {method: 'POST', body: JSON.stringify(out)}));
</script></body></html>"""
)


class WebTransportPageApp:
    """Serves WT_PAGE at / and the both-ways session of clientkit/wtpage.py at /wt."""

    def __init__(self) -> None:
        self.sessions: list[dict[str, Any]] = []
        self.seen: list[dict[str, Any]] = []
        self.report = ""
        self.reported = anyio.Event()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            body = WT_PAGE
            if scope["path"] == "/report":
                self.report = await read_body(receive)
                body = b""
                self.reported.set()
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"text/html")],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        assert scope["type"] == "webtransport"
        self.sessions.append(scope)
        self.seen.append(await wtpage.serve_session(receive, send))


async def test_webtransport_page(
    anyio_backend: object, tls_files: DevCertificate, tmp_path: Path
) -> None:
    """A WebTransport session from Chromium with a datagram, a bidirectional and a
    unidirectional stream in each direction (clientkit/wtpage.py): the page's own and
    those the app opens and sends first."""
    app = WebTransportPageApp()
    async with running_server(
        app, tls=tls_files, quic_bind=("127.0.0.1:0",), webtransport=True
    ) as srv:
        port = next(a.port for a in srv.addresses if a.transport == "udp")
        await run_chromium_until(
            app.reported,
            f"https://localhost:{port}/",
            tls_files,
            tmp_path,
            chromium.force_quic(port),
        )
        await wait_for(lambda: len(app.seen) == 1)
    assert json.loads(app.report) == wtpage.expected("chromium"), (app.report, app.seen)
    assert app.seen[0]["answer"] == "answer from chromium"
    assert [s["path"] for s in app.sessions] == ["/wt"]
    assert app.sessions[0]["http_version"] == "3"
    # Chromium still speaks draft-02 when a server offers every dialect.
    assert app.sessions[0]["extensions"]["webtransport"] == {"dialect": "draft02"}
