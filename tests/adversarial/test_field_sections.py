"""Field sections: one size limit on every protocol, and the QPACK / HPACK bombs.

``--max-header-bytes`` bounds every request header section and trailer section by the
same rule (name + value + 32 per field line): just past it a request gets 431 (trailers:
a stream reset) and the connection carries on; a section that would decode to far more
(twice the limit) closes an HTTP/2 or HTTP/3 connection before it is decoded.
"""

from __future__ import annotations

import asyncio
import contextlib
import select
import socket
import ssl
import time

import hpack
import pytest
from aioquic.h3.connection import ErrorCode, FrameType, Setting, encode_frame

from quicserve.certs import DevCertificate

from ..test_cli import Spawn
from .h3_raw_client import (
    qpack_indexed_dynamic,
    qpack_insert_literal,
    qpack_int,
    qpack_literal,
    qpack_prefix,
    qpack_set_capacity,
    raw_h3,
    request_lines,
)
from .harness import MAX_RSS_GROWTH_MIB, Prober, Target, serve

TABLE = 4096  # the server's default --qpack-max-table-capacity
MAX_ENTRIES = TABLE // 32
LIMIT = 64 * 1024  # the default --max-header-bytes
ENHANCE_YOUR_CALM = 0xB


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100


def big_entry() -> bytes:
    """Encoder instructions: capacity = the whole table, one entry that fills it."""
    return qpack_set_capacity(TABLE) + qpack_insert_literal(b"x", b"v" * (TABLE - 32 - 1))


def bomb_section(references: int) -> bytes:
    """A request whose field lines name the one big entry ``references`` times."""
    return qpack_prefix(1, MAX_ENTRIES) + request_lines("/") + qpack_indexed_dynamic(0) * references


# -- HTTP/3: the QPACK bomb ----------------------------------------------------------------


def test_qpack_bomb_closes_the_connection_before_decoding(
    spawn: Spawn, backend: str, tls_files: DevCertificate
) -> None:
    # 40 HEADERS frames of 60 KB, each line one byte naming a 4 KiB entry: 230 MiB each.
    async def attack(target: Target) -> tuple[int, dict[int, int]]:
        async with raw_h3(target.quic, str(tls_files.ca_certfile)) as client:
            settings = await asyncio.wait_for(client.server_settings, 5)
            client.encoder(big_entry())
            for _ in range(40):
                if client.terminated.done():
                    break  # refused: the rest would only cost this client CPU
                client.request(bomb_section(60_000))
                await asyncio.sleep(0.01)
            code = await asyncio.wait_for(client.terminated, 10)
            return code, settings

    with serve(spawn, backend, tls_files) as target, Prober(target) as prober:
        cpu_before = cpu_seconds(target.pid)
        code, settings = asyncio.run(attack(target))
        cpu = cpu_seconds(target.pid) - cpu_before
    prober.check()
    # RFC 9114 §7.2.4.1: the limit is advertised; the bomb is refused undecoded.
    assert settings[Setting.MAX_FIELD_SECTION_SIZE] == LIMIT
    assert code == ErrorCode.H3_EXCESSIVE_LOAD
    assert target.rss_growth_mib() < MAX_RSS_GROWTH_MIB
    assert cpu < 3.0, f"the server spent {cpu:.1f} s of CPU (probes included)"


def test_qpack_bomb_under_the_hard_bound_gets_431s(
    spawn: Spawn, backend: str, tls_files: DevCertificate
) -> None:
    # 31 references: 127 KB decoded, under twice the limit, so each one is decoded and
    # answered with 431; the connection keeps serving.
    async def attack(target: Target) -> tuple[list[int | None], int | None]:
        async with raw_h3(target.quic, str(tls_files.ca_certfile)) as client:
            client.encoder(big_entry())
            streams = [client.request(bomb_section(31)) for _ in range(40)]
            responses = await client.wait(streams, 10)
            after = client.request(qpack_prefix(0, MAX_ENTRIES) + request_lines("/"))
            (last,) = await client.wait([after], 5)
            assert not client.terminated.done()
            return [r.status for r in responses], last.status

    with serve(spawn, backend, tls_files) as target, Prober(target) as prober:
        statuses, last = asyncio.run(attack(target))
    prober.check()
    assert statuses == [431] * 40
    assert last == 200
    assert target.rss_growth_mib() < MAX_RSS_GROWTH_MIB


