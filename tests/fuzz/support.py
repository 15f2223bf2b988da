"""Shared pieces of the fuzz targets: the run mode (CI or long) and small helpers.

Rules: nothing here knows a protocol; each target file builds its own inputs.
"""

from __future__ import annotations

import itertools
import os
from typing import TypeVar

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context

#: Examples per test in long mode (``QUICSERVE_FUZZ_EXAMPLES``); 0 = CI mode.
LONG_EXAMPLES = int(os.environ.get("QUICSERVE_FUZZ_EXAMPLES", "0") or 0)

T = TypeVar("T")

_SUPPRESS = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]


def fuzz_settings(ci_examples: int) -> settings:
    """Settings for one fuzz test: ``ci_examples`` fixed examples in CI, or the long run."""
    if LONG_EXAMPLES:
        return settings(
            max_examples=LONG_EXAMPLES,
            derandomize=False,
            deadline=None,
            suppress_health_check=_SUPPRESS,
        )
    return settings(
        max_examples=ci_examples,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=_SUPPRESS,
    )


def stat(label: str) -> None:
    """Count ``label`` in ``--hypothesis-show-statistics`` (a no-op outside a fuzz run, so
    the regression tests can call the same harness)."""
    if currently_in_test_context():
        event(label)


@st.composite
def splits(draw: st.DrawFn, data: bytes, max_pieces: int = 12) -> list[bytes]:
    """``data`` cut at random points (every byte kept, in order)."""
    if len(data) < 2:
        return [data] if data else []
    cuts = draw(st.lists(st.integers(1, len(data) - 1), max_size=max_pieces - 1))
    bounds = [0, *sorted(set(cuts)), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def mostly(
    usual: st.SearchStrategy[T], odd: st.SearchStrategy[T], odds: int = 8
) -> st.SearchStrategy[T]:
    """``usual`` about ``odds`` times in ``odds + 1``, else ``odd``: inputs that are mostly
    valid reach the deeper states, and the odd part still hits every check."""
    # The odd branch hangs on a middle value: hypothesis favours 0 and the bounds, and
    # shrinks towards 0, so a minimized failure keeps an odd part only when it needs it.
    middle = (odds + 1) // 2
    return st.integers(0, odds).flatmap(lambda n: odd if n == middle else usual)


@st.composite
def mutated(draw: st.DrawFn, data: bytes, max_edits: int = 6) -> bytes:
    """``data`` with a few raw byte edits: flips, inserts, deletes, truncation."""
    buf = bytearray(data)
    for _ in range(draw(st.integers(0, max_edits))):
        kind = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        if not buf and kind != "insert":
            continue
        pos = draw(st.integers(0, max(0, len(buf) - 1)))
        if kind == "flip":
            buf[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set":
            buf[pos] = draw(st.sampled_from([0x00, 0x0A, 0x0D, 0x20, 0x3A, 0x7F, 0x80, 0xFF]))
        elif kind == "insert":
            buf[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete":
            del buf[pos : pos + draw(st.integers(1, 8))]
        else:
            del buf[pos:]
    return bytes(buf)
