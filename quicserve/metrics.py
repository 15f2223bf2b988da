"""Prometheus metrics: ``--metrics-bind HOST:PORT`` serves ``GET /metrics`` in the text
exposition format (version 0.0.4) on a separate plain-HTTP listener.

Rules:

* Counting costs the request path nothing new: the counters are plain ints that the
  registry, the connections and the QUIC endpoints already keep or bump where the event
  happens (see ``registry.py``). This module only reads them, when scraped, so the work of
  a scrape (a pass over the live connections) is paid by the scraper.
* The listener is deliberately tiny and bounded: one request per connection, a head of at
  most 8 KiB read within 5 s, at most 4 scrapes at once, ``Connection: close``. It never
  serves the app and is not affected by the app's limits.
* Counters describe this process. Worker restarts happen in the supervisor: it calls
  :func:`count_worker_restart` and :func:`count_worker_unresponsive`, exported as
  ``quicserve_worker_restarts_total`` and ``quicserve_worker_unresponsive_total`` by the
  process that holds the counters. (With several workers each worker has its own listener
  and counters; aggregating them is the supervisor's job.)
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Protocol

import anyio
import anyio.abc

from .addresses import parse_bind
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

#: Process-wide counters fed from outside the server (the worker supervisor).
_process_counters = {"worker_restarts": 0, "worker_unresponsive": 0}


def count_worker_restart() -> None:
    """The supervisor restarted a worker (exported as ``quicserve_worker_restarts_total``)."""
    _process_counters["worker_restarts"] += 1


def count_worker_unresponsive() -> None:
    """The supervisor replaced a worker that did not answer its ping within
    ``--worker-healthcheck-timeout`` (``quicserve_worker_unresponsive_total``)."""
    _process_counters["worker_unresponsive"] += 1


# -- rendering ---------------------------------------------------------------------------------


def _family(name: str, kind: str, help: str, samples: list[tuple[str, int]]) -> Iterator[str]:
    yield f"# HELP {name} {help}"
    yield f"# TYPE {name} {kind}"
    for labels, value in samples:
        yield f"{name}{labels} {value}"


def _labels(**values: str) -> str:
    # Label values are our own names and numbers (no quotes or backslashes to escape).
    return "{" + ",".join(f'{key}="{value}"' for key, value in values.items()) + "}"


def render(server: StatsSource) -> str:
    """The exposition text for ``server`` now."""
    registry = server.registry
    live: dict[str, list[int]] = {}  # protocol -> [open, streams, requests, in, out]
    for record in registry.records():
        row = live.setdefault(record.alpn, [0, 0, 0, 0, 0])
        row[0] += 1
        row[1] += getattr(getattr(record.owner, "protocol", None), "open_streams", 0)
        row[2] += record.requests
        row[3] += record.bytes_in
        row[4] += record.bytes_out
    closed = registry.closed_totals
    protocols = sorted(set(live) | set(closed))

    def per_protocol(index_live: int | None, index_closed: int | None) -> list[tuple[str, int]]:
        samples = []
        for protocol in protocols:
            value = live.get(protocol, [0] * 5)[index_live] if index_live is not None else 0
            if index_closed is not None:
                value += closed.get(protocol, [0] * 4)[index_closed]
            samples.append((_labels(protocol=protocol), value))
        return samples

    lines: list[str] = []

    def add(name: str, kind: str, help: str, samples: list[tuple[str, int]]) -> None:
        lines.extend(_family(name, kind, help, samples))

    add(
        "quicserve_connections_open",
        "gauge",
        "Connections open now, by protocol (tcp/tls until the protocol is known).",
        per_protocol(0, None),
    )
    add(
        "quicserve_streams_open",
        "gauge",
        "Request streams open now, by protocol.",
        per_protocol(1, None),
    )
    add(
        "quicserve_connections_total",
        "counter",
        "Connections accepted, by protocol (counted under their protocol once known).",
        per_protocol(0, 0),  # open now + closed
    )
    add(
        "quicserve_requests_total",
        "counter",
        "Requests received, by protocol.",
        per_protocol(2, 1),
    )
    add(
        "quicserve_received_bytes_total",
        "counter",
        "Bytes received from peers (TCP stream bytes, QUIC datagram bytes), by protocol.",
        per_protocol(3, 2),
    )
    add(
        "quicserve_sent_bytes_total",
        "counter",
        "Bytes sent to peers, by protocol.",
        per_protocol(4, 3),
    )
    counts = registry.status_counts
    add(
        "quicserve_responses_total",
        "counter",
        "Responses by status code ('none': the request ended without a response).",
        [
            (_labels(code=str(code) if code else "none"), count)
            for code, count in enumerate(counts)
            if count
        ],
    )
    add(
        "quicserve_handshake_failures_total",
        "counter",
        "Handshakes that failed: TLS on TCP, QUIC connections closed before completing.",
        [(_labels(transport=t), n) for t, n in sorted(registry.handshake_failures.items())],
    )
    quic = server.quic_stats()
    for key, name, help in (
        ("retry_sent", "quicserve_quic_retry_sent_total", "QUIC Retry packets sent."),
        ("invalid_token", "quicserve_quic_invalid_tokens_total", "QUIC Initials with a bad token."),
        ("vn_sent", "quicserve_quic_version_negotiation_total", "Version Negotiation sent."),
        ("refused", "quicserve_quic_refused_total", "QUIC connections refused (full)."),
        ("resets_sent", "quicserve_quic_stateless_resets_total", "Stateless resets sent."),
        ("early_data_requests", "quicserve_quic_0rtt_requests_total", "Requests in 0-RTT."),
        ("migrations", "quicserve_quic_migrations_total", "Requests on a new client path."),
        ("datagrams_in", "quicserve_quic_datagrams_received_total", "UDP datagrams received."),
        ("datagrams_out", "quicserve_quic_datagrams_sent_total", "UDP datagrams sent."),
        ("dropped", "quicserve_quic_datagrams_dropped_total", "Datagrams dropped unread."),
    ):
        add(name, "counter", help, [("", quic.get(key, 0))])
    add(
        "quicserve_worker_restarts_total",
        "counter",
        "Worker processes restarted by the supervisor.",
        [("", _process_counters["worker_restarts"])],
    )
    add(
        "quicserve_worker_unresponsive_total",
        "counter",
        "Workers replaced because their event loop stopped answering the supervisor.",
        [("", _process_counters["worker_unresponsive"])],
    )
    return "\n".join(lines) + "\n"


# -- the listener ------------------------------------------------------------------------------


class MetricsEndpoint:
    """The ``--metrics-bind`` listener of one :class:`~quicserve.server.Server`."""

    def __init__(self, bind: str, server: StatsSource) -> None:
        try:
            host, port = parse_bind(bind, "127.0.0.1")
        except ValueError as exc:
            raise BindError(f"--metrics-bind: {exc}") from None
        self._socket = create_listening_socket(host, port)
        self._server = server
        self._limit = anyio.Semaphore(_CONCURRENT_SCRAPES)

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port)."""
        name = self._socket.getsockname()
        return (str(name[0]), int(name[1]))

    def url(self) -> str:
        """Where the metrics are, for the log."""
        host, port = self.address
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/metrics"

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
            request_line = head.split(b"\r\n", 1)[0].split()
            if b"\r\n\r\n" not in head or len(request_line) != 3:
                status, body = b"400 Bad Request", b"bad request\n"
            elif request_line[0] not in (b"GET", b"HEAD"):
                status, body = b"405 Method Not Allowed", b"GET /metrics\n"
            elif request_line[1].split(b"?")[0] != b"/metrics":
                status, body = b"404 Not Found", b"see /metrics\n"
            else:
                status, body = b"200 OK", render(self._server).encode("utf-8")
            response = (
                b"HTTP/1.1 %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n"
                b"connection: close\r\n\r\n" % (status, CONTENT_TYPE, len(body))
            )
            if request_line[:1] != [b"HEAD"]:
                response += body
            await stream.send(response)
        except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
            pass
        finally:
            self._limit.release()
            with anyio.CancelScope(shield=True), anyio.move_on_after(1):
                try:
                    await stream.aclose()
                except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
                    pass
