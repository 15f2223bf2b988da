"""aioquic's HTTP/3 client: the QUIC-level cases (Retry, resumption, 0-RTT, v2, ...)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

from clientkit.h3 import H3Request

from ..app import file_sha256
from ..cases import (
    AMPLIFICATION_WATCH,
    BLACKHOLE_AFTER,
    BLACKHOLE_SECONDS,
    HANDSHAKE_CONNECTIONS,
    IMPAIRED_SIZE,
    LONGRTT_SIZE,
    MULTIPLEX_SIZE,
    MULTIPLEX_STREAMS,
    NEW_ADDRESS,
    ONE_WAY_DELAY,
    TRANSFER_SIZES,
    UPLOAD_SIZE,
    WT_CASES,
    Result,
    Server,
    fail,
    impairment,
    passed,
)

NAME = "aioquic"
UNSUPPORTED = {
    "*": "HTTP/3-only client (aioquic has no HTTP/1.1 or HTTP/2)",
}
CASES = {
    "handshake",
    "transfer",
    "multiplexing",
    "http3",
    "retry",
    "resumption",
    "zerortt",
    "v2",
    "chacha20",
    "keyupdate",
    "ipv6",
    "portrebinding",
    "post-streaming",
    "longrtt",
    "handshakeloss",
    "transferloss",
    "handshakecorruption",
    "transfercorruption",
    "blackhole",
    "amplificationlimit",
    "addressrebinding",
    "connectionmigration",
    "ws-h3",
    "webtransport",
    *WT_CASES,
}


def available() -> str | None:
    try:
        import aioquic  # noqa: F401
    except ImportError:
        return "pip install aioquic"
    return None


def supports(case: str) -> bool:
    return case in CASES


def _sha(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def _check_files(responses: list[Any], sizes: list[int]) -> str | None:
    for size, response in zip(sizes, responses, strict=True):
        if response.status != 200:
            return f"/files/{size}: status {response.status} (reset {response.reset})"
        if _sha(response.body) != file_sha256(size):
            return f"/files/{size}: got {len(response.body)} bytes, sha256 mismatch"
    return None


def run(case: str, server: Server) -> Result:
    from aioquic.quic.packet import QuicProtocolVersion
    from aioquic.tls import CipherSuite

    from clientkit.h3 import h3_fetch

    def go(port: int = server.h3_port, requests: list[H3Request] | None = None, **kw: Any) -> Any:
        kw.setdefault("timeout", 60.0)
        return h3_fetch(port, requests or [H3Request("/proto")], cafile=server.ca_certfile, **kw)

    if case in WT_CASES or case == "webtransport":
        from . import wt_session

        return wt_session.run(case, server)
    if case == "ws-h3":
        from . import ws_tunnel

        return ws_tunnel.run(case, server)
    if case in ("handshake", "http3"):
        out = go()
        body = out.responses[0].body
        if out.responses[0].status != 200 or body != b"3":
            return fail(f"/proto: status {out.responses[0].status}, body {body[:40]!r}")
        return passed(f"/proto over QUIC v{out.version:#x}: 200, server http_version {body!r}")
    if case == "transfer":
        sizes = list(TRANSFER_SIZES)
        out = go(requests=[H3Request(f"/files/{s}") for s in sizes])
        problem = _check_files(out.responses, sizes)
        return fail(problem) if problem else passed(f"sha256 of {sizes} bytes all match")
    if case == "multiplexing":
        sizes = [MULTIPLEX_SIZE + i for i in range(MULTIPLEX_STREAMS)]
        out = go(requests=[H3Request(f"/files/{s}") for s in sizes], concurrent=True)
        problem = _check_files(out.responses, sizes)
        if problem:
            return fail(problem)
        return passed(f"{len(sizes)} concurrent streams on one connection, every sha256 ok")
    if case == "retry":
        out = go()
        if not out.retry_seen:
            return fail("no Retry packet seen by the client")
        if out.responses[0].body != b"3":
            return fail(f"request after Retry failed: {out.responses[0]}")
        return passed("client saw Retry (retry_source_connection_id set), then /proto = 3")
    if case in ("resumption", "zerortt"):
        first = go()
        if first.session_ticket is None:
            return fail("no session ticket on the first connection")
        if case == "zerortt" and first.session_ticket.max_early_data_size is None:
            return fail("the ticket does not allow early data")
        second = go(
            requests=[H3Request("/files/5000"), H3Request("/early")],
            session_ticket=first.session_ticket,
            concurrent=True,
        )
        body_ok = _sha(second.responses[0].body) == file_sha256(5000)
        early_seen = second.responses[1].body
        if not second.resumed:
            return fail("second connection was not resumed")
        if not body_ok:
            return fail("resumed connection: body sha256 mismatch")
        if case == "zerortt":
            if not second.early_data_accepted:
                return fail("server did not accept early data")
            if early_seen != b"1":
                return fail(f"early data accepted but the app saw /early = {early_seen!r}")
            return passed("resumed; early_data_accepted; app saw early-data: 1; sha256 ok")
        return passed("second connection resumed with the ticket; /files/5000 sha256 ok")
    if case == "v2":
        out = go(version=QuicProtocolVersion.VERSION_2)
        if out.version != QuicProtocolVersion.VERSION_2:
            return fail(f"negotiated version {out.version:#x}, not v2")
        if out.responses[0].body != b"3":
            return fail("request over v2 failed")
        return passed(f"negotiated {out.version:#x} (QUIC v2), /proto = 3")
    if case == "chacha20":
        out = go(cipher_suites=[CipherSuite.CHACHA20_POLY1305_SHA256])
        if out.cipher_suite != CipherSuite.CHACHA20_POLY1305_SHA256:
            return fail(f"negotiated cipher {out.cipher_suite!r}")
        if out.responses[0].body != b"3":
            return fail("request failed")
        return passed("negotiated TLS_CHACHA20_POLY1305_SHA256, /proto = 3")
    if case == "keyupdate":
        size = 10_000_000
        out = go(
            requests=[H3Request(f"/files/{size}")],
            during_first=lambda client: client._quic.request_key_update(),
        )
        problem = _check_files(out.responses, [size])
        if problem:
            return fail(problem)
        before, _requested, after = out.key_phases
        if before == after:
            return fail(f"key phase did not change ({out.key_phases})")
        return passed(f"key phase {before} -> {after} mid-transfer; {size} bytes sha256 ok")
    if case == "ipv6":
        if server.h3_port6 is None:
            return fail("no IPv6 loopback on this machine")
        out = go(port=server.h3_port6, requests=[H3Request("/client")], host="::1")
        seen = json.loads(out.responses[0].body)
        if seen["client"][0] != "::1" or seen["http_version"] != "3":
            return fail(f"server saw {seen}")
        return passed(f"server saw client {seen['client']} over HTTP/{seen['http_version']}")
    if case == "portrebinding":
        from ..relay import Relay

        with Relay(server.h3_port) as relay:
            out = go(
                port=relay.port,
                requests=[H3Request("/client"), H3Request("/files/2000000"), H3Request("/client")],
                after_first=lambda client: relay.rebind(),
            )
        first, transfer, last = out.responses
        problem = _check_files([transfer], [2_000_000])
        if problem:
            return fail(problem)
        seen = [json.loads(r.body)["client"][1] for r in (first, last)]
        if seen != relay.ports[:2]:
            return fail(f"server saw ports {seen}, relay used {relay.ports}")
        return passed(f"one connection; server saw client port {seen[0]} then {seen[1]}")
    if case in IMPAIRED:
        return IMPAIRED[case](case, server, go)
    if case == "post-streaming":
        payload = hashlib.sha512(b"upload").digest() * (UPLOAD_SIZE // 64)
        out = go(requests=[H3Request("/sha256", "POST", payload)])
        expected = f"{len(payload)} {_sha(payload)}".encode()
        if out.responses[0].body != expected:
            return fail(f"server echoed {out.responses[0].body[:80]!r}")
        return passed(f"HTTP/3 upload of {len(payload)} bytes, sha256 echoed back matches")
    return fail(f"unsupported case {case}")


# The impairment cases: each runs the client through interop/relay.py and checks both the
# result and the relay's counters (the impairment really happened).

Go = Callable[..., Any]


def _still_serving(go: Go) -> str | None:
    """After corruption: the server answers a fresh, unimpaired connection."""
    out = go()
    if out.responses[0].body != b"3":
        return f"server no longer answers directly: /proto {out.responses[0].body[:40]!r}"
    return None


def _longrtt(case: str, server: Server, go: Go) -> Result:
    from ..relay import Relay

    with Relay(server.h3_port, impairment(case)) as relay:
        out = go(port=relay.port, requests=[H3Request(f"/files/{LONGRTT_SIZE}")], timeout=80)
    problem = _check_files(out.responses, [LONGRTT_SIZE])
    if problem:
        return fail(problem)
    rtt = 2 * ONE_WAY_DELAY
    if out.handshake_seconds < rtt:
        return fail(f"handshake took {out.handshake_seconds:.3f}s < RTT {rtt}s: relay not in path")
    return passed(
        f"handshake {out.handshake_seconds:.2f}s >= RTT {rtt:.2f}s; {LONGRTT_SIZE} B sha256 ok; "
        f"relay: {relay.stats}"
    )


def _handshakes(case: str, server: Server, go: Go) -> Result:
    from ..relay import Relay

    hit = 0
    for attempt in range(HANDSHAKE_CONNECTIONS):
        with Relay(server.h3_port, impairment(case, attempt)) as relay:
            out = go(port=relay.port, requests=[H3Request("/files/1000")], timeout=30)
        problem = _check_files(out.responses, [1000])
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
    if case == "handshakecorruption" and (problem := _still_serving(go)):
        return fail(problem)
    return passed(
        f"{HANDSHAKE_CONNECTIONS} new connections, /files/1000 sha256 ok on each; relay {what} "
        f"{hit} handshake datagrams"
        + ("; server still answers directly" if case == "handshakecorruption" else "")
    )


def _transfer(case: str, server: Server, go: Go) -> Result:
    from ..relay import Relay

    with Relay(server.h3_port, impairment(case)) as relay:
        if case == "blackhole":
            relay.when(BLACKHOLE_AFTER, lambda: relay.blackhole(BLACKHOLE_SECONDS))
        out = go(port=relay.port, requests=[H3Request(f"/files/{IMPAIRED_SIZE}")], timeout=80)
    problem = _check_files(out.responses, [IMPAIRED_SIZE])
    if problem:
        return fail(f"{problem}; relay: {relay.stats}")
    stats = relay.stats
    hit = {
        "transferloss": stats.c2s.dropped + stats.s2c.dropped,
        "transfercorruption": stats.c2s.corrupted + stats.s2c.corrupted,
        "blackhole": stats.s2c.blackholed,
    }[case]
    if hit == 0:
        return fail(f"the relay did not impair anything: {stats}")
    if case == "transfercorruption" and (problem := _still_serving(go)):
        return fail(problem)
    return passed(f"{IMPAIRED_SIZE} B sha256 ok; relay: {stats}")


def _amplification(case: str, server: Server, go: Go) -> Result:
    from ..relay import Relay

    completed = False
    with Relay(server.h3_port, impairment(case)) as relay:
        try:
            go(port=relay.port, timeout=AMPLIFICATION_WATCH)
            completed = True
        except (TimeoutError, ConnectionError):
            pass
    stats = relay.stats
    if completed:
        return fail(f"handshake completed although client->server was cut: {stats}")
    received, sent = stats.c2s.bytes, stats.s2c.bytes
    if stats.c2s.dropped == 0 or sent == 0:
        return fail(f"no evidence (client sent nothing more, or server sent nothing): {stats}")
    ratio = sent / received
    verdict = (
        f"server got {received} B from the unvalidated client (1 datagram; "
        f"{stats.c2s.dropped} later ones withheld) and sent {sent} B in "
        f"{stats.s2c.forwarded} datagrams over {AMPLIFICATION_WATCH:.0f}s: ratio {ratio:.2f}"
    )
    # RFC 9000 §8.1: before validation, at most three times the bytes received.
    if ratio > 3:
        return fail(verdict + " > 3 (RFC 9000 §8.1)")
    return passed(verdict + " <= 3")


def _addressrebinding(case: str, server: Server, go: Go) -> Result:
    from ..relay import Relay

    with Relay(server.h3_port, impairment(case)) as relay:
        out = go(
            port=relay.port,
            requests=[H3Request("/client"), H3Request("/files/2000000"), H3Request("/client")],
            after_first=lambda client: relay.rebind(NEW_ADDRESS),
        )
    first, transfer, last = out.responses
    problem = _check_files([transfer], [2_000_000])
    if problem:
        return fail(problem)
    seen = [tuple(json.loads(r.body)["client"]) for r in (first, last)]
    if seen != relay.addresses[:2] or out.handshakes != 1:
        return fail(f"server saw {seen}, relay used {relay.addresses}, {out.handshakes} handshakes")
    return passed(
        f"one connection (1 handshake); server saw client {seen[0][0]}:{seen[0][1]} then "
        f"{seen[1][0]}:{seen[1][1]}; 2 MB sha256 ok in between"
    )


def _migration(case: str, server: Server, go: Go) -> Result:
    from clientkit.h3 import migrate

    out = go(
        requests=[H3Request("/client"), H3Request("/files/2000000"), H3Request("/client")],
        after_first=migrate,
    )
    first, transfer, last = out.responses
    problem = _check_files([transfer], [2_000_000])
    if problem:
        return fail(problem)
    moved = out.hook_result
    before, after = (json.loads(r.body)["client"][1] for r in (first, last))
    if moved["old_cid"] == moved["new_cid"]:
        return fail("the server issued no spare connection ID: aioquic could not switch CID")
    if out.handshakes != 1:
        return fail(f"{out.handshakes} handshakes: not one connection")
    if after != moved["port"] or before == after:
        return fail(f"server saw port {before} then {after}; client moved to {moved['port']}")
    return passed(
        f"one connection (1 handshake); peer CID {moved['old_cid'][:8]} -> "
        f"{moved['new_cid'][:8]}; server saw client port {before} then {after}; 2 MB sha256 ok"
    )


IMPAIRED: dict[str, Callable[[str, Server, Go], Result]] = {
    "longrtt": _longrtt,
    "handshakeloss": _handshakes,
    "handshakecorruption": _handshakes,
    "transferloss": _transfer,
    "transfercorruption": _transfer,
    "blackhole": _transfer,
    "amplificationlimit": _amplification,
    "addressrebinding": _addressrebinding,
    "connectionmigration": _migration,
}
