"""Facts about one connection that every stream on it shares.

One frozen :class:`ConnectionInfo` is built when a connection is accepted and handed to
every stream, instead of long constructor argument lists. :class:`Capabilities` says what
the connection can honour; the stream types advertise ASGI extensions from it and never
switch on a protocol name.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a connection can do, whatever protocol it speaks."""

    trailers: bool = True
    early_hints: bool = True
    server_push: bool = False
    #: Several requests at once (HTTP/2, HTTP/3); HTTP/1.1 serves one at a time.
    multiplexed: bool = False


@dataclass(frozen=True, slots=True)
class ConnectionInfo:
    """Addresses, TLS facts and capabilities of one accepted connection."""

    #: ``"1.1"``, ``"2"`` or ``"3"``: only ever copied into the ASGI scope.
    http_version: str
    #: ``"http"`` or ``"https"``.
    scheme: str
    client: tuple[str, int] | None
    server: tuple[str, int] | None
    capabilities: Capabilities = field(default_factory=Capabilities)
    #: The ASGI ``tls`` extension's contents, or ``None`` on cleartext connections.
    tls: dict[str, Any] | None = None
    #: The value of the ``alt-svc`` header to add to responses, or ``None``.
    alt_svc: bytes | None = None
    #: Response fields added unless the app set the same name (``--header``, ``server``).
    default_headers: tuple[tuple[bytes, bytes], ...] = ()
    #: Whether responses get a ``date`` field unless the app set one (``--date-header``).
    date_header: bool = True
    #: The names of ``default_headers``, and ``date``: what the app may set instead.
    default_names: frozenset[bytes] = frozenset()

    def with_protocol(self, http_version: str, capabilities: Capabilities) -> ConnectionInfo:
        """The same connection after ALPN or an upgrade chose its protocol."""
        return replace(self, http_version=http_version, capabilities=capabilities)


HTTP1_CAPABILITIES = Capabilities(trailers=True, early_hints=True, server_push=False)
HTTP2_CAPABILITIES = Capabilities(
    trailers=True, early_hints=True, server_push=True, multiplexed=True
)
HTTP3_CAPABILITIES = Capabilities(
    trailers=True, early_hints=True, server_push=False, multiplexed=True
)
