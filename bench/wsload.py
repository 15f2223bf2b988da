"""WebSocket echo load: one client process, many connections, many messages in flight.

Job: measure how many 64-byte binary WebSocket messages a server echoes per second, with a
client cheap enough that the *server* is what runs out of CPU. ``python -m bench.wsload
--transport h1|h2|h3 --port P ...`` prints one JSON line: messages echoed inside the
measured window, the window's length, and this process's own CPU seconds in it (so the
harness can show that the client core was not saturated).

How it stays cheap:

* Every client frame is the same precomputed masked frame (RFC 6455 §5.3 lets a client
  reuse a masking key; the server cannot tell), so sending k messages is one ``bytes``
  multiplication and one write.
* Every echoed frame is the same 66 bytes (``0x82 0x40`` + the payload), so the reply
  stream is checked with one slice comparison per read against a long precomputed copy,
  never by parsing frames in Python: a wrong byte anywhere fails the run.
* A window of ``--window`` messages stays in flight on each connection: each echo that
  comes back releases one more send, so the server always has work queued.

Transports: ``h1`` raw TCP sockets and ``select`` (RFC 6455 Upgrade, plaintext); ``h2``
the ``h2`` package over TLS (RFC 8441 extended CONNECT, one WebSocket per connection);
``h3`` aioquic's QUIC and HTTP/3 (RFC 9220 extended CONNECT, one per connection). TLS is
not verified (loopback, throwaway certificate). Loopback only; the run ends after
``--duration`` seconds plus at most 10 s of connection setup.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import resource
import selectors
import socket
import ssl
import sys
import time
from functools import partial
from typing import Any

PAYLOAD = hashlib.sha256(b"quicserve ws bench").digest() * 2  # 64 bytes
_MASK = b"\x37\xfa\x21\x3d"
# Client frame: FIN + binary, MASK bit + length 64, the key, the masked payload.
FRAME = b"\x82\xc0" + _MASK + bytes(b ^ _MASK[i % 4] for i, b in enumerate(PAYLOAD))
# Server frame: FIN + binary, length 64, unmasked.
ECHO = b"\x82\x40" + PAYLOAD
# A client close frame, code 1000, masked the same way.
CLOSE = b"\x88\x82" + _MASK + bytes(b ^ _MASK[i] for i, b in enumerate(b"\x03\xe8"))
_READ = 256 * 1024
_EXPECTED = memoryview(ECHO * (_READ // len(ECHO) + 2))
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class Echoes:
    """Counts the echoed frames of one WebSocket and checks every byte of them."""

    __slots__ = ("count", "offset")

    def __init__(self) -> None:
        self.offset = 0  # bytes into the current 66-byte frame
        self.count = 0

    def feed(self, data: bytes) -> int:
        """Account for ``data``; return how many frames it completed."""
        n = len(data)
        off = self.offset
        while n > _READ:  # bigger than one precomputed copy: check in pieces
            self.feed(data[:_READ])
            data = data[_READ:]
            n = len(data)
            off = self.offset
        if _EXPECTED[off : off + n] != data:
            raise RuntimeError(f"echo mismatch at frame offset {off}: {bytes(data[:16])!r}")
        whole, self.offset = divmod(off + n, len(ECHO))
        self.count += whole
        return whole


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# -- HTTP/1.1: raw sockets ---------------------------------------------------------------


def _h1_open(host: str, port: int, path: str) -> tuple[socket.socket, bytes]:
    sock = socket.create_connection((host, port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    key = base64.b64encode(os.urandom(16))
    sock.sendall(
        b"GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n"
        % (path.encode(), host.encode(), port, key)
    )
    buf = b""
    while b"\r\n\r\n" not in buf:
        more = sock.recv(4096)
        if not more:
            raise RuntimeError(f"connection closed during the handshake: {buf[:80]!r}")
        buf += more
    head, rest = buf.split(b"\r\n\r\n", 1)
    accept = base64.b64encode(hashlib.sha1(key + _GUID).digest())
    if not head.startswith(b"HTTP/1.1 101") or accept not in head:
        raise RuntimeError(f"handshake refused: {head[:120]!r}")
    sock.settimeout(None)
    return sock, rest


def run_h1(
    host: str, port: int, path: str, conns: int, window: int, duration: float
) -> dict[str, Any]:
    opened = [_h1_open(host, port, path) for _ in range(conns)]
    selector = selectors.DefaultSelector()
    echoes: dict[socket.socket, Echoes] = {}
    cpu0, start = _cpu(), time.monotonic()
    deadline = start + duration
    burst = FRAME * window
    for sock, rest in opened:
        echoes[sock] = Echoes()
        if rest:
            echoes[sock].feed(rest)
        selector.register(sock, selectors.EVENT_READ, sock)
        sock.sendall(burst)
    while True:
        now = time.monotonic()
        if now >= deadline:
            break
        for key, _ in selector.select(deadline - now):
            sock = key.data
            data = sock.recv(_READ)
            if not data:
                raise RuntimeError("server closed a connection during the run")
            done = echoes[sock].feed(data)
            if done:
                sock.sendall(FRAME * done)
    elapsed, cpu = time.monotonic() - start, _cpu() - cpu0
    for sock, _ in opened:
        try:  # a polite close (1000), not waited for
            sock.sendall(CLOSE)
        except OSError:
            pass
        sock.close()
    return {"messages": sum(e.count for e in echoes.values()), "seconds": elapsed, "cpu_s": cpu}


# -- HTTP/2 (RFC 8441): the h2 package ---------------------------------------------------


class _H2Client(asyncio.Protocol):
    def __init__(
        self, authority: bytes, path: bytes, window: int, ready: asyncio.Future[None]
    ) -> None:
        import h2.config
        import h2.connection

        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        self.authority, self.path, self.window = authority, path, window
        self.ready = ready
        self.echoes = Echoes()
        self.sending = False
        self.owed = 0  # frames released by echoes but held back by flow control
        self.stream_id = 0
        self.transport: Any = None  # uvloop's transports are not asyncio.Transport subclasses

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.conn.initiate_connection()
        self.conn.increment_flow_control_window(2**30)  # never the client's limit
        transport.write(self.conn.data_to_send())

    def data_received(self, data: bytes) -> None:
        import h2.events

        done = 0
        event: Any
        for event in self.conn.receive_data(data):
            cls = type(event)
            if cls is h2.events.DataReceived:
                done += self.echoes.feed(event.data)
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif cls is h2.events.RemoteSettingsChanged and not self.stream_id:
                self.stream_id = self.conn.get_next_available_stream_id()
                self.conn.send_headers(
                    self.stream_id,
                    [
                        (b":method", b"CONNECT"),
                        (b":protocol", b"websocket"),
                        (b":scheme", b"https"),
                        (b":path", self.path),
                        (b":authority", self.authority),
                        (b"sec-websocket-version", b"13"),
                    ],
                )
            elif cls is h2.events.ResponseReceived:
                status = dict(event.headers).get(b":status")
                if status != b"200" and not self.ready.done():
                    self.ready.set_exception(RuntimeError(f"extended CONNECT answered {status!r}"))
                elif not self.ready.done():
                    self.ready.set_result(None)
            elif cls is h2.events.StreamReset or cls is h2.events.StreamEnded:
                if not self.ready.done():
                    self.ready.set_exception(RuntimeError(f"stream ended: {event}"))
                self.sending = False
        if self.sending:
            self.owed += done
            self._send_owed()
        assert self.transport is not None
        out = self.conn.data_to_send()
        if out:
            self.transport.write(out)

    def start(self) -> None:
        self.sending = True
        self.owed = self.window
        self._send_owed()
        assert self.transport is not None
        self.transport.write(self.conn.data_to_send())

    def _send_owed(self) -> None:
        room = self.conn.local_flow_control_window(self.stream_id) // len(FRAME)
        k = min(self.owed, room)
        if k > 0:
            self.conn.send_data(self.stream_id, FRAME * k)
            self.owed -= k


async def _run_h2(
    host: str, port: int, path: str, conns: int, window: int, duration: float
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    clients: list[_H2Client] = []
    for _ in range(conns):
        ready: asyncio.Future[None] = loop.create_future()
        authority = f"localhost:{port}".encode()
        transport, client = await loop.create_connection(
            partial(_H2Client, authority, path.encode(), window, ready),
            host,
            port,
            ssl=context,
            server_hostname="localhost",
        )
        if transport.get_extra_info("ssl_object").selected_alpn_protocol() != "h2":
            raise RuntimeError("ALPN did not select h2")
        await asyncio.wait_for(ready, 10)
        clients.append(client)
    cpu0, start = _cpu(), time.monotonic()
    counts0 = [c.echoes.count for c in clients]
    for c in clients:
        c.start()
    await asyncio.sleep(duration)
    messages = sum(c.echoes.count for c in clients) - sum(counts0)
    elapsed, cpu = time.monotonic() - start, _cpu() - cpu0
    for c in clients:
        c.sending = False
        if c.transport is not None:
            c.transport.close()
    return {"messages": messages, "seconds": elapsed, "cpu_s": cpu}


# -- HTTP/3 (RFC 9220): aioquic ------------------------------------------------------------


async def _run_h3(
    host: str, port: int, path: str, conns: int, window: int, duration: float
) -> dict[str, Any]:
    from aioquic.asyncio.client import connect
    from aioquic.asyncio.protocol import QuicConnectionProtocol
    from aioquic.h3.connection import H3_ALPN, H3Connection
    from aioquic.h3.events import DataReceived, HeadersReceived
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.events import QuicEvent, StreamReset

    class Client(QuicConnectionProtocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.h3 = H3Connection(self._quic)
            self.echoes = Echoes()
            self.sending = False
            self.stream_id = -1
            self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def quic_event_received(self, event: QuicEvent) -> None:
            if isinstance(event, StreamReset) and not self.ready.done():
                self.ready.set_exception(RuntimeError("extended CONNECT stream reset"))
            done = 0
            for h3_event in self.h3.handle_event(event):
                if isinstance(h3_event, DataReceived) and h3_event.stream_id == self.stream_id:
                    done += self.echoes.feed(h3_event.data)
                elif isinstance(h3_event, HeadersReceived) and not self.ready.done():
                    status = dict(h3_event.headers).get(b":status")
                    if status == b"200":
                        self.ready.set_result(None)
                    else:
                        self.ready.set_exception(RuntimeError(f"CONNECT answered {status!r}"))
            if done and self.sending:
                # aioquic transmits after the datagram's events are handled.
                self.h3.send_data(self.stream_id, FRAME * done, end_stream=False)

    configuration = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN)
    configuration.verify_mode = ssl.CERT_NONE
    configuration.server_name = "localhost"
    async with _AsyncStack() as stack:
        clients: list[Client] = []
        for _ in range(conns):
            client = await stack.enter(
                connect(host, port, configuration=configuration, create_protocol=Client)
            )
            assert isinstance(client, Client)
            client.stream_id = client._quic.get_next_available_stream_id()
            client.h3.send_headers(
                client.stream_id,
                [
                    (b":method", b"CONNECT"),
                    (b":protocol", b"websocket"),
                    (b":scheme", b"https"),
                    (b":path", path.encode()),
                    (b":authority", f"localhost:{port}".encode()),
                    (b"sec-websocket-version", b"13"),
                ],
            )
            client.transmit()
            await asyncio.wait_for(client.ready, 10)
            clients.append(client)
        cpu0, start = _cpu(), time.monotonic()
        counts0 = sum(c.echoes.count for c in clients)
        for c in clients:
            c.sending = True
            c.h3.send_data(c.stream_id, FRAME * window, end_stream=False)
            c.transmit()
        await asyncio.sleep(duration)
        messages = sum(c.echoes.count for c in clients) - counts0
        elapsed, cpu = time.monotonic() - start, _cpu() - cpu0
        for c in clients:
            c.sending = False
    return {"messages": messages, "seconds": elapsed, "cpu_s": cpu}


class _AsyncStack:
    """contextlib.AsyncExitStack, with a shorter name for entering many connections."""

    async def __aenter__(self) -> _AsyncStack:
        from contextlib import AsyncExitStack

        self._stack = AsyncExitStack()
        await self._stack.__aenter__()
        return self

    async def enter(self, manager: Any) -> Any:
        return await self._stack.enter_async_context(manager)

    async def __aexit__(self, *exc: Any) -> None:
        await self._stack.__aexit__(*exc)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.wsload", description=__doc__.split("\n")[0])
    p.add_argument("--transport", choices=("h1", "h2", "h3"), required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path", default="/ws")
    p.add_argument("--connections", type=int, default=8)
    p.add_argument("--window", type=int, default=32, help="messages in flight per connection")
    p.add_argument("--duration", type=float, default=5.0)
    args = p.parse_args(argv)
    how = (args.host, args.port, args.path, args.connections, args.window, args.duration)
    if args.transport == "h1":
        result = run_h1(*how)
    else:
        runner = _run_h2 if args.transport == "h2" else _run_h3
        try:
            import uvloop  # the client's event loop: uvloop when there is one (cheaper)

            result = uvloop.run(runner(*how))
        except ImportError:
            result = asyncio.run(runner(*how))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
