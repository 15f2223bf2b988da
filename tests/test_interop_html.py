"""interop/html.py: the matrix page is self-contained, coloured per outcome and escaped."""

from __future__ import annotations

from interop.html import render_page

REPORT = {
    "started": "2026-12-06T12:00:00+00:00",
    "argv": ["--client", "firefox"],
    "python": "3.11.7",
    "seconds": 12.5,
    "backends": {
        "asyncio": {
            "cells": {
                "http3": {
                    "firefox": {
                        "status": "ok",
                        "reason": "",
                        "evidence": "saw <3>",
                        "seconds": 3.1,
                    },
                    "curl": {
                        "status": "fail",
                        "reason": "timed out & gone",
                        "evidence": "",
                        "seconds": 90,
                    },
                },
                "ws-h3": {
                    "firefox": {
                        "status": "na",
                        "reason": "no RFC 9220",
                        "evidence": "",
                        "seconds": 0,
                    },
                },
            }
        },
        "trio": {"cells": {"http3": {"firefox": {"status": "ok", "evidence": "e", "seconds": 1}}}},
    },
}


def test_page_colours_cells_and_escapes_evidence() -> None:
    page = render_page(REPORT)
    assert page.startswith("<!doctype html>") and page.rstrip().endswith("</html>")
    assert "quicserve interop matrix: FAIL (1 ✗)" in page
    assert '<td class="ok" title="saw &lt;3&gt; (3.1 s)">✓</td>' in page
    assert '<td class="fail" title="timed out &amp; gone (90 s)">✗</td>' in page
    assert '<td class="na" title="no RFC 9220 (0 s)">n/a</td>' in page
    assert page.count("<table>") == 2 and "backend: trio" in page
    assert "<td></td>" in page  # ws-h3 has no curl cell
    assert "saw <3>" not in page  # nothing from the report reaches the page unescaped
    # Self-contained: no outside resources.
    for needle in ("src=", "href=", "@import", "url("):
        assert needle not in page


def test_page_says_pass_when_nothing_failed() -> None:
    passing = {"backends": {"asyncio": {"cells": {"h1-get": {"curl": {"status": "ok"}}}}}}
    assert "quicserve interop matrix: PASS" in render_page(passing)
