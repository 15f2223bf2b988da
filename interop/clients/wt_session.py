"""The wt-* cases with aioquic's client (the QUIC interop runner's WebTransport suite).

Not an adapter itself: the ``aioquic`` adapter calls :func:`run` from its worker thread.
The session is a draft-02 CONNECT to the app's ``/wtx`` on :func:`clientkit.ws.open_h3`'s
tunnel (aioquic speaks draft-02 natively: no capsules, QUIC flow control only), with
``WT-Available-Protocols`` from :data:`~interop.cases.WT_CLIENT_PROTOCOLS`. Evidence per
cell: the WT-Protocol the server answered, or every file's sha256 against the app's
deterministic content (``/files/<size>``), compared on the side that received it.
"""

from __future__ import annotations

import hashlib
from typing import Any

import anyio

from clientkit.ws import open_h3, open_wt_stream

from ..app import file_body, file_sha256, wt_ack_digest, wt_datagram_digest
from ..cases import (
    WT_CLIENT_PROTOCOLS,
    WT_DATAGRAM_SIZES,
    WT_PROTOCOL_WANT,
    WT_TRANSFER_SIZES,
    Result,
    Server,
    fail,
    passed,
)

#: Datagram rounds: each round asks again for what has not come back (datagrams may be
#: lost, also on loopback when a burst overflows a queue).
DATAGRAM_ROUNDS = 30


def run(case: str, server: Server) -> Result:
    return anyio.run(_run, case, server)


async def _run(case: str, server: Server) -> Result:
    if case == "webtransport":
        return await _echo(server)
    offered = ", ".join(f'"{p}"' for p in WT_CLIENT_PROTOCOLS).encode()
    async with open_h3(
        server.h3_port,
        "/wtx",
        cafile=server.ca_certfile,
        webtransport=True,
        protocol=b"webtransport",
        headers=[(b"wt-available-protocols", offered)],
    ) as tunnel:
        if tunnel.status != 200:
            return fail(f"CONNECT /wtx answered {tunnel.status}")
        with anyio.fail_after(60):
            if case == "wt-handshake":
                chosen = dict(tunnel.headers).get(b"wt-protocol", b"")
                if chosen != f'"{WT_PROTOCOL_WANT}"'.encode():
                    return fail(f"WT-Protocol {chosen!r}, wanted {WT_PROTOCOL_WANT!r}")
                return passed(
                    f"session 200; offered {list(WT_CLIENT_PROTOCOLS)}, server chose"
                    f" {chosen.decode()} (the first the app supports)"
                )
            if case.startswith("wt-transfer-datagram"):
                return await _datagrams(tunnel, case.endswith("-send"))
            return await _streams(
                tunnel, unidirectional="-unidirectional-" in case, send=case.endswith("-send")
            )
    return fail("session ended early")


async def _ended(tunnel: Any, stream: int) -> None:
    await _wait(tunnel, lambda: tunnel.wt_streams.get(stream, (b"", False))[1])


async def _wait(tunnel: Any, condition: Any) -> None:
    while not condition():
        if tunnel.terminated:
            raise AssertionError("the connection closed")
        await anyio.sleep(0.005)


def _new_server_streams(tunnel: Any, known: set[int], bit: int) -> list[int]:
    # Server-initiated streams (odd ids) of one kind that have ended and were not seen yet.
    return [
        s
        for s, (_, ended) in tunnel.wt_streams.items()
        if s & 3 == bit and ended and s not in known
    ]


