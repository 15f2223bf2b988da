"""Stateless secrets of a QUIC endpoint: Retry tokens and stateless reset tokens.

Both are derived from a secret with HMAC-SHA256, so the endpoint keeps no per-peer state
for them: a Retry token carries everything needed to check it, and the reset token of a
connection ID can be recomputed after the connection (or the whole process) is gone.

Rules:

* The secrets are a :class:`~quicserve.quic.keyring.KeyRing`: 32 random bytes per process
  (one key) unless a secret or a ring is given. Workers that must accept each other's
  tokens, or a server that must reset connections of its previous incarnation, share a
  secret (the supervisor's), and machines share one with ``--quic-secrets-file``; nothing
  else is needed to make tokens portable.
* Rotation: Retry tokens are minted with the ring's current key and accepted under any key
  of the ring (the token carries no key id: at most ``MAX_KEYS`` MACs to try, and a
  Retry token lives seconds). A reset token is fixed when its CID is issued, under the key
  current then, and the client compares a reset against that token only (RFC 9000
  §10.3.1), so after a rotation the CIDs of older connections need older keys:
  :meth:`TokenAuthority.stateless_reset_tokens` gives the token under every key of the
  ring, current first, and the endpoint sends one reset per key (bounded, see
  ``endpoint.py``). A key that does not rotate would avoid that, but then no key could
  ever be retired after a leak; with the ring, deleting a key's line retires its tokens.
* Every MAC is domain-separated (``b"retry"``, ``b"reset"``) so one output can never be
  replayed as the other.
* Retry tokens bind the client address *and port* (RFC 9000 §8.1.4: a Retry is answered at
  once, so the port should not change), the client's original Destination CID and the
  Retry's Source CID (§7.3, §17.2.5.2), and expire after ``retry_token_lifetime`` seconds
  (§8.1.4: Retry tokens are only accepted for a short time). Expiry is on the caller's clock
  (``now``), so issuer and validator must share one: the endpoint passes wall-clock time,
  which machines share through NTP (a skew well under ``retry_token_lifetime`` is fine),
  where monotonic clocks start at each machine's boot.
* Retry tokens start with a format byte, so a server can tell one of its Retry tokens
  (invalid: close with INVALID_TOKEN) from a foreign token such as one from NEW_TOKEN
  (ignore it and proceed as if there were none), as RFC 9000 §8.1.1 and §8.1.3 require.
* Validation never raises and compares MACs in constant time; a token that fails any check
  is simply ``None``.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import struct

from .keyring import KeyRing

__all__ = [
    "RESET_TOKEN_SIZE",
    "RETRY_TOKEN_FORMAT",
    "TokenAuthority",
]

#: First byte of every Retry token this module makes.
RETRY_TOKEN_FORMAT = 0x52
#: Length of a stateless reset token (RFC 9000 §10.3).
RESET_TOKEN_SIZE = 16

_MAC_SIZE = 16
_MAX_CID = 20  # RFC 9000 §17.2: version 1 connection IDs are at most 20 bytes.
_EXPIRY = struct.Struct("!Q")


def _encode_address(addr: tuple[str, int]) -> bytes:
    """The client address as bytes: the packed IP (or the host text) and the port."""
    host, port = str(addr[0]), int(addr[1])
    try:
        raw = ipaddress.ip_address(host).packed
    except ValueError:
        raw = host.encode("utf-8", "surrogateescape")
    return bytes([len(raw) & 0xFF]) + raw + (port & 0xFFFF).to_bytes(2, "big")


class TokenAuthority:
    """HMAC-SHA256 keyed with a ring: one random per-process secret (32 bytes, os.urandom)
    unless a ``secret`` or a shared ``ring`` is given."""

    __slots__ = ("retry_token_lifetime", "ring")

    def __init__(
        self,
        secret: bytes | None = None,
        retry_token_lifetime: float = 10.0,
        *,
        ring: KeyRing | None = None,
    ) -> None:
        if ring is None:
            if secret is None:
                secret = os.urandom(32)
            if len(secret) < 16:
                raise ValueError("the token secret must be at least 16 bytes")
            ring = KeyRing([secret], min_key_bytes=16)
        if retry_token_lifetime <= 0:
            raise ValueError("retry_token_lifetime must be positive")
        #: Shared with the listener's ticket sealer; replaced in place on rotation.
        self.ring = ring
        self.retry_token_lifetime = retry_token_lifetime

    @staticmethod
    def _mac_with(secret: bytes, *parts: bytes) -> bytes:
        return hmac.new(secret, b"".join(parts), hashlib.sha256).digest()[:_MAC_SIZE]

    def _mac(self, *parts: bytes) -> bytes:
        return self._mac_with(self.ring.current.secret, *parts)

    # -- Retry tokens (RFC 9000 §8.1.2) -------------------------------------------------

    def create_retry_token(
        self, addr: tuple[str, int], original_dcid: bytes, retry_scid: bytes, now: float
    ) -> bytes:
        """A token for a Retry sent to ``addr``.

        Layout: format byte | expiry (8 bytes, ms) | len + original_dcid | len + retry_scid |
        HMAC(secret, "retry" | address | all of the above)[:16].
        """
        if len(original_dcid) > _MAX_CID or len(retry_scid) > _MAX_CID:
            raise ValueError("connection IDs are at most 20 bytes")
        expiry_ms = max(0, int((now + self.retry_token_lifetime) * 1000))
        body = b"".join(
            (
                bytes([RETRY_TOKEN_FORMAT]),
                _EXPIRY.pack(expiry_ms),
                bytes([len(original_dcid)]),
                original_dcid,
                bytes([len(retry_scid)]),
                retry_scid,
            )
        )
        return body + self._mac(b"retry", _encode_address(addr), body)

    @staticmethod
    def _split(token: bytes) -> tuple[bytes, int, bytes, bytes, bytes] | None:
        """(body, expiry_ms, original_dcid, retry_scid, mac), or None if not our layout."""
        # format(1) + expiry(8) + len(1) + len(1) + mac(16) is the smallest token.
        if len(token) < 11 + _MAC_SIZE or token[0] != RETRY_TOKEN_FORMAT:
            return None
        odcid_len = token[9]
        if odcid_len > _MAX_CID:
            return None
        pos = 10 + odcid_len
        if pos >= len(token):
            return None
        scid_len = token[pos]
        end = pos + 1 + scid_len
        if scid_len > _MAX_CID or end + _MAC_SIZE != len(token):
            return None
        (expiry_ms,) = _EXPIRY.unpack_from(token, 1)
        return token[:end], expiry_ms, token[10:pos], token[pos + 1 : end], token[end:]

    def is_retry_token(self, token: bytes) -> bool:
        """Whether ``token`` has the layout of a Retry token made by this module.

        True says nothing about validity; it tells a stale or forged Retry token (answer
        INVALID_TOKEN) from a token of another kind (ignore it), RFC 9000 §8.1.3.
        """
        return self._split(token) is not None

    def validate_retry_token(
        self, token: bytes, addr: tuple[str, int], dcid: bytes, now: float
    ) -> bytes | None:
        """The original Destination CID if ``token`` is a valid Retry token, else ``None``.

        Valid means: our layout, an authentic MAC (under any key of the ring) for this
        address (host and port), not expired, and ``dcid`` (the Initial's Destination CID)
        equal to the Retry's Source CID, which is where a client must send after a Retry
        (RFC 9000 §17.2.5.2, §7.3).
        """
        parts = self._split(token)
        if parts is None:
            return None
        body, expiry_ms, original_dcid, retry_scid, mac = parts
        try:
            address = _encode_address(addr)
        except (TypeError, ValueError, IndexError):
            return None
        # Any key of the ring: a token minted just before a rotation stays good.
        if not any(
            hmac.compare_digest(mac, self._mac_with(key.secret, b"retry", address, body))
            for key in self.ring.keys
        ):
            return None
        if not hmac.compare_digest(retry_scid, dcid):
            return None
        if now * 1000 > expiry_ms:
            return None
        return original_dcid

    # -- Stateless reset (RFC 9000 §10.3.2) ---------------------------------------------

    def stateless_reset_token(self, cid: bytes) -> bytes:
        """HMAC(secret, "reset" | cid)[:16]: the reset token of a connection ID we issued.

        RFC 9000 §10.3.2: computed from a static key and the connection ID, so it survives
        the loss of connection state; the key must never be disclosed.
        """
        return self._mac(b"reset", cid)

    def stateless_reset_tokens(self, cid: bytes) -> list[bytes]:
        """The reset token of ``cid`` under every key of the ring, current first: the CID
        may have been issued before a rotation (see the module docstring)."""
        return [self._mac_with(key.secret, b"reset", cid) for key in self.ring.keys]
