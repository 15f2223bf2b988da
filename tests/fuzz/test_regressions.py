"""Every input the fuzz targets found a bug with, minimized, as a plain test.

Each test names the target that found it, the bug, and the fix; it failed before the fix.
"""

from __future__ import annotations

import h11

from quicserve.config import Config
from quicserve.events import BodyEnded, ConnectionClosed, RequestReceived, StreamReset
from quicserve.protocol.http1 import H1Protocol

from .test_fuzz_http1 import check_ends, check_output, drive

T0 = 1000.0


def _responses(output: bytes, method: str = "GET") -> list[int]:
    """Status codes of the responses in ``output`` (h11 client, one request each)."""
    client = h11.Connection(h11.CLIENT)
    statuses: list[int] = []
    client.send(h11.Request(method=method, target="/", headers=[("host", "x")]))
    client.send(h11.EndOfMessage())
    client.receive_data(output)
    client.receive_data(b"")
    while True:
        event = client.next_event()
        if type(event) is h11.Response:
            statuses.append(event.status_code)
        if event is h11.NEED_DATA or event is h11.PAUSED or type(event) is h11.ConnectionClosed:
            return statuses


# -- HTTP/1.1 (test_fuzz_http1.py) ----------------------------------------------------------


def test_http1_bytes_after_a_closing_request_do_not_lose_its_response() -> None:
    """Found by test_http1_requests: ``GET / HTTP/1.0`` followed by more bytes in the same
    read. h11 calls bytes after a request that closes the connection an error, and the
    request was reset before the app could answer: the client got nothing. RFC 9112 §9.6:
    answer it, then close; what follows is not processed."""
    for data in (
        b"GET / HTTP/1.0\r\n\r\nCONNECT * HTTP/1.0\n\n",
        b"GET / HTTP/1.0\r\n\r\n\r\n",  # old clients' extra CRLF (RFC 9112 §2.2)
        b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\nGET / HTTP/1.1\r\n\r\n",
    ):
        run = drive([data], Config(), respond_early=False, ticks=[])
        check_ends(run)
        check_output(run)
        assert _responses(run.output) == [200], data
        assert run.closed


def test_http1_closing_request_then_eof_still_disconnects() -> None:
    """The fix above must not hide the peer's EOF from a request still in flight."""
    proto = H1Protocol(Config(), T0)
    proto.receive_data(b"GET / HTTP/1.0\r\n\r\nmore", T0)
    proto.receive_data(b"", T0)
    events = []
    while (event := proto.next_event()) is not None:
        events.append(event)
    assert [type(e) for e in events] == [
        RequestReceived,
        BodyEnded,
        StreamReset,
        ConnectionClosed,
    ]


def test_http1_connect_is_refused_before_the_app() -> None:
    """Found by test_http1_requests: ``CONNECT * HTTP/1.0`` answered 200 by the app. h11
    takes a 2xx answer to CONNECT for a tunnel and refuses the body, so ``send_data``
    raised LocalProtocolError into the app (an error log line per request) and the client
    got a bodiless "200" that claims a tunnel. CONNECT now gets 501 from the protocol."""
    for data in (b"CONNECT * HTTP/1.0\n\n", b"CONNECT a:443 HTTP/1.1\r\nhost: a:443\r\n\r\n"):
        run = drive([data], Config(), respond_early=True, ticks=[])
        check_ends(run)
        check_output(run)
        assert run.started == []
        assert _responses(run.output) == [501]
        assert run.closed
