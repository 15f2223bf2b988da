"""Every h2spec test case, as raw-frame tests against a real quicserve on loopback.

h2spec (github.com/summerwind/h2spec, a Go binary) is the conformance suite HTTP/2
servers are usually compared with; it cannot be installed here, so its cases are
re-expressed with :mod:`tests.conformance.h2frames`. One test per h2spec case, named
``test_<suite>_<section>_<n>_<what>`` after h2spec's numbering:

* ``generic`` — h2spec's "generic" suite (valid frames a server must accept);
* no prefix — h2spec's "http2" suite, numbered by the RFC 7540 sections h2spec uses
  (RFC 9113 renumbered §8.1.2.x to §8.2/§8.3; each docstring cites the RFC 9113 section);
* ``hpack`` — h2spec's "hpack" suite (RFC 7541). RFC 7541 §6.2 (literal field
  representations) has no negative h2spec case; ``generic/5.2`` to ``5.13`` accept them.

Where RFC 9113 differs from RFC 7540 the test follows RFC 9113 (priority signals are
deprecated, but PRIORITY frames and the HEADERS priority fields must still be parsed and
validated; §5.3.1, §6.3). Verdicts follow h2spec's, with the codes held strict (see the
``h2frames`` docstring): a *connection error* is GOAWAY with the code or the TCP
connection closing; a *stream error* may also be RST_STREAM with the code. A few cases
deviate from h2spec's bytes where those tested something other than the rule named
(noted in the docstring).

The server is ``echo_app`` on the default configuration, cleartext with prior knowledge,
on every backend (asyncio, uvloop, trio). Every case passes; none is skipped or
expected to fail.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from hpack.huffman import HuffmanEncoder
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH
from hyperframe.frame import PingFrame, PushPromiseFrame

from ..apps import echo_app
from ..helpers import running_server
from .h2frames import (
    END_HEADERS,
    END_STREAM,
    PADDED,
    ErrorCode,
    FrameType,
    RawH2Client,
    Setting,
    connect,
    raw_frame,
    settings_payload,
)

pytestmark = pytest.mark.anyio

E = ErrorCode

#: h2spec's default ``--max-header-length``: the size of one dummy header value.
DUMMY_LEN = 4000


@pytest.fixture
async def port(anyio_backend: object) -> AsyncIterator[int]:
    """A quicserve serving ``echo_app`` (cleartext, prior-knowledge h2c) for one test."""
    async with running_server(echo_app) as server:
        yield server.port()


@pytest.fixture
async def h2(port: int) -> AsyncIterator[RawH2Client]:
    """A raw client that has completed the HTTP/2 handshake."""
    async with connect(port) as client:
        yield client


def dummy_headers(count: int) -> list[tuple[str, str]]:
    """h2spec's ``DummyHeaders``: ``x-dummyN`` fields of :data:`DUMMY_LEN` bytes."""
    return [(f"x-dummy{i}", "x" * DUMMY_LEN) for i in range(count)]


# -- HPACK representations built by hand (RFC 7541 §5, §6) ---------------------------------

_huffman = HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH)
#: RFC 7541 Appendix A: static table index of ``user-agent``.
USER_AGENT = 58


def hpack_int(value: int, prefix_bits: int, flags: int = 0) -> bytes:
    """RFC 7541 §5.1 integer with an N-bit prefix, ``flags`` in the high bits."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((flags | value,))
    out = bytearray((flags | limit,))
    value -= limit
    while value >= 128:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    out.append(value)
    return bytes(out)


def hpack_str(text: bytes, huffman: bool = False) -> bytes:
    """RFC 7541 §5.2 string literal, raw or Huffman-coded."""
    data = _huffman.encode(text) if huffman else text
    return hpack_int(len(data), 7, 0x80 if huffman else 0) + data


#: RFC 7541 §6.2.1-6.2.3: (pattern bits, prefix size) of the three literal forms.
_LITERAL = {"incremental": (0x40, 6), "without": (0x00, 4), "never": (0x10, 4)}


def hpack_literal(kind: str, name: bytes | int, value: bytes, huffman: bool = False) -> bytes:
    """A literal field representation; ``name`` is an index or a new name."""
    flags, bits = _LITERAL[kind]
    if isinstance(name, int):
        return hpack_int(name, bits, flags) + hpack_str(value, huffman)
    return hpack_int(0, bits, flags) + hpack_str(name, huffman) + hpack_str(value, huffman)


def x_test_with_huffman_value(value: bytes) -> bytes:
    """``x-test`` (literal without indexing, new name) whose value is the raw ``value``
    octets flagged as Huffman-coded: for building invalid Huffman strings."""
    name = hpack_str(b"x-test", huffman=True)
    return hpack_int(0, 4) + name + hpack_int(len(value), 7, 0x80) + value


# ======================================================================================
# generic — valid frames and messages a server must accept
# ======================================================================================


async def test_generic_1_1_client_preface_answered_by_server_preface(port: int) -> None:
    """generic/1/1 — RFC 9113 §3.4: the server connection preface is a (non-ACK)
    SETTINGS frame and MUST be the first frame the server sends."""
    async with connect(port) as h2:
        first = h2.first_frame
        assert first is not None
        assert first.type == FrameType.SETTINGS and "ACK" not in first.flags, h2.log()


async def test_generic_2_1_priority_on_idle_stream(h2: RawH2Client) -> None:
    """generic/2/1 — RFC 9113 §5.1, §6.3: PRIORITY may be sent on an idle stream; it must
    be accepted (it does not open the stream)."""
    await h2.send_priority(1, depends_on=0, weight=255)
    await h2.round_trip()


async def test_generic_2_2_window_update_on_half_closed_remote(h2: RawH2Client) -> None:
    """generic/2/2 — RFC 9113 §5.1 half-closed (remote): WINDOW_UPDATE is still allowed;
    with a zero initial window, a WINDOW_UPDATE of 1 must let one DATA byte out."""
    await h2.send_settings((Setting.INITIAL_WINDOW_SIZE, 0))
    await h2.send_headers(1)
    await h2.send_window_update(1, 1)
    frame = await h2.expect_data(1)
    assert len(frame.data) == 1


async def test_generic_2_3_priority_on_half_closed_remote(h2: RawH2Client) -> None:
    """generic/2/3 — RFC 9113 §5.1 half-closed (remote): PRIORITY is allowed and the stream
    carries on (DATA flows once the window opens)."""
    await h2.send_settings((Setting.INITIAL_WINDOW_SIZE, 0))
    await h2.send_headers(1)
    await h2.send_priority(1, depends_on=0, weight=255)
    await h2.send_window_update(1, 1)
    await h2.expect_data(1)


async def test_generic_2_4_rst_stream_on_half_closed_remote(h2: RawH2Client) -> None:
    """generic/2/4 — RFC 9113 §5.1 half-closed (remote): RST_STREAM is allowed; the
    connection must carry on (PING answered, no GOAWAY)."""
    await h2.send_headers(1)
    await h2.send_rst_stream(1, E.CANCEL)
    await h2.round_trip()


async def test_generic_2_5_priority_on_closed_stream(h2: RawH2Client) -> None:
    """generic/2/5 — RFC 9113 §5.1 closed, §6.3: PRIORITY may be sent on a closed stream
    and must be accepted."""
    await h2.send_headers(1)
    await h2.expect_stream_end(1)
    await h2.send_priority(1, depends_on=0, weight=255)
    await h2.round_trip()


async def test_generic_3_1_1_data_frame(h2: RawH2Client) -> None:
    """generic/3.1/1 — RFC 9113 §6.1: a request body in one DATA frame is answered."""
    await h2.send_headers(1, h2.request("POST"), end_stream=False)
    await h2.send_data(1, b"test")
    assert await h2.expect_response(1) == 200


async def test_generic_3_1_2_multiple_data_frames(h2: RawH2Client) -> None:
    """generic/3.1/2 — RFC 9113 §6.1: a request body in several DATA frames is answered."""
    await h2.send_headers(1, h2.request("POST"), end_stream=False)
    await h2.send_data(1, b"test", end_stream=False)
    await h2.send_data(1, b"test")
    assert await h2.expect_response(1) == 200


async def test_generic_3_1_3_data_frame_with_padding(h2: RawH2Client) -> None:
    """generic/3.1/3 — RFC 9113 §6.1: DATA with the PADDED flag is accepted, the padding
    discarded."""
    await h2.send_headers(1, h2.request("POST", "/echo"), end_stream=False)
    await h2.send_data(1, b"test", pad_length=6)
    assert await h2.expect_response(1) == 200
    assert (await h2.expect_data(1)).data == b"test"


async def test_generic_3_2_1_headers_frame(h2: RawH2Client) -> None:
    """generic/3.2/1 — RFC 9113 §6.2: a HEADERS frame opens a stream and is answered."""
    await h2.send_headers(1)
    assert await h2.expect_response(1) == 200


async def test_generic_3_2_2_headers_frame_with_padding(h2: RawH2Client) -> None:
    """generic/3.2/2 — RFC 9113 §6.2: HEADERS with PADDED is accepted."""
    await h2.send_headers(1, pad_length=8)
    assert await h2.expect_response(1) == 200


async def test_generic_3_2_3_headers_frame_with_priority(h2: RawH2Client) -> None:
    """generic/3.2/3 — RFC 9113 §6.2: HEADERS with the (deprecated) PRIORITY flag is
    parsed and accepted."""
    await h2.send_headers(1, priority=(0, 255, False))
    assert await h2.expect_response(1) == 200


async def test_generic_3_3_1_priority_weight_1(h2: RawH2Client) -> None:
    """generic/3.3/1 — RFC 9113 §6.3: PRIORITY with weight 1 (byte 0) is accepted before
    the stream's HEADERS."""
    await h2.send_priority(1, depends_on=0, weight=0)
    await h2.send_headers(1)
    assert await h2.expect_response(1) == 200


