"""bench/chart.py's data preparation: panels per scenario, in run order, failures kept.

Only the matplotlib-free part is tested (CI installs ``.[test]``, which has no matplotlib);
drawing is exercised by every benchmark run.
"""

from __future__ import annotations

from typing import Any

from bench.chart import panels, server_names


def _summary(protocol: str, backend: str, server: str, ok: int, **kw: Any) -> dict[str, Any]:
    none = {"median": None, "low": None, "high": None, "n": 0}
    return {
        "protocol": protocol,
        "backend": backend,
        "server": server,
        "ok": ok,
        "trials": 3,
        "rps": kw.get("rps", none),
        "cpu_ms_per_1k": kw.get("cpu", none),
        "mib_per_s": kw.get("mib", none),
        "cpu_ms_per_mib": kw.get("cpu_mib", none),
    }


def _spread(median: float, low: float, high: float) -> dict[str, Any]:
    return {"median": median, "low": low, "high": high, "n": 3}


def test_panels_group_by_scenario_in_run_order_and_keep_failures() -> None:
    summaries = [
        _summary("h1", "asyncio", "quicserve", 3, rps=_spread(10, 9, 11), cpu=_spread(50, 0, 0)),
        _summary("h1", "asyncio", "granian", 0),
        _summary("h2", "asyncio", "quicserve", 3, rps=_spread(20, 18, 21), cpu=_spread(40, 0, 0)),
        _summary(
            "h3bulk", "asyncio", "hypercorn", 1, mib=_spread(5, 5, 5), cpu_mib=_spread(7, 0, 0)
        ),
    ]
    got = panels(summaries, bulk=["h3bulk"])
    assert [(p.protocol, p.backend) for p in got] == [
        ("h1", "asyncio"),
        ("h2", "asyncio"),
        ("h3bulk", "asyncio"),
    ]
    h1 = got[0]
    assert [b.server for b in h1.bars] == ["quicserve", "granian"]
    assert (h1.bars[0].median, h1.bars[0].low, h1.bars[0].high, h1.bars[0].cpu) == (10, 9, 11, 50)
    assert h1.bars[1].median is None and h1.bars[1].cpu is None  # FAILED, not a zero bar
    assert (h1.bars[0].ok, h1.bars[0].trials) == (3, 3)
    bulk = got[2]
    assert bulk.bulk and bulk.rate_label == "MiB/s" and bulk.bars[0].cpu == 7
    assert not h1.bulk and h1.cpu_label == "server CPU ms / 1k req"
    assert server_names(got) == ["quicserve", "granian", "hypercorn"]
