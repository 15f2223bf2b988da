"""Load generators: run one external client for a fixed time and parse what it measured.

Job: turn "load this URL with C connections for D seconds" into a `LoadResult` (requests, req/s,
p99, mean latency, error counts), one `Loader` per protocol. ``h1`` is wrk (HTTP/1.1
plaintext), ``h1tls`` wrk against ``https://`` (HTTP/1.1 over TLS), ``h2`` is h2load (HTTP/2
over TLS, ALPN ``h2``), ``h3`` and ``h3bulk`` are ``gtlsclient`` (ngtcp2's example HTTP/3
client, Debian ngtcp2-client): Debian's h2load is built without ngtcp2, so
``--alpn-list=h3`` cannot be used. A new protocol is a `Loader` plus a `ProtocolSpec` in
`PROTOCOLS`.

Rules:

* The load generator is pinned with ``taskset -c <cpu>`` to a CPU other than the server's.
* Only the tool's own numbers are reported: req/s is what the tool printed, p99 is wrk's
  ``--latency`` 99 % line, or, for h2load, computed here from its per-request ``--log-file``
  (nearest-rank p99 over every request of the measured trial). The log is written during the
  measured trial itself; its cost lands on the loader's CPU, not the server's.
* A run that cannot be parsed, or that completed no request, raises `LoadError` with the
  start of the tool's output, so the harness can report it and go on.
* gtlsclient exits 0 even when its handshake times out or a response never completes, so its
  exit code proves nothing: every HTTP/3 response it is asked for is saved with
  ``--download`` to a tmpfs directory and checked (exact body for ``/``, exact size for
  ``/bytes/N``); a run with any missing or wrong response raises `LoadError`. gtlsclient
  reports no latencies, so h3 has no p99 (reported as n/a).
* Traffic goes to loopback only; every run is bounded by ``-d``/``-D`` plus a hard timeout.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

from bench.app import HELLO_BODY

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
    #: h3: count requests that fail (in ``errors``) and go on, instead of raising.
    count_failures: bool = False


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
    body_bytes: int | None = None  # verified response body bytes (bulk loaders only)
    load_busy_pct: float | None = None  # loader CPU / its window, % of one core (ws only)


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
    """HTTP/1.1 load with wrk (plaintext or, for an https URL, TLS): one thread, C keep-alive
    connections."""

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
        """Run ``h2load -c<C> -m10 -D <D> -t1 --log-file F`` and parse its summary.

        A warm-up (no ``log_path``) logs to a scratch file: the request log is what
        counts when h2load does not exit after its stop (see ``_run_h2load``).
        """
        log_path = target.log_path
        scratch: Path | None = None
        if log_path is None:
            fd, name = tempfile.mkstemp(prefix="h2load-", suffix=".tsv")
            os.close(fd)
            log_path = scratch = Path(name)
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
            "--log-file",
            str(log_path),
            target.url,
        ]
        try:
            out, hung = _run_h2load(argv, target.duration_s)
            if hung:
                return parse_h2load_log(out, log_path, target.duration_s)
            return parse_h2load(out, log_path)
        finally:
            if scratch is not None:
                scratch.unlink(missing_ok=True)


#: h2load prints this line when its -D duration is over; a healthy run exits within
#: milliseconds after it (each client sends GOAWAY and closes).
_H2LOAD_STOPPED = "Stopped all clients"
#: How long after that line h2load is given to exit before it is killed.
_H2LOAD_STOP_GRACE_S = 2.0


def _run_h2load(argv: list[str], duration_s: int) -> tuple[str, bool]:
    """Run h2load; return its output and whether it had to be killed after its stop.

    h2load before nghttp2 1.69.0 ("h2load: Fix bug that h2load does not stop early with
    -D option") never stops a client whose TLS handshake ended after the duration was
    over: ``stop_all_clients`` only terminates sessions that exist, and in timing mode a
    client's ``req_left`` stays 1, so such a client resubmits a request each time one
    completes, forever, against any server that keeps answering. Those late requests are
    not measured (they are outside the main duration and not in ``--log-file``), so a run
    that printed "Stopped all clients" and is still going after ``_H2LOAD_STOP_GRACE_S``
    is killed and judged on its request log.
    """
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
    except OSError as exc:
        raise LoadError(f"cannot run {' '.join(argv)}: {exc}") from exc
    lines: list[str] = []
    stopped_at: list[float] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if line.startswith(_H2LOAD_STOPPED) and not stopped_at:
                stopped_at.append(time.monotonic())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.monotonic() + duration_s + _TOOL_TIMEOUT_SLACK_S
    hung = timed_out = False
    while proc.poll() is None:
        now = time.monotonic()
        if stopped_at and now - stopped_at[0] > _H2LOAD_STOP_GRACE_S:
            hung = True
        elif now > deadline:
            timed_out = True
        if hung or timed_out:
            proc.kill()
            break
        time.sleep(0.05)
    proc.wait()
    reader.join(timeout=5)
    out = "".join(lines)
    if timed_out:
        raise LoadError(
            f"{argv[3]} timed out after {duration_s + _TOOL_TIMEOUT_SLACK_S:.0f} s\n{_head(out)}"
        )
    if not hung and proc.returncode != 0:
        raise LoadError(f"{argv[3]} exited {proc.returncode}\n{_head(out)}")
    return out, hung


def parse_h2load_log(out: str, log_path: Path, duration_s: int) -> LoadResult:
    """Judge an h2load run that was killed after its stop (see ``_run_h2load``) on its
    ``--log-file``: one line per request completed in the measured duration (start time,
    status or -1, latency in us). req/s = successful requests / the ``-D`` duration."""
    proto = re.search(r"^Application protocol: (\S+)", out, re.MULTILINE)
    if proto is None:
        raise LoadError(f"h2load negotiated no application protocol:\n{_head(out)}")
    latencies_ms: list[float] = []
    succeeded = failed = bad_status = 0
    if log_path.exists():
        with log_path.open("r", encoding="ascii", errors="replace") as log:
            for line in log:
                cols = line.split("\t")
                if len(cols) < 3 or not cols[2].strip().isdigit():
                    continue
                if not cols[1].isdigit():
                    failed += 1
                    continue
                succeeded += 1
                if int(cols[1]) >= 400:
                    bad_status += 1
                latencies_ms.append(int(cols[2]) / 1000.0)
    if succeeded == 0:
        raise LoadError(f"h2load completed no request (killed after its stop):\n{_head(out)}")
    return LoadResult(
        requests=succeeded,
        rps=succeeded / duration_s,
        p99_ms=percentile_nearest_rank(latencies_ms, 99.0),
        p99_source=(
            f"h2load --log-file ({len(latencies_ms)} requests, nearest rank); h2load did "
            f"not exit after its stop (nghttp2 < 1.69 -D bug) and was killed, so req/s = "
            f"logged requests / {duration_s} s"
        ),
        mean_ms=sum(latencies_ms) / len(latencies_ms),
        bad_status=bad_status,
        errors=failed,
        app_protocol=proto.group(1),
    )


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


# -- HTTP/3: gtlsclient ------------------------------------------------------------------

_GTLSCLIENT = "gtlsclient"
# QUIC idle and handshake timeouts of gtlsclient (its idle default; its handshake default is
# 10 s): a server silent this long, or still handshaking, is given up on (gtlsclient then exits
# 0 anyway; the download check catches it). Shorter would turn a handshake that is merely slow
# under load (seen with Hypercorn) into a failure instead of the slowness it is.
_H3_IDLE_TIMEOUT_S = 30
# Batches of requests per connection: the first is small, later ones are sized from the rate
# each client saw so that they last about this long (or end at the deadline).
_H3_FIRST_BATCH = 200
_H3_MIN_BATCH = 50
_H3_MAX_BATCH = 20_000  # keeps gtlsclient's argv (one URL per request) far below ARG_MAX
_H3_BATCH_TARGET_S = 2.0
MIB = 1024 * 1024


def scratch_dir(prefix: str) -> str:
    """A new directory for downloads, on tmpfs (/dev/shm) when there is one."""
    shm = Path("/dev/shm")
    base = str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None
    return tempfile.mkdtemp(prefix=prefix, dir=base)


def _pin_thread(cpu: str) -> None:
    """Pin the calling thread (the checks it runs, not only its children) to the load CPUs."""
    cpus: set[int] = set()
    for part in cpu.split(","):
        lo, _, hi = part.strip().partition("-")
        cpus.update(range(int(lo), int(hi or lo) + 1))
    try:
        os.sched_setaffinity(0, cpus)  # 0: this thread only
    except OSError:
        pass


def gtlsclient_argv(cpu: str, host: str, port: int, urls: list[str], download: str) -> list[str]:
    """One pinned gtlsclient run: one QUIC connection, one request per URL (up to 100 at
    once, gtlsclient's stream limit), every body saved under ``download``."""
    return [
        "taskset",
        "-c",
        cpu,
        _GTLSCLIENT,
        "-q",
        f"--timeout={_H3_IDLE_TIMEOUT_S}s",
        f"--handshake-timeout={_H3_IDLE_TIMEOUT_S}s",
        "--exit-on-all-streams-close",
        f"--download={download}",
        host,
        str(port),
        *urls,
    ]


def _run_gtlsclient(argv: list[str], timeout_s: float) -> tuple[str | None, str]:
    """Run gtlsclient; (None if it exited 0, which does not prove success, else why not;
    the first lines of what it printed, which with ``-q`` is only errors)."""
    try:
        proc = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout if isinstance(exc.stdout, str) else ""
        return f"gtlsclient still running after {timeout_s:.0f} s (killed)", _head(out, 3)
    except OSError as exc:
        return f"cannot run gtlsclient: {exc}", ""
    said = " | ".join(_head(proc.stdout, 3).splitlines())
    if proc.returncode != 0:
        return f"gtlsclient exited {proc.returncode}", said
    return None, said


def _hello_urls(url: str, first: int, count: int) -> list[str]:
    """``count`` distinct URLs for ``/`` (a query string tells their downloads apart)."""
    base = url.split("?", 1)[0]
    return [f"{base}?i={i}" for i in range(first, first + count)]


def check_hello_downloads(directory: str, expected: int) -> tuple[int, str | None]:
    """Count the saved ``/?i=N`` bodies that are exactly ``HELLO_BODY``; remove them all."""
    good = 0
    bad: list[str] = []
    with os.scandir(directory) as entries:
        for entry in entries:
            try:
                with open(entry.path, "rb") as f:
                    body = f.read(len(HELLO_BODY) + 1)
                os.unlink(entry.path)
            except OSError:
                continue
            if body == HELLO_BODY:
                good += 1
            elif len(bad) < 3:
                bad.append(f"{entry.name}: {body[:40]!r}")
    if good == expected:
        return good, None
    why = f"{expected - good} of {expected} responses missing or wrong"
    return good, why + (f" (e.g. {'; '.join(bad)})" if bad else " (never arrived)")


def probe_h3(url: str, cpu: str, timeout_s: float) -> str | None:
    """One HTTP/3 GET of ``url`` (the app's ``/``); None if the exact body came back.

    Retried until ``timeout_s``: a server may open its UDP socket just after its TCP one.
    """
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 443
    deadline = time.monotonic() + timeout_s
    directory = scratch_dir("quicserve-bench-probe-")
    why: str | None = "not tried"
    try:
        while time.monotonic() < deadline:
            argv = gtlsclient_argv(cpu, host, port, _hello_urls(url, 0, 1), directory)
            left = max(deadline - time.monotonic(), 1.0)
            why, said = _run_gtlsclient(argv, left)
            if why is None:
                _, why = check_hello_downloads(directory, 1)
                if why is None:
                    return None
            why += f" (gtlsclient said: {said})" if said else ""
            time.sleep(0.2)
        return f"no HTTP/3 answer to GET / within {timeout_s:.0f} s: {why}"
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@dataclass(frozen=True, slots=True)
class GtlsclientLoader:
    """HTTP/3 small-request load: C gtlsclient processes at a time, one QUIC connection each.

    Each of the C clients runs gtlsclient again and again until the duration is over, every
    run one connection with N requests for ``/`` (up to 100 streams in flight). N starts at
    200 and is then sized from that client's own rate so a run lasts about 2 s and the last one
    ends near the deadline. req/s = verified responses of all runs / wall time from the first
    start to the last exit. The ``?i=N`` query string only names the saved files; the app
    answers ``/`` the same. A new connection per batch adds one handshake per ~1000+ requests.
    """

    tool: str = _GTLSCLIENT

    def run(self, target: LoadTarget) -> LoadResult:
        """Run ``target.connections`` client loops for ``target.duration_s``; verify every
        response (exact body); raise `LoadError` if any is missing."""
        parts = urlsplit(target.url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 443
        clients = max(1, target.connections)
        lock = threading.Lock()
        done = [0]
        failed = [0]
        failures: list[str] = []
        start = time.monotonic()
        deadline = start + target.duration_s

        def client(index: int) -> None:
            _pin_thread(target.cpu)
            directory = scratch_dir(f"quicserve-bench-h3-{index}-")
            batch, serial = _H3_FIRST_BATCH, 0
            try:
                while not failures:
                    now = time.monotonic()
                    if now >= deadline:
                        return
                    urls = _hello_urls(target.url, serial, batch)
                    serial += batch
                    argv = gtlsclient_argv(target.cpu, host, port, urls, directory)
                    t0 = time.monotonic()
                    why, said = _run_gtlsclient(argv, target.duration_s + _TOOL_TIMEOUT_SLACK_S)
                    elapsed = time.monotonic() - t0
                    good, bad = check_hello_downloads(directory, batch)
                    with lock:
                        done[0] += good
                        if (why is not None or bad is not None) and target.count_failures:
                            failed[0] += batch - good
                            batch = _H3_MIN_BATCH
                            continue
                        if why is not None or bad is not None:
                            failures.append(
                                f"client {index}, a connection of {batch} requests, "
                                f"{elapsed:.1f} s: {why or bad}"
                                + (f" (gtlsclient said: {said})" if said else "")
                            )
                            return
                    rate = batch / max(elapsed, 1e-3)
                    left = deadline - time.monotonic()
                    want = rate * min(_H3_BATCH_TARGET_S, max(left, 0.0))
                    batch = int(min(_H3_MAX_BATCH, max(_H3_MIN_BATCH, want)))
            finally:
                shutil.rmtree(directory, ignore_errors=True)

        threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.monotonic() - start
        if failures:
            raise LoadError(
                f"HTTP/3 load failed after {done[0]} good responses: " + "; ".join(failures[:3])
            )
        if done[0] == 0:
            raise LoadError("gtlsclient completed no request")
        return LoadResult(
            requests=done[0],
            rps=done[0] / wall,
            p99_ms=None,
            p99_source="n/a: gtlsclient reports no per-request latency",
            mean_ms=None,
            bad_status=0,
            errors=failed[0],
            app_protocol="h3",
        )


@dataclass(frozen=True, slots=True)
class GtlsclientBulkLoader:
    """HTTP/3 download throughput: one gtlsclient at a time fetching ``/bytes/N``.

    Fetches run back to back (a new connection each) until the duration is over; each body is
    saved to tmpfs, its size checked against N, and deleted. MiB/s = verified bytes / wall
    time from the first start to the last exit (the last fetch may run past the deadline).
    """

    size_bytes: int = 50 * MIB
    tool: str = _GTLSCLIENT

    def run(self, target: LoadTarget) -> LoadResult:
        """Fetch ``/bytes/N`` repeatedly for ``target.duration_s``; raise `LoadError` on an
        incomplete body (gtlsclient exits 0 even then)."""
        parts = urlsplit(target.url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 443
        url = f"{parts.scheme}://{parts.netloc}/bytes/{self.size_bytes}"
        directory = scratch_dir("quicserve-bench-h3bulk-")
        saved = Path(directory) / str(self.size_bytes)  # gtlsclient names it after the path
        fetches = 0
        start = time.monotonic()
        deadline = start + target.duration_s
        try:
            while fetches == 0 or time.monotonic() < deadline:
                argv = gtlsclient_argv(target.cpu, host, port, [url], directory)
                t0 = time.monotonic()
                why, said = _run_gtlsclient(argv, target.duration_s + _TOOL_TIMEOUT_SLACK_S)
                try:
                    got = saved.stat().st_size
                    saved.unlink()
                except FileNotFoundError:
                    got = 0
                if why is None and got != self.size_bytes:
                    why = f"body stopped at {got} of {self.size_bytes} bytes"
                if why is not None:
                    said = f" (gtlsclient said: {said})" if said else ""
                    raise LoadError(
                        f"HTTP/3 bulk fetch {fetches + 1} failed after "
                        f"{time.monotonic() - t0:.1f} s: {why}{said}"
                    )
                fetches += 1
        finally:
            shutil.rmtree(directory, ignore_errors=True)
        wall = time.monotonic() - start
        total = fetches * self.size_bytes
        return LoadResult(
            requests=fetches,
            rps=fetches / wall,
            p99_ms=None,
            p99_source="n/a: gtlsclient reports no per-request latency",
            mean_ms=None,
            bad_status=0,
            errors=0,
            app_protocol="h3",
            body_bytes=total,
        )


# -- WebSocket echo: bench/wsload.py ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class WsEchoLoader:
    """WebSocket echo messages/s: ``processes`` copies of ``bench/wsload.py``, pinned to the
    load CPU, sharing ``target.connections`` WebSockets, ``window`` messages in flight on each.

    Each process prints the 64-byte messages echoed (every byte checked) inside its own
    window of ``duration_s`` and its own CPU seconds in that window; msg/s is the sum of the
    per-process rates, and ``load_busy_pct`` the sum of their CPU over the window, in % of one
    core: well under 100 % means the client had CPU to spare and the server set the pace.
    """

    transport: str = "h1"  # "h1", "h2" (RFC 8441) or "h3" (RFC 9220)
    window: int = 32
    processes: int = 1
    tool: str = "taskset"  # the client is Python (bench/wsload.py); taskset pins it

    def run(self, target: LoadTarget) -> LoadResult:
        """Run the client processes to completion; raise `LoadError` on any failure."""
        parts = urlsplit(target.url)
        procs = max(1, self.processes)
        whole, extra = divmod(target.connections, procs)
        share = [whole + (i < extra) for i in range(procs)]
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
        running = []
        for conns in share:
            argv = [
                "taskset",
                "-c",
                target.cpu,
                sys.executable,
                "-m",
                "bench.wsload",
                "--transport",
                self.transport,
                "--host",
                parts.hostname or "127.0.0.1",
                "--port",
                str(parts.port),
                "--path",
                parts.path or "/ws",
                "--connections",
                str(max(1, conns)),
                "--window",
                str(self.window),
                "--duration",
                str(target.duration_s),
            ]
            running.append(
                subprocess.Popen(
                    argv,
                    cwd=root,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                )
            )
        outs = []
        for proc in running:
            try:
                out, _ = proc.communicate(timeout=target.duration_s + _TOOL_TIMEOUT_SLACK_S)
            except subprocess.TimeoutExpired:
                proc.kill()  # our own child, by PID
                out, _ = proc.communicate()
                raise LoadError(f"bench.wsload timed out\n{_head(out or '')}") from None
            if proc.returncode != 0:
                raise LoadError(f"bench.wsload exited {proc.returncode}\n{_head(out, 20)}")
            outs.append(json.loads(out.strip().splitlines()[-1]))
        messages = sum(int(o["messages"]) for o in outs)
        if messages == 0:
            raise LoadError("no WebSocket message was echoed")
        return LoadResult(
            requests=messages,
            rps=sum(o["messages"] / o["seconds"] for o in outs),
            p99_ms=None,
            p99_source="n/a: the ws client counts echoes, it does not time them",
            mean_ms=None,
            bad_status=0,
            errors=0,
            app_protocol=f"ws-{self.transport}",
            load_busy_pct=100.0 * sum(o["cpu_s"] / o["seconds"] for o in outs),
        )


@dataclass(frozen=True, slots=True)
class ProtocolSpec:
    """One benchmarked protocol: how it is served and which loader drives it."""

    name: str  # CLI token and report label: "h1", "h2", "h3", "h3bulk"
    description: str
    tls: bool  # the server must be started with the throwaway certificate
    scheme: str  # URL scheme the loader is given
    loader: Loader
    expect_app_protocol: str  # what the loader must report having spoken
    http: str = ""  # "HTTP/1.1", "HTTP/2", "HTTP/3": what a server must speak to be run
    quic: bool = False  # served over QUIC (UDP): the server needs --quic-bind
    bulk: bool = False  # measures bytes (MiB/s, CPU per MiB), not requests
    ws: bool = False  # WebSocket echo: "req/s" are echoed messages/s
    path: str = "/"  # what the loader requests

    def url(self, host: str, port: int, path: str | None = None) -> str:
        """The URL that the loader requests."""
        return f"{self.scheme}://{host}:{port}{self.path if path is None else path}"

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
        http="HTTP/1.1",
    ),
    # wrk offers no ALPN, so every server answers HTTP/1.1 on its TLS port; it keeps its
    # connections alive (HTTP/1.1 default; the harness checks each server does too), so
    # the handshakes happen once per connection at the start and the cost is per request.
    "h1tls": ProtocolSpec(
        name="h1tls",
        description="HTTP/1.1 over TLS (no ALPN offered: HTTP/1.1 by default), wrk, "
        "keep-alive connections",
        tls=True,
        scheme="https",
        loader=WrkLoader(),
        expect_app_protocol="http/1.1",
        http="HTTP/1.1",
    ),
    "h2": ProtocolSpec(
        name="h2",
        description="HTTP/2 over TLS (ALPN h2), h2load -m10",
        tls=True,
        scheme="https",
        loader=H2LoadLoader(),
        expect_app_protocol="h2",
        http="HTTP/2",
    ),
    "h3": ProtocolSpec(
        name="h3",
        description="HTTP/3 (QUIC), gtlsclient: --h3-clients processes at a time, one "
        "connection each, up to 100 streams, ~2 s batches of GET /, every body checked",
        tls=True,
        scheme="https",
        loader=GtlsclientLoader(),
        expect_app_protocol="h3",
        http="HTTP/3",
        quic=True,
    ),
    "h3bulk": ProtocolSpec(
        name="h3bulk",
        description="HTTP/3 (QUIC) download, one gtlsclient at a time fetching "
        "/bytes/<--bulk-mib MiB> back to back, every body size checked",
        tls=True,
        scheme="https",
        loader=GtlsclientBulkLoader(),
        expect_app_protocol="h3",
        http="HTTP/3",
        quic=True,
        bulk=True,
    ),
    "ws": ProtocolSpec(
        name="ws",
        description="WebSocket over HTTP/1.1 plaintext (RFC 6455 Upgrade), bench/wsload.py: "
        "64-byte binary echoes, --ws-window in flight per connection",
        tls=False,
        scheme="ws",
        loader=WsEchoLoader("h1"),
        expect_app_protocol="ws-h1",
        http="HTTP/1.1",
        ws=True,
        path="/ws",
    ),
    "ws-h2": ProtocolSpec(
        name="ws-h2",
        description="WebSocket over HTTP/2 (RFC 8441 extended CONNECT, TLS), bench/wsload.py "
        "on the h2 package: one WebSocket per connection",
        tls=True,
        scheme="https",
        loader=WsEchoLoader("h2"),
        expect_app_protocol="ws-h2",
        http="HTTP/2",
        ws=True,
        path="/ws",
    ),
    "ws-h3": ProtocolSpec(
        name="ws-h3",
        description="WebSocket over HTTP/3 (RFC 9220 extended CONNECT), bench/wsload.py on "
        "aioquic: one WebSocket per QUIC connection",
        tls=True,
        scheme="https",
        loader=WsEchoLoader("h3"),
        expect_app_protocol="ws-h3",
        http="HTTP/3",
        quic=True,
        ws=True,
        path="/ws",
    ),
}
