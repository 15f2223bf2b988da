"""gtlsclient: ngtcp2's example HTTP/3 client (GnuTLS), run as a subprocess.

Evidence comes from the files it downloads (``--download``) and from its own packet log
(``Negotiated cipher suite is ...``, ``type=Retry``, 1-RTT packets received with
``k=1`` after ``Initiate key update``). Debian 12 ships ngtcp2 0.12.1, which predates
final QUIC v2 (RFC 9369), so it has no v2 column.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import tempfile
import time
from pathlib import Path

from clientkit import missing

from ..app import file_sha256
from ..cases import (
    BLACKHOLE_AFTER,
    BLACKHOLE_SECONDS,
    HANDSHAKE_CONNECTIONS,
    IMPAIRED_SIZE,
    LONGRTT_SIZE,
    MULTIPLEX_SIZE,
    MULTIPLEX_STREAMS,
    ONE_WAY_DELAY,
    TRANSFER_SIZES,
    Result,
    Server,
    fail,
    impairment,
    passed,
)
from ..relay import Relay

NAME = "gtlsclient"
CASES = {
    "handshake",
    "transfer",
    "multiplexing",
    "http3",
    "retry",
    "resumption",
    "zerortt",
    "chacha20",
    "keyupdate",
    "ipv6",
    "portrebinding",
    "longrtt",
    "handshakeloss",
    "transferloss",
    "handshakecorruption",
    "transfercorruption",
    "blackhole",
    "connectionmigration",
}
UNSUPPORTED = {
    "ws-h3": "ngtcp2's example client cannot send an extended CONNECT (RFC 9220)",
    "v2": "ngtcp2 0.12.1 (Debian 12) predates final QUIC v2 (RFC 9369): -v 0x6b3343cf times out",
    "amplificationlimit": "checked with aioquic only: a server-side limit, any client's "
    "first flight does",
    "addressrebinding": "gtlsclient opens every request stream at once, so no /client "
    "request can follow the relay's move (aioquic covers it)",
    "*": "HTTP/3-only client",
}
CHACHA = "NORMAL:-VERS-ALL:+VERS-TLS1.3:-CIPHER-ALL:+CHACHA20-POLY1305"


def available() -> str | None:
    return missing("gtlsclient")


def supports(case: str) -> bool:
    return case in CASES


def _run(
    server: Server,
    paths: list[str],
    *options: str,
    host: str = "127.0.0.1",
    download: Path,
    port: int | None = None,
) -> str:
    port = port or server.h3_port
    authority = "[::1]" if host == "::1" else "localhost"
    done = subprocess.run(
        [
            "gtlsclient",
            "--exit-on-all-streams-close",
            "--no-http-dump",
            "--timeout=30s",
            f"--download={download}",
            *options,
            host,
            str(port),
            *(f"https://{authority}:{port}{p}" for p in paths),
        ],
        capture_output=True,
        timeout=80,
        check=False,
    )
    log = done.stdout.decode(errors="replace") + done.stderr.decode(errors="replace")
    if done.returncode != 0:
        raise RuntimeError(f"gtlsclient exit {done.returncode}: {log.strip()[-150:]}")
    return log


def _files_ok(download: Path, sizes: list[int]) -> str | None:
    for size in sizes:
        got = download / str(size)
        if not got.exists():
            return f"/files/{size}: not downloaded"
        if hashlib.sha256(got.read_bytes()).hexdigest() != file_sha256(size):
            return f"/files/{size}: {got.stat().st_size} bytes, sha256 mismatch"
    return None


def _handshake_bytes(log: str) -> int:
    """Bytes of the server's Handshake packets: the Certificate dominates a full handshake."""
    return sum(int(n) for n in re.findall(r"pkt rx .*type=Handshake len=(\d+)", log))


