"""ConnectionRegistry: the one place that knows every live connection, TCP or QUIC.

Rules (DESIGN.md invariant 4):

* A connection is added when it is accepted and removed when it is closed, whatever
  transport or protocol it uses; nothing else keeps a list of connections.
* The registry enforces ``Config.max_connections``: ``acquire_slot`` waits while the
  server is full, so listeners simply stop accepting and the kernel backlog absorbs bursts.
* Graceful shutdown is driven from here: ``shutdown_all`` asks every connection to start
  closing (GOAWAY / close when idle), ``wait_empty`` waits until they are gone.
* ``snapshot`` and ``stats`` report what is open, for logs and metrics.
* Counters for metrics are plain ints bumped where the event already happens: per
  connection at ``remove`` (its requests and bytes join the per-protocol totals), per
  response one list index (``status_counts[status]``). No locks, nothing allocated per
  request; ``quicserve.metrics`` reads them when scraped. Per-request durations are kept
  only with ``--metrics-bind`` (``request_stats``; ``None`` otherwise).
"""

from __future__ import annotations

import itertools
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol

import anyio

from .stats import RequestStats


class Drainable(Protocol):
    """What the registry needs from a connection object to shut it down."""

    def shutdown(self) -> None:
        """Start a graceful close."""


@dataclass(slots=True, eq=False)
class ConnectionRecord:
    """One live connection and its counters (updated in place by its driver)."""

    id: int
    transport: str
    #: The HTTP version in ALPN's words: ``http/1.1``, ``h2``, ``h2c`` or ``h3`` (``tls`` or
    #: ``tcp`` until a byte stream's protocol is chosen). Metrics and logs group by it.
    alpn: str
    client: tuple[str, int] | None
    server: tuple[str, int] | None
    opened_at: float = field(default_factory=time.monotonic)
    bytes_in: int = 0
    bytes_out: int = 0
    requests: int = 0
    owner: Drainable | None = None

    def as_dict(self) -> dict[str, Any]:
        """A plain summary of the connection, for logs and reports."""
        owner_protocol = getattr(self.owner, "protocol", None)
        return {
            "id": self.id,
            "transport": self.transport,
            "protocol": self.alpn,
            "client": self.client,
            "server": self.server,
            "age": round(time.monotonic() - self.opened_at, 3),
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "requests": self.requests,
            "open_streams": getattr(owner_protocol, "open_streams", 0),
        }


class ConnectionRegistry:
    """Live connections of one server process."""

    def __init__(self, max_connections: int) -> None:
        self._records: dict[int, ConnectionRecord] = {}
        self._ids = itertools.count(1)
        self._slots = anyio.Semaphore(max_connections, fast_acquire=True)
        self._empty: anyio.Event | None = None
        self._shutting_down = False
        self.total_accepted = 0
        #: Closed connections' counters by protocol: [connections, requests, in, out].
        self.closed_totals: dict[str, list[int]] = {}
        #: Responses by status code (index 0: the request ended without a response).
        self.status_counts = [0] * 600
        #: Handshakes that failed, by transport ("tcp": TLS, "udp": QUIC).
        self.handshake_failures = {"tcp": 0, "udp": 0}
        #: Request and session durations, kept only when something exports them.
        self.request_stats: RequestStats | None = None

    async def acquire_slot(self) -> None:
        """Wait until fewer than ``max_connections`` are open (call before accepting)."""
        await self._slots.acquire()

    def try_acquire_slot(self) -> bool:
        """Take a slot if one is free, without waiting (QUIC cannot make a peer wait)."""
        try:
            self._slots.acquire_nowait()
        except anyio.WouldBlock:
            return False
        return True

    def release_slot(self) -> None:
        """Give back a slot taken by ``acquire_slot`` whose accept did not happen."""
        self._slots.release()

    def add(
        self,
        transport: str,
        alpn: str,
        client: tuple[str, int] | None,
        server: tuple[str, int] | None,
    ) -> ConnectionRecord:
        """Register a freshly accepted connection (its slot is already taken)."""
        record = ConnectionRecord(next(self._ids), transport, alpn, client, server)
        self._records[record.id] = record
        self.total_accepted += 1
        return record

    def remove(self, record: ConnectionRecord) -> None:
        """Forget a closed connection and free its slot."""
        if self._records.pop(record.id, None) is not None:
            self._slots.release()
            totals = self.closed_totals.get(record.alpn)
            if totals is None:
                totals = self.closed_totals[record.alpn] = [0, 0, 0, 0]
            totals[0] += 1
            totals[1] += record.requests
            totals[2] += record.bytes_in
            totals[3] += record.bytes_out
        if not self._records and self._empty is not None:
            self._empty.set()

    def attach(self, record: ConnectionRecord, owner: Drainable) -> None:
        """Say which object drives the connection, so shutdown can reach it. A connection
        attached after shutdown began is asked to close at once."""
        record.owner = owner
        if self._shutting_down:
            owner.shutdown()

    def shutdown_all(self) -> None:
        """Ask every live connection to close gracefully."""
        self._shutting_down = True
        for record in list(self._records.values()):
            if record.owner is not None:
                record.owner.shutdown()

    async def wait_empty(self) -> None:
        """Return once no connection is open."""
        while self._records:
            self._empty = anyio.Event()
            await self._empty.wait()

    def __len__(self) -> int:
        return len(self._records)

    def records(self) -> list[ConnectionRecord]:
        """The live connection records (for metrics)."""
        return list(self._records.values())

    @property
    def requests_total(self) -> int:
        """Requests started since the server started, on open and closed connections
        (``--max-requests`` counts these; computed when asked, not per request)."""
        closed = sum(totals[1] for totals in self.closed_totals.values())
        return closed + sum(r.requests for r in self._records.values())

    def snapshot(self) -> list[dict[str, Any]]:
        """Every live connection, as plain dicts."""
        return [record.as_dict() for record in self._records.values()]

    def stats(self) -> dict[str, Any]:
        """Counts by transport and protocol."""
        by_protocol = Counter(record.alpn for record in self._records.values())
        by_transport = Counter(record.transport for record in self._records.values())
        return {
            "open": len(self._records),
            "accepted": self.total_accepted,
            "by_protocol": dict(by_protocol),
            "by_transport": dict(by_transport),
        }