async def test_generic_3_3_2_priority_weight_256(h2: RawH2Client) -> None:
    """generic/3.3/2 — RFC 9113 §6.3: PRIORITY with weight 256 (byte 255) is accepted."""
    await h2.send_priority(1, depends_on=0, weight=255)
    await h2.send_headers(1)
    assert await h2.expect_response(1) == 200


async def test_generic_3_3_3_priority_with_stream_dependency(h2: RawH2Client) -> None:
    """generic/3.3/3 — RFC 9113 §6.3: PRIORITY for idle stream 3 depending on stream 1;
    stream 1 may still be opened afterwards (a PRIORITY frame changes no stream state)."""
    await h2.send_priority(3, depends_on=1, weight=0)
    await h2.send_headers(1)
    assert await h2.expect_response(1) == 200


async def test_generic_3_3_4_priority_exclusive(h2: RawH2Client) -> None:
    """generic/3.3/4 — RFC 9113 §6.3: PRIORITY with the exclusive bit is accepted."""
    await h2.send_priority(1, depends_on=0, weight=0, exclusive=True)
    await h2.send_headers(1)
    assert await h2.expect_response(1) == 200


async def test_generic_3_3_5_priority_idle_then_headers_lower_id(h2: RawH2Client) -> None:
    """generic/3.3/5 — RFC 9113 §6.3, §5.1.1: PRIORITY on idle stream 3 does not use
    that identifier, so HEADERS on stream 1 afterwards is a valid new stream."""
    await h2.send_priority(3, depends_on=0, weight=255)
    await h2.send_headers(1)
    assert await h2.expect_response(1) == 200


async def test_generic_3_4_1_rst_stream(h2: RawH2Client) -> None:
    """generic/3.4/1 — RFC 9113 §6.4: RST_STREAM on an open stream is accepted; the
    connection carries on."""
    await h2.send_headers(1, end_stream=False)
    await h2.send_rst_stream(1, E.CANCEL)
    await h2.round_trip()


async def test_generic_3_5_1_settings(h2: RawH2Client) -> None:
    """generic/3.5/1 — RFC 9113 §6.5: SETTINGS with every defined parameter is accepted
    and acknowledged."""
    await h2.send_settings(
        (Setting.HEADER_TABLE_SIZE, 4096),
        (Setting.ENABLE_PUSH, 1),
        (Setting.MAX_CONCURRENT_STREAMS, 100),
        (Setting.INITIAL_WINDOW_SIZE, 65535),
        (Setting.MAX_FRAME_SIZE, 16384),
        (Setting.MAX_HEADER_LIST_SIZE, 100),
    )
    await h2.expect_settings_ack()


async def test_generic_3_7_1_ping(h2: RawH2Client) -> None:
    """generic/3.7/1 — RFC 9113 §6.7: a PING is answered with a PING ACK, same payload."""
    await h2.send_ping(b"h2spec\0\0")
    await h2.expect_ping_ack(b"h2spec\0\0")


async def test_generic_3_8_1_goaway(h2: RawH2Client) -> None:
    """generic/3.8/1 — RFC 9113 §6.8: after the client's GOAWAY(NO_ERROR) with nothing in
    flight, the server finishes and closes the connection."""
    await h2.send_goaway(0, E.NO_ERROR, b"h2spec")
    await h2.expect_connection_closed()


async def test_generic_3_9_1_window_update_stream_0(h2: RawH2Client) -> None:
    """generic/3.9/1 — RFC 9113 §6.9: WINDOW_UPDATE for the connection is accepted."""
    await h2.send_window_update(0, 1)
    await h2.round_trip()


async def test_generic_3_9_2_window_update_stream_1(h2: RawH2Client) -> None:
    """generic/3.9/2 — RFC 9113 §6.9: WINDOW_UPDATE for a stream is accepted."""
    await h2.send_headers(1)
    await h2.send_window_update(1, 1)
    await h2.expect_headers(1)


async def test_generic_3_10_1_continuation(h2: RawH2Client) -> None:
    """generic/3.10/1 — RFC 9113 §6.10: a field block split over HEADERS + CONTINUATION
    is reassembled and answered."""
    block = h2.encode(h2.request())
    await h2.send_headers(1, block=block[:5], end_headers=False)
    await h2.send_continuation(1, block[5:])
    assert await h2.expect_response(1) == 200


async def test_generic_3_10_2_multiple_continuation(h2: RawH2Client) -> None:
    """generic/3.10/2 — RFC 9113 §6.10: any number of CONTINUATION frames is accepted."""
    block = h2.encode(h2.request())
    await h2.send_headers(1, block=block[:5], end_headers=False)
    await h2.send_continuation(1, block[5:10], end_headers=False)
    await h2.send_continuation(1, block[10:])
    assert await h2.expect_response(1) == 200


async def test_generic_4_1_get(h2: RawH2Client) -> None:
    """generic/4/1 — RFC 9113 §8.1: a GET is answered on its stream."""
    await h2.send_headers(1)
    assert await h2.expect_response(1) == 200


async def test_generic_4_2_head(h2: RawH2Client) -> None:
    """generic/4/2 — RFC 9113 §8.1: a HEAD is answered on its stream."""
    await h2.send_headers(1, h2.request("HEAD"))
    assert await h2.expect_response(1) == 200


async def test_generic_4_3_post(h2: RawH2Client) -> None:
    """generic/4/3 — RFC 9113 §8.1: a POST with a body is answered."""
    await h2.send_headers(1, h2.request("POST"), end_stream=False)
    await h2.send_data(1, b"test")
    assert await h2.expect_response(1) == 200


async def test_generic_4_4_post_with_trailers(h2: RawH2Client) -> None:
    """generic/4/4 — RFC 9113 §8.1: a POST whose body is followed by a trailer section
    (HEADERS with END_STREAM) is answered."""
    await h2.send_headers(1, h2.request("POST", extra=[("trailer", "x-test")]), end_stream=False)
    await h2.send_data(1, b"test", end_stream=False)
    await h2.send_headers(1, [("x-test", "ok")])
    assert await h2.expect_response(1) == 200


async def _send_with_representation(h2: RawH2Client, representation: bytes) -> None:
    await h2.send_headers(1, block=h2.encode(h2.request()) + representation)
    assert await h2.expect_response(1) == 200


async def test_generic_5_1_indexed_field(h2: RawH2Client) -> None:
    """generic/5/1 — RFC 7541 §6.1: an indexed field (static ``user-agent``) is decoded."""
    await _send_with_representation(h2, hpack_int(USER_AGENT, 7, 0x80))


async def test_generic_5_2_literal_incremental_indexed_name(h2: RawH2Client) -> None:
    """generic/5/2 — RFC 7541 §6.2.1: literal with incremental indexing, indexed name."""
    await _send_with_representation(h2, hpack_literal("incremental", USER_AGENT, b"h2spec"))


async def test_generic_5_3_literal_incremental_indexed_name_huffman(h2: RawH2Client) -> None:
    """generic/5/3 — RFC 7541 §6.2.1, §5.2: as 5/2 with a Huffman-coded value."""
    await _send_with_representation(
        h2, hpack_literal("incremental", USER_AGENT, b"h2spec", huffman=True)
    )


async def test_generic_5_4_literal_incremental_new_name(h2: RawH2Client) -> None:
    """generic/5/4 — RFC 7541 §6.2.1: literal with incremental indexing, new name."""
    await _send_with_representation(h2, hpack_literal("incremental", b"x-test", b"h2spec"))


async def test_generic_5_5_literal_incremental_new_name_huffman(h2: RawH2Client) -> None:
    """generic/5/5 — RFC 7541 §6.2.1, §5.2: as 5/4, Huffman-coded name and value."""
    await _send_with_representation(
        h2, hpack_literal("incremental", b"x-test", b"h2spec", huffman=True)
    )


async def test_generic_5_6_literal_without_indexing_indexed_name(h2: RawH2Client) -> None:
    """generic/5/6 — RFC 7541 §6.2.2: literal without indexing, indexed name."""
    await _send_with_representation(h2, hpack_literal("without", USER_AGENT, b"h2spec"))


