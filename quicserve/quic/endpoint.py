"""EndpointCore: what to do with one UDP datagram, before any QUIC connection sees it.

The transport reads a datagram and asks ``classify(data, addr, now)``; the answer is one of

* :class:`Route` — a connection owns the Destination CID: feed the datagram to it;
* :class:`Accept` — a new client Initial we take: create a server ``QuicConnection`` with
  ``original_dcid`` / ``retry_scid``, then ``register_cid`` its CIDs;
* :class:`Reply` — send ``datagram`` back to ``addr`` (Version Negotiation, Retry, an
  Initial carrying CONNECTION_CLOSE, or a stateless reset), nothing else;
* :class:`Drop` — ignore the datagram (``reason`` is for stats and debug logs).

The caller then tells the core what it did: ``register_cid`` / ``unregister_cid`` for every
CID a connection issues or retires, ``handshake_started`` / ``handshake_done`` around each
handshake, ``forget`` when a connection is gone. Every CID the server issues comes from
``new_connection_id()``, so its stateless reset token is the one this core recomputes later.

Rules (RFC 9000 unless noted):

* Sans-IO: no sockets, no tasks, no clock of its own; ``now`` is an argument (seconds,
  monotonic). Retry tokens expire on ``token_clock`` (the caller passes ``time.time``),
  because a token minted on one machine may be checked on another (``--quic-secrets-file``)
  and monotonic clocks differ between machines; without it they use ``now``.
  ``classify`` never raises: anything that does not parse is dropped.
* The version-independent long header (RFC 8999 §5.1) is read first, because an unknown
  version may lay out everything after the connection IDs differently, and may use CIDs
  longer than 20 bytes (§17.2) that a Version Negotiation must still echo. A supported
  version's header is then parsed with aioquic's ``pull_quic_header``.
* A Version Negotiation packet is never answered (RFC 8999 §6, §6.1): two servers must not
  be able to bounce VN packets at each other. An unsupported version gets a VN only in a
  datagram of at least 1200 bytes, anything smaller is dropped (§5.2.2, §14.1), so a VN
  (a few dozen bytes) never amplifies.
* Packets of a supported version, and short headers, are matched to a connection by
  Destination CID only, never by address (§5.2, §9: a migrated client keeps its
  connection), whatever their type. A datagram of coalesced packets is routed by its first
  packet (§12.2: coalesced packets share one Destination CID).
* A new connection starts only from an Initial in a datagram of at least 1200 bytes (§14.1)
  whose client-chosen Destination CID has at least 8 bytes (§7.2). 0-RTT packets that
  arrive before their Initial are dropped: buffering them (§5.2.2 allows it) is out of
  scope, the client retransmits them as 1-RTT. Handshake packets cannot precede an Initial
  (§5.2.2) and other long-header types are dropped.
* When ``connections >= max_connections``, or ``unvalidated >= max_handshakes``, a new
  Initial is refused with an Initial carrying CONNECTION_CLOSE(CONNECTION_REFUSED) (§5.2.2
  SHOULD), so the client fails fast instead of
  retransmitting into a full server. An unvalidated address may be spoofed, so these closes
  (and INVALID_TOKEN closes) are built at most ``close_rate`` times per second, then dropped;
  each is much smaller than the 1200-byte datagram that caused it.
* Address validation (§8.1.2): with ``retry="always"``, or ``"auto"`` while at least
  ``retry_threshold`` handshakes are in progress, an Initial without a token gets a Retry
  whose token (:class:`~quicserve.quic.tokens.TokenAuthority`) authenticates the address,
  the original Destination CID and the Retry's Source CID. A valid Retry token is accepted
  in any mode. A token that has our Retry-token layout but fails validation gets an
  INVALID_TOKEN close (§8.1.2: the client will not take a second Retry); any other token
  (NEW_TOKEN from elsewhere) is ignored as if absent (§8.1.3).
* Bounded state under an Initial flood: with Retry on, classifying an Initial keeps
  *nothing* per peer: the token carries all the state, and the only thing that grows with
  load is the ``unvalidated`` counter, which the caller moves for connections it actually
  created. Everything else here is per registered CID or connection, bounded by
  ``max_connections`` and by the number of CIDs each connection issues.
* Unknown CID in a short header: a stateless reset (§10.3) ending in the reset token that
  ``new_connection_id`` gave that CID, smaller than the datagram that triggered it
  (§10.3.3, so two endpoints cannot loop), at least 21 bytes (§10.3: shorter packets are
  never valid), one byte shorter for packets of 43 bytes or less (§10.3). At most
  ``stateless_reset_rate`` per second (a token bucket, burst = rate), since the trigger
  may come from a spoofed address (§10.3.3 suggests a limit). With a key ring of several
  keys (``--quic-secrets-file`` after a rotation) the CID may have been issued under any of
  them, so one reset per key is sent, current key first (``Reply.more``), each its own
  datagram with its own size and random bytes, each taking a token from the bucket, and
  all of them together at most 3 times the trigger (the §8 anti-amplification factor for
  an address we have not validated): at most ``MAX_KEYS`` small datagrams.
* CIDs come from ``cid_generator`` (default: ``cid_length`` random bytes). A multi-worker
  server will pass a generator that encodes the worker id (QUIC-LB plaintext CIDs) so every
  datagram of a connection, including the Initial that answers a Retry, reaches its
  worker; the Retry Source CID is therefore drawn from the same generator (§8.1.2: a new
  CID "grants a server some control over how subsequent packets are routed").
"""

