"""Side-by-side benchmark CLI: quicserve, Hypercorn and Uvicorn on one app, in one run.

Job: for every selected (protocol, backend), run every selected server for ``--repeats``
rounds of one trial each, then print a markdown report (medians, min-max over repeats, p99,
server CPU per 1000 requests, and per-repeat ratios of the reference server against each
other server) and optionally write it all as JSON.

One trial: start the server pinned to the server CPU (``taskset``), poll-connect until its
TCP port accepts, check the response (HTTP/1.1 plaintext or TLS: two GET / on one kept-alive
connection; for HTTP/3 one gtlsclient GET /),
warm up with the protocol's own load generator for ``--warmup`` seconds (this also checks that
the expected protocol was negotiated), read the server's CPU time, run the measured load pinned
to the load CPU, read the CPU time again, stop the server (SIGTERM to its PID, SIGKILL after
10 s).

Rules:

* Interleaving: within a (protocol, backend) the servers run in turn in each repeat (repeat 1:
  A, B, C; repeat 2: A, B, C; ...), so slow drifts of a shared, noisy machine hit all alike and
  the ratios are taken between trials that ran back to back.
* A server that fails to start or to serve is reported as failed, with the first lines of its
  output, and the run goes on. Only processes started here are ever signalled, by PID.
* Progress goes to stderr, the report to stdout; temporary files (certificate, key, logs) live
  in a temporary directory removed at exit.

Run from the repository root: ``python -m bench.run --help`` or ``python bench/run.py --help``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import http.client
import importlib.metadata
import json
import os
import platform
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):  # run as `python bench/run.py`: make `bench` importable
    sys.path.insert(0, str(REPO_ROOT))

from bench.app import HELLO_BODY  # noqa: E402
from bench.chart import DEFAULT_PATH as CHART_PATH  # noqa: E402
from bench.chart import draw  # noqa: E402
from bench.loaders import (  # noqa: E402
    MIB,
    PROTOCOLS,
    GtlsclientBulkLoader,
    LoadError,
    LoadTarget,
    ProtocolSpec,
    WsEchoLoader,
    probe_h3,
)
from bench.report import Report, Trial, format_trial  # noqa: E402
from bench.servers import (  # noqa: E402
    ALIASES,
    VARIANTS,
    Listen,
    ServerProcess,
    ServerVariant,
    TLSFiles,
    core_ticks,
    free_port,
    parse_cpu_list,
)
from bench.tls import make_self_signed  # noqa: E402

BACKENDS = ("asyncio", "trio", "uvloop")
DEFAULT_CHART = REPO_ROOT / CHART_PATH
HOST = "127.0.0.1"


def _csv(choices: Sequence[str]) -> Callable[[str], list[str]]:
    """An argparse ``type`` that splits a comma list and checks every item."""

    def parse(text: str) -> list[str]:
        items = [item.strip() for item in text.split(",") if item.strip()]
        bad = [item for item in items if item not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(
                f"invalid choice(s) {', '.join(bad) or '(empty)'}; choose from {', '.join(choices)}"
            )
        return list(dict.fromkeys(items))

    return parse


def build_parser() -> argparse.ArgumentParser:
    """The CLI."""
    server_tokens = list(
        dict.fromkeys([v.family for v in VARIANTS] + [v.name for v in VARIANTS] + [*ALIASES])
    )
    p = argparse.ArgumentParser(
        prog="python -m bench.run",
        description="Benchmark quicserve, Hypercorn, Uvicorn and Granian side by side on "
        "bench.app.",
    )
    p.add_argument(
        "--servers",
        type=_csv(server_tokens),
        default=["quicserve", "hypercorn", "uvicorn", "granian"],
        help=f"comma list from: {', '.join(server_tokens)} (default: quicserve,hypercorn,uvicorn,"
        "granian; 'uvicorn' means the uvicorn (h11), uvicorn-wsproto and, when httptools is "
        "importable, uvicorn-std rows)",
    )
    p.add_argument(
        "--protocols",
        type=_csv(list(PROTOCOLS)),
        default=["h1", "h2"],
        help=f"comma list from: {', '.join(PROTOCOLS)} (default: h1,h2)",
    )
    p.add_argument(
        "--backends",
        type=_csv(BACKENDS),
        default=["asyncio", "trio"],
        help="comma list from: asyncio, trio, uvloop (default: asyncio,trio)",
    )
    p.add_argument("--duration", type=int, default=10, help="seconds per measured trial")
    p.add_argument("--repeats", type=int, default=3, help="trials per server (interleaved)")
    p.add_argument("--connections", type=int, default=50, help="concurrent connections (h1, h2)")
    p.add_argument(
        "--h3-clients",
        type=int,
        default=4,
        help="h3: gtlsclient processes at a time, one QUIC connection each (default 4)",
    )
    p.add_argument(
        "--bulk-mib",
        type=int,
        default=50,
        help="h3bulk: MiB per fetch of /bytes/N, fetched back to back (default 50)",
    )
    p.add_argument(
        "--ws-connections",
        type=int,
        default=8,
        help="ws*: WebSockets open at once, shared by the --ws-clients processes (default 8)",
    )
    p.add_argument(
        "--ws-window",
        type=int,
        default=32,
        help="ws*: messages in flight per WebSocket (default 32)",
    )
    p.add_argument(
        "--ws-clients",
        type=int,
        default=1,
        help="ws*: client processes, all pinned to the load CPU (default 1)",
    )
    p.add_argument("--warmup", type=int, default=2, help="warm-up seconds before each trial")
    p.add_argument("--json", type=Path, default=None, metavar="OUT.json", help="write JSON here")
    p.add_argument(
        "--chart",
        type=Path,
        default=DEFAULT_CHART,
        metavar="OUT.png",
        help=f"PNG chart of req/s and CPU per request (default {DEFAULT_CHART}; needs "
        "matplotlib, skipped with a note without it)",
    )
    p.add_argument("--no-chart", action="store_true", help="do not draw the chart")
    p.add_argument(
        "--reference",
        default="quicserve",
        help="server that ratios are computed for (default: quicserve; if it is not run, "
        "the first server run)",
    )
    p.add_argument(
        "--count-h3-failures",
        action="store_true",
        help="h3: count failed requests (errors column) and go on instead of failing the trial "
        "(for servers that lose HTTP/3 requests, such as Hypercorn with --workers 2)",
    )
    p.add_argument("--server-cpu", default="0", help="taskset CPU list for servers (default 0)")
    p.add_argument("--load-cpu", default="1", help="taskset CPU list for loaders (default 1)")
    p.add_argument(
        "--start-timeout", type=float, default=30.0, help="seconds to wait for a server's port"
    )
    return p


def select_variants(tokens: Sequence[str], skipped: list[str]) -> list[ServerVariant]:
    """Expand --servers tokens into variants, noting those that are not installed."""
    chosen: list[ServerVariant] = []
    for token in tokens:
        # A family of several rows (uvicorn) selects them all; an alias or any other row
        # name selects that one row.
        family = [v for v in VARIANTS if v.family == token]
        if token in ALIASES:
            rows = [v for v in VARIANTS if v.name == ALIASES[token]]
        elif len(family) > 1:
            rows = family
        else:
            rows = [v for v in VARIANTS if v.name == token] or family
        for v in rows:
            if v in chosen:
                continue
            if not v.installed():
                skipped.append(f"{v.name}: {v.requirement}")
                continue
            chosen.append(v)
    return chosen


def probe_h1(port: int, timeout_s: float, tls: bool = False) -> str | None:
    """GET / twice on one connection (over TLS with ``tls``, offering ALPN ``http/1.1``
    only); None if both got the app's exact answer and the connection was kept alive, else
    what went wrong. A server that closed after each response would make wrk measure
    handshakes (TLS) or connects, not requests."""
    conn: http.client.HTTPConnection
    if tls:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # the run's throwaway certificate
        ctx.set_alpn_protocols(["http/1.1"])
        conn = http.client.HTTPSConnection(HOST, port, timeout=timeout_s, context=ctx)
    else:
        conn = http.client.HTTPConnection(HOST, port, timeout=timeout_s)
    try:
        first_sock = None
        for _ in range(2):
            conn.request("GET", "/")
            resp = conn.getresponse()
            body = resp.read()
            if resp.status != 200 or body != HELLO_BODY:
                return f"GET / answered {resp.status} {body[:60]!r}"
            if first_sock is None:
                first_sock = conn.sock
                if resp.will_close:
                    return "GET / answered with the connection closed (no keep-alive)"
            elif conn.sock is not first_sock:
                return "the second GET / needed a new connection (no keep-alive)"
        if tls and isinstance(conn.sock, ssl.SSLSocket):
            alpn = conn.sock.selected_alpn_protocol()
            if alpn not in (None, "http/1.1"):
                return f"TLS negotiated ALPN {alpn!r}, expected http/1.1"
    except (OSError, http.client.HTTPException) as exc:
        return f"GET / failed: {exc!r}"
    finally:
        conn.close()
    return None


def run_trial(
    variant: ServerVariant,
    spec: ProtocolSpec,
    backend: str,
    repeat: int,
    args: argparse.Namespace,
    tls: TLSFiles | None,
    workdir: Path,
) -> Trial:
    """Start one server, warm it up, measure it, stop it; never raises for server trouble."""
    trial = Trial(protocol=spec.name, backend=backend, server=variant.name, repeat=repeat)
    tag = f"{spec.name}-{backend}-{variant.name}-r{repeat}"
    port = free_port(HOST, udp_too=spec.quic)
    server_cpus = parse_cpu_list(args.server_cpu)
    listen = Listen(HOST, port, spec.name, backend, tls if spec.tls else None, quic=spec.quic)
    if spec.ws:
        connections = args.ws_connections
    else:
        connections = args.h3_clients if spec.quic else args.connections
    server = ServerProcess(
        variant.build(sys.executable, listen), args.server_cpu, REPO_ROOT, workdir / f"{tag}.log"
    )

    def fail(reason: str) -> Trial:
        output = server.output_head()
        trial.error = reason + (f"\n{output}" if output else "")
        return trial

    try:
        try:
            server.start()
        except OSError as exc:
            return fail(f"could not start: {exc}")
        not_ready = server.wait_ready(HOST, port, args.start_timeout)
        if not_ready is not None:
            return fail(f"failed to start: {not_ready}")
        if spec.http == "HTTP/1.1" and not spec.ws:  # h1, h1tls: answers, keeps alive
            bad = probe_h1(port, args.start_timeout, tls=spec.tls)
            if bad is not None:
                return fail(bad)
        url = spec.url(HOST, port)
        if spec.quic:  # TCP accepting says nothing about QUIC: one HTTP/3 GET / must work
            bad = probe_h3(spec.url(HOST, port, "/"), args.load_cpu, min(args.start_timeout, 15.0))
            if bad is not None:
                return fail(bad)

        try:
            warm = spec.loader.run(
                LoadTarget(
                    url,
                    args.warmup,
                    connections,
                    args.load_cpu,
                    count_failures=args.count_h3_failures,
                )
            )
            if warm.app_protocol != spec.expect_app_protocol:
                return fail(
                    f"negotiated {warm.app_protocol!r}, expected {spec.expect_app_protocol!r}"
                )
            if warm.bad_status:
                return fail(f"{warm.bad_status} responses >= 400 during warm-up")
            log_path = workdir / f"{tag}.requests.tsv"
            cpu_before, wall_before = server.cpu_seconds(), time.monotonic()
            core_before = core_ticks(server_cpus)
            result = spec.loader.run(
                LoadTarget(
                    url,
                    args.duration,
                    connections,
                    args.load_cpu,
                    log_path,
                    count_failures=args.count_h3_failures,
                )
            )
            core_after = core_ticks(server_cpus)
            cpu_after, wall_after = server.cpu_seconds(), time.monotonic()
            log_path.unlink(missing_ok=True)
        except LoadError as exc:
            code = server.exit_code()
            died = f" (server exited with status {code})" if code is not None else ""
            return fail(f"load failed{died}: {exc}")
        if server.exit_code() is not None:
            return fail(f"server exited with status {server.exit_code()} during the trial")
        if server.scrape_failures:
            return fail(f"/metrics scrapes failed: {'; '.join(server.scrape_failures)}")

        cpu_s = cpu_after - cpu_before
        trial.ok = True
        trial.rps = result.rps
        trial.requests = result.requests
        trial.p99_ms = result.p99_ms
        trial.p99_source = result.p99_source
        trial.mean_ms = result.mean_ms
        trial.cpu_s = cpu_s
        if spec.bulk and result.body_bytes:
            wall = result.requests / result.rps  # the loader's own window
            trial.mib = result.body_bytes / MIB
            trial.mib_per_s = trial.mib / wall
            trial.cpu_ms_per_mib = cpu_s * 1e3 / trial.mib
        else:
            trial.cpu_ms_per_1k = cpu_s * 1e6 / result.requests
        trial.cpu_busy_pct = 100.0 * cpu_s / max(wall_after - wall_before, 1e-9)
        core_total = core_after[1] - core_before[1]
        if core_total > 0:
            trial.core_busy_pct = 100.0 * (core_after[0] - core_before[0]) / core_total
        trial.bad_status = result.bad_status
        trial.errors = result.errors
        trial.app_protocol = result.app_protocol
        trial.load_busy_pct = result.load_busy_pct
        return trial
    finally:
        trial.stop_note = server.stop()


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _tool_version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return f"{argv[0]}: unavailable"
    text = (out.stdout + out.stderr).strip().splitlines()
    return text[0] if text else argv[0]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _git_commit() -> str:
    """The checked-out commit, ``+dirty`` if files outside bench/ have local changes."""
    try:
        head = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            [
                "git",
                "-C",
                str(REPO_ROOT),
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                ".",
                ":(exclude)bench",
            ],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def _describe(proto: str, args: argparse.Namespace) -> str:
    """The protocol's description with this run's knobs filled in."""
    text = PROTOCOLS[proto].description
    if proto == "h3":
        text = text.replace("--h3-clients processes", f"{args.h3_clients} processes")
    if proto == "h3bulk":
        text = text.replace("<--bulk-mib MiB>", str(args.bulk_mib * MIB))
    return text


def collect_meta(args: argparse.Namespace, servers: list[ServerVariant]) -> dict[str, object]:
    """Context that makes a result readable later: when, where, what versions, which knobs."""
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{os.cpu_count()} CPU {_cpu_model()}, {platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "servers_run": [v.name for v in servers],
        "versions": {
            "quicserve commit": _git_commit(),
            **{
                d: _version(d)
                for d in (
                    "quicserve",
                    "hypercorn",
                    "uvicorn",
                    "granian",
                    "uvloop",
                    "httptools",
                    "websockets",
                    "trio",
                )
            },
        },
        "tools": [
            _tool_version(["wrk", "-v"]).split(" Copyright")[0],
            _tool_version(["h2load", "--version"]),
            "gtlsclient (ngtcp2-client) "
            + _tool_version(["dpkg-query", "-W", "-f", "${Version}", "ngtcp2-client"]),
        ],
        "protocols": {p: _describe(p, args) for p in args.protocols},
        "backends": args.backends,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "repeats": args.repeats,
        "connections": args.connections,
        "h3_clients": args.h3_clients,
        "bulk_protocols": [p for p in args.protocols if PROTOCOLS[p].bulk],
        "bulk_mib": args.bulk_mib,
        "ws_connections": args.ws_connections,
        "ws_window": args.ws_window,
        "ws_clients": args.ws_clients,
        "server_cpu": args.server_cpu,
        "load_cpu": args.load_cpu,
        "loadavg_start": _loadavg(),
        "loadavg_end": None,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; exit 0 if every trial that was attempted succeeded, else 1."""
    args = build_parser().parse_args(argv)
    if (
        min(args.duration, args.repeats, args.connections, args.warmup) < 1
        or min(args.h3_clients, args.bulk_mib) < 1
        or min(args.ws_connections, args.ws_window, args.ws_clients) < 1
    ):
        print(
            "--duration, --repeats, --connections, --warmup, --h3-clients and --bulk-mib "
            "must be >= 1",
            file=sys.stderr,
        )
        return 2
    try:
        parse_cpu_list(args.server_cpu)
        parse_cpu_list(args.load_cpu)
    except ValueError:
        print("--server-cpu/--load-cpu take taskset CPU lists like 0, 0,2 or 0-3", file=sys.stderr)
        return 2
    if shutil.which("taskset") is None:
        print("taskset (util-linux) is required for CPU pinning", file=sys.stderr)
        return 2

    skipped: list[str] = []
    variants = select_variants(args.servers, skipped)
    plan: list[tuple[ProtocolSpec, str, list[ServerVariant]]] = []
    for proto in args.protocols:
        spec = PROTOCOLS[proto]
        if spec.bulk:
            spec = dataclasses.replace(
                spec, loader=GtlsclientBulkLoader(size_bytes=args.bulk_mib * MIB)
            )
        if isinstance(spec.loader, WsEchoLoader):
            spec = dataclasses.replace(
                spec,
                loader=WsEchoLoader(spec.loader.transport, args.ws_window, args.ws_clients),
            )
        if not spec.available():
            skipped.append(f"{proto}: load generator `{spec.loader.tool}` not found")
            continue
        for backend in args.backends:
            runnable = []
            for v in variants:
                if v.supports(proto, backend):
                    runnable.append(v)
                elif proto not in v.protocols:
                    why = v.reason_not_served(proto) or f"{v.family} does not serve {spec.http}"
                    skipped.append(f"{v.name} {proto}/{backend}: {why}")
                else:
                    skipped.append(f"{v.name} {proto}/{backend}: no {backend} backend")
            if runnable:
                plan.append((spec, backend, runnable))

    ran = list(dict.fromkeys(v.name for _, _, vs in plan for v in vs))
    reference = args.reference if args.reference in ran else (ran[0] if ran else args.reference)
    report = Report(
        meta=collect_meta(args, [v for v in variants if v.name in ran]),
        trials=[],
        reference=reference,
        skipped=list(dict.fromkeys(skipped)),
    )

    n_trials = sum(len(vs) for _, _, vs in plan) * args.repeats
    per_trial = args.duration + args.warmup + 3
    print(
        f"{n_trials} trials, roughly {n_trials * per_trial / 60:.1f} min; reference: {reference}",
        file=sys.stderr,
    )
    interrupted = False
    with tempfile.TemporaryDirectory(prefix="quicserve-bench-") as tmp:
        workdir = Path(tmp)
        tls = make_self_signed(workdir) if any(spec.tls for spec, _, _ in plan) else None
        try:
            for spec, backend, runnable in plan:
                for repeat in range(1, args.repeats + 1):
                    for v in runnable:  # interleaved: A, B, C in every repeat
                        trial = run_trial(v, spec, backend, repeat, args, tls, workdir)
                        report.trials.append(trial)
                        print(format_trial(trial), file=sys.stderr, flush=True)
        except KeyboardInterrupt:
            interrupted = True
            print("interrupted: reporting the trials done so far", file=sys.stderr)

    report.meta["loadavg_end"] = _loadavg()
    if interrupted:
        report.skipped.append("the run was interrupted (Ctrl-C); later trials are missing")
    sys.stdout.write(report.to_markdown())
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report.to_json(), indent=2) + "\n")
        print(f"JSON written to {args.json}", file=sys.stderr)
    if not args.no_chart and report.trials and draw(report.to_json(), args.chart) is not None:
        print(f"chart written to {args.chart}", file=sys.stderr)
    failed = any(not t.ok for t in report.trials)
    return 1 if failed or interrupted or not report.trials else 0


if __name__ == "__main__":
    sys.exit(main())