async def test_generic_5_7_literal_without_indexing_indexed_name_huffman(h2: RawH2Client) -> None:
    """generic/5/7 — RFC 7541 §6.2.2, §5.2: as 5/6 with a Huffman-coded value."""
    await _send_with_representation(
        h2, hpack_literal("without", USER_AGENT, b"h2spec", huffman=True)
    )


async def test_generic_5_8_literal_without_indexing_new_name(h2: RawH2Client) -> None:
    """generic/5/8 — RFC 7541 §6.2.2: literal without indexing, new name."""
    await _send_with_representation(h2, hpack_literal("without", b"x-test", b"h2spec"))


async def test_generic_5_9_literal_without_indexing_new_name_huffman(h2: RawH2Client) -> None:
    """generic/5/9 — RFC 7541 §6.2.2, §5.2: as 5/8, Huffman-coded name and value."""
    await _send_with_representation(
        h2, hpack_literal("without", b"x-test", b"h2spec", huffman=True)
    )


async def test_generic_5_10_literal_never_indexed_indexed_name(h2: RawH2Client) -> None:
    """generic/5/10 — RFC 7541 §6.2.3: literal never indexed, indexed name."""
    await _send_with_representation(h2, hpack_literal("never", USER_AGENT, b"h2spec"))


async def test_generic_5_11_literal_never_indexed_indexed_name_huffman(h2: RawH2Client) -> None:
    """generic/5/11 — RFC 7541 §6.2.3, §5.2: as 5/10 with a Huffman-coded value."""
    await _send_with_representation(h2, hpack_literal("never", USER_AGENT, b"h2spec", huffman=True))


async def test_generic_5_12_literal_never_indexed_new_name(h2: RawH2Client) -> None:
    """generic/5/12 — RFC 7541 §6.2.3: literal never indexed, new name."""
    await _send_with_representation(h2, hpack_literal("never", b"x-test", b"h2spec"))


async def test_generic_5_13_literal_never_indexed_new_name_huffman(h2: RawH2Client) -> None:
    """generic/5/13 — RFC 7541 §6.2.3, §5.2: as 5/12, Huffman-coded name and value."""
    await _send_with_representation(h2, hpack_literal("never", b"x-test", b"h2spec", huffman=True))


async def test_generic_5_14_dynamic_table_size_update(h2: RawH2Client) -> None:
    """generic/5/14 — RFC 7541 §6.3, §4.2: a dynamic table size update (to 0) at the start
    of a block is accepted."""
    block = hpack_int(0, 5, 0x20) + h2.encode(h2.request())
    await h2.send_headers(1, block=block)
    assert await h2.expect_response(1) == 200


async def test_generic_5_15_multiple_dynamic_table_size_updates(h2: RawH2Client) -> None:
    """generic/5/15 — RFC 7541 §4.2: two size updates (0, then 4096) at the start of a
    block are accepted."""
    block = hpack_int(0, 5, 0x20) + hpack_int(4096, 5, 0x20) + h2.encode(h2.request())
    await h2.send_headers(1, block=block)
    assert await h2.expect_response(1) == 200


# ======================================================================================
# http2 — RFC 9113 requirements (numbered as in h2spec, after RFC 7540)
# ======================================================================================

# -- 3.5 HTTP/2 Connection Preface ---------------------------------------------------------


async def test_3_5_1_server_preface_is_settings(port: int) -> None:
    """http2/3.5/1 — RFC 9113 §3.4: after the client preface, the first frame from the
    server MUST be its (non-ACK) SETTINGS frame."""
    async with connect(port, handshake=False) as h2:
        await h2.send(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + raw_frame(FrameType.SETTINGS, 0, 0))
        frame = await h2.expect("the server's first frame", lambda f: True)
        assert frame.type == FrameType.SETTINGS and "ACK" not in frame.flags, h2.log()


async def test_3_5_2_invalid_preface_closes_connection(port: int) -> None:
    """http2/3.5/2 — RFC 9113 §3.4: an invalid connection preface is a connection error
    (PROTOCOL_ERROR); nothing has been negotiated, so the server MUST close the TCP
    connection."""
    async with connect(port, handshake=False) as h2:
        await h2.send(b"INVALID CONNECTION PREFACE\r\n\r\n")
        await h2.expect_raw_close()


# -- 4.1 Frame Format ----------------------------------------------------------------------


async def test_4_1_1_unknown_frame_type_ignored(h2: RawH2Client) -> None:
    """http2/4.1/1 — RFC 9113 §4.1, §5.5: a frame of unknown type MUST be ignored and
    discarded."""
    await h2.send(raw_frame(0x16, 0, 0, b"\0" * 8))
    await h2.round_trip()


async def test_4_1_2_undefined_flags_ignored(h2: RawH2Client) -> None:
    """http2/4.1/2 — RFC 9113 §4.1: flags undefined for a frame type MUST be ignored
    (PING with flags 0x16: ACK clear, so it is answered)."""
    await h2.send(raw_frame(FrameType.PING, 0x16, 0, b"\0" * 8))
    await h2.expect_ping_ack(b"\0" * 8)


async def test_4_1_3_reserved_bit_ignored(h2: RawH2Client) -> None:
    """http2/4.1/3 — RFC 9113 §4.1: the reserved bit of the stream identifier MUST be
    ignored on receipt (PING with R set is still a PING on stream 0)."""
    await h2.send(raw_frame(FrameType.PING, 0x16, 0x80000000, b"\0" * 8))
    await h2.expect_ping_ack(b"\0" * 8)


# -- 4.2 Frame Size ------------------------------------------------------------------------


async def test_4_2_1_data_of_max_frame_size_accepted(h2: RawH2Client) -> None:
    """http2/4.2/1 — RFC 9113 §4.2: an endpoint MUST be able to receive frames up to
    SETTINGS_MAX_FRAME_SIZE (at least 2^14 octets)."""
    size = h2.server_settings.get(Setting.MAX_FRAME_SIZE, 16384)
    await h2.send_headers(1, h2.request("POST"), end_stream=False)
    await h2.send_data(1, b"x" * size)
    assert await h2.expect_response(1) == 200


async def test_4_2_2_data_exceeding_max_frame_size(h2: RawH2Client) -> None:
    """http2/4.2/2 — RFC 9113 §4.2: a frame over SETTINGS_MAX_FRAME_SIZE MUST draw
    FRAME_SIZE_ERROR (on a DATA frame: stream or connection error)."""
    size = h2.server_settings.get(Setting.MAX_FRAME_SIZE, 16384)
    await h2.send_headers(1, h2.request("POST"), end_stream=False)
    await h2.send_data(1, b"x" * (size + 1))
    await h2.expect_stream_error(1, E.FRAME_SIZE_ERROR)


async def test_4_2_3_headers_exceeding_max_frame_size(h2: RawH2Client) -> None:
    """http2/4.2/3 — RFC 9113 §4.2: a frame size error in a frame carrying a field block
    MUST be a connection error of type FRAME_SIZE_ERROR."""
    block = h2.encoder.encode(h2.request() + dummy_headers(5), huffman=False)
    assert len(block) > h2.server_settings.get(Setting.MAX_FRAME_SIZE, 16384)
    await h2.send_headers(1, block=block)
    await h2.expect_connection_error(E.FRAME_SIZE_ERROR)


# -- 4.3 Field Section Compression and Decompression ---------------------------------------


async def test_4_3_1_invalid_field_block_is_compression_error(h2: RawH2Client) -> None:
    """http2/4.3/1 — RFC 9113 §4.3: a field block that fails to decode MUST be a
    connection error of type COMPRESSION_ERROR (a literal cut off after its first byte)."""
    await h2.send(raw_frame(FrameType.HEADERS, END_STREAM | END_HEADERS, 1, b"\x40"))
    await h2.expect_connection_error(E.COMPRESSION_ERROR)


async def test_4_3_2_priority_inside_field_block(h2: RawH2Client) -> None:
    """http2/4.3/2 — RFC 9113 §4.3: a field block is a contiguous sequence of frames; a
    PRIORITY between HEADERS and CONTINUATION is a connection error (PROTOCOL_ERROR)."""
    await h2.send_headers(1, end_stream=False, end_headers=False)
    await h2.send_priority(1, depends_on=0, weight=255)
    await h2.send_continuation(1, h2.encode(dummy_headers(1)))
    await h2.expect_connection_error(E.PROTOCOL_ERROR)


async def test_4_3_3_headers_for_other_stream_inside_field_block(h2: RawH2Client) -> None:
    """http2/4.3/3 — RFC 9113 §4.3: HEADERS for another stream inside a field block is a
    connection error (PROTOCOL_ERROR)."""
    await h2.send_headers(1, end_stream=False, end_headers=False)
    await h2.send_headers(3)
    await h2.send_continuation(1, h2.encode(dummy_headers(1)))
    await h2.expect_connection_error(E.PROTOCOL_ERROR)


# -- 5.1 Stream States ---------------------------------------------------------------------


async def test_5_1_1_idle_data(h2: RawH2Client) -> None:
    """http2/5.1/1 — RFC 9113 §5.1 idle: any frame other than HEADERS or PRIORITY on an
    idle stream MUST be a connection error (PROTOCOL_ERROR); here DATA."""
    await h2.send_data(1, b"test")
    await h2.expect_connection_error(E.PROTOCOL_ERROR)


