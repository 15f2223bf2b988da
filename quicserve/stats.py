"""Metric values as plain data: per-request recording, snapshots, sums, Prometheus text.

:class:`RequestStats` records every request (and WebSocket or WebTransport session) a
connection finishes; a :class:`Snapshot` is what one process reports when scraped
(``quicserve.metrics`` builds it from the registry, the QUIC endpoints and the
RequestStats); :meth:`Snapshot.add` sums the snapshots of several workers; :func:`render`
writes the Prometheus text exposition format (version 0.0.4).

Rules:

* Nothing here runs unless ``--metrics-bind`` is set: a server without it has no
  RequestStats and its drivers test ``None`` instead of recording.
* Recording one request is a tuple key, a dict lookup and a ``bisect`` into a tuple of
  floats; nothing else is allocated once a series exists.
* Labels are bounded, never a path, a header or an address: HTTP version (3 values),
  method (9 known names or ``_OTHER``), status code (what the app answered, 100-599, or
  none). Names follow the OpenTelemetry HTTP semantic conventions as exported to
  Prometheus (``http.server.request.duration`` in seconds, with the default OTel bucket
  boundaries, becomes ``http_server_request_duration_seconds``).
* A snapshot is plain JSON (it crosses the supervisor link): counters and histograms add
  up across processes and only ever grow; gauges are sums of what is open now.
* Sans-IO: no sockets, no event loop; the clock is ``time.perf_counter``, read only by
  :meth:`RequestStats.start` and :meth:`RequestStats.finish`.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Hashable, Iterator
from dataclasses import dataclass, field
from typing import Any

#: OpenTelemetry's default boundaries for ``http.server.request.duration`` (seconds).
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
#: WebSocket and WebTransport sessions last longer than requests.
SESSION_BUCKETS = (0.1, 1.0, 10.0, 60.0, 300.0, 1800.0, 3600.0)

#: RFC 9110 §9 methods and PATCH (RFC 5789): OTel's known methods; others are ``_OTHER``.
_METHODS = {
    m.encode(): m
    for m in ("CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE")
}

#: What a driver calls each stream type (the ``kind`` of :meth:`RequestStats.start`).
HTTP, WEBSOCKET, WEBTRANSPORT = "http", "ws", "wt"

REQUEST_DURATION = "http_server_request_duration_seconds"
ACTIVE_REQUESTS = "http_server_active_requests"

#: family -> (type, help, bucket bounds of a histogram). The exposition's order.
FAMILIES: dict[str, tuple[str, str, tuple[float, ...]]] = {
    REQUEST_DURATION: (
        "histogram",
        "Duration of HTTP server requests (OpenTelemetry http.server.request.duration): "
        "from the request head to the end of the app call.",
        REQUEST_BUCKETS,
    ),
    ACTIVE_REQUESTS: ("gauge", "HTTP requests in progress (http.server.active_requests).", ()),
    "quicserve_websocket_sessions_total": (
        "counter",
        "WebSocket sessions ended, by HTTP version and handshake status (101 or 200: accepted).",
        (),
    ),
    "quicserve_websocket_session_duration_seconds": (
        "histogram",
        "Duration of WebSocket sessions, handshake to close.",
        SESSION_BUCKETS,
    ),
    "quicserve_websocket_sessions_active": ("gauge", "WebSocket sessions open now.", ()),
    "quicserve_webtransport_sessions_total": (
        "counter",
        "WebTransport sessions ended, by handshake status (200: accepted).",
        (),
    ),
    "quicserve_webtransport_session_duration_seconds": (
        "histogram",
        "Duration of WebTransport sessions.",
        SESSION_BUCKETS,
    ),
    "quicserve_webtransport_sessions_active": ("gauge", "WebTransport sessions open now.", ()),
}

_KINDS = {
    HTTP: (REQUEST_DURATION, ACTIVE_REQUESTS, None, REQUEST_BUCKETS),
    WEBSOCKET: (
        "quicserve_websocket_session_duration_seconds",
        "quicserve_websocket_sessions_active",
        "quicserve_websocket_sessions_total",
        SESSION_BUCKETS,
    ),
    WEBTRANSPORT: (
        "quicserve_webtransport_session_duration_seconds",
        "quicserve_webtransport_sessions_active",
        "quicserve_webtransport_sessions_total",
        SESSION_BUCKETS,
    ),
}

#: What :meth:`RequestStats.start` returns and :meth:`RequestStats.finish` takes back.
Started = tuple[float, tuple[str, str, str]]


def method_label(method: bytes) -> str:
    """``http_request_method``: a known method's name, else ``_OTHER`` (bounded)."""
    return _METHODS.get(method, "_OTHER")


