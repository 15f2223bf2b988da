"""EndpointCore and TokenAuthority: in memory, explicit clock, real aioquic client packets.

Client datagrams come from a real aioquic client connection, and the full round trips hand
the Accept'ed Initial to a real aioquic server connection and pump datagrams both ways,
classifying every client datagram on the way, until both sides complete the handshake.
"""

from __future__ import annotations

import ast
import random
from collections.abc import Hashable
from pathlib import Path

import pytest
from aioquic.buffer import Buffer  # type: ignore[attr-defined]
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet import (
    QuicErrorCode,
    QuicHeader,
    QuicPacketType,
    QuicProtocolVersion,
    encode_quic_version_negotiation,
    pull_quic_header,
)

import quicserve.quic
from quicserve.certs import DevCertificate
from quicserve.quic.endpoint import (
    MIN_INITIAL_DATAGRAM,
    Accept,
    Decision,
    Drop,
    EndpointCore,
    Reply,
    Route,
)
from quicserve.quic.tokens import TokenAuthority

V1 = int(QuicProtocolVersion.VERSION_1)
V2 = int(QuicProtocolVersion.VERSION_2)
CLIENT = ("192.0.2.10", 50000)
OTHER_CLIENT = ("198.51.100.7", 50000)
SERVER = ("203.0.113.1", 443)


# -- helpers ------------------------------------------------------------------------------


def make_client(
    tls: DevCertificate | None = None, *, version: int = V1, token: bytes = b""
) -> QuicConnection:
    config = QuicConfiguration(is_client=True, alpn_protocols=["h3"], server_name="localhost")
    config.supported_versions = [version]
    if token:
        config.token = token
    if tls is not None:
        config.load_verify_locations(cafile=str(tls.ca_certfile))
    client = QuicConnection(configuration=config)
    client.connect(SERVER, now=0.0)
    return client


def send_all(conn: QuicConnection, now: float) -> list[bytes]:
    return [data for data, _addr in conn.datagrams_to_send(now)]


def first_initial(client: QuicConnection, now: float = 0.0) -> bytes:
    datagrams = send_all(client, now)
    assert len(datagrams[0]) >= MIN_INITIAL_DATAGRAM
    return datagrams[0]


def header_of(data: bytes) -> QuicHeader:
    return pull_quic_header(Buffer(data=data), host_cid_length=8)


def short_packet(cid: bytes, size: int) -> bytes:
    rng = random.Random(size)
    body = bytes(rng.getrandbits(8) for _ in range(size - 1 - len(cid)))
    return bytes([0x40 | 0x05]) + cid + body


def with_dcid(initial: bytes, dcid: bytes) -> bytes:
    """The same Initial with another (same-length) Destination CID; not decryptable, but
    classify never decrypts."""
    assert initial[5] == len(dcid)
    return initial[:6] + dcid + initial[6 + len(dcid) :]


def events_of(conn: QuicConnection) -> list[events.QuicEvent]:
    out = []
    while (event := conn.next_event()) is not None:
        out.append(event)
    return out


def close_error(client: QuicConnection, datagram: bytes, now: float) -> int | None:
    """Feed a server datagram to ``client``; the error code it closed with, if it did.

    A closed client drains first (RFC 9000 §10.2.2) and reports the close when the draining
    timer fires.
    """
    client.receive_datagram(datagram, SERVER, now)
    timer = client.get_timer()
    if timer is not None:
        client.handle_timer(timer)
    for event in events_of(client):
        if isinstance(event, events.ConnectionTerminated):
            return int(event.error_code)
    return None


def server_config(tls: DevCertificate, version: int = V1) -> QuicConfiguration:
    config = QuicConfiguration(is_client=False, alpn_protocols=["h3"])
    config.supported_versions = [V1, V2] if version == V1 else [V2, V1]
    config.load_cert_chain(str(tls.certfile), str(tls.keyfile))
    return config


