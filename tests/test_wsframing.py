"""The WebSocket framers (quicserve/streams/wsframing.py) side by side, sans-IO: the frames
the two engines write are the same bytes, and both parse no more than ``room`` messages.

The end-to-end and conformance tests run every case on both engines through a server
(tests/test_websocket_*.py); the fuzz targets feed both the same bytes
(tests/fuzz/test_fuzz_websocket.py). These pin the framers' own contract, byte for byte.
"""

from __future__ import annotations

import pytest
from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, TextMessage

from quicserve.streams.wsengine import framer_factory
from quicserve.streams.wsframing import Failed, Framer, WsprotoFramer, close_payload

from .helpers import WS_ENGINES

MAX = 1 << 20


def _framer(engine: str) -> Framer:
    return framer_factory(engine)(MAX, None)


@pytest.mark.client("websockets")
@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_data_frames_are_the_same_bytes_on_both_engines(size: int) -> None:
    """RFC 6455 §5.2: the 7-bit, 16-bit and 64-bit lengths, at each boundary."""
    wsproto, websockets = _framer("wsproto"), _framer("websockets")
    payload = bytes(range(256)) * (size // 256 + 1)
    assert websockets.send_bytes(payload[:size]) == bytes(wsproto.send_bytes(payload[:size]))
    text = ("é" * size)[: size // 2]
    assert websockets.send_text(text) == bytes(wsproto.send_text(text))
    assert websockets.send_ping(b"ping") == bytes(wsproto.send_ping(b"ping"))


@pytest.mark.client("websockets")
@pytest.mark.parametrize(
    ("code", "reason"),
    [(1000, ""), (1001, "server shutting down"), (4321, "done here"), (1005, ""), (1006, "x")],
)
def test_close_frames_are_the_same_bytes_on_both_engines(code: int, reason: str) -> None:
    """The local-only codes 1005 and 1006 (§7.4.1) go out as 1000, as wsproto writes them."""
    wsproto, websockets = _framer("wsproto"), _framer("websockets")
    ours = websockets.send_close(code, reason)
    assert ours == bytes(wsproto.send_close(code, reason))
    assert ours[2:] == close_payload(code, reason)
    # One close only: the second is nothing, on both.
    assert websockets.send_close(1000, "") == b"" == bytes(wsproto.send_close(1000, ""))


def test_a_long_close_reason_is_cut_on_a_whole_character() -> None:
    payload = close_payload(1000, "é" * 100)  # 200 bytes of UTF-8
    assert len(payload) == 2 + 122  # 123 would split the 62nd "é"
    assert payload[2:].decode() == "é" * 61


@pytest.mark.parametrize("engine", WS_ENGINES)
def test_no_more_than_room_messages_are_parsed(engine: str) -> None:
    """--ws-max-queue: ten messages in one read, room for three: three come out, the rest
    waits unparsed, and comes out as room is given."""
    client = Connection(ConnectionType.CLIENT)
    wire = b"".join(client.send(TextMessage(data=f"m{i}")) for i in range(9))
    wire += client.send(BytesMessage(data=b"last"))
    framer = _framer(engine)
    framer.receive_data(wire)
    events, more = framer.next_events(3)
    assert (events, more) == (["m0", "m1", "m2"], True)
    events, more = framer.next_events(5)
    assert (events, more) == (["m3", "m4", "m5", "m6", "m7"], True)
    events, more = framer.next_events(5)
    assert events == ["m8", b"last"]
    assert framer.next_events(5) == ([], False)


@pytest.mark.parametrize("engine", WS_ENGINES)
def test_a_frame_split_anywhere_is_one_message(engine: str) -> None:
    """Heads and payloads cut at every byte (a 16-bit length, a masking key, the data)."""
    client = Connection(ConnectionType.CLIENT)
    wire = client.send(BytesMessage(data=b"x" * 300)) + client.send(TextMessage(data="after"))
    for cut in range(1, len(wire)):
        framer = _framer(engine)
        framer.receive_data(wire[:cut])
        first, _ = framer.next_events(5)
        framer.receive_data(wire[cut:])
        second, _ = framer.next_events(5)
        assert first + second == [b"x" * 300, "after"], cut


@pytest.mark.parametrize("engine", WS_ENGINES)
def test_a_failure_is_reported_not_written(engine: str) -> None:
    """Invalid UTF-8 (§8.1): a Failed event with 1007, and no close frame yet: the stream
    decides when it goes out (after the app answered what came before)."""
    client = Connection(ConnectionType.CLIENT)
    framer = _framer(engine)
    framer.receive_data(client.send(TextMessage(data="ok")) + client.send(BytesMessage(data=b"")))
    framer.receive_data(
        b"\x81\x82abcd" + bytes(a ^ b for a, b in zip(b"\xff\xfe", b"ab", strict=True))
    )
    events, _ = framer.next_events(5)
    assert events[:2] == ["ok", b""]
    assert isinstance(events[2], Failed) and events[2].code == 1007
    assert framer.data_to_send() == b""
    assert framer.send_close(1007, "invalid UTF-8")[:4] == b"\x88\x0f\x03\xef"


@pytest.mark.parametrize("engine", WS_ENGINES)
@pytest.mark.parametrize("fragmented", [False, True], ids=["whole", "fragmented"])
def test_ws_max_size_counts_utf8_bytes_of_text(engine: str, fragmented: bool) -> None:
    """--ws-max-size is bytes on both engines: multi-byte text at the limit passes, one
    byte over it (far fewer characters than the limit) is 1009."""
    limit = 1000
    framer = framer_factory(engine)(limit, None)
    at_limit = "é" * (limit // 2)  # 500 characters, 1000 bytes
    over = at_limit + "a"  # 501 characters, 1001 bytes
    client = Connection(ConnectionType.CLIENT)
    if fragmented:
        wire = b"".join(
            client.send(TextMessage(data=part, message_finished=last))
            for part, last in ((at_limit[:100], False), (at_limit[100:], True))
        )
        wire += b"".join(
            client.send(TextMessage(data=part, message_finished=last))
            for part, last in ((over[:300], False), (over[300:], True))
        )
    else:
        wire = client.send(TextMessage(data=at_limit)) + client.send(TextMessage(data=over))
    framer.receive_data(wire)
    events, _ = framer.next_events(5)
    assert events[0] == at_limit
    assert len(events) == 2 and isinstance(events[1], Failed), events[1:]
    assert events[1].code == 1009
    # What is held stays within the limit after the failure too (the fuzz target's bound:
    # the wsproto framer once kept counting a failed fragmented message, past the limit).
    assert framer.held() <= limit


@pytest.mark.parametrize("engine", WS_ENGINES)
def test_held_counts_bytes_of_a_fragmented_text(engine: str) -> None:
    framer = _framer(engine)
    client = Connection(ConnectionType.CLIENT)
    framer.receive_data(client.send(TextMessage(data="é" * 10, message_finished=False)))
    assert framer.next_events(5) == ([], False)
    assert framer.held() == 20


def test_the_default_engine_of_the_pure_python_install_is_wsproto(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """auto without websockets importable: wsproto, whatever else is installed."""
    import sys

    from quicserve.streams import wsengine

    monkeypatch.setattr(wsengine, "_resolved", {})
    monkeypatch.setitem(sys.modules, "websockets", None)  # "import websockets" fails
    monkeypatch.setitem(sys.modules, "websockets.version", None)
    monkeypatch.setitem(sys.modules, "websockets.speedups", None)
    assert wsengine.framer_factory("auto") is WsprotoFramer
    with pytest.raises(wsengine.EngineUnavailable, match="not installed"):
        wsengine.framer_factory("websockets")