def test_oversized_headers_frame_is_refused_at_its_header(
    spawn: Spawn, backend: str, tls_files: DevCertificate
) -> None:
    # A HEADERS frame announcing 1 MB: refused before aioquic buffers it.
    async def attack(target: Target) -> int:
        async with raw_h3(target.quic, str(tls_files.ca_certfile)) as client:
            # HEADERS (type 0x01), length 2**20 as a 4-byte varint, 100 KB of it.
            client.raw_request(b"\x01\x80\x10\x00\x00" + b"\x00" * 100_000)
            return await asyncio.wait_for(client.terminated, 10)

    with serve(spawn, backend, tls_files) as target:
        code = asyncio.run(attack(target))
    assert code == ErrorCode.H3_EXCESSIVE_LOAD


# -- one limit on every protocol ---------------------------------------------------------

# What the requests below carry besides the pad, in each protocol's terms.
H2_REQUEST = [
    (b":method", b"GET"),
    (b":path", b"/"),
    (b":scheme", b"https"),
    (b":authority", b"localhost"),
]
PAD = b"x-pad"


def pad_for(size: int, base: list[tuple[bytes, bytes]]) -> bytes:
    """A value for ``x-pad`` that makes ``base`` + the pad exactly ``size`` by the rule."""
    used = sum(len(n) + len(v) + 32 for n, v in base) + len(PAD) + 32
    return b"p" * (size - used)


def h1_request(size: int, method: bytes = b"GET", path: bytes = b"/") -> bytes:
    # The request line counts as :method and :path; "host" is a field like any other.
    base = [(b":method", method), (b":path", path), (b"host", b"localhost")]
    return b"%s %s HTTP/1.1\r\nhost: localhost\r\n%s: %s\r\n\r\n" % (
        method,
        path,
        PAD,
        pad_for(size, base),
    )


