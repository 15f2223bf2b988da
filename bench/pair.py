"""Two quicserve variants measured at the same time on the same core: CPU per request each.

Job: compare two builds (or two backends) on a machine that other work keeps busy. A run of
``bench.run`` measures its servers one after another, so whatever else runs on the machine
changes between them, and the ratio carries that noise (15-40 % spreads on the shared
machine of issue 11). Here both servers run at once, both pinned to ``--server-cpu`` and
each loaded by its own ``wrk`` on ``--load-cpu``, so both see the same disturbance; what is
compared is each server's own CPU time (``/proc/PID/stat`` utime + stime) per completed
request, and their ratio, per round.

Usage (from the repository root)::

    python -m bench.pair trio:/path/to/tree-a asyncio:/path/to/tree-b --rounds 4
    python -m bench.pair asyncio:. asyncio:. --b-args "--metrics-bind 127.0.0.1:0"

A variant is ``BACKEND:TREE``: the backend (``asyncio``, ``uvloop``, ``trio``) and a
directory holding the ``quicserve`` package to import (put first on ``PYTHONPATH``; the
server runs from a temporary directory, so the current directory's package does not win).
``bench.app`` comes from this repository.

Rules:

* Read the ratio, not the absolute numbers: two servers sharing a core switch between
  each other, which adds the same cost per request to both, so the ratio here is nearer 1
  than on a quiet machine (trio/asyncio on main: 1.35 here, 1.47 in the quiet run of
  bench/README.md), never farther.
* Servers only on loopback; each round starts and stops its two servers (by PID).
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _start(
    spec: str, port: int, cpu: str, workdir: str, extra: list[str]
) -> subprocess.Popen[bytes]:
    backend, _, tree = spec.partition(":")
    env = {**os.environ, "PYTHONPATH": f"{tree}{os.pathsep}{REPO}"}
    argv = ["taskset", "-c", cpu, sys.executable, "-m", "quicserve", "bench.app:app"]
    argv += ["--insecure-bind", f"127.0.0.1:{port}", "--backend", backend]
    argv += ["--no-access-log", "--log-level", "warning", *extra]
    process = subprocess.Popen(
        argv, cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1) as response:
                response.read()
            return process
        except OSError:
            time.sleep(0.1)
    process.kill()
    process.wait()
    raise SystemExit(f"{spec} did not answer on port {port} (exited, or not within 20 s)")


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime (clock ticks)


def _wrk(port: int, seconds: int, args: argparse.Namespace) -> subprocess.Popen[str]:
    url = f"http://127.0.0.1:{port}{args.path}"
    argv = ["taskset", "-c", args.load_cpu, "wrk", "-t1", f"-c{args.connections}"]
    return subprocess.Popen([*argv, f"-d{seconds}s", url], stdout=subprocess.PIPE, text=True)


def _round(args: argparse.Namespace, port: int, workdir: str) -> tuple[float, float]:
    servers: list[subprocess.Popen[bytes]] = []
    try:
        for i, (spec, extra) in enumerate(zip(args.a_b, (args.a_args, args.b_args), strict=True)):
            servers.append(_start(spec, port + i, args.server_cpu, workdir, shlex.split(extra)))
        for warm in [_wrk(port + i, 1, args) for i in range(2)]:
            warm.communicate()
        before = [_cpu_ticks(server.pid) for server in servers]
        loads = [_wrk(port + i, args.duration, args) for i in range(2)]
        outputs = [load.communicate()[0] for load in loads]
        after = [_cpu_ticks(server.pid) for server in servers]
    finally:
        for server in servers:
            server.terminate()
            server.wait(timeout=10)
    hz = os.sysconf("SC_CLK_TCK")
    result = []
    for i, out in enumerate(outputs):
        match = re.search(r"(\d+) requests in", out)
        if not match or not int(match.group(1)):
            raise SystemExit(f"wrk completed no request against {args.a_b[i]}:\n{out}")
        result.append((after[i] - before[i]) / hz * 1e6 / int(match.group(1)))
    return result[0], result[1]


def main(argv: list[str] | None = None) -> None:
    """Run the rounds and print CPU per request of A and B and their ratio."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("a_b", nargs=2, metavar="BACKEND:TREE", help="variants A and B")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--duration", type=int, default=4, help="seconds per round")
    parser.add_argument("--connections", type=int, default=50, help="wrk -c, per server")
    parser.add_argument("--path", default="/", help="request path (e.g. /bytes/1048576)")
    parser.add_argument("--server-cpu", default="0")
    parser.add_argument("--load-cpu", default="1")
    parser.add_argument("--port", type=int, default=18950, help="first port; 2 per round")
    parser.add_argument("--a-args", default="", help="more quicserve flags for A")
    parser.add_argument("--b-args", default="", help="more quicserve flags for B")
    args = parser.parse_args(argv)
    ratios = []
    with tempfile.TemporaryDirectory() as workdir:
        for index in range(args.rounds):
            a, b = _round(args, args.port + 2 * index, workdir)
            ratios.append(a / b)
            print(f"round {index + 1}: A {a:.1f} us/req  B {b:.1f} us/req  A/B {a / b:.3f}")
    print(f"A = {args.a_b[0]} {args.a_args}\nB = {args.a_b[1]} {args.b_args}")
    if not all(ratios):
        raise SystemExit("a server used no CPU: it is not the one that answered")
    print(
        f"A/B CPU per request: median {statistics.median(ratios):.3f} "
        f"(min {min(ratios):.3f}, max {max(ratios):.3f}, {len(ratios)} rounds)"
    )


if __name__ == "__main__":
    main()
