"""niquests (urllib3-future; HTTP/3 through qh3): HTTP/1.1, HTTP/2, HTTP/3 and WebSockets.

How each protocol is pinned, so a pass cannot be a fallback:

- HTTP/3: ``disable_http1=True, disable_http2=True`` (no TCP protocol left) and the
  server's QUIC port put in the session's ``quic_cache_layer`` (``add_domain``), the cache
  niquests otherwise fills from Alt-Svc, so the first request already goes over QUIC.
- HTTP/2: ``disable_http1=True, disable_http3=True`` on the TLS port (ALPN h2).
- HTTP/1.1: ``disable_http2=True, disable_http3=True``.
- WebSockets: ``wss://`` is the RFC 6455 Upgrade (over HTTP/1.1); ``wss+rfc8441://`` selects
  niquests' extended-CONNECT extension (RFC 8441 on h2, RFC 9220 on h3), with the session
  pinned as above.

``response.http_version`` (11, 20, 30) is checked next to what the *server* reports.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

from ..cases import (
    UPLOAD_SIZE,
    WS_BINARY,
    WS_CLOSE_CODE,
    WS_TEXT,
    Result,
    Server,
    fail,
    passed,
)

NAME = "niquests"
CASES = {"handshake", "http3", "h1-get", "h2-get", "post-streaming", "ws-h1", "ws-h2", "ws-h3"}
UNSUPPORTED = "niquests exposes no QUIC or TLS state, socket rebinding or relay hook"
_PINS: dict[str, dict[str, Any]] = {
    "1.1": {"disable_http2": True, "disable_http3": True},
    "2": {"disable_http1": True, "disable_http3": True},
    "3": {"disable_http1": True, "disable_http2": True},
}


def available() -> str | None:
    try:
        import niquests  # type: ignore[import-not-found]  # noqa: F401
        import qh3  # noqa: F401
    except ImportError:
        return "pip install niquests (it brings qh3, and urllib3-future, which shadows urllib3)"
    return None


def supports(case: str) -> bool:
    return case in CASES


def _session(version: str, server: Server) -> Any:
    import niquests

    session = niquests.Session(**_PINS[version])
    if version == "3":
        cache: Any = session.quic_cache_layer  # a QuicSharedCache unless one was passed in
        cache.add_domain("localhost", server.h3_port)
    return session


def _base(version: str, server: Server) -> str:
    port = server.h3_port if version == "3" else server.https_port
    return f"https://localhost:{port}"


def run(case: str, server: Server) -> Result:
    if case.startswith("ws-"):
        return _websocket(case, server)
    version = {"h1-get": "1.1", "h2-get": "2"}.get(case, "3")
    with _session(version, server) as session:
        base = _base(version, server)
        if case in ("handshake", "http3", "h1-get", "h2-get"):
            r = session.get(f"{base}/proto", timeout=30, verify=server.ca_certfile)
            says = {11: "1.1", 20: "2", 30: "3"}.get(r.http_version, str(r.http_version))
            if r.status_code != 200 or r.text != version or says != version:
                return fail(f"/proto: {r.status_code} {r.text[:20]!r}, niquests says {says}")
            return passed(f"server saw http_version {r.text!r}, niquests says HTTP/{says}")
        if case == "post-streaming":
            payload = hashlib.sha512(b"upload").digest() * (UPLOAD_SIZE // 64)

            def chunks() -> Iterator[bytes]:
                for start in range(0, len(payload), 256 * 1024):
                    yield payload[start : start + 256 * 1024]

            r = session.post(f"{base}/sha256", data=chunks(), timeout=60, verify=server.ca_certfile)
            expected = f"{len(payload)} {hashlib.sha256(payload).hexdigest()}"
            if r.text != expected or r.http_version != 30:
                return fail(f"server echoed {r.text[:80]!r} over {r.http_version}")
            return passed("generator upload over HTTP/3 (niquests says 30): sha256 echoed matches")
    return fail(f"unsupported case {case}")


def _websocket(case: str, server: Server) -> Result:
    version = {"ws-h1": "1.1", "ws-h2": "2", "ws-h3": "3"}[case]
    port = server.h3_port if version == "3" else server.https_port
    scheme = "wss" if version == "1.1" else "wss+rfc8441"
    with _session(version, server) as session:
        try:
            r = session.get(
                f"{scheme}://localhost:{port}/ws", timeout=30, verify=server.ca_certfile
            )
        except Exception as exc:
            if version != "1.1" and "Sec-Websocket-Accept" in str(exc):
                # Seen with urllib3-future 2.25.904: its RFC 8441 extension sends
                # Sec-WebSocket-Key and insists on Sec-WebSocket-Accept in the 200, which
                # RFC 8441 §5 (and RFC 9220 §3) say extended CONNECT does not use.
                return fail(
                    "niquests' extended CONNECT requires Sec-WebSocket-Accept on the 200,"
                    " which RFC 8441 §5 says is not used; quicserve sends none (Hypercorn sends one"
                    " when the client offered a key)"
                )
            raise
        ext = r.extension
        if ext is None:
            return fail(f"no WebSocket: {r.status_code} over {r.http_version}")
        # niquests has no public close code: watch the events of its wsproto connection.
        closes: list[int] = []
        events = ext._protocol.events

        def watched() -> Iterator[Any]:
            for event in events():
                if type(event).__name__ == "CloseConnection":
                    closes.append(int(event.code))
                yield event

        ext._protocol.events = watched
        proto = ext.next_payload()
        if proto != f"proto:{version}":
            return fail(f"first message {proto!r}, wanted 'proto:{version}'")
        ext.send_payload(WS_TEXT)
        text = ext.next_payload()
        ext.send_payload(WS_BINARY)
        binary = ext.next_payload()
        if text != WS_TEXT or binary != WS_BINARY:
            return fail(f"echo mismatch: text {text!r}, binary {str(binary)[:40]}")
        ext.send_payload(f"close:{WS_CLOSE_CODE}")
        after = ext.next_payload()
        if after is not None or closes != [WS_CLOSE_CODE]:
            return fail(f"wanted the server's close {WS_CLOSE_CODE}: got {after!r}, {closes}")
        return passed(
            f"{scheme}:// {r.status_code} over niquests HTTP/{r.http_version / 10:g}; server says"
            f" HTTP/{version}; text and {len(WS_BINARY)}-byte binary echoed byte for byte;"
            f" server's close code {closes[0]} (from niquests' wsproto events)"
        )
