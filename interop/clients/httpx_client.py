"""httpx (h11 and h2 packages): HTTP/1.1 and HTTP/2 over TLS, streamed uploads."""

from __future__ import annotations

import hashlib
import ssl
from collections.abc import Iterator

from ..cases import UPLOAD_SIZE, Result, Server, fail, passed

NAME = "httpx"
CASES = {"h1-get", "h2-get", "altsvc", "post-streaming"}
UNSUPPORTED = {
    **dict.fromkeys(
        ("ws-h1", "ws-h2", "ws-h3"),
        "httpx has no WebSocket client (websockets, h2, niquests cover ws)",
    ),
    "*": "httpx has no HTTP/3",
}


def available() -> str | None:
    try:
        import h2  # noqa: F401
        import httpx  # noqa: F401
    except ImportError:
        return "pip install 'httpx[http2]'"
    return None


def supports(case: str) -> bool:
    return case in CASES


def run(case: str, server: Server) -> Result:
    import httpx

    context = ssl.create_default_context(cafile=server.ca_certfile)
    tls = f"https://localhost:{server.https_port}"
    http2 = case != "h1-get"
    with httpx.Client(
        http1=not http2 or case == "altsvc", http2=http2, verify=context, timeout=60
    ) as client:
        if case in ("h1-get", "h2-get"):
            want = "1.1" if case == "h1-get" else "2"
            r = client.get(f"{tls}/proto")
            if r.text != want or r.http_version != f"HTTP/{want}":
                return fail(f"server saw {r.text!r}, httpx says {r.http_version}")
            return passed(f"server saw {r.text!r}, httpx says {r.http_version}")
        if case == "altsvc":
            r = client.get(f"{tls}/")
            value = r.headers.get("alt-svc", "")
            if f'h3=":{server.h3_port}"' not in value:
                return fail(f"alt-svc {value!r} on {r.http_version}")
            return passed(f"{r.http_version} response carries alt-svc: {value}")
        if case == "post-streaming":
            payload = hashlib.sha512(b"upload").digest() * (UPLOAD_SIZE // 64)

            def chunks() -> Iterator[bytes]:
                for start in range(0, len(payload), 256 * 1024):
                    yield payload[start : start + 256 * 1024]

            r = client.post(f"{tls}/sha256", content=chunks())
            expected = f"{len(payload)} {hashlib.sha256(payload).hexdigest()}"
            if r.text != expected:
                return fail(f"server echoed {r.text[:80]!r} ({r.http_version})")
            return passed(f"generator upload over {r.http_version}: sha256 echoed matches")
    return fail(f"unsupported case {case}")
