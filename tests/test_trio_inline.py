"""trio's HTTP/1.1 path (issue 11): the edge-triggered readiness hub and requests run in
the task that read them.

* :class:`~quicserve.transport.trioedge.EdgeHub`: a wait returns once bytes arrive, an
  edge that came while nobody waited is not lost, a cancelled wait is forgotten, closing a
  socket wakes its waiter, a re-registered descriptor starts clean, each ``trio.run`` has
  its own hub.
* ``SocketDriver._serve_loop``: keep-alive requests that never wait run without a single
  step of a stream-runner task or of the helper task (counted with a trio instrument); a
  request that waits (a late body, a sleep, a peer that leaves) hands reading to the helper
  first, so its body, the peer's end and ``http.disconnect`` still reach it; pipelined
  requests of both kinds keep their order. Without the hub (no ``select.epoll``) requests
  keep their stream runner.
"""

from __future__ import annotations

import socket
from collections import Counter
from typing import Any

import anyio
import pytest
import trio
import trio.lowlevel

from quicserve.transport.trioedge import EdgeHub, edge_hub

from .apps import read_body, respond
from .helpers import running_server

pytestmark = pytest.mark.anyio

_HEAD = b"POST /%s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"


@pytest.fixture
def anyio_backend() -> str:
    """This file is about trio's own path."""
    return "trio"


def _hub() -> EdgeHub:
    hub = edge_hub()
    if hub is None:
        pytest.skip("no select.epoll here: the driver keeps trio's wait_readable")
    return hub


async def test_edge_hub_waits_keeps_edges_and_forgets_cancelled_waits() -> None:
    hub = _hub()
    assert edge_hub() is hub  # one per run
    ours, peer = socket.socketpair()
    ours.setblocking(False)
    try:
        fd = ours.fileno()
        assert hub.register(fd)
        # Nothing to read: the wait parks (and, cancelled, leaves no waiter behind).
        with trio.move_on_after(0.05) as scope:
            await hub.wait_readable(fd)
        assert scope.cancelled_caught
        # Bytes arrive while someone waits: the wait returns. (A second waiter is refused.)
        async with trio.open_nursery() as nursery:

            async def second_waiter() -> None:
                with pytest.raises(trio.BusyResourceError):
                    await hub.wait_readable(fd)

            nursery.start_soon(second_waiter)

            async def send_later() -> None:
                await trio.sleep(0.01)
                peer.send(b"a")

            nursery.start_soon(send_later)
            with trio.fail_after(2):
                await hub.wait_readable(fd)
        assert ours.recv(10) == b"a"
        # Bytes that arrive while nobody waits: the edge is kept for the next wait.
        peer.send(b"b")
        with trio.fail_after(2):
            while fd not in hub._ready:
                await trio.sleep(0.001)  # the pump runs; bounded by fail_after
            await hub.wait_readable(fd)
        assert ours.recv(10) == b"b"
        # Closing wakes a waiter with ClosedResourceError.
        async with trio.open_nursery() as nursery:

            async def close_soon() -> None:
                await trio.sleep(0.01)
                hub.unregister(fd)

            nursery.start_soon(close_soon)
            with trio.fail_after(2), pytest.raises(trio.ClosedResourceError):
                await hub.wait_readable(fd)
        # A re-registered descriptor starts clean: an old edge does not carry over.
        assert hub.register(fd)
        peer.send(b"c")
        with trio.fail_after(2):
            await hub.wait_readable(fd)
        hub.unregister(fd)
        assert ours.recv(10) == b"c"
        assert hub.register(fd)
        with trio.move_on_after(0.05) as scope:
            await hub.wait_readable(fd)
        assert scope.cancelled_caught
        hub.unregister(fd)
    finally:
        ours.close()
        peer.close()


def test_each_trio_run_has_its_own_hub() -> None:
    hubs: list[EdgeHub] = []

    async def one() -> None:
        hubs.append(_hub())
        # The hub works in this run (its pump belongs to this run, not an ended one).
        await test_edge_hub_waits_keeps_edges_and_forgets_cancelled_waits()

    trio.run(one)
    trio.run(one)
    assert hubs[0] is not hubs[1]


