"""Servers under test: their command lines, and the lifecycle of one server process.

Job: know, for each server variant (quicserve, quicserve-h11, quicserve-wsproto,
quicserve-metrics, quicserve-base, hypercorn, uvicorn, uvicorn-wsproto, uvicorn-std,
granian), which (protocol, backend) pairs it can serve and the exact command that serves
``bench.app:app`` that way; start that command pinned to the server CPU, wait until its port
accepts, read its CPU time, and stop it.

Rules:

* Same app, one worker (two for the ``-2w`` rows), access log off, log level ``warning``
  for every server, started from the repository root with the interpreter running this harness.
* A variant that cannot serve a pair (uvicorn: no HTTP/2, no trio; granian: no trio, no
  HTTP/3, no WebSocket over HTTP/2) says so in `supports` and, where "does not serve HTTP/x"
  would mislead, in `why_not`; the harness lists the pair as not applicable instead of running
  something not comparable.
* Server CPU time is the whole process tree's (``utime+stime`` of the root and every live
  descendant, plus the children they reaped), read from ``/proc``: Hypercorn serves from a
  spawned worker process even with one worker.
* Processes are stopped by PID only, never by name: SIGTERM to the root, up to 10 s grace, then
  SIGKILL to the root and to every descendant seen while it ran (checked by start time, so a
  reused PID is never hit).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

APP = "bench.app:app"
STOP_GRACE_S = 10.0


@dataclass(frozen=True, slots=True)
class TLSFiles:
    """Paths of a PEM certificate and its private key."""

    certfile: Path
    keyfile: Path


@dataclass(frozen=True, slots=True)
class Listen:
    """Where and how one server instance must listen."""

    host: str
    port: int
    protocol: str  # "h1", "h1tls", "h2", "h3", "h3bulk", "ws", ...
    backend: str  # "asyncio", "trio", "uvloop"
    tls: TLSFiles | None  # set for TLS protocols (and QUIC ones)
    quic: bool = False  # serve HTTP/3 on UDP host:port (and TLS on TCP host:port)


@dataclass(frozen=True, slots=True)
class ServerVariant:
    """One row label of the report: a server in one fixed configuration."""

    name: str
    family: str  # the --servers token that selects it
    backends: frozenset[str]
    protocols: frozenset[str]
    build: Callable[[str, Listen], list[str]]  # (python executable, listen) -> argv
    requires_module: str | None = None  # importable module needed (e.g. httptools)
    requires_program: str | None = None  # executable needed on PATH (e.g. caddy)
    why_not: tuple[tuple[str, str], ...] = ()  # (protocol, reason it is not served)

    def reason_not_served(self, protocol: str) -> str | None:
        """Why this variant does not serve ``protocol``, when that needs saying."""
        return dict(self.why_not).get(protocol)

    def supports(self, protocol: str, backend: str) -> bool:
        """Whether this variant can serve ``protocol`` on ``backend`` at all."""
        return protocol in self.protocols and backend in self.backends

    def installed(self) -> bool:
        """Whether the optional module or program this variant needs is here."""
        if self.requires_program is not None and shutil.which(self.requires_program) is None:
            return False
        if self.requires_module is None:
            return True
        return importlib.util.find_spec(self.requires_module) is not None

    @property
    def requirement(self) -> str:
        """What ``installed`` looks for, for the "not run" line."""
        if self.requires_program is not None:
            return f"`{self.requires_program}` is not on PATH"
        return f"`{self.requires_module}` is not importable"


def _workers(
    build: Callable[[str, Listen], list[str]], n: int
) -> Callable[[str, Listen], list[str]]:
    """``build`` with ``--workers n`` (both quicserve and Hypercorn spell it that way)."""

    def with_workers(python: str, listen: Listen) -> list[str]:
        argv = build(python, listen)
        if "--workers" in argv:
            argv[argv.index("--workers") + 1] = str(n)
        else:
            argv += ["--workers", str(n)]
        return argv

    return with_workers


def _quicserve(python: str, listen: Listen) -> list[str]:
    argv = [python, "-m", "quicserve", APP]
    addr = f"{listen.host}:{listen.port}"
    if listen.tls is None:
        argv += ["--insecure-bind", addr]
    else:
        # --quic-bind alone also serves TLS on the same TCP port (the readiness check uses it).
        argv += [
            "--quic-bind" if listen.quic else "--bind",
            addr,
            "--certfile",
            str(listen.tls.certfile),
            "--keyfile",
            str(listen.tls.keyfile),
        ]
    return [*argv, "--backend", listen.backend, "--no-access-log", "--log-level", "warning"]


def _quicserve_wsproto(python: str, listen: Listen) -> list[str]:
    # The same server framing WebSockets with wsproto (pure Python), the engine of the
    # default install; the quicserve row uses --ws-engine auto: websockets when installed.
    return [*_quicserve(python, listen), "--ws-engine", "wsproto"]


def _quicserve_metrics(python: str, listen: Listen) -> list[str]:
    # The same server with the Prometheus listener on: the always-on counters plus what
    # only --metrics-bind turns on (a histogram bisect per request) and the listener; the
    # harness scrapes it every second during the trial (ServerProcess).
    metrics = f"{listen.host}:{free_port(listen.host)}"
    return [*_quicserve(python, listen), "--metrics-bind", metrics]


def _quicserve_h11(python: str, listen: Listen) -> list[str]:
    # The pure-Python HTTP/1.1 engine, beside the `quicserve` row (which takes httptools
    # when it is installed, --http1-engine auto), so one run compares the two engines.
    return [*_quicserve(python, listen), "--http1-engine", "h11"]


#: A directory holding another quicserve tree (e.g. ``git archive BASE quicserve | tar -x``).
BASE_ENV = "QUICSERVE_BENCH_BASE"


def _quicserve_base(python: str, listen: Listen) -> list[str]:
    # Another commit's quicserve, imported first, to measure a change side by side (the
    # metrics counters against the commit before them). Same flags as the quicserve row.
    base = os.environ.get(BASE_ENV)
    if not base or not (Path(base) / "quicserve").is_dir():
        return [python, "-c", f"raise SystemExit('set {BASE_ENV} to a dir with quicserve/')"]
    launcher = (
        f"import sys; sys.path.insert(0, {base!r}); from quicserve.cli import main; "
        "sys.exit(main())"
    )
    return [python, "-c", launcher, *_quicserve(python, listen)[3:]]


def _hypercorn(python: str, listen: Listen) -> list[str]:
    # No access log unless --access-logfile is given; --workers 1 is the default, stated here.
    argv = [
        python,
        "-m",
        "hypercorn",
        APP,
        "--bind",
        f"{listen.host}:{listen.port}",
        "--worker-class",
        listen.backend,
        "--workers",
        "1",
        "--log-level",
        "warning",
    ]
    if listen.tls is not None:
        argv += ["--certfile", str(listen.tls.certfile), "--keyfile", str(listen.tls.keyfile)]
    if listen.quic:
        argv += ["--quic-bind", f"{listen.host}:{listen.port}"]  # UDP; --bind keeps TCP
    return argv


def _granian(python: str, listen: Listen) -> list[str]:
    # Granian's ASGI interface (its default is RSGI), one worker, the event loop the backend
    # names (its default, "auto", would pick uvloop when installed), and --http auto, its
    # default: HTTP/1.1 in plaintext, HTTP/2 or HTTP/1.1 by ALPN over TLS. It serves from a
    # spawned worker process, counted in the server tree's CPU like Hypercorn's.
    argv = [
        python,
        "-m",
        "granian",
        "--interface",
        "asgi",
        "--host",
        listen.host,
        "--port",
        str(listen.port),
        "--workers",
        "1",
        "--loop",
        "uvloop" if listen.backend == "uvloop" else "asyncio",
        "--http",
        "auto",
        "--no-access-log",
        "--log-level",
        "warning",
    ]
    if listen.tls is not None:
        argv += [
            "--ssl-certificate",
            str(listen.tls.certfile),
            "--ssl-keyfile",  # PKCS#8 only: quicserve.certs writes "BEGIN PRIVATE KEY"
            str(listen.tls.keyfile),
        ]
    return [*argv, APP]


def _caddy(python: str, listen: Listen) -> list[str]:
    # Caddy (Go, net/http + its own TLS) answering "Hello, world!" itself, no app: a native
    # HTTP/2 reference for what the protocol stack costs. One Caddyfile per server, beside
    # the run's certificate (deleted with it): the certificate of the run, no admin
    # endpoint, HTTP/1.1 and HTTP/2 only (no QUIC listener), errors-only
    # logging. Pinned by taskset, the Go runtime sizes GOMAXPROCS to that one CPU.
    assert listen.tls is not None, "the caddy row serves TLS only"
    caddyfile = listen.tls.certfile.parent / f"Caddyfile-{listen.port}"
    caddyfile.write_text(
        "{\n"
        "\tadmin off\n"
        "\tauto_https off\n"
        "\tlog {\n\t\tlevel ERROR\n\t}\n"
        "\tservers {\n\t\tprotocols h1 h2\n\t}\n"
        "}\n"
        f"https://{listen.host}:{listen.port} {{\n"
        f"\ttls {listen.tls.certfile} {listen.tls.keyfile}\n"
        '\trespond "Hello, world!" 200\n'
        "}\n"
    )
    home = listen.tls.certfile.parent / f"caddy-{listen.port}"
    return [
        "env",  # exec's caddy (same PID): its autosaved config and data stay in the run dir
        f"XDG_CONFIG_HOME={home}",
        f"XDG_DATA_HOME={home}",
        "caddy",
        "run",
        "--adapter",
        "caddyfile",
        "--config",
        str(caddyfile),
    ]


def _uvicorn(http: str, ws: str = "websockets") -> Callable[[str, Listen], list[str]]:
    def build(python: str, listen: Listen) -> list[str]:
        loop = "uvloop" if listen.backend == "uvloop" else "asyncio"
        argv = [
            python,
            "-m",
            "uvicorn",
            APP,
            "--host",
            listen.host,
            "--port",
            str(listen.port),
            "--no-access-log",
            "--log-level",
            "warning",
            "--http",
            http,
            "--loop",
            loop,
            "--ws",
            ws,
        ]
        if listen.tls is not None:
            argv += [
                "--ssl-certfile",
                str(listen.tls.certfile),
                "--ssl-keyfile",
                str(listen.tls.keyfile),
            ]
        return argv

    return build


_ALL_BACKENDS = frozenset({"asyncio", "trio", "uvloop"})
_ALL_PROTOCOLS = frozenset({"h1", "h1tls", "h2", "h3", "h3bulk", "ws", "ws-h2", "ws-h3"})
_WS_PROTOCOLS = frozenset({"ws", "ws-h2", "ws-h3"})

VARIANTS: tuple[ServerVariant, ...] = (
    ServerVariant("quicserve", "quicserve", _ALL_BACKENDS, _ALL_PROTOCOLS, _quicserve),
    # One row per WebSocket engine: `quicserve` runs --ws-engine auto (websockets when
    # installed, as with the bench extra), this row wsproto (the pure-Python install's).
    ServerVariant(
        "quicserve-wsproto",
        "quicserve-wsproto",
        _ALL_BACKENDS,
        _WS_PROTOCOLS,
        _quicserve_wsproto,
    ),
    ServerVariant(
        "quicserve-metrics", "quicserve-metrics", _ALL_BACKENDS, _ALL_PROTOCOLS, _quicserve_metrics
    ),
    ServerVariant(
        "quicserve-base", "quicserve-base", _ALL_BACKENDS, _ALL_PROTOCOLS, _quicserve_base
    ),
    # The HTTP/1.1 engines side by side: only HTTP/1.1 and its WebSockets differ.
    ServerVariant(
        "quicserve-h11",
        "quicserve-h11",
        _ALL_BACKENDS,
        frozenset({"h1", "h1tls", "ws"}),
        _quicserve_h11,
    ),
    # Hypercorn serves HTTP/3 through aioquic with --quic-bind, on its asyncio and trio workers.
    ServerVariant("hypercorn", "hypercorn", _ALL_BACKENDS, _ALL_PROTOCOLS, _hypercorn),
    # Two worker processes each (bench/README.md "Workers"): not in the default --servers.
    ServerVariant(
        "quicserve-2w", "quicserve-2w", _ALL_BACKENDS, _ALL_PROTOCOLS, _workers(_quicserve, 2)
    ),
    ServerVariant(
        "hypercorn-2w", "hypercorn-2w", _ALL_BACKENDS, _ALL_PROTOCOLS, _workers(_hypercorn, 2)
    ),
    # Four workers without and with --metrics-bind (the supervisor serves one endpoint for
    # all, scraped every second): what fleet metrics cost (bench/README.md "Fleet metrics").
    ServerVariant(
        "quicserve-4w", "quicserve-4w", _ALL_BACKENDS, _ALL_PROTOCOLS, _workers(_quicserve, 4)
    ),
    ServerVariant(
        "quicserve-4w-metrics",
        "quicserve-4w-metrics",
        _ALL_BACKENDS,
        _ALL_PROTOCOLS,
        _workers(_quicserve_metrics, 4),
    ),
    # Uvicorn: asyncio.Protocol only (no trio), no HTTP/2 and no HTTP/3. Its WebSockets
    # (HTTP/1.1 only) come from the `websockets` package here, from wsproto in the row below.
    ServerVariant(
        "uvicorn",
        "uvicorn",
        frozenset({"asyncio", "uvloop"}),
        frozenset({"h1", "h1tls", "ws"}),
        _uvicorn("h11"),
    ),
    ServerVariant(
        "uvicorn-wsproto",
        "uvicorn",
        frozenset({"asyncio", "uvloop"}),
        frozenset({"ws"}),
        _uvicorn("h11", "wsproto"),
    ),
    # What `pip install 'uvicorn[standard]'` and a plain `uvicorn app` run: httptools for
    # HTTP/1.1 and the `websockets` package for WebSockets, on uvloop (the uvloop backend; on
    # the asyncio backend the same row runs asyncio's own loop, so it meets quicserve on the
    # same loop). It replaces the old h1-only `uvicorn-httptools` row (that name still
    # selects it, see ALIASES).
    ServerVariant(
        "uvicorn-std",
        "uvicorn",
        frozenset({"asyncio", "uvloop"}),
        frozenset({"h1", "h1tls", "ws"}),
        _uvicorn("httptools", "websockets"),
        requires_module="httptools",
    ),
    # Granian, a Rust server (hyper + tokio) with an ASGI interface: the native reference.
    # No trio, no HTTP/3; its WebSockets are HTTP/1.1 only: an RFC 8441 extended CONNECT over
    # HTTP/2 fails (checked with bench/wsload.py against granian 2.8.9).
    ServerVariant(
        "granian",
        "granian",
        frozenset({"asyncio", "uvloop"}),
        frozenset({"h1", "h1tls", "h2", "ws"}),
        _granian,
        requires_module="granian",
        why_not=(
            ("ws-h2", "no WebSocket over HTTP/2 (RFC 8441 extended CONNECT fails)"),
            ("h3", "no HTTP/3"),
            ("h3bulk", "no HTTP/3"),
            ("ws-h3", "no HTTP/3"),
        ),
    ),
    # Caddy: a Go server answering by itself (no ASGI app), the native HTTP/2 reference of
    # issue 11. Only when named in --servers (not in the default run); needs `caddy` on PATH.
    ServerVariant(
        "caddy",
        "caddy",
        _ALL_BACKENDS,  # no event loop of ours: the same server in every backend's panel
        frozenset({"h1tls", "h2"}),
        _caddy,
        requires_program="caddy",
        why_not=(("h1", "served over TLS only here (h1tls)"),),
    ),
)

#: Old row names that still select a row: --servers token -> row name.
ALIASES: dict[str, str] = {"uvicorn-httptools": "uvicorn-std", "uvicorn-h11": "uvicorn"}


def free_port(host: str, udp_too: bool = False) -> int:
    """A TCP port that was free a moment ago (the kernel picks it); with ``udp_too``, one
    whose UDP twin was free as well (QUIC servers bind both)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port: int = sock.getsockname()[1]
        if not udp_too:
            return port
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            try:
                udp.bind((host, port))
            except OSError:
                continue
            return port
    raise OSError("no port free for both TCP and UDP")


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def _read_stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the ``comm`` field (index 0 is field 3, ``state``)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rfind(")") + 2 :].split()


