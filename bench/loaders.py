"""Load generators: run one external client for a fixed time and parse what it measured.

Job: turn "load this URL with C connections for D seconds" into a `LoadResult` (requests, req/s,
p99, mean latency, error counts), one `Loader` per protocol. ``h1`` is wrk (HTTP/1.1
plaintext), ``h2`` is h2load (HTTP/2 over TLS, ALPN ``h2``). To add ``h3`` later, write a
`Loader` (h2load built with ngtcp2 takes ``--alpn-list=h3``; or another client), and register a
`ProtocolSpec` in `PROTOCOLS`; nothing else in the harness knows about protocols.

Rules:

* The load generator is pinned with ``taskset -c <cpu>`` to a CPU other than the server's.
* Only the tool's own numbers are reported: req/s is what the tool printed, p99 is wrk's
  ``--latency`` 99 % line, or, for h2load, computed here from its per-request ``--log-file``
  (nearest-rank p99 over every request of the measured trial). The log is written during the
  measured trial itself; its cost lands on the loader's CPU, not the server's.
* A run that cannot be parsed, or that completed no request, raises `LoadError` with the
  start of the tool's output, so the harness can report it and go on.
* Traffic goes to loopback only; every run is bounded by ``-d``/``-D`` plus a hard timeout.
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

# Slack on top of the trial duration before a hung load generator is killed.
_TOOL_TIMEOUT_SLACK_S = 60.0


class LoadError(Exception):
    """The load generator failed, or its output did not contain the expected numbers."""


@dataclass(frozen=True, slots=True)
class LoadTarget:
    """One load-generation job."""

    url: str
    duration_s: int
    connections: int
    cpu: str  # taskset CPU list for the load generator, e.g. "1"
    log_path: Path | None = None  # where a per-request log may be written (p99)


@dataclass(frozen=True, slots=True)
class LoadResult:
    """What one load-generator run measured."""

    requests: int  # completed requests that the req/s figure counts
    rps: float
    p99_ms: float | None
    p99_source: str  # how p99 was obtained, for the report's footnotes
    mean_ms: float | None
    bad_status: int  # responses with status >= 400
    errors: int  # socket errors, resets, timeouts
    app_protocol: str  # what was actually spoken, e.g. "http/1.1" or "h2"


class Loader(Protocol):
    """A load generator for one protocol."""

    @property
    def tool(self) -> str:
        """Executable name (for availability checks and the report)."""
        ...

    def run(self, target: LoadTarget) -> LoadResult:
        """Run one timed load against ``target.url``; raise `LoadError` on failure."""
        ...


_UNIT_TO_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def _to_ms(value: str, unit: str) -> float:
    """Convert a tool's ``<number><unit>`` (us, ms, s, m, h) to milliseconds."""
    return float(value) * _UNIT_TO_MS[unit]


def _head(text: str, lines: int = 12) -> str:
    """The first lines of a tool's output, for error messages."""
    return "\n".join(text.strip().splitlines()[:lines])


def _run_tool(argv: list[str], timeout_s: float) -> str:
    """Run a pinned tool to completion and return stdout+stderr, raising `LoadError`."""
    try:
        proc = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout if isinstance(exc.stdout, str) else ""
        raise LoadError(f"{argv[3]} timed out after {timeout_s:.0f} s\n{_head(out)}") from exc
    except OSError as exc:
        raise LoadError(f"cannot run {' '.join(argv)}: {exc}") from exc
    if proc.returncode != 0:
        raise LoadError(f"{argv[3]} exited {proc.returncode}\n{_head(proc.stdout)}")
    return proc.stdout


def _search(pattern: str, text: str, what: str) -> re.Match[str]:
    """`re.search` with multiline flags that raises `LoadError` naming what was missing."""
    match = re.search(pattern, text, re.MULTILINE)
    if match is None:
        raise LoadError(f"no {what} in output:\n{_head(text)}")
    return match