from __future__ import annotations

import os
import secrets
from collections import Counter
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Literal, TypeAlias

from aioquic.buffer import Buffer  # type: ignore[attr-defined]  # re-exported from _buffer
from aioquic.quic.crypto import CryptoPair
from aioquic.quic.packet import (
    QuicErrorCode,
    QuicFrameType,
    QuicPacketType,
    QuicProtocolVersion,
    encode_quic_retry,
    encode_quic_version_negotiation,
    pull_quic_header,
)
from aioquic.quic.packet_builder import QuicPacketBuilder

from .tokens import RESET_TOKEN_SIZE, TokenAuthority

__all__ = [
    "MIN_INITIAL_DATAGRAM",
    "Accept",
    "Decision",
    "Drop",
    "EndpointCore",
    "Reply",
    "Route",
    "encode_initial_close",
]

#: RFC 9000 §14.1: the smallest datagram that may carry a client Initial.
MIN_INITIAL_DATAGRAM = 1200
#: RFC 9000 §7.2: a client's first Destination CID has at least 8 bytes.
MIN_CLIENT_DCID = 8
#: RFC 9000 §17.2: version 1 connection IDs are at most 20 bytes.
MAX_CID_LENGTH = 20
#: RFC 9000 §10.3: 1 byte of header, 4 unpredictable bytes, 16 bytes of token.
MIN_RESET_SIZE = 21
#: RFC 9000 §10.3: answer packets of this size or less with a reset one byte shorter.
_SMALL_TRIGGER = 43
#: RFC 9000 §8: at most three times the bytes received from an unvalidated address.
_RESET_AMPLIFICATION = 3
#: Largest reset we send; bigger triggers get a random length in [43, min(this, trigger - 1)].
_MAX_RESET_SIZE = 64

#: Event counters reported by ``stats()``. ``*_sent`` count replies; ``refused`` and
#: ``invalid_token`` count Initials, whether their close was sent or rate limited.
_COUNTERS = (
    "routed",
    "accepted",
    "vn_sent",
    "retry_sent",
    "invalid_token",
    "refused",
    "resets_sent",
)

_LONG_HEADER = 0x80
_FIXED_BIT = 0x40


@dataclass(frozen=True, slots=True)
class Route:
    """Deliver the datagram to the connection registered under ``key``."""

    key: Hashable