def _cpu_ticks(fields: list[str]) -> int:
    """utime + stime + cutime + cstime (stat fields 14-17)."""
    return sum(int(f) for f in fields[11:15])


def _start_time(fields: list[str]) -> int:
    """Process start time in ticks since boot (stat field 22)."""
    return int(fields[19])


def _children_map() -> dict[int, list[int]]:
    """ppid -> [pid] for every process currently in /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fields = _read_stat(int(entry.name))
        if fields is None:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    return children


def parse_cpu_list(spec: str) -> set[int]:
    """CPU numbers of a taskset-style list such as ``0``, ``0,2`` or ``0-3``."""
    cpus: set[int] = set()
    for part in spec.split(","):
        lo, _, hi = part.strip().partition("-")
        cpus.update(range(int(lo), int(hi or lo) + 1))
    return cpus


def core_ticks(cpus: set[int]) -> tuple[int, int]:
    """(busy, total) jiffies of the given CPUs since boot, from /proc/stat, for all processes.

    Busy excludes idle and iowait. Comparing it with the server's own CPU time tells a server
    that stalls (its core idle) from one that shares its core with other work (core busy).
    """
    busy = total = 0
    for line in Path("/proc/stat").read_text().splitlines():
        name, *values = line.split()
        if not name.startswith("cpu") or name == "cpu" or int(name[3:]) not in cpus:
            continue
        ticks = [int(v) for v in values[:8]]  # user nice system idle iowait irq softirq steal
        total += sum(ticks)
        busy += sum(ticks) - ticks[3] - ticks[4]
    return busy, total


class ServerProcess:
    """One server subprocess pinned to a CPU, its output captured to a log file."""

    def __init__(self, argv: list[str], cpu: str, cwd: Path, log_path: Path) -> None:
        self.argv = argv
        self.cpu = cpu
        self.cwd = cwd
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._descendants: dict[int, int] = {}  # pid -> start time, as seen while running
        #: With --metrics-bind: /metrics is fetched every second while the server runs.
        self.scrapes = 0
        self.scrape_failures: list[str] = []
        self._scraping = threading.Event()
        self._scraper: threading.Thread | None = None

    @property
    def pid(self) -> int:
        """PID of the server (taskset execs the command, so it is the server's own)."""
        if self._proc is None:
            raise RuntimeError("not started")
        return self._proc.pid

    def start(self) -> None:
        """Start the pinned server; its stdout and stderr go to ``log_path``."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(self.cwd), env.get("PYTHONPATH", "")) if p
        )
        env.pop("PYTHONDEVMODE", None)
        self._log = self.log_path.open("wb")
        self._proc = subprocess.Popen(
            ["taskset", "-c", self.cpu, *self.argv],
            cwd=self.cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            # Own session: a Ctrl-C meant for the harness does not reach the server first; the
            # harness stops it itself, by PID.
            start_new_session=True,
        )

    def _scrape(self, url: str) -> None:
        """Fetch ``url`` every second (as Prometheus would) until :meth:`stop`."""
        while not self._scraping.wait(1.0):
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    body = response.read()
                if b"# TYPE quicserve_connections_open gauge" not in body:
                    raise ValueError("not quicserve's metrics")
                self.scrapes += 1
            except (OSError, ValueError) as exc:
                if self.exit_code() is None and len(self.scrape_failures) < 10:
                    self.scrape_failures.append(str(exc))

    def exit_code(self) -> int | None:
        """The exit status if the server has exited, else None."""
        return None if self._proc is None else self._proc.poll()

    def wait_ready(self, host: str, port: int, timeout_s: float) -> str | None:
        """Poll-connect until the port accepts; return None, or why the server is not ready."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            code = self.exit_code()
            if code is not None:
                return f"exited with status {code} before accepting connections"
            try:
                with socket.create_connection((host, port), timeout=0.25):
                    pass
            except OSError:
                time.sleep(0.05)
                continue
            if "--metrics-bind" in self.argv and self._scraper is None:
                url = f"http://{self.argv[self.argv.index('--metrics-bind') + 1]}/metrics"
                self._scraper = threading.Thread(target=self._scrape, args=(url,), daemon=True)
                self._scraper.start()
            return None
        return f"port {port} did not accept connections within {timeout_s:.0f} s"

    def _tree(self) -> list[int]:
        """PIDs of the live server tree (root first); remembers descendants for `stop`."""
        if self._proc is None:
            return []
        children = _children_map()
        tree, todo = [], [self._proc.pid]
        while todo:
            pid = todo.pop()
            tree.append(pid)
            todo.extend(children.get(pid, []))
        for pid in tree[1:]:
            fields = _read_stat(pid)
            if fields is not None:
                self._descendants.setdefault(pid, _start_time(fields))
        return tree

    def cpu_seconds(self) -> float:
        """CPU seconds used so far by the whole server tree (user + system, incl. children)."""
        ticks = 0
        for pid in self._tree():
            fields = _read_stat(pid)
            if fields is not None:
                ticks += _cpu_ticks(fields)
        return ticks / _CLK_TCK

    def output_head(self, lines: int = 8) -> str:
        """The first lines the server wrote to stdout/stderr."""
        if self._log is not None:
            self._log.flush()
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[:lines])

    def _live_descendants(self) -> list[int]:
        """Recorded descendants that still run (not zombies) and are still the same process."""
        live = []
        for pid, started in self._descendants.items():
            fields = _read_stat(pid)
            if fields is not None and _start_time(fields) == started and fields[0] != "Z":
                live.append(pid)
        return live

    def stop(self) -> str | None:
        """SIGTERM, wait up to 10 s, then SIGKILL; return a note if it had to be killed."""
        if self._proc is None:
            return None
        note: str | None = None
        self._scraping.set()
        if self._scraper is not None:
            self._scraper.join(10)
        self._tree()  # record descendants before the root goes away
        deadline = time.monotonic() + STOP_GRACE_S
        if self._proc.poll() is None:
            try:
                os.kill(self._proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self._proc.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                note = f"did not exit within {STOP_GRACE_S:.0f} s of SIGTERM; SIGKILLed"
                try:
                    os.kill(self._proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self._proc.wait()
        # Workers may still be finishing their own shutdown after the root has gone (Hypercorn's
        # parent does not always outlive its worker): give them what is left of the grace
        # period (at least 2 s), then SIGKILL by PID, but only while the PID still names the
        # same process (same start time).
        leftovers = self._live_descendants()
        wait_until = max(deadline, time.monotonic() + 2.0)
        while leftovers and time.monotonic() < wait_until:
            time.sleep(0.05)
            leftovers = self._live_descendants()
        for pid in leftovers:
            try:
                os.kill(pid, signal.SIGKILL)
                killed = f"SIGKILLed child {pid} still running after the server exited"
                note = f"{note}; {killed}" if note else killed
            except ProcessLookupError:
                pass
        if self._log is not None:
            self._log.close()
            self._log = None
        return note
