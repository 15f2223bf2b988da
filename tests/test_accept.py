"""The TCP accept loop takes every connection waiting in the backlog at once.

One ``accept`` per event-loop turn made new clients of a busy server wait a turn each,
and a turn then runs every busy connection's work: under h2load's 50 TLS connections
(asyncio) the last ten were accepted more than 2 s after they connected, which is what
made ``h2load -D`` hang (issue 11). Here the clients are already in the kernel's backlog;
the loop must hand all of them to ``serve`` within a few scheduler turns, on asyncio,
uvloop and trio, and never take more than the registry's free slots.
"""

from __future__ import annotations

import socket
import struct

import anyio
import anyio.abc
import anyio.lowlevel
import pytest

from quicserve.registry import ConnectionRegistry
from quicserve.transport.sockets import Listener, create_listening_socket
from quicserve.transport.tcp import TCPEndpoint, accept_loop

pytestmark = pytest.mark.anyio

#: Scheduler turns the loop gets; one accept per turn would serve only a few clients.
_TURNS = 8


async def _accept_waiting(
    clients: int, max_connections: int
) -> list[anyio.abc.SocketStream | socket.socket]:
    """Connect ``clients`` sockets, then give the accept loop ``_TURNS`` turns."""
    sock = create_listening_socket("127.0.0.1", 0)
    endpoint = TCPEndpoint(Listener(sock), None, None)
    registry = ConnectionRegistry(max_connections)
    # On asyncio and uvloop the loop hands over the accepted sockets themselves (they are
    # served callback-driven); elsewhere anyio streams.
    served: list[anyio.abc.SocketStream | socket.socket] = []

    async def serve(stream: anyio.abc.SocketStream | socket.socket, _endpoint: TCPEndpoint) -> None:
        served.append(stream)

    peers = [socket.create_connection(endpoint.address, timeout=5) for _ in range(clients)]
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(accept_loop, endpoint, registry, tg, serve)
            for _ in range(_TURNS):
                await anyio.lowlevel.checkpoint()
            tg.cancel_scope.cancel()
        for stream in served:
            if isinstance(stream, socket.socket):
                stream.close()
            else:
                await stream.aclose()
    finally:
        for peer in peers:
            peer.close()
        await endpoint.listener.aclose()
    return served


async def test_the_whole_backlog_is_accepted_in_a_few_turns() -> None:
    served = await _accept_waiting(clients=40, max_connections=1000)
    assert len(served) == 40


async def test_a_burst_takes_no_more_than_the_free_slots() -> None:
    served = await _accept_waiting(clients=12, max_connections=5)
    assert len(served) == 5


async def test_peers_that_reset_in_the_backlog_do_not_end_the_loop() -> None:
    """Clients that connect and reset (RST) before the server made their streams: each is
    dropped and its slot freed, and the loop goes on to serve a well-behaved client (trio's
    stream constructor raised ValueError for such a socket, which ended the whole server in
    a CI run of tests/test_cli.py)."""
    sock = create_listening_socket("127.0.0.1", 0)
    endpoint = TCPEndpoint(Listener(sock), None, None)
    # Three slots: had a reset peer kept its slot, the good client could not be served.
    registry = ConnectionRegistry(3)
    good_served = anyio.Event()

    async def serve(stream: anyio.abc.SocketStream | socket.socket, _endpoint: TCPEndpoint) -> None:
        # Like the real serve: it owns the slot and frees it when the connection ends.
        # (On asyncio and uvloop it gets the accepted socket itself.)
        try:
            if isinstance(stream, socket.socket):
                sock = stream
                try:
                    stream = await anyio.abc.SocketStream.from_socket(sock)
                except (OSError, ValueError):
                    sock.close()  # a reset peer
                    return
            try:
                with anyio.fail_after(2):
                    if await stream.receive() == b"good":
                        good_served.set()
            except (anyio.BrokenResourceError, anyio.EndOfStream, OSError):
                pass  # a reset peer
            await stream.aclose()
        finally:
            registry.release_slot()

    for _ in range(20):
        peer = socket.create_connection(endpoint.address, timeout=5)
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        peer.close()  # RST: the server's accepted socket is no longer connected
    good = socket.create_connection(endpoint.address, timeout=5)
    good.sendall(b"good")
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(accept_loop, endpoint, registry, tg, serve)
            with anyio.move_on_after(5):
                await good_served.wait()
            tg.cancel_scope.cancel()
    finally:
        good.close()
        await endpoint.listener.aclose()
    assert good_served.is_set()
