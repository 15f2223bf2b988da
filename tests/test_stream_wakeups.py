"""Lost wake-ups in :class:`HTTPStream`, driven deterministically with a stand-in host.

A stream's ``receive`` checks its state and then waits on a one-shot wake-up that the
connection's events set. Any ``await`` between the check and installing the wake-up is a
window in which an event finds no waiter, and its wake-up is lost. The e2e tests find
these only by chance (on trio, whose scheduler may run the reader before the app; see
test_http1_e2e.py's ``test_expect_100_continue_body_right_after_100``); here the host
delivers the event exactly inside that window, on every backend.

Every test runs on asyncio, uvloop and trio (see conftest.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from quicserve.config import Config
from quicserve.connection_info import HTTP1_CAPABILITIES, ConnectionInfo
from quicserve.events import Headers, RequestReceived
from quicserve.lowlevel import Wakeup, wakeup_factory
from quicserve.streams.http import HTTPStream

pytestmark = pytest.mark.anyio


class _Protocol:
    """Records what the stream asked of the protocol."""

    def __init__(self) -> None:
        self.informational: list[int] = []

    def send_informational(self, stream_id: int, status: int, headers: Headers) -> None:
        self.informational.append(status)


class _Host:
    """A StreamHost whose ``flush`` lets the peer act while the write is in progress,
    as a real connection's does when the socket write yields to the event loop."""

    def __init__(self) -> None:
        self.config = Config()
        self.protocol = _Protocol()
        self.new_wakeup: Callable[[], Wakeup] = wakeup_factory()
        self.acked = 0
        self.during_flush: Callable[[], None] | None = None

    def extensions_for(self, info: ConnectionInfo) -> dict[str, Any]:
        return {}

    async def flush(self, stream_id: int) -> None:
        await anyio.lowlevel.checkpoint()
        action, self.during_flush = self.during_flush, None
        if action is not None:
            action()
        await anyio.lowlevel.checkpoint()

    def ack_body(self, stream_id: int, amount: int) -> None:
        self.acked += amount

    async def stream_finished(self, stream_id: int) -> None:
        pass

    def push(self, parent: RequestReceived, path: bytes, headers: Headers) -> None:
        pass


def _expecting_stream(host: _Host) -> HTTPStream:
    request = RequestReceived(
        stream_id=1,
        method=b"POST",
        raw_path=b"/",
        headers=[(b"host", b"x"), (b"expect", b"100-continue")],
        expect_continue=True,
    )
    info = ConnectionInfo("1.1", "http", None, None, HTTP1_CAPABILITIES)
    return HTTPStream(_unused_app, host, info, request, None)


async def _unused_app(scope: Any, receive: Any, send: Any) -> None:
    raise AssertionError("not called: the tests call receive() directly")


async def test_body_that_answers_the_100_during_its_write_is_received(
    anyio_backend: object,
) -> None:
    """RFC 9110 §10.1.1: the client sends its body as soon as it sees ``100``; all of it
    may arrive while the ``100`` write is still yielding. The app's ``receive`` must
    return it (it used to wait for a wake-up that had already been spent)."""
    host = _Host()
    stream = _expecting_stream(host)

    def peer_sends_body() -> None:
        stream.body_received(b"abc")
        stream.body_ended()

    host.during_flush = peer_sends_body
    with anyio.fail_after(2):
        message = await stream.receive()
    assert host.protocol.informational == [100]
    assert message == {"type": "http.request", "body": b"abc", "more_body": False}
    assert host.acked == 3


async def test_first_chunk_during_the_100_write_is_received(anyio_backend: object) -> None:
    """The same with a body larger than the read-ahead: the connection stops reading
    until the app acknowledges this first chunk, so nothing else would wake the app."""
    host = _Host()
    stream = _expecting_stream(host)
    host.during_flush = lambda: stream.body_received(b"x" * 65536)
    with anyio.fail_after(2):
        message = await stream.receive()
    assert message == {"type": "http.request", "body": b"x" * 65536, "more_body": True}
    assert host.acked == 65536


async def test_reset_during_the_100_write_is_seen(anyio_backend: object) -> None:
    """A peer that goes away while the ``100`` is written: the app sees a disconnect."""
    host = _Host()
    stream = _expecting_stream(host)
    host.during_flush = stream.reset
    with anyio.fail_after(2):
        message = await stream.receive()
    assert message == {"type": "http.disconnect"}
