"""HTTP/1.1 protocol in memory, with an explicit clock: no sockets, no event loop.

Every case runs on each HTTP/1.1 engine (h11, httptools): the ``make`` fixture.
"""

from __future__ import annotations

import sys
from typing import Any

import pytest

from quicserve.config import Config
from quicserve.events import (
    BodyEnded,
    BodyReceived,
    ConnectionClosed,
    PeerHalfClosed,
    RequestReceived,
    StreamReset,
)
from quicserve.protocol.engines import HTTP1Factory, http1_engine
from quicserve.protocol.http1 import H2CUpgrade


@pytest.fixture
def make(h1_engine: str) -> HTTP1Factory:
    """The protocol class of the engine under test (every case runs on each)."""
    return http1_engine(h1_engine)[1]


def events(protocol: Any) -> list[object]:
    out = []
    while (event := protocol.next_event()) is not None:
        out.append(event)
    return out


def test_request_fields_and_response_bytes(make: HTTP1Factory) -> None:
    p = make(Config(), now=0.0)
    p.receive_data(b"GET /a?b=1 HTTP/1.1\r\nHost: example\r\nX-One: 1\r\n\r\n", 1.0)
    request, ended = events(p)
    assert isinstance(request, RequestReceived)
    assert (request.stream_id, request.method, request.raw_path) == (1, b"GET", b"/a?b=1")
    assert request.authority == b"example"
    assert (b"x-one", b"1") in request.headers
    assert ended == BodyEnded(1, [])
    p.send_response(1, 200, [(b"content-length", b"2")])
    p.send_data(1, b"ok", end_stream=True)
    assert p.data_to_send() == b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
    p.stream_done(1, 2.0)
    assert p.get_timer() == 2.0 + Config().keep_alive_timeout
    assert not p.closed


