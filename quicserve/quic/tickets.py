"""TLS session tickets for QUIC resumption and 0-RTT: kept in memory, or sealed with a key ring.

Sans-IO: aioquic asks for a ticket's label when it issues one and for the ticket when a
client presents a label (``session_ticket_handler`` / ``session_ticket_fetcher``).

* :class:`SessionTicketStore` (no ``--quic-secrets-file``): the label is aioquic's 64
  random bytes and the ticket stays in this process's memory, so only this process can
  resume it.
* :class:`SealedTickets` (``--quic-secrets-file``): the label *is* the ticket, sealed with
  AES-256-GCM under the ring's current key, so any process holding the ring resumes it.
  Layout: ``0x01`` | key id (4) | nonce (12) | ciphertext | tag (16), the first five bytes
  authenticated as associated data. The plaintext holds what aioquic's server needs to
  resume (``tls.py``: it checks validity and cipher suite, then keys the handshake with
  the resumption secret): cipher suite, resumption secret, ``not_valid_before`` (ms) and
  lifetime, ``age_add``, ``max_early_data_size`` (0-RTT permission) and the server name.
  The server's transport parameters (``other_extensions``) are left out: aioquic's server
  never reads them, every process of a fleet runs with one configuration, and they would
  make every ticket, and the client's ClientHello, about 100 bytes larger.

Rules:

* The key id picks the key; a ticket whose key left the ring, or that fails
  authentication or parsing, is no ticket (``None``: a full handshake), never an error.
* 0-RTT anti-replay (RFC 8446 §8, RFC 9001 §9.2): within a process every ticket resumes
  once. :class:`StrikeRegister` remembers the tickets seen until they expire, at most
  ``capacity`` of them; when full it forgets the one that expires first and from then on
  refuses every ticket expiring no later than that one (a ticket it no longer remembers
  could otherwise be replayed). So memory is bounded and single use is never broken; the
  price, under more than ``capacity`` resumptions per ticket lifetime, is that old unused
  tickets get a full handshake. Across processes and machines a ticket can resume once in
  each (each has its own register): that replay window is documented in the README
  ("Shared secrets across workers and machines") and is why 0-RTT requests are limited
  to safe methods (others get 425, RFC 8470). A process that restarts starts with an
  empty register. aioquic asks for the ticket before it checks the PSK binder, so a
  ClientHello that copies a ticket label (sent in clear) with a bad binder uses the ticket
  up: the real client then gets a full handshake, never someone else's session.
* AES-GCM nonces are random (96 bits): rotate the key well before 2^32 tickets
  (NIST SP 800-38D §8.3).
"""

from __future__ import annotations

import datetime
import hashlib
import heapq
import os
import struct
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from aioquic.tls import CipherSuite, SessionTicket, utcnow
from cryptography.exceptions import InvalidTag

from .keyring import KEY_ID_SIZE, KeyRing

__all__ = ["TICKET_FORMAT", "SealedTickets", "SessionTicketStore", "StrikeRegister"]

#: First byte of every sealed ticket.
TICKET_FORMAT = 0x01
_NONCE_SIZE = 12
_TAG_SIZE = 16
_HEADER_SIZE = 1 + KEY_ID_SIZE
# cipher suite, age_add, not_valid_before (ms), lifetime (s), has max_early_data, its value
_FIXED = struct.Struct("!HIQIBI")
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
#: Longer labels are not ours (a sealed ticket is 99 to 115 bytes); no AEAD work for them.
_MAX_SEALED = 1024


class SessionTicketStore:
    """TLS session tickets for resumption, in memory and bounded.

    A ticket is handed out once (``pop``): that makes 0-RTT data single-use, the
    anti-replay measure RFC 9001 §9.2 asks servers to consider.
    """

    def __init__(self, capacity: int) -> None:
        self._tickets: OrderedDict[bytes, SessionTicket] = OrderedDict()
        self._capacity = capacity

    def add(self, ticket: SessionTicket) -> None:
        """Keep a ticket we issued (the oldest goes when full)."""
        self._tickets[ticket.ticket] = ticket
        while len(self._tickets) > self._capacity:
            self._tickets.popitem(last=False)

    def pop(self, label: bytes) -> SessionTicket | None:
        """The ticket a client presents, removed so it cannot be used twice."""
        return self._tickets.pop(label, None)

    def hooks(self) -> dict[str, Any]:
        """The keyword arguments that plug this store into a server connection."""
        return {"session_ticket_fetcher": self.pop, "session_ticket_handler": self.add}

    def __len__(self) -> int:
        return len(self._tickets)


def _ms(moment: datetime.datetime) -> int:
    return int((moment - _EPOCH).total_seconds() * 1000)


