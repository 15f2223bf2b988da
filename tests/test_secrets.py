"""``--quic-secrets-file``, sans-IO: the key ring, sealed session tickets, the strike
register, Retry tokens and stateless resets under a rotating ring.

Tickets are checked with real aioquic handshakes pumped in memory (a client and
``ServerQuicConnection`` with the listener's sealer), so what is tested is the label the
client really received and really presents. The real-CLI side (workers, two servers,
rotation with SIGHUP) is ``tests/test_secrets_cli.py``.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import os
import stat
from pathlib import Path

import pytest
from aioquic.h3.connection import H3_ALPN
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.tls import SessionTicket

from quicserve.certs import DevCertificate
from quicserve.config import Config
from quicserve.quic.compat import ServerQuicConnection
from quicserve.quic.endpoint import Accept, EndpointCore, Reply
from quicserve.quic.keyring import MAX_KEYS, KeyRing, KeyRingError, encode_key, parse_key_file
from quicserve.quic.tickets import SealedTickets, SessionTicketStore, StrikeRegister
from quicserve.quic.tokens import TokenAuthority
from quicserve.secretsfile import SecretsFileError, new_key, read_key_file
from quicserve.tls import quic_configuration

from .test_quic_endpoint import CLIENT as END_CLIENT
from .test_quic_endpoint import make_client, retry_exchange

CLIENT = ("127.0.0.1", 40000)
SERVER = ("127.0.0.1", 4433)
V1 = 0x00000001

A, B, C = (bytes([n]) * 32 for n in (0xA1, 0xB2, 0xC3))


def line(key: bytes) -> str:
    return encode_key(key) + "\n"


# -- the file ----------------------------------------------------------------------------


def test_parse_keys_comments_and_blank_lines() -> None:
    text = "# rotated 2026-12-06\n\n" + line(B) + "   \n# old\n" + line(A)
    assert parse_key_file(text) == [B, A]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no keys"),
        ("# only a comment\n\n", "no keys"),
        ("not base64!\n", "line 1: not base64"),
        (line(A) + "QUJD\n", "line 2: a key of 3 bytes, at least 32"),
        (base64.urlsafe_b64encode(b"\xfb" * 32).decode() + "\n", "line 1: not base64"),
        (encode_key(A)[:-1] + "\n", "line 1: not base64"),  # padding cut
        (line(A) + line(A), "line 2: the same key as line 1"),
        ("".join(line(os.urandom(32)) for _ in range(MAX_KEYS + 1)), "9 keys, at most 8"),
    ],
    # Named: the random keys in the texts would give each xdist worker other test ids.
    ids=["empty", "comments", "garbage", "short", "urlsafe", "unpadded", "twice", "nine"],
)
def test_parse_refuses_bad_files_with_the_line(text: str, message: str) -> None:
    with pytest.raises(KeyRingError, match=message):
        parse_key_file(text)


def test_read_file_errors_are_one_line_naming_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    with pytest.raises(SecretsFileError, match=f"--quic-secrets-file {missing}: cannot read"):
        read_key_file(str(missing))
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(SecretsFileError, match="not UTF-8"):
        read_key_file(str(binary))
    huge = tmp_path / "huge"
    huge.write_text("#" * 70_000)
    with pytest.raises(SecretsFileError, match="larger than 65536 bytes"):
        read_key_file(str(huge))


def test_a_file_others_can_read_is_loaded_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "ring"
    path.write_text(line(A))
    path.chmod(0o600)
    assert read_key_file(str(path)) == [A] and not caplog.records
    path.chmod(0o644)
    assert read_key_file(str(path)) == [A]
    (record,) = caplog.records
    assert record.levelname == "WARNING" and "mode 644" in record.getMessage()


def test_new_key_creates_0600_prepends_and_keeps_k(tmp_path: Path) -> None:
    path = tmp_path / "ring"
    first = new_key(str(path))
    assert len(first) == 1 and len(first[0]) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    second = new_key(str(path))
    assert second[1:] == first and second[0] != first[0]
    for _ in range(3):
        ring = new_key(str(path))
    assert len(ring) == 3 and read_key_file(str(path)) == ring
    assert new_key(str(path), keep=1) == read_key_file(str(path))[:1]
    path.chmod(0o640)  # an existing file keeps its mode
    new_key(str(path))
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    # A bad file is never overwritten.
    path.write_text("garbage\n")
    with pytest.raises(SecretsFileError, match="line 1"):
        new_key(str(path))
    assert path.read_text() == "garbage\n"
    assert [p.name for p in tmp_path.iterdir()] == ["ring"]  # no temporary left behind


# -- sealed tickets, with real handshakes ------------------------------------------------


def _pump(client: QuicConnection, server: QuicConnection, now: float) -> float:
    for _ in range(30):
        moved = False
        for data, _addr in client.datagrams_to_send(now):
            server.receive_datagram(data, CLIENT, now)
            moved = True
        for data, _addr in server.datagrams_to_send(now):
            client.receive_datagram(data, SERVER, now)
            moved = True
        now += 0.001
        if not moved:
            break
    return now


class Resumption:
    """A client handshake against a server that seals tickets with ``ring``."""

    def __init__(
        self,
        tls: DevCertificate,
        tickets: SealedTickets | SessionTicketStore,
        allow_early_data: bool = True,
    ) -> None:
        self.tls = tls
        self.tickets = tickets
        self.allow_early_data = allow_early_data

    def connect(
        self, ticket: SessionTicket | None = None
    ) -> tuple[QuicConnection, list[SessionTicket]]:
        config = Config(quic_0rtt=self.allow_early_data)
        configuration = QuicConfiguration(
            is_client=True, alpn_protocols=H3_ALPN, server_name="localhost"
        )
        configuration.load_verify_locations(cafile=str(self.tls.ca_certfile))
        configuration.session_ticket = ticket
        received: list[SessionTicket] = []
        client = QuicConnection(configuration=configuration, session_ticket_handler=received.append)
        client.connect(SERVER, now=0.0)
        hooks = self.tickets.hooks()
        server_configuration = quic_configuration(config)
        server_configuration.load_cert_chain(str(self.tls.certfile), str(self.tls.keyfile))
        server = ServerQuicConnection(
            configuration=server_configuration,
            original_destination_connection_id=client._peer_cid.cid,  # its first DCID
            **hooks,
            cid_factory=lambda: (os.urandom(8), os.urandom(16)),
            stream_window=config.quic_stream_window_size,
            max_streams=config.quic_max_streams,
            allow_early_data=self.allow_early_data,
        )
        if ticket is not None:  # 0-RTT data with the first flight
            client.send_stream_data(0, b"early", end_stream=False)
        _pump(client, server, 0.0)
        kinds = []
        while (event := client.next_event()) is not None:
            kinds.append(type(event))
        assert events.HandshakeCompleted in kinds
        return client, received


def test_sealed_ticket_resumes_with_0rtt_under_a_rotated_ring(tls_files: DevCertificate) -> None:
    ring = KeyRing([A])
    issuer = Resumption(tls_files, SealedTickets(ring, 100))
    _, tickets = issuer.connect()
    (ticket,) = tickets
    # The label on the wire is the sealed ticket under A: format byte, A's key id.
    assert ticket.ticket[0] == 1 and ticket.ticket[1:5] == KeyRing([A]).current.key_id
    assert ticket.max_early_data_size is not None  # 0-RTT permitted (--quic-0rtt)
    # Another process with the same key, rotated to [B, A], resumes it with 0-RTT.
    other = Resumption(tls_files, SealedTickets(KeyRing([B, A]), 100))
    client, again = other.connect(ticket)
    assert client.tls.session_resumed and client.tls.early_data_accepted
    assert again[0].ticket[1:5] == KeyRing([B]).current.key_id  # new tickets: key B
    # The same label twice in one process: refused (full handshake, no 0-RTT).
    client, _ = other.connect(ticket)
    assert not client.tls.session_resumed and not client.tls.early_data_accepted
    # A third process that dropped A cannot open it: full handshake.
    dropped = Resumption(tls_files, SealedTickets(KeyRing([B]), 100))
    client, _ = dropped.connect(ticket)
    assert not client.tls.session_resumed


@pytest.mark.parametrize("sealed", [True, False], ids=["sealed", "in-memory"])
def test_0rtt_only_where_the_server_and_the_ticket_allow_it(
    tls_files: DevCertificate, sealed: bool
) -> None:
    # One server whose --quic-0rtt is switched between connections (an in-memory ticket
    # resumes only where it was issued; a sealed one would resume on any server).
    server = Resumption(
        tls_files,
        SealedTickets(KeyRing([A]), 100) if sealed else SessionTicketStore(100),
        allow_early_data=False,
    )
    # A ticket issued without --quic-0rtt carries no permission; a client that sends early
    # data with it anyway resumes, but its early data is rejected, even where 0-RTT is on.
    _, (ticket,) = server.connect()
    assert ticket.max_early_data_size is None
    forged = dataclasses.replace(ticket, max_early_data_size=0xFFFFFFFF)  # the client lies
    server.allow_early_data = True
    client, _ = server.connect(forged)
    assert client.tls.session_resumed and not client.tls.early_data_accepted
    # A ticket with permission, presented once --quic-0rtt is off: no early data either.
    _, (ticket,) = server.connect()
    assert ticket.max_early_data_size is not None
    server.allow_early_data = False
    client, _ = server.connect(ticket)
    assert client.tls.session_resumed and not client.tls.early_data_accepted


def _ticket(
    label: bytes = b"x", *, lifetime: int = 86400, early: int | None = 0xFFFFFFFF
) -> SessionTicket:
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    from aioquic.tls import CipherSuite

    return SessionTicket(
        age_add=0xDEADBEEF,
        cipher_suite=CipherSuite.AES_128_GCM_SHA256,
        not_valid_after=now + datetime.timedelta(seconds=lifetime),
        not_valid_before=now,
        resumption_secret=os.urandom(32),
        server_name="localhost",
        ticket=label,
        max_early_data_size=early,
    )


def test_seal_open_round_trip_tamper_and_foreign_labels() -> None:
    sealer = SealedTickets(KeyRing([A]), 10)
    original = _ticket()
    label = sealer.seal(original)
    opened = sealer.open(label)
    assert opened is not None
    for name in ("age_add", "cipher_suite", "not_valid_before", "not_valid_after"):
        assert getattr(opened, name) == getattr(original, name), name
    assert opened.resumption_secret == original.resumption_secret
    assert (opened.server_name, opened.max_early_data_size) == ("localhost", 0xFFFFFFFF)
    assert opened.ticket == label
    no_early = sealer.open(sealer.seal(_ticket(early=None)))
    assert no_early is not None and no_early.max_early_data_size is None
    for position in (0, 1, 5, 17, len(label) - 1):  # format, key id, nonce, body, tag
        tampered = bytearray(label)
        tampered[position] ^= 0x01
        assert sealer.open(bytes(tampered)) is None, position
    for foreign in (b"", os.urandom(64), label[:20], label + b"\x00", b"\x01" * 5000):
        assert sealer.open(foreign) is None


def test_expired_ticket_is_refused() -> None:
    sealer = SealedTickets(KeyRing([A]), 10)
    label = sealer.seal(_ticket(lifetime=0))
    later = SealedTickets(
        KeyRing([A]),
        10,
        clock=lambda: datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=5),
    )
    assert later.fetch(label) is None


def test_strike_register_is_bounded_and_never_forgets_silently() -> None:
    # Push past the bound: 3 entries; every ticket used once, and none replayable after
    # the register had to forget it.
    register = StrikeRegister(3)
    for n in range(10):
        assert register.first_use(b"t%d" % n, expiry_ms=1000 + n, now_ms=0)
        assert len(register) <= 3
    for n in range(10):  # all used: the last 3 remembered, the others below the floor
        assert not register.first_use(b"t%d" % n, expiry_ms=1000 + n, now_ms=0)
    # A fresh ticket expiring after the floor is still welcome.
    assert register.first_use(b"new", expiry_ms=2000, now_ms=0)
    # Expired entries leave on their own; the register empties with time.
    assert register.first_use(b"late", expiry_ms=5000, now_ms=4000)
    assert len(register) == 1
    # --quic-session-tickets 0: nothing remembered, so nothing resumes.
    assert not StrikeRegister(0).first_use(b"t", expiry_ms=1000, now_ms=0)


# -- Retry and stateless reset under a shared, rotating ring ------------------------------


def test_retry_tokens_cross_processes_and_rotation() -> None:
    machine_a = TokenAuthority(ring=KeyRing([A]))
    machine_b = TokenAuthority(ring=KeyRing([A]))
    token = machine_a.create_retry_token(CLIENT, b"odcid123", b"scid5678", now=0.0)
    assert machine_b.validate_retry_token(token, CLIENT, b"scid5678", now=1.0) == b"odcid123"
    machine_b.ring.replace([B, A])  # rotated: B mints, A still validates
    assert machine_b.validate_retry_token(token, CLIENT, b"scid5678", now=1.0) == b"odcid123"
    fresh = machine_b.create_retry_token(CLIENT, b"odcid123", b"scid5678", now=0.0)
    assert machine_a.validate_retry_token(fresh, CLIENT, b"scid5678", now=1.0) is None
    machine_b.ring.replace([B])  # A deleted: its tokens are dead
    assert machine_b.validate_retry_token(token, CLIENT, b"scid5678", now=1.0) is None


def short_packet(cid: bytes, size: int) -> bytes:
    return bytes([0x40]) + cid + os.urandom(size - 1 - len(cid))


def test_resets_cover_every_key_bounded_by_amplification() -> None:
    ring = KeyRing([A])
    issuer = EndpointCore(supported_versions=[V1], tokens=TokenAuthority(ring=ring))
    cid, token_a = issuer.new_connection_id()
    # Another machine with the same file resets the connection: same token.
    other = EndpointCore(supported_versions=[V1], tokens=TokenAuthority(ring=KeyRing([A])))
    decision = other.classify(short_packet(cid, 60), CLIENT, 0.0)
    assert isinstance(decision, Reply) and decision.datagram[-16:] == token_a
    assert decision.more == ()
    # After a rotation to [C, B, A] the CID (issued under A) still gets its reset: one per
    # key, current first, each smaller than the trigger, all within 3x the trigger.
    ring.replace([C, B, A])
    for size in (22, 43, 60, 1200):
        core = EndpointCore(
            supported_versions=[V1], tokens=TokenAuthority(ring=ring), stateless_reset_rate=100
        )
        decision = core.classify(short_packet(cid, size), CLIENT, 0.0)
        assert isinstance(decision, Reply)
        resets = [decision.datagram, *decision.more]
        assert all(21 <= len(r) < size for r in resets)
        assert sum(map(len, resets)) <= 3 * size
        assert [r[-16:] for r in resets] == core.tokens.stateless_reset_tokens(cid)[: len(resets)]
        assert len(resets) == 3 and resets[-1][-16:] == token_a
        assert core.stats()["resets_sent"] == 3
    # Eight keys and a small trigger: the amplification budget stops the list.
    ring.replace([os.urandom(32) for _ in range(MAX_KEYS)])
    core = EndpointCore(
        supported_versions=[V1], tokens=TokenAuthority(ring=ring), stateless_reset_rate=100
    )
    decision = core.classify(short_packet(cid, 30), CLIENT, 0.0)
    assert isinstance(decision, Reply) and 1 + len(decision.more) == 3  # 3 x 29 <= 90
    # Each reset takes a token from the rate limit.
    core = EndpointCore(
        supported_versions=[V1], tokens=TokenAuthority(ring=ring), stateless_reset_rate=2
    )
    decision = core.classify(short_packet(cid, 1200), CLIENT, 0.0)
    assert isinstance(decision, Reply) and len(decision.more) == 1


def test_retry_from_one_machine_is_accepted_on_another_whatever_its_uptime() -> None:
    # Two machines share the ring; their monotonic clocks (``now``) started at different
    # boots, their wall clocks (``token_clock``) agree within NTP skew.
    wall = [1_765_000_000.0]

    def machine(monotonic_base: float) -> tuple[EndpointCore, float]:
        core = EndpointCore(
            supported_versions=[V1],
            retry="always",
            tokens=TokenAuthority(ring=KeyRing([A])),
            token_clock=lambda: wall[0],
        )
        return core, monotonic_base

    (a, a_now), (b, b_now) = machine(5.0), machine(900_000.0)
    first_dcid, retry_scid, second = retry_exchange(a, make_client(), a_now)
    wall[0] += 0.05
    assert b.classify(second, END_CLIENT, b_now) == Accept(
        original_dcid=first_dcid, retry_scid=retry_scid, dcid=retry_scid, version=V1
    )
    wall[0] += 30  # past the 10 s lifetime on the shared wall clock: INVALID_TOKEN close
    decision = b.classify(second, END_CLIENT, b_now)
    assert isinstance(decision, Reply) and decision.reason == "invalid token"