def handshake(
    core: EndpointCore,
    client: QuicConnection,
    config: QuicConfiguration,
    initial: bytes,
    now: float,
) -> tuple[QuicConnection, Accept]:
    """Accept ``initial``, run a real server connection, and pump until both sides are done.

    Every client datagram goes through ``classify`` and must be routed to the server.
    """
    decision = core.classify(initial, CLIENT, now)
    assert isinstance(decision, Accept)
    server = QuicConnection(
        configuration=config,
        original_destination_connection_id=decision.original_dcid,
        retry_source_connection_id=decision.retry_scid,
    )
    key: Hashable = server
    core.register_cid(decision.dcid, key)
    core.register_cid(server.host_cid, key)
    core.handshake_started(key, CLIENT)
    server.receive_datagram(initial, CLIENT, now)

    client_done = server_done = False
    for _ in range(50):
        now += 0.001
        moved = False
        for event in events_of(server):
            if isinstance(event, events.ConnectionIdIssued):
                core.register_cid(event.connection_id, key)
            elif isinstance(event, events.ConnectionIdRetired):
                core.unregister_cid(event.connection_id)
            elif isinstance(event, events.HandshakeCompleted):
                server_done = True
                core.handshake_done(key)
        for data in send_all(server, now):
            client.receive_datagram(data, SERVER, now)
            moved = True
        for event in events_of(client):
            assert not isinstance(event, events.ConnectionTerminated), event
            if isinstance(event, events.HandshakeCompleted):
                client_done = True
        for data in send_all(client, now):
            assert core.classify(data, CLIENT, now) == Route(key)
            server.receive_datagram(data, CLIENT, now)
            moved = True
        if not moved and client_done and server_done:
            break
    assert client_done and server_done
    return server, decision


# -- tokens -------------------------------------------------------------------------------


def test_retry_token_round_trip_and_binding() -> None:
    auth = TokenAuthority(retry_token_lifetime=10.0)
    odcid, scid = b"\x01" * 8, b"\x02" * 8
    token = auth.create_retry_token(CLIENT, odcid, scid, now=100.0)
    assert auth.is_retry_token(token)
    assert auth.validate_retry_token(token, CLIENT, scid, now=100.0) == odcid
    assert auth.validate_retry_token(token, CLIENT, scid, now=110.0) == odcid
    assert auth.validate_retry_token(token, CLIENT, scid, now=110.01) is None  # expired
    assert auth.validate_retry_token(token, OTHER_CLIENT, scid, now=100.0) is None
    assert auth.validate_retry_token(token, (CLIENT[0], 50001), scid, now=100.0) is None
    assert auth.validate_retry_token(token, CLIENT, odcid, now=100.0) is None  # wrong DCID
    for i in range(len(token)):
        tampered = bytearray(token)
        tampered[i] ^= 0x01
        assert auth.validate_retry_token(bytes(tampered), CLIENT, scid, now=100.0) is None
    assert auth.validate_retry_token(token[:-1], CLIENT, scid, now=100.0) is None
    assert auth.validate_retry_token(token + b"\x00", CLIENT, scid, now=100.0) is None
    assert auth.validate_retry_token(b"", CLIENT, scid, now=100.0) is None
    assert not auth.is_retry_token(b"\x00" * 40)
    # Another process (another secret) cannot validate it; a shared secret can.
    assert TokenAuthority().validate_retry_token(token, CLIENT, scid, now=100.0) is None
    secret = b"k" * 32
    shared = TokenAuthority(secret).create_retry_token(CLIENT, odcid, scid, now=0.0)
    assert TokenAuthority(secret).validate_retry_token(shared, CLIENT, scid, now=1.0) == odcid


def test_retry_token_ipv6_and_limits() -> None:
    auth = TokenAuthority()
    addr = ("2001:db8::1", 443)
    token = auth.create_retry_token(addr, b"a" * 20, b"b" * 20, now=0.0)
    assert auth.validate_retry_token(token, addr, b"b" * 20, now=0.0) == b"a" * 20
    assert auth.validate_retry_token(token, ("2001:db8::2", 443), b"b" * 20, now=0.0) is None
    with pytest.raises(ValueError):
        auth.create_retry_token(addr, b"a" * 21, b"b" * 8, now=0.0)
    with pytest.raises(ValueError):
        TokenAuthority(b"short")


