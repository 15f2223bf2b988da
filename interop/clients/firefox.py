"""Headless Firefox: HTTP/3 through alt-svc, WebSockets, WebTransport.

Firefox trusts the run's throwaway CA through a fresh profile (:mod:`clientkit.firefox`,
shared with tests/test_firefox.py). It has no ``--dump-dom``, so the page is loaded with
``?report=<token>``: once it shows its result it POSTs it to the interop app, and this
adapter reads it back from ``/report/<token>`` on the cleartext port. The pages are the
ones Chromium loads (``/page``, ``/wspage``, ``/wtpage``), so both browsers are judged
on the same evidence.

Firefox cannot be told to use QUIC for an origin from the start: ``http3`` and ``altsvc``
both load the page over TLS and follow ``alt-svc``. WebTransport does not follow
``alt-svc``: ``/wtpage?wt=<port>`` opens the session on the QUIC port.
"""

from __future__ import annotations

import secrets
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from clientkit import firefox, missing

from ..cases import WT_CASES, Result, Server, fail, passed
from . import wt_page

NAME = "firefox"
CASES = {"http3", "altsvc", "ws-h1", "ws-h2", "webtransport", *WT_CASES} - {"wt-handshake"}
UNSUPPORTED = {
    "ws-h3": "Firefox 153 has no WebSockets over HTTP/3 (RFC 9220): wss stays on HTTP/2",
    "wt-handshake": "Firefox 153 has no WebTransport `protocols` option (wt.protocol is"
    " undefined): it cannot negotiate a protocol",
    "*": "only page loads are driven in firefox",
}
WS_WANT = "proto:{} text:ok binary:ok close:4321"
PAGE_TIMEOUT = 90.0


def available() -> str | None:
    return missing("firefox-esr") or missing("certutil")


def supports(case: str) -> bool:
    return case in CASES


def _shown(url: str, server: Server) -> tuple[str, str]:
    """Load ``url`` (which must take ``&report=``); the http_version the server served
    the page over, and what the page showed."""
    token = secrets.token_hex(8)
    report = f"http://127.0.0.1:{server.http_port}/report/{token}"
    with tempfile.TemporaryDirectory(dir=server.workdir or None) as tmp:
        profile = firefox.make_profile(Path(tmp) / "profile", Path(server.ca_certfile))
        command = firefox.command(f"{url}&report={token}", profile)
        browser = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + PAGE_TIMEOUT
            while time.monotonic() < deadline:
                if browser.poll() is not None:
                    return "", f"firefox exited {browser.returncode} before the page reported"
                try:
                    with urllib.request.urlopen(report, timeout=5) as answer:
                        said = str(answer.read().decode(errors="replace"))
                    served, _, shown = said.partition(" ")
                    return served.removeprefix("page:"), shown
                except urllib.error.HTTPError as error:
                    if error.code != 404:
                        raise
                time.sleep(0.2)
            return "", f"no report after {PAGE_TIMEOUT:.0f} s"
        finally:
            browser.terminate()
            try:
                browser.wait(10)
            except subprocess.TimeoutExpired:
                browser.kill()
                browser.wait(5)


def run(case: str, server: Server) -> Result:
    if case in ("http3", "altsvc"):
        served, shown = _shown(f"https://localhost:{server.https_port}/page?firefox=1", server)
        seen = shown.removeprefix("protocols:").split(",")
        if not shown.startswith("protocols:") or seen[-1] != "3":
            return fail(f"page shows {shown[:80]!r}, wanted 3 last")
        if case == "altsvc" and served != "2":
            return fail(f"the page came over HTTP/{served}, wanted HTTP/2 before alt-svc")
        return passed(
            f"server sent the page over HTTP/{served}, then saw /proto as {seen[-1]} after"
            f" {len(seen)} fetch(es) (Firefox moves to HTTP/3 only through alt-svc)"
        )
    if case in ("ws-h1", "ws-h2"):
        if case == "ws-h1":
            url = f"http://localhost:{server.http_port}/wspage?firefox=1"
        else:
            url = f"https://localhost:{server.https_port}/wspage?firefox=1"
        version = {"ws-h1": "1.1", "ws-h2": "2"}[case]
        _, shown = _shown(url, server)
        if shown != WS_WANT.format(version):
            return fail(f"page shows {shown!r}, wanted {WS_WANT.format(version)!r}")
        return passed(
            f"page's WebSocket: server said HTTP/{version}, text and 1024-byte binary echoed"
            " byte for byte, onclose code 4321 (the server's)"
        )
    if case in WT_CASES:
        # The page over TLS (HTTP/2); the session on the QUIC port (no alt-svc for WT).
        path = wt_page.path(case, server.h3_port)
        _, shown = _shown(f"https://localhost:{server.https_port}{path}", server)
        return wt_page.check(case, shown, "Firefox")
    if case == "webtransport":
        url = f"https://localhost:{server.https_port}/wtpage?wt={server.h3_port}"
        _, shown = _shown(url, server)
        if shown != "datagram:ok stream:ok":
            return fail(f"page shows {shown!r}, wanted 'datagram:ok stream:ok'")
        return passed(
            "Firefox's WebTransport session (draft-02): a datagram and a bidirectional"
            " stream came back with the server's echo: prefix"
        )
    return fail(f"unsupported case {case}")
