"""RFC 6455 behaviours that the standard conformance suites (Autobahn|Testsuite sections
1-7 and 9) check, driven with hand-made frames at an echo app over HTTP/1.1, HTTP/2 and
HTTP/3, on every backend.

Each case sends frames exactly as written (``raw_frame``: any opcode, reserved bits,
fragmentation, masking) and states what a conforming server does: echo the message,
answer a ping with the same payload, or fail the connection with a given close code.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import anyio
import pytest
from wsproto.events import CloseConnection, Pong

from quicserve.certs import DevCertificate

from .wsclient import WSApp, WSClient, raw_frame, serve, tunnel_for

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

TEXT, BINARY, CONT, CLOSE, PING, PONG = 0x1, 0x2, 0x0, 0x8, 0x9, 0xA

KOSME = "κόσμε".encode()  # multi-byte UTF-8, split mid-character below


def close_payload(code: int, reason: bytes = b"") -> bytes:
    return struct.pack("!H", code) + reason


@dataclass(frozen=True)
class Case:
    """Frames to send and what must come back: a message, a pong, or a close code."""

    name: str
    frames: tuple[bytes, ...]
    echo: str | bytes | None = None
    pong: bytes | None = None
    close: int | None = None


CASES = [
    # Framing and fragmentation (Autobahn 1, 5).
    Case("empty text", (raw_frame(TEXT, b""),), echo=""),
    Case("empty binary", (raw_frame(BINARY, b""),), echo=b""),
    Case(
        "fragmented text",
        (
            raw_frame(TEXT, b"Hel", fin=False),
            raw_frame(CONT, b"lo ", fin=False),
            raw_frame(CONT, b"world"),
        ),
        echo="Hello world",
    ),
    Case(
        "1000 fragments",
        (
            raw_frame(BINARY, b"\x00" * 64, fin=False),
            *(raw_frame(CONT, bytes([i % 256]) * 64, fin=False) for i in range(1, 999)),
            raw_frame(CONT, b"\xff" * 64),
        ),
        echo=b"".join(bytes([i % 256]) * 64 for i in range(999)) + b"\xff" * 64,
    ),
    Case("64 KiB frame", (raw_frame(BINARY, b"\x5a" * 65536),), echo=b"\x5a" * 65536),
    # Control frames (Autobahn 2, 5.6-5.20).
    Case("ping payload echoed", (raw_frame(PING, b"\x00\xffping"),), pong=b"\x00\xffping"),
    Case("ping with 125 bytes", (raw_frame(PING, b"p" * 125),), pong=b"p" * 125),
    Case("ping with 126 bytes", (raw_frame(PING, b"p" * 126),), close=1002),
    Case("fragmented ping", (raw_frame(PING, b"ab", fin=False),), close=1002),
    Case(
        "ping inside a fragmented message",
        (
            raw_frame(TEXT, b"frag", fin=False),
            raw_frame(PING, b"mid"),
            raw_frame(CONT, b"mented"),
        ),
        pong=b"mid",
        echo="fragmented",
    ),
    Case("unsolicited pong is ignored", (raw_frame(PONG, b"x"), raw_frame(TEXT, b"ok")), echo="ok"),
    # Reserved bits and opcodes (Autobahn 3, 4).
    *(Case(f"rsv={rsv}", (raw_frame(TEXT, b"x", rsv=rsv),), close=1002) for rsv in (1, 2, 4)),
    *(
        Case(f"reserved opcode {op:#x}", (raw_frame(op, b"x"),), close=1002)
        for op in (0x3, 0x7, 0xB, 0xF)
    ),
    Case("continuation without a start", (raw_frame(CONT, b"x"),), close=1002),
    Case(
        "new message inside a fragmented one",
        (raw_frame(TEXT, b"a", fin=False), raw_frame(TEXT, b"b")),
        close=1002,
    ),
    Case("unmasked client frame", (raw_frame(TEXT, b"x", mask=False),), close=1002),
    # UTF-8 (Autobahn 6).
    Case(
        "UTF-8 split across fragments",
        (raw_frame(TEXT, KOSME[:3], fin=False), raw_frame(CONT, KOSME[3:])),
        echo="κόσμε",
    ),
    Case(
        "invalid UTF-8",
        (raw_frame(TEXT, b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80"),),
        close=1007,
    ),
    Case(
        # Fail fast: the first fragment is already invalid; no more fragments come.
        "invalid UTF-8 fails fast",
        (raw_frame(TEXT, b"ok\xc0\xaf", fin=False),),
        close=1007,
    ),
    # Closing handshake (Autobahn 7).
    Case("close 1000 echoed", (raw_frame(CLOSE, close_payload(1000, b"ok")),), close=1000),
    Case("close 4999 echoed", (raw_frame(CLOSE, close_payload(4999)),), close=4999),
    Case("close without a code", (raw_frame(CLOSE, b""),), close=1005),
    Case("close with a 1-byte payload", (raw_frame(CLOSE, b"\x03"),), close=1002),
    *(
        Case(
            f"close with invalid code {code}", (raw_frame(CLOSE, close_payload(code)),), close=1002
        )
        for code in (0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535)
    ),
    Case(
        "close reason not UTF-8",
        (raw_frame(CLOSE, close_payload(1000, b"\xff\xfe")),),
        close=1007,
    ),
    Case(
        "data after close is ignored",
        (raw_frame(CLOSE, close_payload(1000)), raw_frame(TEXT, b"late")),
        close=1000,
    ),
]


@pytest.mark.parametrize("transport", ["h1", "h2", "h3"])
async def test_rfc6455_behaviours(
    anyio_backend: object, transport: str, tls_files: DevCertificate
) -> None:
    """Every case on one server, each on a fresh WebSocket (one server start per
    transport and backend keeps the 40-odd cases quick)."""
    app = WSApp()
    failures = []
    async with serve(app, tls_files) as srv:
        for case in CASES:
            async with tunnel_for(transport, srv, tls_files, "/echo") as tunnel:
                client = WSClient(tunnel)
                for frame in case.frames:
                    await client.raw(frame)
                try:
                    outcome = await _outcome(client, case)
                except (TimeoutError, AssertionError) as exc:
                    outcome = f"{type(exc).__name__}: {exc}"
                if outcome != "ok":
                    failures.append(f"{case.name}: {outcome}")
        # Nothing was left behind: every WebSocket's app call ended.
        with anyio.fail_after(5):
            while app.finished < len(CASES):
                await anyio.sleep(0.01)
    assert not failures, "\n".join(failures)


async def _outcome(client: WSClient, case: Case) -> str:
    if case.pong is not None:
        event = await client.next_event(5)
        if not isinstance(event, Pong) or bytes(event.payload) != case.pong:
            return f"expected pong {case.pong[:20]!r}, got {event!r:.80}"
    if case.echo is not None:
        message = await client.receive_message(5)
        if message != case.echo:
            return f"expected echo {case.echo!r:.40}, got {message!r:.40}"
        await client.close(1000)
        code, _ = await client.expect_close(5)
        return "ok" if code == 1000 else f"close after echo: {code}"
    if case.close is not None:
        event = await client.next_event(5)
        if not isinstance(event, CloseConnection):
            return f"expected close {case.close}, got {event!r:.80}"
        if event.code != case.close:
            return f"expected close {case.close}, got {event.code} {event.reason!r}"
        # After its close frame the server ends the stream (and the TCP connection).
        if await client.next_event(5) is not None:
            return "data after the close frame"
    return "ok"