def test_stateless_reset_token_is_deterministic_per_cid() -> None:
    auth = TokenAuthority(b"s" * 32)
    token = auth.stateless_reset_token(b"\x01" * 8)
    assert len(token) == 16
    assert token == TokenAuthority(b"s" * 32).stateless_reset_token(b"\x01" * 8)
    assert token != auth.stateless_reset_token(b"\x02" * 8)
    assert token != TokenAuthority(b"t" * 32).stateless_reset_token(b"\x01" * 8)


# -- routing and acceptance ---------------------------------------------------------------


def test_initial_is_accepted_then_routed() -> None:
    core = EndpointCore(supported_versions=[V1])
    initial = first_initial(make_client())
    dcid = header_of(initial).destination_cid
    decision = core.classify(initial, CLIENT, 0.0)
    assert decision == Accept(original_dcid=dcid, retry_scid=None, dcid=dcid, version=V1)
    key = object()
    core.register_cid(dcid, key)
    assert core.classify(initial, CLIENT, 0.1) == Route(key)
    # Routing is by CID only: another address (a migrated client) reaches the same key.
    assert core.classify(initial, OTHER_CLIENT, 0.2) == Route(key)
    assert core.connections == 1
    assert core.stats()["accepted"] == 1
    assert core.stats()["routed"] == 2


def test_short_header_and_coalesced_packets_route_by_first_cid() -> None:
    core = EndpointCore(supported_versions=[V1])
    cid, _ = core.new_connection_id()
    core.register_cid(cid, "conn")
    assert core.classify(short_packet(cid, 50), CLIENT, 0.0) == Route("conn")
    assert core.classify(short_packet(cid, 50), OTHER_CLIENT, 0.0) == Route("conn")
    # An Initial to a registered CID with another packet coalesced behind it.
    initial = with_dcid(first_initial(make_client()), cid)
    assert core.classify(initial + short_packet(b"\x09" * 8, 40), CLIENT, 0.0) == Route("conn")


def test_short_initial_is_dropped() -> None:
    core = EndpointCore(supported_versions=[V1])
    initial = first_initial(make_client())
    assert core.classify(initial[:1100], CLIENT, 0.0) == Drop("short initial")
    assert core.classify(initial[:1199], CLIENT, 0.0) == Drop("short initial")
    assert isinstance(core.classify(initial[:1200], CLIENT, 0.0), Accept)
    assert core.stats()["dropped_by_reason"] == {"short initial": 2}


def test_short_client_dcid_is_dropped() -> None:
    core = EndpointCore(supported_versions=[V1])
    initial = first_initial(make_client())
    # Rewrite the DCID length to 4 and shift: a 4-byte client DCID (RFC 9000 §7.2).
    short = initial[:5] + bytes([4]) + initial[6:10] + initial[14:] + bytes(4)
    assert core.classify(short, CLIENT, 0.0) == Drop("short dcid")


@pytest.mark.parametrize("data", [b"", b"\x00", b"\xc0", b"\x40", b"\xc0\x00\x00\x00\x01\x08"])
def test_garbage_is_dropped(data: bytes) -> None:
    core = EndpointCore(supported_versions=[V1])
    decision = core.classify(data, CLIENT, 0.0)
    assert isinstance(decision, Drop)
    assert decision.reason != "internal error"


def test_fuzz_never_raises_never_amplifies() -> None:
    rng = random.Random(1234)
    core = EndpointCore(supported_versions=[V1, V2], retry="always", stateless_reset_rate=1e9)
    initial = first_initial(make_client())
    for i in range(3000):
        if i % 2:
            data = bytearray(initial)
            for _ in range(rng.randint(1, 8)):
                data[rng.randrange(64)] = rng.getrandbits(8)
            data = data[: rng.choice([len(data), rng.randrange(len(data))])]
        else:
            data = bytearray(rng.getrandbits(8) for _ in range(rng.randrange(1300)))
        decision = core.classify(bytes(data), CLIENT, i * 0.01)
        assert not isinstance(decision, Route)
        if isinstance(decision, Reply):
            assert len(decision.datagram) < len(data)  # never an amplifier
        if isinstance(decision, Drop):
            assert decision.reason != "internal error"


