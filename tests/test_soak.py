"""Soak: mixed HTTP/1.1, HTTP/2 and HTTP/3 traffic at once, watched for stalls.

One in-process server (TLS, cleartext and QUIC binds) serves uploads, downloads and
WebSocket echoes from real clients running together: curl (HTTP/1.1 plain and TLS with
``Expect: 100-continue``, HTTP/2 over TLS, h2c prior knowledge, h2c Upgrade), httpx
(HTTP/2, several streams on one connection), aioquic's client (``clientkit/h3.py``,
HTTP/3, in a worker thread), the ``websockets`` package (HTTP/1.1, in a worker thread)
and ``clientkit/ws.py``'s RFC 8441 / RFC 9220 tunnels (WebSockets on HTTP/2 and 3).

Every request and every WebSocket is an *operation* with a progress stamp: the app
stamps it each time it receives or sends a piece, and clients stamp it where they see
bytes arrive. A watchdog looks every half second; an operation without progress for
``STALL_SECONDS`` (10 s) is a stall: the watchdog prints every task's stack (trio: the
task tree from ``trio.lowlevel.current_root_task()``; asyncio: ``asyncio.all_tasks()``
with each task's whole await chain, where ``task.print_stack()`` shows only the
outermost frame) and every thread's stack, and fails the test. A lost wake-up shows up
as exactly that: issue 9's upload whose body stopped being read.

The CI run is short: ``QUICSERVE_SOAK_SECONDS`` (default 8) seconds of traffic per
backend. A real soak runs longer, e.g. five minutes on trio::

    QUICSERVE_SOAK_SECONDS=300 python -m pytest -q tests/test_soak.py -k trio

Every backend runs: asyncio, uvloop and trio (see conftest.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import itertools
import os
import random
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import parse_qs

import anyio
import anyio.abc
import anyio.to_thread
import httpx
import pytest
import sniffio

from clientkit.h3 import H3Request, h3_fetch
from clientkit.ws import WSClient, open_h2, open_h3
from quicserve.certs import DevCertificate

from .helpers import CURL, client_ssl_context, running_server

pytestmark = pytest.mark.anyio

SOAK_SECONDS = float(os.environ.get("QUICSERVE_SOAK_SECONDS", "8"))
#: Run only the workloads whose name contains one of these comma-separated words.
SOAK_ONLY = [w for w in os.environ.get("QUICSERVE_SOAK_ONLY", "").split(",") if w]
STALL_SECONDS = 10.0
_CHUNK = 65536


@dataclass
class Operation:
    """One request or WebSocket in flight, and when it last moved."""

    kind: str
    what: str
    started: float
    last: float
    note: str = "started"


class Soak:
    """The operations in flight, what finished, and what went wrong.

    Worker threads call ``begin``/``stamp``/``end`` too: single dict operations are
    atomic in CPython, and the counters are updated under a lock."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds
        self.ops: dict[str, Operation] = {}
        self.done: Counter[str] = Counter()
        self.bytes: Counter[str] = Counter()
        self.failures: list[str] = []
        self.stop = threading.Event()
        #: More state to print with a stall (QUIC flow control, ...), by name.
        self.probes: dict[str, Callable[[], str]] = {}
        self._ids = itertools.count()
        self._lock = threading.Lock()

    def over(self) -> bool:
        return self.stop.is_set() or time.monotonic() >= self.deadline

    def begin(self, kind: str, what: str) -> str:
        op_id = f"{kind}-{next(self._ids)}"
        now = time.monotonic()
        self.ops[op_id] = Operation(kind, what, now, now)
        return op_id

    def stamp(self, op_id: str, note: str) -> None:
        op = self.ops.get(op_id)
        if op is not None:
            op.last = time.monotonic()
            op.note = note

    def end(self, op_id: str, moved: int = 0) -> None:
        op = self.ops.pop(op_id, None)
        if op is not None:
            with self._lock:
                self.done[op.kind] += 1
                self.bytes[op.kind] += moved

    def fail(self, message: str) -> None:
        with self._lock:
            self.failures.append(message)
        self.stop.set()

    # -- the server side: the app stamps the operation named in the query string ----------

    async def app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            return
        op_id = parse_qs(scope["query_string"].decode()).get("id", [""])[0]
        if scope["type"] == "websocket":
            await self._websocket_echo(op_id, receive, send)
            return
        path = scope["path"]
        if path == "/sha256":
            digest = hashlib.sha256()
            size = 0
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                body = message.get("body", b"")
                digest.update(body)
                size += len(body)
                self.stamp(op_id, f"app received {size} body bytes")
                if not message.get("more_body", False):
                    break
            await _respond(send, f"{size} {digest.hexdigest()}".encode())
        elif path.startswith("/bytes/"):
            size = int(path.rsplit("/", 1)[1])
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-length", b"%d" % size)],
                }
            )
            chunk = b"d" * _CHUNK
            sent = 0
            while sent < size:
                piece = chunk[: size - sent]
                sent += len(piece)
                await send({"type": "http.response.body", "body": piece, "more_body": True})
                self.stamp(op_id, f"app sent {sent} of {size} bytes")
            await send({"type": "http.response.body", "body": b""})
        else:
            await _respond(send, b"ok")

    async def _websocket_echo(self, op_id: str, receive: Any, send: Any) -> None:
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        count = 0
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            count += 1
            self.stamp(op_id, f"app received message {count}")
            reply = {k: message[k] for k in ("text", "bytes") if message.get(k) is not None}
            await send({"type": "websocket.send", **reply})
            self.stamp(op_id, f"app echoed message {count}")

    # -- the watchdog ----------------------------------------------------------------------

    async def watchdog(self, scope: anyio.CancelScope) -> None:
        while True:
            await anyio.sleep(0.5)
            now = time.monotonic()
            stalled = [
                (op_id, op) for op_id, op in list(self.ops.items()) if now - op.last > STALL_SECONDS
            ]
            if stalled or self.stop.is_set():
                break
        if stalled:
            lines = [f"STALL: no progress for {STALL_SECONDS:.0f} s:"]
            for op_id, op in stalled:
                lines.append(
                    f"  {op_id} ({op.what}): started {now - op.started:.1f} s ago, "
                    f"last progress {now - op.last:.1f} s ago: {op.note}"
                )
            lines.append(dump_tasks())
            for name, probe in list(self.probes.items()):
                try:
                    lines.append(f"{name}:\n{probe()}")
                except Exception as exc:  # a diagnostic must not hide the stall
                    lines.append(f"{name}: {exc!r}")
            report = "\n".join(lines)
            print(report, file=sys.stderr)
            self.fail(report)
        scope.cancel()


