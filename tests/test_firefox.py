"""A second real browser: headless Firefox (Debian ``firefox-esr``) against quicserve.

Firefox trusts the test CA through a throwaway profile's NSS database
(:func:`clientkit.firefox.make_profile`); it moves to HTTP/3 only through ``alt-svc``
(it has no switch to force QUIC), so these tests also show the ``alt-svc`` path working
for a browser that is not Chromium. A page reports what it saw by fetching back to the
server; what counts is what the server saw (``http_version`` of each scope).

What Firefox 153 ESR does, as the tests pin it:

* the navigation goes over HTTP/2, later fetches over HTTP/3 once ``alt-svc`` was read;
* a ``wss://`` WebSocket rides the page's HTTP/2 connection (RFC 8441), before and after
  HTTP/3 is up: Firefox has no WebSockets over HTTP/3 (RFC 9220) yet;
* ``ws://`` from a plain page is HTTP/1.1;
* WebTransport goes to QUIC on the URL's port (not through ``alt-svc``) and speaks
  draft-02 (``sec-webtransport-http3-draft02: 1``): a datagram, a bidirectional and a
  unidirectional stream in each direction, the page's and those the app opens and sends
  first (``clientkit/wtpage.py``, the same session as Chromium's).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest

from clientkit import firefox, wtpage
from quicserve.certs import DevCertificate

from .helpers import running_server, wait_for

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.client("firefox-esr", "certutil"),
    pytest.mark.timeout(120),
]

#: The HTTPS page: fetches until HTTP/3, a WebSocket before and after, then WebTransport
#: on the QUIC port given in the query string; reports one JSON object to /report.
HTTPS_PAGE = (
    b"<!doctype html><html><body><script>"
    + wtpage.WT_SCRIPT.encode()
    + b"""
const encode = text => new TextEncoder().encode(text);
const decode = bytes => new TextDecoder().decode(bytes);
const sleep = ms => new Promise(resolve => setTimeout(resolve, ms));
const proto = async i => (await fetch('/proto?i=' + i, {cache: 'no-store'})).text();
function echo(url) {
  return new Promise(resolve => {
    const ws = new WebSocket(url);
    let result = 'no message';
    ws.onopen = () => ws.send('hello from firefox');
    ws.onmessage = event => { result = event.data; ws.close(1000, 'done'); };
    ws.onerror = () => { result = 'error'; };
    ws.onclose = event => resolve(result + ' close:' + event.code);
  });
}
async function readAll(readable) {
  let text = '';
  const reader = readable.getReader();
  while (true) {
    const {value, done} = await reader.read();
    if (done) return text;
    text += decode(value);
  }
}
async function go() {
  const out = {first: await proto(0)};
  out.ws_before = await echo('wss://' + location.host + '/echo');
  out.fetches_to_h3 = null;
  for (let i = 1; i <= 100 && out.fetches_to_h3 === null; i++) {
    if (await proto(i) === '3') out.fetches_to_h3 = i; else await sleep(50);
  }
  out.ws_after = await echo('wss://' + location.host + '/echo');
  const wtUrl = 'https://localhost:' + location.search.slice(1) + '/wt';
  try { out.wt = await webtransportBothWays(wtUrl, 'firefox'); }
  catch (error) { out.wt = 'error: ' + error; }
  return out;
}
go().catch(error => ({error: String(error)})).then(
  out => fetch('/report', {method: 'POST', body: JSON.stringify(out)}));
