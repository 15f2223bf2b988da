"""A throwaway TLS certificate for the HTTP/2 and HTTP/3 trials (and bench/h3_memory.py).

Job: put a certificate for ``localhost``, ``127.0.0.1`` and ``::1`` and its key into a
directory the caller owns (a temporary directory that is deleted after the run).

Rules: keys are made at run time and never committed; the certificate comes from
:func:`quicserve.certs.make_test_certificates`, the same code the tests use (a fresh CA
and leaf, key files mode 0600). Load generators do not verify it.
"""

from __future__ import annotations

from pathlib import Path

from bench.servers import TLSFiles
from quicserve.certs import make_test_certificates


def make_self_signed(directory: Path) -> TLSFiles:
    """Create a certificate chain and key in ``directory`` and return their paths."""
    made = make_test_certificates(directory)
    return TLSFiles(certfile=made.certfile, keyfile=made.keyfile)