async def _respond(send: Any, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-length", b"%d" % len(body))],
        }
    )
    await send({"type": "http.response.body", "body": body})


# -- dumping every task's stack ----------------------------------------------------------


def dump_tasks() -> str:
    """Every task of the running event loop and every thread, with their stacks."""
    out = io.StringIO()
    if sniffio.current_async_library() == "trio":
        import trio

        out.write("trio tasks (the task tree):\n")
        _dump_trio_task(trio.lowlevel.current_root_task(), 0, out)
    else:
        tasks = asyncio.all_tasks()
        out.write(f"asyncio tasks ({len(tasks)}):\n")
        for task in tasks:
            out.write(f"- {task.get_name()}: {task!r:.200}\n")
            _write_frames(_coro_frames(task.get_coro()), "    ", out)
    out.write("threads:\n")
    names = {thread.ident: thread.name for thread in threading.enumerate()}
    for ident, frame in sys._current_frames().items():
        out.write(f"- thread {names.get(ident, ident)}\n")
        out.write(_indent("".join(traceback.format_stack(frame)), "    "))
    return out.getvalue()


def _dump_trio_task(task: Any, depth: int, out: io.StringIO) -> None:
    indent = "  " * depth
    out.write(f"{indent}- {task.name}\n")
    _write_frames(task.iter_await_frames(), indent + "    ", out)
    for nursery in task.child_nurseries:
        for child in nursery.child_tasks:
            _dump_trio_task(child, depth + 1, out)


