"""Prometheus metrics: ``--metrics-bind HOST:PORT`` serves ``GET /metrics`` in the text
exposition format (version 0.0.4) on a separate plain-HTTP listener.

Rules:

* Counting costs the request path nothing new without ``--metrics-bind``: the counters are
  plain ints that the registry, the connections and the QUIC endpoints already keep or
  bump where the event happens (see ``registry.py``); the per-request durations
  (:class:`~quicserve.stats.RequestStats`) exist only with ``--metrics-bind``. This
  module reads them when scraped, so the work of a scrape (a pass over the live
  connections) is paid by the scraper.
* The listener is deliberately tiny and bounded: one request per connection, a head of at
  most 8 KiB read within 5 s, at most 4 scrapes at once, ``Connection: close``. It never
  serves the app and is not affected by the app's limits.
* One endpoint per server, whatever ``--workers`` says. A single process serves it
  itself (:class:`MetricsEndpoint`); with workers the supervisor does
  (:class:`FleetEndpoint`): on each scrape it asks every ready worker over its link for
  a :func:`collect` snapshot, waits at most 1 s, and sums them. The same bounds apply
  there, on non-blocking sockets in the supervisor's ``selectors`` loop.
* Counters never go backwards: the supervisor keeps each worker's latest snapshot (a
  worker that exits gracefully sends a final one) and adds the counters of every worker
  that is gone to the totals. A worker that does not answer in time counts with its
  previous snapshot and is reported (``quicserve_metrics_stale_workers``).
* Events of the supervisor itself (worker restarts; a worker that stopped answering its
  liveness pings) are counted by :func:`count_worker_restart` and
  :func:`count_worker_unresponsive`, exported by the process that holds the counter.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import selectors
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import anyio.abc

from .addresses import parse_bind
from .stats import FleetTotals, Snapshot, labels
from .stats import render as render_snapshot
from .transport.sockets import BindError, Listener, create_listening_socket

if TYPE_CHECKING:
    from .registry import ConnectionRegistry


class StatsSource(Protocol):
    """What the exposition reads from a server (``quicserve.server.Server`` is one)."""

    registry: ConnectionRegistry

    def quic_stats(self) -> dict[str, int]:
        """Counters summed over the QUIC endpoints."""


logger = logging.getLogger("quicserve.error")

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
_MAX_HEAD = 8192
_READ_TIMEOUT = 5.0
_CONCURRENT_SCRAPES = 4
#: How long the supervisor waits for the workers' snapshots.
WORKER_TIMEOUT = 1.0
#: How long the supervisor gives a scraper to take the response.
_WRITE_TIMEOUT = 5.0

#: Process-wide counters fed from outside the server (the worker supervisor).
_process_counters = {"worker_restarts": 0, "worker_unresponsive": 0}


def count_worker_restart() -> None:
    """The supervisor restarted a worker that died (``quicserve_worker_restarts_total``)."""
    _process_counters["worker_restarts"] += 1


def count_worker_unresponsive() -> None:
    """A worker did not answer its liveness ping in time and is being replaced
    (``quicserve_worker_unresponsive_total``)."""
    _process_counters["worker_unresponsive"] += 1


# -- what a process reports ------------------------------------------------------------

#: Counter and gauge families: name -> (type, help), in the exposition's order.
FAMILIES: dict[str, tuple[str, str]] = {
    "quicserve_connections_open": (
        "gauge",
        "Connections open now, by protocol (tcp/tls until the protocol is known).",
    ),
    "quicserve_streams_open": ("gauge", "Request streams open now, by protocol."),
    "quicserve_connections_total": (
        "counter",
        "Connections accepted, by protocol (counted under their protocol once known).",
    ),
    "quicserve_requests_total": ("counter", "Requests received, by protocol."),
    "quicserve_received_bytes_total": (
        "counter",
        "Bytes received from peers (TCP stream bytes, QUIC datagram bytes), by protocol.",
    ),
    "quicserve_sent_bytes_total": ("counter", "Bytes sent to peers, by protocol."),
    "quicserve_responses_total": (
        "counter",
        "Responses by status code ('none': the request ended without a response).",
    ),
    "quicserve_handshake_failures_total": (
        "counter",
        "Handshakes that failed: TLS on TCP, QUIC connections closed before completing.",
    ),
}
#: QUIC endpoint counters: key in ``quic_stats()`` -> (family, help).
_QUIC = {
    "handshakes": ("quicserve_quic_handshakes_total", "QUIC handshakes completed."),
    "resumed": ("quicserve_quic_resumed_total", "QUIC handshakes resumed with a ticket."),
    "early_data_accepted": (
        "quicserve_quic_0rtt_accepted_total",
        "QUIC handshakes whose 0-RTT data was accepted.",
    ),
    "early_data_rejected": (
        "quicserve_quic_0rtt_rejected_total",
        "QUIC handshakes whose client offered 0-RTT that was refused (sent again in 1-RTT).",
    ),
    "retry_sent": ("quicserve_quic_retry_sent_total", "QUIC Retry packets sent."),
    "retry_validated": (
        "quicserve_quic_retry_validated_total",
        "QUIC connections accepted with a valid Retry token.",
    ),
    "invalid_token": ("quicserve_quic_invalid_tokens_total", "QUIC Initials with a bad token."),
    "vn_sent": ("quicserve_quic_version_negotiation_total", "Version Negotiation sent."),
    "refused": ("quicserve_quic_refused_total", "QUIC connections refused (full)."),
    "resets_sent": ("quicserve_quic_stateless_resets_total", "Stateless resets sent."),
    "early_data_requests": ("quicserve_quic_0rtt_requests_total", "Requests in 0-RTT."),
    "migrations": ("quicserve_quic_migrations_total", "Requests on a new client path."),
    "datagrams_in": ("quicserve_quic_datagrams_received_total", "UDP datagrams received."),
    "datagrams_out": ("quicserve_quic_datagrams_sent_total", "UDP datagrams sent."),
    "dropped": ("quicserve_quic_datagrams_dropped_total", "Datagrams dropped unread."),
}
FAMILIES.update({name: ("counter", help) for name, help in _QUIC.values()})
#: Families only the process that supervises workers has.
SUPERVISOR_FAMILIES: dict[str, tuple[str, str]] = {
    "quicserve_worker_restarts_total": (
        "counter",
        "Worker processes that died and were started again by the supervisor.",
    ),
    "quicserve_worker_unresponsive_total": (
        "counter",
        "Workers replaced because they stopped answering the supervisor's pings.",
    ),
}
FLEET_FAMILIES: dict[str, tuple[str, str]] = {
    "quicserve_workers": ("gauge", "Worker processes running (serving or draining)."),
    "quicserve_metrics_stale_workers": (
        "gauge",
        "Workers that did not answer the last scrape in time (their previous numbers are shown).",
    ),
    "quicserve_metrics_worker_timeouts_total": (
        "counter",
        "Worker answers to scrapes that did not come in time.",
    ),
}


def collect(server: StatsSource) -> Snapshot:
    """The metric values of ``server`` now (this process only)."""
    registry = server.registry
    snapshot = Snapshot()
    counters, gauges = snapshot.counters, snapshot.gauges
    live: dict[str, list[int]] = {}  # protocol -> [open, streams, requests, in, out]
    for record in registry.records():
        row = live.setdefault(record.alpn, [0, 0, 0, 0, 0])
        row[0] += 1
        row[1] += getattr(getattr(record.owner, "protocol", None), "open_streams", 0)
        row[2] += record.requests
        row[3] += record.bytes_in
        row[4] += record.bytes_out
    closed = registry.closed_totals
    for protocol in sorted(set(live) | set(closed)):
        now = live.get(protocol, [0] * 5)
        done = closed.get(protocol, [0] * 4)
        text = labels(protocol=protocol)
        gauges["quicserve_connections_open" + text] = now[0]
        gauges["quicserve_streams_open" + text] = now[1]
        counters["quicserve_connections_total" + text] = now[0] + done[0]
        counters["quicserve_requests_total" + text] = now[2] + done[1]
        counters["quicserve_received_bytes_total" + text] = now[3] + done[2]
        counters["quicserve_sent_bytes_total" + text] = now[4] + done[3]
    for code, count in enumerate(registry.status_counts):
        if count:
            counters["quicserve_responses_total" + labels(code=str(code) if code else "none")] = (
                count
            )
    for transport, count in sorted(registry.handshake_failures.items()):
        counters["quicserve_handshake_failures_total" + labels(transport=transport)] = count
    quic = server.quic_stats()
    for key, (name, _) in _QUIC.items():
        counters[name] = quic.get(key, 0)
    if registry.request_stats is not None:
        registry.request_stats.fill(snapshot)
    return snapshot


def render(server: StatsSource) -> str:
    """The exposition text for ``server`` now (a single process)."""
    snapshot = collect(server)
    snapshot.counters["quicserve_worker_restarts_total"] = _process_counters["worker_restarts"]
    return render_snapshot(snapshot, FAMILIES | SUPERVISOR_FAMILIES)


# -- the HTTP side, shared by both endpoints -------------------------------------------


def check_head(head: bytes) -> tuple[bytes, bytes] | None:
    """(status, body) of the answer to a scrape's head, or None for "send the metrics"."""
    request_line = head.split(b"\r\n", 1)[0].split()
    if b"\r\n\r\n" not in head or len(request_line) != 3:
        return b"400 Bad Request", b"bad request\n"
    if request_line[0] not in (b"GET", b"HEAD"):
        return b"405 Method Not Allowed", b"GET /metrics\n"
    if request_line[1].split(b"?")[0] != b"/metrics":
        return b"404 Not Found", b"see /metrics\n"
    return None


