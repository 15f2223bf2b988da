"""HTTP/1.1 framing edge cases a front proxy and quicserve could read differently.

Each case is a raw request whose bounds are ambiguous (request smuggling, RFC 9112
§2.2, §3.2, §5, §6, §7.1; CVE-2025-43859 and the 2025 "funky chunks" reports), sent on a
raw socket with a second request pipelined behind it. quicserve must answer 400 (501 for
a coding it does not know), close the connection, and never serve the request behind:
the app counts calls to ``/smuggled``, and there must be none. Valid shapes next to them
are served, with the request behind them, so the strictness costs nothing legitimate.

Also pinned here: on the cleartext port (HTTP/1.1 and prior-knowledge h2c), bytes that
look like the HTTP/2 preface but are not are read as an HTTP/1.1 request and answered
with an HTTP/1.1 error (400, or 505 for ``HTTP/2.0``), then the connection closes.
"""

from __future__ import annotations

import socket
import time
import urllib.request

from quicserve.certs import DevCertificate

from ..test_cli import Spawn
from .harness import MAX_RSS_GROWTH_MIB, Prober, serve

SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
CHUNKED = b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
CL = b"POST /echo HTTP/1.1\r\nHost: x\r\n"

#: name -> (request, status). SMUGGLED follows each one on the same connection.
REFUSED: dict[str, tuple[bytes, int]] = {
    # Chunk lines (RFC 9112 §7.1): CRLF only, the grammar, a size that fits 63 bits.
    "chunk-size-bare-lf": (CHUNKED + b"5\nhello\r\n0\r\n\r\n", 400),
    "chunk-ext-bare-lf": (CHUNKED + b"5;a\nhello\r\n0\r\n\r\n", 400),
    "chunk-ext-bare-cr": (CHUNKED + b"5;a\rb\r\nhello\r\n0\r\n\r\n", 400),
    "chunk-ext-quoted-unclosed": (CHUNKED + b'5;a="x\r\nhello\r\n0\r\n\r\n', 400),
    "chunk-ext-quoted-cr": (CHUNKED + b'5;a="x\ry"\r\nhello\r\n0\r\n\r\n', 400),
    "chunk-ext-quoted-lf": (CHUNKED + b'5;a="x\ny"\r\nhello\r\n0\r\n\r\n', 400),
    "chunk-ext-no-name": (CHUNKED + b"5;\r\nhello\r\n0\r\n\r\n", 400),
    "chunk-ext-garbage": (CHUNKED + b"5;a b\r\nhello\r\n0\r\n\r\n", 400),
    "chunk-ext-nul": (CHUNKED + b"5;a\x00\r\nhello\r\n0\r\n\r\n", 400),
    "chunk-size-overflow": (CHUNKED + b"10000000000000005\r\nhello\r\n0\r\n\r\n", 400),
    "chunk-size-64-bit": (CHUNKED + b"8000000000000005\r\nhello\r\n0\r\n\r\n", 400),
    "chunk-size-leading-space": (CHUNKED + b" 5\r\nhello\r\n0\r\n\r\n", 400),
    "chunk-size-trailing-space": (CHUNKED + b"5 \r\nhello\r\n0\r\n\r\n", 400),
    "chunk-size-0x": (CHUNKED + b"0x5\r\nhello\r\n0\r\n\r\n", 400),
    "chunk-size-negative": (CHUNKED + b"-5\r\nhello\r\n0\r\n\r\n", 400),
    "chunk-data-bare-lf": (CHUNKED + b"5\r\nhello\n0\r\n\r\n", 400),
    "chunk-data-no-crlf": (CHUNKED + b"5\r\nhello0\r\n\r\n", 400),
    "chunk-data-too-long": (CHUNKED + b"5\r\nhelloXX\r\n0\r\n\r\n", 400),
    "last-chunk-bare-lf": (CHUNKED + b"5\r\nhello\r\n0\n\r\n", 400),
    # Trailer sections: the head's rules, and no field needed before the content.
    "trailer-bare-lf": (CHUNKED + b"5\r\nhello\r\n0\r\nX-T: 1\n\r\n", 400),
    "trailer-obs-fold": (CHUNKED + b"5\r\nhello\r\n0\r\nX-T: 1\r\n 2\r\n\r\n", 400),
    "trailer-content-length": (CHUNKED + b"5\r\nhello\r\n0\r\nContent-Length: 5\r\n\r\n", 400),
    "trailer-transfer-encoding": (
        CHUNKED + b"5\r\nhello\r\n0\r\nTransfer-Encoding: chunked\r\n\r\n",
        400,
    ),
    "trailer-host": (CHUNKED + b"5\r\nhello\r\n0\r\nHost: evil\r\n\r\n", 400),
    # Heads: CRLF only, no obs-fold (§5.2), no whitespace before the colon (§5.1).
    "obs-fold": (b"GET /echo HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n", 400),
    "obs-fold-tab": (b"GET /echo HTTP/1.1\r\nHost: x\r\nX-A: a\r\n\tb\r\n\r\n", 400),
    "obs-fold-hides-te": (
        CL + b"Content-Length: 5\r\nX-A: a\r\n Transfer-Encoding: chunked\r\n\r\nhello",
        400,
    ),
    "space-before-colon": (CL + b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n", 400),
    "tab-before-colon": (CL + b"Content-Length\t: 5\r\n\r\nhello", 400),
    "request-line-bare-lf": (b"GET /echo HTTP/1.1\nHost: x\r\n\r\n", 400),
    "header-bare-lf": (b"GET /echo HTTP/1.1\r\nHost: x\nX-A: b\r\n\r\n", 400),
    "head-all-bare-lf": (b"GET /echo HTTP/1.1\nHost: x\n\n", 400),
    "head-end-bare-lf": (b"GET /echo HTTP/1.1\r\nHost: x\r\n\n", 400),
    "leading-bare-lf": (b"\nGET /echo HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "header-bare-cr": (b"GET /echo HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n", 400),
    "header-name-bare-cr": (b"GET /echo HTTP/1.1\r\nHost: x\r\nX\r-A: a\r\n\r\n", 400),
    "header-nul": (b"GET /echo HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n", 400),
    # Content-Length (RFC 9110 §8.6): digits, once.
    "cl-plus": (CL + b"Content-Length: +5\r\n\r\nhello", 400),
    "cl-minus": (CL + b"Content-Length: -5\r\n\r\nhello", 400),
    "cl-hex": (CL + b"Content-Length: 0x5\r\n\r\nhello", 400),
    "cl-comma-same": (CL + b"Content-Length: 5, 5\r\n\r\nhello", 400),
    "cl-comma-different": (CL + b"Content-Length: 5, 0\r\n\r\nhello", 400),
    "cl-twice-same": (CL + b"Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello", 400),
    "cl-twice-different": (CL + b"Content-Length: 0\r\nContent-Length: 5\r\n\r\nhello", 400),
    "cl-space-inside": (CL + b"Content-Length: 5 0\r\n\r\nhello", 400),
    "cl-huge": (CL + b"Content-Length: 100000000000000000005\r\n\r\nhello", 400),
    "cl-and-te": (
        CL + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    # Transfer-Encoding (RFC 9112 §6.1): chunked last, once, and only in HTTP/1.1.
    "te-chunked-identity": (
        CL + b"Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
        400,
    ),
    "te-gzip": (CL + b"Transfer-Encoding: gzip\r\n\r\n0\r\n\r\n", 400),
    "te-identity": (CL + b"Transfer-Encoding: identity\r\n\r\n", 400),
    "te-chunked-twice": (
        CL + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        501,
    ),
    "te-vertical-tab": (CL + b"Transfer-Encoding:\x0bchunked\r\n\r\n0\r\n\r\n", 400),
    "te-in-http-1.0": (
        b"POST /echo HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    # Host and target (RFC 9112 §3.2).
    "host-missing": (b"GET /echo HTTP/1.1\r\n\r\n", 400),
    "host-twice": (b"GET /echo HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", 400),
    "host-with-path": (b"GET /echo HTTP/1.1\r\nHost: x/y\r\n\r\n", 400),
    "host-with-userinfo": (b"GET /echo HTTP/1.1\r\nHost: u@x\r\n\r\n", 400),
    "host-with-space": (b"GET /echo HTTP/1.1\r\nHost: x y\r\n\r\n", 400),
    "host-two-ports": (b"GET /echo HTTP/1.1\r\nHost: x:1:2\r\n\r\n", 400),
    "absolute-form-other-host": (b"GET http://evil/echo HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "absolute-form-userinfo": (b"GET http://u@x/echo HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "target-relative": (b"GET echo HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "target-asterisk-get": (b"GET * HTTP/1.1\r\nHost: x\r\n\r\n", 400),
}

#: Valid shapes close to the refused ones: served, and so is the request behind them.
ACCEPTED: dict[str, bytes] = {
    "chunk-ext-token": CHUNKED + b"5;a=b;c\r\nhello\r\n0\r\n\r\n",
    "chunk-ext-quoted": CHUNKED + b'5;a="b; \\"c\\""\r\nhello\r\n0\r\n\r\n',
    "chunk-size-upper-hex": CHUNKED + b"A\r\nhellohello\r\n0\r\n\r\n",
    "chunk-size-leading-zeros": CHUNKED + b"0005\r\nhello\r\n0\r\n\r\n",
    "trailer-allowed": CHUNKED + b"5\r\nhello\r\n0\r\nX-Checksum: 1\r\n\r\n",
    "te-case-insensitive": CL + b"Transfer-Encoding: Chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "te-with-spaces": CL + b"Transfer-Encoding:  chunked \r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "cl": CL + b"Content-Length: 5\r\n\r\nhello",
    "host-with-port": b"GET /echo HTTP/1.1\r\nHost: x:8080\r\n\r\n",
    "host-ipv6": b"GET /echo HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n",
    "absolute-form-same-host": b"GET http://x/echo HTTP/1.1\r\nHost: x\r\n\r\n",
}

AFTER = b"GET /after HTTP/1.1\r\nHost: x\r\n\r\n"


def _exchange(port: int, data: bytes, timeout: float = 3.0) -> tuple[bytes, bool]:
    """Send ``data`` at once; read until the server closes (True) or ``timeout``."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        deadline = time.monotonic() + timeout
        chunks: list[bytes] = []
        while (remaining := deadline - time.monotonic()) > 0:
            sock.settimeout(remaining)
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                return b"".join(chunks), False
            except ConnectionResetError:
                return b"".join(chunks), True
            if not chunk:
                return b"".join(chunks), True
            chunks.append(chunk)
            if data.endswith(AFTER) and b"".join(chunks).count(b"HTTP/1.1 200 ") == 2:
                return b"".join(chunks), False  # both answered, keep-alive
        return b"".join(chunks), False


def _count(port: int, path: str) -> tuple[int, int, int]:
    """``(running, peak, calls)``: app calls to ``path``, from the app itself."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/count?{path}", timeout=5) as r:
        running, peak, calls = r.read().split()
    return int(running), int(peak), int(calls)


def test_ambiguous_framing_is_refused_and_closes(
    spawn: Spawn, backend: str, h1_engine: str, tls_files: DevCertificate
) -> None:
    wrong: list[str] = []
    with (
        serve(spawn, backend, tls_files, "--http1-engine", h1_engine) as target,
        Prober(target, ("h1",)) as prober,
    ):
        for name, (request, status) in REFUSED.items():
            reply, closed = _exchange(target.http, request + SMUGGLED)
            expected = b"HTTP/1.1 %d " % status
            if not reply.startswith(expected) or reply.count(b"HTTP/1.") != 1 or not closed:
                wrong.append(f"{name}: closed={closed} {reply[:80]!r}")
        smuggled = _count(target.http, "/smuggled")
    prober.check()
    assert not wrong, "\n".join(wrong)
    assert smuggled == (0, 0, 0), "a request behind a refused one reached the app"
    assert target.rss_growth_mib() < MAX_RSS_GROWTH_MIB


def test_valid_framing_is_served_with_the_request_behind_it(
    spawn: Spawn, backend: str, h1_engine: str, tls_files: DevCertificate
) -> None:
    wrong: list[str] = []
    with serve(spawn, backend, tls_files, "--http1-engine", h1_engine) as target:
        for name, request in ACCEPTED.items():
            reply, _ = _exchange(target.http, request + AFTER)
            if reply.count(b"HTTP/1.1 200 ") != 2:
                wrong.append(f"{name}: {reply[:200]!r}")
    assert not wrong, "\n".join(wrong)


def test_an_invalid_http2_preface_on_cleartext_is_an_http1_request(
    spawn: Spawn, backend: str, h1_engine: str, tls_files: DevCertificate
) -> None:
    """The cleartext port tells prior-knowledge h2c from HTTP/1.1 by the exact 24-byte
    preface (RFC 9113 §3.4). Anything else, even ``PRI * HTTP/2.0`` with a wrong tail,
    is parsed as HTTP/1.1 and answered with an HTTP/1.1 error, not an HTTP/2 GOAWAY:
    505 for a request line that says HTTP/2.0 (h11 would take it), 400 otherwise."""
    prefaces = [
        (b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n", 505),
        (b"PRI * HTTP/2.0\r\n\r\n\r\n", 505),
        (b"PRI * HTTP/2.0\n\nSM\n\n", 400),
        (b"PRI * HTTP/1.1\r\nHost: x\r\n\r\nSM\r\n\r\n", 400),
        (b"GET / HTTP/3.0\r\nHost: x\r\n\r\n", 505),
    ]
    settings = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
    with serve(spawn, backend, tls_files, "--http1-engine", h1_engine) as target:
        for preface, status in prefaces:
            reply, closed = _exchange(target.http, preface + settings)
            assert reply.startswith(b"HTTP/1.1 %d " % status) and closed, (preface, reply)
            assert reply.count(b"HTTP/1.1 ") == 1, (preface, reply)
