"""Aggregation and reporting of benchmark trials.

Job: hold the outcome of each trial (`Trial`), reduce the trials of each (protocol, backend,
server) to a `Summary` (median and min-max over repeats), compute side-by-side `Ratio` rows of
a reference server against each other server, and render both as markdown and JSON.

Rules:

* Medians and min-max spreads are over repeats; a failed trial is counted, never averaged in.
* A ratio is computed *per repeat* from two trials of the same repeat (run back to back, so
  the same machine noise) and only then summarised: median and min-max of those per-repeat
  ratios. Ratios of medians are never shown, since they mix trials run minutes apart.
* ``req/s x`` is reference / other (above 1: the reference is faster); ``CPU/1k x`` and
  ``p99 x`` are reference / other as well (below 1: the reference is cheaper / faster).
* The report states what it cannot: failed trials with their reason, pairs that a server
  cannot serve, and how p99 was obtained (h3: not at all).
* Bulk protocols (``h3bulk``) measure bytes, not requests: their trials carry MiB/s and server
  CPU ms per MiB, and get their own tables.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

# Under closed-loop load a CPU-bound server is near 100 % busy; far below that it is waiting.
LOW_CPU_BUSY_PCT = 50.0


@dataclass(slots=True)
class Trial:
    """The outcome of one server under one load for one repeat."""

    protocol: str
    backend: str
    server: str
    repeat: int  # 1-based
    ok: bool = False
    error: str | None = None
    rps: float | None = None
    requests: int | None = None
    p99_ms: float | None = None
    p99_source: str | None = None
    mean_ms: float | None = None
    cpu_s: float | None = None
    cpu_ms_per_1k: float | None = None
    cpu_busy_pct: float | None = None  # server CPU seconds / wall seconds of the measured load
    core_busy_pct: float | None = None  # the server CPU(s) busy, all processes, same window
    bad_status: int = 0
    errors: int = 0
    app_protocol: str | None = None
    stop_note: str | None = None
    mib: float | None = None  # bulk: verified MiB downloaded in the measured window
    mib_per_s: float | None = None  # bulk: throughput
    cpu_ms_per_mib: float | None = None  # bulk: server CPU per MiB sent
    load_busy_pct: float | None = None  # ws: client CPU / its window, % of one load core


@dataclass(frozen=True, slots=True)
class Spread:
    """Median and range of some values (None when there are none)."""

    median: float | None
    low: float | None
    high: float | None
    n: int

    @staticmethod
    def of(values: Iterable[float | None]) -> Spread:
        """Spread of the values that are not None."""
        present = [v for v in values if v is not None]
        if not present:
            return Spread(None, None, None, 0)
        return Spread(statistics.median(present), min(present), max(present), len(present))


@dataclass(frozen=True, slots=True)
class Summary:
    """All repeats of one (protocol, backend, server)."""

    protocol: str
    backend: str
    server: str
    trials: int
    ok: int
    rps: Spread
    p99_ms: Spread
    mean_ms: Spread
    cpu_ms_per_1k: Spread
    cpu_busy_pct: Spread
    core_busy_pct: Spread
    bad_status: int
    errors: int
    mib_per_s: Spread
    cpu_ms_per_mib: Spread
    load_busy_pct: Spread


@dataclass(frozen=True, slots=True)
class Ratio:
    """Per-repeat ratios of the reference server against one other server."""

    protocol: str
    backend: str
    reference: str
    other: str
    rps: Spread
    cpu_ms_per_1k: Spread
    p99_ms: Spread
    mib_per_s: Spread
    cpu_ms_per_mib: Spread


@dataclass(slots=True)
class Report:
    """Everything a run produced, ready to render."""

    meta: dict[str, Any]
    trials: list[Trial]
    reference: str
    skipped: list[str] = field(default_factory=list)  # pairs not applicable / unavailable

    def summaries(self) -> list[Summary]:
        """One `Summary` per (protocol, backend, server), in the order trials were run."""
        groups: dict[tuple[str, str, str], list[Trial]] = {}
        for t in self.trials:
            groups.setdefault((t.protocol, t.backend, t.server), []).append(t)
        out = []
        for (protocol, backend, server), trials in groups.items():
            good = [t for t in trials if t.ok]
            out.append(
                Summary(
                    protocol=protocol,
                    backend=backend,
                    server=server,
                    trials=len(trials),
                    ok=len(good),
                    rps=Spread.of(t.rps for t in good),
                    p99_ms=Spread.of(t.p99_ms for t in good),
                    mean_ms=Spread.of(t.mean_ms for t in good),
                    cpu_ms_per_1k=Spread.of(t.cpu_ms_per_1k for t in good),
                    cpu_busy_pct=Spread.of(t.cpu_busy_pct for t in good),
                    core_busy_pct=Spread.of(t.core_busy_pct for t in good),
                    bad_status=sum(t.bad_status for t in good),
                    errors=sum(t.errors for t in good),
                    mib_per_s=Spread.of(t.mib_per_s for t in good),
                    cpu_ms_per_mib=Spread.of(t.cpu_ms_per_mib for t in good),
                    load_busy_pct=Spread.of(t.load_busy_pct for t in good),
                )
            )
        return out

    def ratios(self) -> list[Ratio]:
        """Reference / other, per repeat, for every other server of each (protocol, backend)."""
        by_key: dict[tuple[str, str], dict[str, dict[int, Trial]]] = {}
        for t in self.trials:
            by_key.setdefault((t.protocol, t.backend), {}).setdefault(t.server, {})[t.repeat] = t
        out = []
        for (protocol, backend), servers in by_key.items():
            ref = servers.get(self.reference)
            if ref is None:
                continue
            for other_name, other in servers.items():
                if other_name == self.reference:
                    continue
                pairs = [
                    (ref[r], other[r])
                    for r in sorted(ref)
                    if r in other and ref[r].ok and other[r].ok
                ]
                out.append(
                    Ratio(
                        protocol=protocol,
                        backend=backend,
                        reference=self.reference,
                        other=other_name,
                        rps=Spread.of(_div(a.rps, b.rps) for a, b in pairs),
                        cpu_ms_per_1k=Spread.of(
                            _div(a.cpu_ms_per_1k, b.cpu_ms_per_1k) for a, b in pairs
                        ),
                        p99_ms=Spread.of(_div(a.p99_ms, b.p99_ms) for a, b in pairs),
                        mib_per_s=Spread.of(_div(a.mib_per_s, b.mib_per_s) for a, b in pairs),
                        cpu_ms_per_mib=Spread.of(
                            _div(a.cpu_ms_per_mib, b.cpu_ms_per_mib) for a, b in pairs
                        ),
                    )
                )
        return out

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict: meta, every trial, summaries and ratios."""
        return {
            "meta": self.meta,
            "reference": self.reference,
            "trials": [asdict(t) for t in self.trials],
            "summaries": [asdict(s) for s in self.summaries()],
            "ratios": [asdict(r) for r in self.ratios()],
            "skipped": self.skipped,
        }

    def to_markdown(self) -> str:
        """The human-readable report: two tables (four with bulk protocols) and the notes that
        qualify them."""
        m = self.meta
        bulk = set(m.get("bulk_protocols", []))
        conns = f"{m['connections']} connections"
        if any(p in ("h3", "h3bulk") for p in m["protocols"]):
            conns += f" (h3: {m.get('h3_clients', '?')} gtlsclient clients; h3bulk: 1)"
        if any(p.startswith("ws") for p in m["protocols"]):
            conns += (
                f" (ws*: {m.get('ws_connections', '?')} WebSockets x {m.get('ws_window', '?')}"
                f" messages in flight, {m.get('ws_clients', '?')} client process(es))"
            )
        lines = [
            f"## Side-by-side: {', '.join(m['servers_run'])}",
            "",
            f"{m['date']} | {m['machine']} | Python {m['python']} | "
            f"{m['duration_s']} s x {m['repeats']} repeats | {conns} | "
            f"server on CPU {m['server_cpu']}, load on CPU {m['load_cpu']} | "
            f"load avg {m['loadavg_start']} -> {m['loadavg_end']}",
            "",
        ]
        lines += [f"- `{name}`: {desc}" for name, desc in m["protocols"].items()]
        lines += [f"- {tool}" for tool in m["tools"]]
        versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
        lines.append(f"- versions: {versions}")
        lines += [
            "",
            "| proto | backend | server | req/s (median) | req/s min-max | spread | "
            "p99 ms (median) | mean ms | CPU ms / 1k req | busy: server / core | ok |",
            "|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|",
        ]
        summaries = self.summaries()
        for s in summaries:
            if s.protocol in bulk:
                continue
            if s.ok == 0:
                lines.append(
                    f"| {s.protocol} | {s.backend} | {s.server} | FAILED "
                    f"| | | | | | | 0/{s.trials} |"
                )
                continue
            lines.append(
                f"| {s.protocol} | {s.backend} | {s.server} | {_int(s.rps.median)} | "
                f"{_int(s.rps.low)}-{_int(s.rps.high)} | {_pct_spread(s.rps)} | "
                f"{_f(s.p99_ms.median)} | {_f(s.mean_ms.median)} | "
                f"{_f(s.cpu_ms_per_1k.median)} | "
                f"{_int(s.cpu_busy_pct.median)} / {_int(s.core_busy_pct.median)} % | "
                f"{s.ok}/{s.trials} |"
            )
        bulk_rows = [s for s in summaries if s.protocol in bulk]
        if bulk_rows:
            lines += [
                "",
                "| proto | backend | server | MiB/s (median) | MiB/s min-max | spread | "
                "CPU ms / MiB | busy: server / core | ok |",
                "|---|---|---|--:|--:|--:|--:|--:|--:|",
            ]
            for s in bulk_rows:
                if s.ok == 0:
                    lines.append(
                        f"| {s.protocol} | {s.backend} | {s.server} | FAILED | | | | | "
                        f"0/{s.trials} |"
                    )
                    continue
                lines.append(
                    f"| {s.protocol} | {s.backend} | {s.server} | {_f(s.mib_per_s.median)} | "
                    f"{_f(s.mib_per_s.low)}-{_f(s.mib_per_s.high)} | "
                    f"{_pct_spread(s.mib_per_s)} | {_f(s.cpu_ms_per_mib.median)} | "
                    f"{_int(s.cpu_busy_pct.median)} / {_int(s.core_busy_pct.median)} % | "
                    f"{s.ok}/{s.trials} |"
                )
        all_ratios = self.ratios()
        ratios = [r for r in all_ratios if r.protocol not in bulk]
        bulk_ratios = [r for r in all_ratios if r.protocol in bulk]
        lines += ["", f"### Ratios: {self.reference} / other, per repeat (median, min-max)", ""]
        if not all_ratios:
            ran = {t.server for t in self.trials}
            why = "only one server ran" if ran <= {self.reference} else "it has no trials"
            lines.append(f"(no ratios for `{self.reference}`: {why})")
        if ratios:
            lines += [
                f"| proto | backend | {self.reference} / | req/s x | CPU/1k req x | p99 x "
                "| pairs |",
                "|---|---|---|--:|--:|--:|--:|",
            ]
            for r in ratios:
                lines.append(
                    f"| {r.protocol} | {r.backend} | {r.other} | {_ratio(r.rps)} | "
                    f"{_ratio(r.cpu_ms_per_1k)} | {_ratio(r.p99_ms)} | {r.rps.n} |"
                )
            lines += [
                "",
                "req/s x above 1: the reference is faster; CPU/1k x and p99 x below 1: it is "
                "cheaper / has a lower tail.",
            ]
        if bulk_ratios:
            lines += [
                "",
                f"| proto | backend | {self.reference} / | MiB/s x | CPU/MiB x | pairs |",
                "|---|---|---|--:|--:|--:|",
            ]
            for r in bulk_ratios:
                lines.append(
                    f"| {r.protocol} | {r.backend} | {r.other} | {_ratio(r.mib_per_s)} | "
                    f"{_ratio(r.cpu_ms_per_mib)} | {r.mib_per_s.n} |"
                )
            lines += [
                "",
                "MiB/s x above 1: the reference downloads faster; CPU/MiB x below 1: it spends "
                "less server CPU per MiB.",
            ]
        lines += ["", "Notes:", ""]
        lines += self._notes()
        return "\n".join(lines) + "\n"

    def _notes(self) -> list[str]:
        notes: list[str] = []
        bulk = set(self.meta.get("bulk_protocols", []))
        sources = sorted(
            {
                f"{t.protocol}: {t.p99_source}"
                for t in self.trials
                if t.p99_source and t.protocol not in bulk
            }
        )
        sources = sorted({s.split(" (")[0] for s in sources})
        if sources:
            notes.append("- p99 from " + "; ".join(sources) + ".")
        notes.append(
            "- spread = (max - min) / median of req/s over repeats; CPU = server process tree "
            "utime+stime during the measured window (/proc), per 1000 completed requests; "
            "busy = that CPU time / wall time of the window (server), and how busy the server's "
            "core was with all processes (core): server well under core means other work "
            "shared the core; both low means the server stalled."
        )
        loaded = [s for s in self.summaries() if s.load_busy_pct.median is not None]
        if loaded:
            notes.append(
                "- ws*: req/s = 64-byte WebSocket messages echoed per second (every byte "
                "checked), CPU per 1000 echoes; p99 n/a. Client CPU (all bench/wsload.py "
                "processes) in % of one load core, median (min-max): "
                + "; ".join(
                    f"{s.protocol}/{s.backend} {s.server} {_int(s.load_busy_pct.median)} "
                    f"({_int(s.load_busy_pct.low)}-{_int(s.load_busy_pct.high)})"
                    for s in loaded
                )
                + ". Well under 100: the client had CPU to spare; the server set the pace."
            )
        if bulk & {t.protocol for t in self.trials}:
            notes.append(
                "- bulk (MiB/s): verified body bytes / wall time of the loader's window; CPU ms / "
                "MiB = server CPU in that window per MiB; spread as for req/s."
            )
        for t in self.trials:
            if t.ok and (t.bad_status or t.errors):
                notes.append(
                    f"- {t.protocol}/{t.backend} {t.server} repeat {t.repeat}: "
                    f"{t.bad_status} responses >= 400, {t.errors} socket errors/timeouts."
                )
        for t in self.trials:
            if t.ok and t.cpu_busy_pct is not None and t.cpu_busy_pct < LOW_CPU_BUSY_PCT:
                core = t.core_busy_pct
                if core is not None and core >= LOW_CPU_BUSY_PCT + 25.0:
                    why = "other processes took the rest of its core (noise, not the server)"
                else:
                    why = "its core was idle too: a stall in the server (flow control, lost "
                    why += "wake-up, blocked stream), not CPU cost"
                notes.append(
                    f"- {t.protocol}/{t.backend} {t.server} repeat {t.repeat}: server only "
                    f"{t.cpu_busy_pct:.0f} % busy under full load (core {_int(core)} %): {why}."
                )
        for t in self.trials:
            if t.stop_note:
                notes.append(
                    f"- {t.protocol}/{t.backend} {t.server} repeat {t.repeat}: {t.stop_note}."
                )
        # One note per (server, reason): a server that cannot start fails the same way in
        # every trial, and the reader needs the reason once, with where it happened.
        failures: dict[tuple[str, str], list[str]] = {}
        for t in self.trials:
            if not t.ok and t.error is not None:
                where = f"{t.protocol}/{t.backend} r{t.repeat}"
                failures.setdefault((t.server, t.error), []).append(where)
        for (server, error), places in failures.items():
            first, *rest = error.splitlines() or [""]
            notes.append(f"- FAILED {server} ({', '.join(places)}): {first}")
            if rest:
                notes += ["", "  ```", *[f"  {line}" for line in rest], "  ```", ""]
        notes += [f"- not run: {s}" for s in self.skipped]
        return notes