async def test_5_1_2_idle_rst_stream(h2: RawH2Client) -> None:
    """http2/5.1/2 — RFC 9113 §5.1 idle: RST_STREAM on an idle stream is a connection
    error (PROTOCOL_ERROR)."""
    await h2.send_rst_stream(1, E.CANCEL)
    await h2.expect_connection_error(E.PROTOCOL_ERROR)


async def test_5_1_3_idle_window_update(h2: RawH2Client) -> None:
    """http2/5.1/3 — RFC 9113 §5.1 idle: WINDOW_UPDATE on an idle stream is a connection
    error (PROTOCOL_ERROR)."""
    await h2.send_window_update(1, 100)
    await h2.expect_connection_error(E.PROTOCOL_ERROR)


async def test_5_1_4_idle_continuation(h2: RawH2Client) -> None:
    """http2/5.1/4 — RFC 9113 §5.1 idle, §6.10: CONTINUATION on an idle stream is a
    connection error (PROTOCOL_ERROR)."""
    await h2.send_continuation(1, h2.encode(h2.request()))
    await h2.expect_connection_error(E.PROTOCOL_ERROR)


async def test_5_1_5_half_closed_remote_data(h2: RawH2Client) -> None:
    """http2/5.1/5 — RFC 9113 §5.1 half-closed (remote): DATA after the client's
    END_STREAM MUST be a stream error of type STREAM_CLOSED."""
    await h2.send_headers(1)
    await h2.send_data(1, b"test")
    await h2.expect_stream_error(1, E.STREAM_CLOSED)


async def test_5_1_6_half_closed_remote_headers(h2: RawH2Client) -> None:
    """http2/5.1/6 — RFC 9113 §5.1 half-closed (remote): a second HEADERS after
    END_STREAM MUST be a stream error of type STREAM_CLOSED."""
    await h2.send_headers(1)
    await h2.send_headers(1)
    await h2.expect_stream_error(1, E.STREAM_CLOSED)


async def test_5_1_7_half_closed_remote_continuation(h2: RawH2Client) -> None:
    """http2/5.1/7 — RFC 9113 §5.1, §6.10: CONTINUATION after a complete HEADERS with
    END_STREAM is an error: STREAM_CLOSED (§5.1) or PROTOCOL_ERROR (§6.10)."""
    block = h2.encode(h2.request())
    await h2.send_headers(1, block=block)
    await h2.send_continuation(1, block)
    await h2.expect_stream_error(1, E.STREAM_CLOSED, E.PROTOCOL_ERROR)


async def test_5_1_8_closed_data_after_rst_stream(h2: RawH2Client) -> None:
    """http2/5.1/8 — RFC 9113 §5.1 closed: a frame other than PRIORITY after the client's
    RST_STREAM MUST be a stream error of type STREAM_CLOSED; here DATA."""
    await h2.send_headers(1, end_stream=False)
    await h2.send_rst_stream(1, E.CANCEL)
    await h2.send_data(1, b"test")
    await h2.expect_stream_error(1, E.STREAM_CLOSED)


async def test_5_1_9_closed_headers_after_rst_stream(h2: RawH2Client) -> None:
    """http2/5.1/9 — RFC 9113 §5.1 closed: HEADERS after the client's RST_STREAM MUST be
    a stream error of type STREAM_CLOSED."""
    await h2.send_headers(1, end_stream=False)
    await h2.send_rst_stream(1, E.CANCEL)
    await h2.send_headers(1)
    await h2.expect_stream_error(1, E.STREAM_CLOSED)


async def test_5_1_10_closed_continuation_after_rst_stream(h2: RawH2Client) -> None:
    """http2/5.1/10 — RFC 9113 §5.1 closed, §6.10: CONTINUATION after RST_STREAM is an
    error: STREAM_CLOSED (§5.1) or PROTOCOL_ERROR (§6.10)."""
    await h2.send_headers(1, end_stream=False)
    await h2.send_rst_stream(1, E.CANCEL)
    await h2.send_continuation(1, h2.encode(dummy_headers(1)))
    await h2.expect_stream_error(1, E.STREAM_CLOSED, E.PROTOCOL_ERROR)


async def test_5_1_11_closed_data_after_end_stream(h2: RawH2Client) -> None:
    """http2/5.1/11 — RFC 9113 §5.1 closed, §6.1: DATA on a stream closed by END_STREAM
    both ways is an error of type STREAM_CLOSED (connection error per §5.1; §6.1 allows a
    stream error)."""
    await h2.send_headers(1)
    await h2.expect_stream_end(1)
    await h2.send_data(1, b"test")
    await h2.expect_stream_error(1, E.STREAM_CLOSED)


async def test_5_1_12_closed_headers_after_end_stream(h2: RawH2Client) -> None:
    """http2/5.1/12 — RFC 9113 §5.1 closed: any frame (but PRIORITY) after END_STREAM was
    received on a closed stream MUST be a connection error of type STREAM_CLOSED; here
    HEADERS."""
    await h2.send_headers(1)
    await h2.expect_stream_end(1)
    await h2.send_headers(1)
    await h2.expect_connection_error(E.STREAM_CLOSED)


async def test_5_1_13_closed_continuation_after_end_stream(h2: RawH2Client) -> None:
    """http2/5.1/13 — RFC 9113 §5.1 closed, §6.10: CONTINUATION on a closed stream is a
    connection error: STREAM_CLOSED (§5.1) or PROTOCOL_ERROR (§6.10)."""
    await h2.send_headers(1)
    await h2.expect_stream_end(1)
    await h2.send_continuation(1, h2.encode(dummy_headers(1)))
    await h2.expect_connection_error(E.STREAM_CLOSED, E.PROTOCOL_ERROR)


# -- 5.1.1 Stream Identifiers --------------------------------------------------------------


async def test_5_1_1_1_even_stream_id(h2: RawH2Client) -> None:
    """http2/5.1.1/1 — RFC 9113 §5.1.1: a client-initiated stream MUST be odd; an
    unexpected identifier is a connection error (PROTOCOL_ERROR)."""
    await h2.send_headers(2)
    await h2.expect_connection_error(E.PROTOCOL_ERROR)


async def test_5_1_1_2_decreasing_stream_id(h2: RawH2Client) -> None:
    """http2/5.1.1/2 — RFC 9113 §5.1.1: a new stream identifier MUST be greater than all
    earlier ones; stream 3 after stream 5 is a connection error (PROTOCOL_ERROR)."""
    await h2.send_headers(5)
    await h2.send_headers(3)
    await h2.expect_connection_error(E.PROTOCOL_ERROR)


# -- 5.1.2 Stream Concurrency --------------------------------------------------------------


async def test_5_1_2_1_exceeding_max_concurrent_streams(h2: RawH2Client) -> None:
    """http2/5.1.2/1 — RFC 9113 §5.1.2: HEADERS that exceed the advertised
    SETTINGS_MAX_CONCURRENT_STREAMS MUST be a stream error of type PROTOCOL_ERROR or
    REFUSED_STREAM (streams are kept open by a zero initial window)."""
    limit = h2.server_settings.get(Setting.MAX_CONCURRENT_STREAMS)
    assert limit is not None, "the server must advertise a concurrency limit"
    await h2.send_settings((Setting.INITIAL_WINDOW_SIZE, 0))
    block = h2.encode(h2.request())
    flags = END_STREAM | END_HEADERS
    # One write, so that all of them arrive before the server can finish any stream.
    await h2.send(
        b"".join(raw_frame(FrameType.HEADERS, flags, 1 + 2 * i, block) for i in range(limit + 1))
    )
    await h2.expect_stream_error(1 + 2 * limit, E.PROTOCOL_ERROR, E.REFUSED_STREAM)


# -- 5.3.1 Stream Dependencies -------------------------------------------------------------


async def test_5_3_1_1_headers_depending_on_itself(h2: RawH2Client) -> None:
    """http2/5.3.1/1 — RFC 9113 §5.3.1: a stream cannot depend on itself; HEADERS whose
    priority names its own stream MUST be a stream error (PROTOCOL_ERROR)."""
    await h2.send_headers(1, priority=(1, 255, False))
    await h2.expect_stream_error(1, E.PROTOCOL_ERROR)


async def test_5_3_1_2_priority_depending_on_itself(h2: RawH2Client) -> None:
    """http2/5.3.1/2 — RFC 9113 §5.3.1: a PRIORITY frame making a stream depend on itself
    MUST be a stream error (PROTOCOL_ERROR)."""
    await h2.send_priority(1, depends_on=1, weight=255)
    await h2.expect_stream_error(1, E.PROTOCOL_ERROR)


# -- 5.4.1 Connection Error Handling -------------------------------------------------------


async def test_5_4_1_1_connection_error_closes_tcp(h2: RawH2Client) -> None:
    """http2/5.4.1/1 — RFC 9113 §5.4.1: after the GOAWAY for a connection error the
    endpoint MUST close the TCP connection (trigger: PING on stream 3)."""
    await h2.send(raw_frame(FrameType.PING, 0, 3, b"\0" * 8))
    await h2.expect_connection_closed()