def _moved(log: str, size: int, d: Path, nat: bool) -> Result:
    """Evidence for a gtlsclient local-address change: the file came in on the new port."""
    problem = _files_ok(d, [size])
    if problem:
        return fail(problem)
    new = re.search(r"Local address is now \[[^]]*\]:(\d+)", log)
    old = re.search(r"Sent packet: local=\[[^]]*\]:(\d+)", log)
    if not new or not old or new.group(1) == old.group(1):
        return fail("gtlsclient did not change its local port")
    on_new = sum(
        int(n)
        for n in re.findall(rf"Received packet: local=\[[^]]*\]:{new.group(1)} .* (\d+) bytes", log)
    )
    validated = "Path validation against path" in log and "succeeded" in log
    if on_new < size:
        return fail(f"only {on_new} B arrived on the new port {new.group(1)}")
    if not nat and not validated:
        return fail("no successful path validation in gtlsclient's log")
    what = "NAT rebinding (no client path validation)" if nat else "migration, path validated"
    return passed(
        f"one connection; port {old.group(1)} -> {new.group(1)} ({what}); "
        f"{on_new} B received on the new port; {size} B sha256 ok"
    )


def _still_serving(server: Server, d: Path) -> str | None:
    """After corruption: the server answers a fresh, unimpaired connection."""
    _run(server, ["/proto"], download=d)
    body = (d / "proto").read_bytes() if (d / "proto").exists() else b""
    return None if body == b"3" else f"server no longer answers directly: /proto {body!r}"


def _impaired(case: str, server: Server, d: Path) -> Result:
    """The relay cases: gtlsclient through interop/relay.py, checked with its counters."""
    if case in ("handshakeloss", "handshakecorruption"):
        hit = 0
        for attempt in range(HANDSHAKE_CONNECTIONS):
            sub = d / str(attempt)
            sub.mkdir()
            with Relay(server.h3_port, impairment(case, attempt)) as relay:
                _run(server, ["/files/1000"], download=sub, port=relay.port)
            problem = _files_ok(sub, [1000])
            if problem:
                return fail(f"connection {attempt}: {problem}")
            stats = relay.stats
            if case == "handshakeloss":
                hit += stats.c2s.dropped + stats.s2c.dropped
            else:
                hit += stats.c2s.corrupted + stats.s2c.corrupted
        what = "dropped" if case == "handshakeloss" else "corrupted"
        if hit == 0:
            return fail(f"relay {what} nothing: the case proved nothing")
        if case == "handshakecorruption" and (problem := _still_serving(server, d)):
            return fail(problem)
        return passed(
            f"{HANDSHAKE_CONNECTIONS} gtlsclient connections, /files/1000 sha256 ok on each; "
            f"relay {what} {hit} handshake datagrams"
            + ("; server still answers directly" if case == "handshakecorruption" else "")
        )
    size = LONGRTT_SIZE if case == "longrtt" else IMPAIRED_SIZE
    with Relay(server.h3_port, impairment(case)) as relay:
        if case == "blackhole":
            relay.when(BLACKHOLE_AFTER, lambda: relay.blackhole(BLACKHOLE_SECONDS))
        started = time.monotonic()
        _run(server, [f"/files/{size}"], download=d, port=relay.port)
        seconds = time.monotonic() - started
    problem = _files_ok(d, [size])
    if problem:
        return fail(f"{problem}; relay: {relay.stats}")
    stats = relay.stats
    hit = {
        "longrtt": stats.s2c.delayed,
        "transferloss": stats.c2s.dropped + stats.s2c.dropped,
        "transfercorruption": stats.c2s.corrupted + stats.s2c.corrupted,
        "blackhole": stats.s2c.blackholed,
    }[case]
    if hit == 0:
        return fail(f"the relay did not impair anything: {stats}")
    if case == "transfercorruption" and (problem := _still_serving(server, d)):
        return fail(problem)
    if case == "longrtt" and seconds < 4 * ONE_WAY_DELAY:
        # At least the handshake and the request: two round trips of 2 x ONE_WAY_DELAY.
        return fail(f"done in {seconds:.2f}s, less than 2 RTTs: relay not in path")
    served = "; server still answers directly" if case == "transfercorruption" else ""
    return passed(f"{size} B sha256 ok in {seconds:.1f}s; relay: {stats}{served}")


RELAY_CASES = {
    "longrtt",
    "handshakeloss",
    "transferloss",
    "handshakecorruption",
    "transfercorruption",
    "blackhole",
}