def response(head: bytes, status: bytes, body: bytes) -> bytes:
    """The whole response (no body for HEAD)."""
    out = b"HTTP/1.1 %s\r\ncontent-type: %s\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % (
        status,
        CONTENT_TYPE,
        len(body),
    )
    return out if head.startswith(b"HEAD ") else out + body


def _url(address: tuple[str, int]) -> str:
    host, port = address
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/metrics"


def _listening_socket(bind: str) -> socket.socket:
    try:
        host, port = parse_bind(bind, "127.0.0.1")
    except ValueError as exc:
        raise BindError(f"--metrics-bind: {exc}") from None
    return create_listening_socket(host, port)


# -- the listener of a single process ----------------------------------------------------


class _Bound:
    """What both listeners say about the socket they listen on."""

    _socket: socket.socket

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port)."""
        name = self._socket.getsockname()
        return (str(name[0]), int(name[1]))

    def url(self) -> str:
        """Where the metrics are, for the log."""
        return _url(self.address)


class MetricsEndpoint(_Bound):
    """The ``--metrics-bind`` listener of one :class:`~quicserve.server.Server`."""

    def __init__(self, bind: str, server: StatsSource) -> None:
        self._socket = _listening_socket(bind)
        self._server = server
        self._limit = anyio.Semaphore(_CONCURRENT_SCRAPES)

    def close(self) -> None:
        """Stop listening."""
        self._socket.close()

    async def serve(self) -> None:
        """Accept scrapes until cancelled."""
        listener = Listener(self._socket)
        async with anyio.create_task_group() as tg:
            while True:
                await self._limit.acquire()
                try:
                    stream = await listener.accept()
                except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                    self._limit.release()
                    return
                except OSError as exc:
                    self._limit.release()
                    logger.warning("metrics accept() failed: %s", exc)
                    await anyio.sleep(0.1)
                    continue
                tg.start_soon(self._answer, stream)

    async def _answer(self, stream: anyio.abc.SocketStream) -> None:
        try:
            head = b""
            with anyio.move_on_after(_READ_TIMEOUT):
                while b"\r\n\r\n" not in head and len(head) <= _MAX_HEAD:
                    head += await stream.receive(4096)
            answer = check_head(head)
            if answer is None:
                answer = b"200 OK", render(self._server).encode("utf-8")
            await stream.send(response(head, *answer))
        except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
            pass
        finally:
            self._limit.release()
            with anyio.CancelScope(shield=True), anyio.move_on_after(1):
                try:
                    await stream.aclose()
                except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
                    pass


# -- the supervisor's listener -------------------------------------------------------------


class FleetWorker(Protocol):
    """A worker as the supervisor's endpoint sees it (``quicserve.supervisor.Worker``)."""

    ready: bool

    def send(self, **message: Any) -> None:
        """A message over the worker's link (never blocks)."""

    def __hash__(self) -> int:
        """Workers are told apart by identity."""


