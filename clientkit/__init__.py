"""Clients for driving a real quicserve, shared by ``tests/`` and ``interop/``.

Not shipped: the wheel holds only ``quicserve`` (see ``[tool.setuptools.packages.find]``).
Both ``tests/`` and ``interop/`` import from here, so a client is written once:

- :mod:`clientkit.h3`: an HTTP/3 client on aioquic (1xx, trailers, request headers,
  resumption, 0-RTT, Retry, key update, connection migration).
- :mod:`clientkit.ws`: WebSocket tunnels on HTTP/1.1, HTTP/2 (RFC 8441) and HTTP/3
  (RFC 9220), with wsproto's client framing and a raw-frame writer.
- :mod:`clientkit.chromium`: headless Chromium's command line, launch helpers and the
  browser page both use.
- :mod:`clientkit.net`: the IPv6 loopback probe and the dual-stack UDP socket.
- :mod:`clientkit.require`: which outside clients this machine has, and the one rule
  for a missing one (skip locally, fail where ``QUICSERVE_REQUIRE_CLIENTS=1``).

Rules: nothing here imports ``tests`` or ``interop`` (they import this), nor
``quicserve``: clients are written against the RFCs and the protocol libraries, so a
server refactor never breaks a client.
"""

from __future__ import annotations

from .require import REQUIRE_CLIENTS, missing, require

__all__ = ["REQUIRE_CLIENTS", "missing", "require"]
