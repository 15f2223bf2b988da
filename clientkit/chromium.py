"""Headless Chromium: its command line, two ways to run it, and the page both suites load.

Chromium trusts the throwaway leaf certificate through its SPKI pin
(``--ignore-certificate-errors-spki-list``; ``quicserve.certs.spki_sha256_base64`` makes
it), and resolves ``localhost`` to 127.0.0.1. HTTP/3 is used only where asked:
:func:`force_quic` forces QUIC to one origin; :data:`QUIC_ALLOWED` allows QUIC without
forcing it anywhere that matters, so the move from h2 to h3 has to come from alt-svc.

Two ways to see what a page did: :func:`dump_dom` for pages that finish within
``--dump-dom``'s virtual time (fetches), :func:`run_until` for pages that report back to
the server (open WebSockets and WebTransport sessions do not hold virtual time).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import anyio

#: A page that fetches ``/proto`` (the ``http_version`` the server saw) until it reads
#: ``3``, then shows every answer: ``protocols:2,2,3``.
PROTO_PAGE = b"""<!doctype html><html><body><pre id="out">loading</pre><script>
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

#: QUIC allowed, but forced only on a port nothing listens on.
QUIC_ALLOWED = "--origin-to-force-quic-on=localhost:9"
#: RFC 9220: WebSockets over HTTP/3 (off by default in Chromium).
WEBSOCKETS_OVER_HTTP3 = "--enable-features=EnableWebsocketsOverHttp3"
#: Virtual time --dump-dom grants a page before printing its DOM (milliseconds).
VIRTUAL_TIME_BUDGET = 20000


def force_quic(port: int) -> str:
    """The flag that makes Chromium use HTTP/3 to ``localhost:port`` from the start."""
    return f"--origin-to-force-quic-on=localhost:{port}"


def command(url: str, spki: str, profile: Path | str, *flags: str) -> list[str]:
    """Headless Chromium trusting the leaf pinned by ``spki``, with ``flags``, on ``url``."""
    return [
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
        f"--ignore-certificate-errors-spki-list={spki}",
        "--host-resolver-rules=MAP localhost 127.0.0.1",
        *flags,
        url,
    ]


def dump_dom(url: str, spki: str, profile: Path | str, *flags: str, timeout: float = 120.0) -> str:
    """Load ``url`` and return the DOM once the page's script ran (blocking: call it
    from a worker thread in async code)."""
    budget = f"--virtual-time-budget={VIRTUAL_TIME_BUDGET}"
    done = subprocess.run(
        command(url, spki, profile, budget, *flags, "--dump-dom"),
        capture_output=True,
        timeout=timeout,
        check=False,
    )
    return done.stdout.decode(errors="replace")


def shown(dom: str) -> str | None:
    """The text of the page's ``<pre id="out">``, or None if the DOM has none."""
    if 'id="out">' not in dom:
        return None
    return dom.split('id="out">', 1)[1].split("<", 1)[0]


async def run_until(
    reported: anyio.Event,
    url: str,
    spki: str,
    profile: Path | str,
    *flags: str,
    timeout: float = 60.0,
) -> None:
    """Run Chromium on ``url`` until the page reports to the app (``reported`` is set),
    then stop the browser."""
    async with await anyio.open_process(command(url, spki, profile, *flags)) as browser:
        try:
            with anyio.fail_after(timeout):
                await reported.wait()
        finally:
            browser.terminate()
