"""Fuzzing quicserve/quic/endpoint.py (EndpointCore.classify) with datagrams built from
QUIC header fields.

Datagrams are long headers (any type and version: 1, 2, negotiation, reserved, random;
CID lengths from 0 to 25 whatever the bytes that follow; token lengths and tokens,
including real and tampered Retry tokens; sizes around 1200) and short headers (to a
registered CID or not), truncated or mutated, from a few addresses over time. The harness
acts as the transport: it registers the CIDs of every accepted connection, and at random
finishes handshakes, retires CIDs and forgets connections.

Invariants: ``classify`` never hits its internal-error guard, a reply is never larger
than its trigger (no amplification), a Version Negotiation is never answered, a VN and
an Accept need a 1200-byte datagram of the right kind, Route goes only to registered
keys, replies stay within their rate limits, and the core's tables stay bounded.
"""

from __future__ import annotations

import itertools

from aioquic.buffer import Buffer  # type: ignore[attr-defined]
from aioquic.quic.packet import QuicPacketType, QuicProtocolVersion, pull_quic_header
from hypothesis import given
from hypothesis import strategies as st

from quicserve.quic.endpoint import (
    MIN_INITIAL_DATAGRAM,
    Accept,
    Drop,
    EndpointCore,
    Reply,
    Route,
)
from quicserve.quic.tokens import TokenAuthority

from .support import fuzz_settings, mostly, mutated, stat

V1 = int(QuicProtocolVersion.VERSION_1)
V2 = int(QuicProtocolVersion.VERSION_2)
ADDRS = [("192.0.2.1", 4433), ("192.0.2.1", 5555), ("198.51.100.9", 4433)]
RATE = 5.0

versions = mostly(
    st.sampled_from([V1, V2]),
    st.sampled_from([0, 0x0A0A0A0A, 0xFF00001D, 0xFFFFFFFF, 2]),
    odds=4,
)
cid_bytes = st.binary(min_size=0, max_size=25)


def varint(value: int) -> bytes:
    if value < 0x40:
        return bytes([value])
    if value < 0x4000:
        return (value | 0x4000).to_bytes(2, "big")
    if value < 0x40000000:
        return (value | 0x80000000).to_bytes(4, "big")
    return (value | 0xC000000000000000).to_bytes(8, "big")


class World:
    """The core and what the transport knows: keys, their CIDs, and a few real tokens."""

    def __init__(self, retry: str, max_connections: int) -> None:
        self._cid_counter = itertools.count(1)
        self.core = EndpointCore(
            supported_versions=[V1, V2],
            retry=retry,  # type: ignore[arg-type]
            retry_threshold=1,
            max_connections=max_connections,
            stateless_reset_rate=RATE,
            close_rate=RATE,
            max_unvalidated_per_address=2,
            # Deterministic CIDs and tokens: hypothesis replays must draw the same way.
            tokens=TokenAuthority(secret=bytes(32)),
            cid_generator=lambda: next(self._cid_counter).to_bytes(8, "big"),
        )
        self.keys = itertools.count()
        self.cids: dict[int, list[bytes]] = {}
        self.tokens: list[bytes] = []
        self.replies: dict[str, list[float]] = {}

    def all_cids(self) -> list[bytes]:
        return sorted(cid for cids in self.cids.values() for cid in cids)


@st.composite
def long_header(draw: st.DrawFn, world: World) -> bytes:
    packet_type = draw(mostly(st.just(0), st.integers(1, 3)))  # Initial mostly
    first = 0x80 | draw(mostly(st.just(0x40), st.just(0)))  # the fixed bit, mostly set
    first |= packet_type << 4 | draw(st.integers(0, 15))
    dcid = draw(mostly(st.binary(min_size=8, max_size=20), cid_bytes))
    if world.all_cids() and draw(st.integers(0, 3)) == 0:
        dcid = draw(st.sampled_from(world.all_cids()))
    dcid_len = draw(mostly(st.just(len(dcid)), st.integers(0, 255)))
    scid = draw(cid_bytes)
    out = bytes([first]) + draw(versions).to_bytes(4, "big")
    out += bytes([dcid_len]) + dcid + bytes([len(scid)]) + scid
    if packet_type == 0:
        token = b""
        choice = draw(st.integers(0, 5))
        if choice == 1 and world.tokens:
            token = draw(st.sampled_from(world.tokens))
        elif choice == 2 and world.tokens:
            token = draw(mutated(draw(st.sampled_from(world.tokens)), max_edits=2))
        elif choice == 3:
            token = draw(st.binary(max_size=80))
        length = draw(mostly(st.just(len(token)), st.integers(0, 2**20)))
        out += varint(length) + token
    # The Length field, then the (never decrypted) payload up to the datagram size.
    size = draw(mostly(st.sampled_from([1200, 1252, 1350]), st.integers(len(out), 1500)))
    out += varint(draw(mostly(st.just(max(0, size - len(out) - 2)), st.integers(0, 2**30))))
    return out + bytes(max(0, size - len(out)))


