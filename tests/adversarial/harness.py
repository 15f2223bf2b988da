"""The adversarial suite's harness: a real server process, a well-behaved prober, RSS.

Every attack test follows one shape::

    with serve(spawn, backend, tls) as target, Prober(target) as prober:
        attack(target)                     # raw sockets, raw frames, raw QUIC packets
    prober.check()                          # every probe answered, each within 1 s
    assert target.rss_growth_mib() < 50    # peak RSS (VmHWM) over the RSS after warm-up

The server is ``python -m quicserve`` in its own process (the real CLI, default limits
unless a test passes flags), so its memory is its own: ``VmHWM`` is its peak resident
set. It serves TLS on TCP (HTTP/1.1 and HTTP/2 by ALPN), plain HTTP on a second TCP
port, and HTTP/3 on UDP.
"""

from __future__ import annotations

import contextlib
import json
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx

from clientkit.h3 import H3Request, h3_fetch
from quicserve.certs import DevCertificate

from ..test_cli import ROOT, CLIServer, Spawn

APP = "tests.adversarial.app:app"

#: The bar of the issue: a concurrent well-behaved client keeps getting answers within
#: this many seconds, and the server's RSS grows by less than ``MAX_RSS_GROWTH_MIB``.
MAX_PROBE_LATENCY = 1.0
MAX_RSS_GROWTH_MIB = 50
#: One probe of a run may take longer than MAX_PROBE_LATENCY, but never longer than this:
#: on a 2-core machine that runs the attacker, the server and the prober at once, an
#: HTTP/3 probe whose handshake packet is lost waits out a QUIC probe timeout (~1 s) now
#: and then, while the probes before and after it take ~0.1 s. A server that stalls fails
#: every probe of the stall, so it cannot hide behind this.
MAX_OUTLIER_LATENCY = 3.0


def _status_kib(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise LookupError(key)


@dataclass
class Target:
    """A running server under attack and its ports."""

    server: CLIServer
    tls: DevCertificate
    https: int  # TLS on TCP: HTTP/1.1 and HTTP/2 by ALPN
    http: int  # plain TCP: HTTP/1.1 and prior-knowledge h2c
    quic: int  # UDP: HTTP/3
    baseline_kib: int = 0

    @property
    def pid(self) -> int:
        return self.server.proc.pid

    def rss_kib(self) -> int:
        return _status_kib(self.pid, "VmRSS")

    def peak_rss_kib(self) -> int:
        return _status_kib(self.pid, "VmHWM")

    def rss_growth_mib(self) -> float:
        """Peak RSS since start, over the RSS measured after warm-up, in MiB."""
        return (self.peak_rss_kib() - self.baseline_kib) / 1024

    def alive(self) -> bool:
        return self.server.proc.poll() is None

    def client_context(self, alpn: list[str]) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.tls.ca_certfile))
        context.set_alpn_protocols(alpn)
        return context


def warm_up(target: Target) -> None:
    """One request of each kind, so imports and first-use allocations are not counted."""
    probe_h1(target)
    probe_h2(target)
    probe_h3(target)


@contextlib.contextmanager
def serve(spawn: Spawn, backend: str, tls: DevCertificate, *extra: str) -> Iterator[Target]:
    """Start quicserve (TLS + plain TCP + QUIC) on ``backend``; warm it up; measure RSS."""
    server = spawn(
        APP,
        "--backend",
        backend,
        "--bind",
        "127.0.0.1:0",
        "--insecure-bind",
        "127.0.0.1:0",
        "--quic-bind",
        "127.0.0.1:0",
        "--certfile",
        str(tls.certfile),
        "--keyfile",
        str(tls.keyfile),
        "--lifespan",
        "off",
        "--no-access-log",
        # App calls an attack left behind (/hold, /stall, blocked sends) need not hold
        # the server's exit for the default 10 s; a test may pass its own value.
        "--graceful-timeout",
        "1",
        *extra,
    )
    ports = server.ports("http", "https")
    udp = int(server.wait_for(r"Listening on https://127\.0\.0\.1:(\d+) \(UDP\)")[1])
    target = Target(server, tls, https=ports["https"], http=ports["http"], quic=udp)
    warm_up(target)
    target.baseline_kib = target.rss_kib()
    yield target
    assert target.alive(), f"the server died under attack:\n{server.stderr}"


