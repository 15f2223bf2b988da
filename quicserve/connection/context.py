"""What every connection of one server shares, and what it needs from a worker's supervisor link.

The server (``server.py``) builds one :class:`ServerContext`; the drivers in this package
read it. They never import the server, the worker module or the supervisor: a worker's link
is seen through the small :class:`WorkerHooks` protocol.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ..config import parse_header

if TYPE_CHECKING:
    from ..config import Config
    from ..quic.keyring import KeyRing
    from ..quic.lb import CidLayout
    from ..registry import ConnectionRegistry
    from ..types import ASGIApp


class DatagramDiverter(Protocol):
    """Sends the datagrams of connections another worker serves to that worker."""

    def divert(self, data: bytes, addr: Any) -> bool:
        """True if ``data`` went to another worker (not ours to handle)."""


class RoutedEndpoint(Protocol):
    """A QUIC listener as a worker's link sees it (``connection/quic.py``)."""

    def receive(self, data: bytes, addr: Any) -> None:
        """One datagram that reached us from another worker."""

    def owns(self, dcid: bytes) -> bool:
        """Whether a connection we serve has this destination connection ID."""


class WorkerHooks(Protocol):
    """This process's link to its supervisor, when it is one of ``--workers``."""

    #: The connection-ID layout every worker of the machine shares, and our slot in it.
    layout: CidLayout
    slot: int
    #: The Retry-token and stateless-reset secret shared by the machine's workers.
    secret: bytes

    def attach(self, endpoint: RoutedEndpoint) -> DatagramDiverter:
        """A QUIC listener (in ``--quic-bind`` order) starts: route its datagrams."""


@dataclass(slots=True)
class ServerContext:
    """What every connection of one server shares."""

    config: Config
    app: ASGIApp
    registry: ConnectionRegistry
    lifespan_state: dict[str, Any] | None = None
    #: ``alt-svc`` value for TLS responses (set once a QUIC listener is bound).
    alt_svc: bytes | None = None
    #: This process's link to its supervisor, when it is one of ``--workers``.
    worker: WorkerHooks | None = None
    #: The ``--quic-secrets-file`` key ring (tickets, Retry, resets), replaced in place
    #: on reload; None without the file.
    key_ring: KeyRing | None = None
    #: Response fields every response gets unless the app set the same name:
    #: ``--header`` and ``server`` (see :func:`default_response_headers`).
    default_headers: tuple[tuple[bytes, bytes], ...] = ()
    #: Their names and ``date``, which an app's own field of that name replaces.
    default_names: frozenset[bytes] = frozenset()
    #: Requests (any stream type) in flight in this process, counted only with
    #: ``--limit-concurrency`` (``ConnectionDriver._start_stream``).
    in_flight: int = 0


def default_response_headers(config: Config) -> tuple[tuple[bytes, bytes], ...]:
    """``--header`` fields, then ``server: quicserve`` (``--server-header``) unless a
    ``--header`` names ``server`` itself; the first ``--header`` of a name wins."""
    headers: list[tuple[bytes, bytes]] = []
    for value in config.header:
        name, raw = parse_header(value)
        if all(name != known for known, _ in headers):
            headers.append((name, raw))
    if config.server_header and all(name != b"server" for name, _ in headers):
        headers.append((b"server", b"quicserve"))
    return tuple(headers)