def percentile_nearest_rank(values: list[float], pct: float) -> float:
    """Nearest-rank percentile (the smallest value with at least pct % of values at or below)."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100.0 * len(ordered)))
    return ordered[rank - 1]


@dataclass(frozen=True, slots=True)
class WrkLoader:
    """HTTP/1.1 plaintext load with wrk: one thread, C keep-alive connections."""

    tool: str = "wrk"

    def run(self, target: LoadTarget) -> LoadResult:
        """Run ``wrk -t1 -c<C> -d<D>s --latency`` and parse its summary."""
        argv = [
            "taskset",
            "-c",
            target.cpu,
            self.tool,
            "-t1",
            f"-c{target.connections}",
            f"-d{target.duration_s}s",
            "--latency",
            target.url,
        ]
        out = _run_tool(argv, target.duration_s + _TOOL_TIMEOUT_SLACK_S)
        return parse_wrk(out)


def parse_wrk(out: str) -> LoadResult:
    """Parse wrk 4.x output (``--latency`` mode)."""
    rps = float(_search(r"^Requests/sec:\s+([\d.]+)", out, "Requests/sec").group(1))
    requests = int(_search(r"^\s*(\d+) requests in ", out, "request count").group(1))
    p99 = _search(r"^\s*99%\s+([\d.]+)(us|ms|s|m|h)\s*$", out, "99% latency line")
    mean = re.search(r"^\s*Latency\s+([\d.]+)(us|ms|s|m|h)\s", out, re.MULTILINE)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if requests == 0:
        raise LoadError(f"wrk completed no request:\n{_head(out)}")
    return LoadResult(
        requests=requests,
        rps=rps,
        p99_ms=_to_ms(p99.group(1), p99.group(2)),
        p99_source="wrk --latency",
        mean_ms=_to_ms(mean.group(1), mean.group(2)) if mean else None,
        bad_status=int(non2xx.group(1)) if non2xx else 0,
        errors=sum(int(n) for n in sock.groups()) if sock else 0,
        app_protocol="http/1.1",
    )


@dataclass(frozen=True, slots=True)
class H2LoadLoader:
    """HTTP/2 over TLS load with h2load: one thread, C connections, 10 streams each."""

    tool: str = "h2load"
    streams_per_connection: int = 10

    def run(self, target: LoadTarget) -> LoadResult:
        """Run ``h2load -c<C> -m10 -D <D> -t1 [--log-file]`` and parse its summary."""
        argv = [
            "taskset",
            "-c",
            target.cpu,
            self.tool,
            f"-c{target.connections}",
            f"-m{self.streams_per_connection}",
            "-D",
            str(target.duration_s),
            "-t1",
        ]
        if target.log_path is not None:
            argv += ["--log-file", str(target.log_path)]
        argv.append(target.url)
        out = _run_tool(argv, target.duration_s + _TOOL_TIMEOUT_SLACK_S)
        return parse_h2load(out, target.log_path)


def parse_h2load(out: str, log_path: Path | None) -> LoadResult:
    """Parse h2load 1.x output, and its per-request log when one was written."""
    proto = re.search(r"^Application protocol: (\S+)", out, re.MULTILINE)
    if proto is None or "No protocol negotiated" in out:
        raise LoadError(f"h2load negotiated no application protocol:\n{_head(out)}")
    rps = float(_search(r"^finished in [\d.]+\w+, ([\d.]+) req/s", out, "req/s").group(1))
    req = _search(
        r"^requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
        r"(\d+) failed, (\d+) errored, (\d+) timeout",
        out,
        "requests line",
    )
    succeeded, errored, timed_out = int(req.group(4)), int(req.group(6)), int(req.group(7))
    codes = re.search(r"^status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out, re.M)
    mean = re.search(
        r"^time for request:\s+\S+?\s+\S+?\s+([\d.]+)(us|ms|s|m|h)\s", out, re.MULTILINE
    )
    if succeeded == 0:
        raise LoadError(f"h2load completed no request:\n{_head(out, 40)}")

    p99_ms: float | None = None
    p99_source = "n/a (h2load reports min/max/mean only)"
    if log_path is not None and log_path.exists():
        latencies_ms: list[float] = []
        with log_path.open("r", encoding="ascii", errors="replace") as log:
            for line in log:
                cols = line.split("\t")
                if len(cols) >= 3 and cols[2].strip().isdigit():
                    latencies_ms.append(int(cols[2]) / 1000.0)
        if latencies_ms:
            p99_ms = percentile_nearest_rank(latencies_ms, 99.0)
            p99_source = f"h2load --log-file ({len(latencies_ms)} requests, nearest rank)"
    return LoadResult(
        requests=succeeded,
        rps=rps,
        p99_ms=p99_ms,
        p99_source=p99_source,
        mean_ms=_to_ms(mean.group(1), mean.group(2)) if mean else None,
        bad_status=(int(codes.group(3)) + int(codes.group(4))) if codes else 0,
        errors=errored + timed_out,
        app_protocol=proto.group(1),
    )


@dataclass(frozen=True, slots=True)
class ProtocolSpec:
    """One benchmarked protocol: how it is served and which loader drives it."""

    name: str  # CLI token and report label: "h1", "h2", later "h3"
    description: str
    tls: bool  # the server must be started with the throwaway certificate
    scheme: str  # URL scheme the loader is given
    loader: Loader
    expect_app_protocol: str  # what the loader must report having spoken

    def url(self, host: str, port: int, path: str = "/") -> str:
        """The URL that the loader requests."""
        return f"{self.scheme}://{host}:{port}{path}"

    def available(self) -> bool:
        """Whether the loader's executable is on PATH."""
        return shutil.which(self.loader.tool) is not None


PROTOCOLS: dict[str, ProtocolSpec] = {
    "h1": ProtocolSpec(
        name="h1",
        description="HTTP/1.1 plaintext, wrk",
        tls=False,
        scheme="http",
        loader=WrkLoader(),
        expect_app_protocol="http/1.1",
    ),
    "h2": ProtocolSpec(
        name="h2",
        description="HTTP/2 over TLS (ALPN h2), h2load -m10",
        tls=True,
        scheme="https",
        loader=H2LoadLoader(),
        expect_app_protocol="h2",
    ),
}