async def test_5_4_1_2_connection_error_sends_goaway(h2: RawH2Client) -> None:
    """http2/5.4.1/2 — RFC 9113 §5.4.1: an endpoint meeting a connection error SHOULD
    first send GOAWAY (h2spec strict case), here with PROTOCOL_ERROR (§6.7)."""
    await h2.send(raw_frame(FrameType.PING, 0, 3, b"\0" * 8))
    await h2.expect_goaway(E.PROTOCOL_ERROR)


# -- 5.5 Extending HTTP/2 ------------------------------------------------------------------


async def test_5_5_1_unknown_extension_frame(h2: RawH2Client) -> None:
    """http2/5.5/1 — RFC 9113 §5.5: unknown extension frames MUST be ignored."""
    await h2.send(raw_frame(0x16, 0, 0, b"\0" * 8))
    await h2.round_trip()


async def test_5_5_2_extension_frame_inside_field_block(h2: RawH2Client) -> None:
    """http2/5.5/2 — RFC 9113 §5.5: an extension frame in the middle of a field block
    MUST be a connection error (PROTOCOL_ERROR)."""
    await h2.send_headers(1, end_headers=False)
    await h2.send(raw_frame(0x16, 0, 0, b"\0" * 8))
    await h2.expect_connection_error(E.PROTOCOL_ERROR)


# -- 6.1 DATA ------------------------------------------------------------------------------


async def test_6_1_1_data_on_stream_0(h2: RawH2Client) -> None:
    """http2/6.1/1 — RFC 9113 §6.1: DATA on stream 0 MUST be a connection error
    (PROTOCOL_ERROR)."""
    await h2.send_data(0, b"test")
    await h2.expect_connection_error(E.PROTOCOL_ERROR)


async def test_6_1_2_data_on_half_closed_remote(h2: RawH2Client) -> None:
    """http2/6.1/2 — RFC 9113 §6.1: DATA on a stream not "open" or "half-closed (local)"
    MUST be a stream error of type STREAM_CLOSED."""
    await h2.send_headers(1, h2.request("POST"))
    await h2.send_data(1, b"test")
    await h2.expect_stream_error(1, E.STREAM_CLOSED)


async def test_6_1_3_data_with_invalid_pad_length(h2: RawH2Client) -> None:
    """http2/6.1/3 — RFC 9113 §6.1: padding as long as the payload or longer MUST be a
    connection error (PROTOCOL_ERROR); here length 5, pad length 6."""
    await h2.send_headers(1, h2.request("POST", extra=[("content-length", "4")]), end_stream=False)
    await h2.send(raw_frame(FrameType.DATA, END_STREAM | PADDED, 1, b"\x06Test"))
    await h2.expect_connection_error(E.PROTOCOL_ERROR)


# -- 6.2 HEADERS ---------------------------------------------------------------------------


async def test_6_2_1_headers_then_priority(h2: RawH2Client) -> None:
    """http2/6.2/1 — RFC 9113 §6.2: HEADERS without END_HEADERS MUST be followed by
    CONTINUATION for the same stream; a PRIORITY instead is a connection error
    (PROTOCOL_ERROR)."""
    await h2.send_headers(1, end_stream=False, end_headers=False)
    await h2.send_priority(1, depends_on=0, weight=255)
    await h2.send_continuation(1, h2.encode(dummy_headers(1)))
    await h2.expect_connection_error(E.PROTOCOL_ERROR)


async def test_6_2_2_headers_then_headers_for_other_stream(h2: RawH2Client) -> None:
    """http2/6.2/2 — RFC 9113 §6.2: a frame on another stream between HEADERS and its
    CONTINUATION is a connection error (PROTOCOL_ERROR)."""
    await h2.send_headers(1, end_stream=False, end_headers=False)
    await h2.send_headers(3)
    await h2.send_continuation(1, h2.encode(dummy_headers(1)))
    await h2.expect_connection_error(E.PROTOCOL_ERROR)


async def test_6_2_3_headers_on_stream_0(h2: RawH2Client) -> None:
    """http2/6.2/3 — RFC 9113 §6.2: HEADERS on stream 0 MUST be a connection error
    (PROTOCOL_ERROR)."""
    block = h2.encode(h2.request())
    await h2.send(raw_frame(FrameType.HEADERS, END_STREAM | END_HEADERS, 0, block))
    await h2.expect_connection_error(E.PROTOCOL_ERROR)


async def test_6_2_4_headers_with_invalid_pad_length(h2: RawH2Client) -> None:
    """http2/6.2/4 — RFC 9113 §6.2: padding that exceeds the room left for the field
    block fragment MUST be treated as a PROTOCOL_ERROR."""
    block = h2.encode(h2.request())
    payload = bytes((len(block) + 2,)) + block
    await h2.send(raw_frame(FrameType.HEADERS, END_STREAM | END_HEADERS | PADDED, 1, payload))
    await h2.expect_stream_error(1, E.PROTOCOL_ERROR)


# -- 6.3 PRIORITY --------------------------------------------------------------------------


async def test_6_3_1_priority_on_stream_0(h2: RawH2Client) -> None:
    """http2/6.3/1 — RFC 9113 §6.3: PRIORITY on stream 0 MUST be a connection error
    (PROTOCOL_ERROR)."""
    await h2.send_priority(0, depends_on=0, weight=255)
    await h2.expect_connection_error(E.PROTOCOL_ERROR)


async def test_6_3_2_priority_with_wrong_length(h2: RawH2Client) -> None:
    """http2/6.3/2 — RFC 9113 §6.3: a PRIORITY frame whose length is not 5 MUST be a
    stream error of type FRAME_SIZE_ERROR."""
    await h2.send_headers(1)
    await h2.send(raw_frame(FrameType.PRIORITY, 0, 1, b"\x80\x00\x00\x01"))
    await h2.expect_stream_error(1, E.FRAME_SIZE_ERROR)


async def test_6_3_3_priority_idle_then_headers_lower_id(h2: RawH2Client) -> None:
    """http2/6.3/3 (h2spec strict) — RFC 9113 §6.3: PRIORITY can be sent for an idle
    stream and changes no stream state, so HEADERS on a lower stream id is answered."""
    await h2.send_priority(3, depends_on=0, weight=255)
    await h2.send_headers(1)
    await h2.expect_headers(1)


# -- 6.4 RST_STREAM ------------------------------------------------------------------------


async def test_6_4_1_rst_stream_on_stream_0(h2: RawH2Client) -> None:
    """http2/6.4/1 — RFC 9113 §6.4: RST_STREAM on stream 0 MUST be a connection error
    (PROTOCOL_ERROR)."""
    await h2.send_rst_stream(0, E.CANCEL)
    await h2.expect_connection_error(E.PROTOCOL_ERROR)


async def test_6_4_2_rst_stream_on_idle_stream(h2: RawH2Client) -> None:
    """http2/6.4/2 — RFC 9113 §6.4: RST_STREAM for an idle stream MUST be a connection
    error (PROTOCOL_ERROR)."""
    await h2.send_rst_stream(1, E.CANCEL)
    await h2.expect_connection_error(E.PROTOCOL_ERROR)


async def test_6_4_3_rst_stream_with_wrong_length(h2: RawH2Client) -> None:
    """http2/6.4/3 — RFC 9113 §6.4: a RST_STREAM whose length is not 4 MUST be a
    connection error of type FRAME_SIZE_ERROR (h2spec also accepts a stream error; the
    RFC does not)."""
    await h2.send_headers(1)
    await h2.send(raw_frame(FrameType.RST_STREAM, 0, 1, b"\0\0\0"))
    await h2.expect_connection_error(E.FRAME_SIZE_ERROR)


# -- 6.5 SETTINGS --------------------------------------------------------------------------


async def test_6_5_1_settings_ack_with_payload(h2: RawH2Client) -> None:
    """http2/6.5/1 — RFC 9113 §6.5: SETTINGS with ACK and a non-empty payload MUST be a
    connection error of type FRAME_SIZE_ERROR."""
    await h2.send(raw_frame(FrameType.SETTINGS, 0x1, 0, b"\0"))
    await h2.expect_connection_error(E.FRAME_SIZE_ERROR)


async def test_6_5_2_settings_on_stream_1(h2: RawH2Client) -> None:
    """http2/6.5/2 — RFC 9113 §6.5: SETTINGS on a stream other than 0 MUST be a
    connection error (PROTOCOL_ERROR)."""
    await h2.send(raw_frame(FrameType.SETTINGS, 0, 1, settings_payload((3, 100))))
    await h2.expect_connection_error(E.PROTOCOL_ERROR)


async def test_6_5_3_settings_length_not_multiple_of_6(h2: RawH2Client) -> None:
    """http2/6.5/3 — RFC 9113 §6.5: a SETTINGS length not a multiple of 6 MUST be a
    connection error of type FRAME_SIZE_ERROR (a badly formed SETTINGS frame may also
    be reported as PROTOCOL_ERROR)."""
    await h2.send(raw_frame(FrameType.SETTINGS, 0, 0, settings_payload((3, 100)) + b"\0\x02"))
    await h2.expect_connection_error(E.FRAME_SIZE_ERROR, E.PROTOCOL_ERROR)