class _Steps(trio.abc.Instrument):
    """Task steps by task name."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.counts[task.name] += 1

    def of(self, suffix: str) -> int:
        return sum(n for name, n in self.counts.items() if name.endswith(suffix))


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """``/wait``: reads to the disconnect and records it; ``/sleep``: sleeps first; anything
    else: answers at once. Each echoes its path and body."""
    if scope["type"] != "http":
        return
    path = scope["path"]
    body = await read_body(receive)
    if path == "/wait":
        message = await receive()
        _seen.append(message["type"])
        _disconnected["event"].set()
        return
    if path == "/sleep":
        await anyio.sleep(0.001)
    await respond(send, 200, b"%s %s" % (path.encode(), body))


_seen: list[str] = []
_disconnected: dict[str, trio.Event] = {}


async def _response(stream: Any, buffer: bytearray) -> bytes:
    with anyio.fail_after(5):
        while b"\r\n\r\n" not in buffer:
            buffer += await stream.receive()
        head, _, _ = bytes(buffer).partition(b"\r\n\r\n")
        del buffer[: len(head) + 4]
        assert head.startswith(b"HTTP/1.1 200 "), head
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        while len(buffer) < length:
            buffer += await stream.receive()
        body = bytes(buffer[:length])
        del buffer[:length]
    return body


async def test_requests_run_in_the_reading_task_and_hand_off_when_they_wait() -> None:
    _hub()
    _disconnected["event"] = trio.Event()
    _seen.clear()
    steps = _Steps()
    async with running_server(_app) as srv:
        async with await anyio.connect_tcp("127.0.0.1", srv.port()) as stream:
            buffer = bytearray()
            await stream.send(_HEAD % (b"warm", 0))
            await _response(stream, buffer)
            trio.lowlevel.add_instrument(steps)
            try:
                for i in range(30):
                    await stream.send(_HEAD % (b"r%d" % i, 1) + b"x")
                    assert await _response(stream, buffer) == b"/r%d x" % i
                # Requests that never wait: no stream runner, no helper, ran at all.
                assert steps.of("._runner") == 0, steps.counts
                assert steps.of("._helper_loop") == 0, steps.counts
                # A body that comes after its head: the request waits in receive() and
                # the helper, started then, reads the rest for it.
                await stream.send(_HEAD % (b"late", 6) + b"abc")
                await anyio.sleep(0.02)
                await stream.send(b"def")
                assert await _response(stream, buffer) == b"/late abcdef"
                assert steps.of("._helper_loop") > 0, steps.counts
                assert steps.of("._runner") == 0, steps.counts
            finally:
                trio.lowlevel.remove_instrument(steps)
            # Pipelined requests that wait and that do not, in one write: in order.
            paths = [b"sleep", b"p1", b"sleep", b"p2", b"p3", b"sleep"]
            await stream.send(b"".join(_HEAD % (p, 1) + b"y" for p in paths))
            for path in paths:
                assert await _response(stream, buffer) == b"/%s y" % path
            # A request that waits for the peer to leave sees http.disconnect when it does.
            await stream.send(_HEAD % (b"wait", 0))
            await anyio.sleep(0.02)
        with anyio.fail_after(5):
            await _disconnected["event"].wait()
        assert _seen == ["http.disconnect"]


async def test_without_the_hub_requests_keep_their_stream_runner(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Where there is no select.epoll (edge_hub() is None) the driver waits with trio's
    # own wait_readable and runs requests on its stream runner, as before the hub.
    from quicserve.connection import bytestream

    monkeypatch.setattr(bytestream, "edge_hub", lambda: None)
    steps = _Steps()
    async with running_server(_app) as srv:
        async with await anyio.connect_tcp("127.0.0.1", srv.port()) as stream:
            buffer = bytearray()
            trio.lowlevel.add_instrument(steps)
            try:
                for i in range(5):
                    await stream.send(_HEAD % (b"r%d" % i, 1) + b"x")
                    assert await _response(stream, buffer) == b"/r%d x" % i
                await stream.send(_HEAD % (b"late", 6) + b"abc")
                await anyio.sleep(0.02)
                await stream.send(b"def")
                assert await _response(stream, buffer) == b"/late abcdef"
            finally:
                trio.lowlevel.remove_instrument(steps)
    assert steps.of("._runner") >= 6, steps.counts
    assert steps.of("._helper_loop") == 0, steps.counts
