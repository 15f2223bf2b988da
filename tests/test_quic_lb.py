"""QUIC-LB connection IDs and the routing decision, in Python and in the kernel.

:func:`quicserve.quic.lb.route` is the pure-Python model; :func:`cbpf_program` is the same
decision as classic BPF. The model is checked against the program by attaching it to a
real ``SO_REUSEPORT`` group of loopback UDP sockets and seeing which socket each datagram
reaches. The datagrams cover every branch: short headers with our CIDs (every slot, and
bytes that are no slot), long headers with our CIDs (Handshake, Initial after Retry),
client-chosen DCIDs of every legal length, and datagrams too short to read.
"""

from __future__ import annotations

import os
import random
import select
import socket
import sys

import pytest

from quicserve.quic.endpoint import EndpointCore
from quicserve.quic.lb import (
    MAX_SERVER_ID,
    CidLayout,
    RoutingTable,
    cbpf_program,
    route,
)
from quicserve.transport.sockets import attach_cbpf

V1 = b"\x00\x00\x00\x01"


def short_packet(dcid: bytes, payload: bytes = b"p" * 30) -> bytes:
    return b"\x40" + dcid + payload


def long_packet(dcid: bytes, first: int = 0xC0, scid: bytes = b"\x11" * 8) -> bytes:
    return bytes([first]) + V1 + bytes([len(dcid)]) + dcid + bytes([len(scid)]) + scid + b"x" * 40


def test_layout_matches_quic_lb_plaintext() -> None:
    layout = CidLayout()
    cid = layout.encode(3, nonce=b"\xaa" * 6)
    assert len(cid) == layout.cid_length == 8
    # Octet 0: config rotation 0 (3 bits), then the length of the rest (7) in 5 bits.
    assert cid[0] >> 5 == 0 and cid[0] & 0x1F == len(cid) - 1
    assert cid[1] == 3 and cid[2:] == b"\xaa" * 6
    assert layout.decode(cid) == 3

    machine = CidLayout(b"\x0a\x0b")
    cid = machine.encode(5)
    assert len(cid) == 10 and cid[0] & 0x1F == 9
    assert cid[1:3] == b"\x0a\x0b" and cid[3] == 5
    assert machine.decode(cid) == 5
    assert layout.decode(cid) is None  # another machine's layout
    assert CidLayout(b"\x0c\x0b").decode(cid) is None  # another machine's server ID


def test_layout_limits() -> None:
    assert CidLayout(b"\x01" * MAX_SERVER_ID).cid_length == 20  # RFC 9000 §17.2 maximum
    with pytest.raises(ValueError):
        CidLayout(b"\x01" * (MAX_SERVER_ID + 1))
    with pytest.raises(ValueError):
        CidLayout(config_rotation=0b111)  # QUIC-LB: "unroutable"
    with pytest.raises(ValueError):
        CidLayout.from_hex("not hex")
    with pytest.raises(ValueError):
        RoutingTable(2, (2,))


def test_generator_plugs_into_the_endpoint_core() -> None:
    layout = CidLayout(b"\x07")
    core = EndpointCore(
        supported_versions=[1], cid_length=layout.cid_length, cid_generator=layout.generator(4)
    )
    cids = {core.new_connection_id()[0] for _ in range(50)}
    assert len(cids) == 50
    assert {layout.decode(cid) for cid in cids} == {4}


def test_route_follows_the_rules() -> None:
    layout = CidLayout()
    table = RoutingTable(4, (1, 3))
    for worker in range(4):
        cid = layout.encode(worker)
        assert route(short_packet(cid), layout, table) == worker
        assert route(long_packet(cid), layout, table) == worker  # Handshake, Initial after Retry
    # A client-chosen DCID: always the same active slot for the same DCID.
    for _ in range(50):
        dcid = os.urandom(random.choice([8, 12, 20]))
        if dcid[0] == layout.first_octet:
            continue
        slot = route(long_packet(dcid), layout, table)
        assert slot in table.active
        assert route(long_packet(dcid, first=0xD0), layout, table) == slot  # its 0-RTT
    assert route(b"\x40\x07", layout, table) == 0  # too short: slot 0, like the BPF program


def test_forwarding_fallback_and_kernel_agree_on_real_sockets() -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip("SO_ATTACH_REUSEPORT_CBPF is Linux only")
    for layout, table in (
        (CidLayout(), RoutingTable(4, (0, 1, 2, 3))),
        (CidLayout(), RoutingTable(5, (0, 2, 4))),
        (CidLayout(b"\xbe\xef"), RoutingTable(3, (2,))),
    ):
        with reuseport_group(table.slots) as (port, sockets):
            attach_cbpf(sockets[0].fileno(), cbpf_program(layout, table))
            datagrams = sample_datagrams(layout, table)
            expected = [route(d, layout, table) for d in datagrams]
            assert deliveries(port, sockets, datagrams) == expected
            assert set(expected) >= set(table.active)


def sample_datagrams(layout: CidLayout, table: RoutingTable) -> list[bytes]:
    rng = random.Random(6)
    found: list[bytes] = []
    for worker in range(min(table.slots + 3, 256)):
        cid = layout.encode(worker)
        found += [short_packet(cid), long_packet(cid), long_packet(cid, first=0xE0)]
    for _ in range(40):
        dcid = rng.randbytes(rng.choice([8, 9, 16, 18, 20]))
        found += [long_packet(dcid), long_packet(dcid, first=0xD0)]
    lookalike = bytes([layout.first_octet]) + rng.randbytes(layout.cid_length - 1)
    found.append(long_packet(lookalike))
    found += [b"\x40", b"\x40\x07", b"\xc0\x00\x00", b"\xc0" + V1 + b"\x08\x07\x01"]
    return found


class reuseport_group:
    """``count`` UDP sockets in one SO_REUSEPORT group on a loopback port (index = order)."""

    def __init__(self, count: int) -> None:
        self.sockets: list[socket.socket] = []
        port = 0
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(("127.0.0.1", port))
            port = sock.getsockname()[1]
            sock.setblocking(False)
            self.sockets.append(sock)
        self.port = port

    def __enter__(self) -> tuple[int, list[socket.socket]]:
        return self.port, self.sockets

    def __exit__(self, *exc: object) -> None:
        for sock in self.sockets:
            sock.close()


def deliveries(port: int, sockets: list[socket.socket], datagrams: list[bytes]) -> list[int]:
    """The index of the socket that received each datagram (sent one at a time)."""
    got: list[int] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        for data in datagrams:
            client.sendto(data, ("127.0.0.1", port))
            ready, _, _ = select.select(sockets, [], [], 2)
            assert len(ready) == 1, data
            index = sockets.index(ready[0])
            assert ready[0].recv(65536) == data
            got.append(index)
    return got
