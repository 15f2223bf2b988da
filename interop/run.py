"""Run real clients against quicserve and print an interop matrix.

The server role of the QUIC interop runner, without containers: for each backend, start
quicserve as a subprocess on 127.0.0.1 (QUIC, TLS and cleartext binds, plus QUIC on
[::1] when the machine has it) with a throwaway CA made at run time, run every
(client x case) pair with a time bound in a worker thread, and print one matrix per
backend; the run is also written as JSON and as an HTML page (``interop/results/``). Rules:

- A cell is ✓ only when the adapter checked evidence (sha256, http_version, TLS state).
- n/a always carries a reason: tool missing (with the install hint), the client cannot
  express the case, or the case is not built yet.
- A server that dies during a case fails that case and is restarted for the next one.
- The exit status is 1 when any ✗ appears, so ``--quick`` can gate CI.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

from clientkit.net import ipv6_loopback

from .cases import CASES, Result, Server
from .clients import ALL as CLIENTS
from .html import render_page

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
BACKENDS = ("asyncio", "trio")
PROFILES: dict[str, list[str]] = {
    "default": [],
    "retry": ["--quic-retry", "always"],
    "0rtt": ["--quic-0rtt"],
}
QUICK_CLIENTS = ("aioquic", "curl_cffi", "curl")
QUICK_CASES = ("handshake", "transfer", "http3", "h1-get", "h2-get", "ws-h3")
DEFAULT_TIMEOUT = 90.0
TIMEOUTS = {"chromium": 150.0, "firefox": 150.0, "h2load": 120.0}


@dataclass(slots=True)
class Cell:
    """One (case, client) outcome in the matrix."""

    status: str  # "ok", "fail" or "na"
    reason: str = ""
    evidence: str = ""
    seconds: float = 0.0


class ServerProcess:
    """quicserve running the interop app in a subprocess, for one backend and profile."""

    def __init__(self, backend: str, profile: str, certs: Any, workdir: Path) -> None:
        self.backend, self.profile, self.certs = backend, profile, certs
        self.log = workdir / f"server-{backend}-{profile}.log"
        self.v6 = ipv6_loopback()
        command = [
            sys.executable,  # the real interpreter (not a pyenv shim), so the PID is ours
            "-m",
            "quicserve",
            "interop.app:app",
            "--app-dir",
            str(ROOT),
            "--backend",
            backend,
            "--certfile",
            str(certs.certfile),
            "--keyfile",
            str(certs.keyfile),
            "--quic-bind",
            "127.0.0.1:0",
            "--bind",
            "127.0.0.1:0",
            "--insecure-bind",
            "127.0.0.1:0",
            "--no-access-log",
            "--webtransport",
            "--graceful-timeout",
            "2",
            *(["--quic-bind", "[::1]:0"] if self.v6 else []),
            *PROFILES[profile],
        ]
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        self.info = self._wait_listening(expected=4 if self.v6 else 3, workdir=workdir)

    def _wait_listening(self, expected: int, workdir: Path) -> Server:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            lines = [line for line in self.tail(200) if "Listening on" in line]
            if len(lines) >= expected:
                return self._parse(lines, workdir)
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"quicserve did not start: {' | '.join(self.tail(5))}")

    def _parse(self, lines: list[str], workdir: Path) -> Server:
        ports: dict[str, int] = {}
        for line in lines:
            url, kind = line.split("Listening on ", 1)[1].split()[:2]
            scheme, rest = url.split("://")
            host, port = rest.rsplit(":", 1)
            key = {"(UDP)": "h3", "(TCP)": scheme}[kind] + ("6" if host.startswith("[") else "")
            ports[key] = int(port)
        return Server(
            backend=self.backend,
            profile=self.profile,
            h3_port=ports["h3"],
            https_port=ports["https"],
            http_port=ports["http"],
            h3_port6=ports.get("h36"),
            ca_certfile=str(self.certs.ca_certfile),
            certfile=str(self.certs.certfile),
            workdir=str(workdir),
        )

    def tail(self, n: int = 20) -> list[str]:
        """The last ``n`` lines the server logged."""
        try:
            return self.log.read_text(errors="replace").splitlines()[-n:]
        except OSError:
            return []

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        """SIGINT (graceful), then SIGKILL if it does not exit; only our own PID."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def run_with_timeout(client: ModuleType, case: str, server: Server, timeout: float) -> Cell:
    """Run one adapter in a daemon thread; a hung client is reported, not waited on."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = client.run(case, server)
        except BaseException as exc:
            last = traceback.extract_tb(exc.__traceback__)[-1:]
            where = f" at {Path(last[0].filename).name}:{last[0].lineno}" if last else ""
            box["result"] = Result(False, f"{type(exc).__name__}: {exc}"[:200] + where)

    start = time.monotonic()
    thread = threading.Thread(target=target, name=f"{client.NAME}-{case}", daemon=True)
    thread.start()
    thread.join(timeout)
    seconds = round(time.monotonic() - start, 2)
    if thread.is_alive():
        return Cell("fail", f"timed out after {timeout:.0f}s", seconds=seconds)
    result: Result = box["result"]
    status = "ok" if result.ok else "fail"
    return Cell(status, " ".join(result.reason.split()), result.evidence, seconds)


def run_backend(
    backend: str,
    cases: list[str],
    clients: list[ModuleType],
    certs: Any,
    workdir: Path,
    progress: bool,
) -> tuple[dict[str, dict[str, Cell]], dict[str, list[str]]]:
    """Every (case, client) on one backend; returns the cells and the server log tails."""
    servers: dict[str, ServerProcess] = {}
    logs: dict[str, list[str]] = {}
    cells: dict[str, dict[str, Cell]] = defaultdict(dict)
    hints = {c.NAME: c.available() for c in clients}
    try:
        for case_name in cases:
            case = CASES[case_name]
            for client in clients:
                if case.not_ready:
                    cells[case_name][client.NAME] = Cell("na", case.not_ready)
                    continue
                if hints[client.NAME]:
                    cells[case_name][client.NAME] = Cell(
                        "na", f"not installed: {hints[client.NAME]}"
                    )
                    continue
                if not client.supports(case_name):
                    reason = getattr(client, "UNSUPPORTED", "this client cannot run this case")
                    if isinstance(reason, dict):
                        reason = reason.get(case_name, reason["*"])
                    cells[case_name][client.NAME] = Cell("na", str(reason))
                    continue
                server = servers.get(case.profile)
                if server is None or not server.alive():
                    try:
                        server = servers[case.profile] = ServerProcess(
                            backend, case.profile, certs, workdir
                        )
                    except RuntimeError as exc:
                        cells[case_name][client.NAME] = Cell("fail", str(exc)[:200])
                        continue
                timeout = TIMEOUTS.get(client.NAME, DEFAULT_TIMEOUT)
                cell = run_with_timeout(client, case_name, server.info, timeout)
                if not server.alive():
                    cell = Cell("fail", f"quicserve exited: {' | '.join(server.tail(3))}"[:200])
                    logs[f"{case.profile} (died during {case_name}/{client.NAME})"] = server.tail(
                        40
                    )
                cells[case_name][client.NAME] = cell
                if progress:
                    mark = {"ok": "✓", "fail": "✗"}[cell.status]
                    where = f"[{backend}] {case_name:<14} {client.NAME:<10}"
                    print(
                        f"  {where} {mark} {cell.seconds:5.1f}s"
                        + (f"  {cell.reason}" if cell.reason else ""),
                        file=sys.stderr,
                        flush=True,
                    )
    finally:
        for profile, server in servers.items():
            server.stop()
            logs.setdefault(profile, server.tail(40))
    return cells, logs


MARKS = {"ok": "✓", "fail": "✗", "na": "n/a"}


def render(backend: str, cells: dict[str, dict[str, Cell]], clients: list[str]) -> str:
    """The matrix for one backend, then one line per distinct ✗/n/a reason."""
    width = max([len(c) for c in cells] + [8])
    cols = [max(len(c), 3) for c in clients]
    lines = [
        f"backend: {backend}",
        " " * width + "  " + "  ".join(c.ljust(w) for c, w in zip(clients, cols, strict=True)),
    ]
    for case, row in cells.items():
        marks = [MARKS[row[c].status].ljust(w) for c, w in zip(clients, cols, strict=True)]
        lines.append(case.ljust(width) + "  " + "  ".join(marks).rstrip())
    grouped: dict[tuple[str, str], list[str]] = defaultdict(list)
    for case, row in cells.items():
        for client in clients:
            cell = row[client]
            if cell.status != "ok":
                grouped[(cell.status, cell.reason)].append(f"{case}/{client}")
    failures = [(k, v) for k, v in grouped.items() if k[0] == "fail"]
    skipped = [(k, v) for k, v in grouped.items() if k[0] == "na"]
    for (status, reason), where in failures + skipped:
        lines.append(f"  {MARKS[status]:<3} {_summarize(where)}: {reason}")
    return "\n".join(lines)


def _summarize(where: list[str]) -> str:
    """Shorten a list of case/client cells: by client when one client covers them all."""
    by_client: dict[str, list[str]] = defaultdict(list)
    for item in where:
        case, client = item.split("/", 1)
        by_client[client].append(case)
    by_case: dict[str, list[str]] = defaultdict(list)
    for item in where:
        case, client = item.split("/", 1)
        by_case[case].append(client)
    if len(by_client) > 1 and all(len(cl) == len(by_client) for cl in by_case.values()):
        return f"{','.join(by_case)} [all clients]"
    if len(by_case) < len(by_client):
        return "; ".join(f"{case} [{','.join(cl)}]" for case, cl in by_case.items())
    return "; ".join(f"{client} [{','.join(cs)}]" for client, cs in by_client.items())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m interop", description=__doc__.split("\n")[0])
    parser.add_argument("--client", help="comma-separated clients (default: all)")
    parser.add_argument("--case", help="comma-separated cases (default: all)")
    parser.add_argument("--backend", help="asyncio, trio or both comma-separated (default: both)")
    parser.add_argument("--quick", action="store_true", help="the small CI subset (< 2 minutes)")
    parser.add_argument("--list", action="store_true", help="list clients and cases, then exit")
    parser.add_argument("--quiet", action="store_true", help="no per-cell progress on stderr")
    args = parser.parse_args(argv)

    by_name = {c.NAME: c for c in CLIENTS}
    if args.list:
        print("clients:")
        for c in CLIENTS:
            hint = c.available()
            print(f"  {c.NAME:<10} {'ok' if hint is None else 'missing: ' + hint}")
        print("cases:")
        for case in CASES.values():
            print(
                f"  {case.name:<20} {case.claim}"
                + (f"  [n/a: {case.not_ready}]" if case.not_ready else "")
            )
        return 0

    client_names = list(QUICK_CLIENTS) if args.quick else list(by_name)
    case_names = list(QUICK_CASES) if args.quick else list(CASES)
    if args.client:
        client_names = args.client.split(",")
    if args.case:
        case_names = args.case.split(",")
    backends = args.backend.split(",") if args.backend else list(BACKENDS)
    for name in client_names:
        if name not in by_name:
            parser.error(f"unknown client {name!r} (see --list)")
    for name in case_names:
        if name not in CASES:
            parser.error(f"unknown case {name!r} (see --list)")
    clients = [by_name[n] for n in client_names]

    started = datetime.now(UTC)
    t0 = time.monotonic()
    report: dict[str, Any] = {
        "started": started.isoformat(timespec="seconds"),
        "argv": sys.argv[1:] if argv is None else argv,
        "python": sys.version.split()[0],
        "backends": {},
    }
    any_fail = False
    from quicserve.certs import make_test_certificates

    with tempfile.TemporaryDirectory(prefix="quicserve-interop-") as tmp:
        certs = make_test_certificates(Path(tmp))  # throwaway CA + leaf, gone after the run
        for backend in backends:
            cells, logs = run_backend(
                backend, case_names, clients, certs, Path(tmp), progress=not args.quiet
            )
            print(render(backend, cells, client_names), flush=True)
            print()
            any_fail |= any(c.status == "fail" for row in cells.values() for c in row.values())
            report["backends"][backend] = {
                "cells": {
                    case: {client: vars_(cell) for client, cell in row.items()}
                    for case, row in cells.items()
                },
                "server_log_tail": logs,
            }
    report["seconds"] = round(time.monotonic() - t0, 1)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    out.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    page = out.with_suffix(".html")
    page.write_text(render_page(report))
    print(
        f"{'FAIL' if any_fail else 'PASS'} in {report['seconds']}s; results: "
        f"{os.path.relpath(out)} and {os.path.relpath(page)}"
    )
    return 1 if any_fail else 0


def vars_(cell: Cell) -> dict[str, Any]:
    return {
        "status": cell.status,
        "reason": cell.reason,
        "evidence": cell.evidence,
        "seconds": cell.seconds,
    }
