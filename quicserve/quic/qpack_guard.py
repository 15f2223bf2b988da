"""QPACK guard: what an HTTP/3 field section may expand to, known before it is decoded.

pylsqpack's decoder cannot stop half-way through a field section, and QPACK lets one byte
of a HEADERS frame name a dynamic-table entry of up to the whole table capacity: a 60 KB
frame of such references decodes to some 230 MiB (the "QPACK bomb"). This module keeps a
shadow of the peer's dynamic table, fed the same encoder-stream bytes as the decoder, and
reads a field section's representations to add up an *upper bound* of its decoded size
without expanding anything, so the caller can refuse a section before decoding it.

Rules:

* The size of a field section is the sum over its field lines of name + value + 32 bytes
  (RFC 9114 §4.2.2; ``protocol/fields.py``'s ``field_section_size`` for a decoded one).
* Encoder instructions (RFC 9204 §4.3: Set Dynamic Table Capacity, Insert with Name
  Reference, Insert with Literal Name, Duplicate) are parsed as they arrive; an
  instruction split across reads waits in a buffer bounded by the table capacity.
* Shadow entries keep an upper bound of their size and of their name's length, and a lower
  bound of their size. Eviction (RFC 9204 §3.2.2) uses the lower bounds, so the shadow
  always holds every entry the real decoder holds (and sometimes a few more); an upper
  bound never exceeds the capacity the entry was inserted under, which the real decoder
  enforces.
* A Huffman string of n bytes decodes to at most 8n/5 octets (the shortest code is 5
  bits) and at least (8n - 7)/30 (the longest is 30 bits; at most 7 bits of padding),
  RFC 7541 Appendix B.
* A section's length alone bounds it: each field line takes an octet or more and expands
  to at most the largest line one reference can name (static table, or the largest entry
  ever inserted: the shadow holds every entry the decoder can use), plus its string
  octets at 8/5 and 32. Where that is within the caller's threshold (ordinary requests)
  nothing more is read.
* Otherwise the representations (RFC 9204 §4.5: prefix, indexed, indexed post-base,
  literal with name reference, literal with post-base name reference, literal with
  literal name) are read without decoding strings; a reference the shadow does not know
  (an index the decoder will refuse) counts as the largest table capacity we allow. A
  section whose Required Insert Count is beyond the inserts seen so far is *blocked*
  (§2.1.2): its bound is computed when the encoder stream has caught up.
* The peer's encoder may insert at most one table's worth of entries (capacity / 32) per
  field section it sends, plus sixteen tables' worth up front (a burst of requests whose
  inserts arrive before their HEADERS): a stream of one-byte Duplicate instructions would
  otherwise cost a microsecond of shadow upkeep, and a copy of an entry in the decoder,
  per byte received (H3_EXCESSIVE_LOAD, RFC 9114 §10.5).
* Malformed input raises :class:`QpackEncoderError` (QPACK_ENCODER_STREAM_ERROR) or
  :class:`QpackSectionError` (QPACK_DECOMPRESSION_FAILED), RFC 9204 §6.

Sans-IO and pure Python: no I/O, no clock.
"""

from __future__ import annotations

from collections import deque

from ..events import FIELD_LINE_OVERHEAD

__all__ = [
    "ENTRY_OVERHEAD",
    "QpackEncoderError",
    "QpackGuard",
    "QpackLoadError",
    "QpackSectionError",
]

#: RFC 9114 §4.2.2 / RFC 9204 §3.2.1: each field line (and table entry) counts 32 octets.
ENTRY_OVERHEAD = FIELD_LINE_OVERHEAD

#: Tables' worth of inserts the peer's encoder may make before its first field section.
_UP_FRONT_TABLES = 16

# Integers longer than this many continuation octets are refused (62-bit values need 9).
_MAX_INT_OCTETS = 10


class QpackEncoderError(Exception):
    """The peer's encoder stream is malformed (RFC 9204 §6: QPACK_ENCODER_STREAM_ERROR)."""


class QpackSectionError(Exception):
    """A field section is malformed (RFC 9204 §6: QPACK_DECOMPRESSION_FAILED)."""


class QpackLoadError(Exception):
    """The peer's encoder inserts far more than its field sections could use
    (RFC 9114 §10.5: H3_EXCESSIVE_LOAD)."""


class _Incomplete(Exception):
    """The data ends inside an instruction."""


