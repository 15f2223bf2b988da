"""HTTP/3 connection churn: does quicserve's memory stay flat over many QUIC connections?

Job: start quicserve with QUIC (``--quic-bind``) once per backend, open ``--connections`` HTTP/3
connections one request each (``--parallel`` gtlsclient loops, each strictly sequential), and
sample the server's RSS (``VmRSS`` of /proc/PID/status) every ``--sample-every`` connections.
Then wait ``--settle`` s (past the 30 s QUIC idle timeout), sample again, check that the server
still answers, and stop it. With ``--log-level info`` quicserve logs "Shutting down: waiting
for N connection(s)" when its connection registry is not empty at SIGTERM, so the absence of
that line (with "Server stopped" present) shows the registry was empty at the end. Prints a
markdown report.

Rules:

* Same conventions as the side-by-side harness (bench/run.py): server pinned to
  ``--server-cpu``, clients to ``--load-cpu``, throwaway certificate in a temporary directory,
  the server started with this interpreter from the repository root and stopped by PID only.
* Every connection is checked: its one response is saved with ``--download`` (tmpfs) and must
  be exactly ``Hello, world!`` (gtlsclient exits 0 even when the handshake times out). Failed
  connections are counted and reported, never counted as done.
* RSS includes everything the server keeps by design: notably up to ``--quic-session-tickets``
  (default 10000) TLS session tickets, one issued per connection, so RSS may grow until that
  many connections were made even without a leak. ``--server-arg=--quic-session-tickets=1``
  (any quicserve flag, repeatable) tells such parts apart.

Run from the repository root: ``python bench/h3_memory.py --connections 2000`` for a quick look,
``python bench/h3_memory.py`` for the full 10,000 (about 4-5 minutes per backend here).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):  # run as `python bench/h3_memory.py`: make `bench` importable
    sys.path.insert(0, str(REPO_ROOT))

from bench.loaders import (  # noqa: E402
    _pin_thread,
    _run_gtlsclient,
    check_hello_downloads,
    gtlsclient_argv,
    probe_h3,
    scratch_dir,
)
from bench.run import _git_commit  # noqa: E402
from bench.servers import APP, ServerProcess, free_port  # noqa: E402
from bench.tls import make_self_signed  # noqa: E402

HOST = "127.0.0.1"
_OPEN_AT_SHUTDOWN = re.compile(r"Shutting down: waiting for (\d+) connection")


def rss_kib(pid: int) -> int | None:
    """VmRSS of a process in KiB, or None if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


@dataclass(slots=True)
class Run:
    """What one backend's churn run measured."""

    backend: str
    connections: int
    rss_start: int | None = None  # KiB, after one probe connection
    samples: list[tuple[int, int | None, float]] = field(default_factory=list)  # done, KiB, s
    rss_settled: int | None = None  # KiB, after the churn and the drain wait
    rss_end: int | None = None  # KiB, after the final probe and another drain wait
    done: int = 0
    failures: int = 0
    first_failure: str | None = None
    seconds: float = 0.0
    answers_after: str | None = None  # None: the server answered the final probe
    open_at_shutdown: int | None = None  # from the server's own shutdown log line
    stopped_cleanly: bool = False
    error: str | None = None

    def at(self, n: int) -> int | None:
        """RSS sampled when ``n`` connections were done (None if not sampled)."""
        for done, rss, _ in self.samples:
            if done == n:
                return rss
        return None