def labels(**values: str) -> str:
    """``{key="value",...}`` (values are ours: names and numbers, nothing to escape)."""
    return "{" + ",".join(f'{key}="{value}"' for key, value in values.items()) + "}"


class RequestStats:
    """Per-request counts and durations of one process (see the module rules)."""

    __slots__ = ("active", "rows")

    def __init__(self) -> None:
        #: (kind, version, method) -> in progress now.
        self.active: dict[tuple[str, str, str], int] = {}
        #: (kind, version, method, status) -> [count per bucket ..., count above, sum].
        self.rows: dict[tuple[str, str, str, int], list[float]] = {}

    def start(self, kind: str, version: str, method: bytes) -> Started:
        """A request (or session) began: count it active, note when."""
        key = (kind, version, _METHODS.get(method, "_OTHER"))
        active = self.active
        active[key] = active.get(key, 0) + 1
        return time.perf_counter(), key

    def finish(self, started: Started, status: int) -> None:
        """It ended with ``status`` (0: no response): one bucket count and the sum."""
        began, key = started
        duration = time.perf_counter() - began
        self.active[key] -= 1
        kind, version, method = key
        row_key = (kind, version, method, status)
        row = self.rows.get(row_key)
        bounds = _KINDS[kind][3]
        if row is None:
            row = self.rows[row_key] = [0] * (len(bounds) + 2)
        # Prometheus buckets are "less or equal": the first bound >= duration.
        row[bisect_left(bounds, duration)] += 1
        row[-1] += duration

    def fill(self, snapshot: Snapshot) -> None:
        """Add this process's series to ``snapshot``."""
        for (kind, version, method), count in self.active.items():
            _, gauge, _, _ = _KINDS[kind]
            if kind == HTTP:
                series = gauge + labels(
                    network_protocol_name="http",
                    network_protocol_version=version,
                    http_request_method=method,
                )
            else:
                series = gauge + labels(network_protocol_version=version)
            snapshot.gauges[series] = snapshot.gauges.get(series, 0) + count
        for (kind, version, method, status), row in self.rows.items():
            histogram, _, counter, _ = _KINDS[kind]
            status_label = {"http_response_status_code": str(status)} if status else {}
            if kind == HTTP:
                text = labels(
                    network_protocol_name="http",
                    network_protocol_version=version,
                    http_request_method=method,
                    **status_label,
                    **({} if status else {"error_type": "_OTHER"}),
                )
            else:
                text = labels(network_protocol_version=version, **status_label)
            snapshot.add_histogram(histogram + text, row)
            if counter is not None:
                count = int(sum(row[:-1]))
                snapshot.counters[counter + text] = snapshot.counters.get(counter + text, 0) + count


@dataclass
class Snapshot:
    """The metric values of one process, or the sum of several (see the module rules).

    Series are keyed by their exposition name and labels (``name{a="b"}``); a histogram's
    value is its non-cumulative bucket counts (the last one above every bound) and its sum.
    """

    counters: dict[str, int] = field(default_factory=dict)
    gauges: dict[str, int] = field(default_factory=dict)
    histograms: dict[str, list[float]] = field(default_factory=dict)

    def add_histogram(self, series: str, row: list[float]) -> None:
        """Add one histogram's buckets and sum to the series (made if new)."""
        mine = self.histograms.get(series)
        if mine is None:
            self.histograms[series] = list(row)
        elif len(mine) == len(row):
            for index, value in enumerate(row):
                mine[index] += value

    def add(self, other: Snapshot, *, gauges: bool = True) -> None:
        """Sum ``other`` into this one (``gauges=False``: counters and histograms only,
        for a process that is gone: what it counted stays, what it had open does not)."""
        for series, value in other.counters.items():
            self.counters[series] = self.counters.get(series, 0) + value
        for series, row in other.histograms.items():
            self.add_histogram(series, row)
        if gauges:
            for series, value in other.gauges.items():
                self.gauges[series] = self.gauges.get(series, 0) + value

    def copy(self) -> Snapshot:
        """An independent copy (sums may be added to it)."""
        total = Snapshot()
        total.add(self)
        return total

    def to_json(self) -> dict[str, Any]:
        """Plain data for the supervisor link."""
        return {"c": self.counters, "g": self.gauges, "h": self.histograms}

    @classmethod
    def from_json(cls, data: Any) -> Snapshot:
        """The inverse of :meth:`to_json`; anything malformed is left out."""
        snapshot = cls()
        if not isinstance(data, dict):
            return snapshot
        for key, target in (("c", snapshot.counters), ("g", snapshot.gauges)):
            values = data.get(key)
            if isinstance(values, dict):
                for series, value in values.items():
                    if isinstance(series, str) and isinstance(value, int):
                        target[series] = value
        rows = data.get("h")
        if isinstance(rows, dict):
            for series, row in rows.items():
                if isinstance(series, str) and isinstance(row, list):
                    if all(isinstance(v, (int, float)) for v in row):
                        snapshot.histograms[series] = [v for v in row]
        return snapshot