def probe_h1(target: Target, timeout: float = 5.0) -> None:
    response = httpx.get(f"http://127.0.0.1:{target.http}/", timeout=timeout)
    assert response.status_code == 200 and response.content == b"ok", response


def probe_h2(target: Target, timeout: float = 5.0) -> None:
    context = target.client_context(["h2"])
    with httpx.Client(http2=True, verify=context, timeout=timeout) as client:
        response = client.get(f"https://localhost:{target.https}/")
    assert response.http_version == "HTTP/2", response.http_version
    assert response.status_code == 200 and response.content == b"ok", response


def probe_h3(target: Target, timeout: float = 5.0) -> None:
    result = h3_fetch(
        target.quic, [H3Request("/")], cafile=str(target.tls.ca_certfile), timeout=timeout
    )
    response = result.responses[0]
    assert response.status == 200 and response.body == b"ok", response


PROBES = {"h1": probe_h1, "h2": probe_h2, "h3": probe_h3}


@dataclass
class Prober:
    """A well-behaved client in its own process (so it never competes with the attacker
    for this process's GIL): while the block runs it makes one request on a fresh
    connection per protocol (HTTP/1.1 plain, HTTP/2 over TLS, HTTP/3) every ``interval``
    seconds, and records how long each took or how it failed. One more round runs after
    the attack, so "after" is covered as well as "during"."""

    target: Target
    protocols: tuple[str, ...] = ("h1", "h2", "h3")
    interval: float = 0.2
    results: list[tuple[str, float, str | None]] = field(default_factory=list)
    _process: subprocess.Popen[str] | None = None

    def __enter__(self) -> Prober:
        target = self.target
        self._process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.adversarial.prober",
                json.dumps(
                    {
                        "http": target.http,
                        "https": target.https,
                        "quic": target.quic,
                        "ca": str(target.tls.ca_certfile),
                        "protocols": list(self.protocols),
                        "interval": self.interval,
                    }
                ),
            ],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        # Wait for its first round (one probe per protocol), so the attack starts against
        # a server the prober reached, after the first HTTP/3 probe has paid for its
        # process's first QUIC handshake.
        assert self._process.stdout is not None
        for _ in self.protocols:
            line = self._process.stdout.readline()
            assert line, "the prober process died"
            self.results.append(tuple(json.loads(line)))  # type: ignore[arg-type]
        return self

    def __exit__(self, *exc: object) -> None:
        process = self._process
        assert process is not None and process.stdin is not None
        time.sleep(self.interval)
        process.stdin.close()  # the prober runs one last round, then exits
        assert process.stdout is not None
        output = process.stdout.read()
        process.stdout.close()
        process.wait(60)
        for line in output.splitlines():
            self.results.append(tuple(json.loads(line)))  # type: ignore[arg-type]

    def check(self, max_latency: float = MAX_PROBE_LATENCY) -> None:
        """Every probe succeeded; all but at most one within ``max_latency`` seconds, and
        that one within ``MAX_OUTLIER_LATENCY``; there were some of each protocol."""
        for name in self.protocols:
            assert any(r[0] == name for r in self.results), f"no {name} probe ran"
        errors = [r for r in self.results if r[2] is not None]
        assert not errors, f"{len(errors)} of {len(self.results)} probes failed: {errors[:5]}"
        slow = [r for r in self.results if r[1] > max_latency]
        assert len(slow) <= 1 and all(r[1] <= MAX_OUTLIER_LATENCY for r in slow), (
            f"{len(slow)} of {len(self.results)} probes took over {max_latency} s: {slow[:5]}"
        )
