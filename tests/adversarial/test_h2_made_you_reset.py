"""HTTP/2 "MadeYouReset" (CVE-2025-8671): client frames that make the *server* reset a
stream must not free concurrency while the app call runs, nor come for free.

Each provocation below is a frame the client sends after the HEADERS that opened a
request; the server answers it with RST_STREAM (a stream error), not GOAWAY:

* WINDOW_UPDATE that overflows the stream's send window (RFC 9113 §6.9.1);
* DATA, or HEADERS, on a stream the client already ended (half-closed remote, §5.1);
* DATA beyond the request's content-length, or END_STREAM short of it (§8.1.1);
* trailers carrying a pseudo-header (§8.1), or trailers without END_STREAM (§8.1.1: a
  malformed message is a stream error).

Two other candidates are connection errors in quicserve (h2 treats them so), which
leaves nothing to exploit; the last test pins that: WINDOW_UPDATE of 0 on a stream,
PRIORITY on itself.
"""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable

from quicserve.certs import DevCertificate

from ..test_cli import Spawn
from .harness import MAX_RSS_GROWTH_MIB, Prober, serve
from .rawh2 import GOAWAY, RST_STREAM, RawFrame, RawH2, data, priority, window_update

# RFC 9113 §7 error codes.
PROTOCOL_ERROR, FLOW_CONTROL_ERROR, STREAM_CLOSED = 0x1, 0x3, 0x5
REFUSED_STREAM, ENHANCE_YOUR_CALM = 0x7, 0xB

Provoke = Callable[[RawH2, int, str], bytes]

#: name -> (frames that open ``path`` on a stream and then provoke a reset, the code).
PROVOCATIONS: dict[str, tuple[Provoke, int]] = {
    "window-overflow": (
        lambda c, s, p: c.request(s, p, end_stream=False) + window_update(s, 2**31 - 1),
        FLOW_CONTROL_ERROR,
    ),
    "data-after-end-stream": (
        lambda c, s, p: c.request(s, p, end_stream=True) + data(s, b"x"),
        STREAM_CLOSED,
    ),
    "headers-after-end-stream": (
        lambda c, s, p: (
            c.request(s, p, end_stream=True) + c.headers(s, [("x-late", "1")], end_stream=True)
        ),
        STREAM_CLOSED,
    ),
    "data-beyond-content-length": (
        lambda c, s, p: (
            c.request(s, p, end_stream=False, extra=(("content-length", "1"),))
            + data(s, b"xx", end_stream=True)
        ),
        PROTOCOL_ERROR,
    ),
    "end-short-of-content-length": (
        lambda c, s, p: (
            c.request(s, p, end_stream=False, extra=(("content-length", "9"),))
            + data(s, b"xx", end_stream=True)
        ),
        PROTOCOL_ERROR,
    ),
    "pseudo-header-in-trailers": (
        lambda c, s, p: (
            c.request(s, p, end_stream=False) + c.headers(s, [(":path", "/")], end_stream=True)
        ),
        PROTOCOL_ERROR,
    ),
    "trailers-without-end-stream": (
        lambda c, s, p: (
            c.request(s, p, end_stream=False)
            + data(s, b"x")
            + c.headers(s, [("x-t", "1")], end_stream=False)
        ),
        PROTOCOL_ERROR,
    ),
}

LIMIT = 8