@dataclass(eq=False)
class _Scraper:
    sock: socket.socket
    deadline: float
    head: bytes = b""
    out: bytes = b""
    waiting: bool = False  # for the workers' snapshots


@dataclass(eq=False)
class _Round:
    number: int
    deadline: float
    scrapers: list[_Scraper]
    waiting: set[FleetWorker] = field(default_factory=set)


class FleetEndpoint(_Bound):
    """The supervisor's ``--metrics-bind`` listener: one endpoint for every worker.

    It runs in the supervisor's ``selectors`` loop: it registers its own sockets there
    (each key's ``data`` is a method taking the event mask, which the supervisor calls),
    and the supervisor calls :meth:`snapshot_received`, :meth:`worker_gone` and
    :meth:`tick`. Every socket is non-blocking; every wait has a deadline; a round of
    snapshots serves every scrape that was waiting when it began, and the scrapes that
    arrive meanwhile get the next round (so a scrape never shows numbers older than its
    request)."""

    def __init__(
        self,
        bind: str,
        selector: selectors.BaseSelector,
        workers: Callable[[], Sequence[FleetWorker]],
    ) -> None:
        self._socket = _listening_socket(bind)
        self._selector = selector
        self._workers = workers
        self._accepting = False
        self._scrapers: list[_Scraper] = []
        self._queued: list[_Scraper] = []
        self._round: _Round | None = None
        self._rounds = itertools.count(1)
        #: Each live worker's latest snapshot, and the counters of workers that are gone.
        self.totals = FleetTotals()
        self.stale = 0
        self.timeouts = 0
        self._closed = False
        self._accept(True)

    def _accept(self, on: bool) -> None:
        if on and not self._accepting:
            self._selector.register(self._socket, selectors.EVENT_READ, self._on_accept)
        elif not on and self._accepting:
            self._selector.unregister(self._socket)
        self._accepting = on

    # -- what the supervisor calls -----------------------------------------------------

    def snapshot_received(self, worker: FleetWorker, message: dict[str, Any]) -> None:
        """A worker's ``{"snapshot": round, "metrics": ...}`` or ``{"final": ...}``."""
        if "final" in message:
            self.totals.update(worker, Snapshot.from_json(message["final"]))
            return
        self.totals.update(worker, Snapshot.from_json(message.get("metrics")))
        current = self._round
        if current is not None and message.get("snapshot") == current.number:
            current.waiting.discard(worker)
            if not current.waiting:
                self._finish_round()

    def worker_gone(self, worker: FleetWorker) -> None:
        """A worker exited: what it counted stays in the totals, for good."""
        self.totals.gone(worker)
        current = self._round
        if current is not None and worker in current.waiting:
            current.waiting.discard(worker)
            if not current.waiting:
                self._finish_round()

    def timeout(self, longest: float) -> float:
        """How long the supervisor's ``select`` may wait before :meth:`tick` has work."""
        deadlines = [s.deadline for s in self._scrapers]
        if self._round is not None:
            deadlines.append(self._round.deadline)
        if not deadlines:
            return longest
        return max(0.0, min(longest, min(deadlines) - time.monotonic()))

    def tick(self) -> None:
        """Enforce the deadlines: slow heads, slow readers, workers that do not answer."""
        now = time.monotonic()
        current = self._round
        if current is not None and now >= current.deadline:
            self.timeouts += len(current.waiting)
            logger.warning(
                "Metrics: %d worker(s) did not answer within %.0f s; showing their "
                "previous numbers",
                len(current.waiting),
                WORKER_TIMEOUT,
            )
            self._finish_round()
        for scraper in list(self._scrapers):
            if now < scraper.deadline or scraper.waiting:
                continue
            if scraper.out:
                self._drop(scraper)  # a reader too slow to take the response
            else:  # no complete head in time
                self._respond(scraper, response(scraper.head, b"400 Bad Request", b"bad request\n"))

    def close(self) -> None:
        """Stop listening and drop every scrape."""
        for scraper in list(self._scrapers):
            self._drop(scraper)
        self._accept(False)
        self._closed = True
        self._socket.close()

    def render(self) -> str:
        """The fleet's exposition now: every worker's latest numbers plus the retired."""
        total = self.totals.total()
        counters, gauges = total.counters, total.gauges
        counters["quicserve_worker_restarts_total"] = _process_counters["worker_restarts"]
        counters["quicserve_worker_unresponsive_total"] = _process_counters["worker_unresponsive"]
        counters["quicserve_metrics_worker_timeouts_total"] = self.timeouts
        gauges["quicserve_workers"] = len(self._workers())
        gauges["quicserve_metrics_stale_workers"] = self.stale
        return render_snapshot(total, FAMILIES | SUPERVISOR_FAMILIES | FLEET_FAMILIES)

    # -- sockets -----------------------------------------------------------------------

    def _on_accept(self, events: int) -> None:
        while len(self._scrapers) < _CONCURRENT_SCRAPES:
            try:
                sock, _ = self._socket.accept()
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                logger.warning("metrics accept() failed: %s", exc)
                break
            sock.setblocking(False)
            scraper = _Scraper(sock, time.monotonic() + _READ_TIMEOUT)
            self._scrapers.append(scraper)
            self._selector.register(
                sock, selectors.EVENT_READ, functools.partial(self._on_ready, scraper)
            )
        # At the limit, further scrapers wait in the kernel's backlog.
        self._accept(len(self._scrapers) < _CONCURRENT_SCRAPES)

    def _on_ready(self, scraper: _Scraper, events: int) -> None:
        if scraper.out:
            self._write(scraper)
            return
        try:
            chunk = scraper.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._drop(scraper)
            return
        scraper.head += chunk
        if b"\r\n\r\n" not in scraper.head and len(scraper.head) <= _MAX_HEAD:
            return
        answer = check_head(scraper.head)
        if answer is not None:
            self._respond(scraper, response(scraper.head, *answer))
            return
        scraper.waiting = True
        self._selector.unregister(scraper.sock)  # nothing more to read
        self._queued.append(scraper)
        if self._round is None:
            self._start_round()

    def _start_round(self) -> None:
        scrapers, self._queued = self._queued, []
        current = self._round = _Round(
            next(self._rounds), time.monotonic() + WORKER_TIMEOUT, scrapers
        )
        for worker in self._workers():
            if worker.ready:
                current.waiting.add(worker)
                worker.send(scrape=current.number)
        if not current.waiting:
            self._finish_round()

    def _finish_round(self) -> None:
        current = self._round
        assert current is not None
        self._round = None
        self.stale = len(current.waiting)
        body = self.render().encode("utf-8")
        for scraper in current.scrapers:
            if scraper in self._scrapers:
                scraper.waiting = False
                self._respond(scraper, response(scraper.head, b"200 OK", body))
        if self._queued:
            self._start_round()

    def _respond(self, scraper: _Scraper, data: bytes) -> None:
        scraper.out = data
        scraper.deadline = time.monotonic() + _WRITE_TIMEOUT
        callback = functools.partial(self._on_ready, scraper)
        try:
            self._selector.modify(scraper.sock, selectors.EVENT_WRITE, callback)
        except KeyError:  # it waited for the workers, unregistered
            self._selector.register(scraper.sock, selectors.EVENT_WRITE, callback)
        self._write(scraper)

    def _write(self, scraper: _Scraper) -> None:
        try:
            sent = scraper.sock.send(scraper.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(scraper)
            return
        scraper.out = scraper.out[sent:]
        if not scraper.out:
            self._drop(scraper)

    def _drop(self, scraper: _Scraper) -> None:
        if scraper in self._scrapers:
            self._scrapers.remove(scraper)
        if scraper in self._queued:
            self._queued.remove(scraper)
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(scraper.sock)
        scraper.sock.close()
        if not self._closed:
            self._accept(len(self._scrapers) < _CONCURRENT_SCRAPES)
