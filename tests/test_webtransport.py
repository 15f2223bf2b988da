"""WebTransport over HTTP/3 (draft-02, behind --webtransport) with aioquic's client.

Chromium's session (datagram and bidirectional stream echo) is in test_browser.py; here
aioquic's own WebTransport client (``H3Connection(enable_webtransport=True)``) covers the
rest of the ASGI message set on every backend: SETTINGS, the draft-02 response header,
datagrams, unidirectional streams, the app refusing a session (403),
the client ending it (``webtransport.disconnect``), the option being off (501), and QUIC
credit coming back on a stream larger than the receive windows.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from aioquic.h3.connection import Setting

from clientkit.ws import open_h2, open_h3
from quicserve.certs import DevCertificate

from .helpers import client_ssl_context, running_server, wait_for

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]


class EchoApp:
    """The aioquic example's echo, plus a refusing path; records what it saw."""

    def __init__(self) -> None:
        self.messages: list[str] = []
        self.finished = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "webtransport"
        try:
            assert (await receive())["type"] == "webtransport.connect"
            if scope["path"] == "/refuse":
                await send({"type": "webtransport.close"})
                return
            await send({"type": "webtransport.accept", "headers": [(b"x-session", b"ok")]})
            while True:
                message = await receive()
                self.messages.append(message["type"])
                if message["type"] == "webtransport.datagram.receive":
                    data = b"echo " + message["data"]
                    await send({"type": "webtransport.datagram.send", "data": data})
                elif message["type"] == "webtransport.stream.receive":
                    reply = {
                        "type": "webtransport.stream.send",
                        "stream": message["stream"],
                        "data": b"echo " + message["data"] if message["data"] else b"",
                        "end": message["end"],
                    }
                    await send(reply)
                elif message["type"] == "webtransport.disconnect":
                    return
        finally:
            self.finished += 1


def quic_port(srv: Any) -> int:
    return next(a.port for a in srv.addresses if a.transport == "udp")


async def test_session_datagrams_and_streams(
    anyio_backend: object, tls_files: DevCertificate
) -> None:
    app = EchoApp()
    async with running_server(
        app, tls=tls_files, quic_bind=("127.0.0.1:0",), webtransport=True
    ) as srv:
        async with open_h3(
            quic_port(srv),
            "/wt",
            cafile=str(tls_files.ca_certfile),
            protocol=b"webtransport",
            webtransport=True,
        ) as session:
            settings = session.h3.received_settings
            assert settings[Setting.ENABLE_WEBTRANSPORT] == 1
            assert settings[Setting.H3_DATAGRAM] == 1
            assert session.status == 200
            assert session.header(b"sec-webtransport-http3-draft") == b"draft02"
            assert session.header(b"x-session") == b"ok"
            h3 = session.h3
            session_id = session.stream_id
            # A datagram (retried: datagrams may be lost, even on loopback).
            for _ in range(20):
                h3.send_datagram(session_id, b"dgram")
                await session.transmit()
                with anyio.move_on_after(0.2):
                    await wait_for(lambda: session.datagrams)
                if session.datagrams:
                    break
            assert session.datagrams[0] == b"echo dgram"
            # (Bidirectional streams: aioquic's client cannot read replies on WebTransport
            # streams it opened itself, so Chromium covers them, in test_browser.py.)
            # A unidirectional stream: the server answers on a stream of its own.
            uni = h3.create_webtransport_stream(session_id, is_unidirectional=True)
            session.quic.send_stream_data(uni, b"one way", end_stream=True)
            await session.transmit()
            await wait_for(lambda: any(ended for _, ended in session.wt_streams.values()))
            assert list(session.wt_streams.values()) == [(b"echo one way", True)]
            # The client ends the session: the app hears webtransport.disconnect.
            await session.send(b"", end=True)
            await wait_for(lambda: app.finished == 1)
    assert app.messages[-1] == "webtransport.disconnect"
    assert "webtransport.datagram.receive" in app.messages


async def test_refused_session_and_option_off(
    anyio_backend: object, tls_files: DevCertificate
) -> None:
    app = EchoApp()
    async with running_server(
        app, tls=tls_files, quic_bind=("127.0.0.1:0",), webtransport=True
    ) as srv:
        async with open_h3(
            quic_port(srv),
            "/refuse",
            cafile=str(tls_files.ca_certfile),
            protocol=b"webtransport",
            webtransport=True,
        ) as session:
            assert session.status == 403
    # Without --webtransport there is no such protocol: 501, and the app is not called.
    app = EchoApp()
    async with running_server(app, tls=tls_files, quic_bind=("127.0.0.1:0",)) as srv:
        async with open_h3(
            quic_port(srv),
            "/wt",
            cafile=str(tls_files.ca_certfile),
            protocol=b"webtransport",
            webtransport=True,
        ) as session:
            assert session.h3.received_settings.get(Setting.ENABLE_WEBTRANSPORT) is None
            assert session.status == 501
    assert app.finished == 0


async def test_webtransport_over_http2_is_an_unknown_protocol(
    anyio_backend: object, tls_files: DevCertificate
) -> None:
    # quicserve speaks WebTransport over HTTP/3 only: an HTTP/2 extended CONNECT for it gets
    # 501 and the app is not called (it used to get a session whose sends failed).
    app = EchoApp()
    async with running_server(
        app, tls=tls_files, quic_bind=("127.0.0.1:0",), webtransport=True
    ) as srv:
        async with open_h2(
            srv.port("https"), "/wt", tls=client_ssl_context(tls_files), protocol=b"webtransport"
        ) as tunnel:
            assert tunnel.status == 501
    assert app.finished == 0


class CountingApp:
    """Answers each client stream with the number of bytes it carried."""

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert (await receive())["type"] == "webtransport.connect"
        await send({"type": "webtransport.accept"})
        totals: dict[int, int] = {}
        while True:
            message = await receive()
            if message["type"] == "webtransport.disconnect":
                return
            if message["type"] == "webtransport.stream.receive":
                stream = message["stream"]
                totals[stream] = totals.get(stream, 0) + len(message["data"])
                if message["end"]:
                    data = str(totals[stream]).encode()
                    await send(
                        {
                            "type": "webtransport.stream.send",
                            "stream": stream,
                            "data": data,
                            "end": True,
                        }
                    )


async def test_stream_larger_than_the_windows_gets_credit(
    anyio_backend: object, tls_files: DevCertificate
) -> None:
    # QUIC credit on WebTransport streams comes back as the app receives their data: a
    # stream of 3 stream windows (and most of the connection window) arrives whole.
    size = 3 * 1024 * 1024 + 123
    async with running_server(
        CountingApp(), tls=tls_files, quic_bind=("127.0.0.1:0",), webtransport=True
    ) as srv:
        async with open_h3(
            quic_port(srv),
            "/wt",
            cafile=str(tls_files.ca_certfile),
            protocol=b"webtransport",
            webtransport=True,
        ) as session:
            uni = session.h3.create_webtransport_stream(session.stream_id, is_unidirectional=True)
            session.quic.send_stream_data(uni, b"z" * size, end_stream=True)
            await session.transmit()
            await wait_for(
                lambda: any(ended for _, ended in session.wt_streams.values()), timeout=30
            )
            assert list(session.wt_streams.values()) == [(str(size).encode(), True)]
