"""The QPACK guard, sans-IO: shadow table, size bounds, and the guarded decoder."""

from __future__ import annotations

import random

import pylsqpack
import pytest
from hpack.huffman import HuffmanEncoder
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH

from quicserve.protocol.fields import field_section_size
from quicserve.quic.compat import ExcessiveLoad, GuardedDecoder
from quicserve.quic.qpack_guard import (
    QpackEncoderError,
    QpackGuard,
    QpackLoadError,
    QpackSectionError,
)

from .adversarial.h3_raw_client import (
    qpack_indexed_dynamic,
    qpack_insert_literal,
    qpack_int,
    qpack_literal,
    qpack_prefix,
    qpack_set_capacity,
)

HUFFMAN = HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH)
NO_LIMIT = 1 << 62


def huffman_string(first: int, prefix_bits: int, text: bytes) -> bytes:
    """A Huffman-coded string literal with its H bit and length prefix."""
    coded = HUFFMAN.encode(text)
    return qpack_int(first | (1 << prefix_bits), prefix_bits, len(coded)) + coded


def static_indexed(index: int) -> bytes:
    return qpack_int(0xC0, 6, index)


# -- sizes ------------------------------------------------------------------------------


def test_static_lines_are_counted_exactly() -> None:
    guard = QpackGuard(4096)
    # RFC 9204 Appendix A: 17 is ":method: GET", 1 is ":path: /".
    section = qpack_prefix(0, 128) + static_indexed(17) + static_indexed(1)
    assert guard.section_bound(section, NO_LIMIT, quick=False) == (7 + 3 + 32) + (5 + 1 + 32)


def test_dynamic_references_cost_their_entry() -> None:
    guard = QpackGuard(4096)
    guard.feed_encoder(qpack_set_capacity(4096) + qpack_insert_literal(b"name", b"v" * 100))
    section = qpack_prefix(1, 128) + qpack_indexed_dynamic(0) * 10
    assert guard.section_bound(section, NO_LIMIT, quick=False) == 10 * (4 + 100 + 32)


def test_post_base_references_and_name_references() -> None:
    guard = QpackGuard(4096)
    guard.feed_encoder(
        qpack_set_capacity(4096)
        + qpack_insert_literal(b"aa", b"b" * 10)  # absolute 0
        + qpack_insert_literal(b"cccc", b"d" * 20)  # absolute 1
    )
    # Base 1 (RIC 2, S=1, Delta Base 0): entry 1 is post-base index 0, entry 0 relative 0.
    section = (
        qpack_int(0x00, 8, 2 % 256 + 1)
        + qpack_int(0x80, 7, 0)
        + qpack_int(0x10, 4, 0)  # indexed post-base: entry 1
        + qpack_int(0x80, 6, 0)  # indexed, dynamic relative 0: entry 0
        + qpack_int(0x40, 4, 0)  # literal, name of entry 0, value "xyz"
        + qpack_int(0x00, 7, 3)
        + b"xyz"
        + qpack_int(0x00, 3, 0)  # literal, post-base name of entry 1, value "q"
        + qpack_int(0x00, 7, 1)
        + b"q"
    )
    expected = (4 + 20 + 32) + (2 + 10 + 32) + (2 + 3 + 32) + (4 + 1 + 32)
    assert guard.section_bound(section, NO_LIMIT, quick=False) == expected


def test_huffman_strings_are_bounded_by_eight_fifths() -> None:
    guard = QpackGuard(4096)
    value = b"0123456789" * 20  # 5-bit codes: the bound is exact
    guard.feed_encoder(
        qpack_set_capacity(4096) + qpack_int(0x40, 5, 1) + b"n" + huffman_string(0, 7, value)
    )
    coded = len(HUFFMAN.encode(value))
    section = qpack_prefix(1, 128) + qpack_indexed_dynamic(0)
    assert (
        guard.section_bound(section, NO_LIMIT, quick=False)
        == 1 + coded * 8 // 5 + 32
        >= 1 + 200 + 32
    )
    literal = qpack_prefix(0, 128) + qpack_int(0x28, 3, 1) + b"n" + huffman_string(0, 7, value)
    assert guard.section_bound(literal, NO_LIMIT, quick=False) == 1 + coded * 8 // 5 + 32


def test_an_entry_bound_never_exceeds_the_capacity() -> None:
    guard = QpackGuard(4096)
    # "d" has a 6-bit code: 3000 octets of Huffman, 4800 by the 8/5 rule, but the decoder
    # refuses an entry above the capacity.
    value = b"d" * 4000
    guard.feed_encoder(
        qpack_set_capacity(4096) + qpack_int(0x40, 5, 1) + b"n" + huffman_string(0, 7, value)
    )
    section = qpack_prefix(1, 128) + qpack_indexed_dynamic(0)
    assert guard.section_bound(section, NO_LIMIT, quick=False) == 4096


