"""The interop matrix as one self-contained HTML page, as the QUIC interop runner shows it.

:func:`render_page` takes the report ``python -m interop`` writes as JSON and returns a
page with no outside resources: one table per backend (cases down, clients across),
each cell coloured by its outcome, its evidence (or the reason for ✗ and n/a) and its
time shown when the pointer rests on it (``title``) and listed under the table, so the
page also reads without a pointer. Everything from the report is HTML-escaped.
"""

from __future__ import annotations

import html
from typing import Any

MARKS = {"ok": "✓", "fail": "✗", "na": "n/a"}

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #bbb; padding: 4px 10px; text-align: center; }
th.case { text-align: left; font-weight: normal; font-family: monospace; }
td.ok { background: #c8ecc8; }
td.fail { background: #f4b8b8; font-weight: bold; }
td.na { background: #e6e6e6; color: #777; }
td[title] { cursor: help; }
details { margin-bottom: 2em; }
li { font-family: monospace; font-size: 12px; }
"""


def _tooltip(cell: dict[str, Any]) -> str:
    said = cell.get("evidence") if cell.get("status") == "ok" else cell.get("reason")
    return f"{said or MARKS.get(cell.get('status', ''), '?')} ({cell.get('seconds', 0)} s)"


def _table(backend: str, cells: dict[str, dict[str, dict[str, Any]]]) -> str:
    clients: list[str] = []
    for row in cells.values():
        clients += [c for c in row if c not in clients]
    esc = html.escape
    head = "".join(f"<th>{esc(c)}</th>" for c in clients)
    rows, notes = [], []
    for case, row in cells.items():
        tds = []
        for client in clients:
            cell = row.get(client)
            if cell is None:
                tds.append("<td></td>")
                continue
            status = str(cell.get("status", "na"))
            status = status if status in MARKS else "na"
            tip = _tooltip(cell)
            tds.append(f'<td class="{status}" title="{esc(tip)}">{MARKS[status]}</td>')
            notes.append(f"<li>{MARKS[status]} {esc(case)} / {esc(client)}: {esc(tip)}</li>")
        rows.append(f'<tr><th class="case">{esc(case)}</th>{"".join(tds)}</tr>')
    return (
        f"<h2>backend: {esc(backend)}</h2>\n<table><tr><th></th>{head}</tr>\n"
        + "\n".join(rows)
        + "</table>\n<details><summary>evidence of every cell</summary><ul>\n"
        + "\n".join(notes)
        + "</ul></details>\n"
    )


def render_page(report: dict[str, Any]) -> str:
    """The page for one run's report (the JSON ``python -m interop`` writes)."""
    esc = html.escape
    backends = report.get("backends", {})
    failed = sum(
        cell.get("status") == "fail"
        for b in backends.values()
        for row in b.get("cells", {}).values()
        for cell in row.values()
    )
    verdict = "PASS" if failed == 0 else f"FAIL ({failed} ✗)"
    started = esc(str(report.get("started", "")))
    argv = esc(" ".join(report.get("argv") or []))
    tables = "".join(_table(name, b.get("cells", {})) for name, b in backends.items())
    return (
        '<!doctype html><html><head><meta charset="utf-8">'
        f"<title>quicserve interop {started}</title><style>{STYLE}</style></head><body>\n"
        f"<h1>quicserve interop matrix: {verdict}</h1>\n"
        f"<p>started {started}, {esc(str(report.get('seconds', '?')))} s, Python "
        f"{esc(str(report.get('python', '?')))}, <code>python -m interop {argv}</code>. "
        "✓: the client checked the evidence shown on hover; ✗: failed; n/a: with the "
        "reason.</p>\n"
        f"{tables}</body></html>\n"
    )
