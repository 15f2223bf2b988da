"""HTTP/1.1 keep-alive requests on a connection's stream runner, as the app sees them.

One task from start to end of each app call, anyio cancel scopes and task groups that
work, a body that arrives after its head, an app failure answered with 500 and the
connection going on, pipelined requests answered in order; on every backend. (Written for
the eager path of issue 11, which began a request inside the read callback; that path was
taken out when it measured slower under wrk, and these checks stay for the runner.)
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from .helpers import running_server

pytestmark = pytest.mark.anyio

_HEAD = b"POST /%s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Reports, for each request, whether it ran in one task throughout and what its
    cancel scope and task group did; raises for ``/fail``."""
    path = scope["path"]
    first = anyio.get_current_task().id
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if path == "/fail":
        raise RuntimeError("app failure (expected by the test)")
    cancelled = None
    if path == "/sleep":
        with anyio.move_on_after(0.02) as scope_:
            await anyio.sleep(5)
        cancelled = scope_.cancelled_caught
    children: list[int] = []
    if path == "/group":
        async with anyio.create_task_group() as tg:
            for i in range(3):
                tg.start_soon(_child, children, i)
    same = anyio.get_current_task().id == first
    text = f"{path} same={same} cancelled={cancelled} children={sorted(children)} body={body!r}"
    answer = text.encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-length", b"%d" % len(answer))],
        }
    )
    await send({"type": "http.response.body", "body": answer})


async def _child(children: list[int], i: int) -> None:
    await anyio.sleep(0.001 * i)
    children.append(i)


async def _read_response(stream: Any, buffer: bytearray) -> tuple[bytes, bytes]:
    """One response (status line, body) from ``stream``, by its Content-Length."""
    with anyio.fail_after(5):
        while b"\r\n\r\n" not in buffer:
            buffer += await stream.receive()
        head, _, _ = bytes(buffer).partition(b"\r\n\r\n")
        del buffer[: len(head) + 4]
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        while len(buffer) < length:
            buffer += await stream.receive()
        body = bytes(buffer[:length])
        del buffer[:length]
    return head.split(b"\r\n")[0], body


async def test_keep_alive_requests_run_as_one_task(anyio_backend: object, h1_engine: str) -> None:
    async with running_server(_app, http1_engine=h1_engine) as srv:
        async with await anyio.connect_tcp("127.0.0.1", srv.port()) as stream:
            buffer = bytearray()
            for path in ("plain", "plain", "sleep", "group", "plain"):
                await stream.send(_HEAD % (path.encode(), 2) + b"ok")
                status, body = await _read_response(stream, buffer)
                assert status == b"HTTP/1.1 200 OK"
                assert body.startswith(b"/%s same=True" % path.encode()), body
                assert body.endswith(b"body=b'ok'")
                if path == "sleep":
                    assert b"cancelled=True" in body
                if path == "group":
                    assert b"children=[0, 1, 2]" in body
            # A body that arrives after its head: the app waits for it in receive(), and
            # the rest of its call runs in the runner.
            await stream.send(_HEAD % (b"late", 10) + b"01234")
            await anyio.sleep(0.05)
            await stream.send(b"56789")
            status, body = await _read_response(stream, buffer)
            assert body == b"/late same=True cancelled=None children=[] body=b'0123456789'"
            # An app failure before its response is a 500, and the connection goes on.
            await stream.send(_HEAD % (b"fail", 0))
            status, body = await _read_response(stream, buffer)
            assert status == b"HTTP/1.1 500 Internal Server Error"
            await stream.send(_HEAD % (b"after", 0))
            status, body = await _read_response(stream, buffer)
            assert body.startswith(b"/after same=True")


async def test_pipelined_requests_keep_their_order(anyio_backend: object, h1_engine: str) -> None:
    async with running_server(_app, http1_engine=h1_engine) as srv:
        async with await anyio.connect_tcp("127.0.0.1", srv.port()) as stream:
            buffer = bytearray()
            await stream.send(_HEAD % (b"warm", 0))
            await _read_response(stream, buffer)
            paths = [b"p%d" % i for i in range(6)] + [b"sleep", b"group", b"tail"]
            await stream.send(b"".join(_HEAD % (path, 1) + b"x" for path in paths))
            for path in paths:
                status, body = await _read_response(stream, buffer)
                assert status == b"HTTP/1.1 200 OK"
                assert body.startswith(b"/%s same=True" % path), body
