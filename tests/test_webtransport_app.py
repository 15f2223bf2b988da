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

from typing import Any

import anyio
import pytest
from aioquic.quic.events import StreamReset

from quicserve.certs import DevCertificate

from .helpers import running_server, wait_for
from .wtclient import (
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