def churn(args: argparse.Namespace, backend: str, workdir: Path) -> Run:
    """One quicserve process, ``args.connections`` sequential-per-client HTTP/3 connections."""
    run = Run(backend=backend, connections=args.connections)
    tls = make_self_signed(workdir)
    port = free_port(HOST, udp_too=True)
    argv = [
        sys.executable,
        "-m",
        "quicserve",
        APP,
        "--quic-bind",
        f"{HOST}:{port}",
        "--certfile",
        str(tls.certfile),
        "--keyfile",
        str(tls.keyfile),
        "--no-access-log",
        "--log-level",
        "info",  # for the "Shutting down: waiting for N connection(s)" line
        "--backend",
        backend,
        *args.server_arg,
    ]
    log_path = workdir / f"server-{backend}.log"
    server = ServerProcess(argv, args.server_cpu, REPO_ROOT, log_path)
    url = f"https://{HOST}:{port}/"
    try:
        server.start()
        why = server.wait_ready(HOST, port, 30.0)
        if why is None:
            why = probe_h3(url, args.load_cpu, 15.0)
        if why is not None:
            run.error = f"{why}\n{server.output_head()}"
            return run
        run.rss_start = rss_kib(server.pid)

        lock = threading.Lock()
        started = time.monotonic()
        next_index = [0]
        stop = threading.Event()

        def client(index: int) -> None:
            _pin_thread(args.load_cpu)
            directory = scratch_dir(f"quicserve-h3mem-{index}-")
            try:
                while not stop.is_set():
                    with lock:
                        k = next_index[0]
                        if k >= args.connections:
                            return
                        next_index[0] += 1
                    one = gtlsclient_argv(args.load_cpu, HOST, port, [f"{url}?i={k}"], directory)
                    why, said = _run_gtlsclient(one, 60.0)
                    if why is None:
                        _, why = check_hello_downloads(directory, 1)
                    with lock:
                        if why is not None:
                            run.failures += 1
                            if run.first_failure is None:
                                run.first_failure = why + (f" ({said})" if said else "")
                            if run.failures >= args.max_failures:
                                stop.set()
                            continue
                        run.done += 1
                        if run.done % args.sample_every == 0 or run.done == args.connections:
                            elapsed = time.monotonic() - started
                            run.samples.append((run.done, rss_kib(server.pid), elapsed))
                            if args.progress:
                                print(
                                    f"[{backend}] {run.done:>6} connections  "
                                    f"RSS {_mib(run.samples[-1][1])} MiB  {elapsed:.0f} s",
                                    file=sys.stderr,
                                    flush=True,
                                )
            finally:
                shutil.rmtree(directory, ignore_errors=True)

        threads = [
            threading.Thread(target=client, args=(i,), daemon=True) for i in range(args.parallel)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        run.seconds = time.monotonic() - started

        # Closing connections drain, and anything kept until a per-connection timer fires
        # (quicserve's QUIC idle timeout is 30 s by default) is let go.
        time.sleep(args.settle)
        run.rss_settled = rss_kib(server.pid)
        run.answers_after = probe_h3(url, args.load_cpu, 15.0)
        time.sleep(2.0)
        run.rss_end = rss_kib(server.pid)
        if server.exit_code() is not None:
            run.error = f"server exited with status {server.exit_code()}"
    finally:
        server.stop()
        text = log_path.read_text(errors="replace") if log_path.exists() else ""
        match = _OPEN_AT_SHUTDOWN.search(text)
        run.stopped_cleanly = "Server stopped" in text
        if match is not None:
            run.open_at_shutdown = int(match.group(1))
        elif run.stopped_cleanly:
            run.open_at_shutdown = 0
    return run


def _mib(kib: int | None) -> str:
    return "-" if kib is None else f"{kib / 1024:.1f}"


def _delta(a: int | None, b: int | None) -> str:
    if a is None or b is None:
        return "-"
    return f"{(b - a) / 1024:+.1f}"


def report(runs: list[Run], args: argparse.Namespace) -> str:
    """Markdown: one summary row per backend, then every sample."""
    n = args.connections
    marks = sorted({m for m in (1000, 5000, 10000, n) if m <= n})
    first, last = marks[0], marks[-1]
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    extra = f" | server args: {' '.join(args.server_arg)}" if args.server_arg else ""
    lines = [
        f"## HTTP/3 connection churn: {n} connections, one request each, "
        f"{args.parallel} sequential gtlsclient loops",
        "",
        f"quicserve commit {_git_commit()} | quicserve on CPU {args.server_cpu}, clients on CPU "
        f"{args.load_cpu} | load avg {args.loadavg_start} -> {load}{extra}",
        "",
        "| backend | RSS start MiB | "
        + " | ".join(f"RSS @{m:,} MiB" for m in marks)
        + f" | growth {first:,}->{last:,} MiB | per conn B | settled MiB | end MiB | "
        "failed conns | answers after | open at shutdown | time s |",
        "|---|" + "--:|" * (len(marks) + 9),
    ]
    for r in runs:
        if r.error is not None and not r.samples:
            lines.append(f"| {r.backend} | FAILED: {r.error.splitlines()[0]} |")
            continue
        a, b = r.at(first), r.at(last)
        per_conn = (
            "-"
            if a is None or b is None or last == first
            else (f"{(b - a) * 1024 / (last - first):.0f}")
        )
        open_at = "?" if r.open_at_shutdown is None else str(r.open_at_shutdown)
        lines.append(
            f"| {r.backend} | {_mib(r.rss_start)} | "
            + " | ".join(_mib(r.at(m)) for m in marks)
            + f" | {_delta(a, b)} | {per_conn} | {_mib(r.rss_settled)} | {_mib(r.rss_end)} | "
            f"{r.failures} | {'yes' if r.answers_after is None else 'NO'} | {open_at} | "
            f"{r.seconds:.0f} |"
        )
    lines += ["", "Samples (RSS MiB by connections done):", ""]
    counts = sorted({d for r in runs for d, _, _ in r.samples})
    lines.append("| connections | " + " | ".join(r.backend for r in runs) + " |")
    lines.append("|--:|" + "--:|" * len(runs))
    for c in counts:
        lines.append(f"| {c:,} | " + " | ".join(_mib(r.at(c)) for r in runs) + " |")
    lines += [
        "",
        "- settled: RSS after the churn and a "
        f"{args.settle:.0f} s wait; end: after one more HTTP/3 request (the 'answers after' "
        "check) and 2 s more. CPython rarely returns freed memory to the OS, so a plateau "
        "during the churn says more than a drop after it.",
        "- open at shutdown: from quicserve's own log at SIGTERM ('Shutting down: waiting for N "
        "connection(s)' is logged only when its connection registry is not empty); 0 = the "
        "registry was empty.",
        "- quicserve keeps up to --quic-session-tickets (default 10000) session tickets, one "
        "issued per connection: that store fills during the first 10000 connections, so growth "
        "up to there is not by itself a leak.",
    ]
    for r in runs:
        if r.first_failure is not None:
            lines.append(f"- {r.backend}: first failed connection: {r.first_failure}")
        if r.answers_after is not None:
            lines.append(f"- {r.backend}: final probe failed: {r.answers_after}")
        if r.error is not None and r.samples:
            lines.append(f"- {r.backend}: {r.error.splitlines()[0]}")
        if not r.stopped_cleanly:
            lines.append(f"- {r.backend}: no 'Server stopped' line in the server log")
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    """The CLI."""
    p = argparse.ArgumentParser(
        prog="python bench/h3_memory.py",
        description="quicserve RSS over many sequential HTTP/3 connections (gtlsclient).",
    )
    p.add_argument("--connections", type=int, default=10_000, help="total (default 10000)")
    p.add_argument(
        "--parallel", type=int, default=4, help="client loops, each sequential (default 4)"
    )
    p.add_argument("--backends", default="asyncio,trio", help="comma list (default asyncio,trio)")
    p.add_argument("--sample-every", type=int, default=1000, help="RSS sample interval")
    p.add_argument(
        "--settle",
        type=float,
        default=35.0,
        help="wait after the churn before the settled sample, seconds (default 35: longer than "
        "quicserve's 30 s QUIC idle timeout)",
    )
    p.add_argument("--max-failures", type=int, default=20, help="give up after this many")
    p.add_argument("--server-cpu", default="0", help="taskset CPU list for quicserve")
    p.add_argument("--load-cpu", default="1", help="taskset CPU list for gtlsclient")
    p.add_argument(
        "--server-arg",
        action="append",
        default=[],
        help="extra quicserve argument (repeatable; use --server-arg=--flag=value)",
    )
    p.add_argument("--no-progress", dest="progress", action="store_false")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run every backend, print the report; exit 1 if anything failed or leaked."""
    args = build_parser().parse_args(argv)
    if min(args.connections, args.parallel, args.sample_every, args.max_failures) < 1:
        print("--connections, --parallel, --sample-every, --max-failures: >= 1", file=sys.stderr)
        return 2
    if shutil.which("gtlsclient") is None or shutil.which("taskset") is None:
        print("needs gtlsclient (ngtcp2-client) and taskset", file=sys.stderr)
        return 2
    args.loadavg_start = " ".join(f"{x:.2f}" for x in os.getloadavg())
    runs = []
    with tempfile.TemporaryDirectory(prefix="quicserve-h3mem-") as tmp:
        for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
            workdir = Path(tmp) / backend
            workdir.mkdir()
            runs.append(churn(args, backend, workdir))
    sys.stdout.write(report(runs, args))
    bad = any(
        r.error is not None or r.failures or r.answers_after is not None or r.open_at_shutdown != 0
        for r in runs
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
