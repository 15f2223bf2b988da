"""bench/quic_engine.py: the in-memory download really completes and is measured."""

from __future__ import annotations

from pathlib import Path

from bench.quic_engine import MIB, measure
from quicserve.certs import make_test_certificates


def test_engine_download_completes_with_packets_of_the_size_asked(tmp_path: Path) -> None:
    make_test_certificates(tmp_path)
    run = measure(tmp_path, mib=1, datagram_size=1350, ack_every=7)
    # Every byte left in packets of at most 1350 bytes: at least MIB / 1350 of them.
    assert MIB // 1350 <= run.packets < 2 * MIB // 1000
    assert run.ms_per_mib > 0 and run.empty_call_us > 0
    bigger = measure(tmp_path, mib=1, datagram_size=4000, ack_every=7)
    assert bigger.packets < run.packets // 2