def test_bounds_hold_for_pylsqpack_encoded_sections() -> None:
    # A real encoder (Huffman, dynamic table, post-base references), its encoder stream
    # fed in random pieces: the bound is never below the decoded size, and close to it.
    rng = random.Random(7)
    encoder = pylsqpack.Encoder()
    decoder = pylsqpack.Decoder(4096, 16)
    guard = QpackGuard(4096)
    setup = encoder.apply_settings(max_table_capacity=4096, blocked_streams=16)
    guard.feed_encoder(setup)
    decoder.feed_encoder(setup)
    alphabet = b"abcdefghijklmnopqrstuvwxyz0123456789-_=;/ ABC%"
    for stream_id in range(0, 4 * 400, 4):
        headers = [
            (b":method", rng.choice([b"GET", b"POST"])),
            (b":scheme", b"https"),
            (b":authority", b"example.com"),
            (b":path", b"/item/%d" % rng.randrange(40)),
        ]
        for _ in range(rng.randrange(0, 20)):
            name = rng.choice([b"cookie", b"user-agent", b"x-h%d" % rng.randrange(30), b"accept"])
            value = bytes(rng.choice(alphabet) for _ in range(rng.randrange(0, 300)))
            headers.append((name, value))
        instructions, section = encoder.encode(stream_id, headers)
        guard.section_started()
        if rng.random() < 0.2 and instructions:
            # Section first: blocked until the encoder stream catches up (RFC 9204 §2.1.2).
            assert guard.section_bound(section, NO_LIMIT, quick=False) is None
        pos = 0
        while pos < len(instructions):
            step = rng.randrange(1, 40)
            guard.feed_encoder(instructions[pos : pos + step])
            pos += step
        decoder.feed_encoder(instructions)
        bound = guard.section_bound(section, NO_LIMIT, quick=False)
        control, decoded = decoder.feed_header(stream_id, section)
        encoder.feed_decoder(control)
        assert decoded == headers
        exact = field_section_size(decoded)
        assert bound is not None and exact <= bound <= exact * 8 // 5 + 32
        # The quick bound (from the section's length) holds too.
        quick = guard.section_bound(section, NO_LIMIT)
        assert quick is not None and quick >= exact
    assert guard.insert_count > 30


# -- the shadow table -------------------------------------------------------------------


def test_eviction_follows_the_capacity() -> None:
    guard = QpackGuard(4096)
    guard.feed_encoder(qpack_set_capacity(150))
    guard.feed_encoder(qpack_insert_literal(b"a", b"x" * 27))  # 60 octets, absolute 0
    guard.feed_encoder(qpack_insert_literal(b"b", b"y" * 27))  # absolute 1
    guard.feed_encoder(qpack_insert_literal(b"c", b"z" * 27))  # absolute 2: evicts 0
    assert guard.insert_count == 3
    section = qpack_prefix(3, 128)
    # Relative 2 is absolute 0: evicted, so only the largest possible size is assumed.
    assert guard.section_bound(section + qpack_indexed_dynamic(2), NO_LIMIT, quick=False) == 4096
    assert guard.section_bound(section + qpack_indexed_dynamic(1), NO_LIMIT, quick=False) == 60
    # Lowering the capacity evicts too (RFC 9204 §3.2.3).
    guard.feed_encoder(qpack_set_capacity(60))
    assert guard.section_bound(section + qpack_indexed_dynamic(1), NO_LIMIT, quick=False) == 4096
    assert guard.section_bound(section + qpack_indexed_dynamic(0), NO_LIMIT, quick=False) == 60


def test_duplicate_and_name_reference_inserts() -> None:
    guard = QpackGuard(4096)
    guard.feed_encoder(qpack_set_capacity(4096) + qpack_insert_literal(b"name", b"v" * 50))
    guard.feed_encoder(qpack_int(0x00, 5, 0))  # Duplicate of absolute 0 -> absolute 1
    guard.feed_encoder(qpack_int(0x80, 6, 1) + qpack_int(0x00, 7, 5) + b"12345")  # name of 0
    guard.feed_encoder(qpack_int(0xC0, 6, 17) + qpack_int(0x00, 7, 4) + b"POST")  # :method
    section = qpack_prefix(4, 128)
    sizes = [
        guard.section_bound(section + qpack_indexed_dynamic(i), NO_LIMIT, quick=False)
        for i in range(4)
    ]
    assert sizes == [7 + 4 + 32, 4 + 5 + 32, 4 + 50 + 32, 4 + 50 + 32]


def test_instructions_split_anywhere() -> None:
    stream = qpack_set_capacity(4096) + qpack_insert_literal(b"k" * 40, b"v" * 300)
    for cut in range(1, len(stream)):
        guard = QpackGuard(4096)
        guard.feed_encoder(stream[:cut])
        guard.feed_encoder(stream[cut:])
        assert guard.insert_count == 1
        assert (
            guard.section_bound(
                qpack_prefix(1, 128) + qpack_indexed_dynamic(0), NO_LIMIT, quick=False
            )
            == 372
        )