# -- version negotiation ------------------------------------------------------------------


def test_version_negotiation_packet_is_never_answered() -> None:
    core = EndpointCore(supported_versions=[V1])
    vn = encode_quic_version_negotiation(
        source_cid=b"\x01" * 8, destination_cid=b"\x02" * 8, supported_versions=[V1, V2]
    )
    big_vn = vn + bytes(4 * 300)  # versions of 0: still a VN, of >= 1200 bytes
    assert len(big_vn) >= MIN_INITIAL_DATAGRAM
    assert core.classify(vn, CLIENT, 0.0) == Drop("version negotiation")
    assert core.classify(big_vn, CLIENT, 0.0) == Drop("version negotiation")
    core.register_cid(b"\x02" * 8, "conn")
    assert core.classify(big_vn, CLIENT, 0.0) == Drop("version negotiation")
    assert core.stats()["vn_sent"] == 0


def test_unsupported_version_gets_version_negotiation() -> None:
    core = EndpointCore(supported_versions=[V1, V2])
    initial = bytearray(first_initial(make_client()))
    initial[1:5] = (0x1A2A3A4A).to_bytes(4, "big")  # a reserved version (RFC 9000 §15)
    sent = header_of(bytes(initial))
    decision = core.classify(bytes(initial), CLIENT, 0.0)
    assert isinstance(decision, Reply) and decision.reason == "version negotiation"
    vn = header_of(decision.datagram)
    assert vn.packet_type == QuicPacketType.VERSION_NEGOTIATION
    assert vn.supported_versions == [V1, V2]
    assert vn.destination_cid == sent.source_cid
    assert vn.source_cid == sent.destination_cid
    # Too small to start a connection: dropped (RFC 9000 §5.2.2).
    assert core.classify(bytes(initial[:1199]), CLIENT, 0.0) == Drop("unsupported version")
    assert core.stats()["vn_sent"] == 1


def test_unknown_version_with_foreign_layout_gets_version_negotiation() -> None:
    # RFC 8999: only the invariants are readable; CIDs may exceed 20 bytes, fixed bit 0.
    core = EndpointCore(supported_versions=[V1])
    dcid, scid = bytes(range(30)), bytes(range(100, 125))
    packet = (
        bytes([0x80])
        + (0xFF00001D).to_bytes(4, "big")
        + bytes([len(dcid)])
        + dcid
        + bytes([len(scid)])
        + scid
    )
    packet += bytes(1200 - len(packet))
    decision = core.classify(packet, CLIENT, 0.0)
    assert isinstance(decision, Reply)
    buf = Buffer(data=decision.datagram)
    assert buf.pull_uint8() & 0x80 and buf.pull_uint32() == 0
    assert buf.pull_bytes(buf.pull_uint8()) == scid
    assert buf.pull_bytes(buf.pull_uint8()) == dcid
    assert buf.pull_uint32() == V1 and buf.eof()


def test_version_2_initial_is_accepted() -> None:
    core = EndpointCore(supported_versions=[V1, V2])
    initial = first_initial(make_client(version=V2))
    decision = core.classify(initial, CLIENT, 0.0)
    assert isinstance(decision, Accept) and decision.version == V2
    only_v1 = EndpointCore(supported_versions=[V1])
    assert isinstance(only_v1.classify(initial, CLIENT, 0.0), Reply)


def test_unknown_long_header_types_are_dropped() -> None:
    core = EndpointCore(supported_versions=[V1])
    initial = bytearray(first_initial(make_client()))
    # Same bytes with the long packet type switched to 0-RTT (1) and Handshake (2); the
    # Length field still fits, so the header parses.
    zero_rtt = bytes([(initial[0] & 0xCF) | 0x10]) + bytes(initial[1:])
    handshake_type = bytes([(initial[0] & 0xCF) | 0x20]) + bytes(initial[1:])
    assert core.classify(zero_rtt, CLIENT, 0.0) == Drop("0-rtt before initial")
    assert core.classify(handshake_type, CLIENT, 0.0) == Drop("unknown connection")


