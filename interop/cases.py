"""The test cases, the result type and what a client adapter is told about the server.

A case names a claim; each client adapter decides how to check it with its own tool and
must return :class:`Result` with ``ok=True`` only when the *evidence* (a body's sha256,
the ``http_version`` the server reported, a flag in the client's own TLS state) shows
the claim. Cases that need machinery we do not have yet carry ``not_ready``: the matrix
shows them as n/a with that reason for every client.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Sizes of the files the transfer cases fetch: tiny, one packet, a few windows, big.
TRANSFER_SIZES = (0, 1_000, 123_457, 2_000_000, 10_000_000)
# Concurrent requests on one connection in the multiplexing case (quicserve allows 100).
MULTIPLEX_STREAMS = 60
MULTIPLEX_SIZE = 20_000
UPLOAD_SIZE = 5 * 1024 * 1024

NOT_YET = "not implemented yet (needs the impairing UDP relay, interop/relay.py)"
NO_WS = "quicserve has no WebSocket/WebTransport yet (issue 4)"


@dataclass(frozen=True, slots=True)
class Case:
    """One interop case."""

    name: str
    claim: str
    profile: str = "default"  # which server the case runs against (see run.PROFILES)
    not_ready: str | None = None


CASES: dict[str, Case] = {
    c.name: c
    for c in [
        Case("handshake", "one request over HTTP/3 succeeds (status 200, body checked)"),
        Case("transfer", f"files of {len(TRANSFER_SIZES)} sizes over HTTP/3, sha256 of each body"),
        Case("multiplexing", f"{MULTIPLEX_STREAMS} concurrent streams on one connection"),
        Case("http3", "the server saw http_version 3 (body of /proto)"),
        Case("retry", "server with --quic-retry always: client saw a Retry", "retry"),
        Case("resumption", "second connection resumed with a session ticket"),
        Case("zerortt", "server with --quic-0rtt: request in 0-RTT, early data accepted", "0rtt"),
        Case("v2", "client offers only QUIC v2: negotiated version is v2"),
        Case("chacha20", "client offers only TLS_CHACHA20_POLY1305_SHA256: handshake ok"),
        Case("keyupdate", "client updates keys mid-transfer; transfer completes"),
        Case("ipv6", "request over ::1 (server reports client ::1)"),
        Case("portrebinding", "relay changes its source port mid-connection; /client follows"),
        Case("h1-get", "GET over HTTP/1.1 (TLS): client and server say 1.1"),
        Case("h2-get", "GET over HTTP/2 (TLS, ALPN h2): client and server say 2"),
        Case("h2c", "HTTP/2 prior knowledge on the cleartext port: server says 2"),
        Case("altsvc", "TLS response advertises h3; a browser moves from h2 to h3"),
        Case("post-streaming", "5 MiB upload streamed, sha256 echoed back matches"),
        # Network impairment cases of the QUIC interop runner.
        Case("longrtt", "handshake and transfer with a long RTT", not_ready=NOT_YET),
        Case("handshakeloss", "handshake with 30 % loss", not_ready=NOT_YET),
        Case("transferloss", "transfer with 2 % loss", not_ready=NOT_YET),
        Case("handshakecorruption", "handshake with corrupted packets", not_ready=NOT_YET),
        Case("transfercorruption", "transfer with corrupted packets", not_ready=NOT_YET),
        Case("blackhole", "transfer survives a temporary blackhole", not_ready=NOT_YET),
        Case("amplificationlimit", "server respects 3x amplification", not_ready=NOT_YET),
        Case("addressrebinding", "client IP address changes mid-connection", not_ready=NOT_YET),
        Case(
            "connectionmigration", "migration to the server's preferred address", not_ready=NOT_YET
        ),
        Case("websocket", "WebSocket over h1/h2/h3", not_ready=NO_WS),
        Case("webtransport", "WebTransport over h3", not_ready=NO_WS),
    ]
}


@dataclass(slots=True)
class Result:
    """What one (client, case) run showed. ``evidence`` says what was checked."""

    ok: bool
    reason: str = ""
    evidence: str = ""


def fail(reason: str, evidence: str = "") -> Result:
    """A failed run with a one-line reason."""
    return Result(False, reason, evidence)


def passed(evidence: str) -> Result:
    """A run whose evidence showed the claim."""
    return Result(True, "", evidence)


@dataclass(slots=True)
class Server:
    """Where one running quicserve listens, and how to trust it."""

    backend: str
    profile: str
    h3_port: int
    https_port: int
    http_port: int
    ca_certfile: str
    certfile: str
    h3_port6: int | None = None  # QUIC on [::1], when the machine has IPv6 loopback
    workdir: str = ""
    extra: dict[str, str] = field(default_factory=dict)
