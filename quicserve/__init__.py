"""quicserve: an HTTP/3-first ASGI server (QUIC, HTTP/2 and HTTP/1.1 in one process)."""

from __future__ import annotations

__version__ = "0.1.0"