# -- retry ---------------------------------------------------------------------------------


def retry_exchange(
    core: EndpointCore, client: QuicConnection, now: float = 0.0
) -> tuple[bytes, bytes, bytes]:
    """First Initial -> Retry -> the client's second Initial. Returns (first DCID, Retry
    source CID, second Initial)."""
    initial = first_initial(client, now)
    first_dcid = header_of(initial).destination_cid
    decision = core.classify(initial, CLIENT, now)
    assert isinstance(decision, Reply) and decision.reason == "retry"
    retry = header_of(decision.datagram)
    assert retry.packet_type == QuicPacketType.RETRY
    assert retry.destination_cid == header_of(initial).source_cid
    assert retry.source_cid != first_dcid
    client.receive_datagram(decision.datagram, SERVER, now)
    second = send_all(client, now)[0]
    assert header_of(second).token == retry.token  # the client accepted the Retry
    assert header_of(second).destination_cid == retry.source_cid
    return first_dcid, retry.source_cid, second


def test_retry_always_round_trip_to_accept() -> None:
    core = EndpointCore(supported_versions=[V1], retry="always")
    first_dcid, retry_scid, second = retry_exchange(core, make_client())
    decision = core.classify(second, CLIENT, 0.5)
    assert decision == Accept(
        original_dcid=first_dcid, retry_scid=retry_scid, dcid=retry_scid, version=V1
    )
    assert core.stats()["retry_sent"] == 1


def test_retry_scid_comes_from_cid_generator() -> None:
    counter = iter(range(1, 1000))

    def worker_7() -> bytes:  # a QUIC-LB-like plaintext CID: worker id first
        return b"\x07" + next(counter).to_bytes(7, "big")

    core = EndpointCore(supported_versions=[V1], retry="always", cid_generator=worker_7)
    _, retry_scid, _ = retry_exchange(core, make_client())
    assert retry_scid[0] == 7
    cid, reset = core.new_connection_id()
    assert cid[0] == 7 and reset == core.tokens.stateless_reset_token(cid)


@pytest.mark.parametrize(
    ("addr", "now", "reason"),
    [(OTHER_CLIENT, 0.5, "replayed from another address"), (CLIENT, 11.0, "expired")],
)
def test_invalid_retry_token_gets_invalid_token_close(
    addr: tuple[str, int], now: float, reason: str
) -> None:
    core = EndpointCore(supported_versions=[V1], retry="always")
    client = make_client()
    _, _, second = retry_exchange(core, client)
    decision = core.classify(second, addr, now)
    assert isinstance(decision, Reply) and decision.reason == "invalid token", reason
    assert len(decision.datagram) < len(second)
    # The close is a genuine Initial: the client decrypts it and gives up with INVALID_TOKEN.
    assert close_error(client, decision.datagram, now) == QuicErrorCode.INVALID_TOKEN
    assert core.stats()["invalid_token"] == 1


def test_tampered_retry_token_is_invalid() -> None:
    core = EndpointCore(supported_versions=[V1], retry="always")
    _, _, second = retry_exchange(core, make_client())
    token = header_of(second).token
    at = second.index(token) + len(token) - 1  # last MAC byte
    tampered = second[:at] + bytes([second[at] ^ 0xFF]) + second[at + 1 :]
    decision = core.classify(tampered, CLIENT, 0.5)
    assert isinstance(decision, Reply) and decision.reason == "invalid token"
    # Without Retry required, an invalid Retry token is still refused (the client would
    # reject a handshake without the right retry_source_connection_id anyway).
    core.retry = "never"
    assert isinstance(core.classify(tampered, CLIENT, 0.5), Reply)


