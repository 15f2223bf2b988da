"""WebTransport in every dialect a browser speaks, with aioquic's client (tests/wtclient.py).

* Each dialect (draft-02 as Chromium, draft-07, draft-13/14 as Safari, draft-15) completes a
  session: the server's SETTINGS carry every dialect's setting, the response carries the
  draft-02 header only for draft-02, the app sees the dialect in its scope, and a datagram
  and a unidirectional stream are echoed.
* Safari's needs: SETTINGS_WT_MAX_SESSIONS >= 1 and WT_INITIAL_* credit before its first
  stream; a client that sends only within the credit it was granted gets more
  (WT_MAX_DATA, WT_MAX_STREAMS) as the app reads, past several windows.
* WT_CLOSE_SESSION with a code and a reason, both ways; the session limit per connection
  (H3_REQUEST_REJECTED, the connection carries on).
* Attacks on the bounds: more streams or data than granted (WT_FLOW_CONTROL_ERROR), a
  capsule longer than its format (H3_MESSAGE_ERROR), a huge unknown capsule (skipped, not
  held), each ending only its own session. The sans-IO parser's own bounds are tested in
  the second half, without a server.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from aioquic.h3.connection import Setting
from aioquic.quic.events import StopSendingReceived

from quicserve.certs import DevCertificate
from quicserve.protocol.webtransport import (
    DRAFT02,
    DRAFT07,
    DRAFT14,
    DRAFT15,
    MAX_CAPSULE,
    SessionError,
    SessionState,
    StreamRefused,
    choose_dialect,
)

from .helpers import running_server, wait_for
from .test_metrics import scrape
from .wtclient import (
    CLOSE_SESSION,
    DATA_BLOCKED,
    H3_MESSAGE_ERROR,
    H3_REQUEST_REJECTED,
    MAX_DATA,
    MAX_STREAMS_UNI,
    STREAMS_BLOCKED_UNI,
    WT_BUFFERED_STREAM_REJECTED,
    WT_ENABLED,
    WT_FLOW_CONTROL_ERROR,
    WT_INITIAL_MAX_DATA,
    WT_INITIAL_MAX_STREAMS_BIDI,
    WT_INITIAL_MAX_STREAMS_UNI,
    WT_MAX_SESSIONS,
    WT_MAX_SESSIONS_07,
    WT_SESSION_GONE,
    WTSession,
    capsule,
    number,
    open_wt,
    varint,
)

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]


class DialectApp:
    """Echoes datagrams and streams (``/count``: answers each stream with its length;
    ``/close``: closes with code 7; ``/stall``: reads nothing for a second; ``/gate``:
    reads nothing until ``gate`` is set)."""

    def __init__(self) -> None:
        self.scopes: list[dict[str, Any]] = []
        self.disconnects: list[dict[str, Any]] = []
        self.finished = 0
        self.gate: Any = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.scopes.append(scope)
        try:
            assert (await receive())["type"] == "webtransport.connect"
            accept: dict[str, Any] = {"type": "webtransport.accept"}
            if scope["subprotocols"]:
                accept["subprotocol"] = scope["subprotocols"][-1]
            await send(accept)
            if scope["path"] == "/close":
                await send({"type": "webtransport.close", "code": 7, "reason": "bye"})
                return
            if scope["path"] == "/stall":
                await anyio.sleep(1)
            if scope["path"] == "/gate":
                await self.gate.wait()
            totals: dict[int, int] = {}
            while True:
                message = await receive()
                if message["type"] == "webtransport.disconnect":
                    self.disconnects.append(message)
                    return
                if message["type"] == "webtransport.datagram.receive":
                    data = b"echo " + message["data"]
                    await send({"type": "webtransport.datagram.send", "data": data})
                elif message["type"] == "webtransport.stream.receive":
                    stream = message["stream"]
                    if scope["path"] == "/count":
                        totals[stream] = totals.get(stream, 0) + len(message["data"])
                        reply = str(totals[stream]).encode() if message["end"] else b""
                    else:
                        reply = b"echo " + message["data"] if message["data"] else b""
                    if reply or message["end"]:
                        await send(
                            {
                                "type": "webtransport.stream.send",
                                "stream": stream,
                                "data": reply,
                                "end": message["end"],
                            }
                        )
        finally:
            self.finished += 1


def quic_port(srv: Any) -> int:
    return next(a.port for a in srv.addresses if a.transport == "udp")


def serve(app: Any, tls: DevCertificate, **options: Any) -> Any:
    return running_server(app, tls=tls, quic_bind=("127.0.0.1:0",), webtransport=True, **options)


async def send_uni(session: WTSession, data: bytes, end: bool = True) -> int:
    stream = session.h3.create_webtransport_stream(session.stream_id, is_unidirectional=True)
    session.quic.send_stream_data(stream, data, end_stream=end)
    await session.transmit()
    return stream


@pytest.mark.parametrize(
    ("dialect", "expected"),
    [("draft02", DRAFT02), ("draft07", DRAFT07), ("safari", DRAFT14), ("draft15", DRAFT15)],
)
async def test_each_dialect_completes_a_session(
    anyio_backend: object, tls_files: DevCertificate, dialect: str, expected: str
) -> None:
    app = DialectApp()
    async with serve(app, tls_files) as srv:
        async with open_wt(
            quic_port(srv), "/wt", cafile=str(tls_files.ca_certfile), dialect=dialect
        ) as session:
            settings = session.h3.received_settings
            assert settings is not None
            # Every dialect's setting, whichever this client speaks.
            assert settings[Setting.ENABLE_WEBTRANSPORT] == 1  # draft-02
            assert settings[Setting.H3_DATAGRAM] == 1
            assert settings[Setting.ENABLE_CONNECT_PROTOCOL] == 1
            assert settings[WT_MAX_SESSIONS_07] == 16  # draft-07 (default limit)
            assert settings[WT_MAX_SESSIONS] == 16  # draft-13/14
            assert settings[WT_ENABLED] == 1  # draft-15
            assert session.status == 200
            draft_header = session.header(b"sec-webtransport-http3-draft")
            assert draft_header == (b"draft02" if dialect == "draft02" else None)
            assert await session.send_datagram(b"dgram") == b"echo dgram"
            await send_uni(session, b"one way")
            await session.wait(lambda: any(ended for _, ended in session.wt_streams.values()))
            assert list(session.wt_streams.values()) == [(b"echo one way", True)]
            # The client ends the session (FIN on the CONNECT stream).
            await session.send(b"", end=True)
            await wait_for(lambda: app.finished == 1)
    assert app.scopes[0]["extensions"]["webtransport"] == {"dialect": expected}
    assert app.disconnects == [{"type": "webtransport.disconnect", "code": 0, "reason": ""}]


async def test_a_connect_before_the_clients_settings_waits_for_them(
    anyio_backend: object, tls_files: DevCertificate
) -> None:
    # d15 §3.1: the dialect and the client's limits are in its SETTINGS, so a CONNECT that
    # overtakes them is processed once they come (here 0.3 s later), not guessed at.
    app = DialectApp()
    async with serve(app, tls_files) as srv:
        async with open_wt(
            quic_port(srv),
            "/wt",
            cafile=str(tls_files.ca_certfile),
            dialect="safari",
            settings_after=0.3,
        ) as session:
            assert session.status == 200
            assert session.header(b"sec-webtransport-http3-draft") is None
            assert await session.send_datagram(b"late") == b"echo late"
    assert app.scopes[0]["extensions"]["webtransport"] == {"dialect": DRAFT14}


async def test_safari_gets_credit_before_its_first_stream_and_more_as_the_app_reads(
    anyio_backend: object, tls_files: DevCertificate
) -> None:
    # Safari opens no stream and sends no byte beyond the credit the server granted: here
    # 10 streams of 32 KiB against a 64 KiB / 4-stream window, so the session only
    # completes if WT_MAX_DATA and WT_MAX_STREAMS follow what the app reads.
    window, max_streams, size, count = 64 * 1024, 4, 32 * 1024, 10
    app = DialectApp()
    async with serve(
        app, tls_files, webtransport_max_data=window, webtransport_max_streams=max_streams
    ) as srv:
        async with open_wt(
            quic_port(srv), "/count", cafile=str(tls_files.ca_certfile), dialect="safari"
        ) as session:
            settings = session.h3.received_settings
            assert settings is not None
            assert settings[WT_MAX_SESSIONS] >= 1
            assert settings[WT_INITIAL_MAX_DATA] == window
            assert settings[WT_INITIAL_MAX_STREAMS_UNI] == max_streams
            assert settings[WT_INITIAL_MAX_STREAMS_BIDI] == max_streams
            assert session.status == 200
            sent = 0
            for index in range(1, count + 1):
                await session.wait(
                    lambda i=index: i <= session.granted(MAX_STREAMS_UNI, max_streams)
                )
                stream = session.h3.create_webtransport_stream(
                    session.stream_id, is_unidirectional=True
                )
                for _ in range(2):
                    half = size // 2
                    await session.wait(
                        lambda s=sent, h=half: s + h <= session.granted(MAX_DATA, window)
                    )
                    session.quic.send_stream_data(stream, b"s" * half)
                    sent += half
                    await session.transmit()
                session.quic.send_stream_data(stream, b"", end_stream=True)
                await session.transmit()
            await session.wait(
                lambda: sum(ended for _, ended in session.wt_streams.values()) == count
            )
            assert {data for data, _ in session.wt_streams.values()} == {str(size).encode()}
            assert session.granted(MAX_DATA, 0) >= count * size
            assert session.granted(MAX_STREAMS_UNI, 0) >= count


async def test_the_server_sends_within_the_clients_credit(
    anyio_backend: object, tls_files: DevCertificate
) -> None:
    # The client allows no unidirectional stream and 1000 bytes: the reply to its stream
    # waits (WT_STREAMS_BLOCKED), then stops at 1000 bytes (WT_DATA_BLOCKED), and all of it
    # arrives once the client raises WT_MAX_STREAMS and WT_MAX_DATA.
    app = DialectApp()
    limits = {WT_INITIAL_MAX_DATA: 1000, WT_INITIAL_MAX_STREAMS_UNI: 0}
    async with serve(app, tls_files) as srv:
        async with open_wt(
            quic_port(srv),
            "/wt",
            cafile=str(tls_files.ca_certfile),
            dialect="draft15",
            settings=limits,
        ) as session:
            await send_uni(session, b"z" * 3000)
            await session.wait(lambda: STREAMS_BLOCKED_UNI in dict(session.capsules()))
            assert number(dict(session.capsules())[STREAMS_BLOCKED_UNI]) == 0
            assert session.wt_streams == {}
            await session.send_capsule(MAX_STREAMS_UNI, varint(1))
            await session.wait(lambda: DATA_BLOCKED in dict(session.capsules()))
            assert number(dict(session.capsules())[DATA_BLOCKED]) == 1000
            await session.wait(lambda: sum(len(d) for d, _ in session.wt_streams.values()) == 1000)
            await anyio.sleep(0.1)  # nothing more comes without credit
            assert [len(d) for d, _ in session.wt_streams.values()] == [1000]
            await session.send_capsule(MAX_DATA, varint(100_000))
            await session.wait(lambda: any(ended for _, ended in session.wt_streams.values()))
            [(data, ended)] = session.wt_streams.values()
            assert ended and data.startswith(b"echo ")  # one echo per chunk received
            assert data.replace(b"echo ", b"") == b"z" * 3000


async def test_close_session_with_code_and_reason_both_ways(
    anyio_backend: object, tls_files: DevCertificate
) -> None:
    app = DialectApp()
    async with serve(app, tls_files) as srv:
        port, cafile = quic_port(srv), str(tls_files.ca_certfile)
        # The app closes: WT_CLOSE_SESSION (code 7, "bye"), then FIN (d15 §6).
        async with open_wt(port, "/close", cafile=cafile, dialect="draft15") as session:
            await session.wait(lambda: session.capsules() != [])
            assert session.capsules() == [(CLOSE_SESSION, (7).to_bytes(4, "big") + b"bye")]
        # The client closes: the app's disconnect carries its code and reason, and the
        # session's stream still open is stopped with WT_SESSION_GONE (d15 §6).
        async with open_wt(port, "/wt", cafile=cafile, dialect="safari") as session:
            open_stream = await send_uni(session, b"unfinished", end=False)
            await session.send_capsule(CLOSE_SESSION, (42).to_bytes(4, "big") + b"done")
            await wait_for(lambda: app.finished == 2)
            await session.wait(
                lambda: any(
                    isinstance(e, StopSendingReceived) and e.stream_id == open_stream
                    for e in session.h3.log
                )
            )
            [stop] = [
                e
                for e in session.h3.log
                if isinstance(e, StopSendingReceived) and e.stream_id == open_stream
            ]
            assert stop.error_code == WT_SESSION_GONE
    assert app.disconnects == [{"type": "webtransport.disconnect", "code": 42, "reason": "done"}]


async def test_sessions_per_connection_are_bounded_and_the_connection_survives(
    anyio_backend: object, tls_files: DevCertificate
) -> None:
    app = DialectApp()
    async with serve(app, tls_files, webtransport_max_sessions=2) as srv:
        async with open_wt(
            quic_port(srv), "/wt", cafile=str(tls_files.ca_certfile), dialect="draft15"
        ) as session:
            assert session.h3.received_settings[WT_MAX_SESSIONS] == 2  # type: ignore[index]
            second = await session.connect("/wt")
            assert await session.outcome(second) == 200
            third = await session.connect("/wt")
            assert await session.outcome(third) == -H3_REQUEST_REJECTED
            # One ends: there is room again, on the same connection.
            session.h3.send_data(second, b"", end_stream=True)
            await session.transmit()
            await wait_for(lambda: app.finished == 1)
            fourth = await session.connect("/wt")
            assert await session.outcome(fourth) == 200
            assert await session.send_datagram(b"still") == b"echo still"
    assert len(app.scopes) == 3


async def test_attacks_on_session_bounds_end_only_that_session(
    anyio_backend: object, tls_files: DevCertificate
) -> None:
    app = DialectApp()
    async with serve(
        app, tls_files, webtransport_max_streams=2, webtransport_max_data=16 * 1024
    ) as srv:
        port, cafile = quic_port(srv), str(tls_files.ca_certfile)
        async with open_wt(port, "/wt", cafile=cafile, dialect="draft15") as session:
            # More streams than WT_INITIAL_MAX_STREAMS_UNI allows.
            for _ in range(3):
                await send_uni(session, b"x", end=False)
            await session.wait(lambda: session.reset is not None)
            assert session.reset == WT_FLOW_CONTROL_ERROR
            # The connection carries on: a new session on it works.
            other = await session.connect("/wt")
            assert await session.outcome(other) == 200
        async with open_wt(port, "/stall", cafile=cafile, dialect="draft15") as session:
            # More bytes than WT_INITIAL_MAX_DATA, while the app reads nothing.
            await send_uni(session, b"y" * (20 * 1024))
            await session.wait(lambda: session.reset is not None)
            assert session.reset == WT_FLOW_CONTROL_ERROR
        async with open_wt(port, "/wt", cafile=cafile, dialect="safari") as session:
            # A WT_CLOSE_SESSION longer than its format allows (d15 §6: 4 + 1024 bytes).
            session.h3.send_data(
                session.stream_id, varint(CLOSE_SESSION) + varint(5000), end_stream=False
            )
            await session.transmit()
            await session.wait(lambda: session.reset is not None)
            assert session.reset == H3_MESSAGE_ERROR
        async with open_wt(port, "/wt", cafile=cafile, dialect="draft15") as session:
            # A huge capsule of an unknown type is skipped (RFC 9297 §3.2), never held.
            body = capsule(0x2A, b"u" * 300_000)
            for start in range(0, len(body), 30_000):
                await session.send(body[start : start + 30_000])
            assert await session.send_datagram(b"alive") == b"echo alive"
            assert session.reset is None


async def test_streams_are_bounded_without_flow_control_too(
    anyio_backend: object, tls_files: DevCertificate
) -> None:
    # A draft-02 client has no WT_MAX_STREAMS: streams past the bound (open, or finished
    # but not yet received by the app) are refused one by one (STOP_SENDING, where the
    # client still sends), and the session lives on.
    app = DialectApp()
    async with serve(app, tls_files, webtransport_max_streams=3) as srv:
        async with open_wt(
            quic_port(srv), "/stall", cafile=str(tls_files.ca_certfile), dialect="draft02"
        ) as session:
            streams = [await send_uni(session, b"x", end=False) for _ in range(5)]

            def stopped() -> dict[int, int]:
                return {
                    e.stream_id: e.error_code
                    for e in session.h3.log
                    if isinstance(e, StopSendingReceived)
                }

            await session.wait(lambda: len(stopped()) == 2)
            assert stopped() == dict.fromkeys(streams[3:], WT_BUFFERED_STREAM_REJECTED)
            # Once the app reads (after its second), the three others are answered.
            await session.wait(lambda: len(session.wt_streams) == 3)
            assert sorted(session.wt_streams.values()) == [(b"echo x", False)] * 3
            assert await session.send_datagram(b"on") == b"echo on"
            assert session.reset is None


async def test_tiny_frames_do_not_grow_the_apps_queue(
    anyio_backend: object, tls_files: DevCertificate
) -> None:
    # 2000 one-byte STREAM frames (one packet each) while the app reads nothing: they wait
    # as one message, not 2000 (each would cost far more than its byte).
    app = DialectApp()
    app.gate = anyio.Event()
    async with serve(app, tls_files) as srv:
        async with open_wt(
            quic_port(srv), "/gate", cafile=str(tls_files.ca_certfile), dialect="draft02"
        ) as session:
            stream = await send_uni(session, b"", end=False)
            for _ in range(2000):
                session.quic.send_stream_data(stream, b"t")
                await session.transmit()
            session.quic.send_stream_data(stream, b"", end_stream=True)
            await session.transmit()
            # Until QUIC has delivered it all (congestion control paces the packets).
            sender = session.quic._streams[stream].sender
            await session.wait(lambda: sender.is_finished)
            app.gate.set()
            await session.wait(lambda: any(ended for _, ended in session.wt_streams.values()))
            [(data, _)] = session.wt_streams.values()
            assert data.replace(b"echo ", b"") == b"t" * 2000
            assert data.count(b"echo ") <= 3  # one per message the app received


# -- the sans-IO session state, without a server ------------------------------------------


def test_choose_dialect() -> None:
    draft02 = [(b"sec-webtransport-http3-draft02", b"1")]
    assert choose_dialect("webtransport-h3", {}, []) == DRAFT15
    assert choose_dialect("webtransport", {WT_MAX_SESSIONS: 1}, []) == DRAFT14
    assert choose_dialect("webtransport", {WT_MAX_SESSIONS_07: 1}, []) == DRAFT07
    assert choose_dialect("webtransport", {WT_MAX_SESSIONS_07: 1}, draft02) == DRAFT02
    assert choose_dialect("webtransport", None, []) == DRAFT02
    # Flow-control settings without a version codepoint: newer than draft-07.
    assert choose_dialect("webtransport", {WT_INITIAL_MAX_DATA: 1}, []) == DRAFT14
    assert SessionState(DRAFT07, {WT_INITIAL_MAX_DATA: 1}, 10, 1).flow_control
    assert choose_dialect("websocket", {WT_MAX_SESSIONS: 1}, []) is None


def _state(**settings: int) -> SessionState:
    client = {WT_INITIAL_MAX_DATA: 1000, WT_INITIAL_MAX_STREAMS_UNI: 3}
    return SessionState(DRAFT15, {**client, **settings}, 1000, 4)


def test_unknown_capsules_are_skipped_with_a_bounded_buffer() -> None:
    state = _state()
    body = capsule(0x2A, b"z" * 1_000_000) + capsule(CLOSE_SESSION, b"\0\0\0\x05ok")
    for start in range(0, len(body), 997):
        state.feed(body[start : start + 997])
        assert len(state._buffer) <= MAX_CAPSULE
    assert state.close is not None and (state.close.code, state.close.reason) == (5, "ok")


def test_capsules_split_byte_by_byte_and_flow_control_rules() -> None:
    state = _state()
    for byte in capsule(MAX_DATA, varint(5000)):
        state.feed(bytes([byte]))
    assert state.send_credit() == 5000
    with pytest.raises(SessionError) as lowered:
        state.feed(capsule(MAX_DATA, varint(10)))
    assert lowered.value.code == WT_FLOW_CONTROL_ERROR
    with pytest.raises(SessionError) as http2_only:
        _state().feed(capsule(0x190B4D3E, varint(1)))  # WT_MAX_STREAM_DATA (d15 §5.4)
    assert http2_only.value.code == H3_MESSAGE_ERROR
    with pytest.raises(SessionError) as oversized:
        _state().feed(varint(CLOSE_SESSION) + varint(4 + 1025))
    assert oversized.value.code == H3_MESSAGE_ERROR
    # Without flow control (draft-07) its capsules are ignored (d15 §5.1).
    old = SessionState(DRAFT07, {WT_MAX_SESSIONS_07: 1}, 1000, 4)
    old.feed(capsule(MAX_DATA, varint(10)))
    assert not old.flow_control


def test_receive_limits_and_credit_follow_consumption() -> None:
    state = _state()
    state.stream_data(2, 600, False)  # client uni stream
    with pytest.raises(SessionError):
        state.stream_data(2, 401, False)  # 1001 > 1000
    state = _state()
    for stream in (2, 6, 10, 14):
        state.stream_data(stream, 10, True)
    with pytest.raises(SessionError):
        state.stream_data(18, 1, False)  # the fifth uni stream; the limit is 4
    state = _state()
    state.stream_data(2, 600, True)
    state.accepted = True
    state.stream_consumed(2, 600, True)  # past half the window: WT_MAX_DATA 1600
    assert capsule(MAX_DATA, varint(1600)) in state.take_output()
    assert state.max_data == 1600 and 2 not in state.streams
    # Without flow control: at most 4 (the window) open or unreceived streams of a kind.
    old = SessionState(DRAFT02, None, 1000, 4)
    for stream in (2, 6, 10, 14):
        old.stream_data(stream, 1, True)
    with pytest.raises(StreamRefused):
        old.stream_data(18, 1, True)
    old.stream_consumed(2, 1, True)  # the app took one: room for one more
    old.stream_data(18, 1, True)
    old.stream_data(0, 1, False)  # bidirectional streams are counted apart


async def test_sessions_are_counted_for_the_metrics(
    anyio_backend: object, tls_files: DevCertificate
) -> None:
    # --metrics-bind: WebTransport sessions have their own families (not the request
    # histogram), active while open and counted with their duration once ended.
    app = DialectApp()
    async with serve(app, tls_files, metrics_bind="127.0.0.1:0") as srv:
        assert srv.server.metrics is not None
        url = srv.server.metrics.url()
        active = 'quicserve_webtransport_sessions_active{network_protocol_version="3"}'
        for finished, dialect in enumerate(("draft02", "draft15"), start=1):
            async with open_wt(
                quic_port(srv), "/wt", cafile=str(tls_files.ca_certfile), dialect=dialect
            ) as session:
                assert await session.send_datagram(b"m") == b"echo m"
                during = await scrape(url)
                await session.send(b"", end=True)
                await wait_for(lambda n=finished: app.finished == n)
            assert during[active] == 1
        after = await scrape(url)
    ended = {k: v for k, v in after.items() if k.startswith("quicserve_webtransport_sessions_")}
    assert ended == {
        'quicserve_webtransport_sessions_active{network_protocol_version="3"}': 0,
        'quicserve_webtransport_sessions_total{network_protocol_version="3",'
        'http_response_status_code="200"}': 2,
    }
    duration = "quicserve_webtransport_session_duration_seconds_count"
    assert after[f'{duration}{{network_protocol_version="3",http_response_status_code="200"}}'] == 2
    # Sessions are not requests: the HTTP/3 request histogram has none of them.
    assert not any(k.startswith("http_server_request_duration_seconds") for k in after)
