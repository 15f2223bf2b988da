"""Fuzzing the HTTP/1.1 engines (quicserve/protocol/http1.py on h11, http1_httptools.py on
llhttp; every case runs on each) with request heads and bodies built from parts,
pipelined, cut at random points, and with raw byte mutations.

The harness plays a well-behaved connection driver and app: it feeds bytes only while
``wants_read()``, acknowledges every body chunk, answers each request when its body ends
(sometimes at once, before the body), switches to a tunnel on a WebSocket upgrade, and
fires timers when they are due. Invariants: no exception escapes, every request ends,
the engine's buffer stays within the head limit plus the read-ahead, nothing is read while the
protocol says not to, and the server's bytes parse with an h11 client.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import h11
import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

from quicserve.config import Config
from quicserve.events import (
    BodyEnded,
    BodyReceived,
    ConnectionClosed,
    PeerHalfClosed,
    RequestReceived,
    StreamReset,
)
from quicserve.protocol import http1
from quicserve.protocol.engines import http1_engine
from quicserve.protocol.http1 import H1Protocol, H2CUpgrade

from ..conftest import H1_ENGINES
from .support import fuzz_settings, mostly, mutated, splits, stat

T0 = 1000.0

# -- request parts ----------------------------------------------------------------------

_TOKEN = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_ODD = [b"\x00", b"\r", b"\n", b"\t", b" ", b"\x7f", b"\x80", b"\xff", b"\r\n", b'"', b";"]

methods = mostly(
    st.sampled_from([b"GET", b"POST", b"HEAD", b"PUT", b"OPTIONS", b"DELETE"]),
    st.one_of(
        st.sampled_from([b"CONNECT", b"PRI", b"get", b"G T", b"GET\x00"]),
        st.text(_TOKEN, min_size=1, max_size=12).map(str.encode),
        st.binary(min_size=1, max_size=6),
    ),
)
targets = mostly(
    st.sampled_from([b"/", b"/a?b=c", b"/echo", b"/x/y/z?q=%20"]),
    st.one_of(
        st.sampled_from([b"*", b"http://example.com/x", b"example.com:443", b"/%00", b"//", b""]),
        st.builds(lambda p, o: b"/" + p + o, st.binary(max_size=20), st.sampled_from([b"", *_ODD])),
    ),
)
versions = mostly(
    st.just(b"HTTP/1.1"),
    st.sampled_from([b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.10", b"http/1.1", b"HTTP/1.1 ", b""]),
)
_NAMES = [
    b"content-length",
    b"transfer-encoding",
    b"connection",
    b"upgrade",
    b"expect",
    b"http2-settings",
    b"sec-websocket-key",
    b"sec-websocket-version",
    b"te",
    b"trailer",
    b"x-a",
]
header_names = mostly(
    st.sampled_from(_NAMES),
    st.one_of(
        st.sampled_from(
            [b"Content-Length", b"Transfer-Encoding ", b" host", b"host", b"x\x00", b""]
        ),
        st.text(_TOKEN, min_size=1, max_size=10).map(str.encode),
        st.binary(min_size=0, max_size=6),
    ),
    odds=10,
)
_VALUES = {
    b"content-length": [b"0", b"5", b"-1", b"1, 1", b"0" * 30 + b"7", b"0x10", b" 3"],
    b"transfer-encoding": [b"chunked", b"gzip, chunked", b"chunked, gzip", b"identity", b"Chunked"],
    b"connection": [b"keep-alive", b"close", b"Upgrade", b"upgrade, http2-settings"],
    b"upgrade": [b"websocket", b"h2c", b"WebSocket"],
    b"expect": [b"100-continue", b"100-Continue", b"200-ok"],
    b"http2-settings": [b"AAMAAABkAAQAoAAAAAIAAAAA", b"", b"!!", b"AAMAAABk"],
    b"sec-websocket-key": [b"dGhlIHNhbXBsZSBub25jZQ==", b"short"],
    b"sec-websocket-version": [b"13", b"8"],
    b"te": [b"trailers", b"gzip"],
}
_ANY_VALUES = [b"example.com", b"a b", b"", b"\xe2\x82\xac"]


@st.composite
def header_lines(draw: st.DrawFn) -> bytes:
    name = draw(header_names)
    value = draw(
        mostly(
            st.sampled_from(_VALUES.get(name.lower(), _ANY_VALUES)),
            st.builds(
                lambda a, odd, b: a + odd + b,
                st.binary(max_size=10),
                st.sampled_from([b"", *_ODD]),
                st.binary(max_size=10),
            ),
            odds=10,
        )
    )
    separator = draw(
        mostly(st.just(b": "), st.sampled_from([b":", b" : ", b":\t", b" :", b"::"]), odds=20)
    )
    line = name + separator + value + draw(eols)
    if draw(st.integers(0, 15)) == 0:
        line += draw(st.sampled_from([b" folded\r\n", b"\tfolded\r\n"]))  # obs-fold
    return line


eols = mostly(st.just(b"\r\n"), st.sampled_from([b"\n", b"\r", b"\r\r\n", b"\n\r"]), odds=20)


@st.composite
def chunked_body(draw: st.DrawFn) -> bytes:
    out = b""
    for data in draw(st.lists(st.binary(max_size=40), max_size=4)):
        size = b"%x" % len(data)
        size = draw(
            mostly(
                st.just(size),
                st.sampled_from([size.upper(), b"0" * 20 + size, b"+" + size, b"-1", b" " + size]),
            )
        )
        ext = draw(
            mostly(
                st.just(b""),
                st.sampled_from(
                    [b";a=b", b';a="q\\"x"', b"; a", b';a="\n"', b";\n", b";" + b"x" * 300]
                ),
                odds=4,
            )
        )
        out += size + ext + draw(eols) + data + draw(eols)
    out += b"0" + draw(mostly(st.just(b""), st.sampled_from([b";e=1", b";\n"]))) + draw(eols)
    for _ in range(draw(st.integers(0, 2))):
        out += draw(header_lines())
    return out + draw(eols)


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    """One request: request line, fields, and a body framed one way or another."""
    line = draw(methods) + b" " + draw(targets) + b" " + draw(versions) + draw(eols)
    fields = [b"host: example.com\r\n"] if draw(mostly(st.just(True), st.just(False))) else []
    fields += draw(st.lists(header_lines(), max_size=4))
    framing = draw(
        st.sampled_from(["none", "none", "length", "length", "chunked", "chunked", "odd"])
    )
    if framing == "odd":
        framing = draw(st.sampled_from(["both", "wrong-length"]))
    body = b""
    if framing in ("length", "wrong-length", "both"):
        body = draw(st.binary(max_size=100))
        declared = len(body) + (draw(st.integers(-3, 3)) if framing == "wrong-length" else 0)
        fields.append(b"content-length: %d\r\n" % declared)
    if framing in ("chunked", "both"):
        fields.append(b"transfer-encoding: chunked\r\n")
        body = draw(chunked_body()) if framing == "chunked" else body
    fields = draw(st.permutations(fields))
    return line + b"".join(fields) + draw(eols) + body


@st.composite
def connections(draw: st.DrawFn) -> list[bytes]:
    """Pipelined requests, maybe mutated, cut into ``receive_data`` pieces."""
    data = b"".join(draw(st.lists(requests(), min_size=1, max_size=4)))
    if draw(st.integers(0, 4)) == 0:
        data = draw(mutated(data))
    return draw(splits(data))


# -- the harness ------------------------------------------------------------------------


@dataclass
class Run:
    """What one fuzzed connection did."""

    started: list[RequestReceived] = field(default_factory=list)
    ended: set[int] = field(default_factory=set)
    closed: bool = False
    tunnel: bool = False
    upgraded: bool = False
    output: bytes = b""


def _buffered(proto: Any) -> int:
    """Bytes the engine holds unparsed (h11's buffer, or the httptools engine's own)."""
    if isinstance(proto, H1Protocol):
        return len(proto._conn.trailing_data[0])
    return len(proto._buf)


def drive(
    pieces: list[bytes],
    config: Config,
    *,
    respond_early: bool,
    ticks: list[float],
    engine: str = "h11",
) -> Run:
    """Feed ``pieces`` through an HTTP/1.1 engine with a well-behaved app; check as we go."""
    proto = http1_engine(engine)[1](config, T0, allow_h2c=True)
    run = Run()
    now = T0
    out: list[bytes] = []
    active: RequestReceived | None = None
    answered = False
    limit = config.max_header_bytes + http1._READ_AHEAD + max((len(p) for p in pieces), default=0)

    def answer(request: RequestReceived) -> None:
        nonlocal answered, upgrade_pending
        answered = True
        if request.websocket_upgrade and request.method == b"GET":
            proto.send_response(request.stream_id, 101, [(b"upgrade", b"websocket")])
            upgrade_pending = request.stream_id not in run.ended
            run.tunnel = True
            proto.send_data(request.stream_id, b"\x81\x02hi")
            return
        if request.expect_continue:
            proto.send_informational(request.stream_id, 100, [])
        body = b"ok %d\n" % request.stream_id
        proto.send_response(request.stream_id, 200, [(b"content-length", b"%d" % len(body))])
        proto.send_data(request.stream_id, body, end_stream=True)
        proto.stream_done(request.stream_id, now)

    tunnel_ended = False
    #: The app answered 101 before the upgrade request's own end arrived.
    upgrade_pending = False

    def pump() -> None:
        nonlocal active, answered, tunnel_ended, upgrade_pending
        while (event := proto.next_event()) is not None:
            assert not run.closed, f"{event!r} after ConnectionClosed"
            if isinstance(event, H2CUpgrade):
                run.upgraded = True
                run.started.append(event.request)
                run.ended.add(event.request.stream_id)  # the HTTP/2 side serves it
                return
            if isinstance(event, RequestReceived):
                assert active is None or active.stream_id in run.ended, "two requests at once"
                run.started.append(event)
                active = event
                answered = False
                if respond_early:
                    answer(event)
            elif isinstance(event, BodyReceived):
                assert active is not None and event.stream_id == active.stream_id
                # After 101 the peer's bytes are body events of the upgrade request, past
                # the end of its own (empty) body, until the tunnel ends.
                assert event.stream_id not in run.ended or (run.tunnel and not tunnel_ended)
                proto.ack_body(event.stream_id, len(event.data))
            elif isinstance(event, BodyEnded | StreamReset):
                assert active is not None and event.stream_id == active.stream_id
                if run.tunnel and event.stream_id in run.ended:
                    assert not tunnel_ended, f"tunnel ended twice: {event!r}"
                    tunnel_ended = True
                else:
                    assert event.stream_id not in run.ended, f"stream ended twice: {event!r}"
                run.ended.add(event.stream_id)
                if isinstance(event, StreamReset):
                    proto.stream_done(event.stream_id, now)
                elif run.tunnel and (tunnel_ended or not upgrade_pending):
                    proto.send_data(event.stream_id, b"", end_stream=True)
                    proto.stream_done(event.stream_id, now)
                elif not answered:
                    answer(active)
                upgrade_pending = False
            elif isinstance(event, PeerHalfClosed):
                # The FIN came after a complete request: it is still answered.
                assert active is not None and event.stream_id == active.stream_id
                assert event.stream_id in run.ended
            else:
                assert isinstance(event, ConnectionClosed), event
                run.closed = True
            out.append(proto.data_to_send())
        out.append(proto.data_to_send())

    def fire_timer(dt: float) -> None:
        nonlocal now
        timer = proto.get_timer()
        now += dt
        if timer is not None and now >= timer:
            proto.handle_timer(now)
            pump()

    for i, piece in enumerate(pieces):
        if run.closed or run.upgraded:
            break
        if not proto.wants_read():
            # A well-behaved app acknowledged everything and answered: the protocol must
            # want more bytes unless it is closed or switching protocols.
            raise AssertionError("protocol stopped reading with nothing left for the app")
        proto.receive_data(piece, now)
        pump()
        buffered = _buffered(proto)
        assert buffered <= limit, f"the engine buffers {buffered} bytes (limit {limit})"
        if i < len(ticks):
            fire_timer(ticks[i])
    if not run.closed and not run.upgraded:
        proto.receive_data(b"", now)  # the peer closes
        pump()
        for dt in ticks:
            fire_timer(dt)
        if not run.tunnel and proto.open_streams == 0 and not run.closed:
            fire_timer(config.keep_alive_timeout + config.header_read_timeout + 1)
    run.output = b"".join(out)
    stat(f"requests: {min(len(run.started), 3)}")
    stat(f"status: {run.output[9:12]!r}")
    if run.tunnel:
        stat("tunnel")
    return run


def check_ends(run: Run) -> None:
    """Every request that started ended, or the connection closed under it."""
    for request in run.started:
        assert request.stream_id in run.ended or run.closed, f"stream {request.stream_id} hangs"


def check_output(run: Run) -> None:
    """The server's bytes are a well-formed sequence of HTTP/1.1 responses for h11.

    The last response may answer a request the protocol refused before reporting it (an
    error answer, then the connection closes): the client sent GET or HEAD, and the answer
    must be framed for the one it sent, so either reading is accepted for it.
    """
    try:
        _check_output(run, b"GET")
    except h11.RemoteProtocolError:
        _check_output(run, b"HEAD")


def _check_output(run: Run, unknown: bytes) -> None:
    client = h11.Connection(h11.CLIENT)
    requests = [r for r in run.started if not isinstance(r, H2CUpgrade)]
    data = run.output
    if run.upgraded or not data:
        return
    index = 0

    def send_request() -> None:
        nonlocal index
        method = requests[index].method if index < len(requests) else unknown
        if method != b"HEAD":
            method = b"GET"  # only HEAD changes how a response is framed
        headers = [("host", "x")]
        if index < len(requests) and requests[index].websocket_upgrade:
            headers += [("connection", "upgrade"), ("upgrade", "websocket")]  # may get 101
        index += 1
        client.send(h11.Request(method=method, target="/", headers=headers))
        client.send(h11.EndOfMessage())

    send_request()
    client.receive_data(data)
    client.receive_data(b"")
    while True:
        event = client.next_event()
        if event is h11.NEED_DATA or type(event) is h11.ConnectionClosed:
            break
        if event is h11.PAUSED:
            if client.our_state is h11.SWITCHED_PROTOCOL:
                break
            client.start_next_cycle()
            send_request()
            continue
        if type(event) is h11.InformationalResponse and event.status_code == 101:
            break


CONFIGS = {
    "default": Config(),
    "small-head": Config(max_header_bytes=256),
    "tiny": Config(max_header_bytes=64, header_read_timeout=1.0, keep_alive_timeout=1.0),
}
configs = st.sampled_from(sorted(CONFIGS))


@pytest.mark.parametrize("engine", H1_ENGINES)
@fuzz_settings(400)
# WebSocket upgrades: after 101 the peer's bytes (a pipelined request among them) and its
# EOF are events of the upgrade request, past the end of its own body.
@example(
    pieces=[
        b"GET / HTTP/1.1\r\nhost: example.com\r\ncontent-length: 0\r\nconnection: Upgrade\r\n"
        b"upgrade: websocket\r\n\r\nGET / HTTP/1.1\r\nhost: example.com\r\n\r\n"
    ],
    config="default",
    respond_early=False,
    ticks=[],
)
@example(
    pieces=[
        b"GET / HTTP/1.1\r\nhost: example.com\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\r\n"
    ],
    config="default",
    respond_early=True,
    ticks=[],
)
@given(
    pieces=connections(),
    config=configs,
    respond_early=st.booleans(),
    ticks=st.lists(st.floats(0, 30), max_size=3),
)
def test_http1_requests(
    engine: str, pieces: list[bytes], config: str, respond_early: bool, ticks: list[float]
) -> None:
    run = drive(pieces, CONFIGS[config], respond_early=respond_early, ticks=ticks, engine=engine)
    check_ends(run)
    check_output(run)


@pytest.mark.parametrize("engine", H1_ENGINES)
@fuzz_settings(150)
@given(
    data=st.binary(max_size=600),
    config=configs,
    respond_early=st.booleans(),
)
def test_http1_raw_bytes(engine: str, data: bytes, config: str, respond_early: bool) -> None:
    run = drive(
        [data] if data else [],
        CONFIGS[config],
        respond_early=respond_early,
        ticks=[],
        engine=engine,
    )
    check_ends(run)
    check_output(run)


#: Control bytes other than HTAB, CR and LF: llhttp refuses them in a field value (RFC 9110
#: §5.5 lets a recipient refuse or replace them), h11 takes them; the one place the two
#: engines differ on what they serve.
_CONTROLS = re.compile(rb"[\x01-\x08\x0b\x0c\x0e-\x1f\x7f]")


@pytest.mark.client("httptools")
@fuzz_settings(200)
@given(
    pieces=connections(),
    config=configs,
    respond_early=st.booleans(),
)
def test_http1_engines_serve_the_same_requests(
    pieces: list[bytes], config: str, respond_early: bool
) -> None:
    """Differential: on the same bytes, h11 and httptools hand the app the same requests
    (method, target, authority, fields, upgrade flags), switch protocols alike and close
    alike. A refusal's status may differ when a head has several faults and the parsers
    meet them in another order (llhttp refuses an invalid target before the size rule)."""
    assume(_CONTROLS.search(b"".join(pieces)) is None)
    runs = [
        drive(pieces, CONFIGS[config], respond_early=respond_early, ticks=[], engine=engine)
        for engine in ("h11", "httptools")
    ]
    h11_run, httptools_run = runs
    assert httptools_run.started == h11_run.started
    assert (httptools_run.tunnel, httptools_run.upgraded, httptools_run.closed) == (
        h11_run.tunnel,
        h11_run.upgraded,
        h11_run.closed,
    )
    assert httptools_run.ended == h11_run.ended