def test_valid_retry_token_is_honoured_when_retry_is_off() -> None:
    core = EndpointCore(supported_versions=[V1], retry="always")
    first_dcid, retry_scid, second = retry_exchange(core, make_client())
    core.retry = "never"
    decision = core.classify(second, CLIENT, 0.5)
    assert decision == Accept(first_dcid, retry_scid, retry_scid, V1)


def test_foreign_token_is_ignored() -> None:
    # A NEW_TOKEN token from some other server (RFC 9000 §8.1.3): proceed as if absent.
    initial = first_initial(make_client(token=b"\x00not-ours" * 4))
    assert header_of(initial).token
    dcid = header_of(initial).destination_cid
    plain = EndpointCore(supported_versions=[V1])
    assert plain.classify(initial, CLIENT, 0.0) == Accept(dcid, None, dcid, V1)
    strict = EndpointCore(supported_versions=[V1], retry="always")
    decision = strict.classify(initial, CLIENT, 0.0)
    assert isinstance(decision, Reply) and decision.reason == "retry"


def test_retry_auto_follows_unvalidated_count() -> None:
    core = EndpointCore(supported_versions=[V1], retry="auto", retry_threshold=2)
    initial = first_initial(make_client())
    assert isinstance(core.classify(initial, CLIENT, 0.0), Accept)
    core.handshake_started("a")
    core.handshake_started("a")  # idempotent
    assert core.unvalidated == 1 and not core.retry_required
    assert isinstance(core.classify(initial, CLIENT, 0.0), Accept)
    core.handshake_started("b")
    assert core.unvalidated == 2 and core.retry_required
    decision = core.classify(initial, CLIENT, 0.0)
    assert isinstance(decision, Reply) and decision.reason == "retry"
    core.handshake_done("a")
    assert core.unvalidated == 1
    assert isinstance(core.classify(initial, CLIENT, 0.0), Accept)
    core.forget("b")
    assert core.unvalidated == 0


def test_initial_flood_with_retry_keeps_no_per_peer_state() -> None:
    core = EndpointCore(supported_versions=[V1], retry="always")
    initial = first_initial(make_client())
    for i in range(10_000):
        addr = (f"10.{(i >> 16) & 0xFF}.{(i >> 8) & 0xFF}.{i & 0xFF}", 1024 + i % 60000)
        decision = core.classify(with_dcid(initial, i.to_bytes(8, "big")), addr, i * 1e-4)
        assert isinstance(decision, Reply) and decision.reason == "retry"
    assert core.stats()["retry_sent"] == 10_000
    assert core.connections == 0 and core.unvalidated == 0
    state = {
        name: len(value)
        for name, value in vars(core).items()
        if isinstance(value, dict | set | list) and name != "supported_versions"
    }
    assert all(size == 0 for name, size in state.items() if name != "_counters"), state
    assert len(core._counters) <= 7


# -- limits --------------------------------------------------------------------------------


def test_full_server_refuses_with_connection_refused() -> None:
    core = EndpointCore(supported_versions=[V1], max_connections=2, close_rate=1.0)
    core.register_cid(b"\x01" * 8, "a")
    core.register_cid(b"\x02" * 8, "b")
    client = make_client()
    initial = first_initial(client)
    decision = core.classify(initial, CLIENT, 0.0)
    assert isinstance(decision, Reply) and decision.reason == "connection refused"
    assert close_error(client, decision.datagram, 0.0) == QuicErrorCode.CONNECTION_REFUSED
    # Closes are rate limited (the address is not validated yet).
    assert core.classify(initial, CLIENT, 0.1) == Drop("close rate limited")
    assert isinstance(core.classify(initial, CLIENT, 1.2), Reply)
    assert core.stats()["refused"] == 3
    core.forget("a")
    assert isinstance(core.classify(initial, CLIENT, 1.3), Accept)