def _coro_frames(coro: Any) -> Iterator[tuple[FrameType, int]]:
    # A suspended coroutine's frame has no f_back: follow what it awaits instead.
    while coro is not None:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        frame = frame or getattr(coro, "ag_frame", None)
        if frame is None:
            return
        yield frame, frame.f_lineno
        coro = (
            getattr(coro, "cr_await", None)
            or getattr(coro, "gi_yieldfrom", None)
            or getattr(coro, "ag_await", None)
        )


def _write_frames(frames: Iterator[tuple[FrameType, int]], indent: str, out: io.StringIO) -> None:
    frames = list(frames)
    summary = traceback.StackSummary.extract(iter(frames))
    out.write(_indent("".join(summary.format()), indent))
    # Which operation a task serves, when one of its frames knows.
    for frame, _ in frames:
        op_id = frame.f_locals.get("op_id")
        if isinstance(op_id, str) and op_id:
            out.write(f"{indent}(operation {op_id})\n")
            break


def quic_state(quic: Any) -> str:
    """Flow-control and congestion state of an aioquic connection, stream by stream
    (private aioquic attributes: for stall reports only)."""
    loss = quic._loss
    now = time.monotonic()
    timer = quic.get_timer()
    acks = [space.ack_at for space in loss.spaces if space.ack_at is not None]
    lines = [
        f"  timer in {None if timer is None else round(timer - now, 3)} s; ack_at "
        f"{[round(a - now, 3) for a in acks]}; pacing_at {quic._pacing_at}; state "
        f"{quic._state}; handshake confirmed {quic._handshake_confirmed} (recovery "
        f"{loss.handshake_confirmed}); srtt {loss._rtt_smoothed:.3f} rttvar "
        f"{loss._rtt_variance:.3f} pto {loss.get_probe_timeout():.3f}; last ack-eliciting "
        f"sent {loss._time_of_last_sent_ack_eliciting_packet - now:.3f} s",
        f"  max_data local {quic._local_max_data.value} (sent {quic._local_max_data.sent}, "
        f"used {quic._local_max_data.used}), remote {quic._remote_max_data} "
        f"(used {quic._remote_max_data_used}); cwnd {loss._cc.congestion_window}, "
        f"in flight {loss._cc.bytes_in_flight}, pto_count {loss._pto_count}",
    ]
    for space in loss.spaces:
        in_flight = [p for p in space.sent_packets.values() if p.in_flight]
        lines.append(
            f"  space: ack-eliciting in flight {space.ack_eliciting_in_flight}, sent "
            f"{len(space.sent_packets)} ({len(in_flight)} in flight, "
            f"{sum(p.sent_bytes for p in in_flight)} bytes), largest acked "
            f"{space.largest_acked_packet}, loss_time {space.loss_time}"
        )
    for stream_id, stream in quic._streams.items():
        receiver, sender = stream.receiver, stream.sender
        lines.append(
            f"  stream {stream_id}: recv highest {receiver.highest_offset} "
            f"start {receiver._buffer_start} buffered {len(receiver._buffer)} "
            f"finished {receiver.is_finished}, credit {stream.max_stream_data_local} "
            f"(sent {stream.max_stream_data_local_sent}); send highest "
            f"{sender.highest_offset} buffer {sender._buffer_start}..{sender._buffer_stop} "
            f"pending {list(sender._pending)!r:.80} peer credit "
            f"{stream.max_stream_data_remote} blocked {stream.is_blocked}"
        )
    return "\n".join(lines)


def _indent(text: str, indent: str) -> str:
    return "".join(indent + line + "\n" for line in text.splitlines())


# -- the clients ---------------------------------------------------------------------------