def test_pipelined_request_waits_for_previous_response(make: HTTP1Factory) -> None:
    p = make(Config(), now=0.0)
    p.receive_data(b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\nGET /2 HTTP/1.1\r\nHost: x\r\n\r\n", 1.0)
    first = events(p)
    assert [type(e) for e in first] == [RequestReceived, BodyEnded]
    assert p.open_streams == 1
    p.send_response(1, 204, [], end_stream=True)
    assert events(p) == []  # /2 is not parsed before stream 1 is done
    p.stream_done(1, 2.0)
    second = events(p)
    assert isinstance(second[0], RequestReceived) and second[0].raw_path == b"/2"
    assert second[0].stream_id == 2


def test_body_backpressure_through_ack(make: HTTP1Factory) -> None:
    p = make(Config(), now=0.0)
    p.receive_data(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 200000\r\n\r\n", 0.0)
    p.receive_data(b"a" * 100_000, 0.0)
    received = [e for e in events(p) if isinstance(e, BodyReceived)]
    assert sum(len(e.data) for e in received) == 100_000
    assert not p.wants_read()  # more than 64 KiB unconsumed
    p.ack_body(1, 100_000)
    assert p.wants_read()


def test_smuggling_shape_rejected(make: HTTP1Factory) -> None:
    p = make(Config(), now=0.0)
    p.receive_data(
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        0.0,
    )
    assert p.data_to_send().startswith(b"HTTP/1.1 400 ")
    assert p.closed
    assert events(p) == [ConnectionClosed()]


def _feed_bytewise(make: HTTP1Factory, data: bytes) -> tuple[list[object], bytes]:
    p = make(Config(), now=0.0)
    out = b""
    for i in range(len(data)):
        p.receive_data(data[i : i + 1], 0.0)
        out += p.data_to_send()
    return events(p), out


def test_strict_framing_holds_when_bytes_arrive_one_at_a_time(make: HTTP1Factory) -> None:
    """The bare CR/LF scan of a head resumes where it stopped: a CRLF or a CRLFCRLF
    split between two reads is still recognised, a bare LF is still found."""
    head = b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    body = b'5;a="b c";d=e\r\nhello\r\n0\r\nX-T: 1\r\n\r\n'
    got, out = _feed_bytewise(make, head + body)
    assert [type(e) for e in got] == [RequestReceived] + [BodyReceived] * 5 + [BodyEnded]
    assert got[-1] == BodyEnded(1, [(b"x-t", b"1")]) and out == b""
    for bad in (
        head.replace(b"Host: x\r\n", b"Host: x\n"),
        head.replace(b"\r\n\r\n", b"\r\n\n"),
        head.replace(b"Host: x\r\n", b"Host: x\r\n \r\n"),
        head + body.replace(b"X-T: 1\r\n", b"X-T: 1\n"),
        head + body.replace(b";d=e", b";d=e\r"),
    ):
        got, out = _feed_bytewise(make, bad)
        assert out.startswith(b"HTTP/1.1 400 "), (bad, out)
        assert got[-1] == ConnectionClosed(), bad


def test_header_timeout_sends_408_and_idle_close_is_silent(make: HTTP1Factory) -> None:
    config = Config(header_read_timeout=10.0, keep_alive_timeout=5.0)
    p = make(config, now=0.0)
    assert p.get_timer() == 10.0
    p.receive_data(b"GET / HTTP/1.1\r\nHo", 1.0)
    p.handle_timer(9.0)
    assert not p.closed
    p.handle_timer(10.0)
    assert p.data_to_send().startswith(b"HTTP/1.1 408 ")
    assert p.closed

    q = make(config, now=0.0)
    q.handle_timer(10.0)
    assert q.closed and q.data_to_send() == b""


def test_peer_eof_after_a_complete_request_is_a_half_close(make: HTTP1Factory) -> None:
    # RFC 9112 §9.6: the peer may still read; the answer goes out, then the close.
    p = make(Config(), now=0.0)
    p.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 0.0)
    events(p)
    p.receive_data(b"", 1.0)
    assert events(p) == [PeerHalfClosed(1)]
    assert not p.closed
    p.send_response(1, 200, [(b"content-length", b"2")])
    p.send_data(1, b"ok", end_stream=True)
    p.stream_done(1, 1.0)
    assert p.data_to_send().endswith(b"\r\n\r\nok")
    assert events(p) == [ConnectionClosed()] and p.closed


def test_peer_eof_during_request_resets_stream(make: HTTP1Factory) -> None:
    p = make(Config(), now=0.0)
    p.receive_data(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nab", 0.0)
    events(p)
    p.receive_data(b"", 1.0)
    assert events(p) == [StreamReset(1), ConnectionClosed()]
    assert p.data_to_send() == b""  # no 400: nothing was malformed, the peer left


@pytest.mark.parametrize("partial", [b"", b"GET / HTTP/1.1\r\nHo", b"GET / HT"])
def test_peer_eof_with_no_complete_request_closes_silently(
    make: HTTP1Factory, partial: bytes
) -> None:
    p = make(Config(), now=0.0)
    if partial:
        p.receive_data(partial, 0.0)
    p.receive_data(b"", 1.0)
    assert events(p) == [ConnectionClosed()] and p.closed
    assert p.data_to_send() == b""


def test_h2c_upgrade_only_on_cleartext_and_without_body(make: HTTP1Factory) -> None:
    upgrade = (
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
    )
    p = make(Config(), now=0.0, allow_h2c=True)
    p.receive_data(upgrade, 0.0)
    (event,) = events(p)
    assert isinstance(event, H2CUpgrade) and event.request.raw_path == b"/"
    assert not p.wants_read()
    tls = make(Config(), now=0.0, allow_h2c=False)
    tls.receive_data(upgrade, 0.0)
    assert isinstance(events(tls)[0], RequestReceived)


def test_shutdown_closes_idle_and_marks_busy_connection_close(make: HTTP1Factory) -> None:
    idle = make(Config(), now=0.0)
    idle.shutdown()
    assert idle.closed
    busy = make(Config(), now=0.0)
    busy.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 0.0)
    events(busy)
    busy.shutdown()
    assert not busy.closed
    busy.send_response(1, 200, [(b"content-length", b"0")], end_stream=True)
    assert b"connection: close" in busy.data_to_send().lower()
    busy.stream_done(1, 1.0)
    assert busy.closed


def test_head_response_has_no_body(make: HTTP1Factory) -> None:
    p = make(Config(), now=0.0)
    p.receive_data(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n", 0.0)
    events(p)
    p.send_response(1, 200, [(b"content-length", b"5")])
    p.send_data(1, b"hello", end_stream=True)
    assert p.data_to_send() == b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n"


# -- the field-section limit (Config.max_header_bytes) ---------------------------------


def _head(size: int) -> bytes:
    """A GET whose head measures exactly ``size`` by the one rule of every protocol:
    :method and :path stand for the request line, and each line counts 32 octets."""
    used = (7 + 3 + 32) + (5 + 1 + 32) + (4 + 1 + 32) + (5 + 32)  # :method :path host x-pad
    return b"GET / HTTP/1.1\r\nhost: x\r\nx-pad: %s\r\n\r\n" % (b"p" * (size - used))


def test_head_size_limit_counts_like_http2(make: HTTP1Factory) -> None:
    config = Config(max_header_bytes=2000)
    for size, served in ((1999, True), (2000, True), (2001, False)):
        p = make(config, now=0.0)
        p.receive_data(_head(size), 1.0)
        got = events(p)
        if served:
            assert isinstance(got[0], RequestReceived), size
        else:
            assert got == [ConnectionClosed()], size
            assert p.data_to_send().startswith(b"HTTP/1.1 431 "), size


def test_trailers_obey_the_same_limit(make: HTTP1Factory) -> None:
    config = Config(max_header_bytes=2000)
    head = b"POST /u HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n"
    for size, served in ((2000, True), (2001, False)):
        p = make(config, now=0.0)
        trailer = b"x-pad: " + b"p" * (size - 5 - 32) + b"\r\n\r\n"
        p.receive_data(head + trailer, 1.0)
        got = events(p)
        assert isinstance(got[0], RequestReceived)
        if served:
            assert got[2] == BodyEnded(1, [(b"x-pad", b"p" * (size - 37))])
        else:
            # The app sees a reset; no response had started, so the peer gets 431.
            assert got[2:] == [StreamReset(1), ConnectionClosed()]
            assert p.data_to_send().startswith(b"HTTP/1.1 431 ")


# -- response framing: the same bytes from every engine (h11's rules) ------------------

_GET = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
_FRAMING_CASES = {
    # No Content-Length: chunked for HTTP/1.1 ...
    "chunked": (
        _GET,
        [("send_response", 200, []), ("send_data", b"ab"), ("send_data", b"", True)],
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n",
        False,
    ),
    # ... and delimited by the close for HTTP/1.0 (RFC 9112 §6.3).
    "http/1.0-until-close": (
        b"GET / HTTP/1.0\r\n\r\n",
        [("send_response", 200, []), ("send_data", b"ab", True)],
        b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nab",
        True,
    ),
    # HTTP/1.0 closes even when it asks to keep alive (h11's rule).
    "http/1.0-keep-alive": (
        b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
        [("send_response", 200, [(b"content-length", b"2")]), ("send_data", b"ab", True)],
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nConnection: close\r\n\r\nab",
        True,
    ),
    # RFC 9110 §9.3.2: HEAD gets the GET answer's fields and no content.
    "head": (
        b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n",
        [("send_response", 200, []), ("send_data", b"ab", True)],
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        False,
    ),
    "204": (_GET, [("send_response", 204, [], True)], b"HTTP/1.1 204 No Content\r\n\r\n", False),
    "request-close": (
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        [("send_response", 200, [(b"content-length", b"2")]), ("send_data", b"ab", True)],
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nConnection: close\r\n\r\nab",
        True,
    ),
    "response-close": (
        _GET,
        [("send_response", 200, [(b"connection", b"close"), (b"content-length", b"0")], True)],
        b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
        True,
    ),
    "trailers": (
        b"GET / HTTP/1.1\r\nHost: x\r\nTE: trailers\r\n\r\n",
        [("send_response", 200, []), ("send_data", b"ab"), ("send_trailers", [(b"x-t", b"1")])],
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\nx-t: 1\r\n\r\n",
        False,
    ),
    "100-continue": (
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n",
        [
            ("send_informational", 100, []),
            ("send_response", 200, [(b"content-length", b"0")], True),
        ],
        b"HTTP/1.1 100 \r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
        False,
    ),
    "103-early-hints": (
        _GET,
        [
            ("send_informational", 103, [(b"link", b"</a>")]),
            ("send_response", 200, [(b"content-length", b"0")], True),
        ],
        b"HTTP/1.1 103 \r\nlink: </a>\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
        False,
    ),
}


@pytest.mark.parametrize("case", sorted(_FRAMING_CASES))
def test_response_framing_is_the_same_on_every_engine(make: HTTP1Factory, case: str) -> None:
    request, calls, expected, closes = _FRAMING_CASES[case]
    p = make(Config(), now=0.0)
    p.receive_data(request, 0.0)
    events(p)
    for method, *args in calls:
        getattr(p, method)(1, *args)
    assert p.data_to_send() == expected
    p.stream_done(1, 1.0)
    assert p.closed is closes


@pytest.mark.parametrize(
    "field",
    [(b"x-a", b"1\r\nset-cookie: evil"), (b"x-a", b"a\nb"), (b"x a", b"1"), (b"x-a", b"\x00")],
)
def test_response_fields_that_could_split_a_response_are_refused(
    make: HTTP1Factory, field: tuple[bytes, bytes]
) -> None:
    p = make(Config(), now=0.0)
    p.receive_data(_GET, 0.0)
    events(p)
    with pytest.raises(Exception, match=r"(?i)header|field"):
        p.send_response(1, 200, [field, (b"content-length", b"0")], True)
    assert p.data_to_send() == b""
    assert events(p) == [StreamReset(1), ConnectionClosed()]


def test_any_token_method_is_served(make: HTTP1Factory) -> None:
    """RFC 9110 §9.1: a method is a token; llhttp knows a fixed list, h11 takes any."""
    p = make(Config(), now=0.0)
    p.receive_data(b"PURGEX /a HTTP/1.1\r\nHost: x\r\n\r\n", 0.0)
    request = events(p)[0]
    assert isinstance(request, RequestReceived) and request.method == b"PURGEX"
    p.send_response(1, 204, [], end_stream=True)
    p.stream_done(1, 1.0)
    p.receive_data(b"get /b HTTP/1.1\r\nHost: x\r\n\r\n", 1.0)
    request = events(p)[0]
    assert isinstance(request, RequestReceived) and request.method == b"get"
    assert request.raw_path == b"/b"


# -- choosing the engine (Config.http1_engine) -------------------------------------------


def test_engine_choice_and_a_missing_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    from quicserve.config import ConfigError, check
    from quicserve.protocol.engines import EngineUnavailable
    from quicserve.protocol.http1 import H1Protocol

    assert http1_engine("h11") == ("h11", H1Protocol)
    with pytest.raises(EngineUnavailable):
        http1_engine("zttp")
    with pytest.raises(ConfigError, match="--http1-engine"):
        check(Config(http1_engine="zttp"))  # type: ignore[arg-type]
    # Without httptools: "auto" falls back to h11, naming it is a one-line startup error.
    monkeypatch.setitem(sys.modules, "httptools", None)
    monkeypatch.setitem(sys.modules, "quicserve.protocol.http1_httptools", None)
    resolve = http1_engine.__wrapped__  # not the per-process cache
    assert resolve("auto") == ("h11", H1Protocol)
    with pytest.raises(EngineUnavailable, match="pip install"):
        resolve("httptools")
    with pytest.raises(ConfigError) as refused:
        check(Config(http1_engine="httptools"))
    assert "\n" not in str(refused.value) and "quicserve[fast]" in str(refused.value)


@pytest.mark.parametrize(
    "line",
    [
        b"GET / RTSP/1.0",  # llhttp reads RTSP request lines
        b"GET  / HTTP/1.1",  # and runs of spaces
        b"GET / HTTP/1.1 ",
        b"GET / HTTP/1.10",
        b"GET /a b HTTP/1.1",
        b"G\x00T / HTTP/1.1",
    ],
)
def test_request_lines_outside_rfc_9112_get_400(make: HTTP1Factory, line: bytes) -> None:
    p = make(Config(), now=0.0)
    p.receive_data(line + b"\r\nHost: x\r\n\r\n", 0.0)
    assert p.data_to_send().startswith(b"HTTP/1.1 400 ")
    assert events(p) == [ConnectionClosed()]


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_large_body_piece_is_handed_out_apart_not_copied(
    make: HTTP1Factory, chunked: bool
) -> None:
    """A 1 MiB body in one message is not joined to its head (a 1 MiB copy): the driver
    gets the head, then the very same body object; a small response stays one piece."""
    p = make(Config(), now=0.0)
    p.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 0.0)
    events(p)
    body = bytes(range(256)) * 4096
    framing = [] if chunked else [(b"content-length", b"%d" % len(body))]
    p.send_response(1, 200, framing)
    p.send_data(1, body, end_stream=True)
    pieces = [p.data_to_send()]
    assert p.split_output  # the driver must call again
    while p.split_output:
        pieces.append(p.data_to_send())
    assert p.data_to_send() == b""
    wire = b"".join(pieces)
    head, _, rest = wire.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert rest == (b"100000\r\n" + body + b"\r\n0\r\n\r\n" if chunked else body)
    if not chunked or make.__name__ != "H1Protocol":  # h11 frames a chunk in one bytes
        assert any(piece is body for piece in pieces)
    p.stream_done(1, 0.0)
    p.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 0.0)
    events(p)
    p.send_response(2, 200, [(b"content-length", b"2")])
    p.send_data(2, b"ok", end_stream=True)
    small = p.data_to_send()
    assert small.endswith(b"\r\n\r\nok") and not p.split_output


def test_httptools_request_event_is_the_dataclass_one() -> None:
    """The httptools engine makes its RequestReceived without the frozen dataclass's
    __init__ (per request, it is the costlier part): the same object, field for field."""
    pytest.importorskip("httptools")
    from quicserve.events import RequestReceived
    from quicserve.protocol.http1_httptools import _request_received

    headers = [(b"host", b"x"), (b"expect", b"100-continue")]
    made = _request_received(3, b"PUT", b"/a?b", headers, b"x", True, False)
    assert made == RequestReceived(
        stream_id=3,
        method=b"PUT",
        raw_path=b"/a?b",
        headers=headers,
        authority=b"x",
        expect_continue=True,
    )
    assert made.headers is headers
    made = _request_received(4, b"GET", b"/", [], None, False, True)
    assert made == RequestReceived(4, b"GET", b"/", [], websocket_upgrade=True)
