"""What the QPACK guard costs per HTTP/3 request: µs per field section, beside the decode.

A browser-like request (Chrome's navigation headers, a 300-byte cookie) is encoded by
pylsqpack's encoder with a 4 KiB dynamic table, as a browser would after its first
request, and each section is bounded by ``QpackGuard.section_bound`` and decoded by
pylsqpack, many times; the encoder-stream bytes of the first request are fed once. The
first request is mostly literals and is read line by line; later ones reference the table
and are short enough for the guard's length-only bound.

    python bench/qpack_guard.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pylsqpack

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from quicserve.quic.qpack_guard import QpackGuard

HEADERS = [
    (b":method", b"GET"),
    (b":authority", b"www.example.com"),
    (b":scheme", b"https"),
    (b":path", b"/articles/2026/12/06/field-sections?utm_source=feed&id=12345"),
    (b"sec-ch-ua", b'"Chromium";v="131", "Not_A Brand";v="24"'),
    (b"sec-ch-ua-mobile", b"?0"),
    (b"sec-ch-ua-platform", b'"Linux"'),
    (b"upgrade-insecure-requests", b"1"),
    (
        b"user-agent",
        b"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
        b"Chrome/131.0.0.0 Safari/537.36",
    ),
    (
        b"accept",
        b"text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,"
        b"image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7",
    ),
    (b"sec-fetch-site", b"same-origin"),
    (b"sec-fetch-mode", b"navigate"),
    (b"sec-fetch-user", b"?1"),
    (b"sec-fetch-dest", b"document"),
    (b"referer", b"https://www.example.com/"),
    (b"accept-encoding", b"gzip, deflate, br, zstd"),
    (b"accept-language", b"en-GB,en;q=0.9,fr;q=0.8"),
    (b"cookie", b"session=" + b"a1b2c3d4" * 36),
    (b"priority", b"u=0, i"),
]


def main(rounds: int = 20_000) -> None:
    encoder = pylsqpack.Encoder()
    decoder = pylsqpack.Decoder(4096, 16)
    guard = QpackGuard(4096)
    setup = encoder.apply_settings(max_table_capacity=4096, blocked_streams=16)
    guard.feed_encoder(setup)
    decoder.feed_encoder(setup)
    sections = []
    for stream_id in range(0, 4 * 4, 4):  # the first requests insert, later ones reference
        instructions, section = encoder.encode(stream_id, HEADERS)
        guard.feed_encoder(instructions)
        decoder.feed_encoder(instructions)
        control, _ = decoder.feed_header(stream_id, section)
        encoder.feed_decoder(control)
        sections.append(section)
    section = sections[-1]
    print(f"{len(HEADERS)} field lines, {len(section)} encoded octets (first: {len(sections[0])})")
    for label, block in (("first request", sections[0]), ("later request", section)):
        started = time.perf_counter()
        for _ in range(rounds):
            guard.section_bound(block, 128 * 1024)
        guard_us = (time.perf_counter() - started) / rounds * 1e6
        started = time.perf_counter()
        for i in range(rounds):
            decoder.feed_header(4 * (100 + i), block)
        decode_us = (time.perf_counter() - started) / rounds * 1e6
        print(f"{label}: guard {guard_us:.1f} µs, pylsqpack decode {decode_us:.1f} µs")


if __name__ == "__main__":
    main()
