"""Headless Chromium: a page over HTTP/3, and the move from h2 to h3 through alt-svc.

The page (``/page`` of the interop app) fetches ``/proto`` until it reads ``3`` and writes
every answer into the DOM, which ``--dump-dom`` prints: each answer is the http_version
the *server* saw. Chromium trusts the throwaway leaf through its SPKI hash.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile

from ..cases import Result, Server, fail, passed

NAME = "chromium"
CASES = {"http3", "altsvc"}
UNSUPPORTED = "only page loads are driven in chromium"


def available() -> str | None:
    return None if shutil.which("chromium") else "apt-get install chromium"


def supports(case: str) -> bool:
    return case in CASES


def _dump_dom(url: str, server: Server, *flags: str) -> str:
    from quicserve.certs import spki_sha256_base64

    with tempfile.TemporaryDirectory(dir=server.workdir or None) as profile:
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
            f"--ignore-certificate-errors-spki-list={spki_sha256_base64(server.certfile)}",
            "--host-resolver-rules=MAP localhost 127.0.0.1",
            "--virtual-time-budget=20000",
            *flags,
            "--dump-dom",
            url,
        ]
        done = subprocess.run(command, capture_output=True, timeout=120, check=False)
    return done.stdout.decode(errors="replace")


def _shown(dom: str) -> str | None:
    if 'id="out">' not in dom:
        return None
    return dom.split('id="out">', 1)[1].split("<", 1)[0]


def run(case: str, server: Server) -> Result:
    if case == "http3":
        port = server.h3_port
        dom = _dump_dom(
            f"https://localhost:{port}/page", server, f"--origin-to-force-quic-on=localhost:{port}"
        )
        shown = _shown(dom)
        if shown != "protocols:3":
            return fail(f"page shows {shown!r} (dom tail {dom[-120:]!r})")
        return passed("page loaded over QUIC; its fetch('/proto') answered 3 by the server")
    if case == "altsvc":
        dom = _dump_dom(
            f"https://localhost:{server.https_port}/page",
            server,
            "--origin-to-force-quic-on=localhost:9",  # QUIC allowed, nothing forced here
        )
        shown = _shown(dom) or ""
        seen = shown.removeprefix("protocols:").split(",")
        if not shown.startswith("protocols:") or seen[0] != "2" or seen[-1] != "3":
            return fail(f"page shows {shown[:80]!r}, wanted 2 first and 3 last")
        return passed(f"server saw /proto as {seen[0]} then {seen[-1]} after {len(seen)} fetches")
    return fail(f"unsupported case {case}")