def _count(port: int, path: str) -> tuple[int, int, int]:
    """``(running, peak, calls)``: app calls to ``path``, from the app itself."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/count?{path}", timeout=5) as r:
        running, peak, calls = r.read().split()
    return int(running), int(peak), int(calls)


def _wait_for(client: RawH2, stream_ids: set[int], deadline: float) -> list[RawFrame]:
    """Read until every stream in ``stream_ids`` got RST_STREAM, or GOAWAY, or EOF."""
    frames: list[RawFrame] = []
    waiting = set(stream_ids)
    while waiting and not client.closed and time.monotonic() < deadline:
        got = client.read_frames(deadline)
        frames += got
        for frame in got:
            if frame.type == RST_STREAM:
                waiting.discard(frame.stream_id)
            elif frame.type == GOAWAY:
                return frames
    return frames


def test_a_provoked_reset_keeps_its_slot_until_the_app_call_ends(
    spawn: Spawn, backend: str, tls_files: DevCertificate
) -> None:
    """For each provocation, on its own connection, one at a time: LIMIT + 3 streams
    to an app that ignores the client. Each is provoked into a server reset, yet its
    app call runs on, so the streams after the first LIMIT never reach the app."""
    # (A short graceful timeout: the stalled calls need not be waited for at the end.)
    limits = ("--h2-max-concurrent-streams", str(LIMIT), "--graceful-timeout", "0.5")
    with serve(spawn, backend, tls_files, *limits) as target:
        for done, (kind, (provoke, code)) in enumerate(sorted(PROVOCATIONS.items())):
            with RawH2(target.http) as client:
                codes: list[int] = []
                for _ in range(LIMIT + 3):
                    stream_id = client.new_stream()
                    client.send(provoke(client, stream_id, "/stall?10"))
                    frames = _wait_for(client, {stream_id}, time.monotonic() + 5)
                    resets = [
                        f for f in frames if f.type == RST_STREAM and f.stream_id == stream_id
                    ]
                    assert resets, (kind, frames)
                    codes.append(resets[0].error_code)
                # The refused ones may be reset for the provocation first (h2 acts on
                # it before the server sees the request); either way no app call starts.
                assert codes[:LIMIT] == [code] * LIMIT, (kind, codes)
                assert set(codes[LIMIT:]) <= {code, REFUSED_STREAM}, (kind, codes)
                # The calls of the connections before this one run on as well.
                running, _, calls = _count(target.http, "/stall")
                assert running == calls == LIMIT * (done + 1), (kind, running, calls)


def test_provoked_resets_end_in_enhance_your_calm(
    spawn: Spawn, backend: str, tls_files: DevCertificate
) -> None:
    """The MadeYouReset shape: thousands of requests, each provoked into a server reset
    at once, paced so that the concurrency limit is never hit (nothing is refused).
    The app's concurrent calls never exceed the limit, and the client is soon told
    ENHANCE_YOUR_CALM instead of being served reset after reset."""
    kinds = [PROVOCATIONS[name] for name in sorted(PROVOCATIONS)]
    batch = LIMIT // 2
    streams = 0
    goaway: RawFrame | None = None
    with (
        serve(spawn, backend, tls_files, "--h2-max-concurrent-streams", str(LIMIT)) as target,
        Prober(target) as prober,
        RawH2(target.http) as client,
    ):
        deadline = time.monotonic() + 20
        while streams < 3000 and goaway is None and not client.closed:
            assert time.monotonic() < deadline, f"only {streams} streams in 20 s"
            out = b""
            ids = set()
            for _ in range(batch):
                stream_id = client.new_stream()
                provoke, _ = kinds[stream_id // 2 % len(kinds)]
                out += provoke(client, stream_id, "/hold")
                ids.add(stream_id)
            streams += batch
            client.send(out)
            for frame in _wait_for(client, ids, time.monotonic() + 5):
                if frame.type == GOAWAY:
                    goaway = frame
        running, peak, calls = _count(target.http, "/hold")
    prober.check()
    assert peak <= LIMIT, (running, peak, calls)
    assert goaway is not None and goaway.error_code == ENHANCE_YOUR_CALM, (streams, goaway)
    assert streams < 3000
    assert target.rss_growth_mib() < MAX_RSS_GROWTH_MIB


CONNECTION_ERRORS: dict[str, Provoke] = {
    "window-update-of-zero": lambda c, s, p: (
        c.request(s, p, end_stream=False) + window_update(s, 0)
    ),
    "priority-on-itself": lambda c, s, p: c.request(s, p, end_stream=False) + priority(s, s),
}


def test_frames_that_end_the_connection_instead(
    spawn: Spawn, backend: str, tls_files: DevCertificate
) -> None:
    """RFC 9113 allows a stream error for these, quicserve (through h2) closes the
    connection with GOAWAY PROTOCOL_ERROR: a client cannot repeat them on one
    connection, so they are no MadeYouReset vector."""
    with serve(spawn, backend, tls_files) as target:
        for name, provoke in CONNECTION_ERRORS.items():
            with RawH2(target.http) as client:
                stream_id = client.new_stream()
                client.send(provoke(client, stream_id, "/hold"))
                frames: list[RawFrame] = []
                deadline = time.monotonic() + 5
                while not client.closed and time.monotonic() < deadline:
                    frames += client.read_frames(deadline)
                goaways = [f for f in frames if f.type == GOAWAY]
                assert goaways and goaways[0].error_code == PROTOCOL_ERROR, (name, frames)