# -- 6.5.2 Defined SETTINGS Parameters -----------------------------------------------------


async def test_6_5_2_1_enable_push_not_0_or_1(h2: RawH2Client) -> None:
    """http2/6.5.2/1 — RFC 9113 §6.5.2: SETTINGS_ENABLE_PUSH other than 0 or 1 MUST be a
    connection error (PROTOCOL_ERROR)."""
    await h2.send_settings((Setting.ENABLE_PUSH, 2))
    await h2.expect_connection_error(E.PROTOCOL_ERROR)


async def test_6_5_2_2_initial_window_size_above_maximum(h2: RawH2Client) -> None:
    """http2/6.5.2/2 — RFC 9113 §6.5.2: SETTINGS_INITIAL_WINDOW_SIZE above 2^31-1 MUST be
    a connection error of type FLOW_CONTROL_ERROR."""
    await h2.send_settings((Setting.INITIAL_WINDOW_SIZE, 2**31))
    await h2.expect_connection_error(E.FLOW_CONTROL_ERROR)


async def test_6_5_2_3_max_frame_size_below_initial(h2: RawH2Client) -> None:
    """http2/6.5.2/3 — RFC 9113 §6.5.2: SETTINGS_MAX_FRAME_SIZE below 2^14 MUST be a
    connection error (PROTOCOL_ERROR)."""
    await h2.send_settings((Setting.MAX_FRAME_SIZE, 16383))
    await h2.expect_connection_error(E.PROTOCOL_ERROR)


async def test_6_5_2_4_max_frame_size_above_maximum(h2: RawH2Client) -> None:
    """http2/6.5.2/4 — RFC 9113 §6.5.2: SETTINGS_MAX_FRAME_SIZE above 2^24-1 MUST be a
    connection error (PROTOCOL_ERROR)."""
    await h2.send_settings((Setting.MAX_FRAME_SIZE, 2**24))
    await h2.expect_connection_error(E.PROTOCOL_ERROR)


async def test_6_5_2_5_unknown_setting_ignored(h2: RawH2Client) -> None:
    """http2/6.5.2/5 — RFC 9113 §6.5.2: a setting with an unknown identifier MUST be
    ignored."""
    await h2.send_settings((0xFF, 1))
    await h2.round_trip()


# -- 6.5.3 Settings Synchronization --------------------------------------------------------


async def test_6_5_3_1_settings_values_processed_in_order(h2: RawH2Client) -> None:
    """http2/6.5.3/1 — RFC 9113 §6.5.3: the values in a SETTINGS frame MUST be processed
    in order; INITIAL_WINDOW_SIZE 100 then 1 leaves 1, so the first DATA is 1 byte."""
    await h2.send_settings((Setting.INITIAL_WINDOW_SIZE, 100), (Setting.INITIAL_WINDOW_SIZE, 1))
    await h2.expect_settings_ack()
    await h2.send_headers(1)
    assert len((await h2.expect_data(1)).data) == 1


async def test_6_5_3_2_settings_ack_required(h2: RawH2Client) -> None:
    """http2/6.5.3/2 — RFC 9113 §6.5.3: once the values are processed the recipient MUST
    immediately emit SETTINGS with ACK."""
    await h2.send_settings((Setting.ENABLE_PUSH, 0))
    await h2.expect_settings_ack()


# -- 6.7 PING ------------------------------------------------------------------------------


async def test_6_7_1_ping_answered_with_same_payload(h2: RawH2Client) -> None:
    """http2/6.7/1 — RFC 9113 §6.7: a PING without ACK MUST be answered by a PING with
    ACK and an identical payload."""
    await h2.send_ping(b"h2spec\0\0")
    await h2.expect_ping_ack(b"h2spec\0\0")


async def test_6_7_2_ping_ack_not_answered(h2: RawH2Client) -> None:
    """http2/6.7/2 — RFC 9113 §6.7: an endpoint MUST NOT respond to a PING with ACK."""
    await h2.send_ping(b"invalid\0", ack=True)
    await h2.send_ping(b"h2spec\0\0")
    before = await h2.expect_ping_ack(b"h2spec\0\0")
    answered = [f for f in before if isinstance(f, PingFrame) and f.opaque_data == b"invalid\0"]
    assert not answered, h2.log()


async def test_6_7_3_ping_on_nonzero_stream(h2: RawH2Client) -> None:
    """http2/6.7/3 — RFC 9113 §6.7: PING on a stream other than 0 MUST be a connection
    error (PROTOCOL_ERROR)."""
    await h2.send(raw_frame(FrameType.PING, 0, 1, b"\0" * 8))
    await h2.expect_connection_error(E.PROTOCOL_ERROR)


async def test_6_7_4_ping_with_wrong_length(h2: RawH2Client) -> None:
    """http2/6.7/4 — RFC 9113 §6.7: a PING whose length is not 8 MUST be a connection
    error of type FRAME_SIZE_ERROR (sent on stream 0, so the length is the only fault)."""
    await h2.send(raw_frame(FrameType.PING, 0, 0, b"\0" * 6))
    await h2.expect_connection_error(E.FRAME_SIZE_ERROR)


# -- 6.8 GOAWAY ----------------------------------------------------------------------------


async def test_6_8_1_goaway_on_nonzero_stream(h2: RawH2Client) -> None:
    """http2/6.8/1 — RFC 9113 §6.8: GOAWAY on a stream other than 0 MUST be a connection
    error (PROTOCOL_ERROR)."""
    await h2.send(raw_frame(FrameType.GOAWAY, 0, 1, b"\0" * 8))
    await h2.expect_connection_error(E.PROTOCOL_ERROR)


# -- 6.9 WINDOW_UPDATE ---------------------------------------------------------------------


async def test_6_9_1_window_update_zero_on_connection(h2: RawH2Client) -> None:
    """http2/6.9/1 — RFC 9113 §6.9: a WINDOW_UPDATE of 0 on the connection MUST be a
    connection error (PROTOCOL_ERROR)."""
    await h2.send_window_update(0, 0)
    await h2.expect_connection_error(E.PROTOCOL_ERROR)


async def test_6_9_2_window_update_zero_on_stream(h2: RawH2Client) -> None:
    """http2/6.9/2 — RFC 9113 §6.9: a WINDOW_UPDATE of 0 on a stream MUST be a stream
    error (PROTOCOL_ERROR)."""
    await h2.send_headers(1, end_stream=False)
    await h2.send_window_update(1, 0)
    await h2.expect_stream_error(1, E.PROTOCOL_ERROR)


async def test_6_9_3_window_update_with_wrong_length(h2: RawH2Client) -> None:
    """http2/6.9/3 — RFC 9113 §6.9: a WINDOW_UPDATE whose length is not 4 MUST be a
    connection error of type FRAME_SIZE_ERROR."""
    await h2.send(raw_frame(FrameType.WINDOW_UPDATE, 0, 0, b"\0\0\x01"))
    await h2.expect_connection_error(E.FRAME_SIZE_ERROR)


# -- 6.9.1 The Flow-Control Window ---------------------------------------------------------


async def test_6_9_1_1_initial_window_of_1(h2: RawH2Client) -> None:
    """http2/6.9.1/1 — RFC 9113 §6.9.1: the sender MUST NOT exceed the receiver's window;
    with SETTINGS_INITIAL_WINDOW_SIZE 1 the first DATA carries 1 byte."""
    await h2.send_settings((Setting.INITIAL_WINDOW_SIZE, 1))
    await h2.expect_settings_ack()
    await h2.send_headers(1)
    assert len((await h2.expect_data(1)).data) == 1


async def test_6_9_1_2_connection_window_above_maximum(h2: RawH2Client) -> None:
    """http2/6.9.1/2 — RFC 9113 §6.9.1: WINDOW_UPDATEs taking the connection window above
    2^31-1 MUST end the connection with GOAWAY FLOW_CONTROL_ERROR."""
    await h2.send_window_update(0, 2**31 - 1)
    await h2.send_window_update(0, 2**31 - 1)
    await h2.expect_goaway(E.FLOW_CONTROL_ERROR)


async def test_6_9_1_3_stream_window_above_maximum(h2: RawH2Client) -> None:
    """http2/6.9.1/3 — RFC 9113 §6.9.1: WINDOW_UPDATEs taking a stream window above
    2^31-1 MUST reset the stream with RST_STREAM FLOW_CONTROL_ERROR."""
    await h2.send_headers(1, end_stream=False)
    await h2.send_window_update(1, 2**31 - 1)
    await h2.send_window_update(1, 2**31 - 1)
    await h2.expect_rst_stream(1, E.FLOW_CONTROL_ERROR)


# -- 6.9.2 Initial Flow-Control Window Size ------------------------------------------------