def h1_exchange(target: Target, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", target.http), timeout=5) as sock:
        sock.sendall(data)
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    return answer


def hpack_literal(name: bytes, value: bytes) -> bytes:
    """HPACK literal field without indexing, new name (RFC 7541 §6.2.2)."""
    return b"\x00" + qpack_int(0, 7, len(name)) + name + qpack_int(0, 7, len(value)) + value


def hpack_block(headers: list[tuple[bytes, bytes]]) -> bytes:
    return b"".join(hpack_literal(n, v) for n, v in headers)


class RawH2:
    """HTTP/2 over TLS with header blocks written by hand (no client-side HPACK state)."""

    def __init__(self, target: Target) -> None:
        sock = socket.create_connection(("127.0.0.1", target.https), timeout=10)
        self.sock = target.client_context(["h2"]).wrap_socket(sock, server_hostname="localhost")
        self.decoder = hpack.Decoder()
        self.status: dict[int, int] = {}
        self.resets: dict[int, int] = {}
        self.goaway: int | None = None
        self.broken = False
        self._buffer = b""
        self._next = 1
        # Preface and an empty SETTINGS; the server's SETTINGS are ACKed as they come.
        self.sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(0x4, 0, 0, b""))

    def close(self) -> None:
        self.sock.close()

    def request(self, block: bytes, *, body: bytes = b"", trailers: bytes | None = None) -> int:
        """HEADERS (+ CONTINUATION) carrying ``block``, then DATA and trailers if any."""
        stream_id = self._next
        self._next += 2
        ends = not body and trailers is None
        out = headers_frames(stream_id, block, end_stream=ends)
        if body:
            out += frame(0x0, 0x1 if trailers is None else 0, stream_id, body)
        if trailers is not None:
            out += headers_frames(stream_id, trailers, end_stream=True)
        try:
            self.sock.sendall(out)
        except OSError:
            self.broken = True  # the server closed the connection (after its GOAWAY)
        self.poll()
        return stream_id

    def poll(self) -> None:
        """Read what has arrived, without waiting."""
        while not self.broken and select.select([self.sock], [], [], 0)[0]:
            self._receive()

    def _receive(self) -> None:
        try:
            data = self.sock.recv(65536)
        except (TimeoutError, BlockingIOError, ssl.SSLWantReadError):
            return
        except OSError:
            data = b""
        if not data:
            self.broken = True
        self._feed(data)

    def wait(self, stream_ids: list[int], timeout: float = 10) -> None:
        """Until each stream has a status or a reset, or the connection is gone."""
        deadline = time.monotonic() + timeout
        while (
            self.goaway is None
            and not self.broken
            and not all(s in self.status or s in self.resets for s in stream_ids)
        ):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no answer on {stream_ids}")
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            self._receive()

    def _feed(self, data: bytes) -> None:
        self._buffer += data
        while len(self._buffer) >= 9:
            length = int.from_bytes(self._buffer[:3], "big")
            if len(self._buffer) < 9 + length:
                return
            kind, flags = self._buffer[3], self._buffer[4]
            stream_id = int.from_bytes(self._buffer[5:9], "big") & 0x7FFFFFFF
            payload = self._buffer[9 : 9 + length]
            self._buffer = self._buffer[9 + length :]
            if kind == 0x4 and not flags & 0x1:
                with contextlib.suppress(OSError):
                    self.sock.sendall(frame(0x4, 0x1, 0, b""))  # SETTINGS ACK
            elif kind == 0x1:  # HEADERS (the server sends no padding or priority)
                fields = dict(self.decoder.decode(payload, raw=True))
                if b":status" in fields:
                    self.status.setdefault(stream_id, int(fields[b":status"]))
            elif kind == 0x3:
                self.resets[stream_id] = int.from_bytes(payload[:4], "big")
            elif kind == 0x7:
                self.goaway = int.from_bytes(payload[4:8], "big")