def _static_table() -> tuple[tuple[int, int], ...]:
    """(name length, value length) of each static-table entry (RFC 9204 Appendix A),
    read from pylsqpack's own table so the two can never disagree."""
    import pylsqpack

    block = bytearray(b"\x00\x00")  # Required Insert Count 0, Base 0
    for index in range(99):
        # Indexed field line, static (RFC 9204 §4.5.2): 11xxxxxx, 6-bit prefix.
        if index < 63:
            block.append(0xC0 | index)
        else:
            block += bytes((0xFF, index - 63))
    _, fields = pylsqpack.Decoder(0, 0).feed_header(0, bytes(block))
    return tuple((len(name), len(value)) for name, value in fields)


_STATIC = _static_table()
#: The largest static field line (name + value + 32).
_STATIC_MAX_LINE = max(name + value for name, value in _STATIC) + ENTRY_OVERHEAD


def _integer(data: bytes, pos: int, prefix_bits: int) -> tuple[int, int]:
    """An N-bit-prefix integer (RFC 7541 §5.1) at ``data[pos]``: (value, next position)."""
    mask = (1 << prefix_bits) - 1
    value = data[pos] & mask
    pos += 1
    if value < mask:
        return value, pos
    shift = 0
    end = len(data)
    for _ in range(_MAX_INT_OCTETS):
        if pos >= end:
            raise _Incomplete
        octet = data[pos]
        pos += 1
        value += (octet & 0x7F) << shift
        if not octet & 0x80:
            return value, pos
        shift += 7
    raise ValueError("integer too long")


def _huffman_max(length: int) -> int:
    return (length * 8) // 5


