"""RFC 6455 behaviours that the standard conformance suites (Autobahn|Testsuite sections
1-7 and 9) check, driven with hand-made frames at an echo app over HTTP/1.1, HTTP/2 and
HTTP/3, on every backend and on both framing engines (``--ws-engine`` wsproto and
websockets: the ``ws_engine`` fixture).

Each case sends frames exactly as written (``raw_frame``: any opcode, reserved bits,
fragmentation, masking) and states what a conforming server does: echo the message,
answer a ping with the same payload, or fail the connection with a given close code.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import anyio
import pytest
from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Pong, TextMessage

from clientkit.ws import WSClient, raw_frame
from quicserve.certs import DevCertificate

from .wsapp import WSApp, serve, tunnel_for

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
    anyio_backend: object, ws_engine: str, transport: str, tls_files: DevCertificate
) -> None:
    """Every case on one server, each on a fresh WebSocket (one server start per
    transport and backend keeps the 40-odd cases quick)."""
    app = WSApp()
    failures = []
    async with serve(app, tls_files, ws_engine=ws_engine) as srv:
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


#: (name, valid frames, the invalid frame after them, the close code it earns). The
#: Autobahn 5.x/6.x shapes: a message, then a protocol error in the same read.
FAIL_AFTER_MESSAGES = [
    ("text then reserved opcode", (raw_frame(TEXT, b"hello"),), raw_frame(0x3, b"x"), 1002),
    ("binary then rsv bit", (raw_frame(BINARY, b"\x00\x01"),), raw_frame(TEXT, b"x", rsv=2), 1002),
    (
        "fragmented text then a stray continuation",
        (raw_frame(TEXT, b"frag", fin=False), raw_frame(CONT, b"ment")),
        raw_frame(CONT, b"x"),
        1002,
    ),
    (
        "two messages then a fragmented ping",
        (raw_frame(TEXT, b"one"), raw_frame(BINARY, b"two")),
        raw_frame(PING, b"p", fin=False),
        1002,
    ),
    ("text then invalid UTF-8", (raw_frame(TEXT, b"ok"),), raw_frame(TEXT, b"\xff"), 1007),
    ("text then unmasked", (raw_frame(TEXT, b"ok"),), raw_frame(TEXT, b"x", mask=False), 1002),
]


def _echo_of(frames: tuple[bytes, ...]) -> list[str | bytes]:
    """The messages the echo app sends back for ``frames`` (decoded by a wsproto
    server, so the expectation is not hand-written)."""
    server = Connection(ConnectionType.SERVER)
    server.receive_data(b"".join(frames))
    messages: list[str | bytes] = []
    text: list[str] = []
    binary: list[bytes] = []
    for event in server.events():
        if isinstance(event, TextMessage):
            text.append(event.data)
            if event.message_finished:
                messages.append("".join(text))
                text.clear()
        elif isinstance(event, BytesMessage):
            binary.append(bytes(event.data))
            if event.message_finished:
                messages.append(b"".join(binary))
                binary.clear()
    return messages


async def _echo_then_close(client: WSClient, echoes: list[str | bytes], code: int) -> str:
    """What came back, as a string that is "ok" when it is: the echoes, in order, then
    the close frame with ``code``, then the end of the stream."""
    seen: list[str] = []
    try:
        for echo in echoes:
            event = await client.next_event(5)
            seen.append(repr(event)[:60])
            if not isinstance(event, TextMessage | BytesMessage) or event.data != echo:
                return f"expected echo {echo!r}; got {seen}"
        event = await client.next_event(5)
        seen.append(repr(event)[:60])
        if not isinstance(event, CloseConnection) or event.code != code:
            return f"expected close {code}; got {seen}"
        if await client.next_event(5) is not None:
            return "data after the close frame"
    except TimeoutError:
        return f"timed out; got {seen}"
    return "ok"


@pytest.mark.parametrize("transport", ["h1", "h2", "h3"])
async def test_failure_after_a_message_in_the_same_read_comes_after_its_echo(
    anyio_backend: object, ws_engine: str, transport: str, tls_files: DevCertificate
) -> None:
    """Autobahn's "strict" behaviour: valid messages then an invalid frame in one write
    (one TCP segment, DATA frame or QUIC packet). The app gets the messages and its
    echoes go out; only then does the server fail the WebSocket (1002, or 1007)."""
    app = WSApp()
    failures = []
    async with serve(app, tls_files, ws_engine=ws_engine) as srv:
        for name, frames, bad, code in FAIL_AFTER_MESSAGES:
            async with tunnel_for(transport, srv, tls_files, "/echo") as tunnel:
                client = WSClient(tunnel)
                await client.raw(b"".join(frames) + bad)
                outcome = await _echo_then_close(client, _echo_of(frames), code)
                if outcome != "ok":
                    failures.append(f"{name}: {outcome}")
        with anyio.fail_after(5):
            while app.finished < len(FAIL_AFTER_MESSAGES):
                await anyio.sleep(0.01)
    assert not failures, "\n".join(failures)
    assert all(d[1] in (1002, 1007) for d in app.disconnects), app.disconnects


@pytest.mark.parametrize("transport", ["h1", "h2", "h3"])
async def test_failure_while_the_app_answers_waits_for_its_answer(
    anyio_backend: object, ws_engine: str, transport: str, tls_files: DevCertificate
) -> None:
    """The invalid frame arrives in a later read, while the app is still answering the
    message it took (it sleeps 0.3 s first): the answer still goes out before the
    close frame."""
    app = WSApp()
    async with serve(app, tls_files, ws_engine=ws_engine) as srv:
        async with tunnel_for(transport, srv, tls_files, "/slow-echo") as tunnel:
            client = WSClient(tunnel)
            await client.raw(raw_frame(TEXT, b"hello"))
            await anyio.sleep(0.05)
            await client.raw(raw_frame(0x3, b"x"))
            outcome = await _echo_then_close(client, ["hello"], 1002)
        with anyio.fail_after(5):
            while app.finished < 1:
                await anyio.sleep(0.01)
    assert outcome == "ok", outcome
    assert app.disconnects == [("/slow-echo", 1002, app.disconnects[0][2])]


async def test_a_held_failure_does_not_wait_for_an_app_that_never_answers(
    anyio_backend: object, ws_engine: str, tls_files: DevCertificate
) -> None:
    """The app takes a message and then works on it for 2 s without calling
    ``receive``: the close frame the next frame earned is sent after
    ``ws_ping_timeout`` (0.3 s here), not when the app is done."""
    app = WSApp()
    async with serve(app, tls_files, ws_engine=ws_engine, ws_ping_timeout=0.3) as srv:
        async with tunnel_for("h1", srv, tls_files, "/take-one") as tunnel:
            client = WSClient(tunnel)
            await client.raw(raw_frame(TEXT, b"hello") + raw_frame(0x3, b"x"))
            started = anyio.current_time()
            event = await client.next_event(5)
            waited = anyio.current_time() - started
            assert isinstance(event, CloseConnection) and event.code == 1002, event
            # (The TCP connection itself closes when the app call ends.)
            assert await client.next_event(5) is None
        with anyio.fail_after(5):
            while app.finished < 1:
                await anyio.sleep(0.01)
    assert 0.2 < waited < 1.5, waited
    assert app.disconnects == [("/take-one", 1002, app.disconnects[0][2])]
