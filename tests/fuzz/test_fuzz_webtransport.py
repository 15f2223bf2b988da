"""Fuzzing quicserve/protocol/webtransport.py: the CONNECT stream's capsules and the
session's flow-control books, fed as a hostile client would.

Capsules of every type (known ones with right and wrong lengths and values, unknown ones
of any size), cut at random points, then random bytes; client streams opened, fed, reset
and consumed at random. Invariants: nothing but :class:`SessionError` (the session is
aborted) or :class:`StreamRefused` (one stream refused) ever escapes; the capsule buffer
never holds more than ``MAX_CAPSULE`` bytes; what the session receives never passes the
credit it granted with flow control on; the credit it grants never goes down, never runs
more than one window ahead of what the app consumed, and the stream limit likewise.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from quicserve.protocol.webtransport import (
    CAPSULE_CLOSE_SESSION,
    CAPSULE_DATA_BLOCKED,
    CAPSULE_DRAIN_SESSION,
    CAPSULE_MAX_DATA,
    CAPSULE_MAX_STREAMS_BIDI,
    CAPSULE_MAX_STREAMS_UNI,
    DRAFT02,
    DRAFT07,
    DRAFT14,
    DRAFT15,
    MAX_CAPSULE,
    SETTINGS_WT_INITIAL_MAX_DATA,
    SessionError,
    SessionState,
    StreamRefused,
    encode_capsule,
    encode_varint,
)

from .support import fuzz_settings

_TYPES = [
    CAPSULE_CLOSE_SESSION,
    CAPSULE_DRAIN_SESSION,
    CAPSULE_MAX_DATA,
    CAPSULE_MAX_STREAMS_BIDI,
    CAPSULE_MAX_STREAMS_UNI,
    CAPSULE_DATA_BLOCKED,
    0x190B4D3E,  # WT_MAX_STREAM_DATA: HTTP/2 only
    0x21,
    0x2A,
    0x3FFFFFFFFFFFFFFF,
]

varints = st.integers(0, (1 << 62) - 1).map(encode_varint)
capsules = st.one_of(
    st.builds(encode_capsule, st.sampled_from(_TYPES), st.binary(max_size=64)),
    st.builds(encode_capsule, st.sampled_from(_TYPES), varints),
    st.builds(
        lambda t, n: encode_varint(t) + encode_varint(n),
        st.sampled_from(_TYPES),
        st.integers(0, 1 << 20),
    ),
    st.binary(max_size=32),
)


@fuzz_settings(300)
@given(
    dialect=st.sampled_from([DRAFT02, DRAFT07, DRAFT14, DRAFT15]),
    stream=st.lists(capsules, max_size=12).map(b"".join),
    cuts=st.lists(st.integers(1, 200), max_size=20),
)
def test_capsule_parser_bounded(dialect: str, stream: bytes, cuts: list[int]) -> None:
    state = SessionState(dialect, {SETTINGS_WT_INITIAL_MAX_DATA: 10}, 1000, 4)
    pos = 0
    pieces = []
    for cut in cuts:
        pieces.append(stream[pos : pos + cut])
        pos += cut
    pieces.append(stream[pos:])
    for piece in pieces:
        try:
            state.feed(piece)
        except SessionError:
            return  # the session is aborted: nothing more is read
        assert len(state._buffer) <= MAX_CAPSULE
        assert state.send_credit() >= 0


# one action: (kind, stream index, size)
actions = st.lists(
    st.tuples(
        st.sampled_from(["data", "end", "reset", "consume"]),
        st.integers(0, 12),
        st.integers(0, 900),
    ),
    max_size=60,
)


@fuzz_settings(300)
@given(dialect=st.sampled_from([DRAFT02, DRAFT14, DRAFT15]), steps=actions)
def test_session_books_keep_their_bounds(dialect: str, steps: list[tuple[str, int, int]]) -> None:
    window, max_streams = 2000, 4
    state = SessionState(dialect, {SETTINGS_WT_INITIAL_MAX_DATA: 10}, window, max_streams)
    state.accepted = True
    held: dict[int, int] = {}  # stream -> bytes received and not consumed
    ended: set[int] = set()
    last_max = state.max_data
    for kind, index, size in steps:
        stream_id = index * 4 + 2 * (index % 2)  # client streams: uni and bidi
        try:
            if kind in ("data", "end") and stream_id not in ended:
                state.stream_data(stream_id, size, kind == "end")
                held[stream_id] = held.get(stream_id, 0) + size
                if kind == "end":
                    ended.add(stream_id)
            elif kind == "reset" and stream_id in held:
                # (A reset stream is closed once the app holds none of its bytes.)
                state.stream_reset(stream_id, held=held[stream_id] > 0)
                ended.add(stream_id)
            elif kind == "consume" and held.get(stream_id):
                amount = min(size, held[stream_id])
                held[stream_id] -= amount
                state.stream_consumed(stream_id, amount, held[stream_id] == 0)
        except SessionError:
            assert state.flow_control
            return
        except StreamRefused:
            assert not state.flow_control
            continue
        if state.flow_control:
            assert state.received <= state.max_data
            assert state.max_data >= last_max
            assert state.max_data <= state.consumed + window
            for bidi in (0, 1):
                assert state.opened[bidi] <= state.max_streams[bidi]
                assert state.max_streams[bidi] <= state.closed[bidi] + max_streams
        else:
            for bidi in (0, 1):
                assert state.opened[bidi] - state.closed[bidi] <= max_streams
        last_max = state.max_data
        assert len(state.out) < 64 * 1024