def _huffman_min(length: int) -> int:
    return max(0, -(-(length * 8 - 7) // 30))


class QpackGuard:
    """A shadow of the peer's QPACK dynamic table, and size bounds of field sections.

    ``max_table_capacity`` is the SETTINGS_QPACK_MAX_TABLE_CAPACITY we advertised.
    """

    __slots__ = (
        "_capacity",
        "_entries",
        "_first",
        "_full_range",
        "_insert_allowance",
        "_lower_total",
        "_max_capacity",
        "_max_entries",
        "_max_line",
        "_pending",
        "insert_count",
    )

    def __init__(self, max_table_capacity: int) -> None:
        self._max_capacity = max_table_capacity
        self._max_entries = max_table_capacity // 32
        self._full_range = 2 * self._max_entries
        #: Current capacity, as the peer's encoder set it (RFC 9204 §3.2.3: starts at 0).
        self._capacity = 0
        #: Shadow entries, oldest first: (size upper bound, name-length upper bound,
        #: size lower bound). ``_first`` is the absolute index of ``_entries[0]``.
        self._entries: deque[tuple[int, int, int]] = deque()
        self._first = 0
        self._lower_total = 0
        #: The largest field line one reference can expand to: the static table's, or the
        #: largest entry bound ever inserted (never less than any live entry's).
        self._max_line = _STATIC_MAX_LINE
        #: Entries the peer's encoder has inserted (RFC 9204 §3.2.4 "Insert Count").
        self.insert_count = 0
        #: Inserts still allowed; each field section the peer sends adds a table's worth.
        self._insert_allowance = _UP_FRONT_TABLES * self._max_entries
        self._pending = b""

    # -- the encoder stream --------------------------------------------------------------

    def feed_encoder(self, data: bytes) -> None:
        """Bytes of the peer's encoder stream, in order (before the decoder sees them)."""
        if self._pending:
            data = self._pending + data
        pos = 0
        end = len(data)
        try:
            while pos < end:
                pos = self._instruction(data, pos)
        except _Incomplete:
            self._pending = data[pos:]
            return
        except ValueError as exc:
            raise QpackEncoderError(str(exc)) from None
        self._pending = b""

    def _instruction(self, data: bytes, pos: int) -> int:
        first = data[pos]
        if first & 0x80:
            # Insert with Name Reference (RFC 9204 §4.3.2): 1 T index(6+), value.
            index, pos = _integer(data, pos, 6)
            if first & 0x40:
                if index >= len(_STATIC):
                    raise ValueError("static index out of range")
                name_upper = name_lower = _STATIC[index][0]
            else:
                entry = self._entry(self.insert_count - 1 - index)
                if entry is None:
                    name_upper, name_lower = self._max_capacity, 0
                else:
                    name_upper, name_lower = entry[1], 0
            value_upper, value_lower, pos = self._string(data, pos, 7)
        elif first & 0x40:
            # Insert with Literal Name (§4.3.3): 01 H length(5+) name, value.
            name_upper, name_lower, pos = self._string(data, pos, 5)
            value_upper, value_lower, pos = self._string(data, pos, 7)
        elif first & 0x20:
            # Set Dynamic Table Capacity (§4.3.1): 001 capacity(5+).
            capacity, pos = _integer(data, pos, 5)
            if capacity > self._max_capacity:
                raise ValueError("capacity above SETTINGS_QPACK_MAX_TABLE_CAPACITY")
            self._capacity = capacity
            self._evict(0)
            return pos
        else:
            # Duplicate (§4.3.4): 000 index(5+).
            index, pos = _integer(data, pos, 5)
            entry = self._entry(self.insert_count - 1 - index)
            if entry is None:
                # Not in the shadow, so not in the decoder either: it will refuse this.
                entry = (self._capacity, self._capacity, ENTRY_OVERHEAD)
            self._insert(*entry)
            return pos
        lower = name_lower + value_lower + ENTRY_OVERHEAD
        if lower > self._capacity:
            raise ValueError("entry larger than the table capacity")
        # The decoder refuses an entry larger than the capacity (RFC 9204 §3.2.2), so a
        # Huffman upper bound above it is clipped.
        upper = min(name_upper + value_upper + ENTRY_OVERHEAD, self._capacity)
        self._insert(upper, min(name_upper, upper - ENTRY_OVERHEAD), lower)
        return pos

    def _string(self, data: bytes, pos: int, prefix_bits: int) -> tuple[int, int, int]:
        """A string literal (RFC 9204 §4.1.2) on the encoder stream: (upper bound of its
        decoded length, lower bound, next position). Strings that could not fit in the
        table are refused before they are buffered."""
        if pos >= len(data):
            raise _Incomplete
        huffman = data[pos] & (1 << prefix_bits)
        length, pos = _integer(data, pos, prefix_bits)
        if huffman:
            upper, lower = _huffman_max(length), _huffman_min(length)
        else:
            upper = lower = length
        if lower + ENTRY_OVERHEAD > self._capacity:
            raise ValueError("string larger than the table capacity")
        pos += length
        if pos > len(data):
            raise _Incomplete
        return upper, lower, pos

    def _insert(self, upper: int, name_upper: int, lower: int) -> None:
        if self._insert_allowance <= 0:
            raise QpackLoadError("encoder inserts far more entries than it uses")
        self._insert_allowance -= 1
        self._evict(lower)
        self._entries.append((upper, name_upper, lower))
        if upper > self._max_line:
            self._max_line = upper
        self._lower_total += lower
        self.insert_count += 1

    def _evict(self, room: int) -> None:
        """Drop the oldest entries until ``room`` more octets fit (lower bounds: RFC 9204
        §3.2.2 evicts by real sizes, which are at least these)."""
        entries = self._entries
        while entries and self._lower_total + room > self._capacity:
            self._lower_total -= entries.popleft()[2]
            self._first += 1

    def _entry(self, absolute: int) -> tuple[int, int, int] | None:
        offset = absolute - self._first
        if 0 <= offset < len(self._entries):
            return self._entries[offset]
        return None

    # -- field sections ------------------------------------------------------------------

    def section_started(self) -> None:
        """The peer sent a field section: its encoder may insert another table's worth."""
        self._insert_allowance += self._max_entries

    def required_insert_count(self, block: bytes) -> int:
        """The Required Insert Count of a field section (RFC 9204 §4.5.1.1)."""
        try:
            return self._required_insert_count(block)[0]
        except (IndexError, _Incomplete, ValueError) as exc:
            raise QpackSectionError(f"bad field section prefix: {exc!r}") from None

    def _required_insert_count(self, block: bytes) -> tuple[int, int]:
        encoded, pos = _integer(block, 0, 8)
        if encoded == 0:
            return 0, pos
        full_range = self._full_range
        if encoded > full_range:
            raise ValueError("encoded insert count out of range")
        max_value = self.insert_count + self._max_entries
        max_wrapped = (max_value // full_range) * full_range
        required = max_wrapped + encoded - 1
        if required > max_value:
            if required <= full_range:
                raise ValueError("required insert count out of range")
            required -= full_range
        if required == 0:
            raise ValueError("required insert count is zero")
        return required, pos

    def section_bound(self, block: bytes, stop_above: int, *, quick: bool = True) -> int | None:
        """An upper bound of the decoded size of field section ``block``, or ``None`` if
        it is blocked on inserts not seen yet. Only whether it exceeds ``stop_above`` is
        exact: at or below, a cheap bound from the section's length may be returned; above,
        counting stops as soon as the bound passes it (not the whole bound). With
        ``quick=False`` every field line is read (and checked) whatever the length."""
        try:
            return self._section_bound(block, stop_above, quick)
        except (IndexError, _Incomplete, ValueError) as exc:
            raise QpackSectionError(f"malformed field section: {exc!r}") from None

    def _section_bound(self, block: bytes, stop_above: int, quick: bool) -> int | None:
        # This runs on every request: integer fast paths (the value fits its prefix) and
        # string lengths are inlined; _integer only reads multi-octet integers.
        required, pos = self._required_insert_count(block)
        if required > self.insert_count:
            return None
        # The fast path, enough for ordinary requests: each field line takes at least one
        # octet and expands to at most a reference's largest line, its string octets
        # counted 8/5 (Huffman), and 32; so n octets expand to at most n * (max + 34).
        if quick:
            bound = len(block) * (self._max_line + ENTRY_OVERHEAD + 2)
            if bound <= stop_above:
                return bound
        # Base (RFC 9204 §4.5.1.2): sign bit and Delta Base, 7-bit prefix.
        sign = block[pos] & 0x80
        delta, pos = _integer(block, pos, 7)
        base = required - delta - 1 if sign else required + delta
        static = _STATIC
        # Dynamic lookups by position in the shadow: absolute index - self._first.
        entries = self._entries
        count = len(entries)
        first_index = self._first
        base_rel = base - 1 - first_index  # relative index i -> position base_rel - i
        base_post = base - first_index  # post-base index i -> position base_post + i
        unknown = (self._max_capacity, self._max_capacity, 0)
        end = len(block)
        total = 0
        while pos < end:
            first = block[pos]
            if first & 0x80:
                # Indexed field line (§4.5.2): 1 T index(6+).
                index = first & 0x3F
                if index == 0x3F:
                    index, pos = _integer(block, pos, 6)
                else:
                    pos += 1
                if first & 0x40:
                    name_len, value_len = static[index]
                    total += name_len + value_len + ENTRY_OVERHEAD
                else:
                    at = base_rel - index
                    total += (entries[at] if 0 <= at < count else unknown)[0]
                if total > stop_above:
                    return total
                continue
            if first & 0x40:
                # Literal field line with name reference (§4.5.4): 01 N T index(4+), value.
                index = first & 0x0F
                if index == 0x0F:
                    index, pos = _integer(block, pos, 4)
                else:
                    pos += 1
                if first & 0x10:
                    name_len = static[index][0]
                else:
                    at = base_rel - index
                    name_len = (entries[at] if 0 <= at < count else unknown)[1]
            elif first & 0x20:
                # Literal field line with literal name (§4.5.6): 001 N H length(3+) name.
                name_len = first & 0x07
                if name_len == 0x07:
                    name_len, pos = _integer(block, pos, 3)
                else:
                    pos += 1
                pos += name_len
                if first & 0x08:
                    name_len = name_len * 8 // 5  # Huffman
            elif first & 0x10:
                # Indexed field line with post-base index (§4.5.3): 0001 index(4+).
                index = first & 0x0F
                if index == 0x0F:
                    index, pos = _integer(block, pos, 4)
                else:
                    pos += 1
                at = base_post + index
                total += (entries[at] if 0 <= at < count else unknown)[0]
                if total > stop_above:
                    return total
                continue
            else:
                # Literal field line with post-base name reference (§4.5.5): 0000 N
                # index(3+), value.
                index = first & 0x07
                if index == 0x07:
                    index, pos = _integer(block, pos, 3)
                else:
                    pos += 1
                at = base_post + index
                name_len = (entries[at] if 0 <= at < count else unknown)[1]
            # The value: H length(7+), then the string, which must lie within the section.
            first = block[pos]
            value_len = first & 0x7F
            if value_len == 0x7F:
                value_len, pos = _integer(block, pos, 7)
            else:
                pos += 1
            pos += value_len
            if pos > end:
                raise ValueError("string runs past the end of the field section")
            if first & 0x80:
                value_len = value_len * 8 // 5  # Huffman: at most 8/5 octets per octet
            total += name_len + value_len + ENTRY_OVERHEAD
            if total > stop_above:
                return total
        if pos != end:
            raise ValueError("field line runs past the end of the field section")
        return total
