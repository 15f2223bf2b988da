"""HTTP/2 frame floods from a client that reads everything it is sent (the CVE-2019-95xx
family; a client that does not read is tests/adversarial/test_slow_reader.py's job).

Each flood is tens of thousands of cheap frames on one h2c connection: PING (9512),
PRIORITY (9513), RST_STREAM (9514), SETTINGS (9515), empty header names (9516), empty
DATA frames (9518). The server must keep serving others within 1 s, keep its memory flat
and spend bounded CPU per frame, and control-frame floods end in GOAWAY
ENHANCE_YOUR_CALM once past ``--h2-max-control-frames``.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable

from hpack import Encoder
from hyperframe.frame import (
    DataFrame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    RstStreamFrame,
    SettingsFrame,
)

from quicserve.certs import DevCertificate

from ..test_cli import Spawn
from .harness import MAX_RSS_GROWTH_MIB, Prober, Target, serve

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
FRAMES = 30_000
#: Server CPU per flood frame, at most (generous: a loaded CI machine).
MAX_CPU_PER_FRAME = 100e-6


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    import os

    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _headers(encoder: Encoder, stream_id: int, path: str, *, end_stream: bool) -> bytes:
    block = encoder.encode(
        [(":method", "POST"), (":path", path), (":scheme", "http"), (":authority", "x")]
    )
    frame = HeadersFrame(stream_id, block)
    frame.flags.add("END_HEADERS")
    if end_stream:
        frame.flags.add("END_STREAM")
    return bytes(frame.serialize())


def _empty_data(encoder: Encoder) -> bytes:
    head = _headers(encoder, 1, "/stall?1", end_stream=False)
    return head + bytes(DataFrame(1, b"").serialize()) * FRAMES


def _pings(encoder: Encoder) -> bytes:
    return bytes(PingFrame(0, b"12345678").serialize()) * FRAMES


def _settings(encoder: Encoder) -> bytes:
    return bytes(SettingsFrame(0, {0x4: 65535}).serialize()) * FRAMES


def _priority(encoder: Encoder) -> bytes:
    # Every stream depends on the next one up, round and round (a dependency loop).
    return b"".join(
        bytes(PriorityFrame(2 * (i % 500) + 1, depends_on=2 * ((i + 1) % 500) + 1).serialize())
        for i in range(FRAMES)
    )


def _resets(encoder: Encoder) -> bytes:
    # Open a stream and reset it, over and over: each costs the server a stream.
    out = []
    for i in range(FRAMES // 2):
        stream_id = 2 * i + 1
        out.append(_headers(encoder, stream_id, "/", end_stream=True))
        out.append(bytes(RstStreamFrame(stream_id, 8).serialize()))
    return b"".join(out)


def _empty_names(encoder: Encoder) -> bytes:
    # RFC 9113 §8.2.1: an empty field name is malformed (a stream error per request).
    out = []
    for i in range(FRAMES // 10):
        block = encoder.encode(
            [(":method", "GET"), (":path", "/"), (":scheme", "http"), (":authority", "x")]
            + [("", "")] * 8
        )
        frame = HeadersFrame(2 * i + 1, block)
        frame.flags.add("END_HEADERS")
        frame.flags.add("END_STREAM")
        out.append(bytes(frame.serialize()))
    return b"".join(out)


FLOODS: dict[str, Callable[[Encoder], bytes]] = {
    "ping-9512": _pings,
    "priority-9513": _priority,
    "reset-9514": _resets,
    "settings-9515": _settings,
    "empty-names-9516": _empty_names,
    "empty-data-9518": _empty_data,
}


#: The GOAWAY code each flood must end with (None: the connection may stay open).
#: PING, SETTINGS, PRIORITY and empty DATA frames are control frames past
#: --h2-max-control-frames: ENHANCE_YOUR_CALM (0xb). Opening and resetting streams is
#: bounded by the concurrency limit (and ENHANCE_YOUR_CALM after many refusals); a
#: malformed request is a stream error the server may escalate to PROTOCOL_ERROR (0x1,
#: RFC 9113 §8.1.1) or count towards --h2-max-stream-errors.
EXPECTED: dict[str, set[int | None]] = {
    "ping-9512": {0xB},
    "priority-9513": {0xB},
    "reset-9514": {None, 0x0, 0xB},
    "settings-9515": {0xB},
    "empty-names-9516": {0x1, 0xB},
    "empty-data-9518": {0xB},
}


def _flood(target: Target, payload: bytes) -> tuple[bytes, float]:
    """Send ``payload`` after the preface while reading everything the server sends;
    returns what was read (until close or 3 s of quiet) and the server CPU it cost."""
    received = bytearray()
    sock = socket.create_connection(("127.0.0.1", target.http), timeout=10)

    def read() -> None:
        sock.settimeout(3)
        try:
            while data := sock.recv(65536):
                received.extend(data)
        except OSError:
            pass

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    cpu = _cpu_seconds(target.pid)
    try:
        sock.sendall(PREFACE + bytes(SettingsFrame(0).serialize()) + payload)
    except OSError:
        pass  # the server may close the connection before all of it is sent
    reader.join(30)
    cost = _cpu_seconds(target.pid) - cpu
    sock.close()
    return bytes(received), cost


def _goaway_code(received: bytes) -> int | None:
    """The error code of the server's GOAWAY, if it sent one."""
    position = 0
    while position + 9 <= len(received):
        length = int.from_bytes(received[position : position + 3], "big")
        kind = received[position + 3]
        if kind == GoAwayFrame.type and position + 9 + 8 <= len(received):
            start = position + 9 + 4
            return int.from_bytes(received[start : start + 4], "big")
        position += 9 + length
    return None


def test_frame_floods_cost_bounded_cpu_and_others_are_served(
    spawn: Spawn, backend: str, tls_files: DevCertificate
) -> None:
    """One server per backend takes every flood in turn (a fresh connection each)."""
    results: dict[str, tuple[float, int | None]] = {}
    with serve(spawn, backend, tls_files) as target, Prober(target) as prober:
        for flood, build in FLOODS.items():
            received, cpu = _flood(target, build(Encoder()))
            results[flood] = (cpu, _goaway_code(received))
    prober.check()
    assert target.rss_growth_mib() < MAX_RSS_GROWTH_MIB
    for flood, (cpu, code) in results.items():
        assert cpu < FRAMES * MAX_CPU_PER_FRAME, (flood, cpu)
        assert code in EXPECTED[flood], (flood, code)