class StrikeRegister:
    """Labels of tickets already used, until they expire; at most ``capacity`` of them."""

    __slots__ = ("_capacity", "_expiries", "_floor_ms", "_seen")

    def __init__(self, capacity: int) -> None:
        #: 0 (or less) remembers nothing and so accepts nothing: no resumption, as with an
        #: in-memory store of no tickets.
        self._capacity = capacity
        self._seen: set[bytes] = set()
        self._expiries: list[tuple[int, bytes]] = []  # a heap: (expiry ms, digest)
        #: Tickets expiring at or before this (ms) are refused: some were forgotten.
        self._floor_ms = -1

    def first_use(self, label: bytes, expiry_ms: int, now_ms: int) -> bool:
        """Record a use of ``label``; False if it was used before (or may have been)."""
        if self._capacity < 1:
            return False
        expiries = self._expiries
        while expiries and expiries[0][0] < now_ms:  # expired: aioquic refuses them anyway
            self._seen.discard(heapq.heappop(expiries)[1])
        if expiry_ms <= self._floor_ms:
            return False
        digest = hashlib.sha256(label).digest()[:16]
        if digest in self._seen:
            return False
        self._seen.add(digest)
        heapq.heappush(expiries, (expiry_ms, digest))
        while len(self._seen) > self._capacity:
            expiry, forgotten = heapq.heappop(expiries)
            self._seen.discard(forgotten)
            self._floor_ms = max(self._floor_ms, expiry)
        return True

    def __len__(self) -> int:
        return len(self._seen)


class SealedTickets:
    """Session tickets sealed with a :class:`KeyRing` (stateless), used once per process."""

    def __init__(
        self,
        ring: KeyRing,
        capacity: int,
        clock: Callable[[], datetime.datetime] = utcnow,
    ) -> None:
        self.ring = ring
        self.strikes = StrikeRegister(capacity)
        self._clock = clock

    def seal(self, ticket: SessionTicket) -> bytes:
        """The label to send for ``ticket``: everything needed to resume it, sealed."""
        key = self.ring.current
        name = ticket.server_name.encode("utf-8")[:255] if ticket.server_name else b""
        lifetime = max(0, int((ticket.not_valid_after - ticket.not_valid_before).total_seconds()))
        early = ticket.max_early_data_size
        plain = b"".join(
            (
                _FIXED.pack(
                    int(ticket.cipher_suite),
                    ticket.age_add & 0xFFFFFFFF,
                    _ms(ticket.not_valid_before),
                    min(lifetime, 0xFFFFFFFF),
                    early is not None,
                    early or 0,
                ),
                bytes([len(ticket.resumption_secret)]),
                ticket.resumption_secret,
                bytes([len(name)]),
                name,
            )
        )
        header = bytes([TICKET_FORMAT]) + key.key_id
        nonce = os.urandom(_NONCE_SIZE)
        return header + nonce + key.aead.encrypt(nonce, plain, header)

    def open(self, label: bytes) -> SessionTicket | None:
        """The ticket sealed in ``label`` under any key of the ring, or None."""
        if not _HEADER_SIZE + _NONCE_SIZE + _TAG_SIZE < len(label) <= _MAX_SEALED:
            return None
        if label[0] != TICKET_FORMAT:
            return None
        header = label[:_HEADER_SIZE]
        nonce = label[_HEADER_SIZE : _HEADER_SIZE + _NONCE_SIZE]
        for key in self.ring.with_id(label[1:_HEADER_SIZE]):
            try:
                plain = key.aead.decrypt(nonce, label[_HEADER_SIZE + _NONCE_SIZE :], header)
            except InvalidTag:
                continue
            return _unpack(plain, label)
        return None

    def fetch(self, label: bytes) -> SessionTicket | None:
        """aioquic's ``session_ticket_fetcher``: the ticket, if valid and not used before in
        this process."""
        ticket = self.open(label)
        if ticket is None:
            return None
        now = self._clock()
        if not ticket.not_valid_before <= now <= ticket.not_valid_after:
            return None
        if not self.strikes.first_use(label, _ms(ticket.not_valid_after), _ms(now)):
            return None
        return ticket

    def issued(self, ticket: SessionTicket) -> None:
        """aioquic's ``session_ticket_handler``: nothing to keep, the client holds it all.
        (aioquic sends tickets only when a handler is set.)"""

    def hooks(self) -> dict[str, Any]:
        """The keyword arguments that plug these tickets into a server connection
        (``ticket_sealer``: :class:`~quicserve.quic.compat.ServerQuicConnection`)."""
        return {
            "session_ticket_fetcher": self.fetch,
            "session_ticket_handler": self.issued,
            "ticket_sealer": self.seal,
        }


def _unpack(plain: bytes, label: bytes) -> SessionTicket | None:
    try:
        suite, age_add, before_ms, lifetime, has_early, early = _FIXED.unpack_from(plain)
        pos = _FIXED.size
        secret_len = plain[pos]
        secret = plain[pos + 1 : pos + 1 + secret_len]
        pos += 1 + secret_len
        name_len = plain[pos]
        name = plain[pos + 1 : pos + 1 + name_len]
        if len(secret) != secret_len or len(name) != name_len or pos + 1 + name_len != len(plain):
            return None
        before = _EPOCH + datetime.timedelta(milliseconds=before_ms)
        return SessionTicket(
            age_add=age_add,
            cipher_suite=CipherSuite(suite),
            not_valid_after=before + datetime.timedelta(seconds=lifetime),
            not_valid_before=before,
            resumption_secret=secret,
            server_name=name.decode("utf-8"),
            ticket=label,
            max_early_data_size=early if has_early else None,
        )
    except (struct.error, IndexError, ValueError):
        return None
