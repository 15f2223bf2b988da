"""WebTransport streams and datagrams the app opens and sends first, with aioquic's client.

* ``webtransport.stream.open`` gives the app a new stream's id (bidirectional or
  unidirectional, with optional first data), the client's reply on a server-opened
  bidirectional stream reaches the app as ``webtransport.stream.receive`` with that id,
  and a datagram sent before any arrived reaches the client; in every dialect.
* With session flow control the server opens no stream beyond the client's WT_MAX_STREAMS:
  it says WT_STREAMS_BLOCKED and waits for WT_MAX_STREAMS.
* The app cannot write into a stream that is not one of its session's open streams, and
  a session that ends resets the streams it left open (WT_SESSION_GONE, d15 §6).
"""

from __future__ import annotations

import time
from typing import Any

import anyio
import pytest
from aioquic.quic.events import StopSendingReceived, StreamReset

from clientkit.ws import open_wt_stream
from quicserve.certs import DevCertificate
from quicserve.protocol.webtransport import (
    DRAFT02,
    DRAFT07,
    DRAFT15,
    stream_error_from_h3,
    stream_error_to_h3,
)

from .helpers import running_server, wait_for
from .wtclient import (
    CLOSE_SESSION,
    MAX_STREAMS_BIDI,
    WT_INITIAL_MAX_STREAMS_BIDI,
    WT_SESSION_GONE,
    open_wt,
    varint,
)

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

STREAMS_BLOCKED_BIDI = 0x190B4D43


class OpeningApp:
    """Sends a datagram and opens one stream of each kind as soon as it accepts, then
    reports what the client sends back (``/bad``: tries to write to a stream it does not
    own; ``/leave``: opens a stream and ends the session without finishing it)."""

    def __init__(self) -> None:
        self.opened: dict[str, int] = {}
        self.received: dict[int, bytes] = {}
        self.ended: set[int] = set()
        self.errors: list[str] = []
        self.finished = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        try:
            await receive()
            await send({"type": "webtransport.accept"})
            await send({"type": "webtransport.datagram.send", "data": b"first"})
            bidi: dict[str, Any] = {"type": "webtransport.stream.open", "data": b"ping"}
            await send(bidi)
            self.opened["bidi"] = bidi["stream"]
            uni: dict[str, Any] = {
                "type": "webtransport.stream.open",
                "unidirectional": True,
                "data": b"one way",
                "end": True,
            }
            await send(uni)
            self.opened["uni"] = uni["stream"]
            if scope["path"] == "/bad":
                for stream in (uni["stream"], uni["stream"] + 4):
                    try:
                        await send({"type": "webtransport.stream.send", "stream": stream})
                    except RuntimeError as exc:
                        self.errors.append(str(exc))
            if scope["path"] == "/leave":
                return
            while True:
                message = await receive()
                if message["type"] == "webtransport.disconnect":
                    return
                if message["type"] == "webtransport.stream.receive":
                    stream = message["stream"]
                    self.received[stream] = self.received.get(stream, b"") + message["data"]
                    if message["end"]:
                        self.ended.add(stream)
                        await send(
                            {
                                "type": "webtransport.stream.send",
                                "stream": stream,
                                "data": b"pong",
                                "end": True,
                            }
                        )
        finally:
            self.finished += 1


def quic_port(srv: Any) -> int:
    return next(a.port for a in srv.addresses if a.transport == "udp")


def serve(app: Any, tls: DevCertificate) -> Any:
    return running_server(app, tls=tls, quic_bind=("127.0.0.1:0",), webtransport=True)


@pytest.mark.parametrize("dialect", ["draft02", "draft07", "safari", "draft15"])
async def test_the_app_opens_streams_and_sends_a_datagram_first(
    anyio_backend: object, tls_files: DevCertificate, dialect: str
) -> None:
    app = OpeningApp()
    async with serve(app, tls_files) as srv:
        async with open_wt(
            quic_port(srv), "/open", cafile=str(tls_files.ca_certfile), dialect=dialect
        ) as session:
            # The datagram was sent before the client sent anything (it may be lost on
            # the way: the app sends it once, so only its arrival is checked when it came).
            await session.wait(lambda: len(session.wt_streams) == 2)
            await wait_for(lambda: len(app.opened) == 2)
            bidi, uni = app.opened["bidi"], app.opened["uni"]
            assert bidi % 4 == 1 and uni % 4 == 3  # server-initiated ids (RFC 9000 §2.1)
            await session.wait(lambda: session.wt_streams[uni] == (b"one way", True))
            assert session.wt_streams[bidi] == (b"ping", False)
            # The client answers on the server's bidirectional stream.
            session.quic.send_stream_data(bidi, b"back", end_stream=True)
            await session.transmit()
            await session.wait(lambda: session.wt_streams[bidi] == (b"pingpong", True))
            assert app.received == {bidi: b"back"} and app.ended == {bidi}
            await session.wait(lambda: bool(session.datagrams), timeout=2)
            assert session.datagrams[0] == b"first"
            await session.send(b"", end=True)
            await wait_for(lambda: app.finished == 1)