@pytest.mark.parametrize(
    "instructions",
    [
        qpack_set_capacity(4097),  # above our SETTINGS_QPACK_MAX_TABLE_CAPACITY
        qpack_insert_literal(b"a", b"b"),  # capacity is still 0
        qpack_set_capacity(100) + qpack_insert_literal(b"a", b"b" * 68),  # 101 > 100
        qpack_set_capacity(100) + qpack_int(0x40, 5, 1) + b"a" + qpack_int(0x00, 7, 1 << 40),
        qpack_set_capacity(4096) + qpack_int(0xC0, 6, 99) + b"\x00",  # static index 99
        b"\x3f" + b"\xff" * 12,  # an integer that never ends
    ],
)
def test_malformed_encoder_streams(instructions: bytes) -> None:
    guard = QpackGuard(4096)
    with pytest.raises(QpackEncoderError):
        guard.feed_encoder(instructions)


def test_the_encoder_may_not_insert_without_end() -> None:
    guard = QpackGuard(4096)
    guard.feed_encoder(qpack_set_capacity(4096) + qpack_insert_literal(b"a", b"b"))
    duplicates = qpack_int(0x00, 5, 0) * (16 * 128 - 1)
    guard.feed_encoder(duplicates)  # sixteen tables' worth up front
    with pytest.raises(QpackLoadError):
        guard.feed_encoder(qpack_int(0x00, 5, 0))
    guard = QpackGuard(4096)
    guard.feed_encoder(qpack_set_capacity(4096) + qpack_insert_literal(b"a", b"b"))
    guard.feed_encoder(duplicates)
    guard.section_started()  # each field section the peer sends buys a table's worth
    guard.feed_encoder(qpack_int(0x00, 5, 0) * 128)
    with pytest.raises(QpackLoadError):
        guard.feed_encoder(qpack_int(0x00, 5, 0))


@pytest.mark.parametrize(
    "section",
    [
        b"",  # no prefix
        b"\x00",  # half a prefix
        qpack_prefix(0, 128) + qpack_literal(b"a", b"b")[:-1],  # string past the end
        qpack_prefix(0, 128) + static_indexed(99),  # no such static entry
        qpack_int(0x00, 8, 300) + b"\x00",  # encoded insert count above 2 * MaxEntries
    ],
)
def test_malformed_sections(section: bytes) -> None:
    with pytest.raises(QpackSectionError):
        QpackGuard(4096).section_bound(section, NO_LIMIT, quick=False)


def test_counting_stops_past_the_limit() -> None:
    guard = QpackGuard(4096)
    guard.feed_encoder(qpack_set_capacity(4096) + qpack_insert_literal(b"x", b"v" * 4063))
    section = qpack_prefix(1, 128) + qpack_indexed_dynamic(0) * 1_000_000
    bound = guard.section_bound(section, 128 * 1024)
    assert bound is not None and 128 * 1024 < bound <= 128 * 1024 + 4096


# -- the guarded decoder (what aioquic calls) -----------------------------------------


def test_guarded_decoder_refuses_a_bomb_undecoded() -> None:
    decoder = GuardedDecoder(4096, 16, refuse_above=128 * 1024)
    decoder.feed_encoder(qpack_set_capacity(4096) + qpack_insert_literal(b"x", b"v" * 4063))
    section = (
        qpack_prefix(1, 128) + qpack_literal(b":path", b"/") + qpack_indexed_dynamic(0) * 60_000
    )
    with pytest.raises(ExcessiveLoad):
        decoder.feed_header(0, section)
    # Under the hard bound it decodes (the HTTP/3 protocol then answers 431).
    _, headers = decoder.feed_header(4, qpack_prefix(1, 128) + qpack_indexed_dynamic(0) * 31)
    assert len(headers) == 31


def test_guarded_decoder_bounds_a_blocked_section_when_it_resumes() -> None:
    decoder = GuardedDecoder(4096, 16, refuse_above=128 * 1024)
    decoder.feed_encoder(qpack_set_capacity(4096))
    small = qpack_prefix(1, 128) + qpack_indexed_dynamic(0) * 2
    bomb = qpack_prefix(1, 128) + qpack_indexed_dynamic(0) * 60_000
    for stream_id, section in ((0, small), (4, bomb)):
        with pytest.raises(pylsqpack.StreamBlocked):
            decoder.feed_header(stream_id, section)
    unblocked = decoder.feed_encoder(qpack_insert_literal(b"x", b"v" * 4063))
    assert sorted(unblocked) == [0, 4]
    _, headers = decoder.resume_header(0)
    assert headers == [(b"x", b"v" * 4063)] * 2
    with pytest.raises(ExcessiveLoad):
        decoder.resume_header(4)


def test_guarded_decoder_maps_malformed_input_to_qpack_errors() -> None:
    decoder = GuardedDecoder(4096, 16, refuse_above=128 * 1024)
    with pytest.raises(pylsqpack.EncoderStreamError):
        decoder.feed_encoder(qpack_set_capacity(8192))
    with pytest.raises(pylsqpack.DecompressionFailed):
        decoder.feed_header(0, b"\x00")