class FleetTotals:
    """The numbers of several processes that come and go (the supervisor's workers),
    summed so that counters never go backwards.

    Each live process's latest snapshot counts in full; when a process is gone its
    counters and histograms move to ``retired`` (its gauges are dropped: nothing of it is
    open any more). A snapshot is never older than the one it replaces, since a process's
    counters only grow, so neither step can make a total smaller."""

    def __init__(self) -> None:
        self.latest: dict[Hashable, Snapshot] = {}
        self.retired = Snapshot()

    def update(self, process: Hashable, snapshot: Snapshot) -> None:
        """``process`` reported ``snapshot`` (its numbers now)."""
        self.latest[process] = snapshot

    def gone(self, process: Hashable) -> None:
        """``process`` exited: what it counted stays in the totals for good."""
        last = self.latest.pop(process, None)
        if last is not None:
            self.retired.add(last, gauges=False)

    def total(self) -> Snapshot:
        """The sum now."""
        total = self.retired.copy()
        for snapshot in self.latest.values():
            total.add(snapshot)
        return total


def _family_of(series: str) -> str:
    return series.split("{", 1)[0]


def _number(value: float) -> str:
    return str(value) if isinstance(value, int) else repr(float(value))


def render(snapshot: Snapshot, families: dict[str, tuple[str, str]]) -> str:
    """The exposition text of ``snapshot``. ``families`` gives type and help of the
    counters and gauges in the order to print them (histograms and the families of
    :data:`FAMILIES` come first); a family listed with no series prints its header."""
    grouped: dict[str, list[tuple[str, Any]]] = {}
    for kind_values in (snapshot.histograms, snapshot.counters, snapshot.gauges):
        for series, value in kind_values.items():
            grouped.setdefault(_family_of(series), []).append((series, value))
    order = list(FAMILIES) + [name for name in families if name not in FAMILIES]
    order += sorted(name for name in grouped if name not in FAMILIES and name not in families)
    lines: list[str] = []
    for name in order:
        samples = grouped.get(name, [])
        if name in FAMILIES:
            kind, help_text, bounds = FAMILIES[name]
        elif name in families:
            (kind, help_text), bounds = families[name], ()
        else:
            kind, help_text, bounds = "untyped", "", ()
        if not samples and name not in families:
            continue
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        for series, value in sorted(samples):
            if kind == "histogram":
                lines.extend(_histogram_lines(series, value, bounds))
            else:
                lines.append(f"{series} {_number(value)}")
    return "\n".join(lines) + "\n"


def _histogram_lines(series: str, row: list[float], bounds: tuple[float, ...]) -> Iterator[str]:
    name, _, rest = series.partition("{")
    inner = rest[:-1]
    prefix = inner + "," if inner else ""
    cumulative = 0
    for bound, count in zip((*bounds, float("inf")), row[:-1], strict=False):
        cumulative += int(count)
        le = "+Inf" if bound == float("inf") else repr(bound)
        yield f'{name}_bucket{{{prefix}le="{le}"}} {cumulative}'
    tail = "{" + inner + "}" if inner else ""
    yield f"{name}_sum{tail} {_number(row[-1])}"
    yield f"{name}_count{tail} {cumulative}"
