"""bench/loaders.py: an h2load that does not exit after its stop is judged on its log.

h2load before nghttp2 1.69.0 keeps a client that finished its TLS handshake after the
``-D`` duration resubmitting requests forever. The loader kills such a run shortly after
"Stopped all clients" and reports what the request log holds. A stand-in script plays
h2load here (no nghttp2 needed): it prints what h2load prints, writes a log, and hangs.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from bench import loaders
from bench.loaders import LoadError, parse_h2load_log

_HANGING_H2LOAD = """
import sys, time
log = open(sys.argv[1], "w")
log.write("1700000000000000\\t200\\t1500\\n" * 9 + "1700000000000000\\t-1\\t900\\n")
log.close()
print("Application protocol: h2", flush=True)
print("Stopped all clients for thread #0", flush=True)
time.sleep(60)
"""


def test_a_run_that_hangs_after_its_stop_is_killed_and_read_from_its_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(loaders, "_H2LOAD_STOP_GRACE_S", 0.2)
    log = tmp_path / "requests.tsv"
    argv = ["env", "-u", "NOTHING", sys.executable, "-c", _HANGING_H2LOAD, str(log)]
    started = time.monotonic()
    out, hung = loaders._run_h2load(argv, duration_s=1)
    assert hung
    assert time.monotonic() - started < 10
    result = parse_h2load_log(out, log, duration_s=2)
    assert (result.requests, result.errors, result.app_protocol) == (9, 1, "h2")
    assert result.rps == 4.5
    assert result.p99_ms == 1.5
    assert "killed" in result.p99_source


def test_a_run_that_exits_is_not_killed(tmp_path: Path) -> None:
    argv = ["env", "-u", "NOTHING", sys.executable, "-c", "print('Stopped all clients')"]
    out, hung = loaders._run_h2load(argv, duration_s=1)
    assert not hung
    assert out.startswith("Stopped all clients")


def test_an_empty_log_is_a_failure(tmp_path: Path) -> None:
    with pytest.raises(LoadError, match="completed no request"):
        parse_h2load_log("Application protocol: h2\n", tmp_path / "missing.tsv", 2)