async def test_the_server_opens_no_stream_beyond_the_clients_credit(
    anyio_backend: object, tls_files: DevCertificate
) -> None:
    app = OpeningApp()
    async with serve(app, tls_files) as srv:
        async with open_wt(
            quic_port(srv),
            "/open",
            cafile=str(tls_files.ca_certfile),
            dialect="draft15",
            settings={WT_INITIAL_MAX_STREAMS_BIDI: 0},
        ) as session:
            await session.wait(lambda: STREAMS_BLOCKED_BIDI in dict(session.capsules()))
            await anyio.sleep(0.1)
            assert session.wt_streams == {} and app.opened == {}
            await session.send_capsule(MAX_STREAMS_BIDI, varint(1))
            await session.wait(lambda: len(session.wt_streams) == 2)
            assert sorted(app.opened) == ["bidi", "uni"]


async def test_the_app_writes_only_to_its_own_open_streams(
    anyio_backend: object, tls_files: DevCertificate
) -> None:
    app = OpeningApp()
    async with serve(app, tls_files) as srv:
        async with open_wt(
            quic_port(srv), "/bad", cafile=str(tls_files.ca_certfile), dialect="draft02"
        ) as session:
            await wait_for(lambda: len(app.errors) == 2)
            # The finished stream and an id never opened are both refused.
            assert all("not an open stream" in error for error in app.errors)
            await session.send(b"", end=True)


async def test_a_finished_session_resets_the_streams_it_left_open(
    anyio_backend: object, tls_files: DevCertificate
) -> None:
    app = OpeningApp()
    async with serve(app, tls_files) as srv:
        async with open_wt(
            quic_port(srv), "/leave", cafile=str(tls_files.ca_certfile), dialect="draft15"
        ) as session:
            await wait_for(lambda: app.finished == 1)
            bidi = app.opened["bidi"]
            await session.wait(
                lambda: any(
                    isinstance(e, StreamReset) and e.stream_id == bidi for e in session.h3.log
                )
            )
            [reset] = [
                e for e in session.h3.log if isinstance(e, StreamReset) and e.stream_id == bidi
            ]
            assert reset.error_code == WT_SESSION_GONE


# -- stream resets and STOP_SENDING, both ways (d02 §4.3, d15 §4.4) ----------------------


def h3_code(code: int) -> int:
    # The mapping written from the draft's pseudocode, not imported from quicserve.
    return 0x52E4A40FA8DB + code + code // 0x1E


