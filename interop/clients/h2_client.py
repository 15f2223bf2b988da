"""The ``h2`` package as a WebSocket client: RFC 8441 extended CONNECT (clientkit/ws.py).

Only the ws-h2 case: the HTTP/2 request cases already have independent clients (curl,
curl_cffi, httpx, h2load), while no packaged Python client speaks RFC 8441.
"""

from __future__ import annotations

from ..cases import Result, Server

NAME = "h2"
CASES = {"ws-h2"}
UNSUPPORTED = "drives only RFC 8441 (HTTP/2 requests: curl, curl_cffi, httpx, h2load)"


def available() -> str | None:
    try:
        import h2  # noqa: F401
        import wsproto  # noqa: F401
    except ImportError:
        return "pip install h2 wsproto"
    return None


def supports(case: str) -> bool:
    return case in CASES


def run(case: str, server: Server) -> Result:
    from . import ws_tunnel

    return ws_tunnel.run(case, server)
