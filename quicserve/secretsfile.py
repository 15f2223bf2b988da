"""``--quic-secrets-file``: reading the key ring's file, and ``quicserve secrets new``.

The format and what the keys do are :mod:`quicserve.quic.keyring`'s; this module does the
file system part: a bounded read, one-line errors, and the rotation step that prepends a
fresh key.

Rules:

* Reading never half-loads: a file that is missing, unreadable, too large, not UTF-8 or
  has any bad line is one :class:`SecretsFileError` naming the path (a startup error, or
  a logged reload error that keeps the old ring).
* A file that others can read is loaded with a warning: its keys forge tickets and resets.
* ``new_key`` writes a whole new file next to the old one (mode 0600 when created, the old
  mode otherwise), flushes it to disk and renames it over the old one, so a process that
  reloads at any moment reads either the old ring or the new one, never a torn file.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import tempfile

from .config import ConfigError
from .quic.keyring import MAX_FILE_BYTES, MAX_KEYS, KeyRingError, encode_key, parse_key_file

__all__ = ["DEFAULT_KEEP", "SecretsFileError", "new_key", "read_key_file"]

logger = logging.getLogger("quicserve.error")

#: Keys ``quicserve secrets new`` keeps by default: the new one and two older ones.
DEFAULT_KEEP = 3
_HEADER = (
    "# quicserve --quic-secrets-file: one base64 key per line, the first is current,\n"
    "# the others still open tickets and validate tokens. Rotate: quicserve secrets new.\n"
)


class SecretsFileError(ConfigError):
    """The secrets file cannot be used; the message is one line naming it."""


def read_key_file(path: str) -> list[bytes]:
    """The keys of ``path``, current first (see the module rules)."""
    where = f"--quic-secrets-file {path}"
    try:
        with open(path, "rb") as file:
            mode = os.fstat(file.fileno()).st_mode
            raw = file.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise SecretsFileError(f"{where}: cannot read: {exc.strerror or exc}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise SecretsFileError(f"{where}: larger than {MAX_FILE_BYTES} bytes")
    try:
        keys = parse_key_file(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise SecretsFileError(f"{where}: not UTF-8 text") from None
    except KeyRingError as exc:
        raise SecretsFileError(f"{where}: {exc}") from None
    if stat.S_IMODE(mode) & 0o077:
        logger.warning("%s: readable by group or others (mode %o): chmod 600", where, mode & 0o777)
    return keys


def new_key(path: str, keep: int = DEFAULT_KEEP) -> list[bytes]:
    """Prepend a fresh 32-byte key to ``path`` (made if missing) and keep at most ``keep``
    keys; returns the new ring, current first."""
    if not 1 <= keep <= MAX_KEYS:
        raise SecretsFileError(f"--keep must be 1 to {MAX_KEYS}")
    target = os.path.realpath(path)  # replace a symlink's target, not the link
    mode = 0o600
    old: list[bytes] = []
    if os.path.exists(target):
        old = read_key_file(path)
        mode = stat.S_IMODE(os.stat(target).st_mode)
    keys = [os.urandom(32), *old][:keep]
    text = _HEADER + "".join(encode_key(key) + "\n" for key in keys)
    directory = os.path.dirname(target) or "."
    try:
        fd, temporary = tempfile.mkstemp(prefix=".quicserve-secrets-", dir=directory)
    except OSError as exc:
        raise SecretsFileError(f"{path}: cannot write: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            os.fchmod(file.fileno(), mode)
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, target)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise SecretsFileError(f"{path}: cannot write: {exc.strerror or exc}") from None
    return keys