class Clients:
    """The workloads; each loops until the soak is over."""

    def __init__(self, soak: Soak, srv: Any, tls: DevCertificate, data_dir: Path) -> None:
        self.soak = soak
        self.tls = tls
        self.plain = srv.url("", scheme="http")
        self.https = srv.url("", scheme="https")
        self.quic_port = next(a.port for a in srv.addresses if a.transport == "udp")
        self.upload = os.urandom(2 * 1024 * 1024)
        self.upload_file = data_dir / "upload"
        self.upload_file.write_bytes(self.upload)
        self.upload_answer = f"{len(self.upload)} {hashlib.sha256(self.upload).hexdigest()}"
        self.small = self.upload[:300_000]
        self.small_answer = f"{len(self.small)} {hashlib.sha256(self.small).hexdigest()}"

    def workers(self) -> list[tuple[str, Callable[[], Awaitable[None]]]]:
        return [
            ("curl h1 upload (Expect: 100-continue)", self.curl_h1_upload),
            ("curl h1 TLS upload and download", self.curl_h1_tls),
            ("curl h2 TLS upload and download", self.curl_h2_tls),
            ("curl h2c prior knowledge", self.curl_h2c_prior),
            ("curl h2c Upgrade", self.curl_h2c_upgrade),
            ("httpx h2 streams", self.httpx_h2),
            ("aioquic h3 streams", self.h3),
            ("websockets h1", self.websockets_h1),
            ("clientkit h2 WebSocket", self.ws_h2),
            ("clientkit h3 WebSocket", self.ws_h3),
        ]

    async def run(self, name: str, worker: Callable[[], Awaitable[None]]) -> None:
        try:
            await worker()
        except Exception as exc:  # the test reports every failure, not just the first
            if not self.soak.stop.is_set():
                detail = "".join(traceback.format_exception(exc))
                self.soak.fail(f"{name} failed:\n{detail}")

    # -- curl ------------------------------------------------------------------------------

    async def _curl(self, kind: str, what: str, args: list[str], path: str) -> tuple[str, bytes]:
        op_id = self.soak.begin(kind, what)
        sep = "&" if "?" in path else "?"
        assert CURL is not None, "curl is not installed"
        result = await anyio.run_process(
            [
                CURL,
                "-sS",
                "--max-time",
                "120",
                "--cacert",
                str(self.tls.ca_certfile),
                *args,
                f"{path}{sep}id={op_id}",
            ],
            check=False,
        )
        assert result.returncode == 0, f"{what}: curl exit {result.returncode}: {result.stderr!r}"
        return op_id, result.stdout

    async def _curl_upload(self, kind: str, args: list[str], base: str) -> None:
        op_id, out = await self._curl(
            kind,
            f"curl {' '.join(args)} upload of {len(self.upload)} bytes",
            [*args, "--data-binary", f"@{self.upload_file}"],
            base + "/sha256",
        )
        assert out.decode() == self.upload_answer, out[:200]
        self.soak.end(op_id, len(self.upload))

    async def _curl_download(
        self, kind: str, args: list[str], base: str, largest: int = 3 * 1024 * 1024
    ) -> None:
        size = random.randrange(1, largest)
        op_id, out = await self._curl(
            kind, f"curl {' '.join(args)} download of {size} bytes", args, f"{base}/bytes/{size}"
        )
        assert len(out) == size, f"got {len(out)} of {size} bytes"
        self.soak.end(op_id, size)

    async def curl_h1_upload(self) -> None:
        # Issue 9's shape: the body follows the 100 at once, on a plain connection.
        args = ["--http1.1", "-H", "Expect: 100-continue"]
        while not self.soak.over():
            await self._curl_upload("curl-h1", args, self.plain)

    async def curl_h1_tls(self) -> None:
        args = ["--http1.1", "-H", "Expect: 100-continue"]
        while not self.soak.over():
            await self._curl_upload("curl-h1-tls", args, self.https)
            await self._curl_download("curl-h1-tls", ["--http1.1"], self.https)

    async def curl_h2_tls(self) -> None:
        while not self.soak.over():
            await self._curl_upload("curl-h2", ["--http2"], self.https)
            await self._curl_download("curl-h2", ["--http2"], self.https)

    async def curl_h2c_prior(self) -> None:
        # One URL per curl: curl 7.88 breaks reusing a prior-knowledge connection
        # (curl/curl#10634).
        args = ["--http2-prior-knowledge"]
        while not self.soak.over():
            await self._curl_upload("curl-h2c", args, self.plain)
            await self._curl_download("curl-h2c", args, self.plain)

    async def curl_h2c_upgrade(self) -> None:
        # RFC 7540 §3.2: a body-less request is upgraded; one with a body stays HTTP/1.1.
        # Small downloads: curl 7.88 fails (exit 16, "connection buffer size is too small
        # to store data following HTTP Upgrade response header") when more than 32 KiB
        # of HTTP/2 follows the 101 in one read, which the server may legally send.
        while not self.soak.over():
            await self._curl_download("curl-h2c-upgrade", ["--http2"], self.plain, 16384)
            await self._curl_upload("curl-h2c-upgrade", ["--http2"], self.plain)

    # -- httpx (HTTP/2) --------------------------------------------------------------------

    async def httpx_h2(self) -> None:
        context = client_ssl_context(self.tls)
        timeout = httpx.Timeout(120.0)
        while not self.soak.over():
            async with httpx.AsyncClient(http2=True, verify=context, timeout=timeout) as client:
                # The upload runs alone: httpcore waits for send window by reading the
                # socket under a shared lock without looking whether another stream's
                # read already took the WINDOW_UPDATE, and then hangs (seen here;
                # pydantic/httpx2#1133 describes it). The downloads share the connection.
                # A fresh connection each round: under load the client may still be
                # reading a download the server has written out for longer than the
                # keep-alive timeout, and the server then closes a connection the client
                # is about to reuse (its next request fails with a broken pipe).
                await self._httpx_upload(client)
                async with anyio.create_task_group() as tg:
                    for _ in range(3):
                        tg.start_soon(self._httpx_download, client)

    async def _httpx_upload(self, client: httpx.AsyncClient) -> None:
        op_id = self.soak.begin("httpx-h2", f"httpx h2 upload of {len(self.small)} bytes")
        response = await client.post(f"{self.https}/sha256?id={op_id}", content=self.small)
        assert response.http_version == "HTTP/2"
        assert response.text == self.small_answer
        self.soak.end(op_id, len(self.small))

    async def _httpx_download(self, client: httpx.AsyncClient) -> None:
        size = random.randrange(1, 2 * 1024 * 1024)
        op_id = self.soak.begin("httpx-h2", f"httpx h2 download of {size} bytes")
        received = 0
        async with client.stream("GET", f"{self.https}/bytes/{size}?id={op_id}") as response:
            async for chunk in response.aiter_raw():
                received += len(chunk)
                self.soak.stamp(op_id, f"client received {received} of {size} bytes")
        assert received == size
        self.soak.end(op_id, size)

    # -- aioquic (HTTP/3), in a worker thread ----------------------------------------------

    async def h3(self) -> None:
        while not self.soak.over():
            size = random.randrange(1, 1024 * 1024)
            requests = [
                H3Request("/sha256", "POST", self.small),
                H3Request(f"/bytes/{size}"),
                H3Request("/"),
            ]
            ids = []
            for request in requests:
                op_id = self.soak.begin("h3", f"h3 {request.method} {request.path}")
                request.path += f"?id={op_id}"
                ids.append(op_id)

            def fetch(requests: list[H3Request] = requests) -> Any:
                return h3_fetch(
                    self.quic_port,
                    requests,
                    cafile=str(self.tls.ca_certfile),
                    concurrent=True,
                    timeout=30.0,
                )

            result = await anyio.to_thread.run_sync(fetch, abandon_on_cancel=True)
            upload, download, small = result.responses
            assert upload.body.decode() == self.small_answer, upload
            assert len(download.body) == size, f"h3 download: {len(download.body)} of {size}"
            assert small.body == b"ok", small
            for op_id, moved in zip(ids, (len(self.small), size, 2), strict=True):
                self.soak.end(op_id, moved)

    # -- WebSockets ------------------------------------------------------------------------

    async def websockets_h1(self) -> None:
        # The websockets package runs on asyncio only: it gets a loop in a worker thread.
        from websockets.asyncio.client import connect as ws_connect

        url = self.https.replace("https://", "wss://").replace("127.0.0.1", "localhost")
        context = client_ssl_context(self.tls)
        soak = self.soak

        async def session() -> None:
            op_id = soak.begin("websockets-h1", "websockets h1 echo session")
            async with ws_connect(f"{url}/ws?id={op_id}", ssl=context, max_size=None) as ws:
                count = 0
                while not soak.over() and count < 200:
                    message = os.urandom(random.randrange(1, 256 * 1024))
                    async with asyncio.timeout(30):
                        await ws.send(message)
                        echoed = await ws.recv()
                    assert echoed == message
                    count += 1
                    soak.stamp(op_id, f"client got echo {count}")
            soak.end(op_id, count)

        def sessions() -> None:
            async def main() -> None:
                while not soak.over():
                    await session()

            asyncio.run(main())

        await anyio.to_thread.run_sync(sessions, abandon_on_cancel=True)

    async def ws_h2(self) -> None:
        context = client_ssl_context(self.tls)
        port = int(self.https.rsplit(":", 1)[1])
        while not self.soak.over():
            op_id = self.soak.begin("ws-h2", "clientkit h2 (RFC 8441) echo session")
            async with open_h2(port, f"/ws?id={op_id}", tls=context) as tunnel:
                await self._ws_session(op_id, WSClient(tunnel))

    async def ws_h3(self) -> None:
        while not self.soak.over():
            op_id = self.soak.begin("ws-h3", "clientkit h3 (RFC 9220) echo session")
            async with open_h3(
                self.quic_port, f"/ws?id={op_id}", cafile=str(self.tls.ca_certfile)
            ) as tunnel:
                probe = f"client QUIC state of {op_id} (stream {tunnel.stream_id})"
                self.soak.probes[probe] = lambda: quic_state(tunnel.quic)
                await self._ws_session(op_id, WSClient(tunnel))
                del self.soak.probes[probe]

    async def _ws_session(self, op_id: str, client: WSClient) -> None:
        count = 0
        while not self.soak.over() and count < 200:
            message = os.urandom(random.randrange(1, 128 * 1024))
            await client.send_bytes(message)
            echoed = await client.receive_message(timeout=120)
            assert echoed == message
            count += 1
            self.soak.stamp(op_id, f"client got echo {count}")
        await client.close()
        await client.expect_close(timeout=120)
        self.soak.end(op_id, count)