def _div(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def _int(v: float | None) -> str:
    return "-" if v is None else f"{v:,.0f}"


def _f(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.2f}" if v < 100 else f"{v:.0f}"


def _pct_spread(s: Spread) -> str:
    if s.median is None or s.low is None or s.high is None or s.median == 0:
        return "-"
    return f"{(s.high - s.low) / s.median * 100:.0f} %"


def _ratio(s: Spread) -> str:
    if s.median is None or s.low is None or s.high is None:
        return "-"
    return f"{s.median:.2f} ({s.low:.2f}-{s.high:.2f})"


def format_trial(t: Trial) -> str:
    """One progress line for a finished trial."""
    head = f"[{t.protocol}/{t.backend}] repeat {t.repeat} {t.server:<18}"
    if not t.ok:
        first = (t.error or "failed").splitlines()[0]
        return f"{head} FAILED: {first}"
    if t.mib_per_s is not None:
        return f"{head} {_f(t.mib_per_s):>8} MiB/s  CPU {_f(t.cpu_ms_per_mib)} ms/MiB"
    line = f"{head} {_int(t.rps):>8} req/s  p99 {_f(t.p99_ms)} ms  CPU {_f(t.cpu_ms_per_1k)}"
    line += " ms/1k req"
    if t.load_busy_pct is not None:
        line += f"  server {_int(t.cpu_busy_pct)} % / client {_int(t.load_busy_pct)} % busy"
    return line


def server_order(names: Sequence[str], reference: str) -> list[str]:
    """The reference server first, then the others in the order given."""
    return [n for n in names if n == reference] + [n for n in names if n != reference]