async def test_6_9_2_1_initial_window_change_adjusts_open_streams(h2: RawH2Client) -> None:
    """http2/6.9.2/1 — RFC 9113 §6.9.2: a change of SETTINGS_INITIAL_WINDOW_SIZE MUST
    adjust every open stream's window by the difference (0 -> 1 lets 1 byte out)."""
    await h2.send_settings((Setting.INITIAL_WINDOW_SIZE, 0))
    await h2.expect_settings_ack()
    await h2.send_headers(1)
    await h2.send_settings((Setting.INITIAL_WINDOW_SIZE, 1))
    await h2.expect_settings_ack()
    assert len((await h2.expect_data(1)).data) == 1


async def test_6_9_2_2_negative_window_tracked(h2: RawH2Client) -> None:
    """http2/6.9.2/2 — RFC 9113 §6.9.2: a SETTINGS change can make a window negative; the
    sender MUST track it (3 sent, 3 -> 2 makes -1, +2 lets exactly 1 byte out)."""
    await h2.send_settings((Setting.INITIAL_WINDOW_SIZE, 3))
    await h2.expect_settings_ack()
    await h2.send_headers(1)
    assert len((await h2.expect_data(1)).data) == 3
    await h2.send_settings((Setting.INITIAL_WINDOW_SIZE, 2))
    await h2.expect_settings_ack()
    await h2.send_window_update(1, 2)
    assert len((await h2.expect_data(1)).data) == 1


async def test_6_9_2_3_initial_window_size_overflow(h2: RawH2Client) -> None:
    """http2/6.9.2/3 — RFC 9113 §6.9.2: SETTINGS_INITIAL_WINDOW_SIZE that takes a window
    above the maximum MUST be a connection error of type FLOW_CONTROL_ERROR."""
    await h2.send(raw_frame(FrameType.SETTINGS, 0, 0, b"\x00\x04\x80\x00\x00\x00"))
    await h2.expect_connection_error(E.FLOW_CONTROL_ERROR)


# -- 6.10 CONTINUATION ---------------------------------------------------------------------


async def test_6_10_1_multiple_continuation_frames(h2: RawH2Client) -> None:
    """http2/6.10/1 — RFC 9113 §6.10: any number of CONTINUATION frames may follow a
    HEADERS without END_HEADERS on the same stream."""
    await h2.send_headers(1, end_headers=False)
    await h2.send_continuation(1, h2.encode(dummy_headers(1)), end_headers=False)
    await h2.send_continuation(1, h2.encode(dummy_headers(1)))
    await h2.expect_headers(1)


async def test_6_10_2_continuation_then_data(h2: RawH2Client) -> None:
    """http2/6.10/2 — RFC 9113 §6.10: after a CONTINUATION without END_HEADERS any frame
    other than CONTINUATION (here DATA) MUST be a connection error (PROTOCOL_ERROR)."""
    await h2.send_headers(1, h2.request("POST"), end_stream=False, end_headers=False)
    await h2.send_continuation(1, h2.encode(dummy_headers(1)), end_headers=False)
    await h2.send_data(1, b"test")
    await h2.expect_connection_error(E.PROTOCOL_ERROR)


async def test_6_10_3_continuation_on_stream_0(h2: RawH2Client) -> None:
    """http2/6.10/3 — RFC 9113 §6.10: CONTINUATION on stream 0 MUST be a connection error
    (PROTOCOL_ERROR)."""
    await h2.send_headers(1, end_headers=False)
    await h2.send_continuation(0, h2.encode(dummy_headers(1)))
    await h2.expect_connection_error(E.PROTOCOL_ERROR)


async def test_6_10_4_continuation_after_headers_with_end_headers(h2: RawH2Client) -> None:
    """http2/6.10/4 — RFC 9113 §6.10: CONTINUATION after HEADERS that had END_HEADERS
    MUST be a connection error (PROTOCOL_ERROR)."""
    await h2.send_headers(1)
    await h2.send_continuation(1, h2.encode(dummy_headers(1)))
    await h2.expect_connection_error(E.PROTOCOL_ERROR)


async def test_6_10_5_continuation_after_continuation_with_end_headers(h2: RawH2Client) -> None:
    """http2/6.10/5 — RFC 9113 §6.10: CONTINUATION after a CONTINUATION that had
    END_HEADERS MUST be a connection error (PROTOCOL_ERROR)."""
    await h2.send_headers(1, end_headers=False)
    await h2.send_continuation(1, h2.encode(dummy_headers(1)))
    await h2.send_continuation(1, h2.encode(dummy_headers(1)))
    await h2.expect_connection_error(E.PROTOCOL_ERROR)


async def test_6_10_6_continuation_after_data(h2: RawH2Client) -> None:
    """http2/6.10/6 — RFC 9113 §6.10: CONTINUATION preceded by DATA MUST be a connection
    error (PROTOCOL_ERROR). (h2spec sends the DATA inside an unfinished field block,
    which §6.2 already forbids; here the block is complete so only §6.10 is tested.)"""
    await h2.send_headers(1, h2.request("POST"), end_stream=False)
    await h2.send_data(1, b"test", end_stream=False)
    await h2.send_continuation(1, h2.encode(dummy_headers(1)))
    await h2.expect_connection_error(E.PROTOCOL_ERROR)


# -- 7 Error Codes -------------------------------------------------------------------------


async def test_7_1_goaway_with_unknown_error_code(h2: RawH2Client) -> None:
    """http2/7/1 — RFC 9113 §7: unknown error codes MUST NOT trigger special behaviour;
    a GOAWAY (code 0xff) still ends the connection normally: the server closes it."""
    await h2.send_goaway(0, 0xFF)
    await h2.expect_connection_closed()


async def test_7_2_rst_stream_with_unknown_error_code(h2: RawH2Client) -> None:
    """http2/7/2 — RFC 9113 §7: a RST_STREAM with an unknown code (0xff) MUST NOT trigger
    special behaviour: the connection carries on."""
    await h2.send_headers(1, h2.request("POST"), end_stream=False)
    await h2.send_rst_stream(1, 0xFF)
    await h2.round_trip()


# -- 8.1 HTTP Request/Response Exchange ----------------------------------------------------


async def test_8_1_1_second_headers_without_end_stream(h2: RawH2Client) -> None:
    """http2/8.1/1 — RFC 9113 §8.1, §8.1.1: a second HEADERS (trailers) without
    END_STREAM makes the request malformed: stream error PROTOCOL_ERROR."""
    await h2.send_headers(1, h2.request("POST"), end_stream=False)
    await h2.send_data(1, b"test", end_stream=False)
    await h2.send_headers(1, [("x-test", "ok")], end_stream=False)
    await h2.expect_stream_error(1, E.PROTOCOL_ERROR)


# -- 8.1.2 HTTP Header Fields (RFC 9113 §8.2, §8.3) ----------------------------------------


async def test_8_1_2_1_uppercase_field_name(h2: RawH2Client) -> None:
    """http2/8.1.2/1 — RFC 9113 §8.2.1: a field name with upper-case letters makes the
    request malformed: stream error PROTOCOL_ERROR."""
    await h2.send_headers(1, h2.request(extra=[("X-TEST", "ok")]))
    await h2.expect_stream_error(1, E.PROTOCOL_ERROR)


async def test_8_1_2_1_1_unknown_pseudo_header(h2: RawH2Client) -> None:
    """http2/8.1.2.1/1 — RFC 9113 §8.3: an undefined pseudo-header field makes the
    request malformed: stream error PROTOCOL_ERROR."""
    await h2.send_headers(1, h2.request(extra=[(":test", "ok")]))
    await h2.expect_stream_error(1, E.PROTOCOL_ERROR)


async def test_8_1_2_1_2_response_pseudo_header_in_request(h2: RawH2Client) -> None:
    """http2/8.1.2.1/2 — RFC 9113 §8.3: a response pseudo-header (``:status``) in a
    request makes it malformed: stream error PROTOCOL_ERROR."""
    await h2.send_headers(1, h2.request(extra=[(":status", "200")]))
    await h2.expect_stream_error(1, E.PROTOCOL_ERROR)


async def test_8_1_2_1_3_pseudo_header_in_trailers(h2: RawH2Client) -> None:
    """http2/8.1.2.1/3 — RFC 9113 §8.1, §8.3: pseudo-header fields MUST NOT appear in a
    trailer section: stream error PROTOCOL_ERROR. (Trailers carry END_STREAM here, so the
    pseudo-header is the only fault; h2spec also omits END_STREAM, which 8.1/1 tests.)"""
    await h2.send_headers(1, h2.request("POST"), end_stream=False)
    await h2.send_data(1, b"test", end_stream=False)
    await h2.send_headers(1, [(":method", "POST")])
    await h2.expect_stream_error(1, E.PROTOCOL_ERROR)


async def test_8_1_2_1_4_pseudo_header_after_regular_field(h2: RawH2Client) -> None:
    """http2/8.1.2.1/4 — RFC 9113 §8.3: pseudo-header fields after a regular field make
    the request malformed: stream error PROTOCOL_ERROR."""
    await h2.send_headers(1, [("x-test", "ok"), *h2.request()])
    await h2.expect_stream_error(1, E.PROTOCOL_ERROR)


