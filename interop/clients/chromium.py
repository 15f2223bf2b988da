"""Headless Chromium: a page over HTTP/3, and the move from h2 to h3 through alt-svc.

The page (``/page`` of the interop app) fetches ``/proto`` until it reads ``3`` and writes
every answer into the DOM, which ``--dump-dom`` prints: each answer is the http_version
the *server* saw. Chromium trusts the throwaway leaf through its SPKI hash. The command
line and the DOM reading are :mod:`clientkit.chromium`'s, shared with the tests.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from clientkit import chromium, missing

from ..cases import WT_CASES, Result, Server, fail, passed
from . import wt_page

NAME = "chromium"
CASES = {"http3", "altsvc", "ws-h1", "ws-h2", "ws-h3", "webtransport", *WT_CASES}
UNSUPPORTED = "only page loads are driven in chromium"
WS_WANT = "proto:{} text:ok binary:ok close:4321"


def available() -> str | None:
    return missing("chromium")


def supports(case: str) -> bool:
    return case in CASES


def _dump_dom(url: str, server: Server, *flags: str) -> str:
    from quicserve.certs import spki_sha256_base64

    spki = spki_sha256_base64(Path(server.certfile))
    with tempfile.TemporaryDirectory(dir=server.workdir or None) as profile:
        return chromium.dump_dom(url, spki, profile, *flags, timeout=120)


def run(case: str, server: Server) -> Result:
    if case == "http3":
        port = server.h3_port
        dom = _dump_dom(f"https://localhost:{port}/page", server, chromium.force_quic(port))
        shown = chromium.shown(dom)
        if shown != "protocols:3":
            return fail(f"page shows {shown!r} (dom tail {dom[-120:]!r})")
        return passed("page loaded over QUIC; its fetch('/proto') answered 3 by the server")
    if case == "altsvc":
        dom = _dump_dom(
            f"https://localhost:{server.https_port}/page",
            server,
            chromium.QUIC_ALLOWED,  # QUIC allowed, nothing forced here
        )
        shown = chromium.shown(dom) or ""
        seen = shown.removeprefix("protocols:").split(",")
        if not shown.startswith("protocols:") or seen[0] != "2" or seen[-1] != "3":
            return fail(f"page shows {shown[:80]!r}, wanted 2 first and 3 last")
        return passed(f"server saw /proto as {seen[0]} then {seen[-1]} after {len(seen)} fetches")
    if case in ("ws-h1", "ws-h2", "ws-h3"):
        return _websocket(case, server)
    if case in WT_CASES:
        port = server.h3_port
        url = f"https://localhost:{port}{wt_page.path(case, port)}"
        shown = chromium.shown(_dump_dom(url, server, chromium.force_quic(port))) or ""
        return wt_page.check(case, shown, "Chromium")
    if case == "webtransport":
        port = server.h3_port
        shown = chromium.shown(
            _dump_dom(
                f"https://localhost:{port}/wtpage",
                server,
                chromium.force_quic(port),
            )
        )
        if shown != "datagram:ok stream:ok":
            return fail(f"page shows {shown!r}, wanted 'datagram:ok stream:ok'")
        return passed(
            "Chromium's WebTransport session: a datagram and a bidirectional stream came back"
            " with the server's echo: prefix"
        )
    return fail(f"unsupported case {case}")


def _websocket(case: str, server: Server) -> Result:
    """/wspage runs the ws script in Chromium's own WebSocket; the DOM shows what it saw.

    ws-h1: the page over the cleartext port (Chromium speaks no h2c, so ``ws:`` is an
    HTTP/1.1 Upgrade); ws-h2: over TLS, where Chromium opens the WebSocket on the page's
    HTTP/2 connection (RFC 8441); ws-h3: QUIC forced to the origin and
    ``EnableWebsocketsOverHttp3`` (RFC 9220).
    """
    flags: tuple[str, ...] = ()
    if case == "ws-h1":
        url = f"http://localhost:{server.http_port}/wspage"
    elif case == "ws-h2":
        url = f"https://localhost:{server.https_port}/wspage"
    else:
        port = server.h3_port
        url = f"https://localhost:{port}/wspage"
        flags = (
            chromium.force_quic(port),
            chromium.WEBSOCKETS_OVER_HTTP3,
        )
    version = {"ws-h1": "1.1", "ws-h2": "2", "ws-h3": "3"}[case]
    shown = chromium.shown(_dump_dom(url, server, *flags))
    if shown != WS_WANT.format(version):
        return fail(f"page shows {shown!r}, wanted {WS_WANT.format(version)!r}")
    return passed(
        f"page's WebSocket: server said HTTP/{version}, text and 1024-byte binary echoed"
        " byte for byte, onclose code 4321 (the server's)"
    )