def test_max_handshakes_refuses_with_connection_refused() -> None:
    # Handshakes in progress are half-open connections: past max_handshakes a new Initial
    # is refused like a full server, and finished handshakes make room again.
    core = EndpointCore(supported_versions=[V1], max_handshakes=2, close_rate=1.0)
    core.handshake_started("a", CLIENT)
    core.handshake_started("b", OTHER_CLIENT)
    client = make_client()
    initial = first_initial(client)
    decision = core.classify(initial, (CLIENT[0], 9), 0.0)
    assert isinstance(decision, Reply) and decision.reason == "connection refused"
    assert close_error(client, decision.datagram, 0.0) == QuicErrorCode.CONNECTION_REFUSED
    core.handshake_done("a")
    assert isinstance(core.classify(initial, (CLIENT[0], 9), 0.1), Accept)
    with pytest.raises(ValueError):
        EndpointCore(supported_versions=[V1], max_handshakes=0)


def test_max_unvalidated_per_address() -> None:
    core = EndpointCore(supported_versions=[V1], max_unvalidated_per_address=1)
    initial = first_initial(make_client())
    core.handshake_started("a", CLIENT)
    assert core.classify(initial, (CLIENT[0], 1), 0.0) == Drop("address handshake limit")
    assert isinstance(core.classify(initial, OTHER_CLIENT, 0.0), Accept)
    core.handshake_done("a")
    assert isinstance(core.classify(initial, CLIENT, 0.0), Accept)


def test_cid_bookkeeping() -> None:
    core = EndpointCore(supported_versions=[V1])
    a, _ = core.new_connection_id()
    b, _ = core.new_connection_id()
    assert len(a) == 8 and a != b
    core.register_cid(a, "k")
    core.register_cid(b, "k")
    core.register_cid(b, "k")  # idempotent
    with pytest.raises(ValueError):
        core.register_cid(a, "other")
    core.handshake_started("k", CLIENT)
    assert core.cids("k") == {a, b} and core.connections == 1
    core.unregister_cid(a)
    core.unregister_cid(a)  # unknown: ignored
    assert core.lookup(a) is None and core.lookup(b) == "k"
    core.forget("k")
    assert core.lookup(b) is None and core.connections == 0 and core.unvalidated == 0
    assert core.stats()["cids"] == 0


def test_cid_generator_must_match_length() -> None:
    core = EndpointCore(supported_versions=[V1], cid_length=8, cid_generator=lambda: b"x" * 4)
    with pytest.raises(ValueError):
        core.new_connection_id()
    with pytest.raises(ValueError):
        EndpointCore(supported_versions=[])
    with pytest.raises(ValueError):
        EndpointCore(supported_versions=[V1], cid_length=21)


# -- stateless reset -----------------------------------------------------------------------


@pytest.mark.parametrize("size", [22, 30, 43, 44, 100, 1200])
def test_stateless_reset_for_unknown_cid(size: int) -> None:
    core = EndpointCore(supported_versions=[V1])
    cid = b"\x5a" * 8
    packet = short_packet(cid, size)
    decision = core.classify(packet, CLIENT, 0.0)
    assert isinstance(decision, Reply) and decision.reason == "stateless reset"
    reset = decision.datagram
    assert 21 <= len(reset) < len(packet)
    if size <= 43:
        assert len(reset) == size - 1
    assert reset[0] & 0xC0 == 0x40  # short header, fixed bit set
    assert reset[-16:] == core.tokens.stateless_reset_token(cid)
    assert core.stats()["resets_sent"] == 1


def test_stateless_reset_uses_the_token_issued_with_the_cid() -> None:
    core = EndpointCore(supported_versions=[V1])
    cid, token = core.new_connection_id()
    core.register_cid(cid, "k")
    core.forget("k")  # the connection is gone, its peer still sends
    decision = core.classify(short_packet(cid, 60), CLIENT, 0.0)
    assert isinstance(decision, Reply) and decision.datagram[-16:] == token


@pytest.mark.parametrize("size", [1, 9, 20, 21])
def test_tiny_short_header_is_never_reset(size: int) -> None:
    core = EndpointCore(supported_versions=[V1])
    packet = short_packet(b"\x01" * 8, max(size, 9))[:size]
    decision = core.classify(packet, CLIENT, 0.0)
    assert isinstance(decision, Drop)
    assert core.stats()["resets_sent"] == 0