async def test_8_1_2_2_1_connection_specific_field(h2: RawH2Client) -> None:
    """http2/8.1.2.2/1 — RFC 9113 §8.2.2: a connection-specific field (``connection``)
    makes the request malformed: stream error PROTOCOL_ERROR."""
    await h2.send_headers(1, h2.request(extra=[("connection", "keep-alive")]))
    await h2.expect_stream_error(1, E.PROTOCOL_ERROR)


async def test_8_1_2_2_2_te_other_than_trailers(h2: RawH2Client) -> None:
    """http2/8.1.2.2/2 — RFC 9113 §8.2.2: TE with any value other than ``trailers`` makes
    the request malformed: stream error PROTOCOL_ERROR."""
    await h2.send_headers(1, h2.request(extra=[("trailers", "test"), ("te", "trailers, deflate")]))
    await h2.expect_stream_error(1, E.PROTOCOL_ERROR)


async def test_8_1_2_3_1_empty_path(h2: RawH2Client) -> None:
    """http2/8.1.2.3/1 — RFC 9113 §8.3.1: ``:path`` MUST NOT be empty for http(s) URIs:
    stream error PROTOCOL_ERROR."""
    await h2.send_headers(1, h2.request(path=""))
    await h2.expect_stream_error(1, E.PROTOCOL_ERROR)


async def test_8_1_2_3_2_missing_method(h2: RawH2Client) -> None:
    """http2/8.1.2.3/2 — RFC 9113 §8.3.1: a request without ``:method`` is malformed:
    stream error PROTOCOL_ERROR."""
    await h2.send_headers(1, [f for f in h2.request() if f[0] != ":method"])
    await h2.expect_stream_error(1, E.PROTOCOL_ERROR)


async def test_8_1_2_3_3_missing_scheme(h2: RawH2Client) -> None:
    """http2/8.1.2.3/3 — RFC 9113 §8.3.1: a request without ``:scheme`` is malformed:
    stream error PROTOCOL_ERROR."""
    await h2.send_headers(1, [f for f in h2.request() if f[0] != ":scheme"])
    await h2.expect_stream_error(1, E.PROTOCOL_ERROR)


async def test_8_1_2_3_4_missing_path(h2: RawH2Client) -> None:
    """http2/8.1.2.3/4 — RFC 9113 §8.3.1: a request without ``:path`` is malformed:
    stream error PROTOCOL_ERROR."""
    await h2.send_headers(1, [f for f in h2.request() if f[0] != ":path"])
    await h2.expect_stream_error(1, E.PROTOCOL_ERROR)


async def test_8_1_2_3_5_duplicate_method(h2: RawH2Client) -> None:
    """http2/8.1.2.3/5 — RFC 9113 §8.3.1: exactly one ``:method``; a duplicate makes the
    request malformed: stream error PROTOCOL_ERROR."""
    await h2.send_headers(1, h2.request(extra=[(":method", "GET")]))
    await h2.expect_stream_error(1, E.PROTOCOL_ERROR)


async def test_8_1_2_3_6_duplicate_scheme(h2: RawH2Client) -> None:
    """http2/8.1.2.3/6 — RFC 9113 §8.3.1: exactly one ``:scheme``; a duplicate makes the
    request malformed: stream error PROTOCOL_ERROR."""
    await h2.send_headers(1, h2.request(extra=[(":scheme", "http")]))
    await h2.expect_stream_error(1, E.PROTOCOL_ERROR)


async def test_8_1_2_3_7_duplicate_path(h2: RawH2Client) -> None:
    """http2/8.1.2.3/7 — RFC 9113 §8.3.1: exactly one ``:path``; a duplicate makes the
    request malformed: stream error PROTOCOL_ERROR."""
    await h2.send_headers(1, h2.request(extra=[(":path", "/")]))
    await h2.expect_stream_error(1, E.PROTOCOL_ERROR)


async def test_8_1_2_6_1_content_length_differs_from_data(h2: RawH2Client) -> None:
    """http2/8.1.2.6/1 — RFC 9113 §8.1.1: a content-length that differs from the DATA
    payload length makes the request malformed: stream error PROTOCOL_ERROR."""
    await h2.send_headers(1, h2.request("POST", extra=[("content-length", "1")]), end_stream=False)
    await h2.send_data(1, b"test")
    await h2.expect_stream_error(1, E.PROTOCOL_ERROR)


async def test_8_1_2_6_2_content_length_differs_from_multiple_data(h2: RawH2Client) -> None:
    """http2/8.1.2.6/2 — RFC 9113 §8.1.1: as 8.1.2.6/1, the body spread over two DATA
    frames: stream error PROTOCOL_ERROR."""
    await h2.send_headers(1, h2.request("POST", extra=[("content-length", "1")]), end_stream=False)
    await h2.send_data(1, b"test", end_stream=False)
    await h2.send_data(1, b"test")
    await h2.expect_stream_error(1, E.PROTOCOL_ERROR)


# -- 8.2 Server Push (RFC 9113 §8.4) -------------------------------------------------------


async def test_8_2_1_push_promise_from_client(h2: RawH2Client) -> None:
    """http2/8.2/1 — RFC 9113 §8.4: a client cannot push; a server MUST treat a
    PUSH_PROMISE as a connection error (PROTOCOL_ERROR)."""
    block = h2.encode(h2.request())
    await h2.send_frame(
        PushPromiseFrame(1, promised_stream_id=3, data=block, flags={"END_HEADERS"})
    )
    await h2.expect_connection_error(E.PROTOCOL_ERROR)


# ======================================================================================
# hpack — RFC 7541 decoding errors (COMPRESSION_ERROR connection errors, RFC 9113 §4.3)
# ======================================================================================


async def _send_bad_block(h2: RawH2Client, block: bytes) -> None:
    await h2.send_headers(1, block=block)
    await h2.expect_connection_error(E.COMPRESSION_ERROR)


async def test_hpack_2_3_3_1_index_beyond_both_tables(h2: RawH2Client) -> None:
    """hpack/2.3.3/1 — RFC 7541 §2.3.3: an index beyond the static and dynamic tables
    (126) MUST be a decoding error: COMPRESSION_ERROR."""
    await _send_bad_block(h2, h2.encode(h2.request()) + hpack_int(126, 7, 0x80))


async def test_hpack_4_2_1_table_size_update_at_end_of_block(h2: RawH2Client) -> None:
    """hpack/4.2/1 — RFC 7541 §4.2: a dynamic table size update MUST come at the start
    of a field block; one at the end is a decoding error: COMPRESSION_ERROR."""
    await _send_bad_block(h2, h2.encode(h2.request()) + hpack_int(1, 5, 0x20))


async def test_hpack_5_2_1_huffman_padding_longer_than_7_bits(h2: RawH2Client) -> None:
    """hpack/5.2/1 — RFC 7541 §5.2: Huffman padding longer than 7 bits MUST be a decoding
    error: COMPRESSION_ERROR (``x-test: test`` with an extra 0xff octet)."""
    value = _huffman.encode(b"test") + b"\xff"
    await _send_bad_block(h2, h2.encode(h2.request()) + x_test_with_huffman_value(value))


async def test_hpack_5_2_2_huffman_padded_with_zeros(h2: RawH2Client) -> None:
    """hpack/5.2/2 — RFC 7541 §5.2: padding that is not the EOS prefix (all ones) MUST be
    a decoding error: COMPRESSION_ERROR (``test`` padded with zero bits)."""
    value = b"\x49\x50\x90"  # "test" is 20 code bits; the last 4 bits should be 1111
    await _send_bad_block(h2, h2.encode(h2.request()) + x_test_with_huffman_value(value))


async def test_hpack_5_2_3_huffman_containing_eos(h2: RawH2Client) -> None:
    """hpack/5.2/3 — RFC 7541 §5.2: a Huffman string containing the EOS symbol MUST be a
    decoding error: COMPRESSION_ERROR."""
    value = b"\xff\xff\xff\xfd\x25\x42\x7f"  # 30 one-bits (EOS), then "test" bits
    await _send_bad_block(h2, h2.encode(h2.request()) + x_test_with_huffman_value(value))


async def test_hpack_6_1_1_indexed_field_with_index_0(h2: RawH2Client) -> None:
    """hpack/6.1/1 — RFC 7541 §6.1: index 0 in an indexed field MUST be a decoding error:
    COMPRESSION_ERROR."""
    await _send_bad_block(h2, h2.encode(h2.request()) + b"\x80")


async def test_hpack_6_3_1_table_size_update_above_settings(h2: RawH2Client) -> None:
    """hpack/6.3/1 — RFC 7541 §6.3: a size update above the SETTINGS_HEADER_TABLE_SIZE the
    decoder announced (default 4096) MUST be a decoding error: COMPRESSION_ERROR."""
    limit = h2.server_settings.get(Setting.HEADER_TABLE_SIZE, 4096)
    await _send_bad_block(h2, hpack_int(limit + 1, 5, 0x20) + h2.encode(h2.request()))