@st.composite
def short_header(draw: st.DrawFn, world: World) -> bytes:
    first = draw(mostly(st.integers(0x40, 0x7F), st.integers(0, 0x3F)))  # fixed bit set
    if world.all_cids() and draw(st.booleans()):
        dcid = draw(st.sampled_from(world.all_cids()))
    else:
        dcid = draw(st.binary(min_size=0, max_size=10))
    return bytes([first]) + dcid + draw(st.binary(max_size=60)) + bytes(draw(st.integers(0, 1400)))


@st.composite
def datagrams(draw: st.DrawFn, world: World) -> bytes:
    data = draw(long_header(world) if draw(st.booleans()) else short_header(world))
    edit = draw(st.integers(0, 6))
    if edit == 0:
        data = data[: draw(st.integers(0, len(data)))]
    elif edit == 1:
        data = draw(mutated(data[:64])) + data[64:]
    return data


def check_reply(world: World, data: bytes, decision: Reply, now: float) -> None:
    assert len(decision.datagram) < len(data), "a reply larger than its trigger"
    assert data[0] & 0x80 or decision.reason == "stateless reset"
    if data[0] & 0x80:
        version = int.from_bytes(data[1:5], "big")
        assert version != 0, "a Version Negotiation was answered"
        reply = decision.datagram
        if decision.reason == "version negotiation":
            assert len(data) >= MIN_INITIAL_DATAGRAM
            assert version not in (V1, V2)
            # RFC 8999 §6: version 0, the client's CIDs echoed and swapped (they may be
            # longer than 20 bytes for an unknown version, which aioquic would not parse).
            dcid = data[6 : 6 + data[5]]
            scid = data[7 + data[5] : 7 + data[5] + data[6 + data[5]]]
            assert reply[0] & 0x80 and reply[1:5] == bytes(4)
            assert reply[5 : 6 + reply[5]] == bytes([len(scid)]) + scid
            rest = reply[6 + reply[5] :]
            assert rest[: 1 + rest[0]] == bytes([len(dcid)]) + dcid
        else:
            header = pull_quic_header(Buffer(data=reply), host_cid_length=8)
            if decision.reason == "retry":
                assert header.packet_type == QuicPacketType.RETRY
                world.tokens.append(header.token)
            else:
                assert header.packet_type == QuicPacketType.INITIAL
    else:
        assert len(decision.datagram) >= 21
    # Crypto-costly replies (resets, closes) are rate limited per second.
    if decision.reason in ("stateless reset", "connection refused", "invalid token"):
        kind = "reset" if decision.reason == "stateless reset" else "close"
        times = world.replies.setdefault(kind, [])
        times.append(now)
        recent = [t for t in times if t > now - 1.0]
        assert len(recent) <= 2 * RATE + 1, f"{len(recent)} {kind} replies in one second"


@fuzz_settings(150)
@given(st.data(), st.sampled_from(["never", "always", "auto"]), st.integers(1, 3))
def test_endpoint_classify(data: st.DataObject, retry: str, max_connections: int) -> None:
    world = World(retry, max_connections)
    core = world.core
    now = 0.0
    for _ in range(data.draw(st.integers(1, 30))):
        now += data.draw(st.sampled_from([0.0, 0.001, 0.1, 0.5, 3.0]))
        addr = data.draw(st.sampled_from(ADDRS))
        datagram = data.draw(datagrams(world))
        decision = core.classify(datagram, addr, now)
        stat(type(decision).__name__ + ": " + getattr(decision, "reason", ""))
        if isinstance(decision, Drop):
            assert decision.reason != "internal error", datagram
        elif isinstance(decision, Reply):
            check_reply(world, datagram, decision, now)
        elif isinstance(decision, Route):
            assert decision.key in world.cids
        else:
            assert isinstance(decision, Accept)
            assert len(datagram) >= MIN_INITIAL_DATAGRAM
            # An Initial: long header, type 0b00 in version 1, 0b01 in version 2 (RFC 9369)
            assert decision.version in (V1, V2)
            assert datagram[0] & 0xB0 == (0x80 if decision.version == V1 else 0x90)
            assert core.connections < max_connections
            key = next(world.keys)
            cid, _ = core.new_connection_id()
            core.register_cid(decision.dcid, key)
            core.register_cid(cid, key)
            core.handshake_started(key, addr)
            world.cids[key] = [decision.dcid, cid]
        # The transport's side: handshakes end, CIDs retire, connections go.
        if world.cids and data.draw(st.integers(0, 3)) == 0:
            key = data.draw(st.sampled_from(sorted(world.cids)))
            action = data.draw(st.sampled_from(["done", "retire", "forget"]))
            if action == "done":
                core.handshake_done(key)
            elif action == "retire" and world.cids[key]:
                core.unregister_cid(world.cids[key].pop())
            else:
                core.forget(key)
                del world.cids[key]
        stats = core.stats()
        assert stats["connections"] <= max_connections
        assert stats["cids"] <= 2 * max_connections
        assert stats["unvalidated"] <= max_connections
