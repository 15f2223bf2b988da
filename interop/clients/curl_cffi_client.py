"""curl_cffi: libcurl with its own HTTP/3 stack (ngtcp2 + nghttp3), and its h2/h1.

HTTP/3 cases use ``CurlHttpVersion.V3ONLY`` (no fallback to TCP, so a pass is HTTP/3);
``h1-get``/``h2-get`` use V1_1/V2_0 on the TLS port.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
from typing import Any

from ..app import file_sha256
from ..cases import (
    MULTIPLEX_SIZE,
    MULTIPLEX_STREAMS,
    TRANSFER_SIZES,
    UPLOAD_SIZE,
    Result,
    Server,
    fail,
    passed,
)

NAME = "curl_cffi"
UNSUPPORTED = {
    "altsvc": "Alt-Svc is checked with curl, httpx and chromium",
    "portrebinding": "no hook to rebind the socket mid-connection",
    "addressrebinding": "no hook to rebind the socket mid-connection",
    "connectionmigration": "no hook to rebind the socket mid-connection",
    **dict.fromkeys(
        (
            "longrtt",
            "handshakeloss",
            "transferloss",
            "handshakecorruption",
            "transfercorruption",
            "blackhole",
            "amplificationlimit",
        ),
        "not wired to the relay yet (aioquic and gtlsclient cover these)",
    ),
    "ws-h1": "not wired yet (curl_cffi's WebSocket is HTTP/1.1; websockets, niquests cover it)",
    **dict.fromkeys(("ws-h2", "ws-h3"), "libcurl's WebSocket has no RFC 8441/9220"),
    "*": "libcurl shows no QUIC state (Retry, ticket, 0-RTT, version, cipher, key phase)",
}
CASES = {
    "handshake",
    "transfer",
    "multiplexing",
    "http3",
    "ipv6",
    "h1-get",
    "h2-get",
    "h2c",
    "post-streaming",
}


def available() -> str | None:
    try:
        import curl_cffi  # noqa: F401
    except ImportError:
        return "pip install curl_cffi"
    return None


def supports(case: str) -> bool:
    return case in CASES


def run(case: str, server: Server) -> Result:
    from curl_cffi import CurlHttpVersion as V
    from curl_cffi import requests

    h3 = f"https://localhost:{server.h3_port}"
    kw: dict[str, Any] = {"verify": server.ca_certfile, "timeout": 60}
    if case in ("handshake", "http3"):
        r = requests.get(f"{h3}/proto", http_version=V.V3ONLY, **kw)
        if r.status_code != 200 or r.text != "3":
            return fail(f"/proto: {r.status_code} {r.text[:40]!r}")
        return passed(f"V3ONLY GET /proto: 200, server http_version {r.text!r}")
    if case == "transfer":
        with requests.Session(http_version=V.V3ONLY, **kw) as s:
            for size in TRANSFER_SIZES:
                r = s.get(f"{h3}/files/{size}")
                digest = hashlib.sha256(r.content).hexdigest()
                if r.status_code != 200 or digest != file_sha256(size):
                    return fail(f"/files/{size}: {r.status_code}, {len(r.content)} bytes, bad sha")
        return passed(f"V3ONLY, sha256 of {list(TRANSFER_SIZES)} bytes all match")
    if case == "multiplexing":
        return _multiplex(h3, kw)
    if case == "ipv6":
        if server.h3_port6 is None:
            return fail("no IPv6 loopback on this machine")
        r = requests.get(f"https://[::1]:{server.h3_port6}/client", http_version=V.V3ONLY, **kw)
        seen = r.json()
        if seen["client"][0] != "::1" or seen["http_version"] != "3":
            return fail(f"server saw {seen}")
        return passed(f"V3ONLY over ::1: server saw client {seen['client']}, HTTP/3")
    if case in ("h1-get", "h2-get"):
        version, want = (V.V1_1, "1.1") if case == "h1-get" else (V.V2_0, "2")
        r = requests.get(f"https://localhost:{server.https_port}/proto", http_version=version, **kw)
        names = {int(V.V1_1): "1.1", int(V.V2_0): "2"}
        client_says = names.get(r.http_version, str(r.http_version))
        if r.text != want or client_says != want:
            return fail(f"server saw {r.text!r}, client says {r.http_version}")
        return passed(f"server saw {r.text!r}, curl says HTTP/{client_says}")
    if case == "h2c":
        r = requests.get(
            f"http://127.0.0.1:{server.http_port}/proto", http_version=V.V2_PRIOR_KNOWLEDGE, **kw
        )
        if r.text != "2":
            return fail(f"server saw {r.text!r}, client says {r.http_version}")
        return passed(f"V2_PRIOR_KNOWLEDGE on cleartext: server saw {r.text!r}")
    if case == "post-streaming":
        payload = hashlib.sha512(b"upload").digest() * (UPLOAD_SIZE // 64)

        # A file object: libcurl pulls it through its read callback, piece by piece.
        r = requests.post(f"{h3}/sha256", data=io.BytesIO(payload), http_version=V.V3ONLY, **kw)
        expected = f"{len(payload)} {hashlib.sha256(payload).hexdigest()}"
        if r.text != expected:
            return fail(f"server echoed {r.text[:80]!r} (status {r.status_code})")
        return passed(
            f"V3ONLY upload (read callback) of {len(payload)} bytes, sha256 echoed matches"
        )
    return fail(f"unsupported case {case}")


def _multiplex(h3: str, kw: dict[str, Any]) -> Result:
    from curl_cffi import CurlHttpVersion as V
    from curl_cffi import requests

    sizes = [MULTIPLEX_SIZE + i for i in range(MULTIPLEX_STREAMS)]

    async def go() -> tuple[list[Any], list[Any]]:
        async with requests.AsyncSession(http_version=V.V3ONLY, **kw) as s:
            # Open the connection first, so libcurl multiplexes onto it.
            await s.get(f"{h3}/proto")
            files = [s.get(f"{h3}/files/{n}") for n in sizes]
            # /client requests mixed in: the port each one came from shows the connection.
            probes = [s.get(f"{h3}/client?{i}") for i in range(10)]
            everything = await asyncio.gather(*files, *probes)
            return everything[: len(files)], everything[len(files) :]

    files, probes = asyncio.run(go())
    for size, r in zip(sizes, files, strict=True):
        if hashlib.sha256(r.content).hexdigest() != file_sha256(size):
            return fail(f"/files/{size}: {r.status_code}, {len(r.content)} bytes, bad sha")
    ports = {json.loads(r.text)["client"][1] for r in probes}
    if len(ports) != 1:
        return fail(
            f"concurrent requests came from client ports {sorted(ports)}: not one connection"
        )
    return passed(
        f"{len(sizes)} files + 10 probes concurrently over V3ONLY: every sha256 ok, all probes"
        f" from one client port {ports.pop()}"
    )
