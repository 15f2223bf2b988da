"""The access log line: ``--access-log-format`` atoms and how a request is rendered.

A format is a Python %-format over named atoms, as in Gunicorn and Hypercorn:
``'%(h)s "%(r)s" %(s)s %(b)s %(L)s'``. The atoms (also listed in the README):

=============  ==========================================================================
``h``          client address ``host:port`` (``-`` when unknown)
``r``          request line, ``GET /path?query HTTP/2``
``R``          request target, ``/path?query``
``M``          method
``U``          path, without the query
``q``          query string (empty when there is none)
``H``          protocol version, ``HTTP/1.1``, ``HTTP/2``, ``HTTP/3``
``P``          protocol, ``h1``, ``h2`` or ``h3``
``S``          scheme of the connection, ``http`` or ``https``
``s``          response status (``0`` when no response was sent)
``b``          response body bytes sent
``L``          request time in seconds, ``0.001234``
``T``          request time in milliseconds, ``1.2``
``D``          request time in microseconds, ``1234``
``p``          process id
``{name}i``    request header ``name`` (case-insensitive; ``-`` when absent)
=============  ==========================================================================

Rules:

* A format is checked once, when the configuration is (:func:`compile_format` raises
  ``ValueError`` for an unknown atom or a broken template), never per request.
* Every stream type (HTTP, WebSocket, WebTransport) logs through one function,
  ``StreamBase._log_access`` in ``streams/base.py``, so a format applies to all of them;
  that module says which status and bytes a WebSocket or WebTransport session reports.
* Without ``--access-log-format`` the stream logs its built-in line with logging's lazy
  arguments, which :data:`DEFAULT_FORMAT` reproduces atom for atom (a WebSocket's line
  then ends with `` (WebSocket <close code>)``, a WebTransport session's with
  `` (WebTransport)``).
* The line shows the peer the request came from; behind a proxy, log
  ``%({x-forwarded-for}i)s`` (the proxy middleware rewrites the ASGI scope, not the log).
"""

from __future__ import annotations

import functools
import os
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .connection_info import ConnectionInfo
    from .events import RequestReceived

#: The built-in line, written as atoms.
DEFAULT_FORMAT = '%(h)s - "%(r)s" %(s)s %(b)s %(T)sms'

ATOMS = frozenset("hrRMUqHPSsbLTDp")
_KEY = re.compile(r"%\(([^)]*)\)")
_PROTOCOLS = {"1.1": "h1", "1.0": "h1", "2": "h2", "3": "h3"}


class _Probe:
    """Answers every atom, to test-render a format."""

    def __getitem__(self, key: str) -> str:
        return "-"


@functools.lru_cache(maxsize=8)
def compile_format(fmt: str) -> str:
    """``fmt`` if every atom in it is known and it renders; else ``ValueError``."""
    for key in _KEY.findall(fmt):
        if key not in ATOMS and not (key.startswith("{") and key.endswith("}i") and len(key) > 3):
            raise ValueError(f"unknown atom %({key})s (see the README for the list)")
    try:
        fmt % _Probe()
    except (TypeError, ValueError, KeyError) as exc:
        raise ValueError(f"not a valid format: {exc}") from None
    return fmt


class _RequestAtoms:
    """The atoms of one finished request, computed only when the format asks for them."""

    __slots__ = ("duration", "info", "request", "response_bytes", "status")

    def __init__(
        self,
        request: RequestReceived,
        info: ConnectionInfo,
        status: int,
        response_bytes: int,
        duration: float,
    ) -> None:
        self.request = request
        self.info = info
        self.status = status
        self.response_bytes = response_bytes
        self.duration = duration

    def __getitem__(self, key: str) -> object:
        request = self.request
        if key == "h":
            client = self.info.client
            return f"{client[0]}:{client[1]}" if client else "-"
        if key == "r":
            return (
                f"{request.method.decode('ascii', 'replace')} "
                f"{request.raw_path.decode('latin-1')} HTTP/{self.info.http_version}"
            )
        if key == "R":
            return request.raw_path.decode("latin-1")
        if key == "M":
            return request.method.decode("ascii", "replace")
        if key == "U":
            return request.raw_path.partition(b"?")[0].decode("latin-1")
        if key == "q":
            return request.raw_path.partition(b"?")[2].decode("latin-1")
        if key == "H":
            return f"HTTP/{self.info.http_version}"
        if key == "P":
            return _PROTOCOLS.get(self.info.http_version, self.info.http_version)
        if key == "S":
            return request.scheme or self.info.scheme
        if key == "s":
            return self.status
        if key == "b":
            return self.response_bytes
        if key == "L":
            return f"{self.duration:.6f}"
        if key == "T":
            return f"{self.duration * 1000:.1f}"
        if key == "D":
            return round(self.duration * 1_000_000)
        if key == "p":
            return os.getpid()
        if key.startswith("{") and key.endswith("}i"):
            name = key[1:-2].lower().encode("latin-1")
            values = [value for field, value in request.headers if field == name]
            return b", ".join(values).decode("latin-1") if values else "-"
        raise KeyError(key)


def render(
    fmt: str,
    request: RequestReceived,
    info: ConnectionInfo,
    status: int,
    response_bytes: int,
    duration: float,
) -> str:
    """One access log line for a finished request, in the (already checked) ``fmt``."""
    return fmt % _RequestAtoms(request, info, status, response_bytes, duration)
