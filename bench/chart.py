"""A PNG chart of one benchmark run: req/s and server CPU per request, per scenario and server.

Job: turn a run's summaries (the ``summaries`` of `Report.to_json`, or the JSON file written
by ``--json``) into one picture, one panel per scenario (protocol x backend, protocols as
rows, backends as columns): req/s of each server as a bar with a min-max whisker over
repeats, and the server's CPU ms per 1000 requests as a dot on a second axis (MiB/s and CPU
ms per MiB for bulk protocols).

Rules:

* The data preparation (`panels`) is plain Python and needs no matplotlib, so it can be
  tested anywhere; only `draw` imports matplotlib, lazily, with the non-interactive Agg
  backend. Without matplotlib `draw` says so in one line on stderr and returns None: a
  benchmark run never fails for want of a chart.
* Every server keeps one colour in every panel (the order servers were run), and a server
  whose trials all failed shows as "FAILED" in its slot, never as a zero bar; a bar from
  only some of the repeats is labelled "k/n ok".
* The title carries the date, the machine and the load average: absolute numbers do not
  travel between machines; ratios within one run do.

Also a CLI: ``python -m bench.chart RUN.json [-o OUT.png]`` redraws a saved run.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_PATH = Path("bench/results/latest.png")


@dataclass(frozen=True, slots=True)
class Bar:
    """One server in one panel: throughput median and range, and server CPU cost."""

    server: str
    median: float | None  # None: every trial failed
    low: float | None
    high: float | None
    cpu: float | None  # CPU ms per 1000 requests (per MiB for bulk)
    ok: int = 0  # trials that succeeded
    trials: int = 0  # trials run


@dataclass(frozen=True, slots=True)
class Panel:
    """One scenario (protocol, backend) and its bars, in run order."""

    protocol: str
    backend: str
    bulk: bool
    bars: tuple[Bar, ...]

    @property
    def rate_label(self) -> str:
        """The y label of the bars."""
        return "MiB/s" if self.bulk else "req/s"

    @property
    def cpu_label(self) -> str:
        """The y label of the CPU dots."""
        return "server CPU ms / MiB" if self.bulk else "server CPU ms / 1k req"


def panels(summaries: Sequence[Mapping[str, Any]], bulk: Sequence[str] = ()) -> list[Panel]:
    """Group summaries (dicts shaped like `report.Summary`) into panels, in run order."""
    grouped: dict[tuple[str, str], list[Bar]] = {}
    for s in summaries:
        is_bulk = s["protocol"] in bulk
        rate = s["mib_per_s"] if is_bulk else s["rps"]
        cpu = s["cpu_ms_per_mib"] if is_bulk else s["cpu_ms_per_1k"]
        ok = s["ok"] > 0 and rate["median"] is not None
        grouped.setdefault((s["protocol"], s["backend"]), []).append(
            Bar(
                server=s["server"],
                median=rate["median"] if ok else None,
                low=rate["low"] if ok else None,
                high=rate["high"] if ok else None,
                cpu=cpu["median"] if ok else None,
                ok=s["ok"],
                trials=s.get("trials", s["ok"]),
            )
        )
    return [
        Panel(protocol, backend, protocol in bulk, tuple(bars))
        for (protocol, backend), bars in grouped.items()
    ]


def server_names(all_panels: Sequence[Panel]) -> list[str]:
    """Every server that appears, in first-seen order (this fixes the colours)."""
    return list(dict.fromkeys(b.server for p in all_panels for b in p.bars))


def draw(report_json: Mapping[str, Any], path: Path) -> Path | None:
    """Write the chart of a run (a `Report.to_json` dict) to ``path``; None if it could not."""
    try:
        import matplotlib
    except ImportError:
        print(
            "chart: matplotlib is not installed (pip install -e '.[bench]'); no chart",
            file=sys.stderr,
        )
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    meta = report_json.get("meta", {})
    todo = panels(report_json["summaries"], meta.get("bulk_protocols", []))
    if not todo:
        print("chart: no trials to draw; no chart", file=sys.stderr)
        return None
    protocols = list(dict.fromkeys(p.protocol for p in todo))
    backends = list(dict.fromkeys(p.backend for p in todo))
    names = server_names(todo)
    colours = {n: plt.get_cmap("tab10")(i % 10) for i, n in enumerate(names)}

    fig, axes = plt.subplots(
        len(protocols),
        len(backends),
        figsize=(4.2 * len(backends), 2.9 * len(protocols)),
        squeeze=False,
        layout="constrained",  # makes room for the suptitle and the legend above the panels
    )
    by_cell = {(p.protocol, p.backend): p for p in todo}
    for row, protocol in enumerate(protocols):
        for col, backend in enumerate(backends):
            ax = axes[row][col]
            panel = by_cell.get((protocol, backend))
            if panel is None:
                ax.set_axis_off()
                continue
            _draw_panel(ax, panel, colours)
    handles = [Rectangle((0, 0), 1, 1, color=colours[n]) for n in names]
    fig.legend(
        handles,
        names,
        loc="outside lower center",  # at the top it would cover the suptitle
        ncol=min(len(names), 6),
        frameon=False,
    )
    fig.suptitle(
        f"{meta.get('date', '?')} | {meta.get('machine', '?')} | "
        f"{meta.get('duration_s', '?')} s x {meta.get('repeats', '?')} repeats | "
        f"load avg {meta.get('loadavg_start', '?')} -> {meta.get('loadavg_end', '?')}\n"
        "bars: median with min-max over repeats (left axis); dots: server CPU (right axis). "
        "Compare servers within one run.",
        fontsize=8,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def _draw_panel(ax: Any, panel: Panel, colours: Mapping[str, Any]) -> None:
    """Bars with whiskers for throughput, dots on a twin axis for CPU cost."""
    xs = range(len(panel.bars))
    for x, bar in zip(xs, panel.bars, strict=True):
        if bar.median is None or bar.low is None or bar.high is None:
            ax.text(x, 0, "FAILED", ha="center", va="bottom", fontsize=7, rotation=90)
            continue
        ax.bar(
            x,
            bar.median,
            color=colours[bar.server],
            yerr=[[bar.median - bar.low], [bar.high - bar.median]],
            capsize=3,
            ecolor="0.2",
        )
        if bar.ok < bar.trials:  # a bar of fewer repeats than the others: say so on it
            ax.text(
                x, bar.median, f"{bar.ok}/{bar.trials} ok", ha="center", va="bottom", fontsize=7
            )
    ax.set_xlim(-0.6, len(panel.bars) - 0.4)  # keep a FAILED slot (no bar) in view
    ax.set_title(f"{panel.protocol} / {panel.backend}", fontsize=9)
    ax.set_xticks(list(xs))
    ax.set_xticklabels([b.server for b in panel.bars], fontsize=7, rotation=20)
    ax.set_ylabel(panel.rate_label, fontsize=8)
    ax.tick_params(axis="y", labelsize=7)
    twin = ax.twinx()
    cpu = [(x, b.cpu) for x, b in zip(xs, panel.bars, strict=True) if b.cpu is not None]
    if cpu:
        twin.plot([x for x, _ in cpu], [c for _, c in cpu], "o", color="black", markersize=5)
        twin.set_ylim(0, max(c for _, c in cpu) * 1.25)
    twin.set_ylabel(panel.cpu_label, fontsize=7)
    twin.tick_params(axis="y", labelsize=7)


def main(argv: Sequence[str] | None = None) -> int:
    """Redraw the chart of a saved run."""
    p = argparse.ArgumentParser(prog="python -m bench.chart", description=__doc__.split("\n")[0])
    p.add_argument("run", type=Path, help="a JSON file written by python -m bench.run --json")
    p.add_argument(
        "-o", "--out", type=Path, default=DEFAULT_PATH, help=f"PNG (default {DEFAULT_PATH})"
    )
    args = p.parse_args(argv)
    written = draw(json.loads(args.run.read_text()), args.out)
    if written is None:
        return 1
    print(f"chart written to {written}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