@dataclass(frozen=True, slots=True)
class Accept:
    """A new connection: create a server QuicConnection with these IDs, then register it.

    ``original_dcid`` goes to ``original_destination_connection_id`` and ``retry_scid`` to
    ``retry_source_connection_id`` (RFC 9000 §7.3); ``dcid`` is the Destination CID of this
    Initial, which the client keeps using until it hears from the server, so register it.
    """

    original_dcid: bytes
    retry_scid: bytes | None
    dcid: bytes
    version: int


@dataclass(frozen=True, slots=True)
class Reply:
    """Send ``datagram`` to the address the classified datagram came from."""

    datagram: bytes
    reason: str
    #: Further datagrams to send after ``datagram`` (stateless resets under older keys).
    more: tuple[bytes, ...] = ()


@dataclass(frozen=True, slots=True)
class Drop:
    """Ignore the datagram."""

    reason: str


Decision: TypeAlias = Route | Accept | Reply | Drop


def encode_initial_close(
    *,
    version: int,
    initial_dcid: bytes,
    peer_cid: bytes,
    error_code: int,
    reason: bytes = b"",
) -> bytes:
    """A server Initial packet carrying CONNECTION_CLOSE (type 0x1c) with ``error_code``.

    For closing a connection attempt without creating one (RFC 9000 §10.2.3: in the Initial
    space a close is sent in an Initial packet). ``initial_dcid`` is the Destination CID of
    the client's Initial: it keys Initial packet protection (RFC 9001 §5.2) and is reused as
    our Source CID. ``peer_cid`` is the client's Source CID. A close is not ack-eliciting,
    so the datagram needs no padding (§14.1) and stays small.
    """
    crypto = CryptoPair()
    crypto.setup_initial(cid=initial_dcid, is_client=False, version=version)
    builder = QuicPacketBuilder(
        host_cid=initial_dcid,
        peer_cid=peer_cid,
        version=version,
        is_client=False,
        max_datagram_size=MIN_INITIAL_DATAGRAM,
    )
    builder.start_packet(QuicPacketType.INITIAL, crypto)
    buf = builder.start_frame(QuicFrameType.TRANSPORT_CLOSE, capacity=1 + 3 * 8 + len(reason))
    buf.push_uint_var(error_code)
    buf.push_uint_var(QuicFrameType.PADDING)  # the frame that caused it: none in particular
    buf.push_uint_var(len(reason))
    buf.push_bytes(reason)
    datagrams, _ = builder.flush()
    return bytes(datagrams[0])


class _TokenBucket:
    """``rate`` events per second on average, at most ``burst`` at once; starts full."""

    __slots__ = ("_last", "_level", "burst", "rate")

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self._level = burst
        self._last: float | None = None

    @classmethod
    def per_second(cls, rate: float) -> _TokenBucket:
        """``rate`` per second with a burst of ``rate`` (at least one, unless rate is 0)."""
        return cls(rate, max(rate, 1.0) if rate > 0 else 0.0)

    def take(self, now: float) -> bool:
        if self._last is not None and now > self._last:
            self._level = min(self.burst, self._level + (now - self._last) * self.rate)
        if self._last is None or now > self._last:
            self._last = now
        if self._level >= 1.0:
            self._level -= 1.0
            return True
        return False


def _long_header_invariants(data: bytes) -> tuple[int, bytes, bytes] | None:
    """(version, dcid, scid) of a long header (RFC 8999 §5.1), or None if truncated."""
    if len(data) < 7:
        return None
    version = int.from_bytes(data[1:5], "big")
    dcid_end = 6 + data[5]
    if dcid_end >= len(data):
        return None
    scid_end = dcid_end + 1 + data[dcid_end]
    if scid_end > len(data):
        return None
    return version, data[6:dcid_end], data[dcid_end + 1 : scid_end]