def frame(kind: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    return (
        len(payload).to_bytes(3, "big")
        + bytes((kind, flags))
        + stream_id.to_bytes(4, "big")
        + payload
    )


def headers_frames(stream_id: int, block: bytes, *, end_stream: bool) -> bytes:
    """HEADERS and CONTINUATION frames of at most 16 KiB carrying ``block``."""
    pieces = [block[i : i + 16384] for i in range(0, len(block), 16384)] or [b""]
    out = b""
    for i, piece in enumerate(pieces):
        flags = 0x4 if i == len(pieces) - 1 else 0  # END_HEADERS on the last
        if i == 0:
            out += frame(0x1, flags | (0x1 if end_stream else 0), stream_id, piece)
        else:
            out += frame(0x9, flags, stream_id, piece)
    return out


def h3_lines(headers: list[tuple[bytes, bytes]]) -> bytes:
    return b"".join(qpack_literal(n, v) for n, v in headers)


def test_one_limit_on_every_protocol(spawn: Spawn, backend: str, tls_files: DevCertificate) -> None:
    # The same size rule on HTTP/1.1, HTTP/2 and HTTP/3: at the limit a request is served,
    # one byte past it gets 431, and HTTP/2 and HTTP/3 connections carry on.
    def h2_block(size: int) -> bytes:
        return hpack_block([*H2_REQUEST, (PAD, pad_for(size, H2_REQUEST))])

    def h3_block(size: int) -> bytes:
        return qpack_prefix(0, MAX_ENTRIES) + h3_lines(
            [*H2_REQUEST, (PAD, pad_for(size, H2_REQUEST))]
        )

    async def h3_attempts(target: Target) -> list[int | None]:
        async with raw_h3(target.quic, str(tls_files.ca_certfile)) as client:
            streams = [client.request(h3_block(size)) for size in (LIMIT - 1, LIMIT, LIMIT + 1)]
            streams.append(client.request(h3_block(1000)))
            responses = await client.wait(streams, 10)
            assert not client.terminated.done()
            return [r.status for r in responses]

    with serve(spawn, backend, tls_files) as target:
        h1 = [h1_exchange(target, h1_request(size)) for size in (LIMIT - 1, LIMIT, LIMIT + 1)]
        assert [a.split(b" ", 2)[1] for a in h1] == [b"200", b"200", b"431"], h1

        client = RawH2(target)
        streams = [client.request(h2_block(size)) for size in (LIMIT - 1, LIMIT, LIMIT + 1, 1000)]
        client.wait(streams)
        client.close()
        assert client.goaway is None
        assert [client.status.get(s) for s in streams] == [200, 200, 431, 200]

        assert asyncio.run(h3_attempts(target)) == [200, 200, 431, 200]


# -- HTTP/2: the HPACK bomb ----------------------------------------------------------------


def hpack_big_entry_request() -> bytes:
    """A request that puts one 4033-octet entry in the server's HPACK table (index 62)."""
    return (
        b"\x82\x84\x87"  # :method GET, :path /, :scheme https (static)
        + b"\x01\x09localhost"  # :authority, literal without indexing
        + b"\x40\x01x"  # literal with incremental indexing, new name "x"
        + qpack_int_h(4000)
        + b"v" * 4000
    )


def qpack_int_h(value: int) -> bytes:
    return qpack_int(0x00, 7, value)  # HPACK integers are QPACK's (RFC 7541 §5.1)


def hpack_bomb(references: int) -> bytes:
    return b"\x82\x84\x87\x01\x09localhost" + b"\xbe" * references  # index 62, n times


@pytest.mark.parametrize("references", [60_000, 31])
def test_hpack_bomb(spawn: Spawn, backend: str, tls_files: DevCertificate, references: int) -> None:
    # 60 KB of one-byte references to a 4 KiB entry (240 MiB): HPACK stops at twice the
    # limit and the connection fails. 31 references (125 KB, under twice the limit):
    # decoded, answered with 431, and the connection carries on.
    with serve(spawn, backend, tls_files) as target, Prober(target) as prober:
        client = RawH2(target)
        first = client.request(hpack_big_entry_request())
        client.wait([first])
        assert client.status.get(first) == 200
        streams = []
        for _ in range(40):
            if client.goaway is not None or client.broken:
                break  # refused: the rest would go nowhere
            # One at a time: writing into a connection the server has closed would have
            # the kernel reset it, and the GOAWAY could be lost with the reset.
            streams.append(client.request(hpack_bomb(references)))
            client.wait(streams[-1:])
        if references > 1000:
            assert client.goaway == ENHANCE_YOUR_CALM
        else:
            last = client.request(hpack_bomb(0))
            client.wait([last])
            assert client.goaway is None
            assert [client.status.get(s) for s in streams] == [431] * 40
            assert client.status.get(last) == 200
        client.close()
    prober.check()
    assert target.rss_growth_mib() < MAX_RSS_GROWTH_MIB


# -- trailers ---------------------------------------------------------------------------------


def test_oversized_trailers(spawn: Spawn, backend: str, tls_files: DevCertificate) -> None:
    # A trailer section is held to the same limit as the head, on every protocol. At the
    # limit /echo answers; one past it the request fails: HTTP/1.1 431 (the app has not
    # answered yet), an HTTP/2 or HTTP/3 stream reset while the connection carries on.
    trailer_base: list[tuple[bytes, bytes]] = []

    def trailer(size: int) -> list[tuple[bytes, bytes]]:
        return [(PAD, pad_for(size, trailer_base))]

    def h1_post(size: int) -> bytes:
        ((name, value),) = trailer(size)
        return (
            b"POST /echo HTTP/1.1\r\nhost: localhost\r\ntransfer-encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n0\r\n%s: %s\r\n\r\n" % (name, value)
        )

    post = [
        (b":method", b"POST"),
        (b":path", b"/echo"),
        (b":scheme", b"https"),
        (b":authority", b"localhost"),
    ]

    async def h3_attempts(target: Target) -> tuple[list[int | None], list[int | None]]:
        async with raw_h3(target.quic, str(tls_files.ca_certfile)) as client:
            streams = []
            for size in (LIMIT, LIMIT + 1):
                stream = client.request(
                    qpack_prefix(0, MAX_ENTRIES) + h3_lines(post), end=False, body=b"hello"
                )
                block = qpack_prefix(0, MAX_ENTRIES) + h3_lines(trailer(size))
                client.send(stream, encode_headers_frame(block), end=True)
                streams.append(stream)
            streams.append(client.request(qpack_prefix(0, MAX_ENTRIES) + request_lines("/")))
            responses = await client.wait(streams, 10)
            assert not client.terminated.done()
            return [r.status for r in responses], [r.reset for r in responses]

    with serve(spawn, backend, tls_files) as target:
        h1 = [h1_exchange(target, h1_post(size)) for size in (LIMIT, LIMIT + 1)]
        assert [a.split(b" ", 2)[1] for a in h1] == [b"200", b"431"], h1

        client = RawH2(target)
        streams = [
            client.request(hpack_block(post), body=b"hello", trailers=hpack_block(trailer(size)))
            for size in (LIMIT, LIMIT + 1)
        ]
        streams.append(client.request(hpack_block(H2_REQUEST)))
        client.wait(streams)
        client.close()
        assert client.goaway is None
        assert client.status.get(streams[0]) == 200
        assert client.resets.get(streams[1]) == ENHANCE_YOUR_CALM
        assert streams[1] not in client.status
        assert client.status.get(streams[2]) == 200

        statuses, resets = asyncio.run(h3_attempts(target))
        assert statuses[0] == 200 and statuses[2] == 200
        assert resets[1] == ErrorCode.H3_EXCESSIVE_LOAD and statuses[1] is None


def encode_headers_frame(block: bytes) -> bytes:
    return encode_frame(FrameType.HEADERS, block)


def test_malformed_trailers_reset_only_their_stream(
    spawn: Spawn, backend: str, tls_files: DevCertificate
) -> None:
    # RFC 9114 §4.1.2: trailers with a pseudo-header make the request malformed, a stream
    # error. The app already has the request: it must see a reset rather than write to a
    # stream aioquic has reset (that raised in the app, and STOP_SENDING a stream aioquic
    # had forgotten raised in the server's own task, which took the process down).
    async def attempt(target: Target) -> tuple[list[int | None], int | None]:
        async with raw_h3(target.quic, str(tls_files.ca_certfile)) as client:
            streams = []
            for path in (b"/", b"/echo"):
                head = [*H2_REQUEST[:1], (b":path", path), *H2_REQUEST[2:]]
                head[0] = (b":method", b"POST")
                bad = encode_headers_frame(
                    qpack_prefix(0, MAX_ENTRIES) + h3_lines([(b":path", b"/x")])
                )
                block = qpack_prefix(0, MAX_ENTRIES) + h3_lines(head)
                if path == b"/":
                    # "/" answers without reading the body: head, body and bad trailers
                    # go in one packet, so the reset comes before the app writes (sent
                    # apart, a loaded machine let it answer 200 first, and a complete
                    # response is rightly not reset by trailers that come after it).
                    data = encode_headers_frame(block) + encode_frame(FrameType.DATA, b"hello")
                    stream = client.raw_request(data + bad, end=True)
                else:
                    # "/echo" waits for the body's end: the bad trailers reach a running
                    # app whatever the timing.
                    stream = client.request(block, end=False, body=b"hello")
                    client.send(stream, bad, end=True)
                streams.append(stream)
            resets = [r.reset for r in await client.wait(streams, 10)]
            await asyncio.sleep(0.5)  # the app calls run and end
            after = client.request(qpack_prefix(0, MAX_ENTRIES) + request_lines("/"))
            (last,) = await client.wait([after], 5)
            return resets, last.status

    with serve(spawn, backend, tls_files) as target:
        resets, last = asyncio.run(attempt(target))
        time.sleep(0.3)
        assert target.alive()
    assert resets == [ErrorCode.H3_MESSAGE_ERROR] * 2
    assert last == 200
    assert "Traceback" not in target.server.stderr, target.server.stderr
