"""A raw HTTP/2 client for attack tests: hand-built frames (hyperframe, hpack) on a
blocking socket, so a test can send what no well-behaved client library would."""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass

import hpack
from hyperframe.frame import (
    DataFrame,
    Frame,
    HeadersFrame,
    PriorityFrame,
    RstStreamFrame,
    SettingsFrame,
)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Frame types (RFC 9113 §6).
DATA, HEADERS, RST_STREAM, SETTINGS, GOAWAY = 0x0, 0x1, 0x3, 0x4, 0x7


@dataclass
class RawFrame:
    type: int
    flags: int
    stream_id: int
    payload: bytes

    @property
    def error_code(self) -> int:
        """The error code of a RST_STREAM or GOAWAY frame."""
        if self.type == RST_STREAM:
            return int.from_bytes(self.payload[:4], "big")
        assert self.type == GOAWAY
        return int.from_bytes(self.payload[4:8], "big")


class RawH2:
    """Prior-knowledge h2c on ``port``: the preface and an empty SETTINGS go out at once."""

    def __init__(self, port: int, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.encoder = hpack.Encoder()
        self.next_id = 1
        self._buf = b""
        self.closed = False
        self.send(PREFACE + SettingsFrame(0).serialize())

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawH2:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, data: bytes) -> bool:
        """Send ``data``; False once the server has closed the connection."""
        try:
            self.sock.sendall(data)
        except OSError:
            self.closed = True
            return False
        return True

    def new_stream(self) -> int:
        stream_id = self.next_id
        self.next_id += 2
        return stream_id

    def headers(
        self,
        stream_id: int,
        fields: list[tuple[str, str]],
        *,
        end_stream: bool,
    ) -> bytes:
        frame = HeadersFrame(stream_id)
        frame.data = self.encoder.encode(fields)
        frame.flags.add("END_HEADERS")
        if end_stream:
            frame.flags.add("END_STREAM")
        return frame.serialize()

    def request(
        self,
        stream_id: int,
        path: str,
        *,
        end_stream: bool,
        extra: tuple[tuple[str, str], ...] = (),
    ) -> bytes:
        fields = [
            (":method", "GET"),
            (":scheme", "http"),
            (":path", path),
            (":authority", "localhost"),
            *extra,
        ]
        return self.headers(stream_id, fields, end_stream=end_stream)

    def read_frames(self, until: float) -> list[RawFrame]:
        """The frames of the next read that completes some, waiting at most until the
        monotonic deadline ``until``; empty at the deadline or at EOF."""
        frames: list[RawFrame] = []
        sock = self.sock
        while not frames and not self.closed:
            remaining = until - time.monotonic()
            if remaining <= 0:
                break
            sock.settimeout(remaining)
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            except OSError:
                chunk = b""
            if not chunk:
                self.closed = True
                break
            self._buf += chunk
            frames = self._parse()
        return frames

    def _parse(self) -> list[RawFrame]:
        frames = []
        buf = self._buf
        while len(buf) >= 9:
            length = int.from_bytes(buf[0:3], "big")
            if len(buf) < 9 + length:
                break
            frame = RawFrame(
                buf[3], buf[4], int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF, buf[9 : 9 + length]
            )
            buf = buf[9 + length :]
            if frame.type == SETTINGS and not frame.flags & 0x1:
                self.send(b"\x00\x00\x00\x04\x01\x00\x00\x00\x00")  # SETTINGS ACK
            frames.append(frame)
        self._buf = buf
        return frames


def data(stream_id: int, payload: bytes, *, end_stream: bool = False) -> bytes:
    frame = DataFrame(stream_id, payload)
    if end_stream:
        frame.flags.add("END_STREAM")
    return frame.serialize()


def window_update(stream_id: int, increment: int) -> bytes:
    # hyperframe refuses to build an increment of 0, which an attack test needs.
    payload = increment.to_bytes(4, "big")
    return b"\x00\x00\x04\x08\x00" + stream_id.to_bytes(4, "big") + payload


def priority(stream_id: int, depends_on: int) -> bytes:
    frame = PriorityFrame(stream_id, depends_on=depends_on, stream_weight=15)
    return frame.serialize()


def rst_stream(stream_id: int, code: int) -> bytes:
    return RstStreamFrame(stream_id, code).serialize()


__all__ = ["Frame", "RawFrame", "RawH2", "data", "priority", "rst_stream", "window_update"]
