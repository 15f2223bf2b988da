"""The harness itself: with no attack, every probe is answered and RSS stays flat."""

from __future__ import annotations

import time

from quicserve.certs import DevCertificate

from ..test_cli import Spawn
from .harness import Prober, serve


def test_probes_pass_without_an_attack(
    spawn: Spawn, backend: str, tls_files: DevCertificate
) -> None:
    with serve(spawn, backend, tls_files) as target, Prober(target) as prober:
        time.sleep(1.0)
    prober.check()
    assert len(prober.results) >= 6
    assert target.rss_growth_mib() < 50