def test_reset_loop_terminates() -> None:
    # Two endpoints that reset each other's resets: each answer is smaller, so it ends.
    a, b = EndpointCore(supported_versions=[V1]), EndpointCore(supported_versions=[V1])
    data = short_packet(b"\x01" * 8, 43)
    rounds = 0
    while True:
        decision = (a if rounds % 2 else b).classify(data, CLIENT, rounds * 1.0)
        if isinstance(decision, Drop):
            break
        assert isinstance(decision, Reply) and len(decision.datagram) < len(data)
        data = decision.datagram
        rounds += 1
    assert rounds <= 43 - 21


def test_stateless_reset_rate_limit_and_refill() -> None:
    core = EndpointCore(supported_versions=[V1], stateless_reset_rate=3.0)
    packet = short_packet(b"\x01" * 8, 60)
    sent = [core.classify(packet, CLIENT, 0.0) for _ in range(5)]
    assert [type(d) for d in sent] == [Reply, Reply, Reply, Drop, Drop]
    assert sent[3] == Drop("reset rate limited")
    assert core.classify(packet, CLIENT, 0.2) == Drop("reset rate limited")
    assert isinstance(core.classify(packet, CLIENT, 0.4), Reply)  # 1.2 tokens refilled
    # A long pause refills to the burst size only.
    later: list[Decision] = [core.classify(packet, CLIENT, 100.0) for _ in range(4)]
    assert [type(d) for d in later] == [Reply, Reply, Reply, Drop]
    assert EndpointCore(supported_versions=[V1], stateless_reset_rate=0).classify(
        packet, CLIENT, 0.0
    ) == Drop("reset rate limited")


def test_short_header_with_fixed_bit_clear_is_dropped() -> None:
    core = EndpointCore(supported_versions=[V1])
    packet = bytes([0x05]) + short_packet(b"\x01" * 8, 60)[1:]
    assert core.classify(packet, CLIENT, 0.0) == Drop("malformed")


# -- full round trips ----------------------------------------------------------------------


@pytest.mark.parametrize("version", [V1, V2], ids=["v1", "v2"])
@pytest.mark.parametrize("retry", ["never", "always"])
def test_handshake_round_trip(tls_files: DevCertificate, retry: str, version: int) -> None:
    core = EndpointCore(supported_versions=[V1, V2], retry=retry)  # type: ignore[arg-type]
    client = make_client(tls_files, version=version)
    if retry == "always":
        first_dcid, retry_scid, initial = retry_exchange(core, client)
    else:
        initial = first_initial(client)
        first_dcid, retry_scid = header_of(initial).destination_cid, b""
    server, accept = handshake(core, client, server_config(tls_files, version), initial, 0.1)
    assert accept.original_dcid == first_dcid
    assert accept.retry_scid == (retry_scid or None)
    assert server.original_destination_connection_id == first_dcid
    assert core.unvalidated == 0 and core.connections == 1
    assert core.cids(server) >= {accept.dcid, server.host_cid}
    # A 1-RTT packet from the client, from a new address, still reaches the server.
    client.send_ping(1)
    for data in send_all(client, 1.0):
        assert core.classify(data, OTHER_CLIENT, 1.0) == Route(server)
    core.forget(server)
    assert core.stats()["cids"] == 0


# -- house rules -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["__init__.py", "endpoint.py", "tokens.py"])
def test_quic_core_is_sans_io(name: str) -> None:
    path = Path(quicserve.quic.__file__).parent / name
    forbidden = {"anyio", "asyncio", "trio", "socket", "selectors", "time"}
    imported: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module.split(".")[0])
    assert not imported & forbidden


def test_fractional_reset_rate_still_allows_one() -> None:
    core = EndpointCore(supported_versions=[V1], stateless_reset_rate=0.5)
    packet = short_packet(b"\x01" * 8, 60)
    assert isinstance(core.classify(packet, CLIENT, 0.0), Reply)
    assert core.classify(packet, CLIENT, 1.0) == Drop("reset rate limited")
    assert isinstance(core.classify(packet, CLIENT, 2.0), Reply)