class EndpointCore:
    """Sans-IO demultiplexer and gatekeeper of one QUIC server endpoint (one UDP socket).

    ``supported_versions`` is listed in Version Negotiation packets in order of preference.
    ``retry`` chooses when to validate addresses with Retry; ``"auto"`` turns it on while
    ``unvalidated >= retry_threshold``. ``max_connections`` bounds the keys this core
    knows. ``stateless_reset_rate`` and ``close_rate`` bound, per second, the stateless
    replies that cost crypto work. ``max_handshakes`` bounds the handshakes in progress
    (``unvalidated``) over all peers: a half-open connection holds about 100 KiB until its
    handshake ends or it idles out, and Retry does not stop a peer that uses its own
    address. ``max_unvalidated_per_address`` (off by default, since many clients can
    share a NAT) bounds the handshakes in progress per client IP, counted for keys whose
    ``handshake_started`` was given the address; with Retry on, that IP is validated, so
    the limit cannot be spent on someone else's behalf.
    """

    def __init__(
        self,
        *,
        supported_versions: list[int],
        cid_length: int = 8,
        retry: Literal["never", "always", "auto"] = "never",
        retry_threshold: int = 100,
        max_connections: int = 10000,
        tokens: TokenAuthority | None = None,
        stateless_reset_rate: float = 10.0,
        close_rate: float = 10.0,
        max_unvalidated_per_address: int | None = None,
        max_handshakes: int | None = None,
        cid_generator: Callable[[], bytes] | None = None,
        token_clock: Callable[[], float] | None = None,
    ) -> None:
        if not supported_versions:
            raise ValueError("supported_versions must not be empty")
        for version in supported_versions:
            if not 0 < version <= 0xFFFFFFFF:
                raise ValueError(f"not a QUIC version: {version:#x}")
        if not 1 <= cid_length <= MAX_CID_LENGTH:
            raise ValueError(f"cid_length must be 1 to {MAX_CID_LENGTH}")
        if retry not in ("never", "always", "auto"):
            raise ValueError(f"retry must be 'never', 'always' or 'auto', not {retry!r}")
        if retry_threshold < 0 or max_connections < 0:
            raise ValueError("retry_threshold and max_connections must not be negative")
        if stateless_reset_rate < 0 or close_rate < 0:
            raise ValueError("rates must not be negative")
        if max_unvalidated_per_address is not None and max_unvalidated_per_address < 1:
            raise ValueError("max_unvalidated_per_address must be at least 1")
        if max_handshakes is not None and max_handshakes < 1:
            raise ValueError("max_handshakes must be at least 1")

        self.supported_versions = list(supported_versions)
        self.cid_length = cid_length
        self.retry = retry
        self.retry_threshold = retry_threshold
        self.max_connections = max_connections
        self.max_unvalidated_per_address = max_unvalidated_per_address
        self.max_handshakes = max_handshakes
        self.tokens = tokens if tokens is not None else TokenAuthority()
        self._cid_generator: Callable[[], bytes] = cid_generator or (lambda: os.urandom(cid_length))
        self._token_clock = token_clock
        self._reset_bucket = _TokenBucket.per_second(stateless_reset_rate)
        self._close_bucket = _TokenBucket.per_second(close_rate)

        # Per registered CID / known connection, never per unvalidated peer.
        self._routes: dict[bytes, Hashable] = {}
        self._cids_of: dict[Hashable, set[bytes]] = {}
        self._unvalidated: set[Hashable] = set()
        self._unvalidated_host: dict[Hashable, str] = {}
        self._unvalidated_per_host: Counter[str] = Counter()

        self._counters: Counter[str] = Counter()
        self._dropped: Counter[str] = Counter()

    # -- bookkeeping the caller drives ------------------------------------------------

    def new_connection_id(self) -> tuple[bytes, bytes]:
        """A fresh CID from ``cid_generator`` (not yet registered) and its reset token.

        Use it for every CID the server issues, so that a stateless reset for it can be
        computed after the connection is gone (RFC 9000 §10.3.2).
        """
        cid = self._fresh_cid()
        return cid, self.tokens.stateless_reset_token(cid)

    def register_cid(self, cid: bytes, key: Hashable) -> None:
        """Route datagrams for ``cid`` to ``key`` (a CID the connection issued, or the
        client-chosen Destination CID of its first Initial)."""
        if not 0 < len(cid) <= MAX_CID_LENGTH:
            raise ValueError(f"a connection ID has 1 to {MAX_CID_LENGTH} bytes")
        owner = self._routes.get(cid)
        if owner is not None and owner != key:
            raise ValueError("connection ID already belongs to another connection")
        self._routes[cid] = key
        self._cids_of.setdefault(key, set()).add(cid)

    def unregister_cid(self, cid: bytes) -> None:
        """Stop routing ``cid`` (retired, RFC 9000 §5.1.2). Unknown CIDs are ignored."""
        key = self._routes.pop(cid, None)
        if key is not None:
            cids = self._cids_of.get(key)
            if cids is not None:
                cids.discard(cid)

    def forget(self, key: Hashable) -> None:
        """The connection is gone: drop all its CIDs and its unvalidated mark."""
        for cid in self._cids_of.pop(key, ()):
            if self._routes.get(cid) == key:
                del self._routes[cid]
        self.handshake_done(key)

    def handshake_started(self, key: Hashable, addr: tuple[str, int] | None = None) -> None:
        """A handshake began for ``key`` (counts toward ``unvalidated``). Give ``addr`` to
        count it against ``max_unvalidated_per_address``."""
        if key in self._unvalidated:
            return
        self._unvalidated.add(key)
        if addr is not None:
            host = str(addr[0])
            self._unvalidated_host[key] = host
            self._unvalidated_per_host[host] += 1

    def handshake_done(self, key: Hashable) -> None:
        """The handshake of ``key`` completed or failed. Idempotent."""
        self._unvalidated.discard(key)
        host = self._unvalidated_host.pop(key, None)
        if host is not None:
            self._unvalidated_per_host[host] -= 1
            if self._unvalidated_per_host[host] <= 0:
                del self._unvalidated_per_host[host]

    def lookup(self, cid: bytes) -> Hashable | None:
        """The key ``cid`` is registered to, if any."""
        return self._routes.get(cid)

    def cids(self, key: Hashable) -> frozenset[bytes]:
        """The CIDs registered to ``key``."""
        return frozenset(self._cids_of.get(key, ()))

    @property
    def unvalidated(self) -> int:
        """Handshakes in progress (between ``handshake_started`` and ``handshake_done``)."""
        return len(self._unvalidated)

    @property
    def connections(self) -> int:
        """Connections known: keys with a registered CID and not yet forgotten."""
        return len(self._cids_of)

    @property
    def retry_required(self) -> bool:
        """Whether an Initial without a valid token would get a Retry right now."""
        if self.retry == "always":
            return True
        return self.retry == "auto" and self.unvalidated >= self.retry_threshold

    def stats(self) -> dict[str, int | dict[str, int]]:
        """Counters since creation, and current sizes."""
        result: dict[str, int | dict[str, int]] = {name: self._counters[name] for name in _COUNTERS}
        result["dropped"] = sum(self._dropped.values())
        result["dropped_by_reason"] = dict(self._dropped)
        result["connections"] = self.connections
        result["cids"] = len(self._routes)
        result["unvalidated"] = self.unvalidated
        return result

    # -- classification ---------------------------------------------------------------

    def classify(self, data: bytes, addr: tuple[str, int], now: float) -> Decision:
        """Decide what to do with one received datagram (see the module rules)."""
        try:
            decision = self._classify(data, addr, now)
        except Exception:
            # Parse errors are handled where they occur; this only keeps a bug (or a
            # misbehaving cid_generator) from taking the whole endpoint down with it.
            decision = Drop("internal error")
        if isinstance(decision, Drop):
            self._dropped[decision.reason] += 1
        return decision

    def _classify(self, data: bytes, addr: tuple[str, int], now: float) -> Decision:
        if not data:
            return Drop("empty")
        first = data[0]
        if not first & _LONG_HEADER:
            return self._classify_short(data, now)

        invariants = _long_header_invariants(data)
        if invariants is None:
            return Drop("malformed")
        version, dcid, scid = invariants

        # RFC 8999 §6, RFC 9000 §6.1: never answer a Version Negotiation packet.
        if version == QuicProtocolVersion.NEGOTIATION:
            return Drop("version negotiation")

        # RFC 9000 §5.2.2, §6.1: VN for unsupported versions, only in datagrams large
        # enough to start a connection; drop smaller ones.
        if version not in self.supported_versions:
            if len(data) < MIN_INITIAL_DATAGRAM:
                return Drop("unsupported version")
            self._counters["vn_sent"] += 1
            return Reply(
                encode_quic_version_negotiation(
                    source_cid=dcid,  # RFC 8999 §6: the CIDs are echoed, swapped
                    destination_cid=scid,
                    supported_versions=self.supported_versions,
                ),
                "version negotiation",
            )

        # RFC 9000 §5.2: route by Destination CID only, whatever the packet type.
        key = self._routes.get(dcid)
        if key is not None:
            self._counters["routed"] += 1
            return Route(key)

        try:
            header = pull_quic_header(Buffer(data=data), host_cid_length=self.cid_length)
        except ValueError:  # includes BufferReadError; CIDs > 20 bytes (§17.2)
            return Drop("malformed")

        if header.packet_type == QuicPacketType.INITIAL:
            return self._classify_initial(data, header.token, dcid, scid, version, addr, now)
        if header.packet_type == QuicPacketType.ZERO_RTT:
            # §5.2.2 allows buffering 0-RTT that precedes its Initial; we do not.
            return Drop("0-rtt before initial")
        # §5.2.2: a client cannot send Handshake before hearing from us; Retry is server-only.
        return Drop("unknown connection")

    def _classify_initial(
        self,
        data: bytes,
        token: bytes,
        dcid: bytes,
        scid: bytes,
        version: int,
        addr: tuple[str, int],
        now: float,
    ) -> Decision:
        # RFC 9000 §14.1: an Initial in a datagram under 1200 bytes MUST be discarded.
        if len(data) < MIN_INITIAL_DATAGRAM:
            return Drop("short initial")

        # RFC 9000 §5.2.2: a server that refuses a connection SHOULD say so.
        # The same for a full table of handshakes in progress (each is a half-open
        # connection a peer can hold until it idles out).
        if self.connections >= self.max_connections or (
            self.max_handshakes is not None and self.unvalidated >= self.max_handshakes
        ):
            self._counters["refused"] += 1
            return self._close(version, dcid, scid, QuicErrorCode.CONNECTION_REFUSED, now)

        original_dcid: bytes | None = None
        if token:
            # RFC 9000 §8.1.3: a server MUST attempt to validate a token it receives.
            original_dcid = self.tokens.validate_retry_token(
                token, addr, dcid, self._token_clock() if self._token_clock else now
            )
            if original_dcid is None and self.tokens.is_retry_token(token):
                # §8.1.2: an invalid Retry token; the client will not accept a second
                # Retry, so close with INVALID_TOKEN rather than let it time out.
                self._counters["invalid_token"] += 1
                return self._close(version, dcid, scid, QuicErrorCode.INVALID_TOKEN, now)
            # Otherwise a foreign token (e.g. NEW_TOKEN from another server): proceed as if
            # the address were not validated (§8.1.3).

        if original_dcid is None:
            # §7.2: the client's first Destination CID is at least 8 bytes (it also seeds
            # the Initial keys, so a short one would weaken them).
            if len(dcid) < MIN_CLIENT_DCID:
                return Drop("short dcid")
            if self.retry_required:
                return self._send_retry(version, dcid, scid, addr, now)

        if self.max_unvalidated_per_address is not None:
            if self._unvalidated_per_host[str(addr[0])] >= self.max_unvalidated_per_address:
                return Drop("address handshake limit")

        self._counters["accepted"] += 1
        if original_dcid is None:
            return Accept(original_dcid=dcid, retry_scid=None, dcid=dcid, version=version)
        # §7.3: after a Retry, the Initial's Destination CID is the Retry's Source CID.
        return Accept(original_dcid=original_dcid, retry_scid=dcid, dcid=dcid, version=version)

    def _send_retry(
        self, version: int, dcid: bytes, scid: bytes, addr: tuple[str, int], now: float
    ) -> Reply:
        # §8.1.2, §17.2.5: nothing is stored; the token carries the original DCID and the
        # Retry's Source CID, and the integrity tag (RFC 9001 §5.8, RFC 9369 §3.3.3 for
        # version 2) is keyed per version by encode_quic_retry.
        retry_scid = self._fresh_cid()
        token = self.tokens.create_retry_token(
            addr, dcid, retry_scid, self._token_clock() if self._token_clock else now
        )
        self._counters["retry_sent"] += 1
        return Reply(
            encode_quic_retry(
                version=version,
                source_cid=retry_scid,
                destination_cid=scid,
                original_destination_cid=dcid,
                retry_token=token,
            ),
            "retry",
        )

    def _close(
        self, version: int, dcid: bytes, scid: bytes, error_code: int, now: float
    ) -> Reply | Drop:
        if not self._close_bucket.take(now):
            return Drop("close rate limited")
        refused = error_code == QuicErrorCode.CONNECTION_REFUSED
        datagram = encode_initial_close(
            version=version, initial_dcid=dcid, peer_cid=scid, error_code=error_code
        )
        return Reply(datagram, "connection refused" if refused else "invalid token")

    def _classify_short(self, data: bytes, now: float) -> Decision:
        # RFC 9000 §17.3: the Destination CID has the length we chose (cid_length).
        dcid = data[1 : 1 + self.cid_length]
        if len(dcid) < self.cid_length:
            return Drop("malformed")
        key = self._routes.get(dcid)
        if key is not None:
            self._counters["routed"] += 1
            return Route(key)
        if not data[0] & _FIXED_BIT:  # §17.3.1: the fixed bit is 1 in version 1
            return Drop("malformed")

        # §10.3: a stateless reset for a packet we cannot associate with a connection.
        size = self._reset_size(len(data))
        if size is None:
            # §10.3.3: a reset must be smaller than its trigger and at least 21 bytes.
            return Drop("too small for reset")
        resets: list[bytes] = []
        budget = _RESET_AMPLIFICATION * len(data)
        for token in self.tokens.stateless_reset_tokens(dcid):
            if size is None or size > budget or not self._reset_bucket.take(now):
                break
            budget -= size
            unpredictable = bytearray(os.urandom(size - RESET_TOKEN_SIZE))
            # §10.3: "Fixed Bits (2) = 1": a short header (0) with the fixed bit set (1).
            unpredictable[0] = (unpredictable[0] & 0x3F) | _FIXED_BIT
            resets.append(bytes(unpredictable) + token)
            size = self._reset_size(len(data))
        if not resets:
            return Drop("reset rate limited")
        self._counters["resets_sent"] += len(resets)
        return Reply(resets[0], "stateless reset", tuple(resets[1:]))

    @staticmethod
    def _reset_size(trigger: int) -> int | None:
        """Length of a reset answering a ``trigger``-byte datagram, None if impossible."""
        if trigger <= MIN_RESET_SIZE:
            return None
        if trigger <= _SMALL_TRIGGER:
            return trigger - 1  # §10.3: one byte shorter than small triggers
        upper = min(trigger - 1, _MAX_RESET_SIZE)
        return _SMALL_TRIGGER + secrets.randbelow(upper - _SMALL_TRIGGER + 1)

    def _fresh_cid(self) -> bytes:
        for _ in range(16):
            cid = self._cid_generator()
            if len(cid) != self.cid_length:
                raise ValueError(
                    f"cid_generator returned {len(cid)} bytes, expected {self.cid_length}"
                )
            if cid not in self._routes:
                return cid
        raise RuntimeError("cid_generator keeps returning connection IDs in use")
