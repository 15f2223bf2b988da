"""The key ring of ``--quic-secrets-file``: the keys every worker and machine shares.

One ring serves three jobs: session tickets are sealed with it (``tickets.py``), Retry
tokens are authenticated with it and stateless reset tokens derived from it
(``tokens.py``). Every process reads the same file, so a ticket, a Retry token or a reset
made by one is good on all the others.

The file (``parse_key_file``): UTF-8 text, one key per line, each the base64 (standard
alphabet, padded) of at least ``MIN_KEY_BYTES`` random bytes; blank lines and lines that
start with ``#`` are ignored. The first key is the *current* one (it seals new tickets,
mints Retry tokens and makes the reset tokens of new connection IDs); the others are older
keys that still open tickets and validate tokens until the operator deletes their line.

Rules:

* Sans-IO: text in, keys out; reading the file and watching signals is the caller's job.
* A bad file is one :class:`KeyRingError` whose message names the line; nothing is
  half-loaded. At most ``MAX_KEYS`` keys and ``MAX_FILE_BYTES`` bytes: everything a key
  costs (a MAC per Retry token tried, one stateless reset per key) is bounded by them.
* Each key's uses are separated: the ticket AEAD key and the key id are HMAC-SHA256 of the
  secret under their own labels, and Retry/reset MACs carry their own prefixes
  (``tokens.py``), so no output of one use can stand in for another.
* A :class:`KeyRing` is one mutable object shared by every listener of a process;
  :meth:`KeyRing.replace` swaps all its keys at once (rotation on SIGHUP), so the next
  ticket, token and reset use the new keys everywhere.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = [
    "KEY_ID_SIZE",
    "MAX_FILE_BYTES",
    "MAX_KEYS",
    "MIN_KEY_BYTES",
    "KeyRing",
    "KeyRingError",
    "RingKey",
    "encode_key",
    "parse_key_file",
]

#: A key in the file has at least this many bytes (256 bits).
MIN_KEY_BYTES = 32
#: More bytes than any sane key (base64 of 1 KiB); a longer line is a mistake.
MAX_KEY_BYTES = 1024
#: Keys a ring holds at most: the current one and up to seven older ones.
MAX_KEYS = 8
#: Largest file read (``MAX_KEYS`` keys of ``MAX_KEY_BYTES`` with room for comments).
MAX_FILE_BYTES = 64 * 1024
#: Bytes of key id at the front of every sealed ticket.
KEY_ID_SIZE = 4


class KeyRingError(ValueError):
    """A secrets file (or key list) that cannot be used; the message is one line."""


@dataclass(frozen=True, slots=True)
class RingKey:
    """One key of the ring and what is derived from it."""

    secret: bytes
    #: Names the key in sealed tickets (HMAC(secret, label)[:4]), never the key itself.
    key_id: bytes
    #: AES-256-GCM keyed with HMAC(secret, "quicserve ticket key"), for session tickets.
    aead: AESGCM

    @classmethod
    def from_secret(cls, secret: bytes) -> RingKey:
        key_id = hmac.new(secret, b"quicserve key id", hashlib.sha256).digest()[:KEY_ID_SIZE]
        ticket_key = hmac.new(secret, b"quicserve ticket key", hashlib.sha256).digest()
        return cls(bytes(secret), key_id, AESGCM(ticket_key))


class KeyRing:
    """The current key first, then older keys that still validate; shared and replaceable."""

    __slots__ = ("_keys",)

    def __init__(self, secrets: Sequence[bytes], *, min_key_bytes: int = MIN_KEY_BYTES) -> None:
        self._keys: tuple[RingKey, ...] = ()
        self.replace(secrets, min_key_bytes=min_key_bytes)

    def replace(self, secrets: Sequence[bytes], *, min_key_bytes: int = MIN_KEY_BYTES) -> None:
        """Use ``secrets`` from now on (rotation); nothing changes if they are unusable."""
        if not secrets:
            raise KeyRingError("no keys")
        if len(secrets) > MAX_KEYS:
            raise KeyRingError(f"{len(secrets)} keys, at most {MAX_KEYS}")
        for secret in secrets:
            if len(secret) < min_key_bytes:
                raise KeyRingError(f"a key has {len(secret)} bytes, at least {min_key_bytes}")
        self._keys = tuple(RingKey.from_secret(secret) for secret in secrets)

    @property
    def current(self) -> RingKey:
        """The key that seals, mints and derives for anything new."""
        return self._keys[0]

    @property
    def keys(self) -> tuple[RingKey, ...]:
        """Every key, current first."""
        return self._keys

    def with_id(self, key_id: bytes) -> list[RingKey]:
        """The keys whose id is ``key_id`` (almost always one, or none)."""
        return [key for key in self._keys if hmac.compare_digest(key.key_id, key_id)]

    def __len__(self) -> int:
        return len(self._keys)


def parse_key_file(text: str) -> list[bytes]:
    """The keys of a secrets file, current first; :class:`KeyRingError` names a bad line."""
    if len(text) > MAX_FILE_BYTES:
        raise KeyRingError(f"larger than {MAX_FILE_BYTES} bytes")
    keys: list[bytes] = []
    seen: dict[bytes, int] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            key = base64.b64decode(line, validate=True)
        except (binascii.Error, ValueError):
            raise KeyRingError(f"line {number}: not base64 (standard alphabet, padded)") from None
        if len(key) < MIN_KEY_BYTES:
            raise KeyRingError(
                f"line {number}: a key of {len(key)} bytes, at least {MIN_KEY_BYTES} needed"
            )
        if len(key) > MAX_KEY_BYTES:
            raise KeyRingError(f"line {number}: a key of more than {MAX_KEY_BYTES} bytes")
        if key in seen:
            raise KeyRingError(f"line {number}: the same key as line {seen[key]}")
        seen[key] = number
        keys.append(key)
    if not keys:
        raise KeyRingError("no keys (one base64 key per line)")
    if len(keys) > MAX_KEYS:
        raise KeyRingError(f"{len(keys)} keys, at most {MAX_KEYS}")
    return keys


def encode_key(key: bytes) -> str:
    """One line of a secrets file for ``key`` (without the newline)."""
    return base64.b64encode(key).decode("ascii")