async def _streams(tunnel: Any, *, unidirectional: bool, send: bool) -> Result:
    quic, h3, session = tunnel.quic, tunnel.h3, tunnel.stream_id
    kind = "uni" if unidirectional else "bidi"
    known: set[int] = set()
    for size in WT_TRANSFER_SIZES:
        if send:
            # Client to server on our stream; the app answers "<length> <sha256>" on it, or
            # on a unidirectional stream it opens (the reply to ours).
            stream = open_wt_stream(h3, session, unidirectional)
            quic.send_stream_data(stream, b"send\n" + file_body(size), end_stream=True)
            await tunnel.transmit()
            if unidirectional:
                await _wait(tunnel, lambda: _new_server_streams(tunnel, known, 3))
                [reply_stream] = _new_server_streams(tunnel, known, 3)
                known.add(reply_stream)
            else:
                reply_stream = stream
                await _ended(tunnel, stream)
            answer = tunnel.wt_streams[reply_stream][0].decode()
            if answer != f"{size} {file_sha256(size)}":
                return fail(f"{size} bytes on a {kind} stream: the server saw {answer!r}")
            continue
        # Server to client: ask on a bidirectional control stream; the app opens a stream
        # of the kind with the file and answers "<its id> <sha256 of what it sent>".
        control = open_wt_stream(h3, session)
        quic.send_stream_data(control, f"{kind} {size}\n".encode(), end_stream=True)
        await tunnel.transmit()
        await _ended(tunnel, control)
        opened, _, digest = tunnel.wt_streams[control][0].decode().partition(" ")
        stream = int(opened) if opened.isdigit() else -1
        if stream & 3 != (3 if unidirectional else 1):
            return fail(f"control answer {tunnel.wt_streams[control][0]!r}: not a server {kind}")
        await _ended(tunnel, stream)
        if not unidirectional:
            quic.send_stream_data(stream, b"", end_stream=True)  # our side of it
            await tunnel.transmit()
        got = hashlib.sha256(tunnel.wt_streams[stream][0]).hexdigest()
        if got != file_sha256(size) or digest != got:
            return fail(f"{size} bytes on server {kind} stream {stream}: sha256 mismatch")
    direction = "client to server" if send else "server-opened, server to client"
    return passed(
        f"{len(WT_TRANSFER_SIZES)} files ({', '.join(map(str, WT_TRANSFER_SIZES))} bytes) on"
        f" {kind} streams, {direction}: every sha256 matches /files/<size>"
    )


async def _datagrams(tunnel: Any, send: bool) -> Result:
    h3, session = tunnel.h3, tunnel.stream_id
    count = len(WT_DATAGRAM_SIZES)
    got: dict[int, bytes] = {}
    for _ in range(DATAGRAM_ROUNDS):
        for index in range(count):
            if index not in got:
                if send:
                    payload = file_body(WT_DATAGRAM_SIZES[index])
                    h3.send_datagram(session, b"put %d " % index + payload)
                else:
                    h3.send_datagram(session, b"get %d" % index)
        await tunnel.transmit()
        with anyio.move_on_after(0.5):
            while len(got) < count:
                while tunnel.datagrams:
                    datagram = tunnel.datagrams.pop(0)
                    head, _, rest = datagram.removeprefix(b"ack ").partition(b" ")
                    if head.isdigit() and int(head) < count:
                        got[int(head)] = rest
                await anyio.sleep(0.005)
        if len(got) == count:
            break
    if len(got) < count:
        return fail(f"{len(got)} of {count} datagrams answered after {DATAGRAM_ROUNDS} rounds")
    ordered = [got[i] for i in range(count)]
    if send:
        digest = hashlib.sha256(b"".join(ordered)).hexdigest()
        if digest != wt_ack_digest():
            return fail("the server's sha256 of some datagram payloads do not match")
        what = f"{count} datagrams ({WT_DATAGRAM_SIZES[0]}-{WT_DATAGRAM_SIZES[-1]} bytes)"
        return passed(f"{what} client to server, each acknowledged with its payload's sha256")
    digest = hashlib.sha256(b"".join(ordered)).hexdigest()
    if digest != wt_datagram_digest():
        return fail("some datagram payloads differ from /files/<size>")
    what = f"{count} datagrams ({WT_DATAGRAM_SIZES[0]}-{WT_DATAGRAM_SIZES[-1]} bytes)"
    return passed(f"{what} server to client, sha256 of all payloads matches")


async def _echo(server: Server) -> Result:
    """The ``webtransport`` case: /wt echoes with an ``echo:`` prefix (as for the pages)."""
    async with open_h3(
        server.h3_port,
        "/wt",
        cafile=server.ca_certfile,
        webtransport=True,
        protocol=b"webtransport",
    ) as tunnel:
        if tunnel.status != 200:
            return fail(f"CONNECT /wt answered {tunnel.status}")
        with anyio.fail_after(30):
            for _ in range(20):  # datagrams may be lost: retry
                tunnel.h3.send_datagram(tunnel.stream_id, b"datagram")
                await tunnel.transmit()
                with anyio.move_on_after(0.25):
                    await _wait(tunnel, lambda: bool(tunnel.datagrams))
                if tunnel.datagrams:
                    break
            stream = open_wt_stream(tunnel.h3, tunnel.stream_id)
            text = "interop stream \u2713".encode()
            tunnel.quic.send_stream_data(stream, text, end_stream=True)
            await tunnel.transmit()
            await _ended(tunnel, stream)
        datagram = tunnel.datagrams[0] if tunnel.datagrams else None
        echoed = tunnel.wt_streams[stream][0]
        if datagram != b"echo:datagram" or echoed != b"echo:" + text:
            return fail(f"datagram came back as {datagram!r}, stream as {echoed!r}")
        return passed("a datagram and a bidirectional stream came back with the echo: prefix")
