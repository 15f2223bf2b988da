"""An HTTP/3 client on aioquic's own asyncio client, for tests.

aioquic's client runs on asyncio only, so tests call :func:`h3_fetch` through
``anyio.to_thread.run_sync``: the client gets its own event loop in a worker thread and
the server under test keeps running on whichever backend the test uses.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, H3Event, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import QuicEvent, StreamReset
from aioquic.tls import SessionTicket


@dataclass
class H3Response:
    """What came back on one request stream."""

    status: int = 0
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    chunks: list[bytes] = field(default_factory=list, repr=False)
    trailers: list[tuple[bytes, bytes]] = field(default_factory=list)
    informational: list[int] = field(default_factory=list)
    reset: int | None = None


@dataclass
class H3Request:
    """One request to make on the connection."""

    path: str
    method: str = "GET"
    body: bytes = b""
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


@dataclass
class H3Result:
    """The responses, plus what the QUIC connection learned (for resumption tests)."""

    responses: list[H3Response]
    session_ticket: SessionTicket | None = None
    resumed: bool = False
    early_data_accepted: bool = False
    version: int | None = None
    retry_seen: bool = False


class _Client(QuicConnectionProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.h3 = H3Connection(self._quic)
        self.waiters: dict[int, asyncio.Future[None]] = {}
        self.responses: dict[int, H3Response] = {}

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, StreamReset) and event.stream_id in self.responses:
            self.responses[event.stream_id].reset = event.error_code
            self._done(event.stream_id)
        for h3_event in self.h3.handle_event(event):
            self._h3_event(h3_event)

    def _h3_event(self, event: H3Event) -> None:
        response = self.responses.get(getattr(event, "stream_id", -1))
        if response is None:
            return
        if isinstance(event, HeadersReceived):
            status = dict(event.headers).get(b":status")
            if status is not None and status.startswith(b"1"):
                response.informational.append(int(status))
            elif status is not None:
                response.status = int(status)
                response.headers = [(n, v) for n, v in event.headers if not n.startswith(b":")]
            else:
                response.trailers = list(event.headers)
        elif isinstance(event, DataReceived):
            response.chunks.append(event.data)  # joined once at the end: += is quadratic
        if getattr(event, "stream_ended", False):
            self._done(event.stream_id)

    def _done(self, stream_id: int) -> None:
        response = self.responses.get(stream_id)
        if response is not None and response.chunks:
            response.body += b"".join(response.chunks)
            response.chunks.clear()
        waiter = self.waiters.get(stream_id)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def request(self, request: H3Request, authority: str, early: bool = False) -> H3Response:
        stream_id = self._quic.get_next_available_stream_id()
        self.responses[stream_id] = response = H3Response()
        self.waiters[stream_id] = asyncio.get_running_loop().create_future()
        self.h3.send_headers(
            stream_id,
            [
                (b":method", request.method.encode()),
                (b":scheme", b"https"),
                (b":authority", authority.encode()),
                (b":path", request.path.encode()),
                *request.headers,
            ],
            end_stream=not request.body,
        )
        if request.body:
            self.h3.send_data(stream_id, request.body, end_stream=True)
        self.transmit()
        await self.waiters[stream_id]
        return response


def client_configuration(
    cafile: str | None = None,
    *,
    session_ticket: SessionTicket | None = None,
    version: int | None = None,
) -> QuicConfiguration:
    """A client configuration that trusts ``cafile`` (or nothing, if None)."""
    configuration = QuicConfiguration(
        is_client=True, alpn_protocols=H3_ALPN, server_name="localhost"
    )
    if cafile:
        configuration.load_verify_locations(cafile)
    else:
        configuration.verify_mode = ssl.CERT_NONE
    configuration.session_ticket = session_ticket
    if version is not None:
        configuration.supported_versions = [version]
        configuration.original_version = version
    return configuration


async def h3_fetch_async(
    port: int,
    requests: list[H3Request],
    *,
    cafile: str | None = None,
    host: str = "127.0.0.1",
    session_ticket: SessionTicket | None = None,
    version: int | None = None,
    concurrent: bool = False,
    between: Callable[[Any], Any] | None = None,
    timeout: float = 20.0,
) -> H3Result:
    """Open one HTTP/3 connection, make ``requests`` (in order, or all at once), close."""
    configuration = client_configuration(cafile, session_ticket=session_ticket, version=version)
    tickets: list[SessionTicket] = []
    result = H3Result(responses=[])
    async with asyncio.timeout(timeout):
        async with connect(
            host,
            port,
            configuration=configuration,
            create_protocol=_Client,
            session_ticket_handler=tickets.append,
            wait_connected=session_ticket is None,
        ) as client:
            assert isinstance(client, _Client)
            if concurrent:
                result.responses = list(
                    await asyncio.gather(*(client.request(r, "localhost") for r in requests))
                )
            else:
                for i, request in enumerate(requests):
                    result.responses.append(await client.request(request, "localhost"))
                    if between is not None and i == 0:
                        between(client)
            quic = client._quic
            result.resumed = bool(quic.tls.session_resumed)
            result.early_data_accepted = bool(quic.tls.early_data_accepted)
            result.version = quic._version
            result.retry_seen = quic._retry_source_connection_id is not None
            client.close()
            await client.wait_closed()
    result.session_ticket = tickets[-1] if tickets else None
    return result


def h3_fetch(port: int, requests: list[H3Request], **kwargs: Any) -> H3Result:
    """:func:`h3_fetch_async` in a fresh event loop (call it from a worker thread)."""
    return asyncio.run(h3_fetch_async(port, requests, **kwargs))
