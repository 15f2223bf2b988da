"""h2load (nghttp2): a small load of HTTP/1.1, HTTP/2 and h2c requests, all must succeed.

Debian's h2load is built without HTTP/3, so it has no QUIC column.
"""

from __future__ import annotations

import re
import subprocess

from clientkit import missing

from ..cases import Result, Server, fail, passed

NAME = "h2load"
CASES = {"h1-get", "h2-get", "h2c"}
UNSUPPORTED = {
    **dict.fromkeys(
        ("ws-h1", "ws-h2", "ws-h3"), "h2load is a request load generator: no WebSocket"
    ),
    "*": "Debian's h2load is built without HTTP/3",
}
REQUESTS, CLIENTS, STREAMS = 2000, 4, 10


def available() -> str | None:
    return missing("h2load")


def supports(case: str) -> bool:
    return case in CASES


def run(case: str, server: Server) -> Result:
    url = {
        "h1-get": f"https://127.0.0.1:{server.https_port}/proto",
        "h2-get": f"https://127.0.0.1:{server.https_port}/proto",
        "h2c": f"http://127.0.0.1:{server.http_port}/proto",
    }[case]
    extra = ["--h1"] if case == "h1-get" else ["-m", str(STREAMS)]
    done = subprocess.run(
        ["h2load", "-n", str(REQUESTS), "-c", str(CLIENTS), *extra, url],
        capture_output=True,
        timeout=100,
        check=False,
    )
    out = done.stdout.decode(errors="replace")
    counts = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded", out)
    proto = re.search(r"Application protocol: (\S+)", out)
    status = re.search(r"status codes: (\d+) 2xx", out)
    if not counts or not proto:
        return fail(f"h2load exit {done.returncode}: {(out + done.stderr.decode())[-150:]!r}")
    want = {"h1-get": "http/1.1", "h2-get": "h2", "h2c": "h2c"}[case]
    total, _, _, succeeded = map(int, counts.groups())
    two_xx = int(status.group(1)) if status else 0
    if proto.group(1) != want or succeeded != REQUESTS or two_xx != REQUESTS:
        return fail(f"protocol {proto.group(1)}, {succeeded}/{total} succeeded, {two_xx} 2xx")
    return passed(f"{REQUESTS} requests over {proto.group(1)} ({CLIENTS} conns): all 2xx")