def run(case: str, server: Server) -> Result:
    with tempfile.TemporaryDirectory(dir=server.workdir or None) as tmp:
        d = Path(tmp)
        if case in RELAY_CASES:
            return _impaired(case, server, d)
        if case in ("portrebinding", "connectionmigration"):
            # Change the local port 100 ms after the handshake and only then open the
            # request stream, so the whole response must follow the client to its new port.
            nat = case == "portrebinding"
            size = 2_000_000
            log = _run(
                server,
                [f"/files/{size}"],
                "--change-local-addr=100ms",
                "--delay-stream=400ms",
                *(["--nat-rebinding"] if nat else []),
                download=d,
            )
            return _moved(log, size, d, nat)
        if case in ("handshake", "http3", "retry", "chacha20"):
            options = ["--ciphers", CHACHA] if case == "chacha20" else []
            log = _run(server, ["/proto"], *options, download=d)
            body = (d / "proto").read_bytes() if (d / "proto").exists() else b""
            if body != b"3":
                return fail(f"/proto body {body!r}")
            if case == "retry":
                if "type=Retry" not in log:
                    return fail("no Retry packet in gtlsclient's log")
                return passed("gtlsclient log shows a Retry received; then /proto = 3")
            if case == "chacha20":
                suite = re.search(r"Negotiated cipher suite is (\S+)", log)
                if not suite or suite.group(1) != "CHACHA20-POLY1305":
                    return fail(f"negotiated {suite.group(1) if suite else None}")
                return passed(
                    "gtlsclient: Negotiated cipher suite is CHACHA20-POLY1305; /proto = 3"
                )
            return passed("downloaded /proto = 3 (server saw HTTP/3)")
        if case in ("transfer", "multiplexing"):
            sizes = (
                list(TRANSFER_SIZES)
                if case == "transfer"
                else [MULTIPLEX_SIZE + i for i in range(MULTIPLEX_STREAMS)]
            )
            _run(server, [f"/files/{s}" for s in sizes], download=d)
            problem = _files_ok(d, sizes)
            if problem:
                return fail(problem)
            how = "" if case == "transfer" else ", all streams opened at once on one connection"
            return passed(f"sha256 of {len(sizes)} downloads ok{how}")
        if case == "keyupdate":
            size = 10_000_000
            log = _run(server, [f"/files/{size}"], "--key-update=50ms", download=d)
            problem = _files_ok(d, [size])
            if problem:
                return fail(problem)
            updated = "Initiate key update" in log
            new_phase = len(re.findall(r"pkt rx .*type=1RTT k=1", log))
            if not updated or new_phase == 0:
                return fail(
                    f"key update initiated={updated}, 1-RTT packets rx with k=1: {new_phase}"
                )
            return passed(
                f"client initiated key update; {new_phase} packets rx with k=1; sha256 ok"
            )
        if case == "ipv6":
            if server.h3_port6 is None:
                return fail("no IPv6 loopback on this machine")
            _run(server, ["/client"], host="::1", port=server.h3_port6, download=d)
            seen = (d / "client").read_text()
            if '"::1"' not in seen or '"3"' not in seen:
                return fail(f"server saw {seen[:80]}")
            return passed(f"over ::1, server saw {seen[:60]}")
        if case in ("resumption", "zerortt"):
            state = ["--session-file", str(d / "session"), "--tp-file", str(d / "tp")]
            first = _run(server, ["/proto"], *state, download=d)
            if not (d / "session").exists():
                return fail("no session ticket saved after the first connection")
            (d / "proto").unlink(missing_ok=True)
            second = _run(server, ["/early"], *state, download=d)
            full, resumed = _handshake_bytes(first), _handshake_bytes(second)
            early = (d / "early").read_text() if (d / "early").exists() else "?"
            if case == "resumption":
                # No ticket-resumption flag in gtlsclient's output: a PSK handshake has no
                # Certificate, so the server's Handshake flight shrinks by about 1 KiB.
                if not resumed or resumed > full - 500:
                    return fail(f"server Handshake bytes {full} then {resumed}: not resumed")
                return passed(f"server Handshake flight {full} -> {resumed} bytes (no Certificate)")
            if "type=0RTT" not in second:
                return fail("gtlsclient sent no 0-RTT packets")
            if "Early data was rejected" in second or early != "1":
                return fail(f"0-RTT sent but rejected (app saw /early = {early})")
            return passed("0-RTT packets sent, /early = 1 (the app saw early-data: 1)")
    return fail(f"unsupported case {case}")