@pytest.mark.client("curl", "websockets")
@pytest.mark.timeout(SOAK_SECONDS + 120)
async def test_soak(anyio_backend: object, tls_files: DevCertificate, tmp_path: Path) -> None:
    """Everything at once for ``QUICSERVE_SOAK_SECONDS``: no operation may stall for 10 s,
    every client must succeed, and every kind of client must have finished some work."""
    soak = Soak(SOAK_SECONDS)
    options: dict[str, Any] = {"quic_bind": ("127.0.0.1:0",), "graceful_timeout": 10.0}
    async with running_server(soak.app, tls=tls_files, **options) as srv:
        clients = Clients(soak, srv, tls_files, tmp_path)
        soak.probes["server QUIC connections"] = lambda: _server_quic_state(srv)
        async with anyio.create_task_group() as tg:
            tg.start_soon(soak.watchdog, tg.cancel_scope)
            async with anyio.create_task_group() as workers:
                for name, worker in clients.workers():
                    if SOAK_ONLY and not any(word in name for word in SOAK_ONLY):
                        continue
                    workers.start_soon(clients.run, name, worker)
            soak.stop.set()  # the watchdog ends at its next look
    soak.stop.set()
    summary = ", ".join(f"{kind} {n}" for kind, n in sorted(soak.done.items()))
    print(f"soak {SOAK_SECONDS:.0f} s: {summary}")
    assert not soak.failures, "\n\n".join(soak.failures)
    kinds = {
        "curl-h1",
        "curl-h1-tls",
        "curl-h2",
        "curl-h2c",
        "curl-h2c-upgrade",
        "httpx-h2",
        "h3",
        "websockets-h1",
        "ws-h2",
        "ws-h3",
    }
    if not SOAK_ONLY:
        assert kinds <= set(soak.done), f"some clients finished nothing: {summary}"


def _server_quic_state(srv: Any) -> str:
    lines = []
    for listener in srv.server._quic_listeners:
        for key, driver in list(listener.drivers.items()):
            lines.append(f" connection {key} from {driver.record.client}:")
            lines.append(quic_state(driver.quic))
    return "\n".join(lines)