</script></body></html>"""
)

#: The plain page: one WebSocket on ws:// (HTTP/1.1).
PLAIN_PAGE = b"""<!doctype html><html><body><script>
const ws = new WebSocket('ws://' + location.host + '/echo');
let result = 'no message';
ws.onopen = () => ws.send('hello from firefox');
ws.onmessage = event => { result = event.data; ws.close(1000, 'done'); };
ws.onerror = () => { result = 'error'; };
ws.onclose = event => fetch('/report', {method: 'POST', body: result + ' close:' + event.code});
</script></body></html>"""


class FirefoxApp:
    """Serves a page at /, ``http_version`` at /proto, echoes WebSocket messages, plays
    the server's part of clientkit/wtpage.py's WebTransport session, and keeps every scope
    it saw and the report."""

    def __init__(self, page: bytes) -> None:
        self.page = page
        self.seen: list[tuple[str, str, str]] = []  # (type, path, http_version)
        self.webtransport_headers: list[dict[bytes, bytes]] = []
        self.webtransport_seen: list[dict[str, Any]] = []
        self.report = ""
        self.reported = anyio.Event()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            return
        self.seen.append((scope["type"], scope["path"], scope["http_version"]))
        if scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
        elif scope["type"] == "webtransport":
            self.webtransport_headers.append(dict(scope["headers"]))
            await self._webtransport(receive, send)
        else:
            await self._http(scope, receive, send)

    async def _http(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        kind = b"text/plain"
        if scope["path"] == "/proto":
            answer = scope["http_version"].encode()
        elif scope["path"] == "/report":
            self.report = body.decode()
            self.reported.set()
            answer = b"ok"
        else:
            answer, kind = self.page, b"text/html"
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", kind), (b"content-length", b"%d" % len(answer))],
            }
        )
        await send({"type": "http.response.body", "body": answer})

    async def _websocket(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            text = f"{message['text']} over HTTP/{scope['http_version']}"
            await send({"type": "websocket.send", "text": text})

    async def _webtransport(self, receive: Any, send: Any) -> None:
        self.webtransport_seen.append(await wtpage.serve_session(receive, send))


async def make_profile(tmp_path: Path, tls: DevCertificate) -> Path:
    return await anyio.to_thread.run_sync(
        firefox.make_profile, tmp_path / "firefox", tls.ca_certfile
    )


async def test_firefox_h2_alt_svc_h3_websocket_and_webtransport(
    anyio_backend: object, tls_files: DevCertificate, tmp_path: Path
) -> None:
    """One page: HTTP/2, then HTTP/3 through alt-svc, a WebSocket over HTTP/2 before and
    after, and a WebTransport session (datagram, bidirectional, unidirectional: both
    ways)."""
    profile = await make_profile(tmp_path, tls_files)
    app = FirefoxApp(HTTPS_PAGE)
    # The page's HTTP/2 connection must outlive the script's pauses, or a WebSocket could
    # not ride it (as in tests/test_browser.py).
    options: dict[str, Any] = {"quic_bind": ("127.0.0.1:0",), "webtransport": True}
    async with running_server(app, tls=tls_files, keep_alive_timeout=120.0, **options) as srv:
        quic_port = next(a.port for a in srv.addresses if a.transport == "udp")
        url = f"https://localhost:{srv.port('https')}/?{quic_port}"
        await firefox.run_until(app.reported, url, profile)
        await wait_for(lambda: len(app.webtransport_seen) == 1)
    report = json.loads(app.report)
    seen = (report, app.seen)
    assert app.seen[0] == ("http", "/", "2"), seen
    assert report["fetches_to_h3"] is not None, seen  # alt-svc moved fetches to HTTP/3
    assert ("http", "/proto", "3") in app.seen, seen
    assert report["ws_before"] == "hello from firefox over HTTP/2 close:1000", seen
    assert report["ws_after"] == "hello from firefox over HTTP/2 close:1000", seen
    assert [s for s in app.seen if s[0] == "websocket"] == [("websocket", "/echo", "2")] * 2
    assert report["wt"] == wtpage.expected("firefox"), seen
    assert app.webtransport_seen[0]["answer"] == "answer from firefox"
    assert [s for s in app.seen if s[0] == "webtransport"] == [("webtransport", "/wt", "3")]
    assert app.webtransport_headers[0].get(b"sec-webtransport-http3-draft02") == b"1"


async def test_firefox_websocket_over_http1(
    anyio_backend: object, tls_files: DevCertificate, tmp_path: Path
) -> None:
    """A plain page's ``ws://`` WebSocket is HTTP/1.1 (the Upgrade handshake)."""
    profile = await make_profile(tmp_path, tls_files)
    app = FirefoxApp(PLAIN_PAGE)
    async with running_server(app) as srv:
        await firefox.run_until(app.reported, f"http://localhost:{srv.port('http')}/", profile)
    assert app.report == "hello from firefox over HTTP/1.1 close:1000", app.seen
    assert ("websocket", "/echo", "1.1") in app.seen
