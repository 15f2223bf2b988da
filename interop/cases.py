"""The test cases, the result type and what a client adapter is told about the server.

A case names a claim; each client adapter decides how to check it with its own tool and
must return :class:`Result` with ``ok=True`` only when the *evidence* (a body's sha256,
the ``http_version`` the server reported, a flag in the client's own TLS state) shows
the claim. Cases that need machinery we do not have yet carry ``not_ready``: the matrix
shows them as n/a with that reason for every client.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field, replace

from .relay import Impairment

# Sizes of the files the transfer cases fetch: tiny, one packet, a few windows, big.
TRANSFER_SIZES = (0, 1_000, 123_457, 2_000_000, 10_000_000)
# Concurrent requests on one connection in the multiplexing case (quicserve allows 100).
MULTIPLEX_STREAMS = 60
MULTIPLEX_SIZE = 20_000
UPLOAD_SIZE = 5 * 1024 * 1024

# The impairment cases (run through interop/relay.py). Loss and corruption are per
# direction; "handshake" means the first 8 datagrams of each direction.
ONE_WAY_DELAY = 0.15  # longrtt: RTT 300 ms
LONGRTT_SIZE = 1_000_000
IMPAIRED_SIZE = 3_000_000  # transferloss, transfercorruption, blackhole
HANDSHAKE_CONNECTIONS = 10  # handshakeloss, handshakecorruption: short connections, each new
BLACKHOLE_AFTER = 500_000  # server->client bytes before the blackhole starts
BLACKHOLE_SECONDS = 2.5
AMPLIFICATION_WATCH = 5.0  # seconds of watching the server after the client's first flight
NEW_ADDRESS = "127.0.0.2"  # addressrebinding: the relay's new source address
IMPAIRMENTS: dict[str, Impairment] = {
    "longrtt": Impairment(delay=ONE_WAY_DELAY),
    "handshakeloss": Impairment(drop=(0.3, 0.3), phase="handshake"),
    "transferloss": Impairment(drop=(0.03, 0.03), phase="transfer"),
    "handshakecorruption": Impairment(corrupt=(0.3, 0.3), phase="handshake"),
    "transfercorruption": Impairment(corrupt=(0.03, 0.03), phase="transfer"),
    "blackhole": Impairment(),
    "amplificationlimit": Impairment(pass_to_server=1),
    "addressrebinding": Impairment(),
}


def impairment(case: str, attempt: int = 0) -> Impairment:
    """The relay settings of ``case``, seeded from its name (reproducible runs)."""
    return replace(IMPAIRMENTS[case], seed=zlib.crc32(case.encode()) + attempt)


# The ws-* cases: after the server's first message ``proto:<http_version>`` the client sends
# WS_TEXT and WS_BINARY, each must come back byte for byte, then ``close:<code>`` asks the
# app to close with WS_CLOSE_CODE, which the client must see in the server's close frame.
WS_TEXT = "héllo, interop ✓"
WS_BINARY = bytes(range(256)) * 4
WS_CLOSE_CODE = 4321

# The wt-* cases mirror the QUIC interop runner's WebTransport suite (handshake, then
# transfer-{unidirectional,bidirectional,datagram}-{receive,send}: "receive" is server to
# client, "send" client to server) on the app's /wtx session (interop/app.py says its
# small protocol). Stream files are /files/<size> content; datagrams carry its prefixes.
WT_TRANSFER_SIZES = (100 * 1024, 500 * 1024, 250 * 1024, 1024 * 1024, 2 * 1024 * 1024)
WT_DATAGRAM_SIZES = tuple(600 + 2 * i for i in range(200))
#: What a client offers in WT-Available-Protocols, and what the app supports: the client's
#: first that the app supports (quicserve-interop) must be chosen.
WT_CLIENT_PROTOCOLS = ("x-unknown", "quicserve-interop", "interop-b")
WT_SERVER_PROTOCOLS = ("interop-b", "quicserve-interop")
WT_PROTOCOL_WANT = "quicserve-interop"
WT_CASES = (
    "wt-handshake",
    "wt-transfer-unidirectional-receive",
    "wt-transfer-unidirectional-send",
    "wt-transfer-bidirectional-receive",
    "wt-transfer-bidirectional-send",
    "wt-transfer-datagram-receive",
    "wt-transfer-datagram-send",
)


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
        # Network impairment cases of the QUIC interop runner, through interop/relay.py.
        Case("longrtt", f"RTT {2 * ONE_WAY_DELAY * 1000:.0f} ms: handshake and 1 MB transfer"),
        Case("handshakeloss", f"{HANDSHAKE_CONNECTIONS} connections, 30 % handshake loss"),
        Case("transferloss", "3 MB transfer with 3 % loss each way"),
        Case("handshakecorruption", f"{HANDSHAKE_CONNECTIONS} connections, 30 % corrupted"),
        Case("transfercorruption", "3 MB transfer with 3 % corrupted datagrams each way"),
        Case("blackhole", f"3 MB transfer survives a {BLACKHOLE_SECONDS} s blackhole"),
        Case("amplificationlimit", "unvalidated client: server sends <= 3x what it received"),
        Case("addressrebinding", f"relay moves to {NEW_ADDRESS} mid-connection; /client follows"),
        Case("connectionmigration", "client migrates (new CID, new port) mid-connection"),
        Case("ws-h1", "WebSocket over HTTP/1.1 (Upgrade): echo text+binary, close code"),
        Case("ws-h2", "WebSocket over HTTP/2 (RFC 8441): echo text+binary, close code"),
        Case("ws-h3", "WebSocket over HTTP/3 (RFC 9220): echo text+binary, close code"),
        Case("webtransport", "WebTransport (draft-02) over h3: datagram and bidi stream echoed"),
        # The QUIC interop runner's WebTransport suite (see WT_CASES above).
        Case("wt-handshake", "WT session; WT-Protocol is the client's first the app supports"),
        Case("wt-transfer-unidirectional-receive", "5 files on server-opened uni streams, sha256"),
        Case("wt-transfer-unidirectional-send", "5 files on client uni streams, server's sha256"),
        Case("wt-transfer-bidirectional-receive", "5 files on server-opened bidi streams, sha256"),
        Case("wt-transfer-bidirectional-send", "5 files on client bidi streams, server's sha256"),
        Case("wt-transfer-datagram-receive", "200 datagrams server to client, each checked"),
        Case("wt-transfer-datagram-send", "200 datagrams client to server, each acknowledged"),
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