class ResetApp:
    """Opens a uni stream (left open), records every message; a client bidi stream that
    says ``reset <code>`` is reset with that code, ``stop <code>`` stopped with it; after
    a STOP_SENDING the app sends on the stream again (must not raise)."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.opened = -1
        self.errors: list[str] = []
        self.gate: Any = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "webtransport.accept"})
        uni: dict[str, Any] = {"type": "webtransport.stream.open", "unidirectional": True}
        await send(uni)
        self.opened = uni["stream"]
        if scope["path"] == "/gate":
            await self.gate.wait()
        while True:
            message = await receive()
            self.messages.append(message)
            kind = message["type"]
            if kind == "webtransport.disconnect":
                return
            if kind == "webtransport.stream.stop_sending":
                await send(
                    {"type": "webtransport.stream.send", "stream": message["stream"], "data": b"x"}
                )
            if kind == "webtransport.stream.receive" and message["data"]:
                verb, _, number = message["data"].partition(b" ")
                action = {
                    b"reset": "webtransport.stream.reset",
                    b"stop": "webtransport.stream.stop",
                }
                if verb in action:
                    try:
                        await send(
                            {"type": action[verb], "stream": message["stream"], "code": int(number)}
                        )
                    except ValueError as exc:
                        self.errors.append(str(exc))


def of_type(app: ResetApp, kind: str) -> list[dict[str, Any]]:
    return [m for m in app.messages if m["type"] == kind]


@pytest.mark.parametrize("dialect", ["draft02", "draft15"])
async def test_resets_and_stop_sending_carry_webtransport_codes_both_ways(
    anyio_backend: object, tls_files: DevCertificate, dialect: str
) -> None:
    app = ResetApp()
    async with serve(app, tls_files) as srv:
        async with open_wt(
            quic_port(srv), "/reset", cafile=str(tls_files.ca_certfile), dialect=dialect
        ) as session:
            quic, h3 = session.quic, session.h3
            # The client resets its unidirectional stream after some data, with code 7.
            uni = h3.create_webtransport_stream(session.stream_id, is_unidirectional=True)
            quic.send_stream_data(uni, b"partial")
            await session.transmit()
            await wait_for(lambda: of_type(app, "webtransport.stream.receive"))
            quic.reset_stream(uni, h3_code(7))
            await session.transmit()
            await wait_for(lambda: of_type(app, "webtransport.stream.reset"))
            assert of_type(app, "webtransport.stream.reset") == [
                {"type": "webtransport.stream.reset", "stream": uni, "code": 7}
            ]
            # STOP_SENDING on the stream the app opened, with code 9; the app's next send
            # on it is dropped, not an error.
            await wait_for(lambda: app.opened >= 0)
            quic.stop_stream(app.opened, h3_code(9))
            # The frame twice, in two packets made before any answer can be read (the
            # server's RESET_STREAM in reply retires the stream here): reported once.
            now = time.monotonic()
            twice = quic.datagrams_to_send(now)
            quic._streams[app.opened].receiver.stop_pending = True
            twice += quic.datagrams_to_send(now)
            assert len(twice) >= 2
            for datagram, _ in twice:
                await session.sock.send(datagram)
            await wait_for(lambda: of_type(app, "webtransport.stream.stop_sending"))
            await anyio.sleep(0.1)  # the repeated frame has arrived too
            assert of_type(app, "webtransport.stream.stop_sending") == [
                {"type": "webtransport.stream.stop_sending", "stream": app.opened, "code": 9}
            ]
            # A reset with an HTTP/3 code outside the WebTransport range carries none.
            other = h3.create_webtransport_stream(session.stream_id, is_unidirectional=True)
            quic.send_stream_data(other, b"more")
            await session.transmit()
            await wait_for(lambda: len(of_type(app, "webtransport.stream.receive")) == 2)
            quic.reset_stream(other, 0x100)  # H3_NO_ERROR
            await session.transmit()
            await wait_for(lambda: len(of_type(app, "webtransport.stream.reset")) == 2)
            assert of_type(app, "webtransport.stream.reset")[1]["code"] is None
            # The app resets and stops client streams with its codes.
            for command in (b"reset 5", b"stop 3", b"reset 300"):
                stream = open_wt_stream(h3, session.stream_id)
                quic.send_stream_data(stream, command)
                await session.transmit()
                if command == b"reset 5":
                    reset_stream = stream
                elif command == b"stop 3":
                    stopped_stream = stream
            await session.wait(
                lambda: (
                    any(isinstance(e, StreamReset) and e.stream_id == reset_stream for e in h3.log)
                    and any(
                        isinstance(e, StopSendingReceived) and e.stream_id == stopped_stream
                        for e in h3.log
                    )
                )
            )
            codes = {
                e.stream_id: e.error_code
                for e in h3.log
                if isinstance(e, StreamReset | StopSendingReceived)
            }
            assert codes[reset_stream] == h3_code(5) and codes[stopped_stream] == h3_code(3)
            # 300 fits draft-15's 32-bit codes, not draft-02's 8 bits (d02 §4.3).
            await wait_for(lambda: len(of_type(app, "webtransport.stream.receive")) == 5)
            await anyio.sleep(0.1)
            assert app.errors == (
                ["a draft02 stream error code is 0 to 255"] if dialect == "draft02" else []
            )
            # STOP_SENDING on a client bidirectional stream the app has read to its end
            # (its reply side is still open) reaches the app too.
            quiet = open_wt_stream(h3, session.stream_id)
            quic.send_stream_data(quiet, b"hello", end_stream=True)
            await session.transmit()
            await wait_for(lambda: len(of_type(app, "webtransport.stream.receive")) == 6)
            quic.stop_stream(quiet, h3_code(4))
            await session.transmit()
            await wait_for(lambda: len(of_type(app, "webtransport.stream.stop_sending")) == 2)
            assert of_type(app, "webtransport.stream.stop_sending")[1] == {
                "type": "webtransport.stream.stop_sending",
                "stream": quiet,
                "code": 4,
            }
            await session.send(b"", end=True)
            await wait_for(lambda: of_type(app, "webtransport.disconnect"))


async def test_resets_do_not_grow_the_apps_queue(
    anyio_backend: object, tls_files: DevCertificate
) -> None:
    # A client that opens a stream, writes a byte and resets it, again and again, while the
    # app reads nothing: the stream slots stay taken until the app has the data (so the
    # streams past the limit are refused), and each stream's reset rides on its queued data.
    app = ResetApp()
    app.gate = anyio.Event()
    async with running_server(
        app,
        tls=tls_files,
        quic_bind=("127.0.0.1:0",),
        webtransport=True,
        webtransport_max_streams=4,
    ) as srv:
        async with open_wt(
            quic_port(srv), "/gate", cafile=str(tls_files.ca_certfile), dialect="draft02"
        ) as session:
            for _ in range(20):
                uni = session.h3.create_webtransport_stream(
                    session.stream_id, is_unidirectional=True
                )
                session.quic.send_stream_data(uni, b"z")
                await session.transmit()
                session.quic.reset_stream(uni, h3_code(1))
                await session.transmit()
            await anyio.sleep(0.3)
            app.gate.set()
            await wait_for(lambda: len(of_type(app, "webtransport.stream.reset")) == 4)
            await anyio.sleep(0.2)
            # Four streams reached the app (the limit), each as its byte then its reset.
            receives = of_type(app, "webtransport.stream.receive")
            assert len(receives) == 4 and len(of_type(app, "webtransport.stream.reset")) == 4
            await session.send(b"", end=True)


def test_stream_error_codes_map_per_dialect() -> None:
    # d02 §4.3: 8-bit codes; d07 §4.3 / d15 §4.4: 32-bit; both skip 0x1f * N + 0x21.
    assert stream_error_to_h3(DRAFT02, 0) == 0x52E4A40FA8DB
    assert stream_error_to_h3(DRAFT02, 0xFF) == 0x52E4A40FA9E2
    assert stream_error_to_h3(DRAFT15, 0xFFFFFFFF) == 0x52E5AC983162
    with pytest.raises(ValueError):
        stream_error_to_h3(DRAFT02, 0x100)
    with pytest.raises(ValueError):
        stream_error_to_h3(DRAFT15, -1)
    for code in [*range(0, 600), 12345678, 0xFFFFFFFF]:
        assert stream_error_from_h3(DRAFT15, h3_code(code)) == code
    reserved = 0x1F * ((0x52E4A40FA8DB - 0x21) // 0x1F + 1) + 0x21
    assert stream_error_from_h3(DRAFT15, reserved) is None
    assert stream_error_from_h3(DRAFT15, 0x100) is None  # H3_NO_ERROR: no WT code
    assert stream_error_from_h3(DRAFT02, h3_code(0x100)) is None  # beyond 8 bits
    assert stream_error_from_h3(DRAFT07, h3_code(0x100)) == 0x100


# -- WT_DRAIN_SESSION on graceful shutdown (d07 §4.6, d15 §4.7) -------------------------

DRAIN_SESSION = 0x78AE


class DrainApp:
    """Records ``webtransport.drain``; keeps serving after it (echoes a stream's end as
    ``bye``) and closes the session itself once a client stream said ``last``;
    ``/ignore``: never closes (the graceful timeout ends it)."""

    def __init__(self) -> None:
        self.drains: list[dict[str, Any]] = []
        self.after_drain: list[bytes] = []
        self.finished = anyio.Event()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        try:
            await receive()
            await send({"type": "webtransport.accept"})
            while True:
                message = await receive()
                if message["type"] == "webtransport.disconnect":
                    return
                if message["type"] == "webtransport.drain":
                    self.drains.append(message)
                elif message["type"] == "webtransport.stream.receive" and self.drains:
                    self.after_drain.append(message["data"])
                    if message["data"] == b"last" and scope["path"] != "/ignore":
                        await send({"type": "webtransport.close", "code": 0, "reason": "drained"})
                        return
        finally:
            self.finished.set()


@pytest.mark.parametrize("dialect", ["draft02", "draft15"])
async def test_graceful_shutdown_drains_sessions_and_lets_them_finish(
    anyio_backend: object, tls_files: DevCertificate, dialect: str
) -> None:
    app = DrainApp()
    async with serve(app, tls_files) as srv:
        async with open_wt(
            quic_port(srv), "/drain", cafile=str(tls_files.ca_certfile), dialect=dialect
        ) as session:
            srv.server.shutdown()
            await wait_for(lambda: app.drains)
            assert app.drains == [{"type": "webtransport.drain", "by": "server"}]
            if dialect == "draft15":
                await session.wait(lambda: DRAIN_SESSION in dict(session.capsules()))
            # The session still works after the drain, until the app ends it.
            stream = session.h3.create_webtransport_stream(
                session.stream_id, is_unidirectional=True
            )
            session.quic.send_stream_data(stream, b"last", end_stream=True)
            await session.transmit()
            with anyio.fail_after(5):
                await app.finished.wait()
            assert app.after_drain == [b"last"]
            if dialect == "draft15":
                await session.wait(lambda: CLOSE_SESSION in dict(session.capsules()))
                # Exactly one drain, before the close.
                kinds = [kind for kind, _ in session.capsules()]
                assert kinds.count(DRAIN_SESSION) == 1
                assert kinds.index(DRAIN_SESSION) < kinds.index(CLOSE_SESSION)


async def test_a_session_that_ignores_the_drain_ends_at_the_graceful_timeout(
    anyio_backend: object, tls_files: DevCertificate
) -> None:
    app = DrainApp()
    with anyio.fail_after(8):
        async with running_server(
            app,
            tls=tls_files,
            quic_bind=("127.0.0.1:0",),
            webtransport=True,
            graceful_timeout=0.5,
        ) as srv:
            async with open_wt(
                quic_port(srv), "/ignore", cafile=str(tls_files.ca_certfile), dialect="safari"
            ):
                srv.server.shutdown()
                await wait_for(lambda: app.drains)
                with anyio.fail_after(5):
                    await app.finished.wait()
    assert app.drains == [{"type": "webtransport.drain", "by": "server"}]


async def test_the_clients_drain_is_reported(
    anyio_backend: object, tls_files: DevCertificate
) -> None:
    app = DrainApp()
    async with serve(app, tls_files) as srv:
        async with open_wt(
            quic_port(srv), "/drain", cafile=str(tls_files.ca_certfile), dialect="draft15"
        ) as session:
            await session.send_capsule(DRAIN_SESSION, b"")
            await session.send_capsule(DRAIN_SESSION, b"")  # reported once
            await wait_for(lambda: app.drains)
            await anyio.sleep(0.1)
            assert app.drains == [{"type": "webtransport.drain", "by": "client"}]
            await session.send(b"", end=True)


class EchoEnd:
    """Echoes each client stream once it ends (``echo `` + its bytes, then the end)."""

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "webtransport.accept"})
        buffers: dict[int, bytes] = {}
        while True:
            message = await receive()
            if message["type"] == "webtransport.disconnect":
                return
            if message["type"] == "webtransport.stream.receive":
                stream = message["stream"]
                buffers[stream] = buffers.get(stream, b"") + message["data"]
                if message["end"]:
                    data = b"echo " + buffers.pop(stream)
                    await send(
                        {
                            "type": "webtransport.stream.send",
                            "stream": stream,
                            "data": data,
                            "end": True,
                        }
                    )


async def test_finished_bidirectional_streams_leave_nothing_behind(
    anyio_backend: object, tls_files: DevCertificate
) -> None:
    # Each bidirectional stream of a long session is forgotten once both sides are done,
    # by quicserve and by aioquic's HTTP/3 layer (which never sees our raw FIN itself).
    async with serve(EchoEnd(), tls_files) as srv:
        async with open_wt(
            quic_port(srv), "/echo", cafile=str(tls_files.ca_certfile), dialect="draft02"
        ) as session:
            streams = []
            for index in range(30):
                stream = open_wt_stream(session.h3, session.stream_id)
                session.quic.send_stream_data(stream, b"%d" % index, end_stream=True)
                streams.append(stream)
            await session.transmit()
            await session.wait(
                lambda: all(session.wt_streams.get(s, (b"", False))[1] for s in streams)
            )
            assert session.wt_streams[streams[7]] == (b"echo 7", True)
            [driver] = srv.server._quic_listeners[0].drivers.values()
            protocol = driver.protocol
            await wait_for(lambda: not any(s in protocol._h3._stream for s in streams))
            assert not any(s in protocol._wt_streams for s in streams)
            await session.send(b"", end=True)
